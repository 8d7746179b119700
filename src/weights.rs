//! Reading checkpoint weights into `model::Weights` from disk: safetensors (single file or sharded with
//! `model.safetensors.index.json`) and PyTorch pickles (`pytorch_model.bin`). A GGUF file is a
//! whole model, not just weights: see `gguf`.

use crate::{Error, Result};

/// Which file of a checkpoint folder holds the weights, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFile {
    Safetensors(String),
    ShardedSafetensors { index: String },
    Pytorch(String),
}

/// File names looked for in a checkpoint, best first.
pub const CANDIDATES: [&str; 3] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
];

pub fn classify(name: &str) -> Option<WeightFile> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".safetensors.index.json") {
        Some(WeightFile::ShardedSafetensors {
            index: name.to_string(),
        })
    } else if lower.ends_with(".safetensors") {
        Some(WeightFile::Safetensors(name.to_string()))
    } else if lower.ends_with(".bin") || lower.ends_with(".pth") || lower.ends_with(".pt") {
        Some(WeightFile::Pytorch(name.to_string()))
    } else {
        None
    }
}

/// The shard file names an index lists, each once, in first-seen order.
pub fn shard_names(index_json: &[u8]) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(index_json).map_err(|e| {
        Error::model(format!(
            "model.safetensors.index.json is not valid JSON: {e}"
        ))
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::model("model.safetensors.index.json has no weight_map"))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| Error::model("weight_map values must be file names"))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::model(format!(
                "weight_map names a file outside the checkpoint: {file}"
            )));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    if names.is_empty() {
        return Err(Error::model("model.safetensors.index.json lists no shards"));
    }
    Ok(names)
}

#[cfg(not(target_arch = "wasm32"))]
fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::model(format!(
        "{what} is truncated or corrupt ({e}); delete it and download it again"
    ))
}

