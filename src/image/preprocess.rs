//! Preprocessing: a decoded image to GIT's `pixel_values`, as transformers' PIL-backend processors.

use ::image::RgbImage;
use candle_core::{Device, Tensor};

use super::resample::resample_window;
use super::PreprocessorConfig;
use crate::{Error, Result};

/// The resized and center-cropped (zero-padded when too small) image, still u8 RGB, as the
/// reference processor has it just before rescaling. Returns (pixels, height, width).
pub fn resize_and_crop(img: &RgbImage, cfg: &PreprocessorConfig) -> (Vec<u8>, usize, usize) {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let (rw, rh) = cfg.resized_size(img.width(), img.height());
    let (rw, rh) = (rw.max(1) as usize, rh.max(1) as usize);
    let (out_h, out_w) = if cfg.do_center_crop {
        (cfg.crop_size.0 as usize, cfg.crop_size.1 as usize)
    } else {
        (rh, rw)
    };
    if sw == 0 || sh == 0 {
        return (vec![0; out_h * out_w * 3], out_h, out_w);
    }
    // For each axis: which part of the resized image is kept, and where it lands in the output.
    // transformers: src offset (size - crop) // 2 when cropping, dst offset
    // ceil((crop - size) / 2) when padding.
    let axis = |size: usize, out: usize| -> (usize, usize, usize) {
        if size >= out {
            ((size - out) / 2, 0, out)
        } else {
            (0, (out - size).div_ceil(2), size)
        }
    };
    let (sx, dx, cw) = axis(rw, out_w);
    let (sy, dy, ch) = axis(rh, out_h);
    let filter = cfg.resample;
    let window = if cfg.do_resize {
        resample_window(img.as_raw(), sw, sh, rw, rh, filter, (sx, sy, cw, ch))
    } else {
        let mut v = Vec::with_capacity(cw * ch * 3);
        for y in sy..sy + ch {
            v.extend_from_slice(&img.as_raw()[(y * sw + sx) * 3..(y * sw + sx + cw) * 3]);
        }
        v
    };
    if (cw, ch) == (out_w, out_h) {
        return (window, out_h, out_w);
    }
    let mut out = vec![0u8; out_h * out_w * 3];
    for (r, row) in window.chunks_exact(cw * 3).enumerate() {
        let at = ((dy + r) * out_w + dx) * 3;
        out[at..at + cw * 3].copy_from_slice(row);
    }
    (out, out_h, out_w)
}

/// Preprocesses one RGB image into normalized CHW f32 values (`3 * h * w`, with (h, w) from
/// [`PreprocessorConfig::output_size_for`]), numerically as the transformers PIL-backend
/// processor: resize, center crop, `f32(x as f64 * rescale_factor)`, `(x - mean) / std` in f32.
///
/// Only the cropped window of the resized image is computed, so time and memory follow the
/// crop size whatever the input's aspect ratio. (Without a center crop the output is the whole
/// resized image; [`pixel_values`] refuses absurd sizes before calling this.)
pub fn preprocess(img: &RgbImage, cfg: &PreprocessorConfig) -> Vec<f32> {
    let (hwc, h, w) = resize_and_crop(img, cfg);
    let plane = h * w;
    let mut out = vec![0f32; 3 * plane];
    // 256-entry lookup per channel: the value only depends on the u8 input
    for c in 0..3 {
        let lut: Vec<f32> = (0..=255u8)
            .map(|v| {
                let mut x = if cfg.do_rescale {
                    (f64::from(v) * cfg.rescale_factor) as f32
                } else {
                    f32::from(v)
                };
                if cfg.do_normalize {
                    x = (x - cfg.image_mean[c]) / cfg.image_std[c];
                }
                x
            })
            .collect();
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, px) in dst.iter_mut().zip(hwc.chunks_exact(3)) {
            *d = lut[usize::from(px[c])];
        }
    }
    out
}

/// Preprocesses a batch into a `(N, 3, H, W)` f32 tensor on `device`.
pub fn pixel_values(
    imgs: &[RgbImage],
    cfg: &PreprocessorConfig,
    device: &Device,
) -> Result<Tensor> {
    let first = imgs
        .first()
        .ok_or_else(|| Error::invalid("no images to preprocess"))?;
    let (h, w) = cfg.output_size_for(first.width(), first.height());
    // only reachable without a center crop, where the output follows the aspect ratio
    const MAX_OUTPUT_PIXELS: usize = 64 << 20;
    if h.saturating_mul(w) > MAX_OUTPUT_PIXELS {
        return Err(Error::invalid(format!(
            "preprocessing would produce a {w}x{h} image; this config has no center crop and the \
             image's aspect ratio is too extreme"
        )));
    }
    let mut data = Vec::with_capacity(imgs.len() * 3 * h * w);
    for (i, img) in imgs.iter().enumerate() {
        let size = cfg.output_size_for(img.width(), img.height());
        if size != (h, w) {
            return Err(Error::invalid(format!(
                "image {i} preprocesses to {}x{} but image 0 to {}x{}; without a center crop \
                 the images of a batch must have the same aspect ratio",
                size.1, size.0, w, h
            )));
        }
        data.extend(preprocess(img, cfg));
    }
    Ok(Tensor::from_vec(data, (imgs.len(), 3, h, w), device)?)
}
