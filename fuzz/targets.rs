//! The bodies of gitcap's fuzz targets, one function per target. Shared by the libFuzzer
//! binaries (`fuzz/fuzz_targets/*.rs`, `cargo +nightly fuzz run NAME`) and by the native test
//! `tests/native/fuzz_corpus.rs`, which replays the committed corpus and every input that once
//! crashed on stable Rust, in CI.
//!
//! A target fails by panicking: gitcap must answer any input with a value or an `Err`. Beyond
//! that, each checks what must hold of whatever it accepted, so that a wrong answer is caught
//! as well as a crash.

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::Device;
use gitcap::image::{decode_image, preprocess, ImageLimits, PreprocessorConfig};
use gitcap::model::config::{GenerationConfig, GitConfig};
use gitcap::stream_load::SafetensorsStream;
use gitcap::tokenizer::{CaptionTokenizer, TextStream};

/// Every target's name, for the corpus replay; `run` dispatches on it.
pub const TARGETS: [&str; 6] = [
    "image_decode",
    "safetensors_stream",
    "gguf",
    "pickle",
    "configs",
    "tokenizer",
];

pub fn run(target: &str, data: &[u8]) {
    match target {
        "image_decode" => image_decode(data),
        "safetensors_stream" => safetensors_stream(data),
        "gguf" => gguf(data),
        "pickle" => pickle(data),
        "configs" => configs(data),
        "tokenizer" => tokenizer(data),
        other => panic!("no fuzz target named {other}"),
    }
}

/// Limits small enough that libFuzzer's 2 GB RSS limit is never the first thing to fail, and
/// large enough for every seed.
fn limits() -> ImageLimits {
    ImageLimits {
        max_width: 4096,
        max_height: 4096,
        max_pixels: 4_000_000,
        max_alloc: 64 * 1024 * 1024,
    }
}

/// Every format `decode_image` accepts (gitcap's own JPEG decoder first among them), then the
/// preprocessing the model's input goes through.
pub fn image_decode(data: &[u8]) {
    let limits = limits();
    let Ok(img) = decode_image(data, &limits) else {
        return;
    };
    let (w, h) = img.dimensions();
    assert!(w >= 1 && h >= 1, "decoded an empty {w}x{h} image");
    assert!(
        u64::from(w) * u64::from(h) <= limits.max_pixels
            && w.max(h) <= limits.max_width.max(limits.max_height),
        "decoded {w}x{h}, beyond the limits"
    );
    assert_eq!(img.as_raw().len(), w as usize * h as usize * 3);
    // A small model input keeps each run fast; the resampler sees every aspect ratio anyway.
    let cfg = PreprocessorConfig::clip(16);
    let values = preprocess(&img, &cfg);
    assert_eq!(values.len(), 3 * 16 * 16);
    assert!(values.iter().all(|v| v.is_finite()));
}

/// A safetensors file received in chunks of arbitrary sizes, as the page receives a download:
/// the first byte chooses the chunk sizes. Whatever is accepted must equal what the same bytes
/// pushed in one piece give.
pub fn safetensors_stream(data: &[u8]) {
    let Some((&seed, file)) = data.split_first() else {
        return;
    };
    let mut stream = SafetensorsStream::new();
    let mut rest = file;
    let mut state = u32::from(seed) | 1;
    let mut failed = false;
    while !rest.is_empty() {
        // xorshift: chunks of 1 to 64 bytes, some of them empty pushes
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 65) as usize;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        if stream.push(chunk).is_err() {
            failed = true;
            break;
        }
        rest = tail;
    }
    let chunked = if failed {
        None
    } else {
        stream.finish_tensors().ok()
    };

    let mut whole = SafetensorsStream::new();
    let at_once = match whole.push(file) {
        Ok(()) => whole.finish_tensors().ok(),
        Err(_) => None,
    };
    match (chunked, at_once) {
        (Some(a), Some(b)) => assert_same_tensors(&a, &b),
        (None, None) => {}
        (a, b) => panic!(
            "chunked and whole pushes disagree: chunked ok {}, whole ok {}",
            a.is_some(),
            b.is_some()
        ),
    }
}

fn assert_same_tensors(
    a: &HashMap<String, candle_core::Tensor>,
    b: &HashMap<String, candle_core::Tensor>,
) {
    assert_eq!(a.len(), b.len());
    for (name, t) in a {
        let u = &b[name];
        assert_eq!(t.dims(), u.dims(), "{name}");
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = u.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name}: chunked and whole values differ"
        );
    }
}

