//! The GPU/host sampler against its floors, measured in the same run:
//! - CPU time of one sample on the sampler thread (fake GPU source with every field, host
//!   sampling, Prometheus recorder installed) against the 1 ms budget per GPU;
//!   the same with real NVML when this machine has a driver and a GPU (otherwise said so);
//! - `token()` with the sampler thread running (at the default 1 s interval, and at a 1 ms
//!   interval as a stress case) against `token()` without it (target: unchanged, ~1.0x);
//! - per-request energy and cost: one sample that splits an interval across 256 requests in
//!   flight and settles 64 that ended, against the 1 ms budget; a request's start + finish
//!   with a sampler attached (its cell) against the same without one.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokenmeter_benches::{ns_per_call_pair, report, thread_cpu, token_ns};
use tokenmeter_core::{Finish, Meter};
use tokenmeter_gpu::{FakeGpuSource, GpuAvailability, Sampler};

/// Mean CPU time per `sample_once` over `n` samples (after 3 warm-up samples), in ns.
fn cpu_per_sample(sampler: &mut Sampler, n: u32) -> f64 {
    for _ in 0..3 {
        sampler.sample_once();
    }
    let t0 = thread_cpu();
    for _ in 0..n {
        black_box(sampler.sample_once());
    }
    (thread_cpu() - t0).as_nanos() as f64 / f64::from(n)
}

fn one_gpu() -> FakeGpuSource {
    FakeGpuSource::new().with_gpu("H100", FakeGpuSource::typical_reading())
}

