//! Per-GPU state: one GPU's series, its latest reading as a [`GpuSample`], peak memory,
//! GPU-seconds and energy.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tokenmeter_core::Meter;
use tokenmeter_core::catalog::{self, MetricDef};
use tokenmeter_core::clock::Instant;

use crate::emit::{CounterSlot, GaugeSlot, node_labels};
use crate::source::{
    DeviceError, Field, FieldError, GpuIdentity, GpuReading, GpuSource, THROTTLE_REASONS,
};

use super::GpuSelection;
use super::energy::{EnergyEvent, EnergySource, GpuEnergy};

/// The latest reading of one GPU. `None` fields were not available (never a stand-in zero).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuSample {
    /// NVML index.
    pub index: u32,
    /// GPU UUID.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// True once the GPU stopped answering; every reading below is then `None`.
    pub lost: bool,
    /// Kernel-busy fraction (0..=1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// Memory-controller busy fraction (0..=1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_controller_utilization: Option<f64>,
    /// Memory used, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Memory free, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_free_bytes: Option<u64>,
    /// Memory total, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Used / total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_utilization: Option<f64>,
    /// Highest memory used since the sampler started, bytes (kept after the GPU is lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// Memory used by this process, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_memory_bytes: Option<u64>,
    /// Power draw, watts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    /// Enforced power limit, watts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<f64>,
    /// Energy since the sampler started, joules (kept after the GPU is lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_j: Option<f64>,
    /// Where `energy_j` comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_source: Option<EnergySource>,
    /// Core temperature, °C.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    /// SM clock, Hz.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_sm_hz: Option<f64>,
    /// Memory clock, Hz.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_memory_hz: Option<f64>,
    /// Active throttle reasons (label values of [`THROTTLE_REASONS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle_reasons: Option<Vec<&'static str>>,
    /// Corrected ECC errors over the GPU's lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecc_corrected: Option<u64>,
    /// Uncorrected ECC errors over the GPU's lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrected: Option<u64>,
    /// PCIe transmit (GPU to host), bytes/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcie_tx_bytes_per_s: Option<f64>,
    /// PCIe receive (host to GPU), bytes/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcie_rx_bytes_per_s: Option<f64>,
}

struct GpuMetrics {
    utilization: GaugeSlot,
    memory_utilization: GaugeSlot,
    memory_controller: GaugeSlot,
    memory_used: GaugeSlot,
    memory_limit: GaugeSlot,
    memory_free: GaugeSlot,
    memory_peak: GaugeSlot,
    process_memory: GaugeSlot,
    power: GaugeSlot,
    power_limit: GaugeSlot,
    temperature: GaugeSlot,
    clock_sm: GaugeSlot,
    clock_memory: GaugeSlot,
    throttle: Vec<GaugeSlot>,
    pcie_tx: GaugeSlot,
    pcie_rx: GaugeSlot,
    status_ok: GaugeSlot,
    status_failed: GaugeSlot,
    energy: CounterSlot,
    ecc_corrected: RawCounter,
    ecc_uncorrected: RawCounter,
}

/// A counter fed with a raw lifetime count that can be reset (driver reload, GPU reset): the
/// exported total starts at the first raw value and grows by each increase; after a decrease
/// the raw value counts from zero, as Prometheus's `rate()` does, so no event is lost.
struct RawCounter {
    slot: CounterSlot,
    last: Option<u64>,
    total: u64,
}

impl RawCounter {
    fn new(slot: CounterSlot) -> Self {
        RawCounter {
            slot,
            last: None,
            total: 0,
        }
    }

    /// A good reading; a failed one is skipped (the next good one covers the gap).
    fn observe(&mut self, raw: u64) {
        let growth = match self.last {
            Some(prev) if raw >= prev => raw - prev,
            _ => raw,
        };
        self.total = self.total.saturating_add(growth);
        self.last = Some(raw);
        self.slot.advance_to(self.total);
    }
}

