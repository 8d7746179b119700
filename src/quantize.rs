//! Writing gitcap GGUF files: a checkpoint's weights quantized into a single file that holds the
//! weights and, as metadata, the rest of the folder. The layout is described in `crate::gguf`,
//! which reads it.
//!
//! Two front ends share everything here: `gitcap quantize` ([`quantize_checkpoint`], native) and
//! [`crate::quantize_stream::QuantizeStream`], which converts a safetensors file while it
//! downloads (the browser stores the q8_0 file instead of 1.6 GB of f32). For a single
//! safetensors file `quantize_checkpoint` *is* a `QuantizeStream` fed from the file, so the two
//! write the same bytes. Both decide what each tensor becomes with one [`Plan`], write its header
//! with [`Plan::header`] and convert values with [`encode`] (candle's own quantizer).
//!
//! Tensors are written in the order of their bytes in the source file, so that a download can be
//! converted front to back (the GGUF data section must list tensors in offset order for other
//! readers such as llama.cpp). Sharded and PyTorch sources, which are never streamed, are written
//! in name order with layer numbers compared as numbers.

use std::collections::BTreeMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::captioner::ModelFiles;
use crate::gguf::{dtype_name, keys, placement, QuantType, FORMAT_VERSION};
use crate::model::GitConfig;
use crate::{Error, Result};

/// Progress of [`quantize_checkpoint`], for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// Conversion starts: this many tensors holding this many values.
    Start { tensors: usize, elements: u64 },
    /// One tensor was converted and written.
    Converted {
        name: &'a str,
        elements: u64,
        dtype: GgmlDType,
    },
    /// A tensor that is not stored (an integer buffer the model computes itself, a tied LM head).
    Skipped { name: &'a str, elements: u64 },
}

/// A matrix that did not take the requested type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct QuantizeSummary {
    pub quant_type: QuantType,
    /// Tensors written, per storage type name.
    pub tensors: BTreeMap<&'static str, usize>,
    /// Values per storage type name.
    pub elements: BTreeMap<&'static str, u64>,
    pub fallbacks: Vec<Fallback>,
    /// Tensors of the checkpoint left out (integer buffers, a tied LM head's duplicate).
    pub skipped: Vec<String>,
    /// Size of the GGUF file.
    pub file_bytes: u64,
    /// Size of the same weights in f32.
    pub f32_bytes: u64,
}

/// GGUF pads the header and every tensor's data to this many bytes.
pub const ALIGNMENT: u64 = 32;

/// Zero bytes that follow `len` bytes to reach the alignment.
pub fn padding(len: u64) -> u64 {
    (ALIGNMENT - len % ALIGNMENT) % ALIGNMENT
}

/// One tensor as it will be stored.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    /// See [`crate::gguf::Placement::fallback`].
    pub fallback: bool,
    /// See [`crate::gguf::Placement::paired`].
    pub paired: bool,
    pub elements: u64,
    /// Its data in the file, without padding.
    pub bytes: u64,
    /// Where its data starts, from the start of the data section.
    pub offset: u64,
}

/// Which tensors a conversion stores, in which type and where.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quant_type: QuantType,
    /// Stored tensors, in file order.
    pub tensors: Vec<Planned>,
    /// Source tensors left out, with their value counts.
    pub skipped: Vec<(String, u64)>,
    /// For each source entry given to [`Plan::new`]: its index in `tensors`, or `None` if skipped.
    pub slots: Vec<Option<usize>>,
    /// Length of the data section (every tensor padded).
    pub data_bytes: u64,
}

/// The checkpoint's small files, checked to describe a GIT model gitcap can caption with.
pub fn check_files(files: &ModelFiles, what: &str) -> Result<GitConfig> {
    let config = GitConfig::from_json(&files.config)?;
    if files.tokenizer_json.is_none() && files.vocab_txt.is_none() {
        return Err(Error::model(format!(
            "{what} has neither tokenizer.json nor vocab.txt"
        )));
    }
    Ok(config)
}

