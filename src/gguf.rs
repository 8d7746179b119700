//! Single-file models: GGUF files holding GIT's weights (quantized, f16 or f32) and, as metadata,
//! everything else a checkpoint folder holds, so one file is a complete model.
//!
//! # Format (version 1)
//!
//! Tensors keep the checkpoint's names (`git.encoder.layer.0.attention.self.query.weight`, ...)
//! and shapes. Metadata keys:
//!
//! | key | type | content |
//! |---|---|---|
//! | `general.architecture` | string | `git` |
//! | `general.name` | string | where the weights came from (folder name or hub id) |
//! | `gitcap.format_version` | u32 | [`FORMAT_VERSION`]; readers refuse newer files |
//! | `gitcap.quant_type` | string | `q8_0`, `q4k` or `f16`: what `gitcap quantize --type` asked for |
//! | `gitcap.config_json` | string | `config.json`, verbatim (required) |
//! | `gitcap.generation_config_json` | string | `generation_config.json` (optional) |
//! | `gitcap.preprocessor_config_json` | string | `preprocessor_config.json` (optional) |
//! | `gitcap.tokenizer_json` | string | `tokenizer.json` (optional; then `gitcap.vocab_txt`) |
//! | `gitcap.tokenizer_config_json` | string | `tokenizer_config.json` (optional; decoding options) |
//! | `gitcap.vocab_txt` | string | `vocab.txt` (optional) |
//! | `gitcap.fallback_tensors` | string array | `name=dtype` for each matrix whose row length does not suit the requested type and was stored as `q8_0` or `f16` instead |
//!
//! Which tensors are quantized: the 2-D weight matrices (every linear layer, the LM head and the
//! word embeddings) take the requested type when their row length is a multiple of its block
//! (32 for q8_0, 256 for q4k); otherwise q8_0 if the row length is a multiple of 32, else f16.
//! Biases, LayerNorms, the class and position embeddings, the patch convolution and the temporal
//! embeddings stay f32. With `f16`, every tensor of rank 2 or more is f16 and the rest f32.
//! A tied LM head (`tie_word_embeddings`) reads the quantized word-embedding table itself, so no
//! second copy is stored.
//!
//! Tensors are stored in the order of their bytes in the source checkpoint (name order for
//! sharded and PyTorch checkpoints), so that a download can be converted as it arrives.
//!
//! Reading needs no file system (the browser hands over bytes); writing is `crate::quantize`'s,
//! for `gitcap quantize` and for a download converted as it arrives (`crate::quantize_stream`).

use std::io::Cursor;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;

use crate::captioner::{Captioner, ModelFiles};
use crate::model::{GitConfig, Policy, QuantizedTensors, Weights};
use crate::{Error, Result};

/// The layout this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Metadata keys of a gitcap GGUF file.
pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const FORMAT_VERSION: &str = "gitcap.format_version";
    pub const QUANT_TYPE: &str = "gitcap.quant_type";
    pub const CONFIG: &str = "gitcap.config_json";
    pub const GENERATION_CONFIG: &str = "gitcap.generation_config_json";
    pub const PREPROCESSOR_CONFIG: &str = "gitcap.preprocessor_config_json";
    pub const TOKENIZER: &str = "gitcap.tokenizer_json";
    pub const TOKENIZER_CONFIG: &str = "gitcap.tokenizer_config_json";
    pub const VOCAB: &str = "gitcap.vocab_txt";
    pub const FALLBACK_TENSORS: &str = "gitcap.fallback_tensors";
}

/// What `gitcap quantize --type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 8-bit blocks of 32 (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quants in super-blocks of 256 (4.5 bits per weight).
    Q4K,
    /// Half precision throughout.
    F16,
}

