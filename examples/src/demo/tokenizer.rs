//! The demo's tokenizer: Hugging Face `tokenizers`, built from the GGUF file's own
//! `tokenizer.ggml.*` metadata by candle-core's bridge
//! ([`candle_core::quantized::tokenizer::TokenizerFromGguf`]: byte-level BPE from the vocabulary
//! and merges, control tokens as special tokens).
//!
//! The bridge knows a few `tokenizer.ggml.pre` values (qwen2, llama3, ...) and gives every other
//! one GPT-2's `ByteLevel` pre-tokenizer *with* a prefix space. SmolLM2 ships `pre = "smollm"`,
//! whose `tokenizer.json` pre-tokenizer is `Digits(individual_digits)` then `ByteLevel` without a
//! prefix space (llama.cpp's `smollm`, like `starcoder` and `refact`), so that is set here; other
//! unknown values get `ByteLevel` without a prefix space (llama.cpp's `gpt2`).

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{
    DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper,
};

use super::model::BoxError;

/// A byte-level BPE tokenizer built from GGUF metadata.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Matches special-token spellings (e.g. `<|im_start|>`) as their ids: chat prompts.
    chat: tokenizers::Tokenizer,
    /// The same tokenizer encoding special-token spellings as plain text: completion prompts.
    /// `tokenizers` makes this a setting of the tokenizer, not of a call, hence a second copy.
    plain: tokenizers::Tokenizer,
    /// Token id -> the raw bytes it stands for (special tokens: none).
    token_bytes: Vec<Box<[u8]>>,
    eos: u32,
    max_token_bytes: usize,
}

/// GPT-2's byte -> printable character table: byte-level BPE spells byte `b` as `table[b]`
/// (`tokenizers` keeps its copy private).
pub fn gpt2_byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut assigned = [false; 256];
    for b in (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
        table[b as usize] = char::from(b);
        assigned[b as usize] = true;
    }
    // The other 68 bytes take the characters from U+0100 on, in byte order.
    let mut next = '\u{100}'..;
    for b in 0..256 {
        if !assigned[b] {
            table[b] = next.next().unwrap_or('\u{FFFD}');
        }
    }
    table
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    ///
    /// # Errors
    /// When `tokenizer.ggml.model` is not `gpt2`, the vocabulary, merges or token types are
    /// missing or malformed, or there is no `tokenizer.ggml.eos_token_id`.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, BoxError> {
        let mut chat = tokenizers::Tokenizer::from_gguf(ct)?;
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map_or("", String::as_str);
        let byte_level = ByteLevel::default().add_prefix_space(false);
        match pre {
            // The bridge's own pipelines.
            "qwen2" | "smaug-bpe" | "lfm2" | "llama3" => {}
            "smollm" | "starcoder" | "refact" => {
                chat.with_pre_tokenizer(Some(Sequence::new(vec![
                    Digits::new(true).into(),
                    byte_level.into(),
                ])));
            }
            _ => {
                chat.with_pre_tokenizer(Some(byte_level));
            }
        }
        let eos = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
            .ok_or("GGUF metadata has no tokenizer.ggml.eos_token_id")?;
        // The raw bytes of every token, for the quality monitor (`tokenizers` only decodes to
        // text, which loses a multi-byte character cut between tokens).
        let byte_of: HashMap<char, u8> = gpt2_byte_chars()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let added = chat.get_added_vocabulary();
        let mut token_bytes = vec![Box::<[u8]>::default(); chat.get_vocab_size(true)];
        let mut max_token_bytes = 1;
        for (text, id) in chat.get_vocab(true) {
            if added.is_special_token(&text) {
                // Matched literally in chat prompts.
                max_token_bytes = max_token_bytes.max(text.len());
                continue;
            }
            let mut bytes = Vec::with_capacity(text.len());
            for c in text.chars() {
                match byte_of.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            max_token_bytes = max_token_bytes.max(bytes.len());
            if let Some(slot) = token_bytes.get_mut(id as usize) {
                *slot = bytes.into();
            }
        }
        let mut plain = chat.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self {
            chat,
            plain,
            token_bytes,
            eos,
            max_token_bytes,
        })
    }

    /// The raw bytes of a token (special tokens and unknown ids: none).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], |b| b)
    }

    /// End-of-sequence id (`tokenizer.ggml.eos_token_id`).
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The id of the special token spelled `text`, if the vocabulary has it.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.chat
            .get_added_vocabulary()
            .is_special_token(text)
            .then(|| self.chat.token_to_id(text))
            .flatten()
    }

    /// The longest token in bytes: a text of `b` bytes has at least `b / max_token_bytes()` tokens.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Encodes `text`, matching special-token spellings (e.g. `<|im_start|>`) as their ids. No
    /// BOS/EOS is added.
    ///
    /// # Errors
    /// When `tokenizers` cannot encode the text (not expected: byte-level BPE covers every byte).
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        Ok(self.chat.encode_fast(text, false)?.get_ids().to_vec())
    }

    /// Encodes ordinary text: special-token spellings are encoded as plain text. No BOS/EOS is
    /// added.
    ///
    /// # Errors
    /// As [`Tokenizer::encode_with_specials`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        Ok(self.plain.encode_fast(text, false)?.get_ids().to_vec())
    }

    /// Decodes ids to text, skipping special tokens and ids outside the vocabulary; invalid
    /// UTF-8 becomes U+FFFD.
    ///
    /// # Errors
    /// When the decoder fails (the byte-level decoder does not).
    pub fn decode(&self, ids: &[u32]) -> Result<String, BoxError> {
        self.chat.decode(ids, true)
    }

    /// A streaming decoder for one sequence (special tokens are skipped).
    pub fn decode_stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            inner: self.chat.decode_stream(true),
        }
    }
}

