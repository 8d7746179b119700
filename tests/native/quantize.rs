//! Single-file GGUF models: `gitcap quantize`'s writer and the loader, on the tiny fixture model.
//! tiny-coco's matrices have rows of 16 (text), 32 and 64 (vision): q8_0 quantizes the vision
//! ones and keeps the text ones f16; q4k (blocks of 256) falls back to q8_0 and f16 throughout.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::{ids, model_dir, Reference};
use gitcap::captioner::CaptionOptions;
use gitcap::checkpoint::{load_dir, load_gguf};
use gitcap::gguf::{
    captioner_from_gguf, inspect, inspect_file, keys, placement, QuantType, FORMAT_VERSION,
};
use gitcap::quantize::{encode_paired_q8_0, quantize_checkpoint};
use gitcap::Captioner;

/// A path under the system temp dir, unique to this test, removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        Temp(std::env::temp_dir().join(format!(
            "gitcap-quantize-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn quantize(dir: &Path, t: QuantType) -> (Temp, gitcap::quantize::QuantizeSummary) {
    let out = Temp::new(&format!("{t}.gguf"));
    let summary = quantize_checkpoint(dir, &out.0, t, "tiny-coco", &mut |_| {}).unwrap();
    (out, summary)
}

/// ‖a − b‖ / ‖b‖
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    let num = norm(&(a - b).unwrap()).to_scalar::<f32>().unwrap();
    num / norm(b).to_scalar::<f32>().unwrap()
}

/// Image features and the last position's logits for case0.
fn features_and_logits(c: &Captioner, reference: &Reference) -> (Tensor, Tensor) {
    let (features, logits) = reference.features_and_logits(c.model(), "case0");
    let last = logits.dim(0).unwrap() - 1;
    (features, logits.get(last).unwrap())
}

fn greedy_ids(c: &Captioner, reference: &Reference) -> Vec<u32> {
    let pixels = reference.tensor("case0.pixel_values").unsqueeze(0).unwrap();
    let prefix = c.encode_pixels(&pixels).unwrap();
    c.caption_encoded(&prefix, &CaptionOptions::default(), &mut |_| true)
        .unwrap()
        .token_ids
}

#[test]
fn placement_follows_block_sizes() {
    let q8 = QuantType::Q8_0;
    let q4 = QuantType::Q4K;
    let linear = "git.encoder.layer.0.attention.self.query.weight";
    assert_eq!(placement(linear, &[768, 768], q8).dtype, GgmlDType::Q8_0);
    assert_eq!(placement(linear, &[768, 768], q4).dtype, GgmlDType::Q4K);
    let p = placement(linear, &[64, 32], q4);
    assert_eq!((p.dtype, p.fallback), (GgmlDType::Q8_0, true));
    let p = placement(linear, &[16, 16], q8);
    assert_eq!((p.dtype, p.fallback), (GgmlDType::F16, true));
    let bias = "git.encoder.layer.0.attention.self.query.bias";
    assert_eq!(placement(bias, &[768], q8).dtype, GgmlDType::F32);
    assert_eq!(
        placement(bias, &[768], QuantType::F16).dtype,
        GgmlDType::F32
    );
    let patch = "git.image_encoder.vision_model.embeddings.patch_embedding.weight";
    assert_eq!(
        placement(patch, &[1024, 3, 14, 14], q4).dtype,
        GgmlDType::F32
    );
    assert_eq!(
        placement(patch, &[1024, 3, 14, 14], QuantType::F16).dtype,
        GgmlDType::F16
    );
    // q8_0 blocks go in pairs of one scale in the image encoder's matrices whose rows divide
    // into pairs, nowhere else.
    let paired = |name: &str, shape: &[usize], t| placement(name, shape, t).paired;
    let fc1 = "git.image_encoder.vision_model.encoder.layers.3.mlp.fc1.weight";
    let projection = "git.visual_projection.visual_projection.0.weight";
    assert!(paired(fc1, &[4096, 1024], q8) && paired(projection, &[768, 1024], q8));
    assert!(!paired(fc1, &[64, 32], q8) && !paired(linear, &[768, 768], q8));
    // A k-quant's fallback to q8_0 is paired there too; the k-quant itself and f16 are not.
    assert!(paired(fc1, &[64, 192], q4) && !paired(fc1, &[64, 1024], q4));
    assert!(!paired(fc1, &[4096, 1024], QuantType::F16));
    let pos = "git.embeddings.position_embeddings.weight";
    assert_eq!(placement(pos, &[1024, 768], q4).dtype, GgmlDType::F32);
    let words = "git.embeddings.word_embeddings.weight";
    assert_eq!(placement(words, &[30522, 768], q4).dtype, GgmlDType::Q4K);
    assert_eq!(
        placement("output.weight", &[30522, 768], q8).dtype,
        GgmlDType::Q8_0
    );
}

