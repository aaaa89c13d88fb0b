//! Issue 16, the fault cases: a failed read, a stuck counter, one GPU shared by several models,
//! a lost GPU. Each case and its kind is held to the exact right value through the fake source
//! and the meter's mock clock; no test sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Exported, generate, meter, warnings};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{Meter, Naming};
use tokenmeter_gpu::{EnergySource, FakeGpuSource, FieldError, GpuAvailability, Sampler};

fn failed() -> FieldError {
    FieldError::Failed("timeout (fake)".into())
}

// ---- case 1: a failed read drops an interval -------------------------------------------------

#[test]
fn a_failed_counter_read_does_not_drop_an_interval() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    // 300 W; the counter reads 1000, 1300, (error), 1900, 2200 J, one second apart.
    let snap = metrics::with_local_recorder(&rec, || {
        let mut snap = s.sample_once();
        for counter in [Ok(1300.0), Err(failed()), Ok(1900.0), Ok(2200.0)] {
            control.update(0, |r| r.energy_counter_j = counter);
            mock.increment(Duration::from_secs(1));
            snap = s.sample_once();
        }
        snap
    });
    ex.read();
    assert_eq!(snap.gpus[0].energy_j, Some(1200.0));
    assert_eq!(snap.gpus[0].energy_source, Some(EnergySource::Counter));
    assert_eq!(snap.derived.energy_since_start_j, Some(1200.0));
    assert_eq!(ex.counter("hw_energy_joules_total", &[]), Some(1200));
}

#[test]
fn a_failed_power_read_does_not_drop_an_interval_of_integrated_power() {
    let (meter, mock) = meter();
    let mut r = FakeGpuSource::typical_reading();
    r.energy_counter_j = Err(FieldError::NotSupported);
    let fake = FakeGpuSource::new().with_gpu("T4", r);
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    s.sample_once(); // 300 W
    control.update(0, |r| r.power_w = Err(failed()));
    mock.increment(Duration::from_secs(1));
    s.sample_once();
    control.set_power(0, 500.0);
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once();
    // One trapezoid over the whole gap: (300 + 500) / 2 W x 2 s.
    assert_eq!(snap.gpus[0].energy_j, Some(800.0));
}

#[test]
fn an_ecc_counter_reset_loses_no_error() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, _mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    metrics::with_local_recorder(&rec, || {
        s.sample_once(); // lifetime 2
        for raw in [Ok(5), Err(failed()), Ok(1), Ok(3)] {
            control.update(0, |r| r.ecc_corrected = raw);
            s.sample_once();
        }
    });
    ex.read();
    // 2, +3, (read failed), reset: +1 since the reset, +2.
    assert_eq!(
        ex.counter("hw_errors_total", &[("error_type", "corrected")]),
        Some(8)
    );
}

// ---- case 2: a stuck counter reads as free energy --------------------------------------------

// The stuck-counter case lives in `stuck_counter.rs`: it checks a logged warning, and a
// binary of its own keeps other tests' threads from racing tracing's callsite interest.

#[test]
fn a_counter_that_catches_up_after_a_stall_is_not_counted_twice() {
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    s.sample_once(); // 1000 J
    mock.increment(Duration::from_secs(1));
    s.sample_once(); // still 1000 J: 300 J bridged with power
    control.set_energy_counter(0, 1600.0); // it counted all along: 600 J over the 2 s
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once();
    assert_eq!(snap.gpus[0].energy_j, Some(600.0));
    assert_eq!(snap.gpus[0].energy_source, Some(EnergySource::Counter));
    control.set_energy_counter(0, 1900.0);
    mock.increment(Duration::from_secs(1));
    assert_eq!(s.sample_once().gpus[0].energy_j, Some(900.0));
}

#[test]
fn a_counter_that_resumes_where_it_stuck_loses_nothing() {
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    s.sample_once(); // 1000 J
    for _ in 0..2 {
        mock.increment(Duration::from_secs(1));
        s.sample_once(); // stuck: 2 x 300 J bridged
    }
    control.set_energy_counter(0, 1300.0); // resumed: 300 J in the last second only
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once();
    assert_eq!(snap.gpus[0].energy_j, Some(900.0));
}