impl QuantType {
    pub const ALL: [QuantType; 3] = [QuantType::Q8_0, QuantType::Q4K, QuantType::F16];

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4K => "q4k",
            QuantType::F16 => "f16",
        }
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            QuantType::Q8_0 => GgmlDType::Q8_0,
            QuantType::Q4K => GgmlDType::Q4K,
            QuantType::F16 => GgmlDType::F16,
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QuantType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(QuantType::Q8_0),
            "q4k" | "q4_k" | "q4_k_m" => Ok(QuantType::Q4K),
            "f16" => Ok(QuantType::F16),
            _ => Err(Error::invalid(format!(
                "unknown quantization type {s:?}; expected q8_0, q4k or f16"
            ))),
        }
    }
}

/// The short name GGUF tools use for a tensor type.
pub fn dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2k",
        GgmlDType::Q3K => "q3k",
        GgmlDType::Q4K => "q4k",
        GgmlDType::Q5K => "q5k",
        GgmlDType::Q6K => "q6k",
        GgmlDType::Q8K => "q8k",
    }
}

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub dtype: GgmlDType,
    /// The tensor is a matrix that should have taken the requested type but its row length
    /// does not divide into that type's blocks.
    pub fallback: bool,
    /// q8_0 blocks written in pairs that share one scale (`crate::quantize::encode_paired_q8_0`):
    /// the image encoder's matrices, whose products of 257 rows the integer kernel then sums per
    /// 64 inputs (`crate::model::int8::PAIR`). Still plain q8_0 to every reader.
    pub paired: bool,
}

/// Whether `name` is a matrix of the image encoder (the vision transformer and its projection),
/// whose q8_0 blocks are paired.
fn image_encoder_matrix(name: &str) -> bool {
    name.starts_with("git.image_encoder.") || name.starts_with("git.visual_projection.")
}

/// The storage type of a checkpoint tensor under `quant_type` (see the module documentation).
pub fn placement(name: &str, shape: &[usize], quant_type: QuantType) -> Placement {
    let keep = |dtype| Placement {
        dtype,
        fallback: false,
        paired: false,
    };
    if quant_type == QuantType::F16 {
        return keep(if shape.len() >= 2 {
            GgmlDType::F16
        } else {
            GgmlDType::F32
        });
    }
    let matrix =
        shape.len() == 2 && name.ends_with(".weight") && !name.contains("position_embedding");
    if !matrix {
        return keep(GgmlDType::F32);
    }
    let cols = shape[1];
    let want = quant_type.ggml();
    let q8_0 = |fallback| Placement {
        dtype: GgmlDType::Q8_0,
        fallback,
        paired: image_encoder_matrix(name) && cols.is_multiple_of(crate::model::int8::PAIR),
    };
    if cols.is_multiple_of(want.block_size()) {
        if want == GgmlDType::Q8_0 {
            q8_0(false)
        } else {
            keep(want)
        }
    } else if cols.is_multiple_of(GgmlDType::Q8_0.block_size()) {
        q8_0(true)
    } else {
        Placement {
            dtype: GgmlDType::F16,
            fallback: true,
            paired: false,
        }
    }
}

/// What a gitcap GGUF file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    pub format_version: u32,
    pub quant_type: String,
    pub name: Option<String>,
    /// `name=dtype` for each matrix stored in another type than `quant_type` asked for.
    pub fallback_tensors: Vec<String>,
    /// Tensor count per storage type (`q8_0` → 150, ...).
    pub tensor_types: Vec<(String, usize)>,
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    // candle appends a backtrace on the following lines when RUST_BACKTRACE is set.
    let e = e.to_string();
    let e = e.lines().next().unwrap_or_default().trim_end();
    Error::model(format!(
        "{what} is truncated or corrupt ({e}); download or convert it again"
    ))
}

