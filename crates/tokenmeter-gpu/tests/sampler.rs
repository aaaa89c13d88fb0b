//! Sampler behaviour through the fake source: readings, energy, derived figures, absence and
//! faults, thread start/stop. Time comes from the meter's mock clock; no test sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Exported, GIB, generate, meter, warnings};
use metrics_util::debugging::DebuggingRecorder;
use tokenmeter_gpu::{
    EnergySource, FakeGpuSource, FieldError, GpuAvailability, GpuSelection, GpuSnapshot, Sampler,
};

// ---- readings --------------------------------------------------------------------------------

#[test]
fn typical_reading_is_exported_with_otel_names_and_labels() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, _mock) = meter();
    let fake =
        FakeGpuSource::new().with_gpu("NVIDIA H100 80GB HBM3", FakeGpuSource::typical_reading());
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    let (snap, logs) = warnings(|| metrics::with_local_recorder(&rec, || s.sample_once()));
    ex.read();
    assert!(logs.is_empty(), "{logs:?}");

    assert_eq!(snap.gpu_availability, GpuAvailability::Ok);
    assert_eq!(snap.sample, 1);
    let g = &snap.gpus[0];
    assert_eq!(
        (g.index, g.uuid.as_str(), g.name.as_str()),
        (0, "GPU-fake-0", "NVIDIA H100 80GB HBM3")
    );
    assert_eq!(g.utilization, Some(0.5));
    assert_eq!(g.memory_controller_utilization, Some(0.25));
    assert_eq!(g.memory_used_bytes, Some(40 * GIB));
    assert_eq!(g.memory_total_bytes, Some(80 * GIB));
    assert_eq!(g.memory_utilization, Some(0.5));
    assert_eq!(g.memory_peak_bytes, Some(40 * GIB));
    assert_eq!(g.process_memory_bytes, Some(10 * GIB));
    assert_eq!(g.power_w, Some(300.0));
    assert_eq!(g.power_limit_w, Some(700.0));
    assert_eq!(g.energy_j, Some(0.0));
    assert_eq!(g.energy_source, Some(EnergySource::Counter));
    assert_eq!(g.temperature_c, Some(60.0));
    assert_eq!(g.throttle_reasons, Some(vec!["sw_power_cap"]));
    assert_eq!((g.ecc_corrected, g.ecc_uncorrected), (Some(2), Some(0)));

    let gpu = [
        ("hw_id", "0"),
        ("hw_name", "NVIDIA H100 80GB HBM3"),
        ("gpu_uuid", "GPU-fake-0"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = gpu.to_vec();
        v.extend_from_slice(extra);
        v
    };
    assert_eq!(
        ex.gauge(
            "hw_gpu_utilization_ratio",
            &with(&[("hw_gpu_task", "general")])
        ),
        Some(0.5)
    );
    assert_eq!(ex.gauge("hw_gpu_memory_utilization_ratio", &gpu), Some(0.5));
    assert_eq!(
        ex.gauge("tokenmeter_gpu_memory_controller_utilization_ratio", &gpu),
        Some(0.25)
    );
    assert_eq!(
        ex.gauge("hw_gpu_memory_usage_bytes", &gpu),
        Some((40 * GIB) as f64)
    );
    assert_eq!(
        ex.gauge("hw_gpu_memory_limit_bytes", &gpu),
        Some((80 * GIB) as f64)
    );
    assert_eq!(
        ex.gauge("tokenmeter_gpu_memory_free_bytes", &gpu),
        Some((40 * GIB) as f64)
    );
    assert_eq!(
        ex.gauge("tokenmeter_gpu_memory_peak_bytes", &gpu),
        Some((40 * GIB) as f64)
    );
    assert_eq!(
        ex.gauge("tokenmeter_gpu_process_memory_usage_bytes", &gpu),
        Some((10 * GIB) as f64)
    );
    assert_eq!(
        ex.gauge("hw_power_watts", &with(&[("hw_type", "gpu")])),
        Some(300.0)
    );
    assert_eq!(
        ex.gauge("tokenmeter_gpu_power_limit_watts", &gpu),
        Some(700.0)
    );
    assert_eq!(ex.gauge("hw_temperature_celsius", &gpu), Some(60.0));
    assert_eq!(
        ex.gauge("tokenmeter_gpu_clock_sm_hertz", &gpu),
        Some(1.98e9)
    );
    assert_eq!(
        ex.gauge("tokenmeter_gpu_clock_memory_hertz", &gpu),
        Some(2.619e9)
    );
    assert_eq!(
        ex.gauge(
            "tokenmeter_gpu_throttle",
            &with(&[("reason", "sw_power_cap")])
        ),
        Some(1.0)
    );
    assert_eq!(
        ex.gauge(
            "tokenmeter_gpu_throttle",
            &with(&[("reason", "hw_slowdown")])
        ),
        Some(0.0)
    );
    assert_eq!(
        ex.gauge(
            "tokenmeter_gpu_pcie_throughput_bytes_per_second",
            &with(&[("network_io_direction", "transmit")])
        ),
        Some(1.0e6)
    );
    assert_eq!(
        ex.gauge(
            "tokenmeter_gpu_pcie_throughput_bytes_per_second",
            &with(&[("network_io_direction", "receive")])
        ),
        Some(2.0e6)
    );
    assert_eq!(
        ex.gauge("hw_status", &with(&[("hw_state", "ok")])),
        Some(1.0)
    );
    assert_eq!(
        ex.gauge("hw_status", &with(&[("hw_state", "failed")])),
        Some(0.0)
    );
    assert_eq!(
        ex.counter("hw_errors_total", &with(&[("error_type", "corrected")])),
        Some(2)
    );
    assert_eq!(
        ex.counter("hw_errors_total", &with(&[("error_type", "uncorrected")])),
        Some(0)
    );
    assert_eq!(
        ex.counter("hw_energy_joules_total", &with(&[("hw_type", "gpu")])),
        Some(0)
    );
    // One sampler serves every model of the process: GPU and host series carry no model
    // label (issue 16, case 3); the per-model figures do.
    let labels_of = |name: &str| -> Vec<String> {
        ex.series
            .iter()
            .filter(|(n, _, _)| n == name)
            .flat_map(|(_, l, _)| l.iter().map(|(k, _)| k.clone()))
            .collect()
    };
    for name in ["hw_power_watts", "hw_energy_joules_total", "hw_status"] {
        let keys = labels_of(name);
        assert!(!keys.is_empty(), "{name}");
        for model_scoped in [
            "gen_ai_request_model",
            "gen_ai_operation_name",
            "gen_ai_provider_name",
        ] {
            assert!(!keys.iter().any(|k| k == model_scoped), "{name}: {keys:?}");
        }
    }
    // No tokens yet: per-token figures are absent, not zero.
    assert!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[])
            .is_none()
    );
    assert_eq!(snap.derived.joules_per_output_token, None);
}

