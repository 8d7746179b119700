//! The captioner: a loaded GIT model with its tokenizer and preprocessing, turning decoded images
//! into captions. Shared by the CLI and the wasm bindings; it never touches files or the network.

use image::RgbImage;

use crate::generate::{Decoding, GenerateOptions, Generator, Step};
use crate::image::{pixel_values, PreprocessorConfig};
use crate::model::{GenerationConfig, Git, GitConfig, ImagePrefix, Policy, Weights};
use crate::tokenizer::{CaptionTokenizer, TextStream};
use crate::{Error, Result};

/// The small files of a checkpoint, as bytes (from disk, the hub, a browser fetch or GGUF metadata).
#[derive(Debug, Clone, Default)]
pub struct ModelFiles {
    pub config: Vec<u8>,
    pub generation_config: Option<Vec<u8>>,
    pub preprocessor_config: Option<Vec<u8>>,
    pub tokenizer_json: Option<Vec<u8>>,
    pub tokenizer_config: Option<Vec<u8>>,
    pub vocab_txt: Option<Vec<u8>>,
}

impl ModelFiles {
    /// Names of the files besides the weights that a checkpoint folder may hold.
    pub const CONFIG: &'static str = "config.json";
    pub const GENERATION: &'static str = "generation_config.json";
    pub const PREPROCESSOR: &'static str = "preprocessor_config.json";
    pub const TOKENIZER: &'static str = "tokenizer.json";
    pub const TOKENIZER_CONFIG: &'static str = "tokenizer_config.json";
    pub const VOCAB: &'static str = "vocab.txt";
}

#[derive(Debug, Clone)]
pub struct CaptionOptions {
    pub max_new_tokens: usize,
    pub decoding: Decoding,
    /// Text after [CLS] that the caption continues (conditional captioning, or a VQA question).
    pub prompt: Option<String>,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            decoding: Decoding::Greedy,
            prompt: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// The generated text only (not the prompt), decoded as transformers' `batch_decode` does.
    pub text: String,
    /// The whole sequence as transformers' `generate` returns it: [CLS], prompt, generated ids.
    pub token_ids: Vec<u32>,
    /// How many of `token_ids` are [CLS] and the prompt.
    pub prefix_len: usize,
}

impl Caption {
    /// The ids the model generated (after [CLS] and the prompt).
    pub fn generated_ids(&self) -> &[u32] {
        &self.token_ids[self.prefix_len.min(self.token_ids.len())..]
    }
}

/// The stages of `Captioner::encode`, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeStage {
    /// Decoded frames resized, cropped and normalised into pixel values.
    Preprocessed,
    /// The vision tower and projection: transformers' `image_encoder` + `visual_projection`.
    ImageEncoded,
    /// The image rows' keys and values in every decoder layer.
    PrefixComputed,
}

pub struct Captioner {
    model: Git,
    tokenizer: CaptionTokenizer,
    preprocess: PreprocessorConfig,
    bos: u32,
    eos: Vec<u32>,
}

impl Captioner {
    /// The captioner of a checkpoint's files and weights, its model computing by `policy`
    /// (`Policy::default()`: the fastest choices for this build).
    pub fn new(files: &ModelFiles, weights: &Weights, policy: Policy) -> Result<Self> {
        let config = GitConfig::from_json(&files.config)?;
        let generation = match &files.generation_config {
            Some(b) => GenerationConfig::from_json(b)?,
            None => GenerationConfig::default(),
        };
        let tokenizer = match (&files.tokenizer_json, &files.vocab_txt) {
            (Some(json), _) => CaptionTokenizer::from_tokenizer_json(json)?,
            (None, Some(vocab)) => CaptionTokenizer::from_vocab_txt(vocab)?,
            (None, None) => {
                return Err(Error::model(
                    "the checkpoint has neither tokenizer.json nor vocab.txt",
                ))
            }
        };
        let size = config.vision_config.image_size as u32;
        let preprocess = match &files.preprocessor_config {
            Some(b) => PreprocessorConfig::from_json(b)?,
            None => PreprocessorConfig::clip(size),
        };
        // The vision tower accepts one size only; the preprocessor must produce it.
        let preprocess = if preprocess.output_size() == (size as usize, size as usize) {
            preprocess
        } else {
            preprocess.with_image_size(size)
        };
        let model = Git::new(weights, &config, policy)?;
        Ok(Self {
            bos: generation.bos_token_id.unwrap_or(config.bos_token_id),
            eos: generation
                .eos_token_id
                .as_ref()
                .unwrap_or(&config.eos_token_id)
                .ids(),
            model,
            tokenizer,
            preprocess,
        })
    }

    pub fn config(&self) -> &GitConfig {
        self.model.config()
    }

    pub fn model(&self) -> &Git {
        &self.model
    }

    /// The policy the model computes by, with its statistics.
    pub fn policy(&self) -> &Policy {
        self.model.policy()
    }

    /// Makes the model compute by `policy` from now on (see `Git::set_policy`).
    pub fn set_policy(&mut self, policy: Policy) {
        self.model.set_policy(policy);
    }

    pub fn tokenizer(&self) -> &CaptionTokenizer {
        &self.tokenizer
    }

    pub fn preprocessor(&self) -> &PreprocessorConfig {
        &self.preprocess
    }

