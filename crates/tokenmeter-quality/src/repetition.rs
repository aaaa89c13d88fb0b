//! Repetition over token ids: seq-rep-n (the share of an output's n-grams that repeat an
//! earlier n-gram of the same output, Welleck et al. 2019) and a degenerate-loop flag.
//!
//! Each token updates a rolling hash of the last n ids in O(1) and inserts its 64-bit
//! fingerprint in an open-addressing set that doubles when half full: O(1) amortized per
//! token, and the only allocations are the O(log n) doublings (none once the set has grown
//! to the request's size; [`Repetition::reset`] keeps the capacity for the next request).
//! Two different n-grams are confused only if their 64-bit fingerprints collide.
//!
//! ```
//! use tokenmeter_quality::Repetition;
//! let mut r = Repetition::new(2, 4);
//! for id in [1, 2, 3, 1, 2, 3, 1, 2] {
//!     r.push(id);
//! }
//! // 7 bigrams: 12 23 31 12 23 31 12, of which 4 repeat an earlier one.
//! assert_eq!(r.seq_rep(), Some(4.0 / 7.0));
//! assert!(r.is_degenerate()); // a run of 4 repeated bigrams
//! ```

/// Largest supported n.
pub const MAX_N: usize = 32;
/// The set stops growing past this many distinct n-grams (32 MiB); later new n-grams are
/// still counted as n-grams but not remembered.
const MAX_SLOTS: usize = 1 << 22;
const INITIAL_SLOTS: usize = 256;
/// Odd multiplier of the rolling polynomial hash (mod 2^64).
const B: u64 = 0x9E37_79B9_7F4A_7C15;

/// Streaming seq-rep-n and loop detection for one output.
#[derive(Clone, Debug)]
pub struct Repetition {
    n: usize,
    loop_run: u64,
    ring: [u32; MAX_N],
    pos: usize,
    tokens: u64,
    hash: u64,
    /// B^n, to remove the id leaving the window.
    b_pow_n: u64,
    slots: Vec<u64>,
    len: usize,
    ngrams: u64,
    repeats: u64,
    run: u64,
    longest_run: u64,
}

impl Repetition {
    /// Tracks n-grams of `n` ids (clamped to 1..=32); a run of `loop_run` consecutive repeated
    /// n-grams (at least 1) flags a degenerate loop.
    pub fn new(n: usize, loop_run: u64) -> Self {
        Repetition::with_capacity(n, loop_run, 0)
    }

    /// Like [`new`](Self::new), with the n-gram set sized up front for `tokens` output tokens,
    /// so that outputs up to that length never allocate while tokens are pushed.
    pub fn with_capacity(n: usize, loop_run: u64, tokens: usize) -> Self {
        let n = n.clamp(1, MAX_N);
        let slots = (tokens.saturating_mul(2) + 1)
            .next_power_of_two()
            .clamp(INITIAL_SLOTS, MAX_SLOTS);
        Repetition {
            n,
            loop_run: loop_run.max(1),
            ring: [0; MAX_N],
            pos: 0,
            tokens: 0,
            hash: 0,
            b_pow_n: B.wrapping_pow(n as u32),
            slots: vec![0; slots],
            len: 0,
            ngrams: 0,
            repeats: 0,
            run: 0,
            longest_run: 0,
        }
    }

