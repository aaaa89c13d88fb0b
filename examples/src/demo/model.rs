//! Loading SmolLM2 (or a random-weight model of the same architecture) with candle.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::chat::ChatTemplate;
use super::llama::{Llama, Perturb};
use super::tokenizer::Tokenizer;

/// The largest context the demo serves: candle's quantized llama precomputes RoPE tables for
/// 4096 positions, whatever the GGUF says.
pub const MAX_CONTEXT: usize = 4096;

/// Where the weights came from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A GGUF file on disk.
    Gguf(String),
    /// A randomly initialized model of the same architecture, and why.
    Random(String),
}

/// A loaded model: shared immutable weights (each sequence owns only its KV cache), tokenizer
/// and chat template. Cloning copies `Arc`s.
#[derive(Clone)]
pub struct Model {
    /// The weights.
    pub llama: Arc<Llama>,
    /// The tokenizer built from the GGUF metadata.
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template from the GGUF metadata.
    pub template: Arc<ChatTemplate>,
    /// The model id the server answers to.
    pub id: String,
    /// Context length in tokens (prompt + output).
    pub context_len: usize,
    /// Where the weights came from.
    pub source: ModelSource,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("id", &self.id)
            .field("context_len", &self.context_len)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A boxed error for model loading.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, BoxError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| format!("GGUF metadata has no {key}").into())
}

impl Model {
    /// Loads a GGUF model from memory or disk bytes (`reader`), naming it `id`.
    ///
    /// # Errors
    /// When the file is not a llama-architecture GGUF with a gpt2 tokenizer.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        reader: &mut R,
        id: &str,
        source: ModelSource,
    ) -> Result<Self, BoxError> {
        Self::from_gguf_perturbed(reader, id, source, None)
    }

    /// [`from_gguf`](Self::from_gguf) with the layer matrices perturbed (the demo's variant B).
    ///
    /// # Errors
    /// When the file is not a llama-architecture GGUF with a gpt2 tokenizer.
    pub fn from_gguf_perturbed<R: std::io::Read + std::io::Seek>(
        reader: &mut R,
        id: &str,
        source: ModelSource,
        perturb: Option<Perturb>,
    ) -> Result<Self, BoxError> {
        let ct = gguf_file::Content::read(reader)?;
        let arch = md(&ct, "general.architecture")?.to_string()?.clone();
        if arch != "llama" {
            return Err(format!("architecture {arch:?} is not llama").into());
        }
        let tokenizer = Tokenizer::from_gguf(&ct)?;
        let template = ChatTemplate::new(
            ct.metadata
                .get("tokenizer.chat_template")
                .and_then(|v| v.to_string().ok().cloned()),
        );
        let ctx = ct
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|c| c as usize)
            .unwrap_or(2048)
            .min(MAX_CONTEXT);
        let llama = Llama::from_gguf_perturbed(&ct, reader, perturb)?;
        Ok(Self {
            llama: Arc::new(llama),
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            id: id.to_string(),
            context_len: ctx,
            source,
        })
    }

    /// Loads the GGUF file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read or is not a supported model.
    pub fn load(path: &Path, id: &str) -> Result<Self, BoxError> {
        Self::load_perturbed(path, id, None)
    }

    /// Loads the GGUF file at `path` with the layer matrices perturbed.
    ///
    /// # Errors
    /// When the file cannot be read or is not a supported model.
    pub fn load_perturbed(
        path: &Path,
        id: &str,
        perturb: Option<Perturb>,
    ) -> Result<Self, BoxError> {
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_gguf_perturbed(
            &mut f,
            id,
            ModelSource::Gguf(path.display().to_string()),
            perturb,
        )
    }

    /// A small randomly initialized model of SmolLM2's architecture (llama, GQA, tied
    /// embeddings, byte-level BPE with ChatML specials), built as an in-memory GGUF so that it
    /// goes through exactly the same loading path as the real file.
    ///
    /// # Errors
    /// Only on internal candle errors.
    pub fn random(id: &str, reason: &str, seed: u64) -> Result<Self, BoxError> {
        Self::random_perturbed(id, reason, seed, None)
    }

    /// [`random`](Self::random) with the layer matrices perturbed.
    ///
    /// # Errors
    /// Only on internal candle errors.
    pub fn random_perturbed(
        id: &str,
        reason: &str,
        seed: u64,
        perturb: Option<Perturb>,
    ) -> Result<Self, BoxError> {
        let bytes = random_gguf(seed)?;
        Self::from_gguf_perturbed(
            &mut Cursor::new(bytes),
            id,
            ModelSource::Random(reason.to_string()),
            perturb,
        )
    }
}