fn ratios() {
    let mut prom = tokenmeter_export::Prometheus::new()
        .without_listener()
        .build()
        .expect("prometheus");
    let recorder = prom.take_recorder().expect("recorder");
    let meter = Meter::builder().model("bench").build();
    const BUDGET_NS: f64 = 1_000_000.0;

    metrics::with_local_recorder(&recorder, || {
        let mut gpu_only = Sampler::builder(&meter)
            .source(one_gpu())
            .host(false)
            .price_per_gpu_hour(2.0)
            .build();
        let g = cpu_per_sample(&mut gpu_only, 2000);
        report(
            "one sample, fake GPU source (1 GPU, all fields), CPU",
            g,
            "1 ms budget",
            BUDGET_NS,
            Some(1.0),
        );

        let mut host_only = Sampler::builder(&meter).without_gpu().build();
        let h = cpu_per_sample(&mut host_only, 200);
        report(
            "one sample, host + process (sysinfo), CPU",
            h,
            "1 ms budget",
            BUDGET_NS,
            Some(1.0),
        );

        let mut both = Sampler::builder(&meter)
            .source(one_gpu())
            .price_per_gpu_hour(2.0)
            .build();
        let b = cpu_per_sample(&mut both, 200);
        report(
            "one sample, fake GPU + host, CPU",
            b,
            "1 ms budget",
            BUDGET_NS,
            Some(1.0),
        );

        let mut nvml = Sampler::builder(&meter).host(false).build();
        let first = nvml.sample_once();
        if first.gpu_availability == GpuAvailability::Ok {
            let n = cpu_per_sample(&mut nvml, 50) / first.gpus.len().max(1) as f64;
            report(
                "one sample, real NVML, per GPU, CPU",
                n,
                "1 ms budget",
                BUDGET_NS,
                Some(1.0),
            );
        } else {
            println!(
                "RATIO one sample, real NVML: not measured: NVML unavailable here ({:?}); run this bench on a GPU machine",
                first.gpu_availability
            );
        }
    });

    metrics::with_local_recorder(&recorder, || {
        let meter = Meter::builder().model("bench").build();
        let mut s = Sampler::builder(&meter)
            .source(one_gpu())
            .host(false)
            .price_per_gpu_hour(2.0)
            .build();
        let mut live: Vec<_> = (0..256).map(|_| meter.request().start()).collect();
        let n = 200;
        let mut cpu = Duration::ZERO;
        for i in 0..n + 3 {
            // Not timed: 64 requests that end (their tokens flush at the end), and a step.
            for _ in 0..64 {
                let mut g = meter.request().start();
                g.tokens(8);
                g.finish(Finish::Stop);
            }
            for g in &mut live {
                g.token();
            }
            let t0 = thread_cpu();
            black_box(s.sample_once());
            if i >= 3 {
                cpu += thread_cpu() - t0;
            }
        }
        for g in &mut live {
            g.finish(Finish::Stop);
        }
        report(
            "one sample splitting 256 requests in flight + settling 64 ended (fake GPU), CPU",
            cpu.as_nanos() as f64 / f64::from(n),
            "1 ms budget",
            BUDGET_NS,
            Some(1.0),
        );
    });

    // A request's start + finish with a sampler attached (it registers a cell) and without.
    let plain = Meter::builder().model("bench").build();
    let attached = Meter::builder().model("bench").build();
    let handle = Sampler::builder(&attached)
        .source(one_gpu())
        .host(false)
        .interval(Duration::from_millis(10)) // drains the cells while the bench runs
        .start()
        .expect("thread");
    let (with, without) = ns_per_call_pair(
        || {
            let mut g = attached.request().start();
            g.token();
            black_box(g.finish(Finish::Stop));
        },
        || {
            let mut g = plain.request().start();
            g.token();
            black_box(g.finish(Finish::Stop));
        },
    );
    handle.stop();
    report(
        "start + token + finish with a sampler attached (per-request cell)",
        with,
        "the same without a sampler",
        without,
        None,
    );

    // token() on a guard with a cell (a sampler at 1 s attached to its meter) against one
    // without, in alternating batches: the cell's own effect, apart from the machine's noise.
    {
        let handle = Sampler::builder(&attached)
            .source(one_gpu())
            .host(false)
            .start()
            .expect("thread");
        let mut with_cell = attached.request().start();
        let mut without_cell = plain.request().start();
        with_cell.token();
        without_cell.token();
        let (with, without) = ns_per_call_pair(|| with_cell.token(), || without_cell.token());
        with_cell.finish(Finish::Stop);
        without_cell.finish(Finish::Stop);
        handle.stop();
        report(
            "token() on a guard with an energy cell (sampler at 1 s)",
            with,
            "token() on a guard without one",
            without,
            Some(1.1),
        );
    }

    // token() cost with and without the sampler thread running.
    let meter = Meter::builder().model("bench").build();
    let without = token_ns(&meter);
    let at_1s = {
        let handle = Sampler::builder(&meter)
            .source(one_gpu())
            .start()
            .expect("thread");
        let ns = token_ns(&meter);
        handle.stop();
        ns
    };
    let at_1ms = {
        let handle = Sampler::builder(&meter)
            .source(one_gpu())
            .interval(Duration::from_millis(1))
            .start()
            .expect("thread");
        let ns = token_ns(&meter);
        handle.stop();
        ns
    };
    // Control for the stress case: the same sampler thread on another meter, so this guard has
    // no cell: what is left of the ratio is the thread's CPU competing, not the cell.
    let at_1ms_no_cell = {
        let other = Meter::builder().model("other").build();
        let handle = Sampler::builder(&other)
            .source(one_gpu())
            .interval(Duration::from_millis(1))
            .start()
            .expect("thread");
        let ns = token_ns(&meter);
        handle.stop();
        ns
    };
    let without_again = token_ns(&meter);
    let floor = without.min(without_again);
    report(
        "token() with the sampler at 1 s",
        at_1s,
        "token() without sampler",
        floor,
        Some(1.1),
    );
    report(
        "token() with the sampler at 1 ms (stress)",
        at_1ms,
        "token() without sampler",
        floor,
        Some(1.1),
    );
    report(
        "token() with the sampler at 1 ms (stress)",
        at_1ms,
        "token() with it on another meter (no cell)",
        at_1ms_no_cell,
        Some(1.1),
    );
    println!(
        "NOTE token() without sampler measured twice (before/after): {without:.2} ns, {without_again:.2} ns"
    );
}

fn criterion_benches(c: &mut Criterion) {
    ratios();
    let mut prom = tokenmeter_export::Prometheus::new()
        .without_listener()
        .build()
        .expect("prometheus");
    let recorder = prom.take_recorder().expect("recorder");
    let meter = Meter::builder().model("bench").build();
    metrics::with_local_recorder(&recorder, || {
        let mut s = Sampler::builder(&meter)
            .source(one_gpu())
            .host(false)
            .build();
        c.bench_function("gpu/sample_once fake 1 GPU", |b| {
            b.iter(|| black_box(s.sample_once()))
        });
        let mut s = Sampler::builder(&meter).source(one_gpu()).build();
        c.bench_function("gpu/sample_once fake 1 GPU + host", |b| {
            b.iter(|| black_box(s.sample_once()))
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = criterion_benches
}
criterion_main!(benches);
