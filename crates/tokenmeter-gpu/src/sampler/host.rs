//! The host and process series, fed from [`HostSampler`].

use tokenmeter_core::Meter;
use tokenmeter_core::catalog::{self, MetricDef};

use crate::emit::{CounterSlot, GaugeSlot, node_labels};
use crate::host::{HostSample, HostSampler};

pub(super) struct HostState {
    sampler: HostSampler,
    cpu: GaugeSlot,
    rss: GaugeSlot,
    virt: GaugeSlot,
    peak_rss: GaugeSlot,
    threads: GaugeSlot,
    open_files: GaugeSlot,
    disk_read: CounterSlot,
    disk_write: CounterSlot,
    sys_cpu: GaugeSlot,
    sys_mem_used: GaugeSlot,
    sys_mem_free: GaugeSlot,
    sys_mem_total: GaugeSlot,
    sys_disk_read: CounterSlot,
    sys_disk_write: CounterSlot,
    net_rx: CounterSlot,
    net_tx: CounterSlot,
}

impl HostState {
    pub(super) fn new(meter: &Meter) -> Self {
        let none = || node_labels(meter, &[]);
        let g = |def: &'static MetricDef| GaugeSlot::new(meter, def, none());
        let dir = |def: &'static MetricDef, k: &str, v: &str| {
            CounterSlot::new(meter, def, node_labels(meter, &[(k, v)]))
        };
        HostState {
            sampler: HostSampler::new(),
            cpu: g(catalog::gpu::PROCESS_CPU_UTILIZATION),
            rss: g(catalog::gpu::PROCESS_MEMORY_USAGE),
            virt: g(catalog::gpu::PROCESS_MEMORY_VIRTUAL),
            peak_rss: g(catalog::gpu::PROCESS_MEMORY_PEAK),
            threads: g(catalog::gpu::PROCESS_THREAD_COUNT),
            open_files: g(catalog::gpu::PROCESS_OPEN_FILES),
            disk_read: dir(catalog::gpu::PROCESS_DISK_IO, "disk.io.direction", "read"),
            disk_write: dir(catalog::gpu::PROCESS_DISK_IO, "disk.io.direction", "write"),
            sys_cpu: g(catalog::gpu::SYSTEM_CPU_UTILIZATION),
            sys_mem_used: GaugeSlot::new(
                meter,
                catalog::gpu::SYSTEM_MEMORY_USAGE,
                node_labels(meter, &[("system.memory.state", "used")]),
            ),
            sys_mem_free: GaugeSlot::new(
                meter,
                catalog::gpu::SYSTEM_MEMORY_USAGE,
                node_labels(meter, &[("system.memory.state", "free")]),
            ),
            sys_mem_total: g(catalog::gpu::SYSTEM_MEMORY_LIMIT),
            sys_disk_read: dir(catalog::gpu::SYSTEM_DISK_IO, "disk.io.direction", "read"),
            sys_disk_write: dir(catalog::gpu::SYSTEM_DISK_IO, "disk.io.direction", "write"),
            net_rx: dir(
                catalog::gpu::SYSTEM_NETWORK_IO,
                "network.io.direction",
                "receive",
            ),
            net_tx: dir(
                catalog::gpu::SYSTEM_NETWORK_IO,
                "network.io.direction",
                "transmit",
            ),
        }
    }

    pub(super) fn sample(&mut self) -> HostSample {
        let s = self.sampler.sample();
        let f = |v: Option<u64>| v.map(|v| v as f64);
        self.cpu.set(s.process_cpu_utilization);
        self.rss.set(f(s.process_rss_bytes));
        self.virt.set(f(s.process_virtual_bytes));
        self.peak_rss.set(f(s.process_peak_rss_bytes));
        self.threads.set(f(s.process_threads));
        self.open_files.set(f(s.process_open_files));
        self.sys_cpu.set(s.system_cpu_utilization);
        self.sys_mem_used.set(f(s.system_memory_used_bytes));
        self.sys_mem_free.set(f(s.system_memory_free_bytes));
        self.sys_mem_total.set(f(s.system_memory_total_bytes));
        for (slot, v) in [
            (&mut self.disk_read, s.process_disk_read_bytes),
            (&mut self.disk_write, s.process_disk_written_bytes),
            (&mut self.sys_disk_read, s.system_disk_read_bytes),
            (&mut self.sys_disk_write, s.system_disk_written_bytes),
            (&mut self.net_rx, s.system_network_received_bytes),
            (&mut self.net_tx, s.system_network_transmitted_bytes),
        ] {
            if let Some(v) = v {
                slot.advance_to(v);
            }
        }
        s
    }
}