#[test]
fn every_exported_name_is_in_the_catalog() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let mut s = Sampler::builder(&meter)
        .source(fake)
        .price_per_gpu_hour(1.0)
        .build();
    metrics::with_local_recorder(&rec, || {
        s.sample_once();
        generate(&meter, 10);
        mock.increment(Duration::from_secs(1));
        s.sample_once();
    });
    ex.read();
    let catalog: Vec<String> = tokenmeter_core::catalog::gpu::DEFS
        .iter()
        .map(|d| meter.metric_names().name(d).to_owned())
        .collect();
    for (name, _, _) in &ex.series {
        if name.starts_with("hw_")
            || name.contains("gpu")
            || name.starts_with("process_")
            || name.starts_with("system_")
            || name.contains("energy")
            || name.contains("cost")
        {
            assert!(catalog.contains(name), "{name} is not in catalog/gpu.rs");
        }
    }
    // Host metrics flow too (this process exists on every platform the tests run on).
    assert!(ex.gauge("process_resident_memory_bytes", &[]).unwrap() > 0.0);
}

// ---- energy ----------------------------------------------------------------------------------

#[test]
fn energy_comes_from_the_counter_as_joules_since_start() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    let snap = metrics::with_local_recorder(&rec, || {
        s.sample_once(); // counter 1000 J: baseline
        control.set_energy_counter(0, 1150.5);
        mock.increment(Duration::from_secs(1));
        s.sample_once();
        control.set_energy_counter(0, 1400.75);
        mock.increment(Duration::from_secs(1));
        s.sample_once()
    });
    ex.read();
    assert_eq!(snap.gpus[0].energy_j, Some(400.75));
    assert_eq!(snap.gpus[0].energy_source, Some(EnergySource::Counter));
    assert_eq!(snap.derived.energy_since_start_j, Some(400.75));
    // Whole joules on the counter.
    assert_eq!(
        ex.counter("hw_energy_joules_total", &[("hw_id", "0")]),
        Some(400)
    );
}