impl Plan {
    /// Plans the source tensors `entries` (name, shape, whether the values are floats), in the
    /// order they will be written. `tied`: the config ties the LM head to the word embeddings.
    /// Sizes are counted in checked u64 from the shapes: a hostile header must not wrap wasm's
    /// 32-bit `usize` into a small size.
    pub fn new(
        entries: impl IntoIterator<Item = (String, Vec<usize>, bool)>,
        quant_type: QuantType,
        tied: bool,
    ) -> Result<Self> {
        let mut plan = Plan {
            quant_type,
            tensors: Vec::new(),
            skipped: Vec::new(),
            slots: Vec::new(),
            data_bytes: 0,
        };
        for (name, shape, float) in entries {
            let too_large = || {
                Error::weight(
                    name.clone(),
                    format!("has an impossibly large shape {shape:?}"),
                )
            };
            let elements = shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .ok_or_else(too_large)?;
            // transformers ignores a stored LM head when it is tied to the word embeddings, and
            // the model reads the (quantized) word-embedding table for it. Integer buffers such
            // as position_ids are computed by the model.
            if !float || (tied && name == "output.weight") {
                plan.skipped.push((name, elements));
                plan.slots.push(None);
                continue;
            }
            if shape.is_empty() {
                return Err(Error::weight(
                    name,
                    "is a scalar; GIT's weights are vectors and matrices",
                ));
            }
            if elements == 0 {
                return Err(Error::weight(name, "has no values"));
            }
            let p = placement(&name, &shape, quant_type);
            // placement only picks a block type for rows that divide into its blocks.
            let block = p.dtype.block_size() as u64;
            debug_assert_eq!(*shape.last().expect("not a scalar") as u64 % block, 0);
            let bytes = (elements / block)
                .checked_mul(p.dtype.type_size() as u64)
                .ok_or_else(too_large)?;
            let offset = plan.data_bytes;
            plan.data_bytes = offset
                .checked_add(bytes)
                .and_then(|end| end.checked_add(padding(bytes)))
                .ok_or_else(too_large)?;
            plan.slots.push(Some(plan.tensors.len()));
            plan.tensors.push(Planned {
                name,
                shape,
                dtype: p.dtype,
                fallback: p.fallback,
                paired: p.paired,
                elements,
                bytes,
                offset,
            });
        }
        Ok(plan)
    }

    /// The GGUF header: magic, metadata (the checkpoint's small files, see `crate::gguf`), tensor
    /// infos and the padding up to the data section. Byte for byte what candle's
    /// `gguf_file::write` produces for the same metadata and tensors (a test checks).
    pub fn header(&self, files: &ModelFiles, source_name: &str) -> Vec<u8> {
        let lossy = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
        let mut metadata: Vec<(&str, Meta)> = vec![
            (keys::ARCHITECTURE, Meta::Str("git".into())),
            (keys::NAME, Meta::Str(source_name.to_string())),
            (keys::FORMAT_VERSION, Meta::U32(FORMAT_VERSION)),
            (keys::QUANT_TYPE, Meta::Str(self.quant_type.name().into())),
            (keys::CONFIG, Meta::Str(lossy(&files.config))),
        ];
        let optional = [
            (keys::GENERATION_CONFIG, &files.generation_config),
            (keys::PREPROCESSOR_CONFIG, &files.preprocessor_config),
            (keys::TOKENIZER, &files.tokenizer_json),
            (keys::TOKENIZER_CONFIG, &files.tokenizer_config),
            (keys::VOCAB, &files.vocab_txt),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                metadata.push((key, Meta::Str(lossy(v))));
            }
        }
        metadata.push((
            keys::FALLBACK_TENSORS,
            Meta::StrArray(
                self.tensors
                    .iter()
                    .filter(|t| t.fallback)
                    .map(|t| format!("{}={}", t.name, dtype_name(t.dtype)))
                    .collect(),
            ),
        ));

        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&2u32.to_le_bytes()); // GGUF version 2, as candle writes
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in &metadata {
            put_str(&mut out, key);
            value.write(&mut out);
        }
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.resize(out.len() + padding(out.len() as u64) as usize, 0);
        out
    }

    /// What the conversion wrote, once the file of `file_bytes` is complete.
    pub fn summary(&self, file_bytes: u64) -> QuantizeSummary {
        let mut s = QuantizeSummary {
            quant_type: self.quant_type,
            tensors: BTreeMap::new(),
            elements: BTreeMap::new(),
            fallbacks: Vec::new(),
            skipped: self.skipped.iter().map(|(n, _)| n.clone()).collect(),
            file_bytes,
            f32_bytes: 0,
        };
        for t in &self.tensors {
            let dn = dtype_name(t.dtype);
            *s.tensors.entry(dn).or_default() += 1;
            *s.elements.entry(dn).or_default() += t.elements;
            s.f32_bytes += 4 * t.elements;
            if t.fallback {
                s.fallbacks.push(Fallback {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    dtype: t.dtype,
                });
            }
        }
        s
    }
}