    /// Frames per input: 1, or the clip length of a video checkpoint.
    pub fn frames(&self) -> usize {
        self.model.config().frames()
    }

    /// Runs the image encoder and the image half of the decoder: everything that depends on the
    /// image alone. `frames` is one image, or the frames of one clip for video checkpoints.
    pub fn encode(&self, frames: &[RgbImage]) -> Result<ImagePrefix> {
        self.encode_observed(frames, &mut |_| {})
    }

    /// As `encode`, calling `on_stage` as each stage ends (the CLI times them; the model code
    /// keeps no clock).
    pub fn encode_observed(
        &self,
        frames: &[RgbImage],
        on_stage: &mut dyn FnMut(EncodeStage),
    ) -> Result<ImagePrefix> {
        if frames.is_empty() {
            return Err(Error::invalid("no image given"));
        }
        let pixels = pixel_values(frames, &self.preprocess, self.model.device())?;
        on_stage(EncodeStage::Preprocessed);
        self.encode_pixels_observed(&pixels, on_stage)
    }

    /// As `encode`, from preprocessed pixel values (frames, C, H, W).
    pub fn encode_pixels(&self, pixels: &candle_core::Tensor) -> Result<ImagePrefix> {
        self.encode_pixels_observed(pixels, &mut |_| {})
    }

    fn encode_pixels_observed(
        &self,
        pixels: &candle_core::Tensor,
        on_stage: &mut dyn FnMut(EncodeStage),
    ) -> Result<ImagePrefix> {
        let features = self.model.encode_image(pixels)?;
        on_stage(EncodeStage::ImageEncoded);
        let prefix = self.model.image_prefix(&features)?;
        on_stage(EncodeStage::PrefixComputed);
        Ok(prefix)
    }

    /// Starts captioning an encoded image; drive the job with `CaptionJob::step`.
    pub fn start(&self, prefix: ImagePrefix, opts: &CaptionOptions) -> Result<CaptionJob> {
        let prompt = match &opts.prompt {
            Some(p) if !p.trim().is_empty() => self.tokenizer.encode_prompt(p)?,
            _ => Vec::new(),
        };
        let gen_opts = GenerateOptions {
            max_new_tokens: opts.max_new_tokens,
            decoding: opts.decoding.clone(),
            bos_token_id: self.bos,
            eos_token_ids: self.eos.clone(),
        };
        Ok(CaptionJob {
            generator: Generator::new(&self.model, &prompt, &gen_opts)?,
            prefix,
            stream: TextStream::new(),
            skip: 1 + prompt.len(),
        })
    }

    /// Generates a caption for an encoded image. `on_text` receives text fragments as soon as
    /// they are final (their concatenation is `Caption::text`); returning `false` cancels.
    pub fn caption_encoded(
        &self,
        prefix: &ImagePrefix,
        opts: &CaptionOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Caption> {
        let mut job = self.start(prefix.clone(), opts)?;
        loop {
            match job.step(self)? {
                JobEvent::Text(t) if t.is_empty() => {}
                JobEvent::Text(t) => {
                    if !on_text(&t) {
                        return Err(Error::Cancelled);
                    }
                }
                JobEvent::Done { rest, caption } => {
                    if !rest.is_empty() && !on_text(&rest) {
                        return Err(Error::Cancelled);
                    }
                    return Ok(caption);
                }
            }
        }
    }

    /// Encodes and captions in one call.
    pub fn caption(
        &self,
        frames: &[RgbImage],
        opts: &CaptionOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Caption> {
        let prefix = self.encode(frames)?;
        self.caption_encoded(&prefix, opts, on_text)
    }
}

/// What one step of a caption job produced.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// Text that became final with this step (often empty: a held-back word, a beam step).
    Text(String),
    /// The caption is complete; `rest` is the text not yet reported.
    Done { rest: String, caption: Caption },
}

/// One caption in progress: one `step` per token, so a front end can stop between tokens
/// or yield to its event loop.
pub struct CaptionJob {
    generator: Generator,
    prefix: ImagePrefix,
    stream: TextStream,
    skip: usize,
}

impl CaptionJob {
    pub fn step(&mut self, captioner: &Captioner) -> Result<JobEvent> {
        let tokenizer = &captioner.tokenizer;
        let piece = match self.generator.step(&captioner.model, &self.prefix)? {
            Some(Step::Token(id)) => self.stream.push(tokenizer, id)?,
            Some(Step::Final(ids)) => self
                .stream
                .finish_with(tokenizer, &ids[self.skip.min(ids.len())..])?,
            Some(Step::Pending) | None => None,
        };
        let Some(token_ids) = self.generator.output().map(<[u32]>::to_vec) else {
            return Ok(JobEvent::Text(piece.unwrap_or_default()));
        };
        let mut rest = piece.unwrap_or_default();
        rest.push_str(&self.stream.finish(tokenizer)?.unwrap_or_default());
        let text = tokenizer.decode(&token_ids[self.skip.min(token_ids.len())..])?;
        if self.stream.text() != text {
            return Err(Error::model(format!(
                "streamed text {:?} does not match the decoded caption {text:?}; please report this",
                self.stream.text()
            )));
        }
        Ok(JobEvent::Done {
            rest,
            caption: Caption {
                text,
                token_ids,
                prefix_len: self.skip,
            },
        })
    }
}
