//! Image decoding and preprocessing against the transformers/Pillow reference.
//!
//! Fixtures come from `tests/gen_image_fixtures.py` (see its docstring); source images live in
//! `tests/images/`, plus any listed in the fixture index but not committed, which are looked up
//! in `$GITCAP_SHARED_IMAGES` (default `/work/shared/images`) and skipped when absent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use gitcap::image::{
    decode_image, pixel_values, preprocess, resize_and_crop, resize_pil, rgba_to_rgb, ImageLimits,
    PreprocessorConfig, Resample, ResizeTo,
};
use image::RgbImage;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn fixtures() -> PathBuf {
    root().join("fixtures/images")
}

fn index() -> Value {
    let text = std::fs::read(fixtures().join("index.json")).expect("fixture index.json");
    serde_json::from_slice(&text).unwrap()
}

fn find_source(name: &str) -> Option<PathBuf> {
    let shared =
        std::env::var("GITCAP_SHARED_IMAGES").unwrap_or_else(|_| "/work/shared/images".to_string());
    [root().join("images"), PathBuf::from(shared)]
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn decode_file(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap();
    decode_image(&bytes, &ImageLimits::default())
        .unwrap_or_else(|e| panic!("decoding {}: {e}", path.display()))
}

/// A fixture PNG as RGB, read with the image crate directly (not the code under test).
fn read_png(rel: &str) -> RgbImage {
    image::load_from_memory(&std::fs::read(fixtures().join(rel)).unwrap())
        .unwrap()
        .to_rgb8()
}

fn read_f32(rel: &str) -> Vec<f32> {
    std::fs::read(fixtures().join(rel))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn config(rel: &str) -> PreprocessorConfig {
    PreprocessorConfig::from_json(&std::fs::read(fixtures().join(rel)).unwrap()).unwrap()
}

/// (max abs difference, mean abs difference, count of differing values)
fn u8_diff(a: &RgbImage, b: &RgbImage) -> (u8, f64, usize) {
    assert_eq!(a.dimensions(), b.dimensions(), "dimensions differ");
    let mut max = 0u8;
    let mut sum = 0u64;
    let mut n = 0usize;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
        n += usize::from(d > 0);
    }
    (max, sum as f64 / a.as_raw().len() as f64, n)
}

fn f32_diff(a: &[f32], b: &[f32]) -> (f32, f64) {
    assert_eq!(a.len(), b.len());
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, sum / a.len() as f64)
}

#[test]
fn reference_is_the_expected_processor() {
    let idx = index();
    println!(
        "fixtures from transformers {} / Pillow {}: {}",
        idx["transformers"], idx["pillow"], idx["processor_class"]
    );
    assert!(idx["processor_class"]["clip"]
        .as_str()
        .unwrap()
        .starts_with("CLIPImageProcessor"));
}

#[test]
fn resize_matches_pillow() {
    let clip = config("clip_config.json");
    let videomae = config("videomae_config.json");
    let mut checked = 0;
    for entry in index()["images"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let Some(src) = find_source(name) else {
            println!("{name}: source not available, skipped");
            continue;
        };
        let img = decode_file(&src);
        let size: Vec<u32> = serde_json::from_value(entry["source_size"].clone()).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (size[0], size[1]),
            "{name}: decoded size"
        );

        for (key, cfg) in [("resized", &clip), ("resized_bilinear", &videomae)] {
            let Some(rel) = entry[key].as_str() else {
                continue;
            };
            let expected = read_png(rel);
            let (w, h) = cfg.resized_size(img.width(), img.height());
            let ours = resize_pil(&img, w, h, cfg.resample).unwrap();
            let (max, mean, n) = u8_diff(&ours, &expected);
            println!(
                "{name:32} {:?} {}x{}: max |diff| {max}, mean {mean:.5}, {n} of {} values differ",
                cfg.resample,
                w,
                h,
                expected.as_raw().len()
            );
            // The resampler is a port of Pillow's: the same integer arithmetic, the same bytes.
            assert_eq!(max, 0, "{name}: resized u8 differs from PIL by {max}");
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} images checked");
}

