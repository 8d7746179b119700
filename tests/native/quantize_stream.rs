//! Converting a safetensors download to GGUF as it arrives (`QuantizeStream`): the bytes equal
//! `gitcap quantize`'s whatever the chunking, equal what candle's own GGUF writer makes of the
//! same tensors, survive a resume at any chunk boundary, and bad input gives clear errors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use gitcap::captioner::ModelFiles;
use gitcap::checkpoint::read_model_files;
use gitcap::gguf::{captioner_from_gguf, keys, placement, QuantType, FORMAT_VERSION};
use gitcap::quantize::{encode_paired_q8_0, quantize_checkpoint};
use gitcap::quantize_stream::QuantizeStream;

use crate::common::{model_dir, TempDir};

const NAME: &str = "tiny-coco";

fn files(dir: &Path) -> ModelFiles {
    read_model_files(dir).unwrap()
}

/// What `gitcap quantize` writes for `dir`.
fn cli_bytes(dir: &Path, t: QuantType) -> Vec<u8> {
    let tmp = TempDir::new("qs-cli");
    let out = tmp.0.join("out.gguf");
    let summary = quantize_checkpoint(dir, &out, t, NAME, &mut |_| {}).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(summary.file_bytes, bytes.len() as u64);
    bytes
}

/// An independent writer: the tensors loaded whole by candle, each quantized whole by
/// `QTensor::quantize` (the image encoder's q8_0 matrices by `encode_paired_q8_0`, tested against
/// candle's quantizer in tests/native/quantize.rs) and written in the source file's order by candle's `gguf_file::write`,
/// with the metadata the format (src/gguf.rs) prescribes.
fn candle_bytes(dir: &Path, t: QuantType) -> Vec<u8> {
    let path = dir.join("model.safetensors");
    let raw = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let mut order: Vec<(u64, String)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (v["data_offsets"][0].as_u64().unwrap(), k.clone()))
        .collect();
    order.sort();
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut q = Vec::new();
    let mut fallbacks = Vec::new();
    for (_, name) in order {
        let tensor = &tensors[&name];
        if !tensor.dtype().is_float() {
            continue;
        }
        let p = placement(&name, tensor.dims(), t);
        if p.fallback {
            fallbacks.push(Value::String(format!(
                "{name}={}",
                gitcap::gguf::dtype_name(p.dtype)
            )));
        }
        let values = tensor.to_dtype(DType::F32).unwrap();
        let qt = if p.paired {
            let mut bytes = Vec::new();
            let flat = values.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            encode_paired_q8_0(&flat, &mut bytes);
            let storage = QStorage::from_data(bytes.into(), &Device::Cpu, GgmlDType::Q8_0).unwrap();
            QTensor::new(storage, values.dims()).unwrap()
        } else {
            QTensor::quantize(&values, p.dtype).unwrap()
        };
        q.push((name, qt));
    }
    let f = files(dir);
    let s = |b: &Vec<u8>| Value::String(String::from_utf8(b.clone()).unwrap());
    let mut meta = vec![
        (keys::ARCHITECTURE, Value::String("git".into())),
        (keys::NAME, Value::String(NAME.into())),
        (keys::FORMAT_VERSION, Value::U32(FORMAT_VERSION)),
        (keys::QUANT_TYPE, Value::String(t.name().into())),
        (keys::CONFIG, s(&f.config)),
    ];
    for (k, v) in [
        (keys::GENERATION_CONFIG, &f.generation_config),
        (keys::PREPROCESSOR_CONFIG, &f.preprocessor_config),
        (keys::TOKENIZER, &f.tokenizer_json),
        (keys::TOKENIZER_CONFIG, &f.tokenizer_config),
        (keys::VOCAB, &f.vocab_txt),
    ] {
        if let Some(v) = v {
            meta.push((k, s(v)));
        }
    }
    meta.push((keys::FALLBACK_TENSORS, Value::Array(fallbacks)));
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &meta, &tensors).unwrap();
    buf.into_inner()
}

/// The stream's output for `source` fed in chunks of `chunk` bytes.
fn streamed(dir: &Path, t: QuantType, source: &[u8], chunk: usize) -> Vec<u8> {
    let mut s = QuantizeStream::new(files(dir), t, NAME).unwrap();
    let mut out = Vec::new();
    for c in source.chunks(chunk) {
        s.push_into(c, &mut out).unwrap();
    }
    assert_eq!(s.emitted(), out.len() as u64);
    assert_eq!(s.output_len(), Some(out.len() as u64));
    let summary = s.finish().unwrap();
    assert_eq!(summary.file_bytes, out.len() as u64);
    out
}