#[test]
fn energy_counter_reset_restarts_from_the_new_value() {
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    s.sample_once(); // 1000
    control.set_energy_counter(0, 1100.0);
    mock.increment(Duration::from_secs(1));
    s.sample_once(); // +100
    control.set_energy_counter(0, 5.0); // driver reloaded
    mock.increment(Duration::from_secs(1));
    s.sample_once(); // +5: the counter restarted from 0 within the interval (Prometheus's rule)
    control.set_energy_counter(0, 25.0);
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once(); // +20
    assert_eq!(snap.gpus[0].energy_j, Some(125.0));
}

#[test]
fn energy_falls_back_to_integrating_power() {
    let (meter, mock) = meter();
    let mut r = FakeGpuSource::typical_reading();
    r.energy_counter_j = Err(FieldError::NotSupported);
    let fake = FakeGpuSource::new().with_gpu("T4", r);
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    let (snap, logs) = warnings(|| {
        s.sample_once(); // 300 W, baseline
        control.set_power(0, 500.0);
        mock.increment(Duration::from_secs(2));
        s.sample_once(); // (300 + 500) / 2 * 2 s = 800 J
        control.set_power(0, 100.0);
        mock.increment(Duration::from_millis(500));
        s.sample_once() // (500 + 100) / 2 * 0.5 s = 150 J
    });
    assert_eq!(snap.gpus[0].energy_j, Some(950.0));
    assert_eq!(
        snap.gpus[0].energy_source,
        Some(EnergySource::IntegratedPower)
    );
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].contains("energy_counter"), "{logs:?}");
}

#[test]
fn no_energy_at_all_leaves_energy_absent() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let mut r = FakeGpuSource::typical_reading();
    r.energy_counter_j = Err(FieldError::NotSupported);
    r.power_w = Err(FieldError::NotSupported);
    let mut s = Sampler::builder(&meter)
        .source(FakeGpuSource::new().with_gpu("A", r))
        .host(false)
        .build();
    let snap = metrics::with_local_recorder(&rec, || {
        s.sample_once();
        generate(&meter, 100);
        mock.increment(Duration::from_secs(1));
        s.sample_once()
    });
    ex.read();
    assert_eq!(snap.gpus[0].energy_j, None);
    assert_eq!(snap.derived.energy_since_start_j, None);
    assert_eq!(snap.derived.joules_per_output_token, None);
    assert!(ex.counter("hw_energy_joules_total", &[]).is_none());
    assert!(ex.gauge("hw_power_watts", &[]).is_none());
    assert!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[])
            .is_none()
    );
}

// ---- derived ---------------------------------------------------------------------------------

#[test]
fn joules_and_cost_per_token_over_the_window() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new()
        .with_gpu("A", FakeGpuSource::typical_reading())
        .with_gpu("B", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .window(Duration::from_secs(10))
        .price_per_gpu_hour(3.6)
        .build();
    let snap = metrics::with_local_recorder(&rec, || {
        generate(&meter, 7); // before the sampler's start: not counted
        s.sample_once(); // t=0: both counters 1000 J
        generate(&meter, 500);
        control.set_energy_counter(0, 1600.0);
        control.set_energy_counter(1, 1400.0);
        // B then idles at 0 W: its counter standing still is no stall to bridge.
        control.set_power(1, 0.0);
        mock.increment(Duration::from_secs(5));
        s.sample_once() // t=5: +1000 J, 500 tokens, 2 GPUs x 5 s
    });
    ex.read();
    let d = &snap.derived;
    assert_eq!(d.window_s, 5.0);
    assert_eq!(d.window_output_tokens, 500);
    assert_eq!(d.window_energy_j, Some(1000.0));
    assert_eq!(d.joules_per_output_token, Some(2.0));
    assert_eq!(d.output_tokens_per_joule, Some(0.5));
    // 3.6 per GPU-hour = 0.001 per GPU-second; 10 GPU-seconds = 0.01 for 500 tokens.
    assert_eq!(d.gpu_seconds_since_start, 10.0);
    let cost = d.cost_per_1k_output_tokens.unwrap();
    assert!((cost - 0.02).abs() < 1e-12, "{cost}");
    assert_eq!(d.output_tokens_since_start, 500);
    assert_eq!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[]),
        Some(2.0)
    );
    assert_eq!(
        ex.gauge("tokenmeter_energy_output_tokens_per_joule", &[]),
        Some(0.5)
    );
    let exported = ex
        .gauge("tokenmeter_cost_per_1k_output_tokens", &[])
        .unwrap();
    assert!((exported - 0.02).abs() < 1e-12);

    // The window slides: after t=15 the t=0 point is out, and t=5 is the oldest.
    generate(&meter, 100);
    control.set_energy_counter(0, 1700.0);
    mock.increment(Duration::from_secs(10));
    let snap = s.sample_once();
    assert_eq!(snap.derived.window_s, 10.0);
    assert_eq!(snap.derived.window_output_tokens, 100);
    assert_eq!(snap.derived.window_energy_j, Some(100.0));
    assert_eq!(snap.derived.joules_per_output_token, Some(1.0));
}

