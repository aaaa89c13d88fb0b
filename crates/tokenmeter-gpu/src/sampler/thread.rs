//! The sampling thread: [`Sampler::spawn`] and the [`SamplerHandle`] that stops it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokenmeter_core::Meter;

use super::{GpuSnapshot, Sampler, lock};

impl Sampler {
    /// Starts the sampling thread: one sample now, then one per interval until the handle is
    /// stopped or dropped.
    ///
    /// # Errors
    /// When the operating system cannot start a thread.
    pub fn spawn(self) -> std::io::Result<SamplerHandle> {
        let (tx, rx) = mpsc::channel::<()>();
        let shared = Arc::clone(&self.shared);
        let inbox = Arc::clone(&self.inbox);
        let thread = std::thread::Builder::new()
            .name("tokenmeter-gpu".into())
            .spawn(move || run(self, rx))?;
        Ok(SamplerHandle {
            stop: Some(tx),
            thread: Some(thread),
            shared,
            inbox,
        })
    }
}

fn run(mut sampler: Sampler, stop: mpsc::Receiver<()>) {
    let interval = sampler.interval;
    let mut next = std::time::Instant::now();
    loop {
        sampler.sample_once();
        next += interval;
        let now = std::time::Instant::now();
        if next < now {
            // Fell behind (a slow sample or a suspended machine): skip the missed ticks.
            next = now;
        }
        match stop.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A running sampler thread. Stopping (or dropping) it wakes the thread at once and joins it.
///
/// ```
/// use tokenmeter_gpu::{FakeGpuSource, Sampler};
/// let meter = tokenmeter_core::Meter::default();
/// let handle = Sampler::builder(&meter)
///     .source(FakeGpuSource::new().with_gpu("H100", FakeGpuSource::typical_reading()))
///     .start()
///     .expect("thread");
/// handle.stop(); // returns at once, not after the 1 s interval
/// ```
#[derive(Debug)]
pub struct SamplerHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Option<GpuSnapshot>>>,
    inbox: Arc<Mutex<Vec<Meter>>>,
}

impl SamplerHandle {
    /// The latest snapshot, or `None` before the first sample completes.
    pub fn latest(&self) -> Option<GpuSnapshot> {
        lock(&self.shared).clone()
    }

    /// Attaches another meter (another model served on the same GPUs) from the sampler's next
    /// sample on; see [`SamplerBuilder::meter`](crate::SamplerBuilder::meter). Never blocks on
    /// a sample in progress for longer than a lock of a short list.
    pub fn attach(&self, meter: &Meter) {
        lock(&self.inbox).push(meter.clone());
    }

    /// Stops the thread and waits for it (at most the duration of one sample in progress).
    /// The latest snapshot stays readable until the handle is dropped.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            // The thread may already be gone; either way it stops.
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            // A panic on the sampler thread stays there: the caller's thread goes on.
            let _ = t.join();
        }
    }
}

impl Drop for SamplerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
