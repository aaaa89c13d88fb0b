//! Shared helpers for the integration tests in `tests/`: locating the real servers installed
//! by `scripts/install-test-deps`, a Prometheus launcher on a random 127.0.0.1 port, a tiny
//! HTTP client, and an OTLP receiver (gRPC and HTTP/protobuf) built on `opentelemetry-proto`.
//!
//! Everything binds 127.0.0.1 only. Waits poll with a deadline; nothing sleeps a fixed time to
//! pass.

pub mod bins;
pub mod exporter;
pub mod http;
pub mod otlp_receiver;
pub mod prom;

use std::time::{Duration, Instant};

/// Polls `f` every few milliseconds until it returns `Some`, or panics with `what` after
/// `deadline`.
///
/// # Panics
///
/// When the deadline passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}