#[test]
fn idle_window_has_no_per_token_figures() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .window(Duration::from_secs(2))
        .price_per_gpu_hour(2.0)
        .build();
    metrics::with_local_recorder(&rec, || {
        s.sample_once();
        generate(&meter, 10);
        control.set_energy_counter(0, 1010.0);
        mock.increment(Duration::from_secs(1));
        s.sample_once();
    });
    ex.read();
    assert_eq!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[]),
        Some(1.0)
    );
    // Two idle seconds later no token is in the window: the figure turns NaN, never 0.
    let snap = metrics::with_local_recorder(&rec, || {
        mock.increment(Duration::from_secs(1));
        s.sample_once();
        mock.increment(Duration::from_secs(1));
        s.sample_once()
    });
    ex.read();
    assert_eq!(snap.derived.window_output_tokens, 0);
    assert_eq!(snap.derived.joules_per_output_token, None);
    assert_eq!(snap.derived.cost_per_1k_output_tokens, None);
    assert!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[])
            .unwrap()
            .is_nan()
    );
    assert!(
        ex.gauge("tokenmeter_cost_per_1k_output_tokens", &[])
            .unwrap()
            .is_nan()
    );
}

#[test]
fn peak_vram_is_kept_since_start() {
    let (meter, _mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    s.sample_once();
    control.set_memory_used(0, 70 * GIB);
    s.sample_once();
    control.set_memory_used(0, 5 * GIB);
    let snap = s.sample_once();
    assert_eq!(snap.gpus[0].memory_used_bytes, Some(5 * GIB));
    assert_eq!(snap.gpus[0].memory_free_bytes, Some(75 * GIB));
    assert_eq!(snap.gpus[0].memory_peak_bytes, Some(70 * GIB));
}

// ---- absence and faults ----------------------------------------------------------------------

#[test]
fn no_driver_logs_once_and_exports_no_gpu_metric() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let mut s = Sampler::builder(&meter)
        .source(FakeGpuSource::no_driver())
        .build();
    let (snap, logs) = warnings(|| {
        metrics::with_local_recorder(&rec, || {
            s.sample_once();
            generate(&meter, 10);
            mock.increment(Duration::from_secs(1));
            s.sample_once()
        })
    });
    ex.read();
    assert_eq!(snap.gpu_availability, GpuAvailability::NoDriver);
    assert!(snap.gpus.is_empty());
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].contains("NVIDIA driver not available"), "{logs:?}");
    assert!(
        ex.names_starting("hw_").is_empty(),
        "{:?}",
        ex.names_starting("hw_")
    );
    assert!(ex.names_starting("tokenmeter_gpu").is_empty());
    assert!(
        ex.gauge("tokenmeter_energy_per_output_token_joules", &[])
            .is_none()
    );
    // Host metrics go on.
    assert!(snap.host.is_some());
    assert!(ex.gauge("process_resident_memory_bytes", &[]).is_some());
}

#[test]
fn the_real_nvml_source_without_a_driver_does_not_panic() {
    // On machines without the NVIDIA driver (CI, this repository's dev boxes) this takes the
    // no-driver path; on a GPU machine it reads the real GPUs. Either way: no panic.
    let (meter, _mock) = meter();
    let mut s = Sampler::builder(&meter).host(false).build();
    let snap = s.sample_once();
    match snap.gpu_availability {
        GpuAvailability::Ok => assert!(!snap.gpus.is_empty()),
        other => {
            assert!(matches!(
                other,
                GpuAvailability::NoDriver | GpuAvailability::Failed | GpuAvailability::NoGpu
            ));
            assert!(snap.gpus.is_empty());
        }
    }
}