/// Reads the header of a GGUF file and checks that the tensor data it promises is all there.
fn read_content<R: std::io::Read + std::io::Seek>(
    reader: &mut R,
    len: u64,
    what: &str,
) -> Result<Content> {
    let mut magic = [0u8; 4];
    if len < 8 || reader.read_exact(&mut magic).is_err() {
        return Err(corrupt(what, "shorter than a GGUF header"));
    }
    if &magic != b"GGUF" {
        return Err(Error::model(format!(
            "{what} is not a GGUF file (it does not start with the bytes GGUF); \
             make one with gitcap quantize"
        )));
    }
    reader
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|e| corrupt(what, e))?;
    let content = Content::read(reader).map_err(|e| corrupt(what, e))?;
    let mut promised = content.tensor_data_offset;
    for (name, info) in &content.tensor_infos {
        // In checked u64 from the header's dimensions: a hostile shape must not wrap (wasm's
        // `usize` is 32 bits) into a small size that then passes the length check.
        let impossible = || {
            corrupt(
                what,
                format!("tensor {name} has an impossible shape or offset"),
            )
        };
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(impossible)?;
        if elems == 0 {
            // No GIT weight is empty, and candle would view an empty tensor's dangling buffer
            // as blocks of its type, misaligned (undefined behaviour; found by fuzz/run.sh).
            return Err(corrupt(what, format!("tensor {name} has no elements")));
        }
        let block = info.ggml_dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(corrupt(
                what,
                format!("tensor {name} has {elems} elements, not a multiple of its type's block of {block}"),
            ));
        }
        let end = (elems / block)
            .checked_mul(info.ggml_dtype.type_size() as u64)
            .and_then(|bytes| {
                content
                    .tensor_data_offset
                    .checked_add(info.offset)?
                    .checked_add(bytes)
            })
            .ok_or_else(impossible)?;
        promised = promised.max(end);
    }
    if promised > len {
        return Err(corrupt(
            what,
            format!("it holds {len} bytes, its header promises {promised}"),
        ));
    }
    Ok(content)
}

fn meta_string(content: &Content, key: &str, what: &str) -> Result<Option<String>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_string()
            .map(|s| Some(s.clone()))
            .map_err(|_| corrupt(what, format!("metadata {key} is not a string"))),
    }
}

fn meta_u32(content: &Content, key: &str) -> Option<u32> {
    match content.metadata.get(key)? {
        Value::U8(v) => Some(*v as u32),
        Value::U16(v) => Some(*v as u32),
        Value::U32(v) => Some(*v),
        Value::U64(v) => u32::try_from(*v).ok(),
        Value::I32(v) => u32::try_from(*v).ok(),
        Value::I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

/// The file's own description; fails on a GGUF file that gitcap did not write.
fn info_from_content(content: &Content, what: &str) -> Result<GgufInfo> {
    if !content.metadata.contains_key(keys::CONFIG) {
        let arch = meta_string(content, keys::ARCHITECTURE, what)
            .ok()
            .flatten()
            .map(|a| format!(" (its general.architecture is {a:?})"))
            .unwrap_or_default();
        return Err(Error::model(format!(
            "{what} is not a gitcap GGUF{arch}: it lacks {} — make one with gitcap quantize",
            keys::CONFIG
        )));
    }
    let format_version = meta_u32(content, keys::FORMAT_VERSION).ok_or_else(|| {
        corrupt(
            what,
            format!("{} is missing or not a number", keys::FORMAT_VERSION),
        )
    })?;
    if format_version > FORMAT_VERSION {
        return Err(Error::model(format!(
            "{what} uses gitcap GGUF format {format_version}; this gitcap reads up to {FORMAT_VERSION} — update gitcap"
        )));
    }
    let fallback_tensors = match content.metadata.get(keys::FALLBACK_TENSORS) {
        None => Vec::new(),
        Some(v) => v
            .to_vec()
            .map_err(|_| corrupt(what, format!("{} is not a list", keys::FALLBACK_TENSORS)))?
            .iter()
            .map(|x| x.to_string().cloned())
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|_| {
                corrupt(
                    what,
                    format!("{} is not a list of strings", keys::FALLBACK_TENSORS),
                )
            })?,
    };
    let mut tensor_types: Vec<(String, usize)> = Vec::new();
    for info in content.tensor_infos.values() {
        let name = dtype_name(info.ggml_dtype);
        match tensor_types.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) => *count += 1,
            None => tensor_types.push((name.to_string(), 1)),
        }
    }
    tensor_types.sort();
    Ok(GgufInfo {
        format_version,
        quant_type: meta_string(content, keys::QUANT_TYPE, what)?
            .unwrap_or_else(|| "unknown".to_string()),
        name: meta_string(content, keys::NAME, what)?,
        fallback_tensors,
        tensor_types,
    })
}

