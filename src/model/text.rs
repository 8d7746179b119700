//! The text side of GIT: BERT-style embeddings, a post-LayerNorm transformer decoder over
//! [image tokens, text tokens] with GIT's mask, and the LM head.
//!
//! Image rows never attend to text, so their keys and values in every layer depend on the image
//! alone: `ImagePrefix` computes them once per image and every generated token (and every beam)
//! reuses them. Text keys and values accumulate in a `TextCache`, so a new token costs one position.

use candle_core::{Device, Tensor, D};

use super::config::{Activation, GitConfig};
use super::nn::{attention, softmax_last, Embedding, LayerNorm, Linear, Weights};
use super::policy::Policy;
use crate::Result;

/// Keys and values of one layer, shaped (batch, heads, positions, head_dim).
#[derive(Clone)]
struct KeyValue {
    k: Tensor,
    v: Tensor,
}

/// Per-layer keys and values of the image tokens; batch 1, shared by every beam.
#[derive(Clone)]
pub struct ImagePrefix {
    layers: Vec<KeyValue>,
    tokens: usize,
}

impl ImagePrefix {
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// Per-layer keys and values of the text generated so far, one row per sequence (beam).
#[derive(Clone, Default)]
pub struct TextCache {
    layers: Vec<Option<KeyValue>>,
    len: usize,
}

impl TextCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Text positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep the rows named by `rows` (a beam reorder; duplicates allowed).
    pub fn select_rows(&mut self, rows: &[u32], device: &Device) -> Result<()> {
        let idx = Tensor::new(rows, device)?;
        for kv in self.layers.iter_mut().flatten() {
            kv.k = kv.k.index_select(&idx, 0)?;
            kv.v = kv.v.index_select(&idx, 0)?;
        }
        Ok(())
    }
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        Ok(xs
            .reshape((b, n, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Queries, and keys and values, split into heads.
    fn project(&self, policy: &Policy, xs: &Tensor) -> Result<(Tensor, KeyValue)> {
        let q = self.split_heads(&self.query.forward(policy, xs)?)?;
        Ok((q, self.keys_values(policy, xs)?))
    }

    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// Keys and values alone: of the last layer's image rows all the text needs.
    fn keys_values(&self, policy: &Policy, xs: &Tensor) -> Result<KeyValue> {
        Ok(KeyValue {
            k: self.split_heads(&self.key.forward(policy, xs)?)?,
            v: self.split_heads(&self.value.forward(policy, xs)?)?,
        })
    }

    /// Image tokens attend to all image tokens and nothing else.
    fn forward_image(&self, policy: &Policy, xs: &Tensor) -> Result<(Tensor, KeyValue)> {
        let (b, n, d) = xs.dims3()?;
        let (q, kv) = self.project(policy, xs)?;
        let ctx = attention(policy, &q, &kv.k, &kv.v, self.scale())?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, n, d))?;
        Ok((ctx, kv))
    }

    /// Text tokens attend to every image token and to text up to and including themselves.
    /// `xs` is (beams, new, hidden); the image prefix has batch 1 and is shared across beams
    /// by folding the beams into the query rows rather than copying the prefix.
    fn forward_text(
        &self,
        policy: &Policy,
        xs: &Tensor,
        image: &KeyValue,
        past: Option<&KeyValue>,
    ) -> Result<(Tensor, KeyValue)> {
        let (b, l, d) = xs.dims3()?;
        let h = self.heads;
        let (q, KeyValue { k: k_new, v: v_new }) = self.project(policy, xs)?;
        let (k_txt, v_txt) = match past {
            Some(p) => (
                Tensor::cat(&[&p.k, &k_new], 2)?,
                Tensor::cat(&[&p.v, &v_new], 2)?,
            ),
            None => (k_new, v_new),
        };
        let t = k_txt.dim(2)?;
        let n_img = image.k.dim(2)?;

        // (b, h, l, hd) → (1, h, b·l, hd) so one product against the (1, h, n_img, hd) prefix serves all beams.
        let q_folded = q
            .transpose(0, 1)?
            .contiguous()?
            .reshape((1, h, b * l, self.head_dim))?;
        let s_img = q_folded
            .matmul(&image.k.t()?)?
            .reshape((h, b, l, n_img))?
            .transpose(0, 1)?;
        let s_txt = q.matmul(&k_txt.t()?)?;
        let mut scores = (Tensor::cat(&[&s_img.contiguous()?, &s_txt], D::Minus1)? * self.scale())?;
        if l > 1 {
            scores = scores.broadcast_add(&causal_mask(l, t, n_img, xs.device())?)?;
        }
        let probs = softmax_last(policy, &scores)?;
        let p_img = probs
            .narrow(D::Minus1, 0, n_img)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((1, h, b * l, n_img))?;
        let p_txt = probs.narrow(D::Minus1, n_img, t)?.contiguous()?;
        let c_img = p_img
            .matmul(&image.v)?
            .reshape((h, b, l, self.head_dim))?
            .transpose(0, 1)?;
        let ctx = (c_img + p_txt.matmul(&v_txt)?)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, l, d))?;
        Ok((ctx, KeyValue { k: k_txt, v: v_txt }))
    }
}