#[test]
fn round_trip_every_type() {
    let reference = Reference::load("tiny-coco");
    let dense = load_dir(&model_dir("tiny-coco"), &Device::Cpu).unwrap();
    let want_ids = ids(&reference.cases()[0]["greedy"]["token_ids"]);
    assert_eq!(greedy_ids(&dense, &reference), want_ids);
    let (want_features, want_logits) = features_and_logits(&dense, &reference);
    for t in QuantType::ALL {
        let (file, summary) = quantize(&model_dir("tiny-coco"), t);
        let len = std::fs::metadata(&file.0).unwrap().len();
        assert_eq!(summary.file_bytes, len);

        // The same file through the native loader and the in-memory (browser) loader.
        let from_file = load_gguf(&file.0, &Device::Cpu).unwrap();
        let bytes = std::fs::read(&file.0).unwrap();
        let from_bytes = captioner_from_gguf(&bytes, &Device::Cpu).unwrap();
        let (features, logits) = features_and_logits(&from_file, &reference);
        let (features2, logits2) = features_and_logits(&from_bytes, &reference);
        assert_eq!(rel_err(&features, &features2), 0.0);
        assert_eq!(rel_err(&logits, &logits2), 0.0);
        let fe = rel_err(&features, &want_features);
        let le = rel_err(&logits, &want_logits);
        let got_ids = greedy_ids(&from_file, &reference);
        let same = got_ids
            .iter()
            .zip(&want_ids)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{t}: {len} bytes, image features rel. error {fe:.2e}, logits rel. error {le:.2e}, \
             greedy ids agree on the first {same} of {}",
            want_ids.len()
        );
        // The text, tokenizer and preprocessing came from the file's metadata.
        assert_eq!(from_file.config().hidden_size, 16);
        assert_eq!(from_file.preprocessor().output_size(), (32, 32));
        assert_eq!(got_ids[0], 101);
        let caption = from_file
            .caption(
                &[image::open(common::image_path("chelsea.png"))
                    .unwrap()
                    .to_rgb8()],
                &CaptionOptions::default(),
                &mut |_| true,
            )
            .unwrap();
        assert!(!caption.text.is_empty(), "{t}: empty caption");
        let bound = match t {
            QuantType::F16 => 1e-3,
            // tiny-coco's weights are large (initializer_range 0.6) and candle also quantizes the
            // activations entering q8_0 matrices; git-large errors are in bench/README-quant.md.
            QuantType::Q8_0 | QuantType::Q4K => 3e-2,
        };
        assert!(fe < bound, "{t}: image features rel. error {fe}");
        assert!(le < bound, "{t}: logits rel. error {le}");
    }
}

#[test]
fn f16_matches_f32_within_half_precision() {
    let reference = Reference::load("tiny-coco");
    let dense = load_dir(&model_dir("tiny-coco"), &Device::Cpu).unwrap();
    let (file, summary) = quantize(&model_dir("tiny-coco"), QuantType::F16);
    assert!(summary.fallbacks.is_empty());
    assert_eq!(
        summary.tensors.keys().copied().collect::<Vec<_>>(),
        ["f16", "f32"]
    );
    let half = load_gguf(&file.0, &Device::Cpu).unwrap();
    let (f32_features, f32_logits) = features_and_logits(&dense, &reference);
    let (features, logits) = features_and_logits(&half, &reference);
    let fe = rel_err(&features, &f32_features);
    let le = rel_err(&logits, &f32_logits);
    println!("f16: image features rel. error {fe:.2e}, logits rel. error {le:.2e}");
    assert!(fe < 1e-3 && le < 1e-3, "{fe} {le}");
    assert_eq!(
        greedy_ids(&half, &reference),
        greedy_ids(&dense, &reference)
    );
}