#[test]
fn zero_energy_with_tokens_is_absent_never_zero_joules_per_token() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    // A stuck counter and no power reading to bridge it with.
    let mut r = FakeGpuSource::typical_reading();
    r.power_w = Err(FieldError::NotSupported);
    let mut s = Sampler::builder(&meter)
        .source(FakeGpuSource::new().with_gpu("A", r))
        .host(false)
        .price_per_gpu_hour(3.6)
        .build();
    let snap = metrics::with_local_recorder(&rec, || {
        s.sample_once();
        generate(&meter, 500);
        mock.increment(Duration::from_secs(1));
        s.sample_once()
    });
    ex.read();
    assert_eq!(snap.derived.window_energy_j, Some(0.0));
    assert_eq!(snap.derived.joules_per_output_token, None);
    assert_eq!(snap.derived.output_tokens_per_joule, None);
    assert_eq!(snap.models[0].joules_per_output_token, None);
    assert!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[])
            .is_none()
    );
    // GPU time is known, so cost is: 3.6 per GPU-hour x 1 s / 500 tokens x 1000.
    let cost = snap.derived.cost_per_1k_output_tokens.unwrap();
    assert!((cost - 0.002).abs() < 1e-15, "{cost}");
}

// ---- case 3: one GPU shared by two models is billed twice ------------------------------------

