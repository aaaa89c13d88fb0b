//! A llama forward pass (the architecture of candle-transformers' `quantized_llama`, read from
//! the same GGUF tensors) that decodes a **batch** of sequences in one pass: every matmul runs
//! on all sequences' rows at once (candle's quantized matmul then reads each weight tile once for
//! the whole batch), while RoPE positions, KV caches and attention stay per sequence. Prefill
//! runs one sequence at a time. The weights are immutable and shared; each sequence owns only
//! its [`KvCache`]. `quantized_llama` itself cannot batch the engine's sequences: it keeps one
//! KV cache per model and takes one position per batch. A test checks the logits against
//! `quantized_llama::ModelWeights`.

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::{BoxError, MAX_CONTEXT};

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    attn_norm: Tensor,
    ffn_norm: Tensor,
}

/// Seeded noise on the layer matrices, to mimic a poor quantization (the demo's variant B):
/// each weight moves by up to `steps` quantization steps (uniform), the step being its block's
/// range / 15 over blocks of 32 (exactly a step of the model's Q4_1, and the step a 4-bit
/// format would have for a matrix stored in another), and the matrix is
/// quantized again in its own format, so the degraded model runs exactly as fast as the
/// original. The embedding and output matrices are left alone. Deterministic for a seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perturb {
    /// RNG seed.
    pub seed: u64,
    /// Noise amplitude in quantization steps.
    pub steps: f32,
}

impl Perturb {
    /// `w` with the noise added (`salt` makes each tensor's noise its own).
    fn apply(&self, w: QTensor, salt: u64) -> Result<QTensor, BoxError> {
        let dtype = w.dtype();
        const BLOCK: usize = 32;
        let t = w.dequantize(&Device::Cpu)?;
        let shape = t.shape().clone();
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        let mut rng = StdRng::seed_from_u64(self.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for chunk in v.chunks_mut(BLOCK) {
            let (lo, hi) = chunk
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            let step = (hi - lo) / 15.0;
            if !(step.is_finite() && step > 0.0) {
                continue;
            }
            for x in chunk {
                *x += self.steps * step * rng.random_range(-1.0f32..=1.0);
            }
        }
        Ok(QTensor::quantize(
            &Tensor::from_vec(v, shape, &Device::Cpu)?,
            dtype,
        )?)
    }
}

/// The weights.
pub struct Llama {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    eps: f32,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("layers", &self.layers.len())
            .field("n_head", &self.n_head)
            .field("n_kv", &self.n_kv)
            .field("head_dim", &self.head_dim)
            .finish_non_exhaustive()
    }
}

/// One sequence's KV cache.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pos: usize,
}

impl KvCache {
    /// Tokens in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The cache of the first `len` tokens (a prefix-cache hit reuses the KV of a shared
    /// prompt prefix). The tensors are views of this cache's (no copy until a sequence appends
    /// to them).
    ///
    /// # Errors
    /// When `len` is past the cache's length, or on candle errors.
    pub fn truncated(&self, len: usize) -> Result<KvCache, BoxError> {
        if len > self.pos {
            return Err(format!("cannot keep {len} of {} cached tokens", self.pos).into());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) if len > 0 => Ok(Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?))),
                _ => Ok(None),
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(KvCache { layers, pos: len })
    }
}

