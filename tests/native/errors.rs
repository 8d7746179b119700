//! Bad input gets a clear error, never a panic: missing files, configs that are not GIT,
//! truncated or mismatched weights, corrupt images. Also the other weight layouts load.

use crate::common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{image_path, model_dir, TempDir};
use gitcap::checkpoint::load_dir;
use gitcap::image::{decode_image, ImageLimits};
use gitcap::model::GitConfig;
use gitcap::CaptionOptions;

fn err_of<T>(r: gitcap::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        model_dir("tiny-coco").join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn caption_ids(dir: &std::path::Path) -> Vec<u32> {
    let captioner = load_dir(dir, &Device::Cpu).unwrap();
    let img = decode_image(
        &std::fs::read(image_path("chelsea.png")).unwrap(),
        &ImageLimits::default(),
    )
    .unwrap();
    captioner
        .caption(&[img], &CaptionOptions::default(), &mut |_| true)
        .unwrap()
        .token_ids
}

#[test]
fn missing_folder_and_config_are_reported() {
    let msg = err_of(load_dir(
        std::path::Path::new("/no/such/model"),
        &Device::Cpu,
    ));
    assert!(msg.contains("not a folder"), "{msg}");
    let dir = TempDir::new("noconfig");
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn missing_weights_are_reported() {
    let dir = TempDir::with_model_files("noweights", "tiny-coco", false);
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("holds no weights") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn a_config_that_is_not_git_is_refused() {
    let dir = TempDir::with_model_files("bert", "tiny-coco", true);
    std::fs::write(
        dir.0.join("config.json"),
        r#"{"model_type": "bert", "hidden_size": 16}"#,
    )
    .unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(msg.contains("`bert` model, not GIT"), "{msg}");
    std::fs::write(dir.0.join("config.json"), "this is not json").unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("config.json is not a valid GIT config"),
        "{msg}"
    );
}

#[test]
fn zero_and_inconsistent_sizes_are_refused_naming_the_field() {
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir("tiny-coco").join("config.json")).unwrap())
            .unwrap();
    assert!(GitConfig::from_json(base.to_string().as_bytes()).is_ok());
    // (pointer to the field, its bad value, what the message must say)
    let cases: [(&str, serde_json::Value, &str); 12] = [
        ("/hidden_size", 0.into(), "`hidden_size` is 0"),
        ("/num_hidden_layers", 0.into(), "`num_hidden_layers` is 0"),
        (
            "/num_attention_heads",
            0.into(),
            "`num_attention_heads` is 0",
        ),
        (
            "/hidden_size",
            17.into(),
            "multiple of `num_attention_heads`",
        ),
        ("/intermediate_size", 0.into(), "`intermediate_size` is 0"),
        (
            "/vision_config/patch_size",
            0.into(),
            "`vision_config.patch_size` is 0",
        ),
        (
            "/vision_config/image_size",
            36.into(),
            "multiple of its `patch_size`",
        ),
        ("/vision_config/image_size", 16384.into(), "image tokens"),
        ("/vision_config/num_channels", 1.into(), "must be 3"),
        ("/layer_norm_eps", (-1.0).into(), "`layer_norm_eps`"),
        (
            "/eos_token_id",
            30522.into(),
            "`eos_token_id` 30522 is outside the vocabulary",
        ),
        (
            "/vocab_size",
            (1u64 << 40).into(),
            "`vocab_size` is 1099511627776",
        ),
    ];
    for (pointer, value, expected) in cases {
        let mut cfg = base.clone();
        *cfg.pointer_mut(pointer).unwrap() = value.clone();
        let msg = err_of(GitConfig::from_json(cfg.to_string().as_bytes()));
        assert!(
            msg.contains("config.json") && msg.contains(expected),
            "{pointer} = {value}: {msg}"
        );
    }
}

#[test]
fn a_pickle_claiming_more_than_its_storage_is_refused_before_reading() {
    // Made by fuzz/make_seeds.py: one tensor of shape [2^20, 2^20] over a 24-byte storage.
    let hostile = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/pickle/shape_beyond_storage.pth"),
    )
    .unwrap();
    let dir = TempDir::with_model_files("hostile-pickle", "tiny-vatex", false);
    std::fs::write(dir.0.join("pytorch_model.bin"), hostile).unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("layer.weight")
            && msg.contains(
                "[1048576, 1048576] needs 4398046511104 bytes of its storage, which holds 24"
            ),
        "{msg}"
    );
    // The real checkpoint passes the same check, every tensor of it.
    let real = model_dir("tiny-vatex").join("pytorch_model.bin");
    let checked = gitcap::weights::check_pytorch(&real).unwrap();
    assert_eq!(checked, candle_core::pickle::read_all(&real).unwrap().len());
}

