//! A scriptable [`GpuSource`] for tests, benches and demos on machines without a GPU.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::source::{
    DeviceError, FieldError, GpuIdentity, GpuReading, GpuSource, MemoryReading, SourceError,
};

#[derive(Debug, Default)]
struct FakeState {
    init_error: Option<SourceError>,
    devices_error: Option<SourceError>,
    gpus: Vec<FakeGpu>,
    reads: u64,
    process_wide: bool,
}

#[derive(Debug)]
struct FakeGpu {
    identity: GpuIdentity,
    reading: GpuReading,
    lost: bool,
}

/// A [`GpuSource`] whose GPUs and readings the test sets. Clones share state, so a test can
/// keep one clone and change readings (or lose a GPU) while the sampler owns another.
///
/// ```
/// use tokenmeter_gpu::{FakeGpuSource, GpuReading};
/// let fake = FakeGpuSource::new().with_gpu("H100", FakeGpuSource::typical_reading());
/// let control = fake.clone();
/// control.set_power(0, 350.0);
/// control.lose(0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FakeGpuSource {
    state: Arc<Mutex<FakeState>>,
}

impl FakeGpuSource {
    /// A source with a working driver and no GPUs.
    pub fn new() -> Self {
        Self::default()
    }

    /// A source whose driver is missing: [`GpuSource::init`] fails with
    /// [`SourceError::NoDriver`].
    pub fn no_driver() -> Self {
        let s = Self::new();
        s.lock().init_error = Some(SourceError::NoDriver(
            "libnvidia-ml.so.1: cannot open shared object file (fake)".into(),
        ));
        s
    }

    /// A source whose enumeration fails.
    pub fn failing_enumeration(message: &str) -> Self {
        let s = Self::new();
        s.lock().devices_error = Some(SourceError::Failed(message.into()));
        s
    }

    /// Adds a GPU named `name` (index = number of GPUs so far, UUID `GPU-fake-<index>`).
    pub fn with_gpu(self, name: &str, reading: GpuReading) -> Self {
        {
            let mut st = self.lock();
            let index = st.gpus.len() as u32;
            st.gpus.push(FakeGpu {
                identity: GpuIdentity {
                    index,
                    uuid: format!("GPU-fake-{index}"),
                    name: name.into(),
                },
                reading,
                lost: false,
            });
        }
        self
    }

    /// A plausible reading of a busy 80 GB GPU with every field supported: utilization 0.5,
    /// memory controller 0.25, 40 GiB used of 80 GiB, this process 10 GiB, 300 W of a 700 W limit,
    /// energy counter 1000 J, 60 °C, SM 1.98 GHz, memory 2.619 GHz, sw_power_cap throttling,
    /// 2 corrected / 0 uncorrected ECC errors, PCIe 1 MB/s out and 2 MB/s in.
    ///
    /// The reading is fixed, energy counter included: advance the counter with
    /// [`set_energy_counter`](Self::set_energy_counter) as time passes, or the sampler sees a
    /// counter stuck while power says 300 W (it warns, and integrates power instead).
    pub fn typical_reading() -> GpuReading {
        const GIB: u64 = 1 << 30;
        GpuReading {
            utilization: Ok(0.5),
            memory_controller_utilization: Ok(0.25),
            memory: Ok(MemoryReading {
                used: 40 * GIB,
                free: 40 * GIB,
                total: 80 * GIB,
            }),
            process_memory: Ok(Some(10 * GIB)),
            power_w: Ok(300.0),
            power_limit_w: Ok(700.0),
            energy_counter_j: Ok(1000.0),
            temperature_c: Ok(60.0),
            clock_sm_hz: Ok(1.98e9),
            clock_memory_hz: Ok(2.619e9),
            throttle_reasons: Ok(0x4),
            ecc_corrected: Ok(2),
            ecc_uncorrected: Ok(0),
            pcie_tx_bytes_per_s: Ok(1.0e6),
            pcie_rx_bytes_per_s: Ok(2.0e6),
        }
    }

    /// Makes the source claim its GPUs process-wide, as NVML does
    /// ([`GpuSource::process_wide`]): a second sampler on a clone of it reports none of them.
    pub fn process_wide(self) -> Self {
        self.lock().process_wide = true;
        self
    }

    /// Changes GPU `index`'s reading with `f`. Unknown indices are ignored.
    pub fn update(&self, index: u32, f: impl FnOnce(&mut GpuReading)) {
        if let Some(g) = self.lock().gpus.get_mut(index as usize) {
            f(&mut g.reading);
        }
    }

    /// Sets GPU `index`'s power draw.
    pub fn set_power(&self, index: u32, watts: f64) {
        self.update(index, |r| r.power_w = Ok(watts));
    }

    /// Sets GPU `index`'s energy counter.
    pub fn set_energy_counter(&self, index: u32, joules: f64) {
        self.update(index, |r| r.energy_counter_j = Ok(joules));
    }

    /// Sets GPU `index`'s memory used (free = total - used).
    pub fn set_memory_used(&self, index: u32, used: u64) {
        self.update(index, |r| {
            if let Ok(m) = &mut r.memory {
                m.used = used;
                m.free = m.total.saturating_sub(used);
            }
        });
    }

    /// Makes one field of GPU `index` fail from now on.
    pub fn fail_field(&self, index: u32, f: impl FnOnce(&mut GpuReading, FieldError)) {
        self.update(index, |r| f(r, FieldError::Failed("fake failure".into())));
    }

    /// Loses GPU `index`: every later read of it fails with [`DeviceError::Lost`].
    pub fn lose(&self, index: u32) {
        if let Some(g) = self.lock().gpus.get_mut(index as usize) {
            g.lost = true;
        }
    }

    /// How many times [`GpuSource::read`] was called.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        tokenmeter_core::emit::lock(&self.state)
    }
}

impl GpuSource for FakeGpuSource {
    fn init(&mut self) -> Result<(), SourceError> {
        match &self.lock().init_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn devices(&mut self) -> Result<Vec<GpuIdentity>, SourceError> {
        let st = self.lock();
        if let Some(e) = &st.devices_error {
            return Err(e.clone());
        }
        Ok(st.gpus.iter().map(|g| g.identity.clone()).collect())
    }

    fn process_wide(&self) -> bool {
        self.lock().process_wide
    }

    fn read(&mut self, gpu: &GpuIdentity) -> Result<GpuReading, DeviceError> {
        let mut st = self.lock();
        st.reads += 1;
        match st.gpus.iter().find(|g| g.identity.uuid == gpu.uuid) {
            Some(g) if !g.lost => Ok(g.reading.clone()),
            _ => Err(DeviceError::Lost(format!(
                "GPU {} is gone (fake)",
                gpu.uuid
            ))),
        }
    }
}