fn same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn stream_writes_gitcap_quantize_bytes_in_any_chunking() {
    let dir = model_dir("tiny-coco");
    let source = std::fs::read(dir.join("model.safetensors")).unwrap();
    for t in QuantType::ALL {
        let cli = cli_bytes(&dir, t);
        same(
            &cli,
            &candle_bytes(&dir, t),
            &format!("{t}: gitcap quantize vs candle's writer"),
        );
        for chunk in [1, 7, 4096, source.len()] {
            if chunk == 1 && t != QuantType::Q8_0 {
                continue; // byte by byte is slow; one type suffices
            }
            same(
                &streamed(&dir, t, &source, chunk),
                &cli,
                &format!("{t}, chunks of {chunk}"),
            );
        }
    }
}

/// Runs the stream over `source` in chunks of `chunk`, saving the state after every chunk and
/// continuing from a stream resumed from it; returns the output.
fn resumed_everywhere(dir: &Path, t: QuantType, source: &[u8], chunk: usize) -> Vec<u8> {
    let mut s = QuantizeStream::new(files(dir), t, NAME).unwrap();
    let mut out = Vec::new();
    let mut max_state = 0;
    for c in source.chunks(chunk) {
        s.push_into(c, &mut out).unwrap();
        let state = s.state().unwrap();
        let r = QuantizeStream::resume(&state).unwrap();
        assert_eq!((r.received(), r.emitted()), (s.received(), s.emitted()));
        assert_eq!(r.emitted(), out.len() as u64);
        assert_eq!(
            r.state().unwrap(),
            state,
            "a resumed stream saves the same state"
        );
        if s.output_len().is_some() {
            max_state = max_state.max(state.len());
        }
        s = r;
    }
    s.finish().unwrap();
    // Past the header, the state is the source header plus a few hundred bytes at most.
    let n = u64::from_le_bytes(source[..8].try_into().unwrap()) as usize;
    assert!(max_state < n + 1200, "state of {max_state} bytes");
    out
}

#[test]
fn resume_at_every_chunk_boundary_gives_the_same_bytes() {
    let dir = model_dir("tiny-coco");
    let source = std::fs::read(dir.join("model.safetensors")).unwrap();
    let cli = cli_bytes(&dir, QuantType::Q8_0);
    same(
        &resumed_everywhere(&dir, QuantType::Q8_0, &source, 4096),
        &cli,
        "q8_0 resumed every 4096 bytes",
    );
    // Small odd chunks through the length, the header and the first tensors (elements split
    // across chunks, incomplete blocks), then the rest in one piece.
    let head = 16_000;
    let mut s = QuantizeStream::new(files(&dir), QuantType::Q8_0, NAME).unwrap();
    let mut out = Vec::new();
    for c in source[..head].chunks(7) {
        s.push_into(c, &mut out).unwrap();
        s = QuantizeStream::resume(&s.state().unwrap()).unwrap();
    }
    s.push_into(&source[head..], &mut out).unwrap();
    s.finish().unwrap();
    same(&out, &cli, "q8_0 resumed every 7 bytes of the first 16 KB");
    let q4 = cli_bytes(&dir, QuantType::Q4K);
    same(
        &resumed_everywhere(&dir, QuantType::Q4K, &source, 1000),
        &q4,
        "q4k resumed every 1000 bytes",
    );
}