#[test]
fn truncated_weights_are_reported_as_such() {
    let dir = TempDir::with_model_files("truncated", "tiny-coco", true);
    let path = dir.0.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for keep in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let msg = err_of(load_dir(&dir.0, &Device::Cpu));
        assert!(
            msg.contains("truncated or corrupt"),
            "kept {keep} bytes: {msg}"
        );
    }
    // The browser's streamed loader (src/stream_load.rs) has its own truncation tests in
    // tests/native/stream_load.rs.
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let dir = TempDir::with_model_files("mismatch", "tiny-coco", false);
    let path = dir.0.join("model.safetensors");

    let mut tensors = fixture_tensors();
    tensors.remove("git.encoder.layer.1.attention.self.key.weight");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("git.encoder.layer.1.attention.self.key.weight") && msg.contains("missing"),
        "{msg}"
    );

    let mut tensors = fixture_tensors();
    tensors.insert(
        "git.visual_projection.visual_projection.0.weight".into(),
        Tensor::zeros((16, 31), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("git.visual_projection.visual_projection.0.weight")
            && msg.contains("[16, 31]"),
        "{msg}"
    );

    // A config for a bigger model than the weights is a shape error too, not a silent random init.
    std::fs::copy(model_dir("tiny-coco").join("model.safetensors"), &path).unwrap();
    let cfg = std::fs::read_to_string(dir.0.join("config.json"))
        .unwrap()
        .replace("\"hidden_size\": 16", "\"hidden_size\": 32");
    std::fs::write(dir.0.join("config.json"), cfg).unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("has shape") && msg.contains("config implies"),
        "{msg}"
    );
}

#[test]
fn sharded_safetensors_load_like_the_single_file() {
    let dir = TempDir::with_model_files("sharded", "tiny-coco", false);
    let tensors = fixture_tensors();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.0.join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.0.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert_eq!(caption_ids(&dir.0), caption_ids(&model_dir("tiny-coco")));

    // A shard the index names but the folder lacks is reported by name.
    std::fs::remove_file(dir.0.join("model-00002-of-00002.safetensors")).unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("model-00002-of-00002.safetensors") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn vocab_txt_alone_gives_the_same_tokenizer_as_tokenizer_json() {
    let dir = TempDir::with_model_files("vocab", "tiny-coco", true);
    std::fs::remove_file(dir.0.join("tokenizer.json")).unwrap();
    std::fs::copy(
        common::root().join("fixtures/vocab.txt"),
        dir.0.join("vocab.txt"),
    )
    .unwrap();
    assert_eq!(caption_ids(&dir.0), caption_ids(&model_dir("tiny-coco")));
    std::fs::remove_file(dir.0.join("vocab.txt")).unwrap();
    let msg = err_of(load_dir(&dir.0, &Device::Cpu));
    assert!(
        msg.contains("neither tokenizer.json nor vocab.txt"),
        "{msg}"
    );
}

#[test]
fn bad_requests_are_errors() {
    let captioner = load_dir(&model_dir("tiny-coco"), &Device::Cpu).unwrap();
    let img = decode_image(
        &std::fs::read(image_path("chelsea.png")).unwrap(),
        &ImageLimits::default(),
    )
    .unwrap();
    let msg = err_of(captioner.caption(&[], &CaptionOptions::default(), &mut |_| true));
    assert!(msg.contains("no image"), "{msg}");
    let msg = err_of(captioner.caption(
        &[img.clone(), img.clone()],
        &CaptionOptions::default(),
        &mut |_| true,
    ));
    assert!(msg.contains("one image"), "{msg}");
    let too_long = CaptionOptions {
        max_new_tokens: 1000,
        ..Default::default()
    };
    let msg = err_of(captioner.caption(std::slice::from_ref(&img), &too_long, &mut |_| true));
    assert!(
        msg.contains("exceeds the model's 64 text positions"),
        "{msg}"
    );
    let zero_beams = CaptionOptions {
        decoding: gitcap::Decoding::Beam {
            num_beams: 0,
            length_penalty: 1.0,
        },
        ..Default::default()
    };
    assert!(
        err_of(captioner.caption(std::slice::from_ref(&img), &zero_beams, &mut |_| true))
            .contains("num_beams")
    );
    // Cancelling from the callback stops generation with `Cancelled`.
    let r = captioner.caption(
        std::slice::from_ref(&img),
        &CaptionOptions::default(),
        &mut |_| false,
    );
    assert!(matches!(r, Err(gitcap::Error::Cancelled)));
}