/// Compares the tensor data a safetensors header promises with what the file holds.
#[cfg(not(target_arch = "wasm32"))]
fn check_data_len(what: &str, header: &[u8], have: u64) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(header).map_err(|e| corrupt(what, e))?;
    let obj = v
        .as_object()
        .ok_or_else(|| corrupt(what, "its header is not a JSON object"))?;
    let promised = obj
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(_, info)| info.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    if have < promised {
        return Err(corrupt(
            what,
            format!("it holds {have} bytes of tensor data, its header promises {promised}"),
        ));
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::path::{Path, PathBuf};

    use candle_core::{DType, Device};

    use crate::model::Weights;

    /// Finds the weights in a checkpoint folder.
    pub fn find_in_dir(dir: &Path) -> Result<WeightFile> {
        for name in CANDIDATES {
            if dir.join(name).is_file() {
                return Ok(classify(name).expect("known name"));
            }
        }
        Err(Error::model(format!(
            "{} holds no weights: expected one of {}",
            dir.display(),
            CANDIDATES.join(", ")
        )))
    }

    /// Loads weights from files on disk; safetensors are memory-mapped, not copied.
    pub fn load_file(dir: &Path, file: &WeightFile, device: &Device) -> Result<Weights> {
        match file {
            WeightFile::Safetensors(name) => mmap_safetensors(&[dir.join(name)], device),
            WeightFile::ShardedSafetensors { index } => {
                let path = dir.join(index);
                let bytes = std::fs::read(&path)
                    .map_err(|e| Error::model(format!("cannot read {}: {e}", path.display())))?;
                let shards: Vec<PathBuf> =
                    shard_names(&bytes)?.iter().map(|n| dir.join(n)).collect();
                for s in &shards {
                    if !s.is_file() {
                        return Err(Error::model(format!(
                            "shard {} listed in {index} is missing",
                            s.display()
                        )));
                    }
                }
                mmap_safetensors(&shards, device)
            }
            WeightFile::Pytorch(name) => {
                let path = dir.join(name);
                check_pytorch(&path)?;
                let vb = candle_nn::VarBuilder::from_pth(&path, DType::F32, device)
                    .map_err(|e| corrupt(&path.display().to_string(), e))?;
                Ok(Weights::dense(vb))
            }
        }
    }

    /// Checks that every tensor a PyTorch checkpoint's pickle describes lies inside the storage
    /// file it names, before candle reads any: candle sizes its buffer from the pickle's shape
    /// alone, so a corrupt or hostile file could otherwise ask for any amount of memory. Sizes
    /// are counted in checked u64. Returns how many tensors the file holds.
    pub fn check_pytorch(path: &Path) -> Result<usize> {
        let what = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::model(format!("cannot open {what}: {e}")))?;
        // One archive for both checks: its central directory is read once.
        let mut zip =
            zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| corrupt(&what, e))?;
        check_pickle_lengths(&mut zip).map_err(|e| corrupt(&what, e))?;
        // candle's pickle reader does unchecked arithmetic on values from the file: a panic in
        // it is a corrupt file, not a reason to end the program.
        let infos = std::panic::catch_unwind(|| {
            candle_core::pickle::read_pth_tensor_info(path, false, None)
        })
        .map_err(|_| corrupt(&what, "its pickle describes impossible tensors"))?
        .map_err(|e| corrupt(&what, e))?;
        for info in &infos {
            let name = &info.name;
            let bad = |msg: String| corrupt(&what, format!("tensor {name}: {msg}"));
            let layout = &info.layout;
            if !layout.is_contiguous() && !layout.is_fortran_contiguous() {
                return Err(bad(format!(
                    "its strides {:?} are not supported",
                    layout.stride()
                )));
            }
            let elem = info.dtype.size_in_bytes() as u64;
            let elems = layout
                .dims()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            let needed = elems
                .and_then(|n| n.checked_mul(elem))
                .and_then(|n| n.checked_add(layout.start_offset() as u64))
                .ok_or_else(|| bad(format!("its shape {:?} is impossibly large", layout.dims())))?;
            let stored = zip
                .by_name(&info.path)
                .map_err(|e| bad(format!("its storage {}: {e}", info.path)))?
                .size();
            if needed > stored {
                return Err(bad(format!(
                    "shape {:?} needs {needed} bytes of its storage, which holds {stored}",
                    layout.dims()
                )));
            }
        }
        Ok(infos.len())
    }

    /// Walks the opcodes of every pickle in a PyTorch zip, as candle's reader will, and refuses
    /// a string whose length runs past the end: candle allocates a string's claimed length (up
    /// to 4 GiB) before reading it. Stops at the first opcode candle does not know (candle then
    /// reports it).
    fn check_pickle_lengths<R: std::io::Read + std::io::Seek>(
        zip: &mut zip::ZipArchive<R>,
    ) -> std::result::Result<(), String> {
        use std::io::Read;
        const MAX_PICKLE: u64 = 256 << 20;
        let mut names = Vec::new();
        for name in zip.file_names() {
            let name = name.map_err(|e| e.to_string())?;
            if name.ends_with("data.pkl") {
                names.push(name.into_owned());
            }
        }
        for name in names {
            let entry = zip.by_name(&name).map_err(|e| e.to_string())?;
            if entry.size() > MAX_PICKLE {
                return Err(format!("its pickle {name} is {} bytes long", entry.size()));
            }
            let mut pickle = Vec::new();
            entry
                .take(MAX_PICKLE)
                .read_to_end(&mut pickle)
                .map_err(|e| e.to_string())?;
            walk_pickle(&pickle).map_err(|e| format!("its pickle {name} {e}"))?;
        }
        Ok(())
    }

    fn walk_pickle(bytes: &[u8]) -> std::result::Result<(), String> {
        let mut at = 0usize;
        let truncated = || "is truncated".to_string();
        while let Some(&op) = bytes.get(at) {
            at += 1;
            let arg_len = match op {
                b'.' => return Ok(()), // STOP
                0x80 | b'K' | b'h' | b'q' => 1,
                b'M' => 2,
                b'J' | b'j' | b'r' => 4,
                b'G' => 8,
                0x8a => 1 + usize::from(*bytes.get(at).ok_or_else(truncated)?), // LONG1
                b'X' => {
                    let len = bytes.get(at..at + 4).ok_or_else(truncated)?;
                    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                    if len > bytes.len() - at - 4 {
                        return Err(format!(
                            "claims a {len}-byte string with {} bytes left",
                            bytes.len() - at - 4
                        ));
                    }
                    4 + len
                }
                b'c' => {
                    // GLOBAL: module and name, each ending in a newline
                    let mut end = at;
                    for _ in 0..2 {
                        end += bytes[end..]
                            .iter()
                            .position(|&b| b == b'\n')
                            .ok_or_else(truncated)?
                            + 1;
                    }
                    end - at
                }
                b')' | b'R' | b'(' | b't' | b'Q' | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | b'N'
                | b's' | b'u' | b'}' | b'd' | b'b' | 0x81 | b']' | b'a' | b'e' => 0,
                _ => return Ok(()), // candle refuses it with its own message
            };
            at = at
                .checked_add(arg_len)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(truncated)?;
        }
        Err(truncated())
    }

    fn mmap_safetensors(paths: &[PathBuf], device: &Device) -> Result<Weights> {
        use std::io::Read;
        for p in paths {
            let what = p.display().to_string();
            let mut f = std::fs::File::open(p)
                .map_err(|e| Error::model(format!("cannot open {what}: {e}")))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut n8 = [0u8; 8];
            if len < 8 || f.read_exact(&mut n8).is_err() {
                return Err(corrupt(&what, "shorter than its header"));
            }
            let n = u64::from_le_bytes(n8);
            if n > len - 8 || n > 100_000_000 {
                return Err(corrupt(&what, "its header runs past the end of the file"));
            }
            let mut header = vec![0u8; n as usize];
            f.read_exact(&mut header).map_err(|e| corrupt(&what, e))?;
            check_data_len(&what, &header, len - 8 - n)?;
        }
        // SAFETY: the files are opened read-only and, as for every memory-mapped checkpoint loader,
        // must not be modified while gitcap runs; the checks above catch the common truncated download.
        let vb =
            unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(paths, DType::F32, device) }
                .map_err(|e| corrupt("the safetensors weights", e))?;
        Ok(Weights::dense(vb))
    }
}
