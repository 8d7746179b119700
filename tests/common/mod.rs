//! Shared helpers for the integration tests: fixture paths and the reference outputs recorded by
//! `tests/make_fixtures.py` from transformers' GitForCausalLM.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

/// The repository's tests/ folder: where this binary was built, or GITCAP_REPO when the test
/// binary is carried to another machine (tools/cuda-parity.sh).
pub fn root() -> PathBuf {
    let repo = std::env::var_os("GITCAP_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    repo.join("tests")
}

pub fn model_dir(name: &str) -> PathBuf {
    root().join("fixtures/models").join(name)
}

pub fn image_path(name: &str) -> PathBuf {
    root().join("images").join(name)
}

pub struct Reference {
    pub json: Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        let dir = root().join("fixtures/reference");
        let json: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)
                .unwrap();
        Self { json, tensors }
    }

    pub fn cases(&self) -> &Vec<Value> {
        self.json["cases"].as_array().unwrap()
    }

    /// The case whose key is `key` ("case0", ...).
    pub fn case(&self, key: &str) -> &Value {
        self.cases()
            .iter()
            .find(|c| c["key"] == key)
            .unwrap_or_else(|| panic!("reference case {key} missing"))
    }

    /// A case's pixel values as the model takes them: an image gets a batch dimension, a video
    /// case is already (frames, C, H, W).
    pub fn pixels(&self, key: &str) -> Tensor {
        let p = self.tensor(&format!("{key}.pixel_values"));
        if p.rank() == 3 {
            p.unsqueeze(0).unwrap()
        } else {
            p.clone()
        }
    }

    /// gitcap's image features (1, tokens, hidden) and logits at every position of the case's
    /// `logits_input_ids` (positions, vocab), through the image-prefix cache as captioning does.
    pub fn features_and_logits(&self, model: &gitcap::model::Git, key: &str) -> (Tensor, Tensor) {
        let features = model.encode_image(&self.pixels(key)).unwrap();
        let prefix = model.image_prefix(&features).unwrap();
        let input = ids(&self.case(key)["logits_input_ids"]);
        let t = Tensor::new(input.as_slice(), model.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model
            .all_logits(&t, &prefix, &mut gitcap::model::TextCache::new())
            .unwrap()
            .squeeze(0)
            .unwrap();
        (features, logits)
    }

    pub fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("reference tensor {key} missing"))
    }

    /// The ids `captioner` generates (at most 20 new tokens) for the case's recorded pixels.
    pub fn caption_ids(
        &self,
        captioner: &gitcap::Captioner,
        key: &str,
        decoding: gitcap::Decoding,
    ) -> Vec<u32> {
        let prefix = captioner.encode_pixels(&self.pixels(key)).unwrap();
        let opts = gitcap::captioner::CaptionOptions {
            max_new_tokens: 20,
            decoding,
            prompt: None,
        };
        captioner
            .caption_encoded(&prefix, &opts, &mut |_| true)
            .unwrap()
            .token_ids
    }
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The device the parity tests run the model on: the CPU, or with GITCAP_TEST_DEVICE=cuda (a
/// `--features cuda` build; tools/cuda-parity.sh) CUDA GPU 0.
pub fn test_device() -> Device {
    // Made once: `tolerance` asks for it in every comparison, and a CUDA device is a context.
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| match std::env::var("GITCAP_TEST_DEVICE").as_deref() {
            Ok("cuda") => {
                Device::new_cuda(0).expect("GITCAP_TEST_DEVICE=cuda, but CUDA GPU 0 cannot be used")
            }
            Ok("cpu") | Err(_) => Device::Cpu,
            Ok(other) => panic!("GITCAP_TEST_DEVICE={other}: expected cpu or cuda"),
        })
        .clone()
}

/// Largest error accepted against transformers' f32 outputs: 1e-4 on the CPU; 1e-3 on a GPU,
/// whose reductions sum in other orders.
pub fn tolerance() -> f32 {
    if test_device().is_cpu() {
        1e-4
    } else {
        1e-3
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_device(b.device()).unwrap();
    (&a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A fresh empty folder under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "gitcap-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// A copy of a fixture model's files (all but the weights unless `with_weights`).
    pub fn with_model_files(tag: &str, model: &str, with_weights: bool) -> Self {
        let dir = Self::new(tag);
        for entry in std::fs::read_dir(model_dir(model)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let is_weights = name.ends_with(".safetensors") || name.ends_with(".bin");
            if with_weights || !is_weights {
                std::fs::copy(entry.path(), dir.0.join(&name)).unwrap();
            }
        }
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
