//! Browser bindings (wasm-bindgen). The JS contract, used by the web worker:
//!
//! ```js
//! import init, { ModelLoader, Sha256, buildInfo } from './pkg/gitcap.js';
//! await init();
//! const loader = new ModelLoader();
//! loader.addFile(name, bytes);                 // config.json, tokenizer.json, vocab.txt,
//!                                              // preprocessor_config.json, generation_config.json
//! loader.beginWeights("safetensors" | "gguf", totalBytes);
//! loader.pushWeights(chunk);                   // any size; safetensors are parsed as they arrive
//! const model = loader.finish();               // consumes the loader
//! model.frames; model.info();
//! const job = model.startCaption(imageBytes, options);         // or startCaptionRgba(w, h, rgba, options)
//! const ev = job.step();                       // {text, done, caption?: {text, token_ids}}
//! // or startCaptionFrames([bytes, ...], options) for video checkpoints
//! job.free(); model.free();
//! const h = new Sha256(); h.update(chunk); h.hex();
//! // A safetensors download kept as a q8_0 GGUF file (src/quantize_stream.rs; www/store_q8.js):
//! const q = new Quantizer("q8_0", name);       // or "q4k" | "f16"; name: the GGUF's general.name
//! q.addFile(name, bytes);                      // the small files, as for ModelLoader, before push
//! const gguf = q.push(chunk);                  // Uint8Array: GGUF bytes final with this chunk
//! q.sourceBytes; q.outputBytes;                // consumed / produced so far
//! q.sourceTotal; q.outputTotal;                // file sizes, once the source header is in
//! const state = q.state();                     // Uint8Array; Quantizer.resume(state) continues
//! q.finish();                                  // {fileBytes, f32Bytes, tensors, fallbacks, skipped}
//! buildInfo();                                 // {simd, threaded, threads, splits, version,
//!                                              //  relaxed, int8, int8Products,
//!                                              //  int8PairedProducts}
//! setMinSplitMacs(n);                          // threaded: split products from n multiply-adds
//! setMinSplitRows(n);                          // threaded: split products from n rows
//! setKernelMinRows(n);                         // own SIMD kernel for products of >= n rows
//! setInt8MinRows(n);                           // integer kernel for q8_0 products of >= n rows
//! ```
//!
//! The threaded build (`--features threads`, see build.sh) also exports `startThreads(n)`: await it
//! once after `init()` and before loading a model; models loaded afterwards split their large
//! products over the `n` threads (src/model/parallel.rs).
//!
//! `startThreads` and the `set...` knobs change this worker's execution policy (`model::Policy`),
//! which each model is given when `finish()` builds it: they apply to models loaded afterwards,
//! and a loaded model keeps the policy it was built with (the page sets them all once, in
//! `initWasm`, before any model). Every model of the worker counts into the worker policy's
//! statistics, which `buildInfo()` reports (`splits`, `int8Products`).
//!
//! Every failure is thrown as a JS `Error` with a readable message; nothing is left to a panic
//! (a panic in wasm is a trap that kills the module). The panic hook is installed anyway, so a
//! bug shows its message in the console.

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::captioner::{CaptionJob as CoreJob, JobEvent};
use crate::gguf::QuantType;
use crate::image::{decode_image, rgba_to_rgb, ImageLimits};
use crate::model::Policy;
use crate::quantize_stream::QuantizeStream;
use crate::stream_load::SafetensorsStream;
use crate::{Caption, CaptionOptions, Captioner, Decoding, Error, ModelFiles};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** Caption options; every field is optional. */
export interface CaptionOptions {
    /** Tokens to generate at most (default 20). */
    max_new_tokens?: number;
    /** 1 (default): greedy; more: beam search with this many beams (at most 32). */
    beams?: number;
    /** Beam search's length penalty (default 1.0). */
    length_penalty?: number;
    /** Text the caption continues (conditional captioning, or a question for VQA checkpoints). */
    prompt?: string;
}
/** What one `CaptionJob.step()` produced. */
export interface StepEvent {
    /** Caption text that became final with this step (often ""); the fragments concatenate to caption.text. */
    text: string;
    done: boolean;
    /** Present once done. */
    caption?: { text: string; token_ids: number[] };
}
export interface ModelInfo {
    image_size: number;
    image_tokens: number;
    vocab_size: number;
    hidden_size: number;
    layers: number;
    vision_layers: number;
    quantized: boolean;
}
/** What `Quantizer.finish()` says was written. */
export interface QuantizeSummary {
    /** Size of the GGUF file. */
    fileBytes: number;
    /** Size of the same weights in f32. */
    f32Bytes: number;
    /** Tensors per storage type ("q8_0", "f32", ...). */
    tensors: Record<string, number>;
    /** `name=type` of each matrix kept in another type than asked for (rows that do not divide into its blocks). */
    fallbacks: string[];
    /** Source tensors not stored (integer buffers, a tied LM head). */
    skipped: string[];
}
export interface BuildInfo {
    simd: boolean;
    /** Built with shared memory and a thread pool (startThreads). */
    threaded: boolean;
    threads: number;
    /** Products split across threads so far. */
    splits: number;
    version: string;
    /** Built with relaxed SIMD. */
    relaxed: boolean;
    /** The integer kernel of q8_0 products (e.g. "wasm relaxed SIMD int8 dot, x at ±127 (u8 × i8)"). */
    int8: string;
    /** Products the integer kernel has computed so far. */
    int8Products: number;
    /** Of those, the ones that summed 64 inputs per step (paired q8_0 blocks: the image encoder's, from gitcap's quantizer). */
    int8PairedProducts: number;
}
"#;

