//! The browser bindings, run in headless Chromium by wasm-bindgen-test-runner:
//!
//!     CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test wasm
//!
//! (`.cargo/config.toml` names the runner and the wasm rustflags.) The tiny fixture model and the
//! reference token ids recorded from transformers are compiled in.
#![cfg(target_arch = "wasm32")]

use gitcap::wasm::{build_info, Job, Model, ModelLoader, Quantizer, Sha256};
use serde::Deserialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("fixtures/models/tiny-coco/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("fixtures/models/tiny-coco/generation_config.json"),
    ),
    (
        "preprocessor_config.json",
        include_bytes!("fixtures/models/tiny-coco/preprocessor_config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("fixtures/models/tiny-coco/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("fixtures/models/tiny-coco/tokenizer_config.json"),
    ),
];
const WEIGHTS: &[u8] = include_bytes!("fixtures/models/tiny-coco/model.safetensors");
const CHELSEA: &[u8] = include_bytes!("images/chelsea.png");
const REFERENCE: &str = include_str!("fixtures/reference/tiny-coco.json");

#[derive(Deserialize, Debug)]
struct Event {
    text: String,
    done: bool,
    caption: Option<Caption>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Caption {
    text: String,
    token_ids: Vec<u32>,
}

/// The reference ids and text of case0 for one decoding ("greedy", "beam4", ...).
fn reference(decoding: &str) -> (Vec<u32>, String) {
    let v: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
    let case = &v["cases"][0];
    assert_eq!(case["images"][0], "chelsea.png");
    let r = &case[decoding];
    let ids = r["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    (ids, r["text"].as_str().unwrap().to_string())
}

fn loader() -> ModelLoader {
    let mut l = ModelLoader::new();
    for (name, bytes) in FILES {
        l.add_file(name, bytes).unwrap();
    }
    l
}

fn load(chunk: usize) -> Model {
    let mut l = loader();
    l.begin_weights("safetensors", Some(WEIGHTS.len() as f64))
        .unwrap();
    for c in WEIGHTS.chunks(chunk) {
        l.push_weights(c).unwrap();
    }
    l.finish().unwrap()
}

/// The message of the JS `Error` a binding threw.
fn message(e: JsError) -> String {
    let v = JsValue::from(e);
    let err = v
        .dyn_into::<js_sys::Error>()
        .expect("errors are thrown as JS Error objects");
    String::from(err.message())
}

fn expect_err<T>(r: Result<T, JsError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => message(e),
    }
}

fn options(json: &str) -> JsValue {
    js_sys::JSON::parse(json).unwrap()
}

/// Steps a job to the end: (the fragments, the final caption).
fn run(mut job: Job) -> (Vec<String>, Caption) {
    let mut fragments = Vec::new();
    for _ in 0..1000 {
        let ev: Event = serde_wasm_bindgen::from_value(job.step().unwrap()).unwrap();
        fragments.push(ev.text);
        if ev.done {
            assert!(job.done());
            // Stepping a finished job repeats the final event with no new text.
            let again: Event = serde_wasm_bindgen::from_value(job.step().unwrap()).unwrap();
            assert!(again.done && again.text.is_empty());
            assert_eq!(again.caption.as_ref(), ev.caption.as_ref());
            return (
                fragments,
                ev.caption.expect("the final event has the caption"),
            );
        }
        assert!(ev.caption.is_none());
    }
    panic!("the job never finished");
}

#[wasm_bindgen_test]
fn greedy_caption_matches_transformers() {
    let model = load(64 * 1024);
    assert_eq!(model.frames(), 1);
    let (ids, text) = reference("greedy");
    let (fragments, caption) = run(model.start_caption(CHELSEA, JsValue::UNDEFINED).unwrap());
    assert_eq!(caption.token_ids, ids);
    assert_eq!(caption.text, text);
    assert_eq!(fragments.concat(), caption.text);
    assert!(fragments.len() > 2, "the text arrives in pieces");

    // The same through explicit options, the RGBA path and the frames path.
    let (_, c) = run(model
        .start_caption(
            CHELSEA,
            options(r#"{"max_new_tokens": 20, "beams": 1, "prompt": ""}"#),
        )
        .unwrap());
    assert_eq!(c.token_ids, ids);
    let img = gitcap::image::decode_image(CHELSEA, &Default::default()).unwrap();
    let rgba: Vec<u8> = img.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let (_, c) = run(model
        .start_caption_rgba(img.width(), img.height(), &rgba, JsValue::NULL)
        .unwrap());
    assert_eq!(c.token_ids, ids);
    let frames = js_sys::Array::of1(&js_sys::Uint8Array::from(CHELSEA));
    let (_, c) = run(model
        .start_caption_frames(frames.into(), JsValue::UNDEFINED)
        .unwrap());
    assert_eq!(c.token_ids, ids);
}

#[wasm_bindgen_test]
fn beam_search_and_chunk_sizes() {
    // Odd chunk sizes split the header and the f32 values.
    let model = load(7777);
    let (ids, text) = reference("beam4");
    let opts = options(r#"{"max_new_tokens": 20, "beams": 4, "length_penalty": 0.6}"#);
    let (fragments, caption) = run(model.start_caption(CHELSEA, opts).unwrap());
    assert_eq!(caption.token_ids, ids);
    assert_eq!(caption.text, text);
    assert_eq!(fragments.concat(), text);

    let short = options(r#"{"max_new_tokens": 3}"#);
    let (_, c) = run(model.start_caption(CHELSEA, short).unwrap());
    assert_eq!(c.token_ids, reference("greedy").0[..4]);
}

#[wasm_bindgen_test]
fn info_and_build_info() {
    let model = load(1 << 20);
    #[derive(Deserialize)]
    struct Info {
        image_size: usize,
        image_tokens: usize,
        vocab_size: usize,
        hidden_size: usize,
        layers: usize,
        vision_layers: usize,
        quantized: bool,
    }
    let info: Info = serde_wasm_bindgen::from_value(model.info().unwrap()).unwrap();
    let config: serde_json::Value = serde_json::from_slice(FILES[0].1).unwrap();
    assert_eq!(
        info.vocab_size as u64,
        config["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(
        info.hidden_size as u64,
        config["hidden_size"].as_u64().unwrap()
    );
    assert_eq!(
        info.layers as u64,
        config["num_hidden_layers"].as_u64().unwrap()
    );
    let vision = &config["vision_config"];
    assert_eq!(
        info.image_size as u64,
        vision["image_size"].as_u64().unwrap()
    );
    assert_eq!(
        info.vision_layers as u64,
        vision["num_hidden_layers"].as_u64().unwrap()
    );
    let side = info.image_size / vision["patch_size"].as_u64().unwrap() as usize;
    assert_eq!(info.image_tokens, side * side + 1);
    assert!(!info.quantized);

    #[derive(Deserialize)]
    struct Build {
        simd: bool,
        threads: u32,
        version: String,
    }
    let b: Build = serde_wasm_bindgen::from_value(build_info().unwrap()).unwrap();
    assert!(b.simd, "built without simd128");
    assert_eq!(b.threads, 1);
    assert_eq!(b.version, env!("CARGO_PKG_VERSION"));
}

#[wasm_bindgen_test]
fn bad_images_throw_and_the_model_survives() {
    let model = load(1 << 20);
    let msg = expect_err(model.start_caption(b"this is not an image", JsValue::UNDEFINED));
    assert!(
        msg.contains("image: not a supported image (JPEG, PNG, GIF, WebP or BMP)"),
        "{msg}"
    );
    let msg = expect_err(model.start_caption(&[], JsValue::UNDEFINED));
    assert!(msg.starts_with("image: "), "{msg}");
    // A truncated PNG, and one with its pixel data scrambled.
    let msg = expect_err(model.start_caption(&CHELSEA[..CHELSEA.len() / 3], JsValue::UNDEFINED));
    assert!(msg.starts_with("image: "), "{msg}");
    let mut scrambled = CHELSEA.to_vec();
    for b in scrambled[200..].iter_mut().step_by(7) {
        *b ^= 0x5a;
    }
    let msg = expect_err(model.start_caption(&scrambled, JsValue::UNDEFINED));
    assert!(msg.starts_with("image: "), "{msg}");
    let msg = expect_err(model.start_caption_rgba(4, 4, &[0; 10], JsValue::UNDEFINED));
    assert!(msg.contains("needs 64 bytes"), "{msg}");
    let msg = expect_err(model.start_caption_rgba(0, 4, &[], JsValue::UNDEFINED));
    assert!(msg.contains("at least 1"), "{msg}");
    let msg = expect_err(model.start_caption_rgba(100_000, 100_000, &[], JsValue::UNDEFINED));
    assert!(msg.contains("too large"), "{msg}");
    let two = js_sys::Array::of2(
        &js_sys::Uint8Array::from(CHELSEA),
        &js_sys::Uint8Array::from(CHELSEA),
    );
    let msg = expect_err(model.start_caption_frames(two.into(), JsValue::UNDEFINED));
    assert!(msg.contains("image checkpoint"), "{msg}");
    let msg = expect_err(model.start_caption_frames(JsValue::from(3), JsValue::UNDEFINED));
    assert!(msg.contains("array"), "{msg}");
    let bad = js_sys::Array::of1(&JsValue::from_str("x"));
    let msg = expect_err(model.start_caption_frames(bad.into(), JsValue::UNDEFINED));
    assert!(msg.contains("not a Uint8Array"), "{msg}");

    // Still alive after all that (a trap would have killed the instance).
    let (_, c) = run(model.start_caption(CHELSEA, JsValue::UNDEFINED).unwrap());
    assert_eq!(c.token_ids, reference("greedy").0);
}

#[wasm_bindgen_test]
fn bad_options_throw() {
    let model = load(1 << 20);
    for (opts, want) in [
        (r#"{"beams": 0}"#, "beams must be between 1 and 32"),
        (
            r#"{"max_new_tokens": 0}"#,
            "max_new_tokens must be at least 1",
        ),
        (r#"{"max_new_tokens": -3}"#, "options:"),
        (r#"{"max_new_tokens": 2.5}"#, "options:"),
        (r#"{"max_new_tokens": 100000}"#, "exceeds the model's"),
        (r#"{"maxNewTokens": 5}"#, "unknown option `maxNewTokens`"),
        (r#"{"prompt": 5}"#, "options:"),
        (r#"[1]"#, "options must be an object"),
        (r#""greedy""#, "options must be an object"),
    ] {
        let msg = match model.start_caption(CHELSEA, options(opts)) {
            Ok(_) => panic!("{opts}: no error"),
            Err(e) => message(e),
        };
        assert!(msg.contains(want), "{opts}: {msg}");
    }
}

#[wasm_bindgen_test]
fn broken_weights_throw() {
    // Truncated, with the size announced: caught by finish().
    let mut l = loader();
    l.begin_weights("safetensors", Some(WEIGHTS.len() as f64))
        .unwrap();
    let cut = WEIGHTS.len() / 2;
    l.push_weights(&WEIGHTS[..cut]).unwrap();
    let msg = expect_err(l.finish());
    assert!(
        msg.contains(&format!(
            "the weights file is truncated: got {cut} of {} bytes",
            WEIGHTS.len()
        )),
        "{msg}"
    );
    // Truncated, size unknown: the header knows.
    let mut l = loader();
    l.begin_weights("safetensors", None).unwrap();
    l.push_weights(&WEIGHTS[..cut]).unwrap();
    let msg = expect_err(l.finish());
    assert!(msg.contains("truncated"), "{msg}");
    // Longer than announced.
    let mut l = loader();
    l.begin_weights("safetensors", Some(100.0)).unwrap();
    let msg = expect_err(l.push_weights(&WEIGHTS[..1000]));
    assert!(msg.contains("longer than the 100 bytes announced"), "{msg}");
    // Announced size disagrees with the header.
    let mut l = loader();
    l.begin_weights("safetensors", Some(WEIGHTS.len() as f64 + 1.0))
        .unwrap();
    let msg = expect_err(l.push_weights(&WEIGHTS[..20_000]));
    assert!(msg.contains("its header describes"), "{msg}");
    // Garbage.
    let mut l = loader();
    l.begin_weights("safetensors", None).unwrap();
    let msg = expect_err(l.push_weights(CHELSEA));
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
    // A GGUF that is not one (or a build without GGUF): an error, not a trap.
    let mut l = loader();
    l.begin_weights("gguf", Some(1000.0)).unwrap();
    l.push_weights(&[7; 1000]).unwrap();
    let msg = expect_err(l.finish());
    assert!(!msg.is_empty());
    // Misuse.
    let mut l = loader();
    let msg = expect_err(l.push_weights(&[1, 2, 3]));
    assert!(msg.contains("beginWeights first"), "{msg}");
    let msg = expect_err(l.begin_weights("onnx", None));
    assert!(msg.contains("unknown weights kind"), "{msg}");
    let msg = expect_err(l.begin_weights("safetensors", Some(-1.0)));
    assert!(msg.contains("whole number"), "{msg}");
    let msg = expect_err(l.add_file("model.bin", b"x"));
    assert!(msg.contains("unknown model file"), "{msg}");
    let msg = expect_err(ModelLoader::new().finish());
    assert!(msg.contains("config.json"), "{msg}");
    let msg = expect_err(loader().finish());
    assert!(msg.contains("no weights"), "{msg}");
    // A weights file that is not this config's.
    let mut l = ModelLoader::new();
    let config = String::from_utf8(FILES[0].1.to_vec())
        .unwrap()
        .replace("\"hidden_size\": ", "\"hidden_size\": 1");
    l.add_file("config.json", config.as_bytes()).unwrap();
    l.add_file("tokenizer.json", FILES[3].1).unwrap();
    l.begin_weights("safetensors", None).unwrap();
    l.push_weights(WEIGHTS).unwrap();
    let msg = expect_err(l.finish());
    assert!(
        msg.starts_with("weights: ") || msg.starts_with("model: "),
        "{msg}"
    );
}

/// The fixture's weights through `Quantizer` in chunks of `chunk` bytes, resumed from its state
/// after every chunk when `resume`.
fn quantized(chunk: usize, resume: bool) -> Vec<u8> {
    let mut q = Quantizer::new("q8_0", "tiny-coco").unwrap();
    for (name, bytes) in FILES {
        q.add_file(name, bytes).unwrap();
    }
    let mut out = Vec::new();
    for c in WEIGHTS.chunks(chunk) {
        out.extend(q.push(c).unwrap());
        if resume {
            let state = q.state().unwrap();
            q = Quantizer::resume(&state).unwrap();
        }
        assert_eq!(q.output_bytes(), out.len() as f64);
    }
    assert_eq!(q.output_total(), Some(out.len() as f64));
    q.finish().unwrap();
    out
}

#[wasm_bindgen_test]
fn quantizer_converts_resumes_and_loads() {
    // Byte equality with `gitcap quantize` is checked natively (tests/native/quantize_stream.rs)
    // and for this build through www/store_q8.js (tests/e2e/store_q8.test.mjs).
    let whole = quantized(WEIGHTS.len(), false);
    assert_eq!(quantized(777, false), whole);
    assert_eq!(quantized(64 * 1024, true), whole);
    let mut l = ModelLoader::new();
    l.begin_weights("gguf", Some(whole.len() as f64)).unwrap();
    l.push_weights(&whole).unwrap();
    let model = l.finish().unwrap();
    let info: serde_json::Value = serde_wasm_bindgen::from_value(model.info().unwrap()).unwrap();
    assert_eq!(info["quantized"], true);
    let (_, caption) = run(model.start_caption(CHELSEA, JsValue::UNDEFINED).unwrap());
    assert_eq!(caption.token_ids[0], 101);

    let err = expect_err(Quantizer::new("q2", ""));
    assert!(err.contains("unknown type"), "{err}");
    let mut q = Quantizer::new("q8_0", "").unwrap();
    let err = expect_err(q.push(&WEIGHTS[..10]));
    assert!(err.contains("config.json was not added"), "{err}");
    let mut q = Quantizer::new("q8_0", "").unwrap();
    for (name, bytes) in FILES {
        q.add_file(name, bytes).unwrap();
    }
    q.push(&WEIGHTS[..50_000]).unwrap();
    let err = expect_err(q.finish());
    assert!(err.contains("truncated"), "{err}");
    let err = expect_err(Quantizer::resume(b"not a state"));
    assert!(err.contains("state is damaged"), "{err}");
}

#[wasm_bindgen_test]
fn sha256() {
    let mut h = Sha256::new();
    assert_eq!(
        h.hex(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    h.update(b"a");
    h.update(b"bc");
    assert_eq!(
        h.hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // Resumed from its plain-data state at every point, in uneven chunks, across one and two
    // padding blocks and whole 64-byte blocks: sha2's own hasher's digest.
    use sha2::Digest;
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
    for len in [0, 1, 55, 56, 63, 64, 65, 119, 128, 300] {
        let want: String = sha2::Sha256::digest(&data[..len])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        for split in 0..=len {
            let mut a = Sha256::new();
            for piece in data[..split].chunks(13) {
                a.update(piece);
            }
            let state = a.state().unwrap();
            let mut b = Sha256::resume(state).unwrap();
            b.update(&data[split..len]);
            assert_eq!(b.hex(), want, "{len} bytes resumed at {split}");
        }
    }
    // A damaged state is refused, not hashed on from.
    let state = |json: &str| js_sys::JSON::parse(json).unwrap();
    let good = r#"{"h":[1,2,3,4,5,6,7,8],"bytes":65,"tail":"ab"}"#;
    assert!(Sha256::resume(state(good)).is_ok());
    for bad in [
        r#"{"h":[1,2,3,4,5,6,7,8],"bytes":66,"tail":"ab"}"#,
        r#"{"h":[1,2,3,4,5,6,7],"bytes":65,"tail":"ab"}"#,
        r#"{"h":[1,2,3,4,5,6,7,8],"bytes":65,"tail":"zz"}"#,
        r#"{"h":[1,2,3,4,5,6,7,8],"bytes":65,"tail":"a"}"#,
        r#"{"h":[1,2,3,4,5,6,7,8],"bytes":-1,"tail":""}"#,
        "null",
    ] {
        assert!(Sha256::resume(state(bad)).is_err(), "{bad}");
    }
}

/// max |a − b| over all elements.
fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
        .expect("comparable tensors")
}

/// The model's own SIMD matrix kernel (src/model/matmul.rs) against candle's matmul, at the
/// shapes' edges: rows not a multiple of the 3-row tile, columns not a multiple of the 12-column
/// panel, inputs over several 512-blocks with a remainder.
#[wasm_bindgen_test]
fn simd_kernel_matches_candle() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Tensor};
    use gitcap::model::{matmul, Policy};
    // q8_0 weights here check the f32 kernel's packing, not the integer kernel (tested below).
    let policy = Policy::default().with_int8_min_rows(usize::MAX);
    // The blocked kernel (8 rows or more), then the few-rows loop (decoding).
    let shapes = [(8, 12, 4), (10, 25, 517), (257, 64, 1100), (9, 1, 3)];
    let few = [(1, 30, 1024), (4, 7, 37), (3, 5, 3)];
    for (m, n, k) in shapes.into_iter().chain(few) {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let got = matmul::matmul_t(&policy, &x, &w).unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-3, "({m}, {n}, {k}): differs by {err}");
    }
    // A linear layer through the kernel, bias and quick_gelu applied to each finished block of
    // columns (the SIMD exp): dense f32, then q8_0 blocks packed in place (which the kernel takes
    // from 32 rows on); against candle's ops on the expanded weight.
    let gelu_in_place: &(dyn Fn(&mut [f32]) + Sync) =
        &gitcap::model::elementwise::quick_gelu_in_place;
    let candle = Policy::default().with_own_elementwise(false);
    let candle_gelu = |t: &Tensor| gitcap::model::elementwise::quick_gelu(&candle, t).unwrap();
    for (m, n, k, quantized) in [
        (10, 25, 517, false),
        (33, 19, 1024, true),
        (40, 19, 1024, true),
    ] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let bias = Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let weight = if quantized {
            QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap()
        } else {
            QMatMul::Tensor(w.clone())
        };
        let expanded = match &weight {
            QMatMul::QTensor(q) => q.dequantize(&Device::Cpu).unwrap(),
            _ => w,
        };
        let want = candle_gelu(
            &x.matmul(&expanded.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap(),
        );
        let bias = bias.to_vec1::<f32>().unwrap();
        let epilogue = matmul::Epilogue {
            bias: Some(&bias),
            activation: Some(gelu_in_place),
            residual: None,
        };
        let got = matmul::linear(&policy, &x, &weight, epilogue, false)
            .unwrap()
            .unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(
            err < 1e-3,
            "linear ({m}, {n}, {k}, q8_0 {quantized}): differs by {err}"
        );
    }
    assert_eq!(
        policy.stats().kernel_products(),
        10,
        "the kernel did not run"
    );
}

/// The encodings of relaxed SIMD's dot this build can run here: the one probed in this engine,
/// and (in a relaxed build) the 7-bit one that every engine runs exactly, so that both are checked
/// whatever the engine does.
fn relaxed_dots() -> Vec<Option<gitcap::model::int8::RelaxedDot>> {
    use gitcap::model::int8::{set_relaxed_dot, RelaxedDot};
    set_relaxed_dot(None);
    if cfg!(feature = "relaxed-simd") {
        vec![None, Some(RelaxedDot::SevenBit)]
    } else {
        vec![None]
    }
}

/// A random Gaussian weight (n × k) quantized to q8_0, its blocks in pairs of one scale where
/// `paired` (gitcap's quantizer's image encoder matrices: their products of 8 rows or more step
/// per 64 inputs), and its q8_0 values expanded to f32.
fn random_q8_0(
    n: usize,
    k: usize,
    paired: bool,
) -> (candle_core::quantized::QMatMul, candle_core::Tensor) {
    use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
    use candle_core::{Device, Tensor};
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    let q = if paired {
        let mut bytes = Vec::new();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        gitcap::quantize::encode_paired_q8_0(&values, &mut bytes);
        let storage = QStorage::from_data(bytes.into(), &Device::Cpu, GgmlDType::Q8_0).unwrap();
        QTensor::new(storage, (n, k)).unwrap()
    } else {
        QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
    };
    let expanded = q.dequantize(&Device::Cpu).unwrap();
    (QMatMul::from_qtensor(q).unwrap(), expanded)
}

/// The text decoder's products quantize activations at ±127 in a form that takes them (relaxed
/// SIMD where the engine's dot multiplies full bytes exactly, else SIMD128's i16 dot), and every
/// form, in every encoding of relaxed SIMD's dot, gives the portable form's bits at the same levels.
#[wasm_bindgen_test]
fn int8_forms_give_the_portable_bits_in_every_relaxed_encoding() {
    use candle_core::{Device, Tensor};
    use gitcap::model::int8::{self, set_relaxed_dot, Activations, RelaxedDot};
    use gitcap::model::{matmul, Policy};
    for dot in relaxed_dots() {
        set_relaxed_dot(dot);
        let probed = int8::relaxed_dot();
        let relaxed_full = cfg!(feature = "relaxed-simd") && probed != RelaxedDot::SevenBit;
        let text = Policy::default().for_text_decoder();
        let want_text = if relaxed_full {
            int8::Kernel::RelaxedSimd
        } else {
            int8::Kernel::Simd128
        };
        assert_eq!(int8::kernel(&text), want_text, "{probed:?}");
        let image = Policy::default();
        let levels = int8::kernel(&image).max_levels();
        assert_eq!(
            levels,
            if relaxed_full || !cfg!(feature = "relaxed-simd") {
                127
            } else {
                63
            }
        );
        let image = image.with_int8_activations(Activations {
            levels,
            per_row: false,
        });
        // (The portable form is taken only where asked for: it is not fast.)
        let portable = |levels: i32| {
            Policy::default()
                .with_portable_int8(true)
                .with_int8_min_rows(1)
                .with_int8_activations(Activations {
                    levels,
                    per_row: false,
                })
        };
        assert_eq!(int8::kernel(&portable(127)), int8::Kernel::Portable);
        // Decoding's few rows (under 8) take the few-rows loop, the rest the tiles; paired
        // weights (of whole pairs) step per 64 inputs there.
        let shapes = [
            (258, 40, 768),
            (9, 13, 64),
            (1, 13, 64),
            (3, 30, 544),
            (2, 7, 1024),
            (12, 25, 1088),
        ];
        let cases = shapes
            .iter()
            .map(|&s| (s, false))
            .chain(shapes.iter().filter(|s| s.2 % 64 == 0).map(|&s| (s, true)));
        for ((m, n, k), paired) in cases {
            let (weight, _) = random_q8_0(n, k, paired);
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let run = |policy: &Policy| {
                matmul::linear(policy, &x, &weight, matmul::Epilogue::default(), false)
                    .expect("the integer kernel takes every q8_0 product in wasm")
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let at = format!("({m}, {n}, {k}), paired {paired}, {probed:?}");
            assert!(
                run(&text) == run(&portable(127).for_text_decoder()),
                "text {at}"
            );
            assert!(run(&image) == run(&portable(levels)), "image {at}");
        }
        let described = int8::describe_forms(&Policy::default());
        if cfg!(feature = "relaxed-simd") && !relaxed_full {
            assert!(described.contains("(text decoder)"), "{described}");
        } else {
            assert!(!described.contains("(text decoder)"), "{described}");
        }
    }
    set_relaxed_dot(None);
}

/// The integer kernel's SIMD form (i16 dot, or relaxed SIMD's i8 dot in a relaxed build) through
/// `linear`, with bias and quick_gelu, at edges of its tiles and panels: within the bound its
/// quantized activations allow of candle's product with the expanded weight (each input off by at
/// most half its block's step, amax / levels), and within 2.5 / levels in RMS; in each encoding of
/// relaxed SIMD's dot.
#[wasm_bindgen_test]
fn int8_kernel_matches_candle() {
    use gitcap::model::int8;
    for dot in relaxed_dots() {
        int8::set_relaxed_dot(dot);
        kernel_matches_candle_once();
    }
    int8::set_relaxed_dot(None);
}

fn kernel_matches_candle_once() {
    use candle_core::{Device, Tensor};
    use gitcap::model::{int8, matmul, Policy};
    let policy = Policy::default();
    let kernel = int8::kernel(&policy);
    // test.sh --full runs this test in both builds.
    let want = if cfg!(feature = "relaxed-simd") {
        int8::Kernel::RelaxedSimd
    } else {
        int8::Kernel::Simd128
    };
    assert_eq!(kernel, want);
    let levels = kernel.max_levels() as f32;
    let shapes = [
        (8, 12, 32),
        (10, 25, 544),
        (257, 64, 1088),
        (9, 1, 64),
        (33, 19, 1024),
        // Decoding's: the few-rows loop.
        (1, 30, 1024),
        (3, 9, 96),
        (7, 5, 544),
    ];
    // Paired weights: x per 64 inputs from 8 rows on, per 32 below.
    let paired = [(257, 64, 1088), (8, 12, 64), (33, 19, 1024), (1, 30, 1024)];
    let cases = shapes
        .iter()
        .map(|&s| (s, false))
        .chain(paired.iter().map(|&s| (s, true)));
    for ((m, n, k), paired) in cases {
        let (weight, expanded) = random_q8_0(n, k, paired);
        let block = if paired && m >= 8 { 64 } else { 32 };
        let bias = Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let want = x
            .matmul(&expanded.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let bias = bias.to_vec1::<f32>().unwrap();
        let epilogue = matmul::Epilogue {
            bias: Some(&bias),
            activation: None,
            residual: None,
        };
        let got = matmul::linear(&policy, &x, &weight, epilogue, false)
            .expect("the integer kernel takes every q8_0 product in wasm")
            .unwrap();
        let (got, want) = (
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap(),
        );
        let (xs, ws) = (
            x.to_vec2::<f32>().unwrap(),
            expanded.to_vec2::<f32>().unwrap(),
        );
        let (mut err2, mut norm2) = (0f64, 0f64);
        for i in 0..m {
            // Half a quantization step per input, by block.
            let half_steps: Vec<f32> = xs[i]
                .chunks(block)
                .flat_map(|b| {
                    let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                    std::iter::repeat_n(amax / levels / 2.0, b.len())
                })
                .collect();
            for j in 0..n {
                let bound: f32 = half_steps
                    .iter()
                    .zip(&ws[j])
                    .map(|(h, w)| h * w.abs())
                    .sum();
                let err = (got[i][j] - want[i][j]).abs();
                assert!(
                    err <= bound * 1.001 + 1e-3 * (1.0 + want[i][j].abs()),
                    "({m}, {n}, {k}) paired {paired} [{i}, {j}]: {} vs {}, bound {bound}",
                    got[i][j],
                    want[i][j]
                );
                err2 += f64::from(err).powi(2);
                norm2 += f64::from(want[i][j]).powi(2);
            }
        }
        // Quantizing x per block of 32 gives about 0.7% (±127) or 1.4% (±63) on these Gaussian
        // values; a product of few outputs (9 here) can land at twice that by chance.
        let rel = (err2 / norm2).sqrt();
        let limit = 2.5 / f64::from(levels);
        assert!(
            rel < limit,
            "({m}, {n}, {k}): relative RMS error {rel}, over {limit} at ±{levels}"
        );
    }
    assert_eq!(
        policy.stats().int8_products(),
        shapes.len() + paired.len(),
        "the kernel did not run"
    );
    // Those of 8 rows or more, of paired weights, stepped per pair.
    assert_eq!(policy.stats().int8_paired_products(), 3);
}

/// The vector quantizer of the integer kernel's activations gives the scalar definition's words
/// and scales bit for bit: exact ties (rounded half to even), zero blocks, denormals, values
/// whose scaled form saturates, infinities and NaN.
#[wasm_bindgen_test]
fn int8_quantizer_matches_its_definition() {
    let (m, k) = (19, 192);
    let specials = [
        0.0,
        -0.0,
        f32::MIN_POSITIVE / 8.0,
        1e-30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3e38,
    ];
    let x: Vec<f32> = (0..m * k)
        .map(|i| {
            let block = i / 32;
            match block % 6 {
                // Exact ties: amax 127 (or 63), so x · levels / amax lands on .5 for these.
                0 => [127.0, 0.5, -1.5, 2.5, -3.5][i % 5],
                1 => 0.0,
                2 => specials[i % specials.len()],
                3 => [63.0, 0.5, -0.5, 1.5, 62.5][i % 5],
                _ => ((i * 7919) % 211) as f32 / 50.0 - 2.0,
            }
        })
        .collect();
    for dot in relaxed_dots() {
        gitcap::model::int8::set_relaxed_dot(dot);
        gitcap::model::int8::check_quantizer(&gitcap::model::Policy::default(), &x, m, k).unwrap();
    }
    gitcap::model::int8::set_relaxed_dot(None);
}

/// The vector packing of q8_0 weight panels gives the scalar definition's bits in both forms'
/// layouts: every kind of f16 scale (zero, subnormal, normal, largest, infinite, NaN), every
/// byte value, whole and edge panels, several input blocks.
#[wasm_bindgen_test]
fn int8_packing_matches_its_definition() {
    let (n, k) = (29, 1088);
    let scales: [u16; 14] = [
        0x0000, 0x8000, 0x0001, 0x03ff, 0x8200, 0x0400, 0x3c00, 0xbc00, 0x7bff, 0x7c00, 0xfc00,
        0x7e00, 0x7d01, 0x2e66,
    ];
    let mut blocks = Vec::with_capacity(n * k / 32 * 34);
    for b in 0..n * k / 32 {
        blocks.extend_from_slice(&scales[b % scales.len()].to_le_bytes());
        blocks.extend((0..32).map(|i| ((b * 131 + i * 37) % 256) as u8));
    }
    gitcap::model::int8::check_packing(&blocks, n, k).unwrap();
}

/// The SIMD softmax and quick_gelu (src/model/elementwise.rs, on by default in wasm) against
/// candle's own ops, with widths that are not multiples of four and masked entries.
#[wasm_bindgen_test]
fn simd_elementwise_matches_candle() {
    use candle_core::{Device, Tensor};
    use gitcap::model::{elementwise, Policy};
    let (own, candle) = (
        Policy::default(),
        Policy::default().with_own_elementwise(false),
    );
    for width in [1usize, 6, 257] {
        let xs = (Tensor::randn(0f32, 1.0, (7, width), &Device::Cpu).unwrap() * 8.0).unwrap();
        let (soft, gelu) = (
            elementwise::softmax_last(&candle, &xs).unwrap(),
            elementwise::quick_gelu(&candle, &xs).unwrap(),
        );
        assert!(max_abs_diff(&elementwise::softmax_last(&own, &xs).unwrap(), &soft) < 1e-6);
        assert!(max_abs_diff(&elementwise::quick_gelu(&own, &xs).unwrap(), &gelu) < 1e-5);
    }
    let masked = Tensor::new(&[[1.5f32, f32::NEG_INFINITY, -3.0]], &Device::Cpu).unwrap();
    let p: Vec<f32> = elementwise::softmax_last(&own, &masked)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(p[1] < 1e-30 && (p[0] + p[2] - 1.0).abs() < 1e-6, "{p:?}");
}
