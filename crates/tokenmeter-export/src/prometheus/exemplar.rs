//! One exemplar per classic bucket: the last observation recorded with trace ids there.
//!
//! A slot is a sequence lock over plain atomics: a writer claims it by moving the sequence
//! from even to odd with one compare-and-swap and gives up if another writer holds it (the
//! exemplar is a sample, losing one to a race is fine), so writing never waits; a reader
//! retries nothing and reports no exemplar when a write is in progress.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use tokenmeter_core::exemplar::TraceIds;

/// An exemplar as a render reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ExemplarValue {
    pub(crate) ids: TraceIds,
    /// The observed value.
    pub(crate) value: f64,
    /// When it was recorded: Unix time in milliseconds.
    pub(crate) timestamp_ms: i64,
}

/// One bucket's exemplar slot.
#[derive(Debug, Default)]
pub(crate) struct ExemplarSlot {
    /// Even when stable, odd while a writer holds it; 0 while empty.
    seq: AtomicU64,
    trace_hi: AtomicU64,
    trace_lo: AtomicU64,
    span: AtomicU64,
    value: AtomicU64,
    timestamp_ms: AtomicU64,
}

impl ExemplarSlot {
    /// Stores `ex` unless another writer holds the slot.
    pub(crate) fn write(&self, ex: &ExemplarValue) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1
            || self
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        let r = Ordering::Relaxed;
        self.trace_hi.store((ex.ids.trace_id >> 64) as u64, r);
        self.trace_lo.store(ex.ids.trace_id as u64, r);
        self.span.store(ex.ids.span_id, r);
        self.value.store(ex.value.to_bits(), r);
        self.timestamp_ms.store(ex.timestamp_ms as u64, r);
        self.seq.store(seq + 2, Ordering::Release);
    }

    /// The stored exemplar; `None` when empty or being written.
    pub(crate) fn read(&self) -> Option<ExemplarValue> {
        let before = self.seq.load(Ordering::Acquire);
        if before == 0 || before & 1 == 1 {
            return None;
        }
        let r = Ordering::Relaxed;
        let ex = ExemplarValue {
            ids: TraceIds {
                trace_id: (u128::from(self.trace_hi.load(r)) << 64)
                    | u128::from(self.trace_lo.load(r)),
                span_id: self.span.load(r),
            },
            value: f64::from_bits(self.value.load(r)),
            timestamp_ms: self.timestamp_ms.load(r) as i64,
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == before).then_some(ex)
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_keeps_the_last_write_whole() {
        let slot = ExemplarSlot::default();
        assert_eq!(slot.read(), None);
        let ex = |n: u64| ExemplarValue {
            ids: TraceIds {
                trace_id: (u128::from(n) << 64) | u128::from(n),
                span_id: n,
            },
            value: n as f64,
            timestamp_ms: n as i64,
        };
        slot.write(&ex(1));
        slot.write(&ex(7));
        assert_eq!(slot.read(), Some(ex(7)));
        // Concurrent writers and readers: every read is one whole write.
        std::thread::scope(|s| {
            for t in 1..=4u64 {
                let slot = &slot;
                s.spawn(move || {
                    for i in 0..10_000 {
                        slot.write(&ex(t * 100_000 + i));
                    }
                });
            }
            for _ in 0..10_000 {
                if let Some(e) = slot.read() {
                    let n = e.ids.span_id;
                    assert_eq!(e, ex(n));
                }
            }
        });
    }
}
