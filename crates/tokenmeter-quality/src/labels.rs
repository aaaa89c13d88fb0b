//! The cardinality cap on the label values this crate emits (keywords, safety-filter names,
//! scorer names): one implementation for all of them.

use std::collections::{HashMap, HashSet};

use tokenmeter_core::recorder_id;

/// The label value that values past the cap are emitted under.
pub(crate) const OTHER: &str = "other";

/// Distinct overflowed values remembered (so that each is counted once); past this many, an
/// unseen value cannot be told from a seen one and is counted each time.
const MAX_REMEMBERED_OVERFLOW: usize = 4096;

/// Handles for the values of one capped label, valid for one `metrics` recorder.
///
/// The first `cap` distinct values get a handle of their own; the rest share the `other`
/// handle, and the overflow callback runs once per distinct overflowed value. When another
/// recorder is current than the one the handles were registered under, it starts afresh, so
/// each recorder sees every series and the overflow count.
pub(crate) struct CappedLabel<H> {
    cap: usize,
    recorder: usize,
    own: HashMap<String, H>,
    other: Option<H>,
    overflowed: HashSet<String>,
}

impl<H> CappedLabel<H> {
    /// At most `cap` values get a label value of their own.
    pub(crate) fn new(cap: usize) -> Self {
        CappedLabel {
            cap,
            recorder: recorder_id(),
            own: HashMap::new(),
            other: None,
            overflowed: HashSet::new(),
        }
    }

    /// The handle for `value`: its own (registered with `make(value)` on first use) while
    /// fewer than `cap` values have one, else the shared one (`make("other")`). `overflow`
    /// runs the first time each value is mapped to `other` (under the current recorder).
    /// Cheap for a value seen before: one recorder-id read and one hash lookup.
    pub(crate) fn get(
        &mut self,
        value: &str,
        make: impl Fn(&str) -> H,
        overflow: impl FnOnce(),
    ) -> &H {
        let recorder = recorder_id();
        if recorder != self.recorder {
            self.own.clear();
            self.other = None;
            self.overflowed.clear();
            self.recorder = recorder;
        }
        if self.own.contains_key(value) {
            return &self.own[value];
        }
        if self.own.len() < self.cap {
            return self
                .own
                .entry(value.to_owned())
                .or_insert_with(|| make(value));
        }
        // A value spelled `other` past the cap is emitted under its own spelling: no overflow.
        if value != OTHER && !self.overflowed.contains(value) {
            if self.overflowed.len() < MAX_REMEMBERED_OVERFLOW {
                self.overflowed.insert(value.to_owned());
            }
            overflow();
        }
        self.other.get_or_insert_with(|| make(OTHER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn overflow_once_per_distinct_value_and_other_is_an_ordinary_name_below_the_cap() {
        let made = std::cell::RefCell::new(Vec::new());
        let overflows = Cell::new(0);
        let mut l = CappedLabel::new(2);
        let mut get = |v: &str| {
            *l.get(
                v,
                |name| {
                    made.borrow_mut().push(name.to_owned());
                    name.to_owned()
                },
                || overflows.set(overflows.get() + 1),
            ) == v
        };
        // "other" under the cap is a name like any other, not the overflow slot.
        assert!(get("other"));
        assert!(get("a"));
        assert!(!get("b"));
        assert!(!get("b"));
        assert!(!get("c"));
        assert!(get("a"));
        assert!(get("other"));
        assert!(!get("c"));
        assert_eq!(overflows.get(), 2);
        // Past the cap: once per distinct value, nothing for a value spelled `other`.
        assert!(!get("d"));
        assert_eq!(overflows.get(), 3);
        // One registration per own value, one for the shared `other` series.
        assert_eq!(*made.borrow(), ["other", "a", "other"]);
    }

    #[test]
    fn past_the_memory_bound_overflow_counts_each_time() {
        let overflows = Cell::new(0);
        let mut l = CappedLabel::new(0);
        for i in 0..MAX_REMEMBERED_OVERFLOW + 1 {
            l.get(
                &i.to_string(),
                |_| (),
                || overflows.set(overflows.get() + 1),
            );
        }
        l.get("0", |_| (), || overflows.set(overflows.get() + 1));
        assert_eq!(overflows.get(), MAX_REMEMBERED_OVERFLOW + 1);
        l.get("x", |_| (), || overflows.set(overflows.get() + 1));
        l.get("x", |_| (), || overflows.set(overflows.get() + 1));
        assert_eq!(overflows.get(), MAX_REMEMBERED_OVERFLOW + 3);
    }

    #[test]
    fn a_value_spelled_other_past_the_cap_is_no_overflow() {
        let overflows = Cell::new(0);
        let mut l = CappedLabel::new(1);
        l.get("a", |v| v.to_owned(), || overflows.set(overflows.get() + 1));
        let h = l.get(
            OTHER,
            |v| v.to_owned(),
            || overflows.set(overflows.get() + 1),
        );
        assert_eq!((h.as_str(), overflows.get()), (OTHER, 0));
    }
}