/// A gitcap GGUF file held in memory (the page's path): its description, then the whole model.
pub fn gguf(data: &[u8]) {
    let info = gitcap::gguf::inspect(data);
    let model = gitcap::gguf::captioner_from_gguf(data, &Device::Cpu);
    if model.is_ok() {
        assert!(info.is_ok(), "a model loaded from a file inspect() rejects");
    }
}

/// A PyTorch checkpoint (a zip holding a pickle and its storages), as the CLI reads
/// `pytorch_model.bin`: gitcap's check of the pickle against its storages, then candle's reader,
/// which must then never be asked for more bytes than the file holds.
pub fn pickle(data: &[u8]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "gitcap-fuzz-{}-{}.bin",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, data).expect("the temporary folder is writable");
    let loaded = gitcap::weights::check_pytorch(&path)
        .ok()
        .map(|_| candle_core::pickle::read_all(&path));
    let _ = std::fs::remove_file(&path);
    if let Some(Ok(tensors)) = loaded {
        for (name, t) in tensors {
            let bytes = t.elem_count() * t.dtype().size_in_bytes();
            assert!(
                bytes <= data.len(),
                "{name}: {bytes} bytes from a {}-byte file",
                data.len()
            );
        }
    }
}

/// The JSON files of a checkpoint; the first byte chooses which parser reads the rest.
pub fn configs(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(cfg) = GitConfig::from_json(json) {
                // What the model derives from an accepted config must not overflow or divide by 0.
                let v = &cfg.vision_config;
                assert!(cfg.head_dim() * cfg.num_attention_heads == cfg.hidden_size);
                assert!(v.hidden_size % v.num_attention_heads == 0);
                let tokens = cfg.image_tokens();
                assert!(tokens > 1 && tokens.checked_mul(cfg.hidden_size).is_some());
                assert!(cfg.layer_norm_eps > 0.0 && v.layer_norm_eps > 0.0);
                for id in std::iter::once(cfg.bos_token_id).chain(cfg.eos_token_id.ids()) {
                    assert!(
                        (id as usize) < cfg.vocab_size,
                        "token id {id} outside the vocabulary"
                    );
                }
            }
        }
        1 => {
            let _ = GenerationConfig::from_json(json);
        }
        2 => {
            if let Ok(cfg) = PreprocessorConfig::from_json(json) {
                let (h, w) = cfg.output_size();
                assert!(h >= 1 && w >= 1);
                for (iw, ih) in [(1, 1), (3, 700), (4096, 2)] {
                    let (rw, rh) = cfg.resized_size(iw, ih);
                    assert!(
                        !cfg.do_resize || (rw >= 1 && rh >= 1),
                        "{iw}x{ih} resized to {rw}x{rh}"
                    );
                }
            }
        }
        3 => {
            if let Ok(t) = CaptionTokenizer::from_tokenizer_json(json) {
                let _ = t.decode(&[0, 1, 2, 101, 102, 1000]);
                let _ = t.encode_prompt("a photo of");
            }
        }
        _ => {
            if let Ok(t) = CaptionTokenizer::from_vocab_txt(json) {
                let _ = t.decode(&[0, 1, 2, 101, 102, 1000]);
                let _ = t.encode_prompt("a photo of");
            }
        }
    }
}

fn bert_tokenizer() -> &'static CaptionTokenizer {
    static TOKENIZER: OnceLock<CaptionTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        CaptionTokenizer::from_vocab_txt(include_bytes!("../tests/fixtures/vocab.txt"))
            .expect("the fixture vocabulary loads")
    })
}

/// Decoding arbitrary ids (two bytes each, so that about half lie outside the 30522-token
/// vocabulary) with the real GIT vocabulary: streamed fragments must concatenate to the text
/// decoded at once, and the text must encode again.
pub fn tokenizer(data: &[u8]) {
    let tokenizer = bert_tokenizer();
    let ids: Vec<u32> = data
        .chunks_exact(2)
        .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    let text = tokenizer.decode(&ids).expect("decoding never fails");
    let mut stream = TextStream::new();
    let mut streamed = String::new();
    for &id in &ids {
        if let Some(fragment) = stream.push(tokenizer, id).expect("streaming never fails") {
            streamed.push_str(&fragment);
        }
    }
    if let Some(fragment) = stream.finish(tokenizer).expect("streaming never fails") {
        streamed.push_str(&fragment);
    }
    assert_eq!(
        streamed, text,
        "streamed fragments differ from the decoded text"
    );
    let _ = tokenizer.encode_prompt(&text);
}