#[test]
fn no_gpu_logs_once() {
    let (meter, _mock) = meter();
    let mut s = Sampler::builder(&meter)
        .source(FakeGpuSource::new())
        .host(false)
        .build();
    let (snap, logs) = warnings(|| {
        s.sample_once();
        s.sample_once()
    });
    assert_eq!(snap.gpu_availability, GpuAvailability::NoGpu);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].contains("no GPU"), "{logs:?}");
}

#[test]
fn failing_enumeration_logs_once() {
    let (meter, _mock) = meter();
    let mut s = Sampler::builder(&meter)
        .source(FakeGpuSource::failing_enumeration(
            "insufficient permissions",
        ))
        .host(false)
        .build();
    let (snap, logs) = warnings(|| {
        s.sample_once();
        s.sample_once()
    });
    assert_eq!(snap.gpu_availability, GpuAvailability::Failed);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].contains("insufficient permissions"));
}

#[test]
fn gpu_lost_mid_run_zeroes_its_gauges_once_marks_it_failed_and_logs_once() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new()
        .with_gpu("A", FakeGpuSource::typical_reading())
        .with_gpu("B", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    let (snap, logs) = warnings(|| {
        metrics::with_local_recorder(&rec, || {
            s.sample_once();
            control.set_energy_counter(0, 1050.0);
            control.set_energy_counter(1, 1300.0);
            mock.increment(Duration::from_secs(1));
            s.sample_once();
            control.lose(0);
            control.set_energy_counter(1, 1600.0);
            mock.increment(Duration::from_secs(1));
            s.sample_once();
            control.set_energy_counter(1, 1900.0);
            mock.increment(Duration::from_secs(1));
            s.sample_once()
        })
    });
    ex.read();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(
        logs[0].contains("GPU 0") && logs[0].contains("lost"),
        "{logs:?}"
    );
    let lost = &snap.gpus[0];
    assert!(lost.lost);
    assert_eq!(
        (lost.utilization, lost.power_w, lost.memory_used_bytes),
        (None, None, None)
    );
    // What was measured before the loss is kept.
    assert_eq!(lost.energy_j, Some(50.0));
    assert_eq!(lost.memory_peak_bytes, Some(40 * GIB));
    // Its gauges were set to 0 once (never NaN: node sums stay finite) ...
    let a = [("hw_id", "0")];
    assert_eq!(ex.gauge("hw_gpu_utilization_ratio", &a), Some(0.0));
    assert_eq!(ex.gauge("hw_power_watts", &a), Some(0.0));
    assert_eq!(ex.gauge("hw_temperature_celsius", &a), Some(0.0));
    assert_eq!(
        ex.gauge(
            "tokenmeter_gpu_throttle",
            &[("hw_id", "0"), ("reason", "sw_power_cap")]
        ),
        Some(0.0)
    );
    // ... and the state series says why, for dashboards to filter on.
    assert_eq!(
        ex.gauge("hw_status", &[("hw_id", "0"), ("hw_state", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        ex.gauge("hw_status", &[("hw_id", "0"), ("hw_state", "ok")]),
        Some(0.0)
    );
    assert_eq!(ex.counter("hw_energy_joules_total", &a), Some(50));
    // The other GPU goes on.
    let b = &snap.gpus[1];
    assert!(!b.lost);
    assert_eq!(b.power_w, Some(300.0));
    assert_eq!(ex.gauge("hw_power_watts", &[("hw_id", "1")]), Some(300.0));
    assert_eq!(
        ex.counter("hw_energy_joules_total", &[("hw_id", "1")]),
        Some(900)
    );
    // Cost stops charging the lost GPU: A for 1 s, B for 3 s.
    assert_eq!(snap.derived.gpu_seconds_since_start, 4.0);
    // The lost GPU is not read again.
    let reads = control.reads();
    s.sample_once();
    assert_eq!(control.reads(), reads + 1);
}

#[test]
fn unsupported_call_leaves_only_that_metric_absent() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, _mock) = meter();
    let mut r = FakeGpuSource::typical_reading();
    r.ecc_corrected = Err(FieldError::NotSupported);
    r.ecc_uncorrected = Err(FieldError::NotSupported);
    r.pcie_tx_bytes_per_s = Err(FieldError::NotSupported);
    let mut s = Sampler::builder(&meter)
        .source(FakeGpuSource::new().with_gpu("RTX 4090", r))
        .host(false)
        .build();
    let (snap, logs) = warnings(|| {
        metrics::with_local_recorder(&rec, || {
            s.sample_once();
            s.sample_once()
        })
    });
    ex.read();
    assert_eq!(logs.len(), 1, "{logs:?}");
    for field in ["ecc_corrected", "ecc_uncorrected", "pcie_tx"] {
        assert!(logs[0].contains(field), "{logs:?}");
    }
    assert!(!logs[0].contains("pcie_rx"), "{logs:?}");
    let g = &snap.gpus[0];
    assert_eq!(
        (g.ecc_corrected, g.ecc_uncorrected, g.pcie_tx_bytes_per_s),
        (None, None, None)
    );
    assert_eq!(g.pcie_rx_bytes_per_s, Some(2.0e6));
    assert!(
        ex.counter("hw_errors_total", &[]).is_none(),
        "never registered, so never a zero"
    );
    assert!(
        ex.gauge(
            "tokenmeter_gpu_pcie_throughput_bytes_per_second",
            &[("network_io_direction", "transmit")]
        )
        .is_none()
    );
    assert_eq!(ex.gauge("hw_power_watts", &[]), Some(300.0));
    let json = serde_json::to_value(&snap).unwrap();
    assert!(
        json["gpus"][0].get("ecc_corrected").is_none(),
        "absent in JSON too: {json}"
    );
    assert_eq!(json["gpus"][0]["power_w"], 300.0);
}

#[test]
fn a_field_that_starts_failing_reads_nan_and_logs_once() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, _mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    let (snap, logs) = warnings(|| {
        metrics::with_local_recorder(&rec, || {
            s.sample_once();
            control.fail_field(0, |r, e| r.temperature_c = Err(e));
            s.sample_once();
            s.sample_once()
        })
    });
    ex.read();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].contains("temperature (fake failure)"), "{logs:?}");
    assert_eq!(snap.gpus[0].temperature_c, None);
    assert!(ex.gauge("hw_temperature_celsius", &[]).unwrap().is_nan());
}

