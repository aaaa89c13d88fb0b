//! Helpers every tokenmeter crate uses to emit through the `metrics` facade: a poison-tolerant
//! lock, the identity of the current recorder, and a value scoped to that recorder.
//!
//! A `metrics` handle is bound to the recorder that was current when it was registered. Servers
//! often build their meter (and samplers, monitors) before installing an exporter, so anything
//! that caches handles keeps them in a [`RecorderScoped`] and resolves them again, once, when
//! another recorder is current.

use std::sync::{Mutex, MutexGuard, PoisonError};

use metrics::Recorder;

/// Locks a mutex that holds only handles and plain counters. A panic elsewhere while it was held
/// cannot have broken an invariant of such data, and the generation loop must not panic because
/// of it, so a poisoned lock is used as it is.
///
/// ```
/// let m = std::sync::Mutex::new(1);
/// *tokenmeter_core::emit::lock(&m) += 1;
/// assert_eq!(*tokenmeter_core::emit::lock(&m), 2);
/// ```
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Identifies the `metrics` recorder current on this thread (the global one, a local one, or
/// the no-op). A handle registered under one recorder is dead under another.
///
/// ```
/// let before = tokenmeter_core::emit::recorder_id();
/// assert_eq!(before, tokenmeter_core::emit::recorder_id());
/// ```
pub fn recorder_id() -> usize {
    metrics::with_recorder(|r: &dyn Recorder| r as *const dyn Recorder as *const () as usize)
}

/// A value (handles, or state that holds handles) made under one `metrics` recorder, and made
/// again when another recorder is current.
///
/// ```
/// use tokenmeter_core::emit::RecorderScoped;
/// let mut made = 0;
/// let mut scoped = RecorderScoped::new();
/// scoped.get_or_make(|| { made += 1; metrics::counter!("a") });
/// scoped.get_or_make(|| { made += 1; metrics::counter!("a") });
/// assert_eq!(made, 1); // the same recorder: made once
/// ```
#[derive(Debug)]
pub struct RecorderScoped<T> {
    recorder: usize,
    value: Option<T>,
}

impl<T> Default for RecorderScoped<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RecorderScoped<T> {
    /// Empty: the first [`get_or_make`](Self::get_or_make) makes the value.
    pub const fn new() -> Self {
        RecorderScoped {
            recorder: 0,
            value: None,
        }
    }

    /// Whether a value exists and was made under the current recorder.
    pub fn is_current(&self) -> bool {
        self.value.is_some() && self.recorder == recorder_id()
    }

    /// Whether a value was ever made (under any recorder).
    pub fn is_made(&self) -> bool {
        self.value.is_some()
    }

    /// Drops the value; the next [`get_or_make`](Self::get_or_make) makes it again.
    pub fn clear(&mut self) {
        self.value = None;
    }

    /// The value for the current recorder: made with `make` when there is none, or when it was
    /// made under another recorder (the old one is dropped).
    pub fn get_or_make(&mut self, make: impl FnOnce() -> T) -> &mut T {
        let recorder = recorder_id();
        if self.value.is_none() || self.recorder != recorder {
            self.recorder = recorder;
            self.value = None;
        }
        self.value.get_or_insert_with(make)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_recorder_makes_the_value_again() {
        let mut scoped = RecorderScoped::new();
        assert!(!scoped.is_made());
        *scoped.get_or_make(|| 1) += 1;
        assert_eq!(*scoped.get_or_make(|| 10), 2);
        let local = metrics_util::debugging::DebuggingRecorder::new();
        metrics::with_local_recorder(&local, || {
            assert!(!scoped.is_current());
            assert_eq!(*scoped.get_or_make(|| 10), 10);
            assert!(scoped.is_current());
        });
        assert_eq!(*scoped.get_or_make(|| 20), 20);
    }
}
