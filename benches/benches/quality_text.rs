//! The streaming text monitors per token against the bare `guard.token()` cost, measured in
//! the same run. One "request" is 1024 tokens of 4-byte pieces, with every monitor on:
//! refusal phrases and 8 keywords (one Aho-Corasick DFA), UTF-8/control/U+FFFD counting,
//! seq-rep-4 with the loop flag, the allowed-token set, drift token buckets and the chosen
//! token's logprob; plus the per-request start (buffers) and finish (metrics, drift lock),
//! amortized over the tokens.
//!
//! Target: <= 40 ns per token amortized.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokenmeter_benches::{ns_per_op, report, token_ns};
use tokenmeter_core::Meter;
use tokenmeter_quality::drift::{BaselineRecorder, DriftMonitor};
use tokenmeter_quality::{QualityConfig, QualityMonitor, TokenSet};

const TOKENS: usize = 1024;

/// 4-byte pieces of ordinary English and pseudo-random ids over a 32k vocabulary.
fn stream() -> Vec<(u32, [u8; 4])> {
    let words: [&[u8; 4]; 16] = [
        b" the", b" cat", b" sat", b" on ", b"the ", b"mat.", b" It ", b"was ", b"warm", b" and",
        b" qui", b"et; ", b"ing ", b" we ", b"talk", b"ed. ",
    ];
    let mut x: u32 = 7;
    (0..TOKENS)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 17) % 32_000, *words[i % words.len()])
        })
        .collect()
}

fn monitor(meter: &Meter) -> QualityMonitor {
    let mut rec = BaselineRecorder::new();
    rec.observe_request(100, 1024);
    rec.observe_tokens(&[1, 2, 3]);
    let drift = Arc::new(DriftMonitor::new(meter, rec.baseline(), 1024));
    let config = QualityConfig::default()
        .keywords([
            "paris", "london", "tokyo", "berlin", "madrid", "rome", "vienna", "oslo",
        ])
        .allowed_tokens(TokenSet::from_ids(0..32_000))
        .drift(drift);
    QualityMonitor::new(meter, config).expect("monitor builds")
}

fn text_monitors_per_token(
    meter: &Meter,
    quality: &QualityMonitor,
    stream: &[(u32, [u8; 4])],
) -> f64 {
    let guard = meter.request().prompt_tokens(100).start();
    let ns = ns_per_op(stream.len() as u64, || {
        let mut q = quality.request();
        for (id, piece) in stream {
            q.piece(*id, piece);
            q.logprob(-0.3);
        }
        black_box(q.finish(&guard));
    });
    drop(guard);
    ns
}

fn ratios() {
    let meter = Meter::builder().model("bench").build();
    let quality = monitor(&meter);
    let stream = stream();
    let token = token_ns(&meter);
    let text = text_monitors_per_token(&meter, &quality, &stream);
    report(
        "text monitors per 4-byte token (amortized)",
        text,
        "guard.token()",
        token,
        None,
    );
    println!(
        "RATIO text monitors: {text:.2} ns per token (target <= 40 ns: {})",
        if text <= 40.0 { "met" } else { "NOT met" }
    );
}

fn criterion_benches(c: &mut Criterion) {
    ratios();
    let meter = Meter::builder().model("bench").build();
    let quality = monitor(&meter);
    let stream = stream();
    let guard = meter.request().start();
    c.bench_function("quality/text monitors, 1024-token request", |b| {
        b.iter(|| {
            let mut q = quality.request();
            for (id, piece) in &stream {
                q.piece(*id, piece);
                q.logprob(-0.3);
            }
            black_box(q.finish(&guard))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = criterion_benches
}
criterion_main!(benches);
