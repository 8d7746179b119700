//! Streaming safetensors loading (the browser's path) against the memory-mapped loader.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use gitcap::checkpoint::{load_dir, read_model_files};
use gitcap::image::{decode_image, ImageLimits};
use gitcap::model::Policy;
use gitcap::stream_load::SafetensorsStream;
use gitcap::{CaptionOptions, Captioner};

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-coco")
}

fn weights_bytes() -> Vec<u8> {
    std::fs::read(model_dir().join("model.safetensors")).unwrap()
}

fn caption_ids(captioner: &Captioner) -> Vec<u32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images/chelsea.png");
    let img = decode_image(&std::fs::read(path).unwrap(), &ImageLimits::default()).unwrap();
    captioner
        .caption(&[img], &CaptionOptions::default(), &mut |_| true)
        .unwrap()
        .token_ids
}

fn stream(bytes: &[u8], chunk: usize) -> SafetensorsStream {
    let mut s = SafetensorsStream::new();
    for c in bytes.chunks(chunk) {
        s.push(c).unwrap();
    }
    s
}

fn err_text<T>(r: gitcap::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn chunked_loading_matches_load_dir() {
    let reference = caption_ids(&load_dir(&model_dir(), &Device::Cpu).unwrap());
    let files = read_model_files(&model_dir()).unwrap();
    let bytes = weights_bytes();
    for chunk in [1, 7, 4096, 1 << 20] {
        let s = stream(&bytes, chunk);
        assert_eq!(s.expected_len(), Some(bytes.len() as u64));
        assert!(s.is_complete());
        let weights = s.finish(&Device::Cpu).unwrap();
        let captioner = Captioner::new(&files, &weights, Policy::default()).unwrap();
        assert_eq!(caption_ids(&captioner), reference, "chunk size {chunk}");
    }
}

#[test]
fn tensors_are_bit_identical_to_candle() {
    let bytes = weights_bytes();
    let want = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let got = stream(&bytes, 4093).finish_tensors().unwrap();
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.dims(), w.dims(), "{name}");
        let (g, w) = (flat(g), flat(w));
        assert!(
            g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn expected_len_known_after_header() {
    let bytes = weights_bytes();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut s = SafetensorsStream::new();
    s.push(&bytes[..8 + n - 1]).unwrap();
    assert_eq!(s.expected_len(), None);
    s.push(&bytes[8 + n - 1..8 + n]).unwrap();
    assert_eq!(s.expected_len(), Some(bytes.len() as u64));
}

#[test]
fn truncated_file_is_reported() {
    let bytes = weights_bytes();
    let cut = bytes.len() - 1000;
    let s = stream(&bytes[..cut], 65536);
    let msg = err_text(s.finish(&Device::Cpu));
    assert!(
        msg.contains(&format!(
            "the weights file is truncated: got {cut} of {} bytes",
            bytes.len()
        )),
        "{msg}"
    );
    // Cut inside the header, and inside the length.
    let msg = err_text(stream(&bytes[..100], 7).finish(&Device::Cpu));
    assert!(msg.contains("truncated"), "{msg}");
    let msg = err_text(stream(&bytes[..3], 1).finish(&Device::Cpu));
    assert!(msg.contains("truncated"), "{msg}");
    let msg = err_text(SafetensorsStream::new().finish(&Device::Cpu));
    assert!(msg.contains("truncated: got 0 bytes"), "{msg}");
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = weights_bytes();
    bytes.extend_from_slice(b"extra");
    let mut s = SafetensorsStream::new();
    let msg = err_text(s.push(&bytes));
    assert!(msg.contains("longer than its header says"), "{msg}");
    // The stream stays failed.
    assert!(err_text(s.finish(&Device::Cpu)).contains("longer than"));
}

#[test]
fn garbage_is_rejected() {
    // A JPEG's first bytes read as an absurd header length.
    let mut s = SafetensorsStream::new();
    let msg = err_text(s.push(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01"));
    assert!(msg.contains("is this really a safetensors file"), "{msg}");
    assert!(err_text(s.push(b"more")).contains("is this really"));

    let msg = err_text(feed(header_file("not json at all")));
    assert!(msg.contains("not valid JSON"), "{msg}");
    let msg = err_text(feed(header_file("[1, 2]")));
    assert!(msg.contains("not a JSON object"), "{msg}");
}

fn header_file(header: &str) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b
}

fn feed(bytes: Vec<u8>) -> gitcap::Result<SafetensorsStream> {
    let mut s = SafetensorsStream::new();
    for c in bytes.chunks(3) {
        s.push(c)?;
    }
    Ok(s)
}

#[test]
fn bad_offsets_and_dtypes_are_rejected() {
    let two = |a: &str, b: &str| {
        format!(
            r#"{{"a": {{"dtype": "F32", "shape": [2], "data_offsets": {a}}}, "b": {{"dtype": "F32", "shape": [2], "data_offsets": {b}}}}}"#
        )
    };
    let msg = err_text(feed(header_file(&two("[0, 8]", "[4, 12]"))));
    assert!(msg.contains("overlaps"), "{msg}");
    let msg = err_text(feed(header_file(&two("[0, 8]", "[12, 20]"))));
    assert!(msg.contains("hole"), "{msg}");
    let msg = err_text(feed(header_file(&two("[8, 0]", "[8, 16]"))));
    assert!(msg.contains("out of order"), "{msg}");
    let msg = err_text(feed(header_file(&two("[0, 8]", "[8, 20]"))));
    assert!(msg.contains("data_offsets span 12 bytes"), "{msg}");
    let msg = err_text(feed(header_file(
        r#"{"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}"#,
    )));
    assert!(
        msg.contains("tensor `x` as F8_E4M3, which gitcap does not support"),
        "{msg}"
    );
    let msg = err_text(feed(header_file(
        r#"{"x": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 4]}}"#,
    )));
    assert!(msg.contains("impossibly large"), "{msg}");
}

#[test]
fn half_precision_and_int_tensors() {
    // f16 [1.0, -2.0], bf16 [0.5, 3.0], an i64 buffer that is skipped, an empty f32 tensor.
    let header = r#"{"__metadata__": {"format": "pt"},
        "h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
        "b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]},
        "ids": {"dtype": "I64", "shape": [1, 2], "data_offsets": [8, 24]},
        "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [24, 24]}}"#;
    let mut bytes = header_file(header);
    for v in [half::f16::from_f32(1.0), half::f16::from_f32(-2.0)] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for v in [half::bf16::from_f32(0.5), half::bf16::from_f32(3.0)] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for v in [7i64, 9] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for chunk in [1, 3, 5, 1000] {
        let mut s = SafetensorsStream::new();
        for c in bytes.chunks(chunk) {
            s.push(c).unwrap();
        }
        assert_eq!(s.skipped(), ["ids".to_string()]);
        let t = s.finish_tensors().unwrap();
        assert_eq!(flat(&t["h"]), vec![1.0, -2.0]);
        assert_eq!(flat(&t["b"]), vec![0.5, 3.0]);
        assert_eq!(t["e"].dims(), &[0, 3]);
        assert_eq!(t["h"].dtype(), candle_core::DType::F32);
        assert!(!t.contains_key("ids"));
    }
}
