//! Streaming text statistics over decoded pieces: a UTF-8 decoder that counts characters,
//! replacement characters, control characters and non-whitespace characters across piece
//! boundaries (a multi-byte character may be split between two tokens), and a case-insensitive
//! phrase matcher (Aho-Corasick) whose state carries over from one piece to the next.
//!
//! ```
//! use tokenmeter_quality::text::Utf8Stats;
//! let mut s = Utf8Stats::default();
//! s.feed("h\u{e9}".as_bytes());
//! s.feed(&[0xE2, 0x82]); // the first two bytes of '€' ...
//! s.feed(&[0xAC, b'!']); // ... and the last
//! s.feed(&[0xFF]);       // invalid: one U+FFFD
//! let c = s.finish();
//! assert_eq!((c.chars, c.replacement), (5, 1));
//! ```

use aho_corasick::automaton::Automaton;
use aho_corasick::automaton::StateID;
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind};

/// Character counts of a UTF-8 stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CharCounts {
    /// Characters as a lossy decoder produces them (each invalid sequence is one U+FFFD).
    pub chars: u64,
    /// U+FFFD: literal ones plus one per invalid or truncated sequence.
    pub replacement: u64,
    /// Control characters: C0 other than `\t`, `\n`, `\r`; DEL; C1 (U+0080..U+009F).
    pub control: u64,
    /// Characters that are not whitespace.
    pub non_whitespace: u64,
    /// Bytes fed.
    pub bytes: u64,
}

/// A streaming UTF-8 decoder that counts (see [`CharCounts`]); invalid input is replaced as
/// `String::from_utf8_lossy` does (maximal subparts), so the counts equal those of decoding the
/// concatenated bytes lossily, however they are split into pieces.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Stats {
    counts: CharCounts,
    /// Continuation bytes still expected for the sequence in progress (0: none).
    need: u8,
    /// Code point bits gathered so far.
    cp: u32,
    /// Allowed range for the next continuation byte (narrower right after E0, ED, F0, F4).
    lo: u8,
    hi: u8,
}

impl Utf8Stats {
    /// Feeds one piece. Never fails; no allocation.
    #[inline]
    pub fn feed(&mut self, bytes: &[u8]) {
        self.counts.bytes += bytes.len() as u64;
        for &b in bytes {
            if self.need == 0 && b < 0x80 {
                self.ascii(b);
            } else {
                self.byte(b);
            }
        }
    }

    #[inline(always)]
    fn ascii(&mut self, b: u8) {
        let c = &mut self.counts;
        c.chars += 1;
        c.control += u64::from((b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7F);
        c.non_whitespace += u64::from(!b.is_ascii_whitespace() && b != 0x0B);
    }

    fn byte(&mut self, b: u8) {
        if self.need > 0 {
            if (self.lo..=self.hi).contains(&b) {
                self.cp = (self.cp << 6) | u32::from(b & 0x3F);
                self.lo = 0x80;
                self.hi = 0xBF;
                self.need -= 1;
                if self.need == 0 {
                    self.scalar(self.cp);
                }
                return;
            }
            // The sequence so far is a maximal subpart: one U+FFFD, then `b` starts afresh.
            self.need = 0;
            self.replacement();
            if b < 0x80 {
                self.ascii(b);
                return;
            }
        }
        let (need, cp, lo, hi) = match b {
            0xC2..=0xDF => (1, b & 0x1F, 0x80, 0xBF),
            0xE0 => (2, 0, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, b & 0x0F, 0x80, 0xBF),
            0xED => (2, 0x0D, 0x80, 0x9F),
            0xF0 => (3, 0, 0x90, 0xBF),
            0xF1..=0xF3 => (3, b & 0x07, 0x80, 0xBF),
            0xF4 => (3, 0x04, 0x80, 0x8F),
            _ => {
                // Stray continuation byte or a byte never valid in UTF-8.
                self.replacement();
                return;
            }
        };
        self.need = need;
        self.cp = u32::from(cp);
        self.lo = lo;
        self.hi = hi;
    }

    fn replacement(&mut self) {
        self.counts.chars += 1;
        self.counts.replacement += 1;
        self.counts.non_whitespace += 1;
    }

    fn scalar(&mut self, cp: u32) {
        let c = &mut self.counts;
        c.chars += 1;
        c.replacement += u64::from(cp == 0xFFFD);
        c.control += u64::from((0x80..=0x9F).contains(&cp));
        let ws = char::from_u32(cp).is_some_and(char::is_whitespace);
        c.non_whitespace += u64::from(!ws);
    }

    /// The counts so far, not counting a sequence still in progress.
    pub fn counts(&self) -> CharCounts {
        self.counts
    }

    /// Ends the stream: a truncated sequence at the end counts as one U+FFFD. Returns the
    /// counts; the decoder is ready for a new stream afterwards.
    pub fn finish(&mut self) -> CharCounts {
        if self.need > 0 {
            self.need = 0;
            self.replacement();
        }
        let c = self.counts;
        *self = Utf8Stats::default();
        c
    }
}

/// The English refusal phrases matched by default (case-insensitive substrings; every
/// apostrophe also matches the typographic `’`).
pub const DEFAULT_REFUSAL_PHRASES: &[&str] = &[
    "i'm sorry, but i can",
    "i am sorry, but i can",
    "i'm sorry, i can't",
    "i apologize, but i can",
    "i cannot help with",
    "i can't help with",
    "i cannot assist",
    "i can't assist",
    "i'm unable to help",
    "i am unable to help",
    "i'm unable to provide",
    "i am unable to provide",
    "i'm not able to help",
    "i am not able to help",
    "i cannot provide",
    "i can't provide",
    "i cannot comply",
    "i can't comply",
    "i won't be able to help",
    "i must decline",
    "as an ai language model",
    "i'm not comfortable",
    "against my guidelines",
    "i cannot fulfill",
    "i can't fulfill",
];

/// Matches many phrases in a stream of pieces at once: one Aho-Corasick DFA
/// (ASCII-case-insensitive, overlapping, built once and shared), walked one byte at a time
/// from a per-stream [`StateID`] that carries over piece boundaries. O(1) per byte, no
/// allocation.
#[derive(Clone, Debug)]
pub struct PhraseSet {
    dfa: DFA,
    start: StateID,
}

/// A phrase list that could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the phrase matcher: {0}")]
pub struct PhraseError(String);

impl PhraseSet {
    /// Compiles the phrases; pattern ids follow the order given. Empty phrases are allowed
    /// and never match.
    ///
    /// # Errors
    ///
    /// When the automaton exceeds the library's size limits.
    pub fn new<I, P>(phrases: I) -> Result<Self, PhraseError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let dfa = DFA::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(phrases)
            .map_err(|e| PhraseError(e.to_string()))?;
        let start = dfa
            .start_state(Anchored::No)
            .map_err(|e| PhraseError(e.to_string()))?;
        Ok(PhraseSet { dfa, start })
    }

