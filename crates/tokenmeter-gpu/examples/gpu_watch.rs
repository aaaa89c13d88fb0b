//! Prints one JSON GPU/host snapshot per second for N seconds (default 10), for comparing the
//! sampler's readings with `nvidia-smi --query-gpu=... --format=csv -l 1` taken at the same time.
//!
//! ```sh
//! cargo run --release -p tokenmeter-gpu --example gpu_watch -- 30
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenmeter_gpu::Sampler;

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let meter = tokenmeter_core::Meter::default();
    let mut sampler = Sampler::builder(&meter).build();
    let start = std::time::Instant::now();
    for i in 0..=seconds {
        let t0 = std::time::Instant::now();
        let snap = sampler.sample_once();
        let took = t0.elapsed();
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let line = serde_json::json!({
            "unix_ms": unix_ms,
            "sample_wall_us": took.as_secs_f64() * 1e6,
            "snapshot": snap,
        });
        println!("{line}");
        let next = start + Duration::from_secs(i + 1);
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
}
