//! GPU, host and process metrics, recorded by `tokenmeter-gpu`'s sampler thread.
//!
//! GPU metrics use the OpenTelemetry hardware conventions (`hw.gpu.*`, `hw.power`, `hw.energy`,
//! `hw.temperature`, `hw.errors`, `hw.status`) where they define the metric; process and machine
//! metrics use the `process.*` / `system.*` conventions; everything else is ours (`own: true`,
//! under the meter's prefix). A metric whose source cannot read it (no driver, no GPU, a call
//! the GPU does not support) is never registered, or is set to NaN once its source stops
//! answering: a missing reading is never exported as a zero. A lost GPU is the exception: its
//! gauges are set to 0 once, next to `hw.status{hw.state="failed"}` = 1, so node sums stay
//! finite. Per-GPU and host series carry no model label: one sampler serves every model.

use super::MetricDef;

/// Labels on every per-GPU metric: the NVML index, the product name and the GPU UUID.
const G: &[&str] = &["hw.id", "hw.name", "gpu.uuid"];
/// Per-GPU labels plus `hw.type="gpu"` (the common `hw.*` metrics require it).
const GT: &[&str] = &["hw.id", "hw.name", "gpu.uuid", "hw.type"];

macro_rules! def {
    ($id:literal, $name:literal, own: $own:literal, $kind:ident, $unit:literal, labels: $labels:expr,
     $desc:literal, recorded: $rec:expr) => {
        def!($id, $name, own: $own, prometheus: None, $kind, $unit, labels: $labels, $desc, recorded: $rec)
    };
    ($id:literal, $name:literal, own: $own:literal, prometheus: $prom:expr, $kind:ident, $unit:literal,
     labels: $labels:expr, $desc:literal, recorded: $rec:expr) => {
        metric_def!(id: $id, otel: $name, own: $own, vllm: None, prometheus: $prom,
            kind: $kind, unit: $unit, labels: $labels, buckets: None, vllm_buckets: None,
            description: $desc, recorded: $rec)
    };
}

const EACH_SAMPLE: &str =
    "Every sampler interval (default 1 s), per GPU, while the GPU answers the NVML call.";

