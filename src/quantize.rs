//! Writing gitcap GGUF files: one checkpoint folder (or hub download) quantized into a single
//! file that holds the weights and, as metadata, the rest of the folder. The layout is described
//! in `crate::gguf`, which reads it; this module is native only and the only writer.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::gguf::{corrupt, dtype_name, keys, placement, QuantType, FORMAT_VERSION};
use crate::model::GitConfig;
use crate::weights::{find_in_dir, shard_names, WeightFile};
use crate::{Error, Result};

/// Progress of [`quantize_checkpoint`], for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// Conversion starts: this many tensors holding this many values.
    Start { tensors: usize, elements: u64 },
    /// One tensor was converted.
    Converted {
        name: &'a str,
        elements: u64,
        dtype: GgmlDType,
    },
    /// A tensor that is not stored (an integer buffer the model computes itself).
    Skipped { name: &'a str, elements: u64 },
    /// Writing the file starts: this many bytes.
    Writing { bytes: u64 },
    /// This many bytes written so far.
    Written { bytes: u64 },
}

/// A matrix that did not take the requested type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

/// What [`quantize_checkpoint`] wrote.
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

/// The tensors of a checkpoint folder, read one at a time.
enum Source {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pth(candle_core::pickle::PthTensors),
}

impl Source {
    fn open(dir: &Path) -> Result<Self> {
        let file = find_in_dir(dir)?;
        let source = match &file {
            WeightFile::Safetensors(name) => {
                // Reuse the folder loader's checks of truncated files.
                crate::weights::load_file(dir, &file, &Device::Cpu)?;
                // SAFETY: read-only map of a file that must not change while gitcap runs,
                // as for every memory-mapped checkpoint loader.
                let st =
                    unsafe { candle_core::safetensors::MmapedSafetensors::new(dir.join(name)) }
                        .map_err(|e| corrupt(name, e))?;
                Source::Safetensors(st)
            }
            WeightFile::ShardedSafetensors { index } => {
                crate::weights::load_file(dir, &file, &Device::Cpu)?;
                let path = dir.join(index);
                let bytes = std::fs::read(&path)
                    .map_err(|e| Error::model(format!("cannot read {}: {e}", path.display())))?;
                let shards: Vec<_> = shard_names(&bytes)?.iter().map(|n| dir.join(n)).collect();
                // SAFETY: as above.
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

    /// Names and shapes of every tensor, without reading their values.
    fn entries(&self) -> Vec<(String, Vec<usize>)> {
        let mut entries: Vec<(String, Vec<usize>)> = match self {
            Source::Safetensors(st) => st
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, v.shape().to_vec()))
                .collect(),
            Source::Pth(p) => p
                .tensor_infos()
                .iter()
                .map(|(n, i)| (n.clone(), i.layout.shape().dims().to_vec()))
                .collect(),
        };
        entries.sort_by_key(|(n, _)| sort_key(n));
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

/// Tensors are written in name order with layer numbers compared as numbers
/// (`layers.2` before `layers.10`), which keeps a file listing readable; any order loads.
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
    let config = GitConfig::from_json(&files.config)?;
    if files.tokenizer_json.is_none() && files.vocab_txt.is_none() {
        return Err(Error::model(format!(
            "{} has neither tokenizer.json nor vocab.txt",
            dir.display()
        )));
    }
    let source = Source::open(dir)?;
    let mut skipped = Vec::new();
    let mut entries = Vec::new();
    for (name, shape) in source.entries() {
        // transformers ignores a stored LM head when it is tied to the word embeddings, and
        // the model reads the (quantized) word-embedding table for it.
        if config.tie_word_embeddings && name == "output.weight" {
            skipped.push(name);
        } else {
            entries.push((name, shape));
        }
    }
    let total: u64 = entries
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    progress(Progress::Start {
        tensors: entries.len(),
        elements: total,
    });

    let mut summary = QuantizeSummary {
        quant_type,
        tensors: BTreeMap::new(),
        elements: BTreeMap::new(),
        fallbacks: Vec::new(),
        skipped,
        file_bytes: 0,
        f32_bytes: total * 4,
    };
    let mut converted: Vec<(String, QTensor)> = Vec::with_capacity(entries.len());
    for (name, _) in entries {
        // One tensor in memory at a time: read, convert, keep only the converted form.
        let t = source.load(&name)?;
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            // Integer buffers such as position_ids; the model computes them.
            summary.f32_bytes -= 4 * t.elem_count() as u64;
            progress(Progress::Skipped {
                name: &name,
                elements: t.elem_count() as u64,
            });
            summary.skipped.push(name);
            continue;
        }
        let p = placement(&name, t.dims(), quant_type);
        let t = t.to_dtype(DType::F32)?;
        let q = QTensor::quantize(&t, p.dtype)
            .map_err(|e| Error::weight(&name, format!("could not be converted: {e}")))?;
        drop(t);
        let elements = q.shape().elem_count() as u64;
        let dn = dtype_name(p.dtype);
        *summary.tensors.entry(dn).or_default() += 1;
        *summary.elements.entry(dn).or_default() += elements;
        if p.fallback {
            summary.fallbacks.push(Fallback {
                name: name.clone(),
                shape: q.shape().dims().to_vec(),
                dtype: p.dtype,
            });
        }
        progress(Progress::Converted {
            name: &name,
            elements,
            dtype: p.dtype,
        });
        converted.push((name, q));
    }

    let string = |s: &[u8]| Value::String(String::from_utf8_lossy(s).into_owned());
    let mut metadata: Vec<(&str, Value)> = vec![
        (keys::ARCHITECTURE, Value::String("git".into())),
        (keys::NAME, Value::String(source_name.to_string())),
        (keys::FORMAT_VERSION, Value::U32(FORMAT_VERSION)),
        (keys::QUANT_TYPE, Value::String(quant_type.name().into())),
        (keys::CONFIG, string(&files.config)),
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
            metadata.push((key, string(v)));
        }
    }
    metadata.push((
        keys::FALLBACK_TENSORS,
        Value::Array(
            summary
                .fallbacks
                .iter()
                .map(|f| Value::String(format!("{}={}", f.name, dtype_name(f.dtype))))
                .collect(),
        ),
    ));

