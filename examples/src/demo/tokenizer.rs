//! A GPT-2 style byte-level BPE tokenizer built from a GGUF file's own `tokenizer.ggml.*` metadata.
//!
//! SmolLM2 ships `tokenizer.ggml.model = "gpt2"` and `tokenizer.ggml.pre = "smollm"`: every digit is
//! its own pre-token, then the GPT-2 split pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` applies (the same
//! pre-tokenizer as the model's `tokenizer.json`). The `regex` crate has no look-ahead, so
//! `\s+(?!\S)` is done by hand: a whitespace run followed by a non-space gives its last character
//! back to the next piece.
//!
//! Control and user-defined tokens (token types 3 and 4, e.g. `<|im_start|>`) are matched
//! literally in text and never produced by the BPE; [`Tokenizer::decode`] skips them.

use std::collections::HashMap;

use regex::Regex;

/// Why a tokenizer could not be built.
#[derive(Debug)]
pub struct TokenizerError(pub String);

impl std::fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tokenizer: {}", self.0)
    }
}

impl std::error::Error for TokenizerError {}

/// The GPT-2 byte -> printable character table (byte-level BPE spells byte `b` as `table[b]`).
pub fn gpt2_byte_chars() -> [char; 256] {
    bytes_to_unicode()
}

fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut assigned = [false; 256];
    for b in (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
        table[b as usize] = char::from(b);
        assigned[b as usize] = true;
    }
    let mut n = 0u32;
    for b in 0..256usize {
        if !assigned[b] {
            table[b] = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
        }
    }
    table
}

/// A byte-level BPE tokenizer.
#[derive(Debug)]
pub struct Tokenizer {
    /// Token id -> the raw bytes it stands for (specials: their literal text).
    token_bytes: Vec<Vec<u8>>,
    /// Token id -> whether it is a control/user-defined token.
    special: Vec<bool>,
    /// Id of each single-byte token.
    byte_ids: [Option<u32>; 256],
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special token texts, longest first.
    specials: Vec<(String, u32)>,
    split_digits: bool,
    split_re: Regex,
    bos: Option<u32>,
    eos: u32,
    unk: u32,
    max_token_bytes: usize,
}

