//! Replays the fuzz targets' committed inputs on stable Rust: the seed corpus (`fuzz/seeds/`,
//! written by `fuzz/make_seeds.py`) and every input that once made a target fail
//! (`fuzz/regressions/`). The targets themselves run under libFuzzer with `fuzz/run.sh`.

#[path = "../../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use candle_core::Device;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_regression_input_is_handled() {
    let mut replayed = 0;
    for target in targets::TARGETS {
        let seeds = inputs("seeds", target);
        assert!(!seeds.is_empty(), "fuzz/seeds/{target} is empty");
        for path in seeds.iter().chain(&inputs("regressions", target)) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| targets::run(target, &data));
            assert!(outcome.is_ok(), "{target} failed on {}", path.display());
            replayed += 1;
        }
    }
    println!("replayed {replayed} inputs");
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("seeds").join(target).join(name)).unwrap()
}

// The seeds are worth mutating only if they are valid: a seed every parser rejects at its first
// byte would leave the fuzzer exploring error paths alone.
#[test]
fn the_seeds_get_past_the_parsers() {
    for quant in ["q8_0", "f16"] {
        let bytes = seed("gguf", &format!("micro_{quant}.gguf"));
        let model = gitcap::gguf::captioner_from_gguf(&bytes, &Device::Cpu);
        assert!(model.is_ok(), "micro_{quant}.gguf: {:?}", model.err());
    }

    let dir = std::env::temp_dir().join(format!("gitcap-seed-{}.pth", std::process::id()));
    std::fs::write(&dir, seed("pickle", "small.pth")).unwrap();
    let tensors = candle_core::pickle::read_all(&dir);
    std::fs::remove_file(&dir).unwrap();
    let mut tensors = tensors.unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["layer.bias", "layer.weight", "mask", "position_ids"]
    );
    let weight: Vec<Vec<f32>> = tensors[1].1.to_vec2().unwrap();
    assert_eq!(weight, [[1., 2., 3.], [4., 5., 6.]]);

    let file = seed("safetensors_stream", "small_chunks7.safetensors");
    let mut stream = gitcap::stream_load::SafetensorsStream::new();
    stream.push(&file[1..]).unwrap();
    let tensors = stream.finish_tensors().unwrap();
    let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    names.sort();
    // I64 is skipped: no float weights are stored as integers.
    assert_eq!(names, ["a.bias", "a.weight", "b", "d", "empty"]);

    for name in ["tiny-coco_config.json", "tiny-vatex_config.json"] {
        let bytes = seed("configs", name);
        gitcap::model::GitConfig::from_json(&bytes[1..]).unwrap();
    }
    let bytes = seed("configs", "tokenizer.json");
    let tokenizer = gitcap::tokenizer::CaptionTokenizer::from_tokenizer_json(&bytes[1..]).unwrap();
    assert_eq!(
        tokenizer.decode(&[101, 1037, 3899, 2015, 102]).unwrap(),
        "a dogs"
    );

    for name in ["orient_6.jpg", "jpeg_411.jpg", "anim.gif", "lossless.webp"] {
        let bytes = seed("image_decode", name);
        gitcap::image::decode_image(&bytes, &Default::default()).unwrap();
    }
}

// What the fuzzer found is refused for the reason it was found. (Replaying inputs above proves
// only that nothing panics; a 4 GiB allocation that then fails to fill is not noticed by a test.
// The fuzzer's own pickle input, `string_length_past_the_end.pth`, also has a bad checksum, so
// the hand-made `string_claims_4_gib.pth` stands in for it here.)
#[test]
fn what_the_fuzzer_found_is_refused_with_its_reason() {
    let pickle = fuzz_dir().join("regressions/pickle/string_claims_4_gib.pth");
    let msg = gitcap::weights::check_pytorch(&pickle)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("claims a") && msg.contains("-byte string"),
        "{msg}"
    );

    let gguf = std::fs::read(fuzz_dir().join("regressions/gguf/empty_tensor_misaligned_view.gguf"));
    let msg = gitcap::gguf::inspect(&gguf.unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("has no elements"), "{msg}");
}