impl Llama {
    /// Reads the weights of a llama-architecture GGUF (`ct` read from `reader`).
    ///
    /// # Errors
    /// On missing metadata or tensors.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
    ) -> Result<Self, BoxError> {
        Self::from_gguf_perturbed(ct, reader, None)
    }

    /// [`from_gguf`](Self::from_gguf), with the layer matrices perturbed by `perturb`.
    ///
    /// # Errors
    /// On missing metadata or tensors.
    pub fn from_gguf_perturbed<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        perturb: Option<Perturb>,
    ) -> Result<Self, BoxError> {
        let dev = Device::Cpu;
        let md = |k: &str| {
            ct.metadata
                .get(k)
                .ok_or_else(|| format!("GGUF metadata has no {k}"))
        };
        let n_head = md("llama.attention.head_count")?.to_u32()? as usize;
        let n_kv = md("llama.attention.head_count_kv")?.to_u32()? as usize;
        let n_layer = md("llama.block_count")?.to_u32()? as usize;
        let d = md("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = md("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = md("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let base = ct
            .metadata
            .get("llama.rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10000.0);
        if ct
            .metadata
            .get("llama.expert_count")
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(0)
            > 1
        {
            return Err("mixture-of-experts models are not supported by the batched engine".into());
        }
        let head_dim = d / n_head;
        let theta: Vec<f32> = (0..rope_dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / rope_dim as f32))
            .collect();
        let n_theta = theta.len();
        let theta = Tensor::new(theta.as_slice(), &dev)?;
        let idx = Tensor::arange(0, MAX_CONTEXT as u32, &dev)?
            .to_dtype(DType::F32)?
            .reshape((MAX_CONTEXT, 1))?;
        let freqs = idx.matmul(&theta.reshape((1, n_theta))?)?;
        let mut t = |name: &str| {
            ct.tensor(reader, name, &dev)
                .map_err(|e| format!("{name}: {e}"))
        };
        let embed_q = t("token_embd.weight")?;
        let embed = embed_q.dequantize(&dev)?;
        let norm = t("output_norm.weight")?.dequantize(&dev)?;
        let output = match t("output.weight") {
            Ok(w) => w,
            Err(_) => embed_q,
        };
        let mut layers = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            let mut salt = (l as u64) << 8;
            let mut q = |n: &str| -> Result<QMatMul, BoxError> {
                let w = t(&format!("blk.{l}.{n}.weight"))?;
                salt += 1;
                let w = match perturb {
                    Some(p) => p.apply(w, salt)?,
                    None => w,
                };
                Ok(QMatMul::from_qtensor(w)?)
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (gate, up, down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                gate,
                up,
                down,
                attn_norm: t(&format!("blk.{l}.attn_norm.weight"))?.dequantize(&dev)?,
                ffn_norm: t(&format!("blk.{l}.ffn_norm.weight"))?.dequantize(&dev)?,
            });
        }
        Ok(Self {
            embed,
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            n_head,
            n_kv,
            head_dim,
            eps,
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            neg_inf: Tensor::new(f32::NEG_INFINITY, &dev)?,
        })
    }

    /// A new, empty KV cache.
    pub fn cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.layers.len()],
            pos: 0,
        }
    }

    /// Feeds a whole prompt (or any tokens) to one sequence; returns the next-token logits.
    ///
    /// # Errors
    /// On candle errors, or past the context length.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, BoxError> {
        let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = self.forward(&x, &mut [cache])?;
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Feeds one token to each sequence, all in one pass; returns each one's next-token logits.
    ///
    /// # Errors
    /// On candle errors, or past the context length.
    pub fn decode(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Vec<f32>>, BoxError> {
        let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(1)?;
        Ok(self.forward(&x, caches)?.to_vec2::<f32>()?)
    }

    /// `tokens`: (B, T); B = 1 for prefill, T = 1 for batched decode.
    fn forward(&self, tokens: &Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor, BoxError> {
        let (b, t) = tokens.dims2()?;
        if b != caches.len() {
            return Err(format!("{b} rows for {} caches", caches.len()).into());
        }
        if let Some(c) = caches.iter().find(|c| c.pos + t > MAX_CONTEXT) {
            return Err(format!("context length {MAX_CONTEXT} exceeded ({} + {t})", c.pos).into());
        }
        let (nh, nkv, hd) = (self.n_head, self.n_kv, self.head_dim);
        let d = nh * hd;
        let mut x = self
            .embed
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let cos: Vec<Tensor> = caches
            .iter()
            .map(|c| self.cos.narrow(0, c.pos, t))
            .collect::<Result<_, _>>()?;
        let sin: Vec<Tensor> = caches
            .iter()
            .map(|c| self.sin.narrow(0, c.pos, t))
            .collect::<Result<_, _>>()?;
        let (cos, sin) = (Tensor::stack(&cos, 0)?, Tensor::stack(&sin, 0)?);
        let masks: Vec<Option<Tensor>> = caches
            .iter()
            .map(|c| {
                (t > 1)
                    .then(|| candle_transformers::utils::build_causal_mask(t, c.pos, &Device::Cpu))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            // (B, T, n * hd) -> (B, n, T, hd)
            let heads = |w: &QMatMul, n: usize| -> candle_core::Result<Tensor> {
                w.forward(&h)?
                    .reshape((b, t, n, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (
                heads(&layer.wq, nh)?,
                heads(&layer.wk, nkv)?,
                heads(&layer.wv, nkv)?,
            );
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let mut outs = Vec::with_capacity(b);
            for (i, cache) in caches.iter_mut().enumerate() {
                let (qi, mut ki, mut vi) =
                    (q.narrow(0, i, 1)?, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
                if let Some((kc, vc)) = &cache.layers[l] {
                    ki = Tensor::cat(&[kc, &ki], 2)?;
                    vi = Tensor::cat(&[vc, &vi], 2)?;
                }
                cache.layers[l] = Some((ki.clone(), vi.clone()));
                let kr = candle_transformers::utils::repeat_kv(ki, nh / nkv)?;
                let vr = candle_transformers::utils::repeat_kv(vi, nh / nkv)?;
                let mut att = (qi.matmul(&kr.t()?)? * scale)?;
                if let Some(mask) = &masks[i] {
                    let mask = mask.broadcast_as(att.shape())?;
                    att = mask.where_cond(&self.neg_inf.broadcast_as(att.shape())?, &att)?;
                }
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                outs.push(att.matmul(&vr.contiguous()?)?);
            }
            let y = Tensor::cat(&outs, 0)?.transpose(1, 2)?.reshape((b, t, d))?;
            x = (layer.wo.forward(&y)? + x)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let g = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
            let m = (g * layer.up.forward(&h)?)?;
            x = (layer.down.forward(&m)? + x)?;
        }
        for c in caches.iter_mut() {
            c.pos += t;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.eps)?;
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        Ok(self.output.forward(&last)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::quantized_llama::ModelWeights;
    use std::io::Cursor;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The perturbation is deterministic for a seed, changes the logits, and keeps each
    /// matrix's quantization format.
    #[test]
    fn perturbed_weights_are_seeded_and_keep_their_format() {
        let bytes = super::super::model::random_gguf(7).expect("gguf");
        let load = |p: Option<Perturb>| {
            let mut r = Cursor::new(bytes.clone());
            let ct = gguf_file::Content::read(&mut r).expect("content");
            Llama::from_gguf_perturbed(&ct, &mut r, p).expect("llama")
        };
        let logits = |m: &Llama| {
            let mut c = m.cache();
            m.prefill(&[1, 40, 41, 42], &mut c).expect("prefill")
        };
        let p = Perturb {
            seed: 5,
            steps: 1.0,
        };
        let (a, b1, b2) = (load(None), load(Some(p)), load(Some(p)));
        assert_eq!(logits(&b1), logits(&b2));
        assert!(max_diff(&logits(&a), &logits(&b1)) > 1e-3);
        let other = load(Some(Perturb { seed: 6, ..p }));
        assert_ne!(logits(&other), logits(&b1));
    }

    /// Same logits as candle-transformers' `quantized_llama` (the reference implementation of
    /// this architecture) for prefill and decode, and batched decode equals one-by-one decode.
    #[test]
    fn matches_quantized_llama_and_batching_is_exact() {
        let bytes = super::super::model::random_gguf(7).expect("gguf");
        let mut r = Cursor::new(bytes.clone());
        let ct = gguf_file::Content::read(&mut r).expect("content");
        let ours = Llama::from_gguf(&ct, &mut r).expect("llama");
        let mut r2 = Cursor::new(bytes);
        let ct2 = gguf_file::Content::read(&mut r2).expect("content");
        let reference = ModelWeights::from_gguf(ct2, &mut r2, &Device::Cpu).expect("reference");

        let prompts: [&[u32]; 2] = [&[1, 40, 41, 42, 43, 2], &[1, 50, 60, 70]];
        let mut caches = Vec::new();
        let mut refs = Vec::new();
        let mut last = Vec::new();
        for p in prompts {
            let mut c = ours.cache();
            let got = ours.prefill(p, &mut c).expect("prefill");
            let mut m = reference.clone();
            let x = Tensor::new(p, &Device::Cpu)
                .expect("t")
                .unsqueeze(0)
                .expect("u");
            let want: Vec<f32> = m
                .forward(&x, 0)
                .expect("fwd")
                .squeeze(0)
                .expect("s")
                .to_vec1()
                .expect("v");
            assert!(
                max_diff(&got, &want) < 1e-4,
                "prefill {}",
                max_diff(&got, &want)
            );
            caches.push(c);
            refs.push((m, p.len()));
            last.push(100u32);
        }
        for step in 0..3u32 {
            let tokens: Vec<u32> = last.iter().map(|t| t + step).collect();
            // One-by-one on copies of the caches.
            let mut single = Vec::new();
            for (i, c) in caches.iter().enumerate() {
                let mut c = c.clone();
                let x = Tensor::new(&[tokens[i]], &Device::Cpu)
                    .expect("t")
                    .unsqueeze(0)
                    .expect("u");
                let row = ours
                    .forward(&x, &mut [&mut c])
                    .expect("fwd")
                    .squeeze(0)
                    .expect("s")
                    .to_vec1::<f32>()
                    .expect("v");
                single.push(row);
            }
            let mut refs_cache: Vec<&mut KvCache> = caches.iter_mut().collect();
            let batched = ours.decode(&tokens, &mut refs_cache).expect("decode");
            for (i, (m, pos)) in refs.iter_mut().enumerate() {
                let x = Tensor::new(&[tokens[i]], &Device::Cpu)
                    .expect("t")
                    .unsqueeze(0)
                    .expect("u");
                let want: Vec<f32> = m
                    .forward(&x, *pos)
                    .expect("fwd")
                    .squeeze(0)
                    .expect("s")
                    .to_vec1()
                    .expect("v");
                *pos += 1;
                assert!(
                    max_diff(&batched[i], &want) < 1e-4,
                    "decode vs reference {}",
                    max_diff(&batched[i], &want)
                );
                assert!(
                    max_diff(&batched[i], &single[i]) < 1e-5,
                    "batched vs single {}",
                    max_diff(&batched[i], &single[i])
                );
            }
        }
        assert_eq!(caches[0].pos(), 9);
    }

    /// A prompt prefilled on a truncated cache of a longer prompt that shares its first tokens
    /// gives the same logits as prefilling it whole (what the demo's prefix cache relies on).
    #[test]
    fn a_truncated_cache_continues_like_a_fresh_prefill() {
        let bytes = super::super::model::random_gguf(7).expect("gguf");
        let mut r = Cursor::new(bytes);
        let ct = gguf_file::Content::read(&mut r).expect("content");
        let m = Llama::from_gguf(&ct, &mut r).expect("llama");
        let shared: &[u32] = &[1, 40, 41, 42, 43];
        let mut first = m.cache();
        m.prefill(&[shared, &[7, 8, 9]].concat(), &mut first)
            .expect("prefill");
        let mut reused = first.truncated(shared.len()).expect("truncate");
        assert_eq!(reused.pos(), 5);
        let got = m.prefill(&[50, 51], &mut reused).expect("rest");
        let mut fresh = m.cache();
        let want = m
            .prefill(&[shared, &[50, 51]].concat(), &mut fresh)
            .expect("whole");
        assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
        assert_eq!(reused.pos(), fresh.pos());
        assert!(first.truncated(9).is_err());
        assert_eq!(first.truncated(0).expect("empty").pos(), 0);
    }
}
