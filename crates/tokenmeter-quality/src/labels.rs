//! The cardinality limit on the label values this crate emits (keywords, safety-filter names,
//! scorer names): core's [`CardinalityLimit`] deciding which values keep their own series, plus
//! the handles of those series for the current `metrics` recorder.

use std::collections::HashMap;
use std::time::Duration;

use tokenmeter_core::cardinality::{Admission, CardinalityLimit};
use tokenmeter_core::clock::Instant;
use tokenmeter_core::emit::RecorderScoped;

/// How long a filter or scorer name may go unused before its slot goes to another name.
pub(crate) const NAME_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Handles for the values of one capped label.
///
/// The limit admits at most `cap` values at once (an idle one gives its slot back); the rest
/// share the `other` handle, and the overflow callback runs once per measurement that went to
/// `other` (the meaning `labels.overflow` has everywhere). Handles are made again under another
/// recorder, so each recorder sees every series.
pub(crate) struct CappedLabel<H> {
    limit: CardinalityLimit,
    handles: RecorderScoped<HashMap<String, H>>,
}

impl<H> CappedLabel<H> {
    /// At most `cap` values get a label value of their own; a value unused for `idle` gives
    /// its slot back.
    pub(crate) fn new(cap: usize, idle: Duration) -> Self {
        CappedLabel {
            limit: CardinalityLimit::new(cap, idle),
            handles: RecorderScoped::new(),
        }
    }

    /// The handle for `value` used at `now`: its own (registered with `make(value)` on first
    /// use) while it holds a slot, else the shared one (`make("other")`), after running
    /// `overflow`. Cheap for a value seen before: one recorder-id read and two hash lookups.
    pub(crate) fn get(
        &mut self,
        value: &str,
        now: Instant,
        make: impl Fn(&str) -> H,
        overflow: impl FnOnce(),
    ) -> &H {
        let admission = self.limit.admit(value, now);
        let handles = self.handles.get_or_make(HashMap::new);
        if let Admission::Own {
            evicted: Some(evicted),
        } = &admission
        {
            handles.remove(evicted);
        }
        if admission == Admission::Overflow {
            overflow();
        }
        let label = admission.label(value);
        if !handles.contains_key(label) {
            handles.insert(label.to_owned(), make(label));
        }
        &handles[label]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn overflow_once_per_use_and_idle_names_give_their_slot_back() {
        let (clock, mock) = tokenmeter_core::clock::Clock::mock();
        let overflows = Cell::new(0);
        let made = std::cell::RefCell::new(Vec::new());
        let mut l = CappedLabel::new(1, Duration::from_secs(60));
        let mut get = |v: &str| {
            l.get(
                v,
                clock.now(),
                |name| {
                    made.borrow_mut().push(name.to_owned());
                    name.to_owned()
                },
                || overflows.set(overflows.get() + 1),
            )
            .clone()
        };
        assert_eq!(get("a"), "a");
        assert_eq!(get("b"), "other");
        assert_eq!(get("b"), "other");
        assert_eq!(get("other"), "other"); // spelled `other`: no overflow
        assert_eq!(overflows.get(), 2);
        mock.increment(Duration::from_secs(60));
        assert_eq!(get("b"), "b"); // `a` was idle: its slot went to `b`
        assert_eq!(*made.borrow(), ["a", "other", "b"]);
    }
}