#[test]
fn q8_0_quantizes_rows_of_32_and_keeps_rows_of_16_f16() {
    let (file, summary) = quantize(&model_dir("tiny-coco"), QuantType::Q8_0);
    let info = inspect_file(&file.0).unwrap();
    assert_eq!(info.format_version, FORMAT_VERSION);
    assert_eq!(info.quant_type, "q8_0");
    assert_eq!(info.name.as_deref(), Some("tiny-coco"));
    // Vision: 2 layers × (q, k, v, out, fc1, fc2) with rows of 32 or 64, the projection (32).
    // Text: each layer's output.dense (16 × 32).
    assert_eq!(summary.tensors.get("q8_0"), Some(&15));
    let fallbacks: Vec<&str> = summary.fallbacks.iter().map(|f| f.name.as_str()).collect();
    assert!(fallbacks.contains(&"git.encoder.layer.0.attention.self.query.weight"));
    assert!(fallbacks.contains(&"git.embeddings.word_embeddings.weight"));
    assert!(fallbacks.contains(&"output.weight"));
    assert!(summary.fallbacks.iter().all(|f| f.dtype == GgmlDType::F16));
    // Every fallback is listed in the file, with its type.
    assert_eq!(info.fallback_tensors.len(), summary.fallbacks.len());
    assert!(info
        .fallback_tensors
        .contains(&"git.encoder.layer.1.intermediate.dense.weight=f16".to_string()));
    // The 32-wide vision matrices are q8_0 in the file.
    let mut f = std::fs::File::open(&file.0).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    for key in [
        keys::CONFIG,
        keys::GENERATION_CONFIG,
        keys::PREPROCESSOR_CONFIG,
        keys::TOKENIZER,
        keys::TOKENIZER_CONFIG,
    ] {
        assert!(content.metadata.contains_key(key), "{key} missing");
    }
    let dtype = |n: &str| content.tensor_infos[n].ggml_dtype;
    let v = "git.image_encoder.vision_model.encoder.layers.0";
    assert_eq!(
        dtype(&format!("{v}.self_attn.q_proj.weight")),
        GgmlDType::Q8_0
    );
    assert_eq!(dtype(&format!("{v}.mlp.fc2.weight")), GgmlDType::Q8_0);
    assert_eq!(dtype(&format!("{v}.self_attn.q_proj.bias")), GgmlDType::F32);
    assert_eq!(
        dtype("git.image_encoder.vision_model.embeddings.patch_embedding.weight"),
        GgmlDType::F32
    );
    // The 64-wide ones (fc2: 32 × 64) store their blocks in pairs of one scale, which the
    // 32-wide ones cannot.
    let mut pairs_share_scales = |name: &str| {
        let q = content.tensor(&mut f, name, &Device::Cpu).unwrap();
        let data = q.data().unwrap();
        data.chunks_exact(68).all(|pair| pair[..2] == pair[34..36])
    };
    assert!(pairs_share_scales(&format!("{v}.mlp.fc2.weight")));
    assert!(!pairs_share_scales(&format!("{v}.mlp.fc1.weight")));
    // q4k's blocks of 256 fit nothing here: 32- and 64-wide rows fall back to q8_0.
    let (_, q4) = quantize(&model_dir("tiny-coco"), QuantType::Q4K);
    assert!(!q4.tensors.contains_key("q4k"));
    assert_eq!(q4.tensors.get("q8_0"), Some(&15));
    assert_eq!(q4.fallbacks.len(), 15 + summary.fallbacks.len());
}

