//! Accuracy and speed of quantized GGUF models against the f32 checkpoint they came from
//! (used by bench/quant_bench.sh; figures in bench/README-quant.md).
//!
//! ```text
//! cargo run --release --features native --example quant_error -- \
//!     errors CHECKPOINT_DIR IMAGE_DIR a.gguf [b.gguf ...]
//! cargo run --release --features native --example quant_error -- \
//!     time MODEL(DIR|.gguf) IMAGE_DIR [TOKENS]
//! ```
//!
//! `errors`: for every image, the relative error ‖q − f‖ / ‖f‖ of the projected image features and
//! of the final-step logits (the f32 model's 20-token greedy caption fed to both models), one JSON
//! object per model and image, then a summary line per model.
//!
//! `--paths a,b,...` (after `errors`) measures each model through each product path: `default`
//! (what the build does here), `candle` (candle's q8_0 kernels), `f32` (q8_0 weights expanded
//! into the f32 kernel: exact activations), `int8` (the integer kernel, activations per block of
//! 32 at ±127: also the relaxed SIMD page's where the engine's dot multiplies full bytes
//! exactly), `int8-row` (one activation scale per row), `int8-63` (the relaxed SIMD page's where
//! the engine's dot takes 7-bit x only: ±63 in the image encoder, ±127 in the text decoder),
//! `int8-63-everywhere` (±63 in both, the relaxed build before 2026-12-01).
//!
//! `time`: loads the model, then per image encodes it and generates exactly TOKENS (default 20)
//! greedy tokens (EOS ignored, so every type does the same work); prints one JSON line with the
//! load time, the median encode and decode times and the peak resident memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use gitcap::image::{decode_image, pixel_values, ImageLimits};
use gitcap::model::{Policy, TextCache};
use gitcap::Captioner;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn load(model: &Path) -> Result<Captioner> {
    let dev = Device::Cpu;
    Ok(if model.is_dir() {
        gitcap::checkpoint::load_dir(model, &dev)?
    } else {
        gitcap::checkpoint::load_gguf(model, &dev)?
    })
}

fn images(dir: &Path) -> Result<Vec<(String, image::RgbImage)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p)?;
        match decode_image(&bytes, &ImageLimits::default()) {
            Ok(img) => out.push((p.file_name().unwrap().to_string_lossy().into_owned(), img)),
            Err(e) => eprintln!("skipping {}: {e}", p.display()),
        }
    }
    Ok(out)
}

fn pixels(c: &Captioner, img: &image::RgbImage) -> Result<Tensor> {
    Ok(pixel_values(
        std::slice::from_ref(img),
        c.preprocessor(),
        &Device::Cpu,
    )?)
}

/// ‖a − b‖ / ‖b‖
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let norm = |t: &Tensor| -> Result<f64> {
        Ok(t.to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f64>()?)
    };
    Ok(norm(&(a - b)?)? / norm(b)?)
}

/// Greedy ids after [CLS]: `tokens` of them, EOS ignored.
fn greedy(c: &Captioner, features: &Tensor, tokens: usize) -> Result<Vec<u32>> {
    let model = c.model();
    let prefix = model.image_prefix(features)?;
    let mut cache = TextCache::new();
    let mut ids = vec![c.config().bos_token_id];
    for _ in 0..tokens {
        let last = Tensor::new(&[[*ids.last().unwrap()]], &Device::Cpu)?;
        let logits = model.next_logits(&last, &prefix, &mut cache)?;
        ids.push(logits.argmax(D::Minus1)?.squeeze(0)?.to_scalar::<u32>()?);
    }
    Ok(ids)
}

/// Logits at the last of `ids`, fed in one pass.
fn final_logits(c: &Captioner, features: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let model = c.model();
    let prefix = model.image_prefix(features)?;
    let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    Ok(model.next_logits(&t, &prefix, &mut TextCache::new())?)
}

/// The policy of one of `--paths`' names.
fn path_policy(path: &str) -> Result<Policy> {
    use gitcap::model::int8::Activations;
    let default = Policy::default();
    Ok(match path {
        "default" => default,
        "candle" => default.with_int8_min_rows(usize::MAX),
        "f32" => default
            .with_int8_min_rows(usize::MAX)
            .with_kernel_min_rows(8)
            .with_dequantize_min_rows(8),
        "int8" | "int8-row" | "int8-63" | "int8-63-everywhere" => {
            let image = Activations {
                levels: if path.starts_with("int8-63") { 63 } else { 127 },
                per_row: path == "int8-row",
            };
            // The text decoder keeps ±127 per block unless the path says otherwise (as the
            // relaxed SIMD page does on 7-bit engines, since ±63 there exceeded ONNX Runtime's
            // logits error).
            let text = match path {
                "int8-row" | "int8-63-everywhere" => image,
                _ => Activations::default(),
            };
            default
                .with_int8_min_rows(8)
                .with_int8_activations(image)
                .with_text_int8_activations(text)
        }
        _ => return Err(format!("unknown path {path}").into()),
    })
}