    /// The state a new stream begins in.
    pub fn start(&self) -> StateID {
        self.start
    }

    /// Number of phrases.
    pub fn len(&self) -> usize {
        self.dfa.patterns_len()
    }

    /// Whether there is no phrase.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Walks `piece` from `state`, calling `on_match(pattern_index)` for every phrase that ends
    /// inside it (overlapping matches included), and returns the new state.
    #[inline]
    pub fn feed(
        &self,
        mut state: StateID,
        piece: &[u8],
        mut on_match: impl FnMut(usize),
    ) -> StateID {
        for &b in piece {
            state = self.dfa.next_state(Anchored::No, state, b);
            if self.dfa.is_special(state) {
                if self.dfa.is_match(state) {
                    for i in 0..self.dfa.match_len(state) {
                        on_match(self.dfa.match_pattern(state, i).as_usize());
                    }
                } else if self.dfa.is_dead(state) {
                    state = self.start;
                }
            }
        }
        state
    }
}

/// Adds the `’` variant of every phrase containing `'`.
pub(crate) fn with_curly_apostrophes<S: AsRef<str>>(phrases: &[S]) -> Vec<(usize, String)> {
    let mut out = Vec::with_capacity(phrases.len() * 2);
    for (i, p) in phrases.iter().enumerate() {
        let p = p.as_ref();
        out.push((i, p.to_owned()));
        if p.contains('\'') {
            out.push((i, p.replace('\'', "\u{2019}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lossy_counts(bytes: &[u8]) -> CharCounts {
        let s = String::from_utf8_lossy(bytes);
        let mut c = CharCounts {
            bytes: bytes.len() as u64,
            ..CharCounts::default()
        };
        for ch in s.chars() {
            c.chars += 1;
            c.replacement += u64::from(ch == '\u{FFFD}');
            let cp = ch as u32;
            c.control += u64::from(
                (cp < 0x20 && !matches!(ch, '\t' | '\n' | '\r')) || (0x7F..=0x9F).contains(&cp),
            );
            c.non_whitespace += u64::from(!ch.is_whitespace());
        }
        c
    }

    #[test]
    fn counts_match_lossy_decoding() {
        let cases: &[&[u8]] = &[
            b"",
            b"plain ascii\n",
            "\u{FFFD} literal, caf\u{e9}, \u{1F600}, \u{85}\u{7}".as_bytes(),
            &[0xE0, 0x80, 0x80],       // overlong: three replacements
            &[0xED, 0xA0, 0x80],       // surrogate
            &[0xF4, 0x90, 0x80, 0x80], // above U+10FFFF
            &[0xF0, 0x9F, 0x98],       // truncated at the end
            &[0xC3, b'a'],
            &[0x80, 0xBF, 0xFE, 0xFF],
        ];
        for &bytes in cases {
            let mut s = Utf8Stats::default();
            s.feed(bytes);
            assert_eq!(s.finish(), lossy_counts(bytes), "{bytes:?}");
        }
    }

    proptest! {
        #[test]
        fn split_anywhere_equals_lossy(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0x80u8..0xC0, 0xE0u8..0xF5, Just(b' ')], 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let mut s = Utf8Stats::default();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                s.feed(&bytes[at..c]);
                at = c;
            }
            prop_assert_eq!(s.finish(), lossy_counts(&bytes));
        }
    }

    #[test]
    fn phrases_match_across_pieces_case_insensitively() {
        let set = PhraseSet::new(["i cannot", "cannot help", "xyz"]).expect("builds");
        let mut hits = Vec::new();
        let mut st = set.start();
        for piece in ["Sorry, I", " CAN", "not", " help you."] {
            st = set.feed(st, piece.as_bytes(), |i| hits.push(i));
        }
        assert_eq!(hits, vec![0, 1]);
        let empty = PhraseSet::new(Vec::<&str>::new()).expect("builds");
        assert!(empty.is_empty());
        let st = empty.feed(empty.start(), b"anything", |_| panic!("no phrase"));
        let _ = st;
    }

    #[test]
    fn curly_apostrophe_variants() {
        let v = with_curly_apostrophes(&["i can't", "no"]);
        assert_eq!(
            v,
            vec![
                (0, "i can't".into()),
                (0, "i can\u{2019}t".into()),
                (1, "no".into())
            ]
        );
    }
}
