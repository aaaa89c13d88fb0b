//! The Prometheus exporter a test binary installs once, as the global `metrics` recorder.

use std::sync::OnceLock;

use tokenmeter_export::{Exporters, Prometheus, PrometheusRender};

/// The installed exporter: its listener's address and a renderer.
#[derive(Debug)]
pub struct Installed {
    /// Where its listener serves `/metrics` (127.0.0.1, a random port).
    pub addr: std::net::SocketAddr,
    /// Renders the exposition in process.
    pub render: PrometheusRender,
}

/// One global recorder per test binary: Prometheus (its defaults: native histograms and
/// exemplars on) on a random 127.0.0.1 port, kept for the life of the process.
///
/// # Panics
///
/// When the exporter cannot be installed (a global recorder exists already).
pub fn installed() -> &'static Installed {
    static CELL: OnceLock<Installed> = OnceLock::new();
    CELL.get_or_init(|| {
        let guard = Exporters::new()
            .prometheus(Prometheus::new().listen("127.0.0.1:0".parse().expect("addr")))
            .install_tracing(false)
            .install()
            .expect("install exporters");
        let p = guard.prometheus().expect("prometheus");
        let inst = Installed {
            addr: p.local_addr().expect("listener"),
            render: p.renderer(),
        };
        // Keep the exporters for the life of the test process.
        std::mem::forget(guard);
        inst
    })
}