fn hook() {
    console_error_panic_hook::set_once();
}

fn js_err(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

fn invalid(msg: impl Into<String>) -> JsError {
    js_err(Error::invalid(msg))
}

thread_local! {
    /// The policy of the models this worker loads from now on (see the module's documentation).
    /// Thread-local: only the worker's own thread calls the bindings (the rayon pool's threads
    /// run the model's work, with the policy the model passes them).
    static WORKER_POLICY: RefCell<Policy> = RefCell::new(Policy::default());
}

/// The policy a model loaded now is given: the worker's, sharing its statistics.
fn worker_policy() -> Policy {
    WORKER_POLICY.with(|p| p.borrow().clone())
}

/// Changes the worker's policy for the models loaded from now on.
fn change_worker_policy(change: impl FnOnce(Policy) -> Policy) {
    WORKER_POLICY.with(|p| {
        let changed = change(p.borrow().clone());
        *p.borrow_mut() = changed;
    });
}

/// Builds a captioner from a whole GGUF file (which carries the checkpoint's small files as
/// metadata; files given to `addFile` are not used). For a build without GGUF support, make this
/// `Err(Error::model("GGUF support is not in this build"))`.
fn captioner_from_gguf(bytes: &[u8], policy: Policy) -> crate::Result<Captioner> {
    crate::gguf::captioner_from_gguf_with_policy(bytes, &Device::Cpu, policy)
}

/// The names `addFile` accepts.
const FILE_NAMES: [&str; 6] = [
    ModelFiles::CONFIG,
    ModelFiles::TOKENIZER,
    ModelFiles::TOKENIZER_CONFIG,
    ModelFiles::VOCAB,
    ModelFiles::PREPROCESSOR,
    ModelFiles::GENERATION,
];

enum Incoming {
    None,
    Safetensors(SafetensorsStream),
    Gguf(Vec<u8>),
}

/// Collects a checkpoint's small files and its weights (streamed), then builds the model.
#[wasm_bindgen]
pub struct ModelLoader {
    files: ModelFiles,
    has_config: bool,
    weights: Incoming,
    total: Option<u64>,
    received: u64,
}

impl Default for ModelLoader {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl ModelLoader {
    #[wasm_bindgen(constructor)]
    pub fn new() -> ModelLoader {
        hook();
        ModelLoader {
            files: ModelFiles::default(),
            has_config: false,
            weights: Incoming::None,
            total: None,
            received: 0,
        }
    }

    /// Adds one of the checkpoint's small files by its name in the repository.
    #[wasm_bindgen(js_name = addFile)]
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), JsError> {
        if add_model_file(&mut self.files, name, bytes)? {
            self.has_config = true;
        }
        Ok(())
    }

    /// Starts receiving the weights: `kind` is "safetensors" or "gguf"; `totalBytes` is the file's
    /// size (checked against what arrives and what the header says; may be left undefined).
    #[wasm_bindgen(js_name = beginWeights)]
    pub fn begin_weights(
        &mut self,
        #[wasm_bindgen(unchecked_param_type = "\"safetensors\" | \"gguf\"")] kind: &str,
        #[wasm_bindgen(js_name = totalBytes)] total_bytes: Option<f64>,
    ) -> Result<(), JsError> {
        if !matches!(self.weights, Incoming::None) {
            return Err(invalid("beginWeights: the weights were already begun"));
        }
        let total = match total_bytes {
            None => None,
            Some(t) if t.is_finite() && t >= 0.0 && t.fract() == 0.0 && t <= 2f64.powi(53) => {
                Some(t as u64)
            }
            Some(t) => {
                return Err(invalid(format!(
                    "beginWeights: totalBytes must be a whole number of bytes, got {t}"
                )))
            }
        };
        self.weights = match kind {
            "safetensors" => Incoming::Safetensors(SafetensorsStream::new()),
            "gguf" => {
                let mut buf = Vec::new();
                if let Some(t) = total {
                    let t = usize::try_from(t).map_err(|_| too_big(t))?;
                    buf.try_reserve_exact(t).map_err(|_| too_big(t as u64))?;
                }
                Incoming::Gguf(buf)
            }
            other => {
                return Err(invalid(format!(
                    "beginWeights: unknown weights kind {other:?}; expected \"safetensors\" or \"gguf\""
                )))
            }
        };
        self.total = total;
        self.received = 0;
        Ok(())
    }

    /// Adds the next bytes of the weights file.
    #[wasm_bindgen(js_name = pushWeights)]
    pub fn push_weights(&mut self, chunk: &[u8]) -> Result<(), JsError> {
        let received = self.received + chunk.len() as u64;
        if let Some(total) = self.total {
            if received > total {
                return Err(js_err(Error::model(format!(
                    "the weights file is longer than the {total} bytes announced to beginWeights"
                ))));
            }
        }
        match &mut self.weights {
            Incoming::None => return Err(invalid("pushWeights: call beginWeights first")),
            Incoming::Safetensors(stream) => {
                stream.push(chunk).map_err(js_err)?;
                if let (Some(total), Some(expected)) = (self.total, stream.expected_len()) {
                    if total != expected {
                        return Err(js_err(Error::model(format!(
                            "the weights file is announced as {total} bytes but its header \
                             describes {expected}; is it the right file?"
                        ))));
                    }
                }
            }
            Incoming::Gguf(buf) => {
                buf.try_reserve(chunk.len())
                    .map_err(|_| too_big(received))?;
                buf.extend_from_slice(chunk);
            }
        }
        self.received = received;
        Ok(())
    }

    /// Builds the model. The loader is consumed (and its buffers freed) whether or not this
    /// succeeds.
    pub fn finish(self) -> Result<Model, JsError> {
        let ModelLoader {
            files,
            has_config,
            weights,
            total,
            received,
        } = self;
        if !has_config && !matches!(weights, Incoming::Gguf(_)) {
            return Err(js_err(Error::model(
                "config.json was not added (addFile(\"config.json\", bytes))",
            )));
        }
        if let Some(total) = total {
            if received < total {
                return Err(js_err(Error::model(format!(
                    "the weights file is truncated: got {received} of {total} bytes"
                ))));
            }
        }
        let policy = worker_policy();
        let (captioner, quantized) = match weights {
            Incoming::None => {
                return Err(invalid(
                    "finish: no weights were given (beginWeights, pushWeights)",
                ))
            }
            Incoming::Safetensors(stream) => {
                let weights = stream.finish(&Device::Cpu).map_err(js_err)?;
                let c = Captioner::new(&files, &weights, policy).map_err(js_err)?;
                (c, false)
            }
            Incoming::Gguf(buf) => {
                let c = captioner_from_gguf(&buf, policy).map_err(js_err)?;
                drop(buf);
                (c, true)
            }
        };
        Ok(Model {
            captioner: Rc::new(captioner),
            quantized,
        })
    }
}

/// Stores one of a checkpoint's small files by its name in the repository; true for config.json.
fn add_model_file(f: &mut ModelFiles, name: &str, bytes: &[u8]) -> Result<bool, JsError> {
    let bytes = bytes.to_vec();
    match name {
        ModelFiles::CONFIG => {
            f.config = bytes;
            return Ok(true);
        }
        ModelFiles::TOKENIZER => f.tokenizer_json = Some(bytes),
        ModelFiles::TOKENIZER_CONFIG => f.tokenizer_config = Some(bytes),
        ModelFiles::VOCAB => f.vocab_txt = Some(bytes),
        ModelFiles::PREPROCESSOR => f.preprocessor_config = Some(bytes),
        ModelFiles::GENERATION => f.generation_config = Some(bytes),
        _ => {
            return Err(invalid(format!(
                "addFile: unknown model file {name:?}; expected one of {}",
                FILE_NAMES.join(", ")
            )))
        }
    }
    Ok(false)
}

fn too_big(bytes: u64) -> JsError {
    js_err(Error::model(format!(
        "out of memory: cannot hold the {:.0} MB weights file",
        bytes as f64 / 1e6
    )))
}

const OPTION_KEYS: [&str; 4] = ["max_new_tokens", "beams", "length_penalty", "prompt"];

/// Caption options as the worker passes them; every field optional.
#[derive(Deserialize, Default)]
#[serde(default)]
struct JsOptions {
    max_new_tokens: Option<u32>,
    beams: Option<u32>,
    length_penalty: Option<f64>,
    prompt: Option<String>,
}

fn options(value: JsValue) -> Result<CaptionOptions, JsError> {
    let o: JsOptions = if value.is_undefined() || value.is_null() {
        JsOptions::default()
    } else if value.is_object() && !js_sys::Array::is_array(&value) {
        // serde_wasm_bindgen reads the known keys only, so catch misspelt ones here.
        for key in js_sys::Object::keys(value.unchecked_ref::<js_sys::Object>()).iter() {
            let key = key.as_string().unwrap_or_default();
            if !OPTION_KEYS.contains(&key.as_str()) {
                return Err(invalid(format!(
                    "options: unknown option `{key}`; the options are {}",
                    OPTION_KEYS.join(", ")
                )));
            }
        }
        serde_wasm_bindgen::from_value(value).map_err(|e| {
            let e = e.to_string();
            let e = e.strip_prefix("Error: ").unwrap_or(&e);
            invalid(format!(
                "options: {e} (expected {{max_new_tokens, beams, length_penalty, prompt}})"
            ))
        })?
    } else {
        return Err(invalid("options must be an object or undefined"));
    };
    let max_new_tokens = o.max_new_tokens.unwrap_or(20);
    if max_new_tokens == 0 {
        return Err(invalid("options.max_new_tokens must be at least 1"));
    }
    let beams = o.beams.unwrap_or(1);
    if !(1..=32).contains(&beams) {
        return Err(invalid(format!(
            "options.beams must be between 1 and 32, got {beams}"
        )));
    }
    let length_penalty = o.length_penalty.unwrap_or(1.0);
    if !length_penalty.is_finite() {
        return Err(invalid("options.length_penalty must be a finite number"));
    }
    let decoding = if beams == 1 {
        Decoding::Greedy
    } else {
        Decoding::Beam {
            num_beams: beams as usize,
            length_penalty,
        }
    };
    Ok(CaptionOptions {
        max_new_tokens: max_new_tokens as usize,
        decoding,
        prompt: o.prompt.filter(|p| !p.trim().is_empty()),
    })
}

#[derive(Serialize)]
struct Info {
    image_size: usize,
    image_tokens: usize,
    vocab_size: usize,
    hidden_size: usize,
    layers: usize,
    vision_layers: usize,
    quantized: bool,
}

fn to_js<T: Serialize>(v: &T) -> Result<JsValue, JsError> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| JsError::new(&format!("internal error: {e}")))
}