fn errors(checkpoint: &Path, image_dir: &Path, ggufs: &[PathBuf], paths: &[String]) -> Result<()> {
    let imgs = images(image_dir)?;
    let reference = load(checkpoint)?;
    let mut want = Vec::new();
    for (name, img) in &imgs {
        let px = pixels(&reference, img)?;
        let features = reference.model().encode_image(&px)?;
        let ids = greedy(&reference, &features, 20)?;
        let logits = final_logits(&reference, &features, &ids)?;
        eprintln!("f32 reference for {name} done");
        want.push((px, features, ids, logits));
    }
    drop(reference);
    for gguf in ggufs {
        let mut model = load(gguf)?;
        for path in paths {
            model.set_policy(path_policy(path)?);
            let (mut fe_max, mut le_max, mut fe_sum, mut le_sum) = (0f64, 0f64, 0f64, 0f64);
            let mut same_argmax = 0;
            for ((name, _), (px, features, ids, logits)) in imgs.iter().zip(&want) {
                let f = model.model().encode_image(px)?;
                let l = final_logits(&model, &f, ids)?;
                let greedy_same = greedy(&model, &f, ids.len() - 1)? == *ids;
                let fe = rel_err(&f, features)?;
                let le = rel_err(&l, logits)?;
                let argmax_same = l.argmax(D::Minus1)?.to_vec1::<u32>()?
                    == logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
                same_argmax += argmax_same as usize;
                println!(
                    "{}",
                    serde_json::json!({"model": gguf.display().to_string(), "path": path,
                    "image": name, "features_rel_err": fe, "logits_rel_err": le,
                    "same_argmax": argmax_same, "same_greedy_ids": greedy_same})
                );
                fe_max = fe_max.max(fe);
                le_max = le_max.max(le);
                fe_sum += fe;
                le_sum += le;
            }
            let n = imgs.len() as f64;
            println!(
                "{}",
                serde_json::json!({"model": gguf.display().to_string(), "path": path, "summary": true,
                "images": imgs.len(),
                "features_rel_err_mean": fe_sum / n, "features_rel_err_max": fe_max,
                "logits_rel_err_mean": le_sum / n, "logits_rel_err_max": le_max,
                "same_final_argmax": same_argmax})
            );
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Peak resident memory of this process so far (Linux), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn time(model: &Path, image_dir: &Path, tokens: usize) -> Result<()> {
    let imgs = images(image_dir)?;
    let t0 = Instant::now();
    let c = load(model)?;
    let load_s = t0.elapsed().as_secs_f64();
    let (mut enc, mut dec, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for (name, img) in &imgs {
        let t0 = Instant::now();
        let px = pixels(&c, img)?;
        let features = c.model().encode_image(&px)?;
        let t1 = Instant::now();
        let ids = greedy(&c, &features, tokens)?;
        let t2 = Instant::now();
        eprintln!(
            "{name}: encode {:.0} ms, {tokens} tokens {:.0} ms ({} …)",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            c.tokenizer().decode(&ids[1..6.min(ids.len())])?
        );
        enc.push((t1 - t0).as_secs_f64());
        dec.push((t2 - t1).as_secs_f64());
        total.push((t2 - t0).as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({"model": model.display().to_string(), "images": imgs.len(),
            "tokens": tokens, "load_s": load_s,
            "encode_s_median": median(enc), "decode_s_median": median(dec),
            "caption_s_median": median(total), "peak_rss_mb": peak_rss_mb()})
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: quant_error errors [--paths a,b] CHECKPOINT_DIR IMAGE_DIR a.gguf [...]\n       \
                 quant_error time MODEL IMAGE_DIR [TOKENS]";
    match args.first().map(String::as_str) {
        Some("errors") if args.len() >= 4 => {
            let (paths, rest) = match args.get(1).map(String::as_str) {
                Some("--paths") if args.len() >= 6 => {
                    (args[2].split(',').map(str::to_owned).collect(), &args[3..])
                }
                _ => (vec!["default".to_owned()], &args[1..]),
            };
            let ggufs: Vec<PathBuf> = rest[2..].iter().map(PathBuf::from).collect();
            errors(Path::new(&rest[0]), Path::new(&rest[1]), &ggufs, &paths)
        }
        Some("time") if args.len() >= 3 => {
            let tokens = match args.get(3) {
                Some(t) => t.parse()?,
                None => 20,
            };
            time(Path::new(&args[1]), Path::new(&args[2]), tokens)
        }
        _ => Err(usage.into()),
    }
}