#[test]
fn every_filter_matches_pillow() {
    let base = read_png("decode/base.png");
    for entry in index()["filters"].as_array().unwrap() {
        let rel = entry["file"].as_str().unwrap();
        let code = entry["resample"].as_i64().unwrap();
        let expected = read_png(rel);
        let filter = Resample::from_pil(code).unwrap();
        assert_eq!(filter.pil_code() as i64, code);
        let ours = resize_pil(&base, expected.width(), expected.height(), filter).unwrap();
        let (max, mean, _) = u8_diff(&ours, &expected);
        println!("{rel:28} {filter:?}: max |diff| {max}, mean {mean:.4}");
        assert_eq!(max, 0, "{rel}");
    }
}

#[test]
fn pixel_values_match_reference() {
    let device = Device::Cpu;
    let mut checked = 0;
    for entry in index()["images"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        for (key, cfg_file) in [
            ("pv_clip", "clip_config.json"),
            ("pv_videomae", "videomae_config.json"),
        ] {
            let Some(rel) = entry[key].as_str() else {
                continue;
            };
            let src = find_source(name).expect("pixel_values fixtures use committed images");
            let cfg = config(cfg_file);
            let img = decode_file(&src);
            let expected = read_f32(rel);
            let ours = preprocess(&img, &cfg);
            let (max, mean) = f32_diff(&ours, &expected);
            println!("{name:32} {key:12}: max |diff| {max:.3e}, mean {mean:.3e}");
            // Rescale and normalize in the order and precision of transformers' processors
            // (f32, as numpy computes them), so the values are not just close but equal.
            assert_eq!(max, 0.0, "{name} {key}: max abs diff {max}");

            // the batched tensor holds the same values
            let t = pixel_values(&[img.clone(), img], &cfg, &device).unwrap();
            assert_eq!(t.dims(), &[2, 3, 224, 224]);
            let second: Vec<f32> = t.get(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(second, ours);
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
}

#[test]
fn exif_rotated_chelsea_matches_png() {
    let png = decode_file(&root().join("images/chelsea.png"));
    let jpg = decode_file(&root().join("images/chelsea_exif_orientation6.jpg"));
    // stored 300x451, displayed (after orientation 6) 451x300
    assert_eq!(jpg.dimensions(), png.dimensions());
    let (max, mean, _) = u8_diff(&jpg, &png);
    println!("chelsea JPEG (EXIF 6) vs PNG decoded: max |diff| {max}, mean {mean:.3}");
    assert!(mean < 3.0, "mean abs diff {mean}: orientation wrong?");

    let cfg = PreprocessorConfig::default();
    let a = preprocess(&png, &cfg);
    let b = preprocess(&jpg, &cfg);
    let (max, mean) = f32_diff(&a, &b);
    println!("chelsea JPEG (EXIF 6) vs PNG pixel_values: max |diff| {max:.3}, mean {mean:.4}");
    assert!(mean < 0.02, "mean abs diff {mean}");

    // the un-rotated image would be far off: check the rotation is what makes them agree
    let unrotated = image::imageops::rotate270(&jpg);
    let c = preprocess(&unrotated, &cfg);
    let (_, mean_wrong) = f32_diff(&a, &c);
    assert!(mean_wrong > 10.0 * mean, "{mean_wrong} vs {mean}");
}

#[test]
fn decode_matches_pillow_for_formats_and_orientations() {
    let base = read_png("decode/base.png");
    for entry in index()["decode"].as_array().unwrap() {
        let rel = entry["file"].as_str().unwrap();
        let kind = entry["kind"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(rel)).unwrap();
        let ours =
            decode_image(&bytes, &ImageLimits::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let expected = read_png(&format!("{rel}.expected.png"));
        let (max, mean, _) = u8_diff(&ours, &expected);
        println!("{rel:28} {kind:28}: max |diff| vs Pillow {max}, mean {mean:.3}");
        if rel == "decode/jpeg_cmyk.jpg" {
            // CMYK is not src/image/jpeg.rs's: the `image` crate (zune-jpeg) decodes it, and its
            // CMYK -> RGB conversion rounds differently from Pillow's by a level (measured: max 1,
            // mean 0.007).
            assert!(max <= 1 && mean < 0.05, "{rel}: max {max}, mean {mean}");
        } else {
            // Every other JPEG goes through gitcap's libjpeg-turbo port: bit-identical to Pillow,
            // like the lossless formats.
            assert_eq!(max, 0, "{rel}: must match Pillow exactly (mean {mean})");
        }
        if rel.starts_with("decode/orient_") {
            assert_eq!(ours.dimensions(), base.dimensions(), "{rel}: orientation");
            let (_, mean_base, _) = u8_diff(&ours, &base);
            assert!(
                mean_base < 6.0,
                "{rel}: mean diff to the upright image {mean_base}"
            );
        }
    }
}

#[test]
fn greyscale_and_rgba_sources() {
    // camera.png is greyscale: decoded with all three channels equal
    let grey = decode_file(&root().join("images/camera.png"));
    assert!(grey.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    // logo.png is RGBA
    let logo = decode_file(&root().join("images/logo.png"));
    assert_eq!(logo.dimensions(), (500, 500));
    // RGBA pixels from a canvas: alpha dropped, not composited
    let rgba = [
        10u8, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255, 1, 2, 3, 4,
    ];
    let rgb = rgba_to_rgb(2, 2, &rgba).unwrap();
    assert_eq!(rgb.as_raw(), &[10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3]);
    assert!(rgba_to_rgb(2, 2, &rgba[..15]).is_err());
    assert!(rgba_to_rgb(0, 4, &[]).is_err());
    assert!(rgba_to_rgb(u32::MAX, u32::MAX, &rgba).is_err());
}

// ----------------------------------------------------------------------------------------------
// Hostile input
// ----------------------------------------------------------------------------------------------

fn err_msg(bytes: &[u8]) -> String {
    match decode_image(bytes, &ImageLimits::default()) {
        Ok(img) => panic!(
            "decoded {} bytes into a {:?} image",
            bytes.len(),
            img.dimensions()
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_and_random_bytes_are_errors() {
    let e = err_msg(&[]);
    println!("empty: {e}");
    assert!(e.contains("empty"));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = vec![0u8; 4096];
    for b in random.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let e = err_msg(&random);
    println!("random: {e}");
    assert!(e.contains("not a supported image (JPEG, PNG, GIF, WebP or BMP)"));
    assert!(err_msg(b"hello, world").contains("not a supported image"));
    // a supported signature followed by garbage
    for sig in [
        &b"\x89PNG\r\n\x1a\n"[..],
        b"\xFF\xD8\xFF",
        b"GIF89a",
        b"BM",
        b"RIFF\0\0\0\0WEBPVP8 ",
    ] {
        let mut bytes = sig.to_vec();
        bytes.extend_from_slice(&random[..512]);
        let e = err_msg(&bytes);
        println!(
            "{:?} + garbage: {e}",
            String::from_utf8_lossy(&sig[..sig.len().min(4)])
        );
    }
    // a format image can detect but gitcap does not accept
    let e = err_msg(b"II*\0\x08\0\0\0\0\0\0\0\0\0\0\0");
    assert!(e.contains("not a supported image"), "{e}");
}

#[test]
fn truncated_files_are_errors() {
    for name in ["rocket.jpg", "chelsea_exif_orientation6.jpg", "chelsea.png"] {
        let bytes = std::fs::read(root().join("images").join(name)).unwrap();
        if name.ends_with(".png") {
            // like Pillow, a PNG whose image data is complete but whose IEND chunk is cut
            // off still decodes
            assert!(decode_image(&bytes[..bytes.len() - 2], &ImageLimits::default()).is_ok());
        } else {
            // like Pillow, a JPEG without its end-of-image marker is truncated
            let e = err_msg(&bytes[..bytes.len() - 2]);
            assert!(e.contains("the image file is truncated or corrupt"), "{e}");
        }
        for keep in [bytes.len() - 100, bytes.len() / 2, 600, 40, 10] {
            let e = err_msg(&bytes[..keep]);
            assert!(
                e.contains("the image file is truncated or corrupt"),
                "{name} cut to {keep} bytes: {e}"
            );
        }
        println!("{name} cut in half: {}", err_msg(&bytes[..bytes.len() / 2]));
    }
    for entry in index()["decode"].as_array().unwrap() {
        let rel = entry["file"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(rel)).unwrap();
        // (the animated GIF's first frame is complete at 2/3, and Pillow accepts that too)
        let keep = if rel.ends_with(".gif") {
            bytes.len() / 3
        } else {
            bytes.len() * 2 / 3
        };
        let e = err_msg(&bytes[..keep]);
        assert!(e.contains("truncated or corrupt"), "{rel}: {e}");
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn crafted_png(width: u32, height: u32, with_idat: bool) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    png_chunk(&mut png, b"IHDR", &ihdr);
    if with_idat {
        // a valid zlib stream of a few zero bytes
        png_chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
        );
    }
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn assert_quick_too_large(what: &str, bytes: &[u8]) {
    let start = Instant::now();
    let e = err_msg(bytes);
    let took = start.elapsed();
    println!("{what}: {e} ({took:?})");
    assert!(e.contains("too large"), "{what}: {e}");
    assert!(took < Duration::from_secs(1), "{what} took {took:?}");
}

#[test]
fn huge_dimensions_are_rejected_from_the_header() {
    assert_quick_too_large("PNG 30000x30000", &crafted_png(30000, 30000, true));
    assert_quick_too_large(
        "PNG 30000x30000 header only",
        &crafted_png(30000, 30000, false),
    );
    assert_quick_too_large("PNG 100000x10", &crafted_png(100_000, 10, true));

    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&65535u16.to_le_bytes());
    gif.extend_from_slice(&65535u16.to_le_bytes());
    gif.extend_from_slice(&[0, 0, 0, 0x3B]);
    assert_quick_too_large("GIF 65535x65535", &gif);

    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0; 12]);
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&40000i32.to_le_bytes());
    bmp.extend_from_slice(&(-40000i32).to_le_bytes());
    bmp.extend_from_slice(&[1, 0, 24, 0]);
    bmp.extend_from_slice(&[0; 24]);
    assert_quick_too_large("BMP 40000x40000", &bmp);

    // JPEG: SOI, SOF0 claiming 60000x60000 (3 components), a DHT-free SOS, EOI
    let mut jpg = vec![0xFF, 0xD8];
    jpg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    jpg.extend_from_slice(&60000u16.to_be_bytes());
    jpg.extend_from_slice(&60000u16.to_be_bytes());
    jpg.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    jpg.extend_from_slice(&[0xFF, 0xD9]);
    let e = err_msg(&jpg);
    println!("JPEG 60000x60000: {e}");
    assert!(e.contains("too large"), "{e}");

    // custom limits
    let small = ImageLimits {
        max_width: 400,
        ..ImageLimits::default()
    };
    let bytes = std::fs::read(root().join("images/chelsea.png")).unwrap();
    let e = decode_image(&bytes, &small).unwrap_err().to_string();
    println!("chelsea with max_width 400: {e}");
    assert!(e.contains("too large"));
    let tight = ImageLimits {
        max_alloc: 100_000,
        ..ImageLimits::default()
    };
    let e = decode_image(&bytes, &tight).unwrap_err().to_string();
    println!("chelsea with max_alloc 100 kB: {e}");
    assert!(e.contains("too large"));
}

#[test]
fn corrupted_bytes_never_panic() {
    let mut files: Vec<Vec<u8>> = index()["decode"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| std::fs::read(fixtures().join(e["file"].as_str().unwrap())).unwrap())
        .collect();
    files.push(crafted_png(64, 64, true));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for file in &files {
        for _ in 0..60 {
            let mut bytes = file.clone();
            let flips = 1 + next() % 8;
            for _ in 0..flips {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            if next() % 4 == 0 {
                let keep = (next() as usize) % bytes.len();
                bytes.truncate(keep);
            }
            match decode_image(&bytes, &ImageLimits::default()) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
    }
    println!("corrupted inputs: {ok} decoded, {err} rejected, no panics");
}

// ----------------------------------------------------------------------------------------------
// Configuration
// ----------------------------------------------------------------------------------------------

#[test]
fn configs_parse_like_transformers() {
    let clip = config("clip_config.json");
    assert_eq!(clip, PreprocessorConfig::default());
    assert_eq!(clip.output_size(), (224, 224));
    let v = config("videomae_config.json");
    assert_eq!(v.resample, Resample::Bilinear);
    assert_eq!(v.image_mean, [0.5; 3]);
    assert_eq!(v, PreprocessorConfig::videomae());

    // legacy GIT config: bare integers, feature_extractor_type
    let legacy = PreprocessorConfig::from_json(
        br#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
             "feature_extractor_type": "CLIPFeatureExtractor",
             "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#,
    )
    .unwrap();
    assert_eq!(legacy, PreprocessorConfig::default());

    // the serde path gives the same
    let via_serde: PreprocessorConfig =
        serde_json::from_slice(&std::fs::read(fixtures().join("clip_config.json")).unwrap())
            .unwrap();
    assert_eq!(via_serde, clip);

    let big = clip.clone().with_image_size(384);
    assert_eq!(big.size, ResizeTo::ShortestEdge(384));
    assert_eq!(big.output_size(), (384, 384));

    let exact = PreprocessorConfig::from_json(
        br#"{"size": {"height": 100, "width": 200}, "do_center_crop": false}"#,
    )
    .unwrap();
    assert_eq!(exact.output_size(), (100, 200));
    assert_eq!(exact.resized_size(451, 300), (200, 100));

    for bad in [
        &b"not json"[..],
        b"[]",
        br#"{"resample": 9}"#,
        br#"{"size": 0}"#,
        br#"{"size": {"longest_edge": 5}}"#,
        br#"{"image_std": [0, 1, 1]}"#,
        br#"{"image_mean": [1, 2]}"#,
        br#"{"do_resize": "yes"}"#,
    ] {
        let e = PreprocessorConfig::from_json(bad).unwrap_err();
        println!("{:40} -> {e}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn small_images_are_padded_like_transformers() {
    // resize to shortest edge 16 then crop 24x24: the image is padded with zeros (centered,
    // ceil offsets), which normalize to -mean/std
    let cfg = PreprocessorConfig {
        size: ResizeTo::ShortestEdge(16),
        crop_size: (24, 24),
        ..PreprocessorConfig::default()
    };
    let img = RgbImage::from_pixel(33, 16, image::Rgb([200, 100, 50]));
    let (u8s, h, w) = resize_and_crop(&img, &cfg);
    assert_eq!((h, w), (24, 24));
    // rows 0..4 and 20..24 are padding, columns are cropped from 33 to 24
    assert_eq!(&u8s[..24 * 4 * 3], &vec![0u8; 24 * 4 * 3][..]);
    assert_eq!(&u8s[(4 * 24) * 3..(4 * 24) * 3 + 3], &[200, 100, 50]);
    let pv = preprocess(&img, &cfg);
    assert_eq!(pv.len(), 3 * 24 * 24);
    let pad = -gitcap::image::CLIP_MEAN[0] / gitcap::image::CLIP_STD[0];
    assert!((pv[0] - pad).abs() < 1e-6);
    // extreme aspect ratios stay cheap: only the 224x224 window is resampled
    for (w, h) in [(1, 60000), (60000, 1), (3, 20000)] {
        let img = RgbImage::from_pixel(w, h, image::Rgb([9, 99, 199]));
        let start = Instant::now();
        let pv = preprocess(&img, &PreprocessorConfig::default());
        assert_eq!(pv.len(), 3 * 224 * 224);
        assert!(start.elapsed() < Duration::from_secs(5), "{w}x{h}");
    }
    let no_crop = PreprocessorConfig {
        do_center_crop: false,
        ..PreprocessorConfig::default()
    };
    let thin = RgbImage::new(1, 60000);
    let e = pixel_values(&[thin], &no_crop, &Device::Cpu).unwrap_err();
    println!("no-crop config, 1x60000 image: {e}");
    // a 1x1 image does not break anything
    let tiny = RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]));
    assert_eq!(
        preprocess(&tiny, &PreprocessorConfig::default()).len(),
        3 * 224 * 224
    );
}