/// Builds a tiny llama GGUF in memory: 2 layers, width 64, 4 heads / 2 KV heads, vocab 256 bytes
/// + ChatML specials + a few merges.
pub(crate) fn random_gguf(seed: u64) -> Result<Vec<u8>, BoxError> {
    use gguf_file::Value as V;
    use rand::{Rng, SeedableRng};
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (n_embd, n_head, n_kv, n_layer, n_ff) = (64usize, 4usize, 2usize, 2usize, 128usize);
    let head_dim = n_embd / n_head;
    // Vocabulary: specials, then the 256 byte-level characters, then a few merges.
    let b2u = super::tokenizer::gpt2_byte_chars();
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types: Vec<i32> = vec![3, 3, 3];
    for c in b2u {
        tokens.push(c.to_string());
        types.push(1);
    }
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    let vocab = tokens.len();
    let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let metadata: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("general.name", V::String("random-smollm2-arch".into())),
        ("llama.block_count", V::U32(n_layer as u32)),
        ("llama.context_length", V::U32(1024)),
        ("llama.embedding_length", V::U32(n_embd as u32)),
        ("llama.feed_forward_length", V::U32(n_ff as u32)),
        ("llama.attention.head_count", V::U32(n_head as u32)),
        ("llama.attention.head_count_kv", V::U32(n_kv as u32)),
        ("llama.rope.freq_base", V::F32(100000.0)),
        ("llama.rope.dimension_count", V::U32(head_dim as u32)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.pre", V::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            V::Array(tokens.into_iter().map(V::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            V::Array(types.into_iter().map(V::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            V::Array(merges.iter().map(|m| V::String(m.to_string())).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.ggml.unknown_token_id", V::U32(0)),
        ("tokenizer.chat_template", V::String(template.into())),
    ];
    // GGUF dims are stored reversed: a (rows=out, cols=in) matrix is written as candle shape
    // (out, in), which matches how quantized_llama reads it.
    // Uniform in [-0.14, 0.14]: standard deviation 0.08, like a scaled normal init.
    let mut rand = |shape: (usize, usize)| -> Result<QTensor, BoxError> {
        let data: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * 0.14)
            .collect();
        let t = Tensor::from_vec(data, shape, &dev)?;
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
    };
    let ones = |n: usize| -> Result<QTensor, BoxError> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, DType::F32, &dev)?,
            GgmlDType::F32,
        )?)
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), rand((vocab, n_embd))?),
        ("output_norm.weight".into(), ones(n_embd)?),
    ];
    for l in 0..n_layer {
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_norm.weight"), ones(n_embd)?));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(n_embd)?));
        tensors.push((format!("{p}.attn_q.weight"), rand((n_embd, n_embd))?));
        tensors.push((
            format!("{p}.attn_k.weight"),
            rand((n_kv * head_dim, n_embd))?,
        ));
        tensors.push((
            format!("{p}.attn_v.weight"),
            rand((n_kv * head_dim, n_embd))?,
        ));
        tensors.push((format!("{p}.attn_output.weight"), rand((n_embd, n_embd))?));
        tensors.push((format!("{p}.ffn_gate.weight"), rand((n_ff, n_embd))?));
        tensors.push((format!("{p}.ffn_up.weight"), rand((n_ff, n_embd))?));
        tensors.push((format!("{p}.ffn_down.weight"), rand((n_embd, n_ff))?));
    }
    let md_refs: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md_refs, &t_refs)?;
    Ok(buf.into_inner())
}

/// The default location of the cached real model (relative to the workspace root).
pub const DEFAULT_MODEL_PATH: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Finds the cached real model: `$TOKENMETER_DEMO_MODEL`, or [`DEFAULT_MODEL_PATH`] under the
/// current directory or its parents.
pub fn find_cached_model() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("TOKENMETER_DEMO_MODEL") {
        let p = std::path::PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let p = dir.join(DEFAULT_MODEL_PATH);
        if p.is_file() {
            return Some(p);
        }
        if !dir.pop() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token ids pinned from Hugging Face `tokenizers` 0.23 with SmolLM2's own `tokenizer.json`
    /// pipeline (BPE from this GGUF's vocab and merges, pre-tokenizers Digits(individual) +
    /// ByteLevel without prefix space): the tokenizer built from the GGUF must match them.
    #[test]
    fn real_tokenizer_matches_hf_tokenizers() {
        let Some(path) = find_cached_model() else {
            eprintln!("skipped: the SmolLM2 GGUF is not cached (scripts/demo --fetch-only)");
            return;
        };
        let mut f = std::fs::File::open(path).expect("open model");
        let ct = gguf_file::Content::read(&mut f).expect("gguf");
        let tok = Tokenizer::from_gguf(&ct).expect("tokenizer");
        let cases: [(&str, &[u32]); 3] = [
            (
                "What is the capital of France?",
                &[1780, 314, 260, 3575, 282, 4649, 47],
            ),
            (
                "Hello   world!! 12345 café  \n\n  tabs\there ünïcödé 日本語 emoji 😀 don't I'm",
                &[
                    19556, 256, 905, 10095, 216, 33, 34, 35, 36, 37, 37366, 256, 8866, 29416, 197,
                    1531, 5549, 137, 94, 25972, 83, 7466, 84, 2756, 17097, 241, 115, 40993, 179,
                    120, 248, 649, 33777, 40303, 218, 1326, 982, 339, 5248,
                ],
            ),
            (
                "    def foo(x):\n        return x**2 + 3.14",
                &[
                    333, 753, 29856, 24, 104, 727, 448, 1003, 1792, 828, 34, 1232, 216, 35, 30, 33,
                    36,
                ],
            ),
        ];
        for (text, want) in cases {
            let got = tok.encode(text).expect("encode");
            assert_eq!(got, want, "{text:?}");
            assert_eq!(tok.encode_with_specials(text).expect("encode"), want);
            assert_eq!(tok.decode(&got).expect("decode"), text);
        }
    }
}
