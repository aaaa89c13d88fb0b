//! Host and process sampling through `sysinfo` (plus `getrusage` for peak RSS).

use std::collections::HashSet;

use serde::Serialize;
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, Pid, ProcessRefreshKind,
    ProcessesToUpdate, System,
};

/// One reading of this process and the machine. Fields that the platform cannot provide are
/// `None` (and skipped when serialized).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HostSample {
    /// This process's CPU time over the last period / (period x logical CPUs); `None` on the
    /// first sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_cpu_utilization: Option<f64>,
    /// Resident memory of this process, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_rss_bytes: Option<u64>,
    /// Peak resident memory of this process since it started, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_peak_rss_bytes: Option<u64>,
    /// Virtual memory of this process, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_virtual_bytes: Option<u64>,
    /// Threads of this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_threads: Option<u64>,
    /// Open file descriptors of this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_open_files: Option<u64>,
    /// Bytes this process read from storage since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_disk_read_bytes: Option<u64>,
    /// Bytes this process wrote to storage since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_disk_written_bytes: Option<u64>,
    /// Busy fraction of all CPUs of the machine; `None` on the first sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_cpu_utilization: Option<f64>,
    /// Machine memory used, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_memory_used_bytes: Option<u64>,
    /// Machine memory free, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_memory_free_bytes: Option<u64>,
    /// Machine memory total, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_memory_total_bytes: Option<u64>,
    /// Bytes read from the machine's disks since the sampler started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_disk_read_bytes: Option<u64>,
    /// Bytes written to the machine's disks since the sampler started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_disk_written_bytes: Option<u64>,
    /// Bytes received on non-loopback interfaces since the sampler started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_network_received_bytes: Option<u64>,
    /// Bytes transmitted on non-loopback interfaces since the sampler started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_network_transmitted_bytes: Option<u64>,
}

/// Samples this process and the machine. Owned by the sampler thread.
pub(crate) struct HostSampler {
    sys: System,
    disks: Disks,
    networks: Networks,
    pid: Option<Pid>,
    samples: u64,
    disk_read: u64,
    disk_written: u64,
    net_rx: u64,
    net_tx: u64,
}

impl HostSampler {
    pub(crate) fn new() -> Self {
        HostSampler {
            sys: System::new(),
            disks: Disks::new(),
            networks: Networks::new(),
            pid: sysinfo::get_current_pid().ok(),
            samples: 0,
            disk_read: 0,
            disk_written: 0,
            net_rx: 0,
            net_tx: 0,
        }
    }

    /// Refreshes everything and returns one sample. Deltas (CPU use, machine disk and network
    /// bytes) start on the second call.
    pub(crate) fn sample(&mut self) -> HostSample {
        let first = self.samples == 0;
        self.samples += 1;
        let mut out = HostSample::default();

        self.sys
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let ncpu = self.sys.cpus().len().max(1) as f64;
        if !first {
            out.system_cpu_utilization = Some(f64::from(self.sys.global_cpu_usage()) / 100.0);
        }
        let total = self.sys.total_memory();
        if total > 0 {
            out.system_memory_total_bytes = Some(total);
            out.system_memory_used_bytes = Some(self.sys.used_memory());
            out.system_memory_free_bytes = Some(self.sys.free_memory());
        }

        if let Some(pid) = self.pid {
            self.sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing()
                    .with_cpu()
                    .with_memory()
                    .with_disk_usage()
                    .with_tasks(),
            );
            if let Some(p) = self.sys.process(pid) {
                if !first {
                    out.process_cpu_utilization = Some(f64::from(p.cpu_usage()) / (100.0 * ncpu));
                }
                out.process_rss_bytes = Some(p.memory());
                out.process_virtual_bytes = Some(p.virtual_memory());
                out.process_threads = p.tasks().map(|t| t.len() as u64);
                out.process_open_files = p.open_files().map(|n| n as u64);
                let io = p.disk_usage();
                out.process_disk_read_bytes = Some(io.total_read_bytes);
                out.process_disk_written_bytes = Some(io.total_written_bytes);
            }
        }
        out.process_peak_rss_bytes = peak_rss_bytes();

        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_io_usage());
        let mut seen = HashSet::new();
        let (mut r, mut w) = (0u64, 0u64);
        for d in self.disks.list() {
            // Several mount points can share one device (bind mounts, containers).
            if seen.insert(d.name().to_owned()) {
                let u = d.usage();
                r = r.saturating_add(u.read_bytes);
                w = w.saturating_add(u.written_bytes);
            }
        }
        self.networks.refresh(true);
        let (mut rx, mut tx) = (0u64, 0u64);
        for (name, n) in self.networks.list() {
            if name != "lo" {
                rx = rx.saturating_add(n.received());
                tx = tx.saturating_add(n.transmitted());
            }
        }
        if !first {
            self.disk_read = self.disk_read.saturating_add(r);
            self.disk_written = self.disk_written.saturating_add(w);
            self.net_rx = self.net_rx.saturating_add(rx);
            self.net_tx = self.net_tx.saturating_add(tx);
            if !self.disks.list().is_empty() {
                out.system_disk_read_bytes = Some(self.disk_read);
                out.system_disk_written_bytes = Some(self.disk_written);
            }
            if !self.networks.list().is_empty() {
                out.system_network_received_bytes = Some(self.net_rx);
                out.system_network_transmitted_bytes = Some(self.net_tx);
            }
        }
        out
    }
}

/// Peak resident set size of this process, from `getrusage(RUSAGE_SELF)`.
#[cfg(unix)]
fn peak_rss_bytes() -> Option<u64> {
    // SAFETY: `rusage` is plain old data, so all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` that lives across the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return None;
    }
    let max = u64::try_from(ru.ru_maxrss).ok()?;
    // Linux and the BSDs report kibibytes; macOS reports bytes.
    if cfg!(target_os = "macos") {
        Some(max)
    } else {
        Some(max.saturating_mul(1024))
    }
}

#[cfg(not(unix))]
fn peak_rss_bytes() -> Option<u64> {
    None
}
