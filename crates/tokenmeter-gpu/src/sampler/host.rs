//! The host and process series, fed from [`HostSampler`].

use tokenmeter_core::Meter;

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
        let g = |id: &str| GaugeSlot::new(meter, id, none());
        let dir =
            |id: &str, k: &str, v: &str| CounterSlot::new(meter, id, node_labels(meter, &[(k, v)]));
        HostState {
            sampler: HostSampler::new(),
            cpu: g("process.cpu.utilization"),
            rss: g("process.memory.usage"),
            virt: g("process.memory.virtual"),
            peak_rss: g("process.memory.peak"),
            threads: g("process.thread.count"),
            open_files: g("process.open_files"),
            disk_read: dir("process.disk.io", "disk.io.direction", "read"),
            disk_write: dir("process.disk.io", "disk.io.direction", "write"),
            sys_cpu: g("system.cpu.utilization"),
            sys_mem_used: GaugeSlot::new(
                meter,
                "system.memory.usage",
                node_labels(meter, &[("system.memory.state", "used")]),
            ),
            sys_mem_free: GaugeSlot::new(
                meter,
                "system.memory.usage",
                node_labels(meter, &[("system.memory.state", "free")]),
            ),
            sys_mem_total: g("system.memory.limit"),
            sys_disk_read: dir("system.disk.io", "disk.io.direction", "read"),
            sys_disk_write: dir("system.disk.io", "disk.io.direction", "write"),
            net_rx: dir("system.network.io", "network.io.direction", "receive"),
            net_tx: dir("system.network.io", "network.io.direction", "transmit"),
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