/// Every GPU, host and process metric.
pub static DEFS: &[MetricDef] = &[
    // ---- per GPU: utilization and memory ----
    def!("gpu.utilization", "hw.gpu.utilization", own: false, Gauge, "1",
        labels: &["hw.id", "hw.name", "gpu.uuid", "hw.gpu.task"],
        "Fraction of the last sample period during which one or more kernels ran on the GPU (NVML utilization.gpu / 100); hw.gpu.task is \"general\".",
        recorded: EACH_SAMPLE),
    def!("gpu.memory.utilization", "hw.gpu.memory.utilization", own: false, Gauge, "1", labels: G,
        "Fraction of GPU memory in use: memory used / memory total (the OpenTelemetry definition).",
        recorded: EACH_SAMPLE),
    def!("gpu.memory_controller.utilization", "gpu.memory_controller.utilization", own: true, Gauge, "1", labels: G,
        "Fraction of the last sample period during which device memory was read or written (NVML utilization.memory / 100, nvidia-smi's utilization.memory).",
        recorded: EACH_SAMPLE),
    def!("gpu.memory.usage", "hw.gpu.memory.usage", own: false, Gauge, "By", labels: G,
        "GPU memory used, all processes (nvidia-smi memory.used).",
        recorded: EACH_SAMPLE),
    def!("gpu.memory.limit", "hw.gpu.memory.limit", own: false, Gauge, "By", labels: G,
        "Total GPU memory (nvidia-smi memory.total).",
        recorded: EACH_SAMPLE),
    def!("gpu.memory.free", "gpu.memory.free", own: true, Gauge, "By", labels: G,
        "Free GPU memory (nvidia-smi memory.free).",
        recorded: EACH_SAMPLE),
    def!("gpu.memory.peak", "gpu.memory.peak", own: true, Gauge, "By", labels: G,
        "Highest GPU memory used (all processes) seen by the sampler since it started.",
        recorded: EACH_SAMPLE),
    def!("gpu.process.memory.usage", "gpu.process.memory.usage", own: true, Gauge, "By", labels: G,
        "GPU memory used by this process, from NVML's list of running compute processes.",
        recorded: "Every sampler interval, per GPU, while this process is in the GPU's compute-process list (absent otherwise, e.g. in a container whose PIDs NVML cannot see)."),
    // ---- per GPU: power, energy, temperature ----
    def!("gpu.power", "hw.power", own: false, Gauge, "W", labels: GT,
        "Power draw of the GPU (NVML power usage; nvidia-smi power.draw).",
        recorded: EACH_SAMPLE),
    def!("gpu.power.limit", "gpu.power.limit", own: true, Gauge, "W", labels: G,
        "Enforced power limit of the GPU (nvidia-smi enforced.power.limit).",
        recorded: EACH_SAMPLE),
    def!("gpu.energy", "hw.energy", own: false, Counter, "J", labels: GT,
        "Energy consumed by the GPU since the sampler started, in whole joules: from NVML's total-energy counter, or by integrating power over time (trapezoids between samples) on GPUs without it.",
        recorded: "Every sampler interval, per GPU, once the energy counter or the power draw has been read twice."),
    def!("gpu.temperature", "hw.temperature", own: false, Gauge, "Cel", labels: G,
        "GPU core temperature (nvidia-smi temperature.gpu).",
        recorded: EACH_SAMPLE),
    // ---- per GPU: clocks, throttling, errors, PCIe, status ----
    def!("gpu.clock.sm", "gpu.clock.sm", own: true, Gauge, "Hz", labels: G,
        "Current SM clock (nvidia-smi clocks.sm).",
        recorded: EACH_SAMPLE),
    def!("gpu.clock.memory", "gpu.clock.memory", own: true, Gauge, "Hz", labels: G,
        "Current memory clock (nvidia-smi clocks.mem).",
        recorded: EACH_SAMPLE),
    def!("gpu.throttle", "gpu.throttle", own: true, Gauge, "",
        labels: &["hw.id", "hw.name", "gpu.uuid", "reason"],
        "1 while the named clock-throttle reason is active, else 0 (reasons: gpu_idle, applications_clocks_setting, sw_power_cap, hw_slowdown, sync_boost, sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown, display_clock_setting).",
        recorded: EACH_SAMPLE),
    def!("gpu.errors", "hw.errors", own: false, Counter, "{error}",
        labels: &["hw.id", "hw.name", "gpu.uuid", "hw.type", "error.type"],
        "ECC memory errors over the GPU's lifetime (NVML aggregate counter), error.type corrected or uncorrected.",
        recorded: "Every sampler interval, per GPU with ECC enabled (absent on GPUs without ECC)."),
    def!("gpu.pcie.throughput", "gpu.pcie.throughput", own: true, Gauge, "By/s",
        labels: &["hw.id", "hw.name", "gpu.uuid", "network.io.direction"],
        "PCIe throughput of the GPU over NVML's 20 ms measuring window, direction transmit (GPU to host) or receive.",
        recorded: EACH_SAMPLE),
    def!("gpu.status", "hw.status", own: false, Gauge, "",
        labels: &["hw.id", "hw.name", "gpu.uuid", "hw.type", "hw.state"],
        "1 for the GPU's current state, 0 for the other: hw.state ok while NVML answers for the GPU, failed once it is lost (its gauges are then set to 0 once and no longer updated; filter on this to leave it out of averages and minima).",
        recorded: "Every sampler interval, per GPU found at start."),
    // ---- derived over the sampler window ----
    def!("gpu.energy_per_output_token", "energy.per_output_token", own: true, Gauge, "J", labels: &[],
        "GPU energy per output token over the sampler window: this model's attributed energy / its output tokens (from the meter's totals) in the window.",
        recorded: "Every sampler interval, when the window holds at least one output token and a positive energy (zero energy is unknown, never free)."),
    def!("gpu.output_tokens_per_joule", "energy.output_tokens_per_joule", own: true, Gauge, "{token}/J", labels: &[],
        "Output tokens per joule of GPU energy over the sampler window (the inverse of energy.per_output_token).",
        recorded: "Every sampler interval, when the window holds a positive energy and at least one output token."),
    def!("gpu.energy.attributed", "energy.attributed", own: true, Counter, "J", labels: &[],
        "GPU energy attributed to this model since its meter was attached to the sampler, in whole joules: each interval's growth of the GPUs' hw.energy is split across the process's models in proportion to their output tokens in the interval (equally when none generated any), so the models' counters add up exactly to the GPUs'.",
        recorded: "Every sampler interval, per attached meter, once the energy of at least one GPU is known."),
    def!("gpu.cost_per_1k_output_tokens", "cost.per_1k_output_tokens", own: true, Gauge, "{USD}", labels: &[],
        "Cost of 1000 output tokens over the sampler window: configured price per GPU-hour x the GPU-hours attributed to this model / its output tokens x 1000 (GPU time is split across models like energy).",
        recorded: "Every sampler interval, when a price per GPU-hour is configured, GPU time was attributed and the window holds output tokens."),
    // ---- process ----
    // Where Prometheus client libraries export the same quantity (client_golang's process
    // collector, the Python and Java clients), its name is used under both presets, so process
    // dashboards work; the OpenTelemetry mapping would give `process_thread_count` and
    // `process_unix_file_descriptor_count`, whose `_count` suffix promtool reserves for histograms.
    def!("process.cpu.utilization", "process.cpu.utilization", own: false, Gauge, "1", labels: &[],
        "CPU time used by this process over the last sample period / (period x logical CPUs).",
        recorded: "Every sampler interval from the second sample on (the first has no period)."),
    def!("process.memory.usage", "process.memory.usage", own: false, prometheus: Some("process_resident_memory_bytes"), Gauge, "By", labels: &[],
        "Resident memory (RSS) of this process.",
        recorded: "Every sampler interval."),
    def!("process.memory.virtual", "process.memory.virtual", own: false, prometheus: Some("process_virtual_memory_bytes"), Gauge, "By", labels: &[],
        "Virtual memory size of this process.",
        recorded: "Every sampler interval."),
    def!("process.memory.peak", "process.memory.peak", own: true, Gauge, "By", labels: &[],
        "Peak resident memory of this process since it started (getrusage ru_maxrss).",
        recorded: "Every sampler interval, on Unix."),
    def!("process.thread.count", "process.thread.count", own: false, prometheus: Some("process_threads"), Gauge, "{thread}", labels: &[],
        "Threads of this process.",
        recorded: "Every sampler interval, on Linux."),
    def!("process.open_files", "process.unix.file_descriptor.count", own: false, prometheus: Some("process_open_fds"), Gauge, "{file_descriptor}", labels: &[],
        "Open file descriptors of this process.",
        recorded: "Every sampler interval, on Linux."),
    def!("process.disk.io", "process.disk.io", own: false, Counter, "By", labels: &["disk.io.direction"],
        "Bytes this process read from or wrote to storage since it started (/proc/self/io read_bytes/write_bytes), direction read or write.",
        recorded: "Every sampler interval."),
    // ---- machine ----
    def!("system.cpu.utilization", "system.cpu.utilization", own: false, Gauge, "1", labels: &[],
        "Busy fraction of all logical CPUs of the machine over the last sample period.",
        recorded: "Every sampler interval from the second sample on."),
    def!("system.memory.usage", "system.memory.usage", own: false, Gauge, "By", labels: &["system.memory.state"],
        "Machine memory by state: used, free.",
        recorded: "Every sampler interval."),
    def!("system.memory.limit", "system.memory.limit", own: false, Gauge, "By", labels: &[],
        "Total machine memory.",
        recorded: "Every sampler interval."),
    def!("system.disk.io", "system.disk.io", own: false, Counter, "By", labels: &["disk.io.direction"],
        "Bytes read from or written to the machine's disks since the sampler started (summed over distinct disk devices), direction read or write.",
        recorded: "Every sampler interval from the second sample on."),
    def!("system.network.io", "system.network.io", own: false, Counter, "By", labels: &["network.io.direction"],
        "Bytes received or transmitted by the machine's network interfaces since the sampler started (summed over interfaces, loopback excluded), direction receive or transmit.",
        recorded: "Every sampler interval from the second sample on."),
    // ---- per request (docs/gpu.md, "Energy and cost per request") ----
    metric_def!(id: "gpu.request.energy", otel: "request.energy", own: true, vllm: None, prometheus: None,
        kind: Histogram, unit: "J", labels: &[], buckets: Some(REQUEST_ENERGY_BUCKETS), vllm_buckets: None,
        description: "GPU energy attributed to one request: the sum of its shares of each sampler interval's GPU energy, split across the requests in flight by the output tokens each flushed in the interval.",
        recorded: "Once per request attached to a sampler, at the first sample after it ended (its last interval is then measured), while the GPUs' energy is known."),
    metric_def!(id: "gpu.request.cost", otel: "request.cost", own: true, vllm: None, prometheus: None,
        kind: Histogram, unit: "{USD}", labels: &[], buckets: Some(REQUEST_COST_BUCKETS), vllm_buckets: None,
        description: "Cost attributed to one request: configured price per GPU-hour x its share of each interval's GPU time (split like energy).",
        recorded: "Once per request attached to a sampler with a price per GPU-hour, at the first sample after it ended."),
    def!("gpu.requests.energy", "requests.energy", own: true, Counter, "J", labels: &[],
        "GPU energy attributed to requests, in whole joules, per model and per-request labels (e.g. tenant, capped): the running sum of the requests' shares, including the share of the interval in which each ended. With gpu.energy.idle it adds up to the GPUs' hw.energy.",
        recorded: "Every sampler interval in which requests with these labels flushed output tokens, once the GPUs' energy is known."),
    def!("gpu.energy.idle", "energy.idle", own: true, Counter, "J", labels: &[],
        "GPU energy of the sampler intervals in which no attached request flushed an output token (idle GPUs, prefill-only intervals, requests started before the sampler), in whole joules.",
        recorded: "Every sampler interval, once the GPUs' energy is known."),
];

