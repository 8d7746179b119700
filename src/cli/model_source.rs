//! Where `--model` points: a local checkpoint folder, a single GGUF file, or a Hugging Face hub
//! id (`owner/name`, optionally `@revision`) fetched with hf-hub into the usual cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use gitcap::captioner::ModelFiles;
use gitcap::model::Policy;
use gitcap::Captioner;

pub const DEFAULT_MODEL: &str = "microsoft/git-large-r-coco";

#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Dir(PathBuf),
    Gguf(PathBuf),
    Hub {
        id: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    pub fn parse(arg: &str) -> Result<Self> {
        let path = Path::new(arg);
        if path.is_dir() {
            return Ok(ModelSource::Dir(path.to_path_buf()));
        }
        if path.is_file() {
            if arg.to_ascii_lowercase().ends_with(".gguf") {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            bail!("{arg} is a file but not a .gguf model; pass a checkpoint folder, a .gguf file or a hub id");
        }
        let (id, revision) = match arg.split_once('@') {
            Some((id, rev)) => (id, Some(rev.to_string())),
            None => (arg, None),
        };
        let looks_like_id = id.split('/').count() == 2
            && id.split('/').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            });
        if !looks_like_id || arg.starts_with('.') || arg.starts_with('/') {
            bail!("--model {arg}: no such folder or file, and not a hub id like {DEFAULT_MODEL}");
        }
        Ok(ModelSource::Hub {
            id: id.to_string(),
            revision,
        })
    }

    /// A local folder or file holding the model, downloading from the hub if needed.
    pub fn materialize(&self) -> Result<PathBuf> {
        match self {
            ModelSource::Dir(p) | ModelSource::Gguf(p) => Ok(p.clone()),
            ModelSource::Hub { id, revision } => download(id, revision.as_deref()),
        }
    }
}

fn download(id: &str, revision: Option<&str>) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("cannot set up the Hugging Face hub client")?;
    let repo = match revision {
        Some(r) => Repo::with_revision(id.to_string(), RepoType::Model, r.to_string()),
        None => Repo::model(id.to_string()),
    };
    let repo = api.repo(repo);
    let config = repo.get(ModelFiles::CONFIG).with_context(|| {
        format!(
            "could not fetch {id}/config.json from the Hugging Face hub (offline? set HF_HOME to a cache that has it, \
             or pass --model with a local folder)"
        )
    })?;
    for optional in [
        ModelFiles::GENERATION,
        ModelFiles::PREPROCESSOR,
        ModelFiles::TOKENIZER,
    ] {
        let _ = repo.get(optional);
    }
    if repo.get(ModelFiles::TOKENIZER).is_err() {
        repo.get(ModelFiles::VOCAB)
            .with_context(|| format!("{id} has neither tokenizer.json nor vocab.txt"))?;
    }
    let mut weights_found = false;
    for name in gitcap::weights::CANDIDATES {
        if let Ok(path) = repo.get(name) {
            if name.ends_with(".index.json") {
                let shards = gitcap::weights::shard_names(&std::fs::read(&path)?)?;
                for shard in shards {
                    repo.get(&shard)
                        .with_context(|| format!("could not fetch shard {shard} of {id}"))?;
                }
            }
            weights_found = true;
            break;
        }
    }
    if !weights_found {
        bail!(
            "{id} has no weights gitcap can read ({})",
            gitcap::weights::CANDIDATES.join(", ")
        );
    }
    Ok(config
        .parent()
        .expect("a file in a snapshot folder")
        .to_path_buf())
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

pub fn device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda => Device::new_cuda(0).context(
            "cannot use CUDA GPU 0: is an NVIDIA GPU present, and its driver working (nvidia-smi)? \
             --device cpu runs on the CPU",
        ),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda => bail!(
            "this gitcap was built without CUDA; build the CUDA one with ./build.sh --cuda and run \
             target/cuda/gitcap, or leave out --device cuda to run on the CPU"
        ),
        #[cfg(feature = "cuda")]
        DeviceChoice::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Auto => Ok(Device::Cpu),
    }
}

pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "CPU",
        Device::Cuda(_) => "CUDA GPU 0",
        _ => "GPU",
    }
}

/// Loads the captioner `--model` names, computing by `policy`.
pub fn load(arg: &str, device: &Device, policy: Policy) -> Result<Captioner> {
    let source = ModelSource::parse(arg)?;
    let path = source.materialize()?;
    let captioner = match source {
        ModelSource::Gguf(_) => gitcap::checkpoint::load_gguf_with_policy(&path, device, policy),
        _ => gitcap::checkpoint::load_dir_with_policy(&path, device, policy),
    }
    .with_context(|| format!("cannot load the model from {}", path.display()))?;
    Ok(captioner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids_with_and_without_revision() {
        assert_eq!(
            ModelSource::parse("microsoft/git-large-r-coco").unwrap(),
            ModelSource::Hub {
                id: "microsoft/git-large-r-coco".into(),
                revision: None
            }
        );
        assert_eq!(
            ModelSource::parse("microsoft/git-large-r-coco@refs/pr/1").unwrap(),
            ModelSource::Hub {
                id: "microsoft/git-large-r-coco".into(),
                revision: Some("refs/pr/1".into())
            }
        );
        assert!(ModelSource::parse("./no/such/dir").is_err());
        assert!(ModelSource::parse("not an id").is_err());
    }
}