impl GpuMetrics {
    fn new(meter: &Meter, id: &GpuIdentity) -> Self {
        let index = id.index.to_string();
        let base = [
            ("hw.id", index.as_str()),
            ("hw.name", id.name.as_str()),
            ("gpu.uuid", id.uuid.as_str()),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut all: Vec<(&str, &str)> = base.to_vec();
            all.extend_from_slice(extra);
            node_labels(meter, &all)
        };
        let g = |def: &'static MetricDef| GaugeSlot::new(meter, def, with(&[]));
        let gpu = ("hw.type", "gpu");
        GpuMetrics {
            utilization: GaugeSlot::new(
                meter,
                catalog::gpu::UTILIZATION,
                with(&[("hw.gpu.task", "general")]),
            ),
            memory_utilization: g(catalog::gpu::MEMORY_UTILIZATION),
            memory_controller: g(catalog::gpu::MEMORY_CONTROLLER_UTILIZATION),
            memory_used: g(catalog::gpu::MEMORY_USAGE),
            memory_limit: g(catalog::gpu::MEMORY_LIMIT),
            memory_free: g(catalog::gpu::MEMORY_FREE),
            memory_peak: g(catalog::gpu::MEMORY_PEAK),
            process_memory: g(catalog::gpu::GPU_PROCESS_MEMORY_USAGE),
            power: GaugeSlot::new(meter, catalog::gpu::POWER, with(&[gpu])),
            power_limit: g(catalog::gpu::POWER_LIMIT),
            temperature: g(catalog::gpu::TEMPERATURE),
            clock_sm: g(catalog::gpu::CLOCK_SM),
            clock_memory: g(catalog::gpu::CLOCK_MEMORY),
            throttle: THROTTLE_REASONS
                .iter()
                .map(|(_, r)| GaugeSlot::new(meter, catalog::gpu::THROTTLE, with(&[("reason", r)])))
                .collect(),
            pcie_tx: GaugeSlot::new(
                meter,
                catalog::gpu::PCIE_THROUGHPUT,
                with(&[("network.io.direction", "transmit")]),
            ),
            pcie_rx: GaugeSlot::new(
                meter,
                catalog::gpu::PCIE_THROUGHPUT,
                with(&[("network.io.direction", "receive")]),
            ),
            status_ok: GaugeSlot::new(
                meter,
                catalog::gpu::STATUS,
                with(&[gpu, ("hw.state", "ok")]),
            ),
            status_failed: GaugeSlot::new(
                meter,
                catalog::gpu::STATUS,
                with(&[gpu, ("hw.state", "failed")]),
            ),
            energy: CounterSlot::new(meter, catalog::gpu::ENERGY, with(&[gpu])),
            ecc_corrected: RawCounter::new(CounterSlot::new(
                meter,
                catalog::gpu::ERRORS,
                with(&[gpu, ("error.type", "corrected")]),
            )),
            ecc_uncorrected: RawCounter::new(CounterSlot::new(
                meter,
                catalog::gpu::ERRORS,
                with(&[gpu, ("error.type", "uncorrected")]),
            )),
        }
    }
}

pub(super) struct GpuState {
    id: GpuIdentity,
    metrics: GpuMetrics,
    /// Reported (selection satisfied). With `UsedByThisProcess` it turns true on first use.
    pub(super) active: bool,
    lost: bool,
    reads: u64,
    warned: HashSet<&'static str>,
    peak_memory: Option<u64>,
    pub(super) energy: GpuEnergy,
    /// Time this GPU was reported and answering (the basis of cost).
    pub(super) gpu_time: Duration,
    last_active_at: Option<Instant>,
}

impl GpuState {
    pub(super) fn new(meter: &Meter, id: GpuIdentity, active: bool) -> Self {
        GpuState {
            metrics: GpuMetrics::new(meter, &id),
            id,
            active,
            lost: false,
            reads: 0,
            warned: HashSet::new(),
            peak_memory: None,
            energy: GpuEnergy::default(),
            gpu_time: Duration::ZERO,
            last_active_at: None,
        }
    }

    pub(super) fn sample(
        &mut self,
        source: &mut dyn GpuSource,
        now: Instant,
        selection: &GpuSelection,
    ) -> Option<GpuSample> {
        if self.lost {
            return self.lost_sample();
        }
        let reading = match source.read(&self.id) {
            Ok(r) => r,
            Err(DeviceError::Lost(msg)) => {
                self.lost = true;
                tracing::warn!(
                    gpu = self.id.index, uuid = %self.id.uuid,
                    "tokenmeter-gpu: GPU {} ({}, {}) lost: {msg}; its metrics are now absent",
                    self.id.index, self.id.name, self.id.uuid
                );
                self.mark_lost();
                return self.lost_sample();
            }
        };
        self.reads += 1;
        if !self.active
            && *selection == GpuSelection::UsedByThisProcess
            && matches!(reading.process_memory, Ok(Some(_)))
        {
            self.active = true;
        }
        if !self.active {
            return None;
        }
        self.log_missing(&reading);
        if let Some(t0) = self.last_active_at {
            self.gpu_time += now.saturating_duration_since(t0);
        }
        self.last_active_at = Some(now);
        Some(self.apply(reading, now))
    }