/// tiny-coco's weights re-saved as `dtype`, with an integer buffer (position_ids) added.
fn converted_copy(dtype: DType) -> TempDir {
    let tmp = TempDir::with_model_files("qs-dtype", "tiny-coco", false);
    let tensors = candle_core::safetensors::load(
        model_dir("tiny-coco").join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut out: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    out.insert(
        "git.embeddings.position_ids".into(),
        Tensor::arange(0i64, 64, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
    );
    candle_core::safetensors::save(&out, tmp.0.join("model.safetensors")).unwrap();
    tmp
}

#[test]
fn f16_and_bf16_sources_and_integer_buffers() {
    for dtype in [DType::F16, DType::BF16] {
        let dir = converted_copy(dtype);
        let source = std::fs::read(dir.0.join("model.safetensors")).unwrap();
        let cli = cli_bytes(&dir.0, QuantType::Q8_0);
        same(
            &cli,
            &candle_bytes(&dir.0, QuantType::Q8_0),
            &format!("{dtype:?} source"),
        );
        for chunk in [7, 4096] {
            same(
                &streamed(&dir.0, QuantType::Q8_0, &source, chunk),
                &cli,
                &format!("{dtype:?} in chunks of {chunk}"),
            );
        }
        same(
            &resumed_everywhere(&dir.0, QuantType::Q8_0, &source, 3000),
            &cli,
            &format!("{dtype:?} resumed"),
        );
        let s = {
            let mut s = QuantizeStream::new(files(&dir.0), QuantType::Q8_0, NAME).unwrap();
            s.push(&source).unwrap();
            s.finish().unwrap()
        };
        assert_eq!(s.skipped, ["git.embeddings.position_ids"]);
        // The file loads and captions.
        captioner_from_gguf(&cli, &Device::Cpu).unwrap();
    }
}

fn stream_error(source: &[u8]) -> String {
    let dir = model_dir("tiny-coco");
    let mut s = QuantizeStream::new(files(&dir), QuantType::Q8_0, NAME).unwrap();
    match s.push(source) {
        Err(e) => {
            let msg = e.to_string();
            // A dead stream keeps saying so.
            assert_eq!(s.push(b"more").unwrap_err().to_string(), msg);
            assert!(s.state().is_err());
            msg
        }
        Ok(_) => s.finish().expect_err("bad stream finished").to_string(),
    }
}

fn safetensors_with(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.resize(v.len() + data_len, 0);
    v
}

#[test]
fn truncated_corrupt_and_hostile_streams_give_clear_errors() {
    let dir = model_dir("tiny-coco");
    let source = std::fs::read(dir.join("model.safetensors")).unwrap();
    for cut in [0, 5, 100, 9000, source.len() / 2, source.len() - 1] {
        let err = stream_error(&source[..cut]);
        assert!(err.contains("truncated"), "cut at {cut}: {err}");
    }
    let mut longer = source.clone();
    longer.push(0);
    assert!(stream_error(&longer).contains("longer than its header"));
    let mut bad = source.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(stream_error(&bad).contains("header claims"));
    let mut bad = source.clone();
    bad[8] = b'[';
    assert!(stream_error(&bad).contains("not valid JSON"));
    // Shapes whose byte counts overflow u64, and ones that fit u64 but not wasm's 32-bit usize
    // (a stream never allocates by them: it plans, then fails as truncated).
    let err = stream_error(&safetensors_with(
        r#"{"a.weight":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}"#,
        0,
    ));
    assert!(err.contains("impossibly large"), "{err}");
    let huge = 1u64 << 40;
    let err = stream_error(&safetensors_with(
        &format!(
            r#"{{"x.weight":{{"dtype":"F32","shape":[{huge},64],"data_offsets":[0,{}]}}}}"#,
            huge * 256
        ),
        64,
    ));
    assert!(err.contains("truncated"), "{err}");
    // An empty float tensor cannot be stored.
    let err = stream_error(&safetensors_with(
        r#"{"x.bias":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#,
        0,
    ));
    assert!(err.contains("no values"), "{err}");
    // A config that is not GIT is refused before any byte.
    let mut f = files(&dir);
    f.config = br#"{"model_type": "bert"}"#.to_vec();
    assert!(QuantizeStream::new(f, QuantType::Q8_0, NAME).is_err());
    let mut f = files(&dir);
    f.tokenizer_json = None;
    let err = QuantizeStream::new(f, QuantType::Q8_0, NAME)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn damaged_states_are_refused() {
    let dir = model_dir("tiny-coco");
    let source = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut s = QuantizeStream::new(files(&dir), QuantType::Q8_0, NAME).unwrap();
    s.push(&source[..20_000]).unwrap();
    let state = s.state().unwrap();
    for i in [0, 4, 9, state.len() / 2, state.len() - 1] {
        let mut bad = state.clone();
        bad[i] ^= 1;
        let err = QuantizeStream::resume(&bad)
            .err()
            .expect("damaged")
            .to_string();
        assert!(err.contains("state is damaged"), "byte {i}: {err}");
    }
    for cut in [0, 3, 20, state.len() - 9] {
        let err = QuantizeStream::resume(&state[..cut])
            .err()
            .expect("cut")
            .to_string();
        assert!(err.contains("damaged"), "cut {cut}: {err}");
    }
}

/// Each tensor's type, shape and data bytes in a GGUF file, by name.
fn gguf_tensors(bytes: &[u8]) -> HashMap<String, (String, Vec<usize>, Vec<u8>)> {
    let content = gguf_file::Content::read(&mut std::io::Cursor::new(bytes)).unwrap();
    content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let elems = info.shape.elem_count();
            let len = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            let at = content.tensor_data_offset as usize + info.offset as usize;
            (
                name.clone(),
                (
                    format!("{:?}", info.ggml_dtype),
                    info.shape.dims().to_vec(),
                    bytes[at..at + len].to_vec(),
                ),
            )
        })
        .collect()
}

#[test]
fn a_sharded_checkpoint_gives_the_single_files_tensors() {
    // Sharded checkpoints are read tensor by tensor (not streamed); their tensors must still be
    // the single file's, converted alike.
    let dir = TempDir::with_model_files("qs-sharded", "tiny-coco", false);
    let tensors = candle_core::safetensors::load(
        model_dir("tiny-coco").join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let t: HashMap<&str, Tensor> = part
            .iter()
            .map(|n| (n.as_str(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&t, dir.0.join(shard)).unwrap();
        for n in part.iter() {
            map.insert((*n).clone(), shard.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        dir.0.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let sharded = cli_bytes(&dir.0, QuantType::Q8_0);
    let single = cli_bytes(&model_dir("tiny-coco"), QuantType::Q8_0);
    assert_eq!(sharded.len(), single.len());
    assert_eq!(gguf_tensors(&sharded), gguf_tensors(&single));
}