/// The metadata value types gitcap writes, encoded as candle's `gguf_file::Value::write` does.
enum Meta {
    U32(u32),
    Str(String),
    StrArray(Vec<String>),
}

impl Meta {
    fn write(&self, out: &mut Vec<u8>) {
        const U32: u32 = 4;
        const STRING: u32 = 8;
        const ARRAY: u32 = 9;
        match self {
            Meta::U32(v) => {
                out.extend_from_slice(&U32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Str(s) => {
                out.extend_from_slice(&STRING.to_le_bytes());
                put_str(out, s);
            }
            Meta::StrArray(items) => {
                out.extend_from_slice(&ARRAY.to_le_bytes());
                // candle labels an empty array's elements U32 ("doesn't matter").
                let elem = if items.is_empty() { U32 } else { STRING };
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(out, s);
                }
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// ggml's number for a tensor type (candle's own mapping is crate-private).
fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Appends `values`, a whole number of `dtype`'s blocks, in `dtype`'s storage layout, with
/// candle's quantizer. Blocks are quantized independently of each other, so a tensor converted a
/// few rows at a time gives the same bytes as the whole tensor at once.
pub fn encode(values: &[f32], dtype: GgmlDType, out: &mut Vec<u8>) -> Result<()> {
    let t = Tensor::from_slice(values, values.len(), &Device::Cpu)?;
    let q = QTensor::quantize(&t, dtype)?;
    out.extend_from_slice(&q.data()?);
    Ok(())
}

/// Appends `values`, a whole number of pairs of q8_0 blocks, as q8_0 blocks quantized in pairs:
/// candle's q8_0 quantizer (scale d = amax / 127 stored as f16, q = round(x / d) through the f32
/// inverse) with amax taken over both blocks of each pair, which then store the same scale.
/// Values whose pair holds a larger one lose precision; the integer kernel makes one step of each
/// pair in return (`crate::model::int8::PAIR`).
pub fn encode_paired_q8_0(values: &[f32], out: &mut Vec<u8>) {
    const PAIR: usize = crate::model::int8::PAIR;
    assert!(values.len().is_multiple_of(PAIR));
    for pair in values.chunks_exact(PAIR) {
        let amax = pair.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let d = amax / 127.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        let scale = half::f16::from_f32(d).to_le_bytes();
        for block in pair.chunks_exact(PAIR / 2) {
            out.extend_from_slice(&scale);
            out.extend(block.iter().map(|&x| (x * inverse).round() as i8 as u8));
        }
    }
}

impl Planned {
    /// Values converted at a time: a block of its type, or a pair of q8_0 blocks.
    pub fn unit(&self) -> usize {
        if self.paired {
            crate::model::int8::PAIR
        } else {
            self.dtype.block_size()
        }
    }

    /// Appends `values`, a whole number of `unit`s, in this tensor's storage layout.
    pub fn encode(&self, values: &[f32], out: &mut Vec<u8>) -> Result<()> {
        if self.paired {
            encode_paired_q8_0(values, out);
            Ok(())
        } else {
            encode(values, self.dtype, out)
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::quantize_checkpoint;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::io::{Read, Write};
    use std::path::Path;

    use candle_core::DType;

    use crate::gguf::corrupt;
    use crate::quantize_stream::QuantizeStream;
    use crate::weights::{find_in_dir, shard_names, WeightFile};

    /// Source bytes read per step when streaming a safetensors file.
    const READ_CHUNK: usize = 1 << 20;

    /// The tensors of a sharded safetensors or a PyTorch checkpoint, read one at a time.
    enum Source {
        Safetensors(candle_core::safetensors::MmapedSafetensors),
        Pth(candle_core::pickle::PthTensors),
    }

    impl Source {
        fn open(dir: &Path, file: &WeightFile) -> Result<Self> {
            let source = match file {
                WeightFile::Safetensors(_) => unreachable!("single files are streamed"),
                WeightFile::ShardedSafetensors { index } => {
                    // Reuse the folder loader's checks of truncated files.
                    crate::weights::load_file(dir, file, &Device::Cpu)?;
                    let path = dir.join(index);
                    let bytes = std::fs::read(&path).map_err(|e| {
                        Error::model(format!("cannot read {}: {e}", path.display()))
                    })?;
                    let shards: Vec<_> = shard_names(&bytes)?.iter().map(|n| dir.join(n)).collect();
                    // SAFETY: read-only map of files that must not change while gitcap runs,
                    // as for every memory-mapped checkpoint loader.
                    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&shards) }
                        .map_err(|e| corrupt(index, e))?;
                    Source::Safetensors(st)
                }
                WeightFile::Pytorch(name) => {
                    let pth = candle_core::pickle::PthTensors::new(dir.join(name), None)
                        .map_err(|e| corrupt(name, e))?;
                    Source::Pth(pth)
                }
            };
            Ok(source)
        }

        /// Names, shapes and whether the values are floats, without reading the values.
        fn entries(&self) -> Vec<(String, Vec<usize>, bool)> {
            let mut entries: Vec<(String, Vec<usize>, bool)> = match self {
                Source::Safetensors(st) => st
                    .tensors()
                    .into_iter()
                    .map(|(n, v)| {
                        // safetensors' dtype names are the header's ("F32", "I64", ...).
                        let float =
                            crate::stream_load::Elem::from_dtype(&format!("{:?}", v.dtype()))
                                .is_some_and(|e| !matches!(e, crate::stream_load::Elem::Skip(_)));
                        (n, v.shape().to_vec(), float)
                    })
                    .collect(),
                Source::Pth(p) => p
                    .tensor_infos()
                    .iter()
                    .map(|(n, i)| {
                        let float =
                            matches!(i.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64);
                        (n.clone(), i.layout.shape().dims().to_vec(), float)
                    })
                    .collect(),
            };
            entries.sort_by_key(|(n, _, _)| sort_key(n));
            entries.dedup_by(|a, b| a.0 == b.0);
            entries
        }

        fn load(&self, name: &str) -> Result<Tensor> {
            let t = match self {
                Source::Safetensors(st) => st.load(name, &Device::Cpu),
                Source::Pth(p) => p.get(name).and_then(|t| {
                    t.ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))
                }),
            };
            t.map_err(|e| Error::weight(name, format!("could not be read: {e}")))
        }
    }

    /// Name order with layer numbers compared as numbers (`layers.2` before `layers.10`), which
    /// keeps a file listing readable.
    fn sort_key(name: &str) -> Vec<(String, usize)> {
        name.split('.')
            .map(|part| match part.parse::<usize>() {
                Ok(n) => (String::new(), n),
                Err(_) => (part.to_string(), 0),
            })
            .collect()
    }

    /// Converts the checkpoint folder `dir` into one GGUF file at `out` (written to a temporary
    /// name next to it first, so an interrupted run leaves no partial model under `out`).
    pub fn quantize_checkpoint(
        dir: &Path,
        out: &Path,
        quant_type: QuantType,
        source_name: &str,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<QuantizeSummary> {
        let files = crate::checkpoint::read_model_files(dir)?;
        let config = check_files(&files, &dir.display().to_string())?;
        let file = find_in_dir(dir)?;
        let partial = {
            let mut name = out.file_name().unwrap_or_default().to_os_string();
            name.push(".partial");
            out.with_file_name(name)
        };
        let cannot_write =
            |e: std::io::Error| Error::model(format!("cannot write {}: {e}", partial.display()));
        let write = |w: &mut std::io::BufWriter<std::fs::File>,
                     progress: &mut dyn FnMut(Progress<'_>)|
         -> Result<QuantizeSummary> {
            match &file {
                WeightFile::Safetensors(name) => {
                    let stream = QuantizeStream::new(files.clone(), quant_type, source_name)?;
                    stream_file(&dir.join(name), stream, w, progress)
                }
                _ => {
                    let source = Source::open(dir, &file)?;
                    let plan = Plan::new(source.entries(), quant_type, config.tie_word_embeddings)?;
                    write_tensors(&plan, &files, source_name, &source, w, progress)
                }
            }
        };
        let result = (|| {
            let f = std::fs::File::create(&partial)
                .map_err(|e| Error::model(format!("cannot create {}: {e}", partial.display())))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let summary = write(&mut w, progress)?;
            let f = w.into_inner().map_err(|e| cannot_write(e.into_error()))?;
            f.sync_all().map_err(cannot_write)?;
            let len = f.metadata().map_err(cannot_write)?.len();
            if len != summary.file_bytes {
                return Err(Error::model(format!(
                    "internal error: wrote {len} bytes to {}, planned {}",
                    partial.display(),
                    summary.file_bytes
                )));
            }
            Ok(summary)
        })();
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        std::fs::rename(&partial, out).map_err(|e| {
            Error::model(format!(
                "cannot move {} to {}: {e}",
                partial.display(),
                out.display()
            ))
        })?;
        Ok(summary)
    }

    /// The single-file case: the file goes through a [`QuantizeStream`] as a download would.
    fn stream_file(
        path: &Path,
        mut stream: QuantizeStream,
        w: &mut impl Write,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<QuantizeSummary> {
        let what = path.display().to_string();
        let mut file = std::fs::File::open(path)
            .map_err(|e| Error::model(format!("cannot open {what}: {e}")))?;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Vec::new();
        let mut reported = 0;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::model(format!("cannot read {what}: {e}")))?;
            if n == 0 {
                break;
            }
            out.clear();
            stream
                .push_into(&buf[..n], &mut out)
                .map_err(|e| in_file(e, &what))?;
            w.write_all(&out)
                .map_err(|e| Error::model(format!("cannot write the GGUF file: {e}")))?;
            if reported == 0 {
                if let Some(plan) = stream.plan() {
                    progress(Progress::Start {
                        tensors: plan.tensors.len(),
                        elements: plan.tensors.iter().map(|t| t.elements).sum(),
                    });
                }
            }
            while reported < stream.entries_done() {
                progress(stream.entry_progress(reported));
                reported += 1;
            }
        }
        stream.finish().map_err(|e| in_file(e, &what))
    }

    /// Names the file in a stream's error ("the weights file is ...").
    fn in_file(e: Error, what: &str) -> Error {
        match e {
            Error::Model(m) => Error::model(m.replacen("the weights file", what, 1)),
            other => other,
        }
    }

    /// Sharded and PyTorch checkpoints: each tensor read whole, converted and written.
    fn write_tensors(
        plan: &Plan,
        files: &ModelFiles,
        source_name: &str,
        source: &Source,
        w: &mut impl Write,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<QuantizeSummary> {
        let io = |e: std::io::Error| Error::model(format!("cannot write the GGUF file: {e}"));
        let header = plan.header(files, source_name);
        w.write_all(&header).map_err(io)?;
        progress(Progress::Start {
            tensors: plan.tensors.len(),
            elements: plan.tensors.iter().map(|t| t.elements).sum(),
        });
        for (name, elements) in &plan.skipped {
            progress(Progress::Skipped {
                name,
                elements: *elements,
            });
        }
        let mut out = Vec::new();
        for t in &plan.tensors {
            // One tensor in memory at a time: read, convert, write.
            let values = source
                .load(&t.name)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            out.clear();
            t.encode(&values, &mut out)
                .map_err(|e| Error::weight(&t.name, format!("could not be converted: {e}")))?;
            drop(values);
            debug_assert_eq!(out.len() as u64, t.bytes);
            out.resize(out.len() + padding(t.bytes) as usize, 0);
            w.write_all(&out).map_err(io)?;
            progress(Progress::Converted {
                name: &t.name,
                elements: t.elements,
                dtype: t.dtype,
            });
        }
        Ok(plan.summary(header.len() as u64 + plan.data_bytes))
    }
}