    /// One log line for the first read (listing every missing field), then one per field that
    /// starts failing later.
    fn log_missing(&mut self, r: &GpuReading) {
        let missing = missing_fields(r);
        let new: Vec<String> = missing
            .into_iter()
            .filter(|(name, _)| self.warned.insert(name))
            .map(|(name, e)| format!("{name} ({e})"))
            .collect();
        if !new.is_empty() {
            tracing::warn!(
                gpu = self.id.index, uuid = %self.id.uuid,
                "tokenmeter-gpu: GPU {} ({}): unavailable: {}; those metrics are absent",
                self.id.index, self.id.name, new.join(", ")
            );
        }
    }

    fn apply(&mut self, r: GpuReading, now: Instant) -> GpuSample {
        let m = &mut self.metrics;
        let utilization = r.utilization.ok();
        m.utilization.set(utilization);
        let memctl = r.memory_controller_utilization.ok();
        m.memory_controller.set(memctl);
        let mem = r.memory.ok();
        m.memory_used.set(mem.map(|x| x.used as f64));
        m.memory_free.set(mem.map(|x| x.free as f64));
        m.memory_limit.set(mem.map(|x| x.total as f64));
        let mem_util = mem
            .filter(|x| x.total > 0)
            .map(|x| x.used as f64 / x.total as f64);
        m.memory_utilization.set(mem_util);
        if let Some(x) = mem {
            self.peak_memory = Some(self.peak_memory.map_or(x.used, |p| p.max(x.used)));
        }
        m.memory_peak.set(self.peak_memory.map(|p| p as f64));
        let process_memory = r.process_memory.ok().flatten();
        m.process_memory.set(process_memory.map(|b| b as f64));
        let power = r.power_w.ok();
        m.power.set(power);
        let power_limit = r.power_limit_w.ok();
        m.power_limit.set(power_limit);
        let temperature = r.temperature_c.ok();
        m.temperature.set(temperature);
        let clock_sm = r.clock_sm_hz.ok();
        m.clock_sm.set(clock_sm);
        let clock_memory = r.clock_memory_hz.ok();
        m.clock_memory.set(clock_memory);
        let throttle = r.throttle_reasons.ok();
        for (slot, (bit, _)) in m.throttle.iter_mut().zip(THROTTLE_REASONS) {
            slot.set(throttle.map(|t| if t & bit != 0 { 1.0 } else { 0.0 }));
        }
        let throttle_names = throttle.map(|t| {
            THROTTLE_REASONS
                .iter()
                .filter(|(b, _)| t & b != 0)
                .map(|(_, n)| *n)
                .collect()
        });
        let ecc_corrected = r.ecc_corrected.ok();
        if let Some(v) = ecc_corrected {
            m.ecc_corrected.observe(v);
        }
        let ecc_uncorrected = r.ecc_uncorrected.ok();
        if let Some(v) = ecc_uncorrected {
            m.ecc_uncorrected.observe(v);
        }
        let pcie_tx = r.pcie_tx_bytes_per_s.ok();
        m.pcie_tx.set(pcie_tx);
        let pcie_rx = r.pcie_rx_bytes_per_s.ok();
        m.pcie_rx.set(pcie_rx);
        m.status_ok.set(Some(1.0));
        m.status_failed.set(Some(0.0));

        if let Some(EnergyEvent::Stalled { counter_j }) =
            self.energy.update(r.energy_counter_j.ok(), power, now)
        {
            tracing::warn!(
                gpu = self.id.index, uuid = %self.id.uuid,
                "tokenmeter-gpu: GPU {} ({}): energy counter stuck at {counter_j} J while power is drawn; integrating power until it moves",
                self.id.index, self.id.name
            );
        }
        if let Some(e) = self.energy_whole_j() {
            self.metrics.energy.advance_to(e);
        }

        GpuSample {
            index: self.id.index,
            uuid: self.id.uuid.clone(),
            name: self.id.name.clone(),
            lost: false,
            utilization,
            memory_controller_utilization: memctl,
            memory_used_bytes: mem.map(|x| x.used),
            memory_free_bytes: mem.map(|x| x.free),
            memory_total_bytes: mem.map(|x| x.total),
            memory_utilization: mem_util,
            memory_peak_bytes: self.peak_memory,
            process_memory_bytes: process_memory,
            power_w: power,
            power_limit_w: power_limit,
            energy_j: self.energy.total_j,
            energy_source: self.energy.source,
            temperature_c: temperature,
            clock_sm_hz: clock_sm,
            clock_memory_hz: clock_memory,
            throttle_reasons: throttle_names,
            ecc_corrected,
            ecc_uncorrected,
            pcie_tx_bytes_per_s: pcie_tx,
            pcie_rx_bytes_per_s: pcie_rx,
        }
    }

