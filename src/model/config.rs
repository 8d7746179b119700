//! The checkpoint's own configuration files, read as transformers reads them: `config.json`
//! (GitConfig with its nested GitVisionConfig) and `generation_config.json`.

use candle_core::Tensor;
use serde::Deserialize;

use super::policy::Policy;
use crate::{Error, Result};

/// The activations GIT checkpoints name in their configs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact (erf) GELU, as transformers' "gelu".
    #[serde(rename = "gelu")]
    Gelu,
    /// CLIP's x * sigmoid(1.702 x).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", rename = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// The activation of `xs`, computed as `policy` says.
    pub fn apply(self, policy: &Policy, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::QuickGelu => super::elementwise::quick_gelu(policy, xs),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
        }
    }

    /// The activation as an in-place function on f32 values giving exactly what `apply` gives
    /// under `policy`, for the matrix kernel to apply to each block of columns it finishes; `None`
    /// where there is none.
    pub fn in_place(self, policy: &Policy) -> Option<fn(&mut [f32])> {
        match self {
            // candle's gelu_erf for f32, written out.
            Activation::Gelu => Some(|xs| {
                for x in xs {
                    let v = *x;
                    *x = (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.)
                        * 0.5
                        * v;
                }
            }),
            Activation::QuickGelu if policy.own_quick_gelu() => {
                Some(super::elementwise::quick_gelu_in_place)
            }
            Activation::Relu => Some(|xs| xs.iter_mut().for_each(|x| *x = x.max(0.0))),
            Activation::QuickGelu | Activation::GeluTanh => None,
        }
    }
}

fn default_vision_hidden() -> usize {
    768
}
fn default_vision_intermediate() -> usize {
    3072
}
fn default_12() -> usize {
    12
}
fn default_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch() -> usize {
    16
}
fn default_quick_gelu() -> Activation {
    Activation::QuickGelu
}
fn default_vision_eps() -> f64 {
    1e-5
}

/// GitVisionConfig: the CLIP ViT image encoder.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_12")]
    pub num_attention_heads: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: Activation,
    #[serde(default = "default_vision_eps")]
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all vision fields have defaults")
    }
}

impl VisionConfig {
    /// Tokens per frame: one per patch plus the class token.
    pub fn tokens_per_image(&self) -> usize {
        let side = self.image_size / self.patch_size;
        side * side + 1
    }
}

fn default_vocab() -> usize {
    30522
}
fn default_hidden() -> usize {
    768
}
fn default_6() -> usize {
    6
}
fn default_gelu() -> Activation {
    Activation::Gelu
}
fn default_max_pos() -> usize {
    1024
}
fn default_text_eps() -> f64 {
    1e-12
}
fn default_bos() -> u32 {
    101
}
fn default_eos() -> EosTokens {
    EosTokens::One(102)
}

/// `eos_token_id` may be one id or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EosTokens {
    One(u32),
    Many(Vec<u32>),
}

impl EosTokens {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            EosTokens::One(id) => vec![*id],
            EosTokens::Many(ids) => ids.clone(),
        }
    }
}

// Upper bounds of `GitConfig::validate`: generous, but small enough that no product of them
// overflows a 32-bit `usize` (wasm) by accident of the config alone.
const MAX_VOCAB: usize = 1 << 20;
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_POSITIONS: usize = 1 << 16;
/// As the preprocessor's largest edge (`image::MAX_CONFIG_EDGE`).
const MAX_IMAGE_SIZE: usize = 16384;
const MAX_FRAMES: usize = 1024;

fn is_epsilon(eps: f64) -> bool {
    eps.is_finite() && eps > 0.0 && eps < 1.0
}

/// GitConfig: the BERT-style text decoder and everything that ties the two halves together.
#[derive(Debug, Clone, Deserialize)]
pub struct GitConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub vision_config: VisionConfig,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_6")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_12")]
    pub num_attention_heads: usize,
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_gelu")]
    pub hidden_act: Activation,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_text_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: EosTokens,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Set for video checkpoints: the number of frames, each with its own temporal embedding.
    #[serde(default)]
    pub num_image_with_embedding: Option<usize>,
}