/// A loaded captioner. Jobs keep their own handle to it, so `free()` on the model while a job
/// runs is safe.
#[wasm_bindgen]
pub struct Model {
    captioner: Rc<Captioner>,
    quantized: bool,
}

#[wasm_bindgen]
impl Model {
    /// Frames per input: 1, or the clip length of a video checkpoint.
    #[wasm_bindgen(getter)]
    pub fn frames(&self) -> u32 {
        self.captioner.frames() as u32
    }

    /// {image_size, image_tokens, vocab_size, hidden_size, layers, vision_layers, quantized}
    #[wasm_bindgen(unchecked_return_type = "ModelInfo")]
    pub fn info(&self) -> Result<JsValue, JsError> {
        let c = self.captioner.config();
        to_js(&Info {
            image_size: c.vision_config.image_size,
            image_tokens: c.image_tokens(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            layers: c.num_hidden_layers,
            vision_layers: c.vision_config.num_hidden_layers,
            quantized: self.quantized,
        })
    }

    /// Decodes an encoded image (JPEG, PNG, GIF, WebP, BMP), runs the image encoder and returns a
    /// job that generates the caption one token per `step()`.
    #[wasm_bindgen(js_name = startCaption)]
    pub fn start_caption(
        &self,
        image: &[u8],
        #[wasm_bindgen(unchecked_optional_param_type = "CaptionOptions")] options: JsValue,
    ) -> Result<Job, JsError> {
        let opts = self::options(options)?;
        self.single_image()?;
        let img = decode_image(image, &ImageLimits::default()).map_err(js_err)?;
        self.start(&[img], &opts)
    }

    /// As `startCaption`, from RGBA pixels (a canvas' `getImageData().data`).
    #[wasm_bindgen(js_name = startCaptionRgba)]
    pub fn start_caption_rgba(
        &self,
        width: u32,
        height: u32,
        #[wasm_bindgen(unchecked_param_type = "Uint8Array | Uint8ClampedArray")] rgba: &[u8],
        #[wasm_bindgen(unchecked_optional_param_type = "CaptionOptions")] options: JsValue,
    ) -> Result<Job, JsError> {
        let opts = self::options(options)?;
        self.single_image()?;
        let limits = ImageLimits::default();
        if width > limits.max_width
            || height > limits.max_height
            || u64::from(width) * u64::from(height) > limits.max_pixels
        {
            return Err(js_err(Error::image(format!(
                "the image is too large: {width}x{height} pixels"
            ))));
        }
        let img = rgba_to_rgb(width, height, rgba).map_err(js_err)?;
        self.start(&[img], &opts)
    }

    /// For video checkpoints: the frames of one clip, each an encoded image.
    #[wasm_bindgen(js_name = startCaptionFrames)]
    pub fn start_caption_frames(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Uint8Array[]")] frames: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "CaptionOptions")] options: JsValue,
    ) -> Result<Job, JsError> {
        let opts = self::options(options)?;
        if !js_sys::Array::is_array(&frames) {
            return Err(invalid(
                "startCaptionFrames: frames must be an array of Uint8Array",
            ));
        }
        let frames = js_sys::Array::from(&frames);
        let want = self.captioner.frames();
        if frames.length() as usize != want {
            return Err(js_err(Error::invalid(if want == 1 {
                format!(
                    "this is an image checkpoint: give one image, not {} frames",
                    frames.length()
                )
            } else {
                format!(
                    "this video checkpoint takes exactly {want} frames, got {}",
                    frames.length()
                )
            })));
        }
        let mut images = Vec::with_capacity(want);
        for (i, f) in frames.iter().enumerate() {
            let bytes = f.dyn_into::<js_sys::Uint8Array>().map_err(|_| {
                invalid(format!("startCaptionFrames: frame {i} is not a Uint8Array"))
            })?;
            let img = decode_image(&bytes.to_vec(), &ImageLimits::default()).map_err(|e| {
                js_err(match e {
                    Error::Image(m) => Error::image(format!("frame {i}: {m}")),
                    other => other,
                })
            })?;
            images.push(img);
        }
        self.start(&images, &opts)
    }
}

impl Model {
    fn single_image(&self) -> Result<(), JsError> {
        let want = self.captioner.frames();
        if want == 1 {
            Ok(())
        } else {
            Err(invalid(format!(
                "this video checkpoint takes {want} frames: use startCaptionFrames"
            )))
        }
    }

