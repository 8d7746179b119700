//! The image encoder: CLIP's ViT as GIT uses it (`git.image_encoder.vision_model`), with the
//! post-LayerNorm applied to every token, not only the class token.

use candle_core::{Tensor, D};

use super::config::VisionConfig;
use super::nn::{attention, LayerNorm, Linear, Weights};
use super::policy::Policy;
use crate::Result;

/// The rows of every product in the encoder: one per patch and the class token (per frame).
pub fn tokens(cfg: &VisionConfig) -> usize {
    (cfg.image_size / cfg.patch_size.max(1)).pow(2) + 1
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `policy`: the one the model is loaded with, which decides how weights are laid out.
    fn new(w: &Weights, cfg: &VisionConfig, policy: &Policy) -> Result<Self> {
        let d = cfg.hidden_size;
        let projection = |name: &str| -> Result<Linear> {
            w.pp(name).linear(d, d)?.prepacked(policy, tokens(cfg))
        };
        Ok(Self {
            q_proj: projection("q_proj")?,
            k_proj: projection("k_proj")?,
            v_proj: projection("v_proj")?,
            out_proj: projection("out_proj")?,
            heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    /// `residual + attention(xs)`.
    fn forward_add(&self, policy: &Policy, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q_proj.forward(policy, xs)?)?;
        let k = split(self.k_proj.forward(policy, xs)?)?;
        let v = split(self.v_proj.forward(policy, xs)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let ctx = attention(policy, &q, &k, &v, scale)?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        self.out_proj.forward_add(policy, &ctx, residual)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: super::config::Activation,
}

impl EncoderLayer {
    fn new(w: &Weights, cfg: &VisionConfig, policy: &Policy) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            layer_norm1: w.pp("layer_norm1").layer_norm(d, cfg.layer_norm_eps)?,
            self_attn: Attention::new(&w.pp("self_attn"), cfg, policy)?,
            layer_norm2: w.pp("layer_norm2").layer_norm(d, cfg.layer_norm_eps)?,
            fc1: w
                .pp("mlp.fc1")
                .linear(d, cfg.intermediate_size)?
                .prepacked(policy, tokens(cfg))?,
            fc2: w
                .pp("mlp.fc2")
                .linear(cfg.intermediate_size, d)?
                .prepacked(policy, tokens(cfg))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, policy: &Policy, xs: &Tensor) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward_add(policy, &self.layer_norm1.forward(xs)?, xs)?;
        let m = self
            .fc1
            .forward_then(policy, &self.layer_norm2.forward(&h)?, self.act)?;
        self.fc2.forward_add(policy, &m, &h)
    }
}

pub struct VisionTransformer {
    /// The patch convolution (stride = kernel = patch) as a layer over flattened patches.
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    cfg: VisionConfig,
}

impl VisionTransformer {
    /// `w` points at `git.image_encoder.vision_model`; `policy` decides how weights are laid out
    /// (packed for the wide kernel or not).
    pub fn new(w: &Weights, cfg: &VisionConfig, policy: &Policy) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let c = cfg.num_channels;
        let emb = w.pp("embeddings");
        let patch_weight = emb
            .pp("patch_embedding")
            .tensor((d, c, p, p), "weight")?
            .reshape((d, c * p * p))?;
        // Through the model's own kernel like the encoder's layers (candle's product took it on
        // one thread natively: 2% of git-large's encoder on 2 threads).
        let patches = tokens(cfg) - 1;
        let patch_embedding = Linear::from_weight(patch_weight)?.prepacked(policy, patches)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(&w.pp(format!("encoder.layers.{i}")), cfg, policy))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embedding,
            class_embedding: emb.tensor(d, "class_embedding")?,
            position_embedding: emb
                .pp("position_embedding")
                .tensor((cfg.tokens_per_image(), d), "weight")?,
            pre_layrnorm: w.pp("pre_layrnorm").layer_norm(d, cfg.layer_norm_eps)?,
            layers,
            post_layernorm: w.pp("post_layernorm").layer_norm(d, cfg.layer_norm_eps)?,
            cfg: cfg.clone(),
        })
    }

    /// pixel_values (B, C, H, W) → last hidden state (B, tokens, hidden).
    pub fn forward(&self, policy: &Policy, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        let size = self.cfg.image_size;
        if h != size || w != size || c != self.cfg.num_channels {
            return Err(crate::Error::invalid(format!(
                "pixel values are {c}×{h}×{w}, the model expects {}×{size}×{size}",
                self.cfg.num_channels
            )));
        }
        let (gh, gw) = (h / p, w / p);
        let patches = pixel_values
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let d = self.cfg.hidden_size;
        let patch_embeds =
            self.patch_embedding
                .forward(policy, &patches)?
                .reshape((b, gh * gw, d))?;
        let class = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let xs = Tensor::cat(&[&class, &patch_embeds], 1)?;
        let xs = xs.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let mut xs = self.pre_layrnorm.forward(&xs)?;
        for layer in &self.layers {
            xs = layer.forward(policy, &xs)?;
        }
        let out = self.post_layernorm.forward(&xs)?;
        debug_assert_eq!(out.dim(D::Minus1)?, d);
        Ok(out)
    }
}
