//! The cardinality limit on label values: one implementation for every capped label
//! (request labels such as `tenant`, and the quality crate's keywords, filters and scorers).
//!
//! In OpenTelemetry's terms (the metrics SDK's *cardinality limit*), at most `limit` distinct
//! values of a label get a series of their own; measurements with any further value go to the
//! overflow series, here the label value [`OTHER`] (OTLP carries it the same way). Unlike the
//! SDK's limit, which holds a slot until the process restarts, a value that has not been seen for
//! the *idle timeout* gives its slot back: three one-off tenants at start-up do not push every
//! later tenant into `other` for the life of the process.
//!
//! The overflow self-metric (`labels.overflow`) counts **measurements** that went to `other` (one
//! per request, or per recorded value), not distinct values: it needs no memory of overflowed
//! values, and `rate()` of it says how much traffic the limit is hiding.

use std::collections::HashMap;
use std::time::Duration;

use quanta::Instant;

/// The label value that values past the limit are emitted under.
pub const OTHER: &str = "other";

/// What [`CardinalityLimit::admit`] decided for a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The value keeps its own label value. `evicted` is a value that had been idle for the
    /// idle timeout and gave its slot up for this one (caches keyed by value drop it).
    Own {
        /// The value whose slot this one took, if any.
        evicted: Option<String>,
    },
    /// The limit is reached: emit [`OTHER`] and count one overflow.
    Overflow,
    /// The value is spelled `other` and the limit is reached: emit [`OTHER`], no overflow.
    Other,
}

impl Admission {
    /// The label value to emit for `value`.
    pub fn label<'a>(&self, value: &'a str) -> &'a str {
        match self {
            Admission::Own { .. } => value,
            Admission::Overflow | Admission::Other => OTHER,
        }
    }
}

/// At most `limit` distinct values of one label, each holding its slot while it was used within
/// the idle timeout.
///
/// ```
/// use std::time::Duration;
/// use tokenmeter_core::cardinality::{Admission, CardinalityLimit};
/// let (clock, mock) = quanta::Clock::mock();
/// let mut tenants = CardinalityLimit::new(1, Duration::from_secs(600));
/// assert_eq!(tenants.admit("a", clock.now()), Admission::Own { evicted: None });
/// assert_eq!(tenants.admit("b", clock.now()), Admission::Overflow);
/// mock.increment(Duration::from_secs(600)); // `a` has been idle for the timeout
/// assert_eq!(tenants.admit("b", clock.now()), Admission::Own { evicted: Some("a".into()) });
/// ```
#[derive(Debug)]
pub struct CardinalityLimit {
    limit: usize,
    idle_timeout: Duration,
    /// Value → its last use.
    last_used: HashMap<String, Instant>,
    /// No value can have been idle for the timeout before this instant: a lower bound, since
    /// last uses only grow. Saves a scan on every overflow.
    no_expiry_before: Option<Instant>,
}

impl CardinalityLimit {
    /// At most `limit` values at once; a value unused for `idle_timeout` gives its slot back
    /// (`Duration::MAX`: never).
    pub fn new(limit: usize, idle_timeout: Duration) -> Self {
        CardinalityLimit {
            limit,
            idle_timeout,
            last_used: HashMap::new(),
            no_expiry_before: None,
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Values holding a slot now.
    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    /// Whether no value holds a slot.
    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }

    /// Decides whether `value`, used at `now`, keeps its own label value. Cost: one hash
    /// lookup for a value that holds a slot; at the limit, a scan of the slots at most once per
    /// idle timeout.
    pub fn admit(&mut self, value: &str, now: Instant) -> Admission {
        if let Some(t) = self.last_used.get_mut(value) {
            *t = (*t).max(now);
            return Admission::Own { evicted: None };
        }
        if self.last_used.len() < self.limit {
            self.last_used.insert(value.to_owned(), now);
            return Admission::Own { evicted: None };
        }
        if let Some(evicted) = self.evict_idle(now) {
            self.last_used.insert(value.to_owned(), now);
            return Admission::Own {
                evicted: Some(evicted),
            };
        }
        if value == OTHER {
            Admission::Other
        } else {
            Admission::Overflow
        }
    }

    /// Frees the least recently used slot if it has been idle for the timeout.
    fn evict_idle(&mut self, now: Instant) -> Option<String> {
        if self.no_expiry_before.is_some_and(|t| now < t) {
            return None;
        }
        let (oldest, &at) = self.last_used.iter().min_by_key(|(_, t)| **t)?;
        let expires = at.checked_add(self.idle_timeout);
        if expires.is_some_and(|e| now >= e) {
            let oldest = oldest.clone();
            self.last_used.remove(&oldest);
            self.no_expiry_before = None;
            Some(oldest)
        } else {
            // `None` (a timeout past the clock's range): never expires; the limit still holds.
            self.no_expiry_before = Some(expires.unwrap_or(now + Duration::from_secs(86_400)));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_values_give_their_slot_back_least_recent_first() {
        let (clock, mock) = quanta::Clock::mock();
        let idle = Duration::from_secs(600);
        let mut l = CardinalityLimit::new(3, idle);
        for t in ["t1", "t2", "t3"] {
            assert_eq!(l.admit(t, clock.now()), Admission::Own { evicted: None });
        }
        mock.increment(Duration::from_secs(300));
        l.admit("t2", clock.now()); // t2 is used again: t1 and t3 stay the oldest
        assert_eq!(l.admit("acme", clock.now()), Admission::Overflow);
        mock.increment(Duration::from_secs(300));
        let a = l.admit("acme", clock.now());
        assert!(
            matches!(&a, Admission::Own { evicted: Some(e) } if e == "t1" || e == "t3"),
            "{a:?}"
        );
        assert_eq!(
            l.admit("acme", clock.now()),
            Admission::Own { evicted: None }
        );
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn other_is_an_ordinary_value_below_the_limit_and_no_overflow_past_it() {
        let (clock, _mock) = quanta::Clock::mock();
        let mut l = CardinalityLimit::new(1, Duration::MAX);
        assert_eq!(l.admit("a", clock.now()), Admission::Own { evicted: None });
        assert_eq!(l.admit(OTHER, clock.now()), Admission::Other);
        assert_eq!(l.admit("b", clock.now()), Admission::Overflow);
        assert_eq!(Admission::Overflow.label("b"), OTHER);
        let mut l = CardinalityLimit::new(1, Duration::MAX);
        assert_eq!(
            l.admit(OTHER, clock.now()),
            Admission::Own { evicted: None }
        );
    }

    #[test]
    fn a_zero_limit_sends_everything_to_other() {
        let (clock, _mock) = quanta::Clock::mock();
        let mut l = CardinalityLimit::new(0, Duration::ZERO);
        assert_eq!(l.admit("a", clock.now()), Admission::Overflow);
        assert!(l.is_empty());
    }
}
