//! The NVML source: NVIDIA GPUs through `nvml-wrapper`, with `libnvidia-ml` loaded at run time.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use crate::source::{
    DeviceError, Field, FieldError, GpuIdentity, GpuReading, GpuSource, MemoryReading, SourceError,
};

/// Reads NVIDIA GPUs through NVML.
///
/// The NVML library (`libnvidia-ml.so.1`) is opened with `dlopen` in [`GpuSource::init`], not
/// linked: a binary built with the `gpu` feature starts on a machine without the NVIDIA driver,
/// and the sampler then logs one warning and exports no GPU metrics.
///
/// ```
/// use tokenmeter_gpu::{GpuSource, NvmlSource};
/// let mut nvml = NvmlSource::new();
/// match nvml.init() {
///     Ok(()) => println!("{} GPUs", nvml.devices().map(|d| d.len()).unwrap_or(0)),
///     Err(e) => println!("no NVML here: {e}"),
/// }
/// ```
pub struct NvmlSource {
    nvml: Option<Nvml>,
    pid: u32,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("initialized", &self.nvml.is_some())
            .field("pid", &self.pid)
            .finish()
    }
}

impl Default for NvmlSource {
    fn default() -> Self {
        Self::new()
    }
}

impl NvmlSource {
    /// A source for this process (its PID selects the per-process memory reading). Nothing is
    /// loaded until [`GpuSource::init`].
    pub fn new() -> Self {
        NvmlSource {
            nvml: None,
            pid: std::process::id(),
        }
    }
}

fn source_error(e: NvmlError) -> SourceError {
    match e {
        NvmlError::LibloadingError(_)
        | NvmlError::LibraryNotFound
        | NvmlError::DriverNotLoaded
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::FunctionNotFound => SourceError::NoDriver(e.to_string()),
        other => SourceError::Failed(other.to_string()),
    }
}

/// Converts one NVML call's result, noting whether it says the GPU is gone.
struct Conv {
    lost: Option<String>,
}

impl Conv {
    fn f<T>(&mut self, r: Result<T, NvmlError>) -> Field<T> {
        r.map_err(|e| match e {
            NvmlError::NotSupported | NvmlError::FunctionNotFound => FieldError::NotSupported,
            NvmlError::GpuLost => {
                let msg = e.to_string();
                self.lost = Some(msg.clone());
                FieldError::Failed(msg)
            }
            other => FieldError::Failed(other.to_string()),
        })
    }
}

impl GpuSource for NvmlSource {
    fn process_wide(&self) -> bool {
        true
    }

    fn init(&mut self) -> Result<(), SourceError> {
        if self.nvml.is_none() {
            self.nvml = Some(Nvml::init().map_err(source_error)?);
        }
        Ok(())
    }

    fn devices(&mut self) -> Result<Vec<GpuIdentity>, SourceError> {
        let nvml = self
            .nvml
            .as_ref()
            .ok_or_else(|| SourceError::Failed("NVML not initialized".into()))?;
        let count = nvml.device_count().map_err(source_error)?;
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let d = nvml.device_by_index(index).map_err(source_error)?;
            out.push(GpuIdentity {
                index,
                uuid: d.uuid().unwrap_or_else(|_| format!("GPU-index-{index}")),
                name: d.name().unwrap_or_else(|_| "unknown".into()),
            });
        }
        Ok(out)
    }

    fn read(&mut self, gpu: &GpuIdentity) -> Result<GpuReading, DeviceError> {
        let nvml = self
            .nvml
            .as_ref()
            .ok_or_else(|| DeviceError::Lost("NVML not initialized".into()))?;
        let d = nvml
            .device_by_index(gpu.index)
            .map_err(|e| DeviceError::Lost(e.to_string()))?;
        let mut c = Conv { lost: None };
        let util = c.f(d.utilization_rates());
        let (utilization, memory_controller_utilization) = match util {
            Ok(u) => (
                Ok(f64::from(u.gpu) / 100.0),
                Ok(f64::from(u.memory) / 100.0),
            ),
            Err(e) => (Err(e.clone()), Err(e)),
        };
        let memory = c.f(d.memory_info()).map(|m| MemoryReading {
            used: m.used,
            free: m.free,
            total: m.total,
        });
        let pid = self.pid;
        let process_memory = c.f(d.running_compute_processes()).and_then(|list| {
            match list.into_iter().find(|p| p.pid == pid) {
                None => Ok(None),
                Some(p) => match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Ok(Some(b)),
                    UsedGpuMemory::Unavailable => Err(FieldError::NotSupported),
                },
            }
        });
        let mw = |v: u32| f64::from(v) / 1000.0;
        let power_w = c.f(d.power_usage()).map(mw);
        let power_limit_w = c.f(d.enforced_power_limit()).map(mw);
        let energy_counter_j = c
            .f(d.total_energy_consumption())
            .map(|mj| mj as f64 / 1000.0);
        let temperature_c = c.f(d.temperature(TemperatureSensor::Gpu)).map(f64::from);
        let mhz = |v: u32| f64::from(v) * 1e6;
        let clock_sm_hz = c.f(d.clock_info(Clock::SM)).map(mhz);
        let clock_memory_hz = c.f(d.clock_info(Clock::Memory)).map(mhz);
        let throttle_reasons = c.f(d.current_throttle_reasons()).map(|r| r.bits());
        let ecc_corrected = c.f(d.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate));
        let ecc_uncorrected =
            c.f(d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate));
        let kbs = |v: u32| f64::from(v) * 1000.0;
        let pcie_tx_bytes_per_s = c.f(d.pcie_throughput(PcieUtilCounter::Send)).map(kbs);
        let pcie_rx_bytes_per_s = c.f(d.pcie_throughput(PcieUtilCounter::Receive)).map(kbs);
        if let Some(msg) = c.lost {
            return Err(DeviceError::Lost(msg));
        }
        Ok(GpuReading {
            utilization,
            memory_controller_utilization,
            memory,
            process_memory,
            power_w,
            power_limit_w,
            energy_counter_j,
            temperature_c,
            clock_sm_hz,
            clock_memory_hz,
            throttle_reasons,
            ecc_corrected,
            ecc_uncorrected,
            pcie_tx_bytes_per_s,
            pcie_rx_bytes_per_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_or_driver_is_no_driver() {
        for e in [
            NvmlError::LibraryNotFound,
            NvmlError::DriverNotLoaded,
            NvmlError::FunctionNotFound,
        ] {
            assert!(matches!(source_error(e), SourceError::NoDriver(_)));
        }
        assert!(matches!(
            source_error(NvmlError::NoPermission),
            SourceError::Failed(_)
        ));
    }

    #[test]
    fn field_errors_map_to_absent_and_lost() {
        let mut c = Conv { lost: None };
        assert_eq!(
            c.f::<u32>(Err(NvmlError::NotSupported)),
            Err(FieldError::NotSupported)
        );
        assert_eq!(c.f(Ok(7u32)), Ok(7));
        assert!(matches!(
            c.f::<u32>(Err(NvmlError::NoPermission)),
            Err(FieldError::Failed(_))
        ));
        assert!(c.lost.is_none());
        assert!(c.f::<u32>(Err(NvmlError::GpuLost)).is_err());
        assert!(c.lost.is_some());
    }

    #[test]
    fn reading_before_init_is_an_error_not_a_panic() {
        let mut s = NvmlSource::new();
        let id = GpuIdentity {
            index: 0,
            uuid: "GPU-x".into(),
            name: "x".into(),
        };
        assert!(s.read(&id).is_err());
        assert!(s.devices().is_err());
    }
}