    let data_bytes: u64 = converted
        .iter()
        .map(|(_, q)| q.storage_size_in_bytes().div_ceil(32) as u64 * 32)
        .sum();
    progress(Progress::Writing { bytes: data_bytes });
    let partial = {
        let mut name = out.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        out.with_file_name(name)
    };
    let mut write = || -> Result<u64> {
        let file = std::fs::File::create(&partial)
            .map_err(|e| Error::model(format!("cannot create {}: {e}", partial.display())))?;
        let mut w = CountingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            written: 0,
            reported: 0,
            progress: &mut *progress,
        };
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            converted.iter().map(|(n, q)| (n.as_str(), q)).collect();
        gguf_file::write(&mut w, &meta, &tensors)
            .map_err(|e| Error::model(format!("cannot write {}: {e}", partial.display())))?;
        use std::io::Write;
        w.flush()
            .map_err(|e| Error::model(format!("cannot write {}: {e}", partial.display())))?;
        let file = w
            .inner
            .into_inner()
            .map_err(|e| Error::model(format!("cannot write {}: {e}", partial.display())))?;
        file.sync_all()
            .map_err(|e| Error::model(format!("cannot write {}: {e}", partial.display())))?;
        Ok(file
            .metadata()
            .map_err(|e| Error::model(format!("cannot read {}: {e}", partial.display())))?
            .len())
    };
    match write() {
        Ok(bytes) => summary.file_bytes = bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    }
    std::fs::rename(&partial, out).map_err(|e| {
        Error::model(format!(
            "cannot move {} to {}: {e}",
            partial.display(),
            out.display()
        ))
    })?;
    Ok(summary)
}

/// Counts bytes for the progress bar while writing.
struct CountingWriter<'p, W> {
    inner: W,
    written: u64,
    reported: u64,
    progress: &'p mut dyn FnMut(Progress<'_>),
}

impl<W: std::io::Write> std::io::Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.written - self.reported >= 1 << 22 {
            self.reported = self.written;
            (self.progress)(Progress::Written {
                bytes: self.written,
            });
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: std::io::Seek> std::io::Seek for CountingWriter<'_, W> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}