    /// The n in seq-rep-n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Forgets the output, keeping the allocated set for the next one.
    pub fn reset(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = 0);
        self.pos = 0;
        self.tokens = 0;
        self.hash = 0;
        self.len = 0;
        self.ngrams = 0;
        self.repeats = 0;
        self.run = 0;
        self.longest_run = 0;
    }

    /// Adds the next token id.
    #[inline]
    pub fn push(&mut self, id: u32) {
        let v = u64::from(id) + 1;
        let old = if self.tokens >= self.n as u64 {
            u64::from(self.ring[self.pos]) + 1
        } else {
            0
        };
        self.ring[self.pos] = id;
        self.pos = if self.pos + 1 == self.n {
            0
        } else {
            self.pos + 1
        };
        self.tokens += 1;
        self.hash = self
            .hash
            .wrapping_mul(B)
            .wrapping_add(v)
            .wrapping_sub(old.wrapping_mul(self.b_pow_n));
        if self.tokens < self.n as u64 {
            return;
        }
        self.ngrams += 1;
        if self.insert(mix(self.hash ^ self.n as u64)) {
            self.run = 0;
        } else {
            self.repeats += 1;
            self.run += 1;
            self.longest_run = self.longest_run.max(self.run);
        }
    }

    /// Inserts a fingerprint; false if it was already there.
    #[inline]
    fn insert(&mut self, fp: u64) -> bool {
        let fp = fp | 1; // 0 marks an empty slot
        let mask = self.slots.len() - 1;
        let mut i = (fp >> 7) as usize & mask;
        loop {
            let s = self.slots[i];
            if s == fp {
                return false;
            }
            if s == 0 {
                break;
            }
            i = (i + 1) & mask;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            if self.slots.len() >= MAX_SLOTS {
                return true; // full: counted as new, not remembered
            }
            self.grow();
            return self.insert(fp);
        }
        self.slots[i] = fp;
        self.len += 1;
        true
    }

    #[cold]
    fn grow(&mut self) {
        let doubled = vec![0; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.slots.len() - 1;
        for fp in old.into_iter().filter(|&f| f != 0) {
            let mut i = (fp >> 7) as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = fp;
        }
    }

    /// Token ids pushed.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// n-grams seen and how many of them repeated an earlier one.
    pub fn counts(&self) -> (u64, u64) {
        (self.ngrams, self.repeats)
    }

    /// seq-rep-n = repeated n-grams / n-grams; `None` before the first full n-gram.
    pub fn seq_rep(&self) -> Option<f64> {
        (self.ngrams > 0).then(|| self.repeats as f64 / self.ngrams as f64)
    }

    /// The longest run of consecutive repeated n-grams.
    pub fn longest_run(&self) -> u64 {
        self.longest_run
    }

    /// Whether a run of repeated n-grams reached the loop threshold.
    pub fn is_degenerate(&self) -> bool {
        self.longest_run >= self.loop_run
    }
}

/// A 64-bit finalizer (splitmix64) so that nearby hashes spread over the table.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn naive(ids: &[u32], n: usize) -> (u64, u64) {
        let mut seen = HashSet::new();
        let (mut total, mut rep) = (0, 0);
        for w in ids.windows(n) {
            total += 1;
            if !seen.insert(w.to_vec()) {
                rep += 1;
            }
        }
        (total, rep)
    }

    #[test]
    fn no_ngram_before_n_tokens() {
        let mut r = Repetition::new(4, 8);
        assert_eq!(r.seq_rep(), None);
        for id in [1, 2, 3] {
            r.push(id);
        }
        assert_eq!(r.seq_rep(), None);
        r.push(4);
        assert_eq!(r.seq_rep(), Some(0.0));
    }

    #[test]
    fn loop_flag_and_reset() {
        let mut r = Repetition::new(3, 10);
        for i in 0..100u32 {
            r.push(i % 5);
        }
        assert!(r.is_degenerate());
        assert_eq!(r.counts(), (98, 93));
        r.reset();
        assert_eq!(r.counts(), (0, 0));
        for i in 0..100u32 {
            r.push(i);
        }
        assert!(!r.is_degenerate());
        assert_eq!(r.seq_rep(), Some(0.0));
    }

    #[test]
    fn grows_past_initial_capacity() {
        let mut r = Repetition::new(1, 4);
        for i in 0..10_000u32 {
            r.push(i);
        }
        for i in 0..10_000u32 {
            r.push(i);
        }
        assert_eq!(r.counts(), (20_000, 10_000));
    }

    proptest! {
        #[test]
        fn matches_naive(ids in proptest::collection::vec(0u32..6, 0..300), n in 1usize..6) {
            let mut r = Repetition::new(n, 1000);
            for &id in &ids {
                r.push(id);
            }
            prop_assert_eq!(r.counts(), naive(&ids, n));
        }
    }
}