    fn start(&self, images: &[::image::RgbImage], opts: &CaptionOptions) -> Result<Job, JsError> {
        let captioner: &Captioner = &self.captioner;
        let prefix =
            crate::model::parallel::on_pool(captioner.policy(), || captioner.encode(images))
                .map_err(js_err)?;
        let job = self.captioner.start(prefix, opts).map_err(js_err)?;
        Ok(Job {
            captioner: Rc::clone(&self.captioner),
            state: JobState::Running(Box::new(job)),
        })
    }
}

enum JobState {
    Running(Box<CoreJob>),
    Done(Caption),
    Failed(String),
}

/// One caption in progress; `step()` generates one token.
#[wasm_bindgen(js_name = CaptionJob)]
pub struct Job {
    captioner: Rc<Captioner>,
    state: JobState,
}

#[derive(Serialize)]
struct StepEvent<'a> {
    text: &'a str,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    caption: Option<JsCaption<'a>>,
}

#[derive(Serialize)]
struct JsCaption<'a> {
    text: &'a str,
    token_ids: &'a [u32],
}

impl<'a> From<&'a Caption> for JsCaption<'a> {
    fn from(c: &'a Caption) -> Self {
        JsCaption {
            text: &c.text,
            token_ids: &c.token_ids,
        }
    }
}