/// What a GGUF file says about its tokenizer (the `tokenizer.ggml.*` keys).
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.tokens`, in byte-level (GPT-2) spelling.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 3 control, 4 user-defined, 6 byte).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, "left right" in rank order.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: u32,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer.
    ///
    /// # Errors
    /// When the spec is inconsistent: a merge naming unknown tokens, an out-of-range id.
    pub fn new(spec: &TokenizerSpec) -> Result<Self, TokenizerError> {
        let b2u = bytes_to_unicode();
        let mut u2b: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, c) in b2u.iter().enumerate() {
            u2b.insert(*c, b as u8);
        }
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError("empty vocabulary".into()));
        }
        for (what, id) in [
            ("eos", Some(spec.eos)),
            ("bos", spec.bos),
            ("unk", spec.unk),
        ] {
            if let Some(id) = id
                && id as usize >= n
            {
                return Err(TokenizerError(format!("{what} id {id} out of range")));
            }
        }
        let mut token_bytes = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        let mut by_text: HashMap<&str, u32> = HashMap::with_capacity(n);
        let mut specials = Vec::new();
        for (id, tok) in spec.tokens.iter().enumerate() {
            let ty = spec.token_types.get(id).copied().unwrap_or(1);
            let is_special = ty == 3 || ty == 4;
            special.push(is_special);
            if is_special {
                token_bytes.push(tok.as_bytes().to_vec());
                if !tok.is_empty() {
                    specials.push((tok.clone(), id as u32));
                }
            } else {
                let mut bytes = Vec::with_capacity(tok.len());
                for c in tok.chars() {
                    match u2b.get(&c) {
                        Some(b) => bytes.push(*b),
                        None => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                token_bytes.push(bytes);
                by_text.entry(tok.as_str()).or_insert(id as u32);
            }
        }
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let mut byte_ids = [None; 256];
        for (b, c) in b2u.iter().enumerate() {
            let mut buf = [0u8; 4];
            byte_ids[b] = by_text.get(&*c.encode_utf8(&mut buf)).copied();
        }
        let mut merges = HashMap::with_capacity(spec.merges.len());
        for (rank, m) in spec.merges.iter().enumerate() {
            let Some((l, r)) = m.split_once(' ') else {
                return Err(TokenizerError(format!("merge {rank} has no space: {m:?}")));
            };
            let (Some(&li), Some(&ri)) = (by_text.get(l), by_text.get(r)) else {
                return Err(TokenizerError(format!(
                    "merge {rank} names unknown tokens: {m:?}"
                )));
            };
            let merged = format!("{l}{r}");
            let Some(&mi) = by_text.get(merged.as_str()) else {
                return Err(TokenizerError(format!(
                    "merge {rank} result not in vocab: {m:?}"
                )));
            };
            merges.entry((li, ri)).or_insert((rank as u32, mi));
        }
        let split_re =
            Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
                .map_err(|e| TokenizerError(e.to_string()))?;
        let max_token_bytes = token_bytes.iter().map(Vec::len).max().unwrap_or(1).max(1);
        Ok(Self {
            token_bytes,
            special,
            byte_ids,
            merges,
            specials,
            split_digits: matches!(spec.pre.as_str(), "smollm" | "starcoder" | "refact"),
            split_re,
            bos: spec.bos,
            eos: spec.eos,
            unk: spec.unk.unwrap_or(0),
            max_token_bytes,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// End-of-sequence id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Beginning-of-sequence id, when the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The id of a special token spelled `text`, if any.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(t, _)| t == text)
            .map(|(_, id)| *id)
    }

    /// Whether `id` is a control/user-defined token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The longest token in bytes: a text of `b` bytes has at least `b / max_token_bytes()` tokens.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Encodes `text`, matching special-token spellings (e.g. `<|im_start|>`) as their ids.
    pub fn encode_with_specials(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            // Find the earliest special token occurrence.
            let mut best: Option<(usize, &str, u32)> = None;
            for (s, id) in &self.specials {
                if let Some(pos) = rest.find(s.as_str())
                    && best.is_none_or(|(bp, bs, _)| pos < bp || (pos == bp && s.len() > bs.len()))
                {
                    best = Some((pos, s.as_str(), *id));
                }
            }
            match best {
                Some((pos, s, id)) => {
                    self.encode_into(&rest[..pos], &mut out);
                    out.push(id);
                    rest = &rest[pos + s.len()..];
                }
                None => {
                    self.encode_into(rest, &mut out);
                    break 'outer;
                }
            }
        }
        out
    }

    /// Encodes ordinary text (special-token spellings are encoded as plain text).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        if self.split_digits {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    self.split_gpt2(&text[start..i], out);
                    let end = i + c.len_utf8();
                    self.bpe(&text[i..end], out);
                    start = end;
                }
            }
            self.split_gpt2(&text[start..], out);
        } else {
            self.split_gpt2(text, out);
        }
    }

    fn split_gpt2(&self, text: &str, out: &mut Vec<u32>) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.split_re.find_at(text, pos) else {
                self.bpe(&text[pos..], out);
                return;
            };
            if m.start() > pos {
                self.bpe(&text[pos..m.start()], out);
            }
            let mut end = m.end();
            let piece = m.as_str();
            // `\s+(?!\S)`: a whitespace run followed by a non-space leaves its last char behind.
            if end < text.len() && piece.chars().all(char::is_whitespace) {
                let mut chars = piece.char_indices();
                if let (Some(_), Some((last_i, _))) =
                    (chars.next(), piece.char_indices().next_back())
                    && last_i > 0
                {
                    end = m.start() + last_i;
                }
            }
            self.bpe(&text[m.start()..end], out);
            pos = end;
        }
    }

    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        let mut ids: Vec<u32> = piece
            .bytes()
            .map(|b| self.byte_ids[b as usize].unwrap_or(self.unk))
            .collect();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..ids.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(ids[i], ids[i + 1]))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    best = Some((rank, i, merged));
                }
            }
            match best {
                Some((_, i, merged)) => {
                    ids[i] = merged;
                    ids.remove(i + 1);
                }
                None => break,
            }
        }
        out.extend_from_slice(&ids);
    }

    /// The raw bytes of a token (special tokens: empty).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        if self.is_special(id) {
            return &[];
        }
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Decodes ids to text, skipping special tokens; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token ids into text pieces, holding back incomplete UTF-8 sequences.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds one token and returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.token_bytes(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix up to `valid` is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flushes whatever is left (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Tokenizer {
        let b2u = bytes_to_unicode();
        let mut tokens = vec![
            "<|endoftext|>".to_string(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        let mut types = vec![3, 3, 3];
        for c in b2u {
            tokens.push(c.to_string());
            types.push(1);
        }
        for t in ["Ġt", "he", "Ġthe", "ll", "llo", "hellow"] {
            tokens.push(t.into());
            types.push(1);
        }
        let _ = &mut tokens;
        Tokenizer::new(&TokenizerSpec {
            tokens,
            token_types: types,
            merges: vec![
                "Ġ t".into(),
                "h e".into(),
                "Ġt he".into(),
                "l l".into(),
                "ll o".into(),
            ],
            pre: "smollm".into(),
            bos: Some(1),
            eos: 2,
            unk: Some(0),
        })
        .expect("tiny tokenizer")
    }

    #[test]
    fn round_trips_and_merges() {
        let t = tiny();
        let ids = t.encode("hello the 42");
        assert_eq!(t.decode(&ids), "hello the 42");
        // "hello" -> h e llo after merges (h e) and (ll o); " the" -> Ġthe.
        let the = ids.iter().filter(|&&i| t.decode(&[i]) == " the").count();
        assert_eq!(the, 1);
        let llo = ids.iter().filter(|&&i| t.decode(&[i]) == "llo").count();
        assert_eq!(llo, 1);
    }

    #[test]
    fn specials_are_matched_and_skipped() {
        let t = tiny();
        let ids = t.encode_with_specials("<|im_start|>user\nhi<|im_end|>");
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().expect("ids"), 2);
        assert_eq!(t.decode(&ids), "user\nhi");
    }

    #[test]
    fn whitespace_run_gives_back_last_space() {
        let t = tiny();
        let mut pieces = Vec::new();
        // two spaces then a word: "  the" splits as " " + " the"
        let ids = t.encode("a  the");
        for &i in &ids {
            pieces.push(t.decode(&[i]));
        }
        assert!(pieces.contains(&" the".to_string()), "{pieces:?}");
    }

    #[test]
    fn stream_decoder_holds_partial_utf8() {
        let t = tiny();
        let ids = t.encode("é");
        assert_eq!(ids.len(), 2);
        let mut d = StreamDecoder::default();
        assert_eq!(d.push(&t, ids[0]), "");
        assert_eq!(d.push(&t, ids[1]), "é");
        assert_eq!(d.finish(), "");
    }
}