/// Paired q8_0 is candle's q8_0 with the scale taken over 64 values: where both blocks of a pair
/// reach the same largest |x| the bytes are candle's; elsewhere both blocks take the scale of the
/// one with the larger values and every value is within half a step of it.
#[test]
fn paired_q8_0_is_candles_q8_0_with_the_scale_of_the_pair() {
    // Blocks of very different sizes side by side, and all-zero ones.
    let values: Vec<f32> = (0..64 * 40)
        .map(|i| (((i * 7919) % 211) as f32 / 50.0 - 2.0) * [1.0, 0.02, 3.0, 0.0, 0.5][i / 32 % 5])
        .collect();
    let mut equal = values.clone();
    for pair in equal.chunks_exact_mut(64) {
        let amax = pair.iter().fold(0f32, |m, x| m.max(x.abs()));
        pair[0] = amax;
        pair[32] = -amax;
    }
    let candle = |v: &[f32]| {
        let t = Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::Q8_0)
            .unwrap()
            .data()
            .unwrap()
            .into_owned()
    };
    let mut ours = Vec::new();
    encode_paired_q8_0(&equal, &mut ours);
    assert_eq!(ours, candle(&equal));

    let mut ours = Vec::new();
    encode_paired_q8_0(&values, &mut ours);
    let theirs = candle(&values);
    assert_eq!(ours.len(), theirs.len());
    let scale = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut differ = 0;
    for (p, (pair, candles)) in ours
        .chunks_exact(68)
        .zip(theirs.chunks_exact(68))
        .enumerate()
    {
        let (a, b) = (scale(&candles[..34]), scale(&candles[34..]));
        assert_eq!(scale(&pair[..34]), a.max(b), "pair {p}");
        assert_eq!(pair[..2], pair[34..36], "pair {p}");
        differ += usize::from(a != b);
        for (block, xs) in pair.chunks_exact(34).zip(values[p * 64..].chunks_exact(32)) {
            let d = scale(block);
            for (&q, &x) in block[2..].iter().zip(xs) {
                // Half a step, and the f16 rounding of the scale over up to 127 steps.
                let error = (d * f32::from(q as i8) - x).abs();
                assert!(error <= 0.5 * d + 127.0 * d * 1e-3 + 1e-7, "pair {p}: {x}");
            }
        }
    }
    assert!(
        differ > 10,
        "only {differ} pairs have blocks of different scales"
    );
}

#[test]
fn tied_word_embeddings_serve_as_the_lm_head() {
    // tiny-coco with tie_word_embeddings: transformers ignores output.weight and projects with the
    // word embeddings; the quantized model must do the same without storing a second table.
    let dir = Temp::new("tied");
    std::fs::create_dir_all(&dir.0).unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-coco")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.0.join(entry.file_name())).unwrap();
    }
    let config_path = dir.0.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["tie_word_embeddings"] = true.into();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();

    let reference = Reference::load("tiny-coco");
    let dense = load_dir(&dir.0, &Device::Cpu).unwrap();
    let (file, summary) = quantize(&dir.0, QuantType::F16);
    assert_eq!(summary.skipped, ["output.weight"]);
    let tied = load_gguf(&file.0, &Device::Cpu).unwrap();
    let (_, want) = features_and_logits(&dense, &reference);
    let (_, got) = features_and_logits(&tied, &reference);
    let err = rel_err(&got, &want);
    assert!(err < 1e-3, "tied LM head logits rel. error {err}");
}

#[test]
fn video_checkpoint_round_trips() {
    // tiny-vatex: several frames per clip and per-frame temporal embeddings (3-D tensors).
    let reference = Reference::load("tiny-vatex");
    let dense = load_dir(&model_dir("tiny-vatex"), &Device::Cpu).unwrap();
    let (file, _) = quantize(&model_dir("tiny-vatex"), QuantType::F16);
    let half = load_gguf(&file.0, &Device::Cpu).unwrap();
    assert_eq!(half.frames(), dense.frames());
    assert!(half.frames() > 1);
    let key = reference.cases()[0]["key"].as_str().unwrap().to_string();
    let pixels = reference.tensor(&format!("{key}.pixel_values"));
    let want = dense.model().encode_image(pixels).unwrap();
    let got = half.model().encode_image(pixels).unwrap();
    let err = rel_err(&got, &want);
    // f16 rounding (about 2e-4 per weight) grows through the layers of this large-weighted model.
    assert!(err < 3e-3, "video features rel. error {err}");
}

fn load_error(bytes: &[u8]) -> String {
    let err = match captioner_from_gguf(bytes, &Device::Cpu) {
        Ok(_) => panic!("loaded a bad GGUF"),
        Err(e) => e.to_string(),
    };
    // The file path gives the same verdict.
    let file = Temp::new("bad.gguf");
    std::fs::write(&file.0, bytes).unwrap();
    let file_err = match load_gguf(&file.0, &Device::Cpu) {
        Ok(_) => panic!("loaded a bad GGUF file"),
        Err(e) => e.to_string(),
    };
    let strip = |s: &str| s.replace(&file.0.display().to_string(), "the GGUF file");
    assert_eq!(strip(&file_err), err);
    err
}

