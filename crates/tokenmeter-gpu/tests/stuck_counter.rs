//! Issue 16, case 2: a stuck counter reads as free energy. In a binary of its own because it
//! checks the warning the sampler logs, and the other tests of a shared binary, running on other
//! threads without the capturing subscriber, made that capture flaky.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Exported, generate, meter, warnings};
use metrics_util::debugging::DebuggingRecorder;
use tokenmeter_gpu::{EnergySource, FakeGpuSource, Sampler};

#[test]
fn a_stuck_counter_is_bridged_with_power_never_free_energy() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    // The counter stays at 1000 J while power reads 300 W.
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    let (snap, logs) = warnings(|| {
        metrics::with_local_recorder(&rec, || {
            let mut snap = s.sample_once();
            for _ in 0..5 {
                generate(&meter, 100);
                mock.increment(Duration::from_secs(1));
                snap = s.sample_once();
            }
            snap
        })
    });
    ex.read();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].contains("stuck at 1000 J"), "{logs:?}");
    // 300 W x 5 s for 500 tokens.
    assert_eq!(snap.gpus[0].energy_j, Some(1500.0));
    assert_eq!(
        snap.gpus[0].energy_source,
        Some(EnergySource::IntegratedPower)
    );
    assert_eq!(snap.derived.joules_per_output_token, Some(3.0));
    assert_eq!(ex.counter("hw_energy_joules_total", &[]), Some(1500));
    assert_eq!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[]),
        Some(3.0)
    );
}