#[test]
fn one_sampler_shared_by_two_models_splits_energy_and_cost_by_tokens() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (clock, mock) = Clock::mock();
    let chat = Meter::builder().model("chat").clock(clock.clone()).build();
    let embed = Meter::builder().model("embed").clock(clock).build();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&chat)
        .meter(&embed)
        .source(fake)
        .host(false)
        .price_per_gpu_hour(3.6)
        .build();
    let snap = metrics::with_local_recorder(&rec, || {
        s.sample_once(); // 1000 J
        generate(&chat, 100);
        generate(&embed, 400);
        control.set_energy_counter(0, 4000.0);
        mock.increment(Duration::from_secs(10));
        s.sample_once() // 3000 J and 10 GPU-seconds (0.01 at 3.6 per GPU-hour)
    });
    ex.read();
    let node = &snap.derived;
    assert_eq!(node.energy_since_start_j, Some(3000.0));
    assert_eq!(node.gpu_seconds_since_start, 10.0);
    assert_eq!(node.output_tokens_since_start, 500);
    let [c, e] = &snap.models[..] else {
        panic!("{:?}", snap.models)
    };
    assert_eq!((c.model.as_str(), e.model.as_str()), ("chat", "embed"));
    // Split by tokens, 100 : 400, and the parts add up to the whole.
    assert_eq!((c.energy_j, e.energy_j), (Some(600), Some(2400)));
    assert_eq!((c.gpu_seconds, e.gpu_seconds), (2.0, 8.0));
    assert_eq!(c.energy_j.unwrap() + e.energy_j.unwrap(), 3000);
    assert_eq!(c.gpu_seconds + e.gpu_seconds, node.gpu_seconds_since_start);
    let (cc, ec) = (c.cost.unwrap(), e.cost.unwrap());
    assert!((cc - 0.002).abs() < 1e-15 && (ec - 0.008).abs() < 1e-15);
    assert_eq!(
        (c.joules_per_output_token, e.joules_per_output_token),
        (Some(6.0), Some(6.0))
    );
    // The GPU is exported once, without a model label: sum(hw_power_watts) is 300 W, not 600.
    let power: Vec<f64> = ex
        .series
        .iter()
        .filter(|(n, _, _)| n == "hw_power_watts")
        .map(|(_, _, v)| match v {
            DebugValue::Gauge(w) => w.0,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(power, vec![300.0]);
    assert_eq!(ex.counter("hw_energy_joules_total", &[]), Some(3000));
    // Each model's attributed energy counter, under its own model label.
    let attributed = |m: &str| {
        ex.counter(
            "tokenmeter_energy_attributed_joules_total",
            &[("gen_ai_request_model", m)],
        )
    };
    assert_eq!(
        (attributed("chat"), attributed("embed")),
        (Some(600), Some(2400))
    );
    assert_eq!(
        ex.gauge(
            "tokenmeter_energy_per_output_token_joules",
            &[("gen_ai_request_model", "embed")]
        ),
        Some(6.0)
    );
}

#[test]
fn shares_add_up_exactly_with_uneven_tokens_idle_intervals_and_late_meters() {
    let (clock, mock) = Clock::mock();
    let m = |name: &str| Meter::builder().model(name).clock(clock.clone()).build();
    let (a, b, c, d) = (m("a"), m("b"), m("c"), m("d"));
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&a)
        .meter(&b)
        .meter(&c)
        .meter(&a) // the same meter twice is attached once
        .source(fake)
        .host(false)
        .build();
    s.sample_once(); // 1000 J
    for meter in [&a, &b, &c] {
        generate(meter, 1);
    }
    control.set_energy_counter(0, 2000.0);
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once(); // 1000 J over 1 : 1 : 1 tokens
    let energy = |snap: &tokenmeter_gpu::GpuSnapshot| -> Vec<u64> {
        snap.models.iter().map(|m| m.energy_j.unwrap()).collect()
    };
    assert_eq!(energy(&snap), vec![334, 333, 333]);
    // An idle interval (no tokens) is split equally: 10 J as 4 + 3 + 3.
    control.set_energy_counter(0, 2010.0);
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once();
    assert_eq!(energy(&snap), vec![338, 336, 336]);
    // A meter attached mid-run shares from its first sample on.
    s.attach(&d);
    s.sample_once(); // d's baseline (no time passes, nothing to split)
    generate(&d, 3);
    generate(&a, 1);
    control.set_energy_counter(0, 2110.0);
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once(); // 100 J over 1 : 0 : 0 : 3 tokens
    assert_eq!(energy(&snap), vec![363, 336, 336, 75]);
    assert_eq!(energy(&snap).iter().sum::<u64>(), 1110);
    assert_eq!(snap.gpus[0].energy_j, Some(1110.0));
    let gpu_ns: f64 = snap.models.iter().map(|m| m.gpu_seconds).sum();
    assert_eq!(gpu_ns, snap.derived.gpu_seconds_since_start);
}

#[test]
fn node_series_keep_the_servers_constant_labels_but_no_model_label_under_either_preset() {
    for naming in [Naming::OpenTelemetry, Naming::Vllm] {
        let rec = DebuggingRecorder::new();
        let mut ex = Exported::new(&rec);
        let meter = Meter::builder()
            .model("chat")
            .naming(naming)
            .constant_label("region", "eu-west-1")
            .build();
        let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
        let mut s = Sampler::builder(&meter).source(fake).build();
        metrics::with_local_recorder(&rec, || s.sample_once());
        ex.read();
        let keys = |name: &str| -> Vec<String> {
            let (_, l, _) = ex.series.iter().find(|(n, _, _)| n == name).unwrap();
            l.iter().map(|(k, _)| k.clone()).collect()
        };
        for name in ["hw_power_watts", "process_resident_memory_bytes"] {
            assert!(
                keys(name).contains(&"region".to_owned()),
                "{naming:?} {name}"
            );
            for model_scoped in [
                "gen_ai_request_model",
                "gen_ai_operation_name",
                "gen_ai_provider_name",
                "model_name",
                "engine",
            ] {
                assert!(
                    !keys(name).iter().any(|k| k == model_scoped),
                    "{naming:?} {name}: {:?}",
                    keys(name)
                );
            }
        }
        // The model's own series keep its label (the attributed energy counter is registered
        // at the first sample, at 0 J).
        let model_key = match naming {
            Naming::OpenTelemetry => "gen_ai_request_model",
            Naming::Vllm => "model_name",
        };
        assert!(
            keys("tokenmeter_energy_attributed_joules_total").contains(&model_key.to_owned()),
            "{naming:?}"
        );
    }
}

