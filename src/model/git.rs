//! GitForCausalLM: image encoder, temporal embeddings for video checkpoints, visual projection,
//! and the text decoder, under the checkpoint's own tensor names. The model holds the `Policy` it
//! computes by and passes it down every forward.

use candle_core::{Device, Tensor, D};

use super::config::GitConfig;
use super::nn::{LayerNorm, Linear, Weights};
use super::policy::Policy;
use super::text::{ImagePrefix, TextCache, TextDecoder};
use super::vision::VisionTransformer;
use crate::{Error, Result};

pub struct Git {
    config: GitConfig,
    vision: VisionTransformer,
    /// One (vision hidden) vector per frame, for video checkpoints.
    temporal_embeddings: Vec<Tensor>,
    projection: Linear,
    projection_norm: LayerNorm,
    text: TextDecoder,
    device: Device,
    policy: Policy,
    /// `policy.for_text_decoder()`: what the text decoder computes by.
    text_policy: Policy,
}

impl Git {
    /// The model from `weights`, computing by `policy` (which also decides how the image
    /// encoder's weights are laid out: packed for the wide kernel where it takes them).
    pub fn new(weights: &Weights, config: &GitConfig, policy: Policy) -> Result<Self> {
        let vcfg = &config.vision_config;
        let git = weights.pp("git");
        let vision = VisionTransformer::new(&git.pp("image_encoder.vision_model"), vcfg, &policy)?;
        let temporal_embeddings = match config.num_image_with_embedding {
            None => Vec::new(),
            Some(frames) => (0..frames)
                .map(|i| {
                    // The published video checkpoints spell it `temperal`; transformers 5 renamed it.
                    let name = ["img_temporal_embedding", "img_temperal_embedding"]
                        .into_iter()
                        .map(|n| git.pp(n))
                        .find(|w| w.contains(&i.to_string()))
                        .unwrap_or_else(|| git.pp("img_temporal_embedding"));
                    name.tensor((1, 1, vcfg.hidden_size), &i.to_string())?
                        .reshape(vcfg.hidden_size)
                        .map_err(Error::from)
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let proj = git.pp("visual_projection.visual_projection");
        Ok(Self {
            vision,
            temporal_embeddings,
            projection: proj
                .pp("0")
                .linear(vcfg.hidden_size, config.hidden_size)?
                .prepacked(&policy, super::vision::tokens(vcfg))?,
            projection_norm: proj
                .pp("1")
                .layer_norm(config.hidden_size, vcfg.layer_norm_eps)?,
            text: TextDecoder::new(weights, config)?,
            device: weights.device(),
            config: config.clone(),
            text_policy: policy.for_text_decoder(),
            policy,
        })
    }

    /// The policy the model computes by, with its statistics.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Makes the model compute by `policy` from now on. Weights keep the layout the policy given
    /// at load chose; a policy that turns the wide kernel off gives the same results, more
    /// slowly (see `Policy::with_wide_kernel`).
    pub fn set_policy(&mut self, policy: Policy) {
        self.text_policy = policy.for_text_decoder();
        self.policy = policy;
    }

    pub fn config(&self) -> &GitConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// pixel values (frames, C, H, W) for one image or one clip → projected image features
    /// (1, image tokens, hidden), as `GitModel` concatenates them before the text.
    pub fn encode_image(&self, pixel_values: &Tensor) -> Result<Tensor> {
        // Pixels are prepared on the CPU; the model may live on a GPU.
        let pixel_values = &pixel_values.to_device(&self.device)?;
        let frames = pixel_values.dim(0)?;
        let want = self.config.frames();
        if frames != want {
            return Err(Error::invalid(if want == 1 {
                format!("this is an image checkpoint: give one image, not {frames} frames")
            } else {
                format!("this video checkpoint takes exactly {want} frames, got {frames}")
            }));
        }
        let policy = &self.policy;
        let mut feats = self.vision.forward(policy, pixel_values)?;
        if !self.temporal_embeddings.is_empty() {
            let temporal = Tensor::stack(&self.temporal_embeddings, 0)?.unsqueeze(1)?;
            feats = feats.broadcast_add(&temporal)?;
        }
        let (f, n, d) = feats.dims3()?;
        let feats = feats.reshape((1, f * n, d))?;
        self.projection_norm
            .forward(&self.projection.forward(policy, &feats)?)
    }

    /// The image's keys and values in every decoder layer, computed once per image.
    pub fn image_prefix(&self, image_features: &Tensor) -> Result<ImagePrefix> {
        self.text.image_prefix(&self.text_policy, image_features)
    }

    /// Feeds token ids (beams, new) and returns the logits of the last new position (beams, vocab).
    pub fn next_logits(
        &self,
        ids: &Tensor,
        prefix: &ImagePrefix,
        cache: &mut TextCache,
    ) -> Result<Tensor> {
        let hidden = self.text.forward(&self.text_policy, ids, prefix, cache)?;
        let l = hidden.dim(1)?;
        let last = hidden.narrow(1, l - 1, 1)?.squeeze(1)?;
        self.text.logits(&self.text_policy, &last)
    }

    /// Logits at every new position (beams, new, vocab): what `GitForCausalLM.forward` returns for
    /// the text positions.
    pub fn all_logits(
        &self,
        ids: &Tensor,
        prefix: &ImagePrefix,
        cache: &mut TextCache,
    ) -> Result<Tensor> {
        let hidden = self.text.forward(&self.text_policy, ids, prefix, cache)?;
        let logits = self.text.logits(&self.text_policy, &hidden)?;
        debug_assert_eq!(logits.dim(D::Minus1)?, self.config.vocab_size);
        Ok(logits)
    }

    pub fn max_positions(&self) -> usize {
        self.text.max_positions()
    }
}
