//! Resampling: a port of Pillow's libImaging/Resample.c (8 bits per channel), bit for bit.

use ::image::RgbImage;

use super::Resample;
use crate::{Error, Result};

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn filter_support(f: Resample) -> f64 {
    match f {
        Resample::Nearest | Resample::Box => 0.5,
        Resample::Bilinear | Resample::Hamming => 1.0,
        Resample::Bicubic => 2.0,
        Resample::Lanczos => 3.0,
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn filter_eval(f: Resample, x: f64) -> f64 {
    match f {
        Resample::Nearest | Resample::Box => {
            if x > -0.5 && x <= 0.5 {
                1.0
            } else {
                0.0
            }
        }
        Resample::Bilinear => {
            let x = x.abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        Resample::Hamming => {
            let x = x.abs();
            if x == 0.0 {
                1.0
            } else if x >= 1.0 {
                0.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x * (0.54 + 0.46 * x.cos())
            }
        }
        Resample::Bicubic => {
            const A: f64 = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
        Resample::Lanczos => {
            if (-3.0..3.0).contains(&x) {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
    }
}

/// Per output position: first input index and fixed-point weights (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    bounds: Vec<(usize, usize)>, // (xmin, count)
    ksize: usize,
    k: Vec<i32>,
}

/// Coefficients for the outputs `start..start + len` of an `in_size` -> `out_size` resample
/// (only the ones a crop keeps, so memory follows the crop, not the resized image).
fn precompute_coeffs(
    in_size: usize,
    out_size: usize,
    f: Resample,
    start: usize,
    len: usize,
) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter_support(f) * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(len);
    let mut k = vec![0i32; len * ksize];
    let mut w = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for (i, xx) in (start..start + len).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // (int) truncation in C; negative values are clamped to 0 anyway
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(count) {
            let v = filter_eval(f, ((x + xmin) as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        let row = &mut k[i * ksize..i * ksize + count];
        for (x, kx) in row.iter_mut().enumerate() {
            let mut v = w[x];
            if ww != 0.0 {
                v /= ww;
            }
            let fixed = v * f64::from(1u32 << PRECISION_BITS);
            *kx = if v < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coeffs { bounds, ksize, k }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples the RGB image `src` (`sw` x `sh`, packed) to `dw` x `dh` exactly as Pillow's
/// `Image.resize((dw, dh), filter)` and returns the window `x0..x0+cw`, `y0..y0+ch` of the
/// result (which must lie inside it), packed RGB.
#[allow(clippy::too_many_arguments)]
pub(super) fn resample_window(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    f: Resample,
    (x0, y0, cw, ch): (usize, usize, usize, usize),
) -> Vec<u8> {
    debug_assert!(x0 + cw <= dw && y0 + ch <= dh);
    if cw == 0 || ch == 0 {
        return Vec::new();
    }
    if f == Resample::Nearest {
        return nearest_window(src, sw, sh, dw, dh, (x0, y0, cw, ch));
    }
    let need_h = dw != sw;
    let need_v = dh != sh;

    // horizontal pass over the source rows the vertical pass will read
    let vert = need_v.then(|| precompute_coeffs(sh, dh, f, y0, ch));
    let (row0, row1) = match &vert {
        Some(v) => {
            let first = v.bounds[0].0;
            let last = (0..ch)
                .map(|j| v.bounds[j].0 + v.bounds[j].1)
                .max()
                .unwrap_or(first);
            (first, last.max(first))
        }
        None => (y0, y0 + ch),
    };
    let rows = row1 - row0;
    let tmp: Vec<u8> = if need_h {
        let hc = precompute_coeffs(sw, dw, f, x0, cw);
        let mut tmp = vec![0u8; rows * cw * 3];
        for (r, out_row) in tmp.chunks_exact_mut(cw * 3).enumerate() {
            let in_row = &src[(row0 + r) * sw * 3..(row0 + r + 1) * sw * 3];
            for (i, out_px) in out_row.chunks_exact_mut(3).enumerate() {
                let (xmin, count) = hc.bounds[i];
                let k = &hc.k[i * hc.ksize..i * hc.ksize + count];
                let px = &in_row[xmin * 3..(xmin + count) * 3];
                let half = 1i32 << (PRECISION_BITS - 1);
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (p, &kv) in px.chunks_exact(3).zip(k) {
                    s0 += i32::from(p[0]) * kv;
                    s1 += i32::from(p[1]) * kv;
                    s2 += i32::from(p[2]) * kv;
                }
                out_px[0] = clip8(s0);
                out_px[1] = clip8(s1);
                out_px[2] = clip8(s2);
            }
        }
        tmp
    } else {
        let mut tmp = Vec::with_capacity(rows * cw * 3);
        for r in row0..row1 {
            tmp.extend_from_slice(&src[(r * sw + x0) * 3..(r * sw + x0 + cw) * 3]);
        }
        tmp
    };

    let Some(vc) = vert else {
        return tmp;
    };
    let stride = cw * 3;
    let mut out = vec![0u8; ch * stride];
    let mut acc = vec![0i32; stride];
    for (j, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, count) = vc.bounds[j];
        let k = &vc.k[j * vc.ksize..j * vc.ksize + count];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (t, &kv) in k.iter().enumerate() {
            let r = ymin + t - row0;
            let in_row = &tmp[r * stride..(r + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * kv;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Nearest neighbour as Pillow does it (`ImagingScaleAffine`): the source coordinate starts at
/// `scale / 2` and accumulates `scale` per output pixel in f64, truncated.
fn nearest_window(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    (x0, y0, cw, ch): (usize, usize, usize, usize),
) -> Vec<u8> {
    // source index of outputs start..start + len (the accumulation must run from 0)
    let coords = |n_in: usize, n_out: usize, start: usize, len: usize| -> Vec<usize> {
        let scale = n_in as f64 / n_out as f64;
        let mut at = scale * 0.5;
        let mut v = Vec::with_capacity(len);
        for i in 0..start + len {
            if i >= start {
                v.push((at as usize).min(n_in - 1));
            }
            at += scale;
        }
        v
    };
    let (xs, ys) = (coords(sw, dw, x0, cw), coords(sh, dh, y0, ch));
    let mut out = Vec::with_capacity(cw * ch * 3);
    for &sy in &ys {
        for &sx in &xs {
            out.extend_from_slice(&src[(sy * sw + sx) * 3..(sy * sw + sx) * 3 + 3]);
        }
    }
    out
}

/// `Image.resize((width, height), filter)` of Pillow on an RGB image, bit for bit.
pub fn resize_pil(img: &RgbImage, width: u32, height: u32, filter: Resample) -> Result<RgbImage> {
    if width == 0 || height == 0 || img.width() == 0 || img.height() == 0 {
        return Err(Error::invalid(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            img.width(),
            img.height()
        )));
    }
    let (dw, dh) = (width as usize, height as usize);
    let data = resample_window(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        dw,
        dh,
        filter,
        (0, 0, dw, dh),
    );
    RgbImage::from_raw(width, height, data)
        .ok_or_else(|| Error::invalid("resize: the output is too large"))
}