/// Per-request energy bounds: 0.1 J (a short reply in a large batch) to 10 kJ (a long
/// generation alone on a large GPU), at most 2.5x apart.
pub const REQUEST_ENERGY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0,
];
/// Per-request cost bounds (currency units of the configured price): one millionth to 0.1
/// (a GPU-second at 2.50 per GPU-hour is about 0.0007), at most 2.5x apart.
pub const REQUEST_COST_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

// Typed ids: a lookup by one of these cannot name a metric that does not exist. The test in
// catalog/mod.rs checks that each names the entry of its own id.
/// The `gpu.utilization` metric.
pub static UTILIZATION: &MetricDef = &DEFS[0];
/// The `gpu.memory.utilization` metric.
pub static MEMORY_UTILIZATION: &MetricDef = &DEFS[1];
/// The `gpu.memory_controller.utilization` metric.
pub static MEMORY_CONTROLLER_UTILIZATION: &MetricDef = &DEFS[2];
/// The `gpu.memory.usage` metric.
pub static MEMORY_USAGE: &MetricDef = &DEFS[3];
/// The `gpu.memory.limit` metric.
pub static MEMORY_LIMIT: &MetricDef = &DEFS[4];
/// The `gpu.memory.free` metric.
pub static MEMORY_FREE: &MetricDef = &DEFS[5];
/// The `gpu.memory.peak` metric.
pub static MEMORY_PEAK: &MetricDef = &DEFS[6];
/// The `gpu.process.memory.usage` metric.
pub static GPU_PROCESS_MEMORY_USAGE: &MetricDef = &DEFS[7];
/// The `gpu.power` metric.
pub static POWER: &MetricDef = &DEFS[8];
/// The `gpu.power.limit` metric.
pub static POWER_LIMIT: &MetricDef = &DEFS[9];
/// The `gpu.energy` metric.
pub static ENERGY: &MetricDef = &DEFS[10];
/// The `gpu.temperature` metric.
pub static TEMPERATURE: &MetricDef = &DEFS[11];
/// The `gpu.clock.sm` metric.
pub static CLOCK_SM: &MetricDef = &DEFS[12];
/// The `gpu.clock.memory` metric.
pub static CLOCK_MEMORY: &MetricDef = &DEFS[13];
/// The `gpu.throttle` metric.
pub static THROTTLE: &MetricDef = &DEFS[14];
/// The `gpu.errors` metric.
pub static ERRORS: &MetricDef = &DEFS[15];
/// The `gpu.pcie.throughput` metric.
pub static PCIE_THROUGHPUT: &MetricDef = &DEFS[16];
/// The `gpu.status` metric.
pub static STATUS: &MetricDef = &DEFS[17];
/// The `gpu.energy_per_output_token` metric.
pub static ENERGY_PER_OUTPUT_TOKEN: &MetricDef = &DEFS[18];
/// The `gpu.output_tokens_per_joule` metric.
pub static OUTPUT_TOKENS_PER_JOULE: &MetricDef = &DEFS[19];
/// The `gpu.energy.attributed` metric.
pub static ENERGY_ATTRIBUTED: &MetricDef = &DEFS[20];
/// The `gpu.cost_per_1k_output_tokens` metric.
pub static COST_PER_1K_OUTPUT_TOKENS: &MetricDef = &DEFS[21];
/// The `process.cpu.utilization` metric.
pub static PROCESS_CPU_UTILIZATION: &MetricDef = &DEFS[22];
/// The `process.memory.usage` metric.
pub static PROCESS_MEMORY_USAGE: &MetricDef = &DEFS[23];
/// The `process.memory.virtual` metric.
pub static PROCESS_MEMORY_VIRTUAL: &MetricDef = &DEFS[24];
/// The `process.memory.peak` metric.
pub static PROCESS_MEMORY_PEAK: &MetricDef = &DEFS[25];
/// The `process.thread.count` metric.
pub static PROCESS_THREAD_COUNT: &MetricDef = &DEFS[26];
/// The `process.open_files` metric.
pub static PROCESS_OPEN_FILES: &MetricDef = &DEFS[27];
/// The `process.disk.io` metric.
pub static PROCESS_DISK_IO: &MetricDef = &DEFS[28];
/// The `system.cpu.utilization` metric.
pub static SYSTEM_CPU_UTILIZATION: &MetricDef = &DEFS[29];
/// The `system.memory.usage` metric.
pub static SYSTEM_MEMORY_USAGE: &MetricDef = &DEFS[30];
/// The `system.memory.limit` metric.
pub static SYSTEM_MEMORY_LIMIT: &MetricDef = &DEFS[31];
/// The `system.disk.io` metric.
pub static SYSTEM_DISK_IO: &MetricDef = &DEFS[32];
/// The `system.network.io` metric.
pub static SYSTEM_NETWORK_IO: &MetricDef = &DEFS[33];
/// The `gpu.request.energy` metric.
pub static REQUEST_ENERGY: &MetricDef = &DEFS[34];
/// The `gpu.request.cost` metric.
pub static REQUEST_COST: &MetricDef = &DEFS[35];
/// The `gpu.requests.energy` metric.
pub static REQUESTS_ENERGY: &MetricDef = &DEFS[36];
/// The `gpu.energy.idle` metric.
pub static ENERGY_IDLE: &MetricDef = &DEFS[37];