/// Turns a sequence's token ids into text pieces, holding back incomplete UTF-8 sequences
/// (`tokenizers`' [`DecodeStream`]).
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    inner: DecodeStream<
        't,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
}

impl std::fmt::Debug for StreamDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder").finish_non_exhaustive()
    }
}

impl StreamDecoder<'_> {
    /// Adds one token and returns the text that became complete (empty while a UTF-8 sequence
    /// is incomplete, and for special tokens).
    pub fn push(&mut self, id: u32) -> String {
        match self.inner.step(id) {
            Ok(piece) => piece.unwrap_or_default(),
            // `DecodeStream` fails only when a decoder rewrites earlier text, which the
            // byte-level decoder never does; keep the token's own text rather than lose it.
            Err(_) => self.tok.decode(&[id]).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The random-weight model's tokenizer: the 256 byte characters, ChatML specials (ids 0-2)
    /// and the merges `Ġ t`, `h e`, `Ġt he`, `i n`, `Ġ a`, `e r`; `pre = "smollm"`.
    fn tiny() -> Tokenizer {
        let bytes = super::super::model::random_gguf(1).expect("gguf");
        let ct = gguf_file::Content::read(&mut std::io::Cursor::new(bytes)).expect("read");
        Tokenizer::from_gguf(&ct).expect("tokenizer")
    }

    fn pieces(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&i| t.decode(&[i]).expect("decode"))
            .collect()
    }

    #[test]
    fn merges_digits_and_the_whitespace_give_back() {
        let t = tiny();
        let ids = t.encode("in the 42  there").expect("encode");
        // " the" is one merged token; each digit its own; of two spaces before a word the
        // first is alone and the second starts the word (`\s+(?!\S)`).
        assert_eq!(
            pieces(&t, &ids),
            ["in", " the", " ", "4", "2", " ", " the", "r", "e"]
        );
        assert_eq!(t.decode(&ids).expect("decode"), "in the 42  there");
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| t.token_bytes(i).to_vec())
            .collect();
        assert_eq!(bytes, b"in the 42  there");
        // No prefix space: a leading word is not " in".
        assert_eq!(pieces(&t, &t.encode("in").expect("encode")), ["in"]);
    }

    #[test]
    fn specials_match_in_chat_prompts_only() {
        let t = tiny();
        let text = "<|im_start|>user\nhi<|im_end|>";
        let chat = t.encode_with_specials(text).expect("encode");
        assert_eq!(
            pieces(&t, &chat),
            ["", "u", "s", "er", "\n", "h", "i", ""],
            "{chat:?}"
        );
        assert_eq!((chat[0], chat[7]), (1, 2));
        assert_eq!(t.decode(&chat).expect("decode"), "user\nhi");
        let plain = t.encode(text).expect("encode");
        assert!(!plain.contains(&1) && !plain.contains(&2), "{plain:?}");
        assert_eq!(t.decode(&plain).expect("decode"), text);
        assert_eq!(t.special_id("<|im_end|>"), Some(2));
        assert_eq!(t.special_id("<|endoftext|>"), Some(0));
        assert_eq!(t.special_id("user"), None);
        assert_eq!(t.eos(), 2);
        // "<|endoftext|>" is the longest token: 13 bytes.
        assert_eq!(t.max_token_bytes(), 13);
    }

    #[test]
    fn stream_decoder_holds_partial_utf8_and_skips_specials() {
        let t = tiny();
        let ids = t.encode("é the").expect("encode");
        assert_eq!(ids.len(), 3);
        // The two bytes of "é" are two tokens; each has one raw byte.
        assert_eq!(t.token_bytes(ids[0]), [0xC3]);
        assert_eq!(t.token_bytes(ids[1]), [0xA9]);
        assert_eq!(t.token_bytes(1), b"");
        let mut d = t.decode_stream();
        assert_eq!(d.push(ids[0]), "");
        assert_eq!(d.push(ids[1]), "é");
        assert_eq!(d.push(1), "");
        assert_eq!(d.push(ids[2]), " the");
    }
}