/// The checkpoint files stored as metadata, with the config checked to describe a GIT model.
fn model_files_from_content(content: &Content, what: &str) -> Result<ModelFiles> {
    info_from_content(content, what)?;
    let bytes = |key: &str| -> Result<Option<Vec<u8>>> {
        Ok(meta_string(content, key, what)?.map(String::into_bytes))
    };
    let files = ModelFiles {
        config: bytes(keys::CONFIG)?.expect("checked by info_from_content"),
        generation_config: bytes(keys::GENERATION_CONFIG)?,
        preprocessor_config: bytes(keys::PREPROCESSOR_CONFIG)?,
        tokenizer_json: bytes(keys::TOKENIZER)?,
        tokenizer_config: bytes(keys::TOKENIZER_CONFIG)?,
        vocab_txt: bytes(keys::VOCAB)?,
    };
    GitConfig::from_json(&files.config)
        .map_err(|e| Error::model(format!("{what}: its {}: {e}", keys::CONFIG)))?;
    Ok(files)
}

/// Describes a gitcap GGUF file held in memory without loading its weights.
pub fn inspect(bytes: &[u8]) -> Result<GgufInfo> {
    let what = "the GGUF file";
    let content = read_content(&mut Cursor::new(bytes), bytes.len() as u64, what)?;
    info_from_content(&content, what)
}

/// Loads a captioner from a gitcap GGUF file held in memory (the browser's path), computing by the
/// default policy.
pub fn captioner_from_gguf(bytes: &[u8], device: &Device) -> Result<Captioner> {
    captioner_from_gguf_with_policy(bytes, device, Policy::default())
}

/// `captioner_from_gguf`, computing by `policy`.
pub fn captioner_from_gguf_with_policy(
    bytes: &[u8],
    device: &Device,
    policy: Policy,
) -> Result<Captioner> {
    let what = "the GGUF file";
    let mut reader = Cursor::new(bytes);
    let content = read_content(&mut reader, bytes.len() as u64, what)?;
    let files = model_files_from_content(&content, what)?;
    let tensors =
        QuantizedTensors::read(&content, &mut reader, device).map_err(|e| corrupt(what, e))?;
    Captioner::new(&files, &Weights::quantized(tensors), policy)
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::path::Path;

    /// Loads a captioner from a gitcap GGUF file on disk, reading tensors straight from the file
    /// (the file is not held in memory besides the weights), computing by `policy`.
    pub fn load_file(path: &Path, device: &Device, policy: Policy) -> Result<Captioner> {
        let what = path.display().to_string();
        let open = || {
            std::fs::File::open(path).map_err(|e| Error::model(format!("cannot open {what}: {e}")))
        };
        let file = open()?;
        let len = file
            .metadata()
            .map_err(|e| Error::model(format!("cannot read {what}: {e}")))?
            .len();
        let mut reader = std::io::BufReader::new(file);
        let content = read_content(&mut reader, len, &what)?;
        let files = model_files_from_content(&content, &what)?;
        // Tensors are read one at a time from the file, so it is never held in memory whole.
        let tensors =
            QuantizedTensors::read(&content, &mut reader, device).map_err(|e| corrupt(&what, e))?;
        Captioner::new(&files, &Weights::quantized(tensors), policy)
    }

    /// Describes a gitcap GGUF file on disk without loading its weights.
    pub fn inspect_file(path: &Path) -> Result<GgufInfo> {
        let what = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::model(format!("cannot open {what}: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| Error::model(format!("cannot read {what}: {e}")))?
            .len();
        let content = read_content(&mut std::io::BufReader::new(file), len, &what)?;
        info_from_content(&content, &what)
    }
}