#[wasm_bindgen(js_class = CaptionJob)]
impl Job {
    /// Generates the next token: {text, done, caption?}. `text` is the caption text that became
    /// final with this step (often ""); the fragments concatenate to `caption.text`. After the
    /// caption is done, further calls return the same final event with empty text.
    #[wasm_bindgen(unchecked_return_type = "StepEvent")]
    pub fn step(&mut self) -> Result<JsValue, JsError> {
        let event = match &mut self.state {
            JobState::Failed(msg) => {
                return Err(JsError::new(&format!(
                    "this caption job failed earlier: {msg}"
                )))
            }
            JobState::Done(caption) => {
                return to_js(&StepEvent {
                    text: "",
                    done: true,
                    caption: Some((&*caption).into()),
                })
            }
            JobState::Running(job) => {
                let captioner: &Captioner = &self.captioner;
                crate::model::parallel::on_pool(captioner.policy(), || job.step(captioner))
            }
        };
        match event {
            Ok(JobEvent::Text(text)) => to_js(&StepEvent {
                text: &text,
                done: false,
                caption: None,
            }),
            Ok(JobEvent::Done { rest, caption }) => {
                let out = to_js(&StepEvent {
                    text: &rest,
                    done: true,
                    caption: Some((&caption).into()),
                });
                self.state = JobState::Done(caption);
                out
            }
            Err(e) => {
                let msg = e.to_string();
                self.state = JobState::Failed(msg.clone());
                Err(JsError::new(&msg))
            }
        }
    }

    /// Whether the caption is complete.
    #[wasm_bindgen(getter)]
    pub fn done(&self) -> bool {
        matches!(self.state, JobState::Done(_))
    }
}

enum QuantizerState {
    /// Collecting the small files (addFile) before the first push.
    Files {
        files: ModelFiles,
        has_config: bool,
        quant_type: QuantType,
        name: String,
    },
    Converting(Box<QuantizeStream>),
}

