//! The GPU source abstraction: what the sampler reads GPUs through.
//!
//! The real source is [`NvmlSource`](crate::NvmlSource); tests and benches use
//! [`FakeGpuSource`](crate::FakeGpuSource). Every field of a [`GpuReading`] is its own
//! [`Field`], so a call the GPU does not support leaves just that metric absent.

use serde::Serialize;

/// Why a single reading of one GPU field is missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The GPU or driver does not support this call (NVML `NOT_SUPPORTED`, or a function the
    /// loaded driver lacks). The metric stays absent for this GPU.
    #[error("not supported on this GPU or driver")]
    NotSupported,
    /// The call failed for another reason (no permission, timeout, ...).
    #[error("{0}")]
    Failed(String),
}

/// One field of a reading: a value, or why it is missing.
pub type Field<T> = Result<T, FieldError>;

/// Why the source as a whole cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The NVIDIA driver (or its management library) is not installed or not loaded.
    #[error("NVIDIA driver not available: {0}")]
    NoDriver(String),
    /// The library loaded but initialization or enumeration failed.
    #[error("GPU source failed: {0}")]
    Failed(String),
}

/// Why one GPU could not be read at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The GPU is gone (fell off the bus, was reset, or can no longer be addressed). The sampler
    /// stops reading it and marks its metrics absent.
    #[error("GPU lost: {0}")]
    Lost(String),
}

/// Identity of one GPU, fixed when the sampler starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuIdentity {
    /// NVML index (the index `nvidia-smi` shows); exported as the `hw.id` label.
    pub index: u32,
    /// GPU UUID (`GPU-...`); exported as the `gpu.uuid` label.
    pub uuid: String,
    /// Product name; exported as the `hw.name` label.
    pub name: String,
}

/// Memory figures of one GPU, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryReading {
    /// Used by all processes.
    pub used: u64,
    /// Free.
    pub free: u64,
    /// Total.
    pub total: u64,
}

/// Clock-throttle reasons, with NVML's bit values (`nvmlClocksThrottleReason*`) and the label
/// value exported for each.
pub const THROTTLE_REASONS: &[(u64, &str)] = &[
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// One reading of one GPU. Units are base units (fractions, bytes, watts, joules, hertz).
#[derive(Clone, Debug, PartialEq)]
pub struct GpuReading {
    /// Fraction of the last sample period a kernel was running (0..=1).
    pub utilization: Field<f64>,
    /// Fraction of the last sample period device memory was read or written (0..=1).
    pub memory_controller_utilization: Field<f64>,
    /// Memory used, free and total.
    pub memory: Field<MemoryReading>,
    /// Memory used by this process: `Ok(None)` when this process is not in the GPU's list of
    /// compute processes.
    pub process_memory: Field<Option<u64>>,
    /// Power draw in watts.
    pub power_w: Field<f64>,
    /// Enforced power limit in watts.
    pub power_limit_w: Field<f64>,
    /// The GPU's total-energy counter in joules (since the driver loaded; monotonic).
    pub energy_counter_j: Field<f64>,
    /// Core temperature in degrees Celsius.
    pub temperature_c: Field<f64>,
    /// SM clock in hertz.
    pub clock_sm_hz: Field<f64>,
    /// Memory clock in hertz.
    pub clock_memory_hz: Field<f64>,
    /// Active throttle reasons, a bit set of [`THROTTLE_REASONS`].
    pub throttle_reasons: Field<u64>,
    /// Corrected ECC errors over the GPU's lifetime.
    pub ecc_corrected: Field<u64>,
    /// Uncorrected ECC errors over the GPU's lifetime.
    pub ecc_uncorrected: Field<u64>,
    /// PCIe transmit (GPU to host) throughput in bytes per second.
    pub pcie_tx_bytes_per_s: Field<f64>,
    /// PCIe receive (host to GPU) throughput in bytes per second.
    pub pcie_rx_bytes_per_s: Field<f64>,
}

impl GpuReading {
    /// A reading in which every field is [`FieldError::NotSupported`].
    pub fn unsupported() -> Self {
        let ns = || Err(FieldError::NotSupported);
        GpuReading {
            utilization: ns(),
            memory_controller_utilization: ns(),
            memory: Err(FieldError::NotSupported),
            process_memory: Err(FieldError::NotSupported),
            power_w: ns(),
            power_limit_w: ns(),
            energy_counter_j: ns(),
            temperature_c: ns(),
            clock_sm_hz: ns(),
            clock_memory_hz: ns(),
            throttle_reasons: Err(FieldError::NotSupported),
            ecc_corrected: Err(FieldError::NotSupported),
            ecc_uncorrected: Err(FieldError::NotSupported),
            pcie_tx_bytes_per_s: ns(),
            pcie_rx_bytes_per_s: ns(),
        }
    }
}

/// Where the sampler reads GPUs from. Implemented by [`NvmlSource`](crate::NvmlSource) and by
/// [`FakeGpuSource`](crate::FakeGpuSource); implement it to read another vendor's GPUs.
///
/// All methods are called from the sampler thread only, never from the generation loop.
pub trait GpuSource: Send {
    /// Loads and initializes the source. Called once, on the first sample.
    ///
    /// # Errors
    /// [`SourceError::NoDriver`] when the driver is missing; the sampler then logs one warning
    /// and leaves every GPU metric absent.
    fn init(&mut self) -> Result<(), SourceError>;

    /// Lists the GPUs. Called once, after a successful [`init`](Self::init).
    ///
    /// # Errors
    /// When enumeration fails; treated like a missing driver.
    fn devices(&mut self) -> Result<Vec<GpuIdentity>, SourceError>;

    /// Reads one GPU. Fields the GPU cannot provide are `Err` in the reading.
    ///
    /// # Errors
    /// [`DeviceError::Lost`] when the GPU cannot be addressed any more.
    fn read(&mut self, gpu: &GpuIdentity) -> Result<GpuReading, DeviceError>;

    /// True when every instance of this source reads the same physical GPUs (NVML reads the
    /// machine's), so that two samplers in one process would export each GPU twice and bill
    /// it twice. The sampler then lets one sampler at a time report a GPU (by UUID) and tells
    /// the others to attach their meter to it instead. Default `false`.
    fn process_wide(&self) -> bool {
        false
    }
}

impl<S: GpuSource + ?Sized> GpuSource for Box<S> {
    fn init(&mut self) -> Result<(), SourceError> {
        (**self).init()
    }
    fn devices(&mut self) -> Result<Vec<GpuIdentity>, SourceError> {
        (**self).devices()
    }
    fn read(&mut self, gpu: &GpuIdentity) -> Result<GpuReading, DeviceError> {
        (**self).read(gpu)
    }
    fn process_wide(&self) -> bool {
        (**self).process_wide()
    }
}
