//! Loading a checkpoint folder laid out like a Hugging Face repository (native only).

use std::path::Path;

use candle_core::Device;

use crate::captioner::{Captioner, ModelFiles};
use crate::model::Policy;
use crate::weights::{find_in_dir, load_file};
use crate::{Error, Result};

fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::model(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The small files of a checkpoint folder.
pub fn read_model_files(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        return Err(Error::model(format!("{} is not a folder", dir.display())));
    }
    let config = read_optional(dir, ModelFiles::CONFIG)?.ok_or_else(|| {
        Error::model(format!(
            "{} has no config.json; is it a GIT checkpoint folder?",
            dir.display()
        ))
    })?;
    Ok(ModelFiles {
        config,
        generation_config: read_optional(dir, ModelFiles::GENERATION)?,
        preprocessor_config: read_optional(dir, ModelFiles::PREPROCESSOR)?,
        tokenizer_json: read_optional(dir, ModelFiles::TOKENIZER)?,
        tokenizer_config: read_optional(dir, ModelFiles::TOKENIZER_CONFIG)?,
        vocab_txt: read_optional(dir, ModelFiles::VOCAB)?,
    })
}

/// Loads a captioner from a checkpoint folder, computing by the default policy.
pub fn load_dir(dir: &Path, device: &Device) -> Result<Captioner> {
    load_dir_with_policy(dir, device, Policy::default())
}

/// Loads a captioner from a checkpoint folder, computing by `policy`.
pub fn load_dir_with_policy(dir: &Path, device: &Device, policy: Policy) -> Result<Captioner> {
    let files = read_model_files(dir)?;
    let weights = load_file(dir, &find_in_dir(dir)?, device)?;
    Captioner::new(&files, &weights, policy)
}

/// Loads a captioner from a single GGUF file (weights plus the checkpoint's files as metadata),
/// as `gitcap quantize` writes it, computing by the default policy; see `crate::gguf` for the
/// layout.
pub fn load_gguf(path: &Path, device: &Device) -> Result<Captioner> {
    load_gguf_with_policy(path, device, Policy::default())
}

/// `load_gguf`, computing by `policy`.
pub fn load_gguf_with_policy(path: &Path, device: &Device, policy: Policy) -> Result<Captioner> {
    crate::gguf::load_file(path, device, policy)
}