/// Converts a safetensors file to a gitcap GGUF file while it downloads, with the same code as
/// `gitcap quantize` (the bytes are identical): the page stores the GGUF (q8_0: a quarter of
/// f32) instead of the source. Resumable between chunks with `state()` / `Quantizer.resume()`.
#[wasm_bindgen]
pub struct Quantizer {
    state: QuantizerState,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsSummary {
    file_bytes: f64,
    f32_bytes: f64,
    /// Tensors per storage type.
    tensors: std::collections::BTreeMap<&'static str, usize>,
    /// `name=type` of each matrix kept in another type than asked for.
    fallbacks: Vec<String>,
    skipped: Vec<String>,
}

#[wasm_bindgen]
impl Quantizer {
    /// `type`: "q8_0", "q4k" or "f16"; `name`: recorded in the GGUF as general.name (the CLI
    /// records its --model argument, e.g. the hub id).
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(js_name = quantType, unchecked_param_type = "\"q8_0\" | \"q4k\" | \"f16\"")]
        quant_type: &str,
        name: &str,
    ) -> Result<Quantizer, JsError> {
        hook();
        let quant_type: QuantType = quant_type.parse().map_err(|_| {
            invalid(format!(
                "Quantizer: unknown type {quant_type:?}; expected \"q8_0\", \"q4k\" or \"f16\""
            ))
        })?;
        Ok(Quantizer {
            state: QuantizerState::Files {
                files: ModelFiles::default(),
                has_config: false,
                quant_type,
                name: name.to_string(),
            },
        })
    }

    /// Adds one of the checkpoint's small files (they go into the GGUF): before the first push.
    #[wasm_bindgen(js_name = addFile)]
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), JsError> {
        match &mut self.state {
            QuantizerState::Files {
                files, has_config, ..
            } => {
                if add_model_file(files, name, bytes)? {
                    *has_config = true;
                }
                Ok(())
            }
            QuantizerState::Converting(_) => Err(invalid(
                "addFile: the conversion has started; add the files before the first push",
            )),
        }
    }

    fn stream(&mut self) -> Result<&mut QuantizeStream, JsError> {
        if let QuantizerState::Files {
            files,
            has_config,
            quant_type,
            name,
        } = &mut self.state
        {
            if !*has_config {
                return Err(js_err(Error::model(
                    "config.json was not added (addFile(\"config.json\", bytes))",
                )));
            }
            let stream =
                QuantizeStream::new(std::mem::take(files), *quant_type, name).map_err(js_err)?;
            self.state = QuantizerState::Converting(Box::new(stream));
        }
        match &mut self.state {
            QuantizerState::Converting(s) => Ok(s),
            QuantizerState::Files { .. } => unreachable!("started above"),
        }
    }

    /// Feeds the next bytes of the safetensors file; returns the GGUF bytes that became final
    /// (often empty while the header arrives). After an error the quantizer is dead: every later
    /// call throws the same error.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, JsError> {
        let stream = self.stream()?;
        let mut out = Vec::new();
        if out.try_reserve(chunk.len() / 3 + 64).is_err() {
            return Err(too_big(chunk.len() as u64));
        }
        stream.push_into(chunk, &mut out).map_err(js_err)?;
        Ok(out)
    }

    /// The conversion's position and carries (source header included; about 70 KB for
    /// git-large) for `Quantizer.resume`. Save it together with the first `outputBytes` bytes of
    /// output; the download then resumes at byte `sourceBytes` of the source.
    pub fn state(&mut self) -> Result<Vec<u8>, JsError> {
        self.stream()?.state().map_err(js_err)
    }

    /// The quantizer a `state()` described (checked; a damaged state throws).
    pub fn resume(state: &[u8]) -> Result<Quantizer, JsError> {
        hook();
        let stream = QuantizeStream::resume(state).map_err(js_err)?;
        Ok(Quantizer {
            state: QuantizerState::Converting(Box::new(stream)),
        })
    }

    /// Source bytes consumed so far.
    #[wasm_bindgen(getter, js_name = sourceBytes)]
    pub fn source_bytes(&self) -> f64 {
        match &self.state {
            QuantizerState::Converting(s) => s.received() as f64,
            QuantizerState::Files { .. } => 0.0,
        }
    }

    /// GGUF bytes produced so far.
    #[wasm_bindgen(getter, js_name = outputBytes)]
    pub fn output_bytes(&self) -> f64 {
        match &self.state {
            QuantizerState::Converting(s) => s.emitted() as f64,
            QuantizerState::Files { .. } => 0.0,
        }
    }

    /// The source file's size, once its header is in (else undefined).
    #[wasm_bindgen(getter, js_name = sourceTotal)]
    pub fn source_total(&self) -> Option<f64> {
        match &self.state {
            QuantizerState::Converting(s) => s.source_len().map(|n| n as f64),
            QuantizerState::Files { .. } => None,
        }
    }

    /// The GGUF file's size, once the source header is in (else undefined).
    #[wasm_bindgen(getter, js_name = outputTotal)]
    pub fn output_total(&self) -> Option<f64> {
        match &self.state {
            QuantizerState::Converting(s) => s.output_len().map(|n| n as f64),
            QuantizerState::Files { .. } => None,
        }
    }

    /// Checks that the whole source arrived: {fileBytes, f32Bytes, tensors, fallbacks, skipped}.
    /// Throws if it was truncated. Consumes the quantizer.
    #[wasm_bindgen(unchecked_return_type = "QuantizeSummary")]
    pub fn finish(mut self) -> Result<JsValue, JsError> {
        self.stream()?;
        let QuantizerState::Converting(stream) = self.state else {
            unreachable!("started above")
        };
        let s = stream.finish().map_err(js_err)?;
        to_js(&JsSummary {
            file_bytes: s.file_bytes as f64,
            f32_bytes: s.f32_bytes as f64,
            tensors: s.tensors,
            fallbacks: s
                .fallbacks
                .iter()
                .map(|f| format!("{}={}", f.name, crate::gguf::dtype_name(f.dtype)))
                .collect(),
            skipped: s.skipped,
        })
    }
}