/// Additive mask over [image | text] columns for `l` new text rows at the end of `t` text positions.
fn causal_mask(l: usize, t: usize, n_img: usize, device: &Device) -> Result<Tensor> {
    let past = t - l;
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| {
            (0..n_img + t).map(move |j| {
                if j < n_img || j - n_img <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (l, n_img + t), device)?)
}

struct DecoderLayer {
    attention: SelfAttention,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    act: Activation,
    output: Linear,
    output_norm: LayerNorm,
}

impl DecoderLayer {
    fn new(w: &Weights, cfg: &GitConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = w.pp("attention");
        let s = a.pp("self");
        Ok(Self {
            attention: SelfAttention {
                query: s.pp("query").linear(d, d)?,
                key: s.pp("key").linear(d, d)?,
                value: s.pp("value").linear(d, d)?,
                heads: cfg.num_attention_heads,
                head_dim: cfg.head_dim(),
            },
            attention_output: a.pp("output.dense").linear(d, d)?,
            attention_norm: a.pp("output.LayerNorm").layer_norm(d, cfg.layer_norm_eps)?,
            intermediate: w
                .pp("intermediate.dense")
                .linear(d, cfg.intermediate_size)?,
            act: cfg.hidden_act,
            output: w.pp("output.dense").linear(cfg.intermediate_size, d)?,
            output_norm: w.pp("output.LayerNorm").layer_norm(d, cfg.layer_norm_eps)?,
        })
    }

    fn feed_forward(&self, policy: &Policy, xs: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let attn = self
            .attention_norm
            .forward(&self.attention_output.forward_add(policy, ctx, xs)?)?;
        let inter = self.intermediate.forward_then(policy, &attn, self.act)?;
        self.output_norm
            .forward(&self.output.forward_add(policy, &inter, &attn)?)
    }
}

pub struct TextDecoder {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<DecoderLayer>,
    lm_head: Linear,
    max_positions: usize,
}

impl TextDecoder {
    /// `root` is the checkpoint root (holding `git.*` and `output.*`).
    pub fn new(root: &Weights, cfg: &GitConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = root.pp("git.embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&root.pp(format!("git.encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let output = root.pp("output");
        // transformers ties `output.weight` to the word embeddings when the config says so, whatever
        // the file holds; a quantized file may carry its own (quantized) copy for the LM head.
        let lm_head =
            if cfg.tie_word_embeddings && !(root.is_quantized() && output.contains("weight")) {
                emb.pp("word_embeddings").embedding_as_linear(
                    cfg.vocab_size,
                    d,
                    output.tensor(cfg.vocab_size, "bias")?,
                )?
            } else {
                output.linear(d, cfg.vocab_size)?
            };
        Ok(Self {
            word_embeddings: emb.pp("word_embeddings").embedding(cfg.vocab_size, d)?,
            position_embeddings: emb
                .pp("position_embeddings")
                .embedding(cfg.max_position_embeddings, d)?,
            embeddings_norm: emb.pp("LayerNorm").layer_norm(d, cfg.layer_norm_eps)?,
            layers,
            lm_head,
            max_positions: cfg.max_position_embeddings,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Runs the image tokens (1, n, hidden) through every layer, keeping each layer's keys and values.
    pub fn image_prefix(&self, policy: &Policy, image_features: &Tensor) -> Result<ImagePrefix> {
        let tokens = image_features.dim(1)?;
        let mut xs = image_features.clone();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == self.layers.len() {
                // No later layer reads the image rows' outputs, and text never reaches back into
                // them: of the last layer only the keys and values are needed (a sixth less work
                // for git-large's image prefix).
                layers.push(layer.attention.keys_values(policy, &xs)?);
                break;
            }
            let (ctx, kv) = layer.attention.forward_image(policy, &xs)?;
            xs = layer.feed_forward(policy, &xs, &ctx)?;
            layers.push(kv);
        }
        Ok(ImagePrefix { layers, tokens })
    }

    /// Feeds `ids` (beams, new) after the cached text; returns the final hidden states (beams, new, hidden).
    pub fn forward(
        &self,
        policy: &Policy,
        ids: &Tensor,
        prefix: &ImagePrefix,
        cache: &mut TextCache,
    ) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let start = cache.len;
        if start + l > self.max_positions {
            return Err(crate::Error::invalid(format!(
                "text of {} tokens exceeds the model's {} positions",
                start + l,
                self.max_positions
            )));
        }
        let words = self.word_embeddings.forward(ids)?;
        let positions = self.position_embeddings.rows(start, l)?;
        let mut xs = self
            .embeddings_norm
            .forward(&words.broadcast_add(&positions.unsqueeze(0)?)?)?;
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (ctx, kv) = layer.attention.forward_text(
                policy,
                &xs,
                &prefix.layers[i],
                cache.layers[i].as_ref(),
            )?;
            xs = layer.feed_forward(policy, &xs, &ctx)?;
            cache.layers[i] = Some(kv);
        }
        cache.len = start + l;
        debug_assert_eq!(xs.dim(0)?, b);
        Ok(xs)
    }

    /// Vocabulary logits for hidden states (..., hidden).
    pub fn logits(&self, policy: &Policy, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(policy, hidden)
    }
}