/// A GGUF file with these metadata entries and one small f32 tensor.
fn gguf_with(metadata: &[(&str, Value)]) -> Vec<u8> {
    let t = QTensor::quantize(
        &Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let mut buf = std::io::Cursor::new(Vec::new());
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut buf, &meta, &[("token_embd.weight", &t)]).unwrap();
    buf.into_inner()
}

#[test]
fn truncated_corrupt_and_foreign_files_give_clear_errors() {
    let (file, _) = quantize(&model_dir("tiny-coco"), QuantType::Q8_0);
    let good = std::fs::read(&file.0).unwrap();
    assert!(inspect(&good).is_ok());

    // Truncated anywhere: in the tensor data (past the last tensor's padding of at most 31
    // bytes), in the metadata, in the header.
    for cut in [good.len() - 33, good.len() / 2, 2000, 100, 12, 3, 0] {
        let err = load_error(&good[..cut]);
        assert!(
            err.contains("truncated or corrupt"),
            "cut at {cut}: unclear error: {err}"
        );
    }
    // Not a GGUF file at all.
    let st = std::fs::read(model_dir("tiny-coco").join("model.safetensors")).unwrap();
    let err = load_error(&st);
    assert!(err.contains("not a GGUF file"), "{err}");
    // Damaged header: an absurd tensor count, an unknown value type.
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = load_error(&bad);
    assert!(err.contains("truncated or corrupt"), "{err}");
    let mut bad = good.clone();
    let key_len = u64::from_le_bytes(bad[24..32].try_into().unwrap()) as usize;
    bad[32 + key_len..36 + key_len].copy_from_slice(&0xdead_u32.to_le_bytes());
    let err = load_error(&bad);
    assert!(err.contains("truncated or corrupt"), "{err}");

    // A GGUF from elsewhere (a llama.cpp model, say).
    let foreign = gguf_with(&[("general.architecture", Value::String("llama".into()))]);
    let err = load_error(&foreign);
    assert!(
        err.contains("not a gitcap GGUF") && err.contains("gitcap.config_json"),
        "{err}"
    );
    assert!(err.contains("gitcap quantize"), "{err}");

    // gitcap metadata around a config that is not GIT.
    let bert = gguf_with(&[
        (keys::FORMAT_VERSION, Value::U32(FORMAT_VERSION)),
        (
            keys::CONFIG,
            Value::String(r#"{"model_type": "bert", "hidden_size": 16}"#.into()),
        ),
    ]);
    let err = load_error(&bert);
    assert!(err.contains("not GIT"), "{err}");

    // A file from a newer gitcap.
    let config = std::fs::read_to_string(model_dir("tiny-coco").join("config.json")).unwrap();
    let newer = gguf_with(&[
        (keys::FORMAT_VERSION, Value::U32(FORMAT_VERSION + 1)),
        (keys::CONFIG, Value::String(config.clone())),
    ]);
    let err = load_error(&newer);
    assert!(err.contains("update gitcap"), "{err}");

    // Right metadata, missing weights.
    let empty = gguf_with(&[
        (keys::FORMAT_VERSION, Value::U32(FORMAT_VERSION)),
        (keys::CONFIG, Value::String(config)),
        (
            keys::TOKENIZER,
            Value::String(
                std::fs::read_to_string(model_dir("tiny-coco").join("tokenizer.json")).unwrap(),
            ),
        ),
    ]);
    let err = load_error(&empty);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn quantize_needs_weights_and_writes_nothing_without_them() {
    let dir = Temp::new("no-weights");
    std::fs::create_dir_all(&dir.0).unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(model_dir("tiny-coco").join(name), dir.0.join(name)).unwrap();
    }
    let out = Temp::new("never.gguf");
    let err = quantize_checkpoint(&dir.0, &out.0, QuantType::Q8_0, "x", &mut |_| {})
        .expect_err("no weights")
        .to_string();
    assert!(err.contains("holds no weights"), "{err}");
    assert!(!out.0.exists());
    let mut partial = out.0.clone().into_os_string();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists());
}