#[test]
fn a_reading_with_nothing_supported_exports_only_status() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (meter, _mock) = meter();
    let mut s = Sampler::builder(&meter)
        .source(FakeGpuSource::new().with_gpu("A", tokenmeter_gpu::GpuReading::unsupported()))
        .host(false)
        .build();
    let (_, logs) = warnings(|| metrics::with_local_recorder(&rec, || s.sample_once()));
    ex.read();
    assert_eq!(logs.len(), 1);
    let names: Vec<&str> = ex.series.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, vec!["hw_status", "hw_status"]);
}

// ---- selection -------------------------------------------------------------------------------

#[test]
fn only_selects_by_index_or_uuid() {
    let (meter, _mock) = meter();
    let fake = FakeGpuSource::new()
        .with_gpu("A", FakeGpuSource::typical_reading())
        .with_gpu("B", FakeGpuSource::typical_reading())
        .with_gpu("C", FakeGpuSource::typical_reading());
    let mut s = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .gpus(GpuSelection::Only(vec!["2".into(), "GPU-fake-0".into()]))
        .build();
    let snap = s.sample_once();
    let idx: Vec<u32> = snap.gpus.iter().map(|g| g.index).collect();
    assert_eq!(idx, vec![0, 2]);
}

#[test]
fn used_by_this_process_reports_a_gpu_once_the_process_appears_on_it() {
    let (meter, mock) = meter();
    let mut idle = FakeGpuSource::typical_reading();
    idle.process_memory = Ok(None);
    let fake = FakeGpuSource::new()
        .with_gpu("A", idle.clone())
        .with_gpu("B", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .price_per_gpu_hour(1.0)
        .gpus(GpuSelection::UsedByThisProcess)
        .build();
    let snap = s.sample_once();
    assert_eq!(
        snap.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
        vec![1]
    );
    control.update(0, |r| r.process_memory = Ok(Some(GIB)));
    mock.increment(Duration::from_secs(1));
    let snap = s.sample_once();
    assert_eq!(
        snap.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
        vec![0, 1]
    );
    // Cost counts GPU-seconds only while a GPU is reported: B for 1 s, A from now.
    assert_eq!(snap.derived.gpu_seconds_since_start, 1.0);
}

// ---- thread ----------------------------------------------------------------------------------

#[test]
fn stop_is_immediate_even_with_a_long_interval() {
    let (meter, _mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let handle = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    let _maybe = handle.latest(); // may or may not have run yet
    handle.stop(); // would block for an hour if stop waited for the interval
    // The thread took exactly its first sample before it was stopped... or was stopped before
    // it took one: never more than one sample in that hour.
    assert!(control.reads() <= 1);
}

#[test]
fn dropping_the_handle_stops_the_thread_and_latest_has_the_sample() {
    let (meter, _mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut sampler = Sampler::builder(&meter).source(fake).host(false).build();
    // One sample before spawning: `latest` is then never empty.
    sampler.sample_once();
    let handle = sampler.spawn().unwrap();
    let latest: GpuSnapshot = handle.latest().unwrap();
    assert_eq!(latest.gpus[0].power_w, Some(300.0));
    drop(handle);
    let reads = control.reads();
    assert!(reads == 1 || reads == 2, "{reads}");
}

#[test]
fn host_sample_has_process_figures() {
    let (meter, _mock) = meter();
    let mut s = Sampler::builder(&meter).without_gpu().build();
    let first = s.sample_once();
    assert_eq!(first.gpu_availability, GpuAvailability::Disabled);
    let h = first.host.unwrap();
    // CPU use needs a period: absent on the first sample, never a fake 0.
    assert_eq!(h.process_cpu_utilization, None);
    assert_eq!(h.system_cpu_utilization, None);
    let rss = h.process_rss_bytes.unwrap();
    assert!(rss > 0);
    if cfg!(target_os = "linux") {
        assert!(h.process_peak_rss_bytes.unwrap() >= rss / 2);
        assert!(h.process_threads.unwrap() >= 1);
        assert!(h.process_open_files.unwrap() >= 1);
    }
    let second = s.sample_once().host.unwrap();
    assert!(second.process_cpu_utilization.is_some());
    assert!(second.system_cpu_utilization.is_some());
}

#[test]
fn a_recorder_installed_after_the_first_sample_still_gets_every_series() {
    // The first samples go to one recorder (think: the no-op one, before the exporter is
    // installed); the sampler must register its handles again under the next recorder.
    let (first, second) = (DebuggingRecorder::new(), DebuggingRecorder::new());
    let (mut ex1, mut ex2) = (Exported::new(&first), Exported::new(&second));
    let (meter, mock) = meter();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter).source(fake).host(false).build();
    metrics::with_local_recorder(&first, || {
        s.sample_once(); // counter 1000 J: baseline
        control.set_energy_counter(0, 1100.0);
        mock.increment(Duration::from_secs(1));
        s.sample_once(); // +100 J
    });
    ex1.read();
    assert_eq!(
        ex1.counter("hw_energy_joules_total", &[("hw_id", "0")]),
        Some(100)
    );
    let util = [("hw_id", "0"), ("hw_gpu_task", "general")];
    assert_eq!(ex1.gauge("hw_gpu_utilization_ratio", &util), Some(0.5));

    control.update(0, |r| r.utilization = Ok(0.75));
    control.set_energy_counter(0, 1150.0);
    mock.increment(Duration::from_secs(1));
    metrics::with_local_recorder(&second, || s.sample_once()); // +50 J
    ex2.read();
    ex1.read();
    // The second recorder has the gauges and the whole energy total, not only the last step.
    assert_eq!(ex2.gauge("hw_gpu_utilization_ratio", &util), Some(0.75));
    assert_eq!(
        ex2.counter("hw_energy_joules_total", &[("hw_id", "0")]),
        Some(150)
    );
    assert_eq!(
        ex2.gauge("hw_temperature_celsius", &[("hw_id", "0")]),
        Some(60.0)
    );
    // The first one saw nothing of the third sample (its counter did not move; the debugging
    // recorder hands gauges out once, so only the counter can be read again).
    assert_eq!(
        ex1.counter("hw_energy_joules_total", &[("hw_id", "0")]),
        Some(100)
    );
}
