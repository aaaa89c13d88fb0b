//! Rendering `/metrics` for 10 models x 5 label sets of the full catalog: time and bytes,
//! measured next to a floor in the same run (copying the same number of bytes), target <= 5 ms
//! for the text format and <= 2 ms for protobuf (native histograms on). Also the series and
//! bytes of one scrape for one model with default labels, in each format.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use metrics::{Key, Recorder};
use tokenmeter_benches::ns_per_op;
use tokenmeter_core::catalog::{self, MetricKind};
use tokenmeter_core::{ErrorKind, Finish, Meter};
use tokenmeter_export::prometheus::Format;
use tokenmeter_export::{Prometheus, PrometheusExporter};

/// A Prometheus exporter holding every catalog metric for 10 models x 5 label sets.
fn populated(full: bool) -> (PrometheusExporter, usize) {
    populated_n(full, 10, 5)
}

/// A Prometheus exporter holding every catalog metric for `models` x `sets` label sets.
fn populated_n(full: bool, models: usize, sets: usize) -> (PrometheusExporter, usize) {
    let mut prom = Prometheus::new()
        .without_listener()
        .build()
        .expect("exporter");
    let recorder = prom.take_recorder().expect("recorder");
    let meta = metrics::Metadata::new("bench", metrics::Level::INFO, None);
    let mut series = 0;
    metrics::with_local_recorder(&recorder, || {
        for model in 0..models {
            for set in 0..sets {
                let mut meter = Meter::builder().model(format!("model-{model}"));
                if sets > 1 {
                    meter = meter.constant_label("tenant", format!("tenant-{set}"));
                }
                let meter = meter.build();
                // Real traffic for the core metrics...
                for i in 0..20 {
                    let mut r = meter.request().prompt_tokens(100 + i).start();
                    r.scheduled();
                    for _ in 0..(10 + i) {
                        r.token();
                    }
                    let _ = match i % 4 {
                        0 => r.fail(ErrorKind::Timeout),
                        1 => r.finish(Finish::Length),
                        _ => r.finish(Finish::Stop),
                    };
                }
                // ...and every catalog metric (GPU and quality included) with its labels.
                for def in catalog::all()
                    .filter(|d| full || catalog::core::DEFS.iter().any(|c| c.id == d.id))
                {
                    let names = meter.metric_names();
                    let extra: Vec<(&str, &str)> = def.labels.iter().map(|k| (*k, "v")).collect();
                    let key = Key::from_parts(names.name(def).to_owned(), names.labels(&extra));
                    match def.kind {
                        MetricKind::Counter => recorder.register_counter(&key, &meta).increment(3),
                        MetricKind::Gauge => recorder.register_gauge(&key, &meta).set(0.5),
                        MetricKind::Histogram => {
                            let h = recorder.register_histogram(&key, &meta);
                            for v in [0.001, 0.02, 0.3, 4.0, 50.0] {
                                h.record(v);
                            }
                        }
                    }
                    series += 1;
                }
            }
        }
    });
    (prom, series)
}

fn ratios(prom: &PrometheusExporter, series: usize, what: &str) {
    let text = prom.render();
    let bytes = text.len();
    assert!(!text.contains("quantile=\""), "no summaries");
    let render = ns_per_op(1, || {
        black_box(prom.render());
    });
    let floor = ns_per_op(1, || {
        black_box(text.clone());
    });
    let ms = render / 1e6;
    println!(
        "RATIO /metrics render (10 models x 5 label sets, {what}: {series} series, {bytes} bytes, {} lines): {ms:.3} ms vs copying {bytes} bytes: {:.3} ms = {:.1}x (target <= 5 ms: {})",
        text.lines().count(),
        floor / 1e6,
        render / floor,
        if ms <= 5.0 { "met" } else { "NOT met" }
    );
}

/// Protobuf render time (native histograms beside the classic buckets) vs copying its bytes.
fn protobuf_ratio(prom: &PrometheusExporter, series: usize) {
    let body = prom.renderer().render_format(Format::Protobuf);
    let bytes = body.len();
    let render = ns_per_op(1, || {
        black_box(prom.renderer().render_format(Format::Protobuf));
    });
    let floor = ns_per_op(1, || {
        black_box(body.clone());
    });
    let ms = render / 1e6;
    println!(
        "RATIO /metrics protobuf render (10 models x 5 label sets, full catalog, native histograms: {series} series, {bytes} bytes): {ms:.3} ms vs copying {bytes} bytes: {:.3} ms = {:.1}x (target <= 2 ms: {})",
        floor / 1e6,
        render / floor,
        if ms <= 2.0 { "met" } else { "NOT met" }
    );
}

/// Series and bytes of one scrape for one model with default labels, in each format.
fn scrape_size() {
    let (prom, series) = populated_n(true, 1, 1);
    let render = prom.renderer();
    let text = prom.render();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    for format in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
        println!(
            "SCRAPE one model, default labels, full catalog, {format:?}: {series} series, {} bytes ({samples} text samples)",
            render.render_format(format).len()
        );
    }
}

fn criterion_benches(c: &mut Criterion) {
    scrape_size();
    let (core, core_series) = populated(false);
    ratios(&core, core_series, "core catalog");
    drop(core);
    let (prom, series) = populated(true);
    ratios(&prom, series, "full catalog");
    protobuf_ratio(&prom, series);
    c.bench_function("export/render 10x5 full catalog", |b| {
        b.iter(|| black_box(prom.render()))
    });
    c.bench_function("export/render 10x5 full catalog protobuf", |b| {
        b.iter(|| black_box(prom.renderer().render_format(Format::Protobuf)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = criterion_benches
}
criterion_main!(benches);