    /// Energy since start in whole joules, as the `hw.energy` counter exports it (`metrics`
    /// counters are integers) and as the accounting splits it.
    pub(super) fn energy_whole_j(&self) -> Option<u64> {
        self.energy.total_j.map(|e| e.max(0.0).floor() as u64)
    }

    /// Energy since start in whole micro-joules, as the per-request split counts it.
    pub(super) fn energy_uj(&self) -> Option<u64> {
        self.energy
            .total_j
            .map(|e| (e.max(0.0) * 1e6).floor() as u64)
    }

    /// The GPU is gone: every gauge of it is set once to 0 and released. A lost GPU draws,
    /// holds and moves nothing the node can use, so node sums (`sum(hw_power_watts)`) stay
    /// finite and right, where NaN would turn them NaN for as long as the process lives;
    /// `hw.status{hw.state="failed"}` = 1 is what dashboards filter averages and minima on.
    /// Released series can be dropped by an exporter that evicts series no handle can update
    /// (tokenmeter's Prometheus exporter with an idle timeout). Counters (energy, ECC) keep
    /// their totals.
    fn mark_lost(&mut self) {
        let m = &mut self.metrics;
        for slot in [
            &mut m.utilization,
            &mut m.memory_utilization,
            &mut m.memory_controller,
            &mut m.memory_used,
            &mut m.memory_limit,
            &mut m.memory_free,
            &mut m.process_memory,
            &mut m.power,
            &mut m.power_limit,
            &mut m.temperature,
            &mut m.clock_sm,
            &mut m.clock_memory,
            &mut m.pcie_tx,
            &mut m.pcie_rx,
            &mut m.memory_peak,
        ] {
            slot.retire(0.0);
        }
        for slot in &mut m.throttle {
            slot.retire(0.0);
        }
        self.energy.lost();
        self.last_active_at = None;
    }

    /// A lost GPU's sample (what was measured before the loss is kept) and its state series,
    /// set at every sample so a recorder installed later gets them too. `None` while the GPU
    /// is not reported.
    fn lost_sample(&mut self) -> Option<GpuSample> {
        if !self.active {
            return None;
        }
        self.metrics.status_ok.set(Some(0.0));
        self.metrics.status_failed.set(Some(1.0));
        Some(GpuSample {
            index: self.id.index,
            uuid: self.id.uuid.clone(),
            name: self.id.name.clone(),
            lost: true,
            utilization: None,
            memory_controller_utilization: None,
            memory_used_bytes: None,
            memory_free_bytes: None,
            memory_total_bytes: None,
            memory_utilization: None,
            memory_peak_bytes: self.peak_memory,
            process_memory_bytes: None,
            power_w: None,
            power_limit_w: None,
            energy_j: self.energy.total_j,
            energy_source: self.energy.source,
            temperature_c: None,
            clock_sm_hz: None,
            clock_memory_hz: None,
            throttle_reasons: None,
            ecc_corrected: None,
            ecc_uncorrected: None,
            pcie_tx_bytes_per_s: None,
            pcie_rx_bytes_per_s: None,
        })
    }
}

fn missing_fields(r: &GpuReading) -> Vec<(&'static str, FieldError)> {
    fn chk<T>(out: &mut Vec<(&'static str, FieldError)>, name: &'static str, f: &Field<T>) {
        if let Err(e) = f {
            out.push((name, e.clone()));
        }
    }
    let mut out = Vec::new();
    chk(&mut out, "utilization", &r.utilization);
    chk(
        &mut out,
        "memory_controller_utilization",
        &r.memory_controller_utilization,
    );
    chk(&mut out, "memory", &r.memory);
    chk(&mut out, "process_memory", &r.process_memory);
    chk(&mut out, "power", &r.power_w);
    chk(&mut out, "power_limit", &r.power_limit_w);
    chk(&mut out, "energy_counter", &r.energy_counter_j);
    chk(&mut out, "temperature", &r.temperature_c);
    chk(&mut out, "clock_sm", &r.clock_sm_hz);
    chk(&mut out, "clock_memory", &r.clock_memory_hz);
    chk(&mut out, "throttle_reasons", &r.throttle_reasons);
    chk(&mut out, "ecc_corrected", &r.ecc_corrected);
    chk(&mut out, "ecc_uncorrected", &r.ecc_uncorrected);
    chk(&mut out, "pcie_tx", &r.pcie_tx_bytes_per_s);
    chk(&mut out, "pcie_rx", &r.pcie_rx_bytes_per_s);
    out
}