impl GitConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let cfg: GitConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::model(format!("config.json is not a valid GIT config: {e}")))?;
        match cfg.model_type.as_deref() {
            Some("git") => {}
            Some(other) => {
                return Err(Error::model(format!(
                    "config.json describes a `{other}` model, not GIT (model_type \"git\"); \
                     gitcap only runs GIT checkpoints such as microsoft/git-large-r-coco"
                )))
            }
            None => {
                return Err(Error::model(
                    "config.json has no model_type; expected \"git\" (is this a GIT checkpoint?)",
                ))
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects what no GIT checkpoint has and what would make the model's size arithmetic
    /// overflow or divide by zero, naming the field. The bounds are far above every published
    /// GIT (git-large: hidden 1024, 24 vision layers, 30522 tokens).
    fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let sizes = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
            ("vision_config.hidden_size", v.hidden_size, MAX_WIDTH),
            (
                "vision_config.intermediate_size",
                v.intermediate_size,
                MAX_WIDTH,
            ),
            (
                "vision_config.num_hidden_layers",
                v.num_hidden_layers,
                MAX_LAYERS,
            ),
            (
                "vision_config.num_attention_heads",
                v.num_attention_heads,
                MAX_WIDTH,
            ),
            ("vision_config.image_size", v.image_size, MAX_IMAGE_SIZE),
            ("vision_config.patch_size", v.patch_size, MAX_IMAGE_SIZE),
            ("num_image_with_embedding", self.frames(), MAX_FRAMES),
        ];
        for (field, value, max) in sizes {
            if value == 0 || value > max {
                return Err(Error::model(format!(
                    "config.json: `{field}` is {value}; it must be from 1 to {max}"
                )));
            }
        }
        // In u64: on wasm32 the product of two bounded fields can still overflow `usize`.
        let side = (v.image_size / v.patch_size) as u64;
        let image_tokens = (side * side + 1) * self.frames() as u64;
        if image_tokens > MAX_POSITIONS as u64 {
            return Err(Error::model(format!(
                "config.json: `vision_config.image_size` / `patch_size` ({} / {}) gives {image_tokens} \
                 image tokens; at most {MAX_POSITIONS} are supported",
                v.image_size, v.patch_size
            )));
        }
        let checks = [
            (
                self.hidden_size.is_multiple_of(self.num_attention_heads),
                "`hidden_size` must be a multiple of `num_attention_heads`",
            ),
            (
                v.hidden_size.is_multiple_of(v.num_attention_heads),
                "`vision_config.hidden_size` must be a multiple of its `num_attention_heads`",
            ),
            (
                v.image_size.is_multiple_of(v.patch_size),
                "`vision_config.image_size` must be a multiple of its `patch_size`",
            ),
            (
                // The image encoder's input is RGB, as every image is decoded.
                v.num_channels == 3,
                "`vision_config.num_channels` must be 3 (RGB)",
            ),
            (
                is_epsilon(self.layer_norm_eps) && is_epsilon(v.layer_norm_eps),
                "`layer_norm_eps` (and `vision_config.layer_norm_eps`) must be a small positive number",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(Error::model(format!("config.json: {msg}")));
            }
        }
        let ids = [("bos_token_id", self.bos_token_id)]
            .into_iter()
            .chain(
                self.eos_token_id
                    .ids()
                    .into_iter()
                    .map(|id| ("eos_token_id", id)),
            )
            .chain(self.pad_token_id.map(|id| ("pad_token_id", id)));
        for (field, id) in ids {
            if id as usize >= self.vocab_size {
                return Err(Error::model(format!(
                    "config.json: `{field}` {id} is outside the vocabulary of {} tokens",
                    self.vocab_size
                )));
            }
        }
        if matches!(&self.eos_token_id, EosTokens::Many(ids) if ids.is_empty()) {
            return Err(Error::model("config.json: `eos_token_id` is an empty list"));
        }
        Ok(())
    }

    /// Frames per input: 1 for image checkpoints, `num_image_with_embedding` for video ones.
    pub fn frames(&self) -> usize {
        self.num_image_with_embedding.unwrap_or(1)
    }

    /// Image tokens the text attends to: all frames' tokens.
    pub fn image_tokens(&self) -> usize {
        self.vision_config.tokens_per_image() * self.frames()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The parts of `generation_config.json` gitcap honours; absent fields fall back to the model config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<EosTokens>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub num_beams: Option<usize>,
    #[serde(default)]
    pub length_penalty: Option<f64>,
}

impl GenerationConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::model(format!("generation_config.json is not valid: {e}")))
    }
}