/// Incremental SHA-256 (to check downloads against the hub's published hashes) whose state can be
/// saved and resumed: a download converted while it arrives keeps only its output, so after an
/// interruption the source bytes before the resume point cannot be hashed again, and the hash's
/// own state is saved with the converter's (`state()` / `Sha256.resume`). sha2's block function
/// does the rounds; this keeps the words, the byte count and the incomplete block itself, because
/// sha2's hasher does not give them out.
#[wasm_bindgen]
pub struct Sha256 {
    h: [u32; 8],
    bytes: u64,
    tail: [u8; 64],
    tail_len: usize,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

/// `Sha256.state()`, as plain data: the words, the byte count, the incomplete block in hex.
#[derive(Serialize, Deserialize)]
struct Sha256State {
    h: [u32; 8],
    bytes: u64,
    tail: String,
}

const SHA256_INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

impl Sha256 {
    fn compress(h: &mut [u32; 8], blocks: &[u8]) {
        use sha2::digest::generic_array::GenericArray;
        let blocks: Vec<_> = blocks
            .chunks_exact(64)
            .map(|b| *GenericArray::from_slice(b))
            .collect();
        sha2::compress256(h, &blocks);
    }

    /// The digest of everything so far.
    fn digest(&self) -> [u8; 32] {
        let mut h = self.h;
        let mut block = [0u8; 128];
        block[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        block[self.tail_len] = 0x80;
        let len = if self.tail_len + 9 <= 64 { 64 } else { 128 };
        block[len - 8..len].copy_from_slice(&(self.bytes.wrapping_mul(8)).to_be_bytes());
        Self::compress(&mut h, &block[..len]);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The state from its plain data, checked.
    fn from_state(s: Sha256State) -> Option<Sha256> {
        let tail = (0..s.tail.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.tail.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        if !s.tail.len().is_multiple_of(2)
            || tail.len() as u64 != s.bytes % 64
            || s.bytes >= 1 << 53
        {
            return None;
        }
        let mut r = Sha256 {
            h: s.h,
            bytes: s.bytes,
            tail: [0; 64],
            tail_len: tail.len(),
        };
        r.tail[..tail.len()].copy_from_slice(&tail);
        Some(r)
    }
}

#[wasm_bindgen]
impl Sha256 {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Sha256 {
        hook();
        Sha256 {
            h: SHA256_INITIAL,
            bytes: 0,
            tail: [0; 64],
            tail_len: 0,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let mut rest = chunk;
        if self.tail_len > 0 {
            let take = (64 - self.tail_len).min(rest.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&rest[..take]);
            self.tail_len += take;
            rest = &rest[take..];
            if self.tail_len < 64 {
                return;
            }
            let block = self.tail;
            Self::compress(&mut self.h, &block);
            self.tail_len = 0;
        }
        let whole = rest.len() / 64 * 64;
        // In pieces, so that the block list stays small for a large chunk.
        for piece in rest[..whole].chunks(64 * 1024) {
            Self::compress(&mut self.h, piece);
        }
        let left = &rest[whole..];
        self.tail[..left.len()].copy_from_slice(left);
        self.tail_len = left.len();
    }

    /// The digest of everything given so far, as lowercase hex; updating may continue.
    pub fn hex(&self) -> String {
        self.digest().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The state as plain data ({h, bytes, tail}) for `Sha256.resume`, which goes on from it.
    pub fn state(&self) -> Result<JsValue, JsError> {
        to_js(&Sha256State {
            h: self.h,
            bytes: self.bytes,
            tail: self.tail[..self.tail_len]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }

    /// The hasher at a saved `state()`; an error if the state is damaged.
    pub fn resume(state: JsValue) -> Result<Sha256, JsError> {
        hook();
        serde_wasm_bindgen::from_value::<Sha256State>(state)
            .ok()
            .and_then(Sha256::from_state)
            .ok_or_else(|| JsError::new("the saved SHA-256 state is damaged"))
    }
}

/// Starts `threads` web workers sharing this module's memory as the rayon pool (wasm-bindgen-rayon)
/// and makes models loaded from now on split their work over them (the worker's policy).
#[cfg(feature = "threads")]
#[wasm_bindgen(js_name = startThreads)]
pub fn start_threads(threads: usize) -> Result<js_sys::Promise, JsError> {
    hook();
    if threads == 0 {
        return Err(JsError::new("startThreads needs at least one thread"));
    }
    change_worker_policy(|p| p.with_parts(threads));
    Ok(wasm_bindgen_rayon::init_thread_pool(threads))
}

#[derive(Serialize)]
struct BuildInfo {
    simd: bool,
    /// Built with shared memory and a thread pool.
    threaded: bool,
    /// Threads the models loaded now split their work over (1 until `startThreads` has run).
    threads: u32,
    /// How many products the worker's models have split across threads so far.
    splits: u32,
    version: &'static str,
    /// Built with relaxed SIMD.
    relaxed: bool,
    /// The integer kernel's form for q8_0 products.
    int8: String,
    /// How many products the integer kernel has computed so far, for the worker's models.
    #[serde(rename = "int8Products")]
    int8_products: u32,
    /// Of those, the ones that stepped per pair of q8_0 blocks.
    #[serde(rename = "int8PairedProducts")]
    int8_paired_products: u32,
}

/// Products smaller than `macs` multiply-adds run on one thread (default 2^21; 0 splits every
/// product), in models loaded from now on. A tuning knob, and how the tests make the tiny fixture
/// model split its work.
#[wasm_bindgen(js_name = setMinSplitMacs)]
pub fn set_min_split_macs(macs: f64) {
    change_worker_policy(|p| p.with_min_split_macs(macs.max(0.0) as usize));
}

/// Products of fewer than `rows` input rows run on one thread, in models loaded from now on
/// (default 8, but 1 for q8_0 products through the integer kernel: decoding a token's f32 products
/// is not shared out, its q8_0 ones are). A tuning knob, for comparing decoding split and whole.
#[wasm_bindgen(js_name = setMinSplitRows)]
pub fn set_min_split_rows(rows: f64) {
    change_worker_policy(|p| p.with_min_split_rows(rows.max(0.0) as usize));
}

/// Products of fewer than `rows` input rows use candle's matmul instead of the model's own SIMD
/// kernel (src/model/matmul.rs; default 8, so decoding a token or a few beams stays on candle's
/// matrix-vector path), in models loaded from now on. A tuning knob: a huge value turns the kernel
/// off, for comparisons.
#[wasm_bindgen(js_name = setKernelMinRows)]
pub fn set_kernel_min_rows(rows: f64) {
    change_worker_policy(|p| p.with_kernel_min_rows(rows.max(0.0) as usize));
}

/// Products of q8_0 weights with fewer than `rows` input rows do not take the integer kernel
/// (src/model/int8.rs; default 8): they go to the f32 kernel (expanding the weight) or candle's
/// int8 kernels; in models loaded from now on. A tuning knob: a huge value turns the integer
/// kernel off, for comparisons.
#[wasm_bindgen(js_name = setInt8MinRows)]
pub fn set_int8_min_rows(rows: f64) {
    change_worker_policy(|p| p.with_int8_min_rows(rows.max(0.0) as usize));
}

/// {simd, threaded, threads, splits, version, relaxed, int8, int8Products, int8PairedProducts}:
/// how this build was compiled and how many threads it uses.
#[wasm_bindgen(js_name = buildInfo, unchecked_return_type = "BuildInfo")]
pub fn build_info() -> Result<JsValue, JsError> {
    hook();
    let policy = worker_policy();
    to_js(&BuildInfo {
        simd: cfg!(target_feature = "simd128"),
        threaded: cfg!(feature = "threads"),
        threads: policy.parts() as u32,
        splits: policy.stats().splits() as u32,
        version: env!("CARGO_PKG_VERSION"),
        relaxed: cfg!(any(
            target_feature = "relaxed-simd",
            feature = "relaxed-simd"
        )),
        int8: crate::model::int8::describe_forms(&policy),
        int8_products: policy.stats().int8_products() as u32,
        int8_paired_products: policy.stats().int8_paired_products() as u32,
    })
}