#[test]
fn a_second_sampler_on_the_same_gpus_reports_none_of_them() {
    // NVML reads the machine's GPUs from every sampler; the fake does when told to. This is
    // the only test that claims process-wide, so parallel tests cannot take its GPUs.
    let fake = FakeGpuSource::new()
        .with_gpu("A", FakeGpuSource::typical_reading())
        .process_wide();
    let (chat, _mock) = meter();
    let embed = Meter::builder().model("embed").build();
    let mut first = Sampler::builder(&chat)
        .source(fake.clone())
        .host(false)
        .build();
    assert_eq!(first.sample_once().gpus.len(), 1);
    let mut second = Sampler::builder(&embed)
        .source(fake.clone())
        .host(false)
        .build();
    let (snap, logs) = warnings(|| second.sample_once());
    assert_eq!(snap.gpu_availability, GpuAvailability::NoGpu);
    assert!(snap.gpus.is_empty());
    assert!(
        logs[0].contains("already reported by another sampler"),
        "{logs:?}"
    );
    // Once the first sampler is gone its GPUs can be claimed again.
    drop(first);
    let mut third = Sampler::builder(&embed).source(fake).host(false).build();
    assert_eq!(third.sample_once().gpus.len(), 1);
}

#[test]
fn a_meter_attached_to_a_running_sampler_gets_its_share() {
    let (chat, _mock) = meter();
    let embed = Meter::builder().model("embed").build();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let handle = Sampler::builder(&chat)
        .source(fake)
        .host(false)
        .interval(Duration::from_millis(1))
        .start()
        .unwrap();
    handle.attach(&embed);
    // The thread picks the meter up at its next sample; wait for that sample, bounded.
    let t0 = std::time::Instant::now();
    let models = loop {
        let models: Vec<String> = handle
            .latest()
            .map(|s| s.models.into_iter().map(|m| m.model).collect())
            .unwrap_or_default();
        if models.len() == 2 || t0.elapsed() > Duration::from_secs(60) {
            break models;
        }
        std::thread::yield_now();
    };
    handle.stop();
    assert_eq!(models, vec!["m".to_owned(), "embed".to_owned()]);
}

// ---- case 4: a lost GPU leaves NaN series forever --------------------------------------------

#[test]
fn a_lost_gpu_keeps_node_sums_finite_in_the_exposition() {
    let mut prom = tokenmeter_export::Prometheus::new()
        .without_listener()
        .build()
        .unwrap();
    let rec = prom.take_recorder().unwrap();
    let (meter, mock) = meter();
    let mut fake = FakeGpuSource::new();
    for i in 0..8 {
        fake = fake.with_gpu(&format!("H100 #{i}"), FakeGpuSource::typical_reading());
    }
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    metrics::with_local_recorder(&rec, || {
        s.sample_once();
        control.lose(3); // falls off the bus
        for _ in 0..3 {
            mock.increment(Duration::from_secs(1));
            s.sample_once();
        }
    });
    let text = prom.render();
    assert!(!text.contains("NaN"), "{text}");
    let values = |name: &str, filter: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let power = values("hw_power_watts", "");
    assert_eq!(power.len(), 8);
    assert_eq!(power.iter().sum::<f64>(), 2100.0);
    // The lost GPU is marked, for dashboards to filter averages and minima on.
    let failed = values("hw_status", "hw_state=\"failed\"");
    assert_eq!(failed.iter().sum::<f64>(), 1.0);
    assert_eq!(values("hw_status", "hw_id=\"3\",").len(), 2);
    assert_eq!(
        values("hw_status", "hw_id=\"3\","),
        vec![0.0, 1.0],
        "ok = 0, failed = 1"
    );
}
