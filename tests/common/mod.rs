//! Shared helpers for the integration tests: fixture paths and the reference outputs recorded by
//! `tests/make_fixtures.py` from transformers' GitForCausalLM.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
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
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let tensors = candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
        Self { json, tensors }
    }

    pub fn cases(&self) -> &Vec<Value> {
        self.json["cases"].as_array().unwrap()
    }

    pub fn tensor(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("reference tensor {key} missing"))
    }
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
