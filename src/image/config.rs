//! `preprocessor_config.json`: how a checkpoint wants its images resized, cropped and normalized.

use serde::Deserialize;
use serde_json::Value;

use super::{CLIP_MEAN, CLIP_STD, STANDARD_MEAN, STANDARD_STD};
use crate::{Error, Result};

/// Largest resize / crop edge accepted from a preprocessor config.
pub(crate) const MAX_CONFIG_EDGE: u32 = 16384;

/// PIL resampling filters, numbered as in `PIL.Image.Resampling` (the `resample` field of a
/// `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// 0.
    Nearest,
    /// 1 (a.k.a. ANTIALIAS).
    Lanczos,
    /// 2.
    Bilinear,
    /// 3.
    Bicubic,
    /// 4.
    Box,
    /// 5.
    Hamming,
}

impl Resample {
    /// From PIL's integer code.
    pub fn from_pil(code: i64) -> Result<Self> {
        Ok(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            other => {
                return Err(Error::invalid(format!(
                    "preprocessor config: unknown resample filter {other} (PIL codes are 0 to 5)"
                )))
            }
        })
    }

    /// PIL's integer code.
    pub fn pil_code(self) -> u8 {
        match self {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        }
    }
}

/// How the image is resized (`size` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// `{"shortest_edge": n}` or a bare integer: keep the aspect ratio, short side becomes `n`.
    ShortestEdge(u32),
    /// `{"height": h, "width": w}` or `[h, w]`: exactly this size.
    Exact { height: u32, width: u32 },
}

/// The image preprocessing settings of a checkpoint (`preprocessor_config.json`).
///
/// Missing fields take the defaults of the named processor class: `CLIPImageProcessor`
/// (also used for unknown classes) or `VideoMAEImageProcessor`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct PreprocessorConfig {
    /// e.g. "CLIPImageProcessor" or "VideoMAEImageProcessor" (from `image_processor_type`, or
    /// the legacy `feature_extractor_type` with "FeatureExtractor" renamed).
    pub image_processor_type: String,
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Resample,
    pub do_center_crop: bool,
    /// (height, width).
    pub crop_size: (u32, u32),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub do_convert_rgb: bool,
}

impl Default for PreprocessorConfig {
    /// CLIPImageProcessor's defaults: shortest edge 224, bicubic, center crop 224x224, CLIP
    /// mean/std.
    fn default() -> Self {
        Self::clip(224)
    }
}

impl PreprocessorConfig {
    /// CLIPImageProcessor defaults with `n` instead of 224.
    pub fn clip(n: u32) -> Self {
        PreprocessorConfig {
            image_processor_type: "CLIPImageProcessor".to_string(),
            do_resize: true,
            size: ResizeTo::ShortestEdge(n),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (n, n),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            do_convert_rgb: true,
        }
    }

    /// VideoMAEImageProcessor defaults (used by GIT's video checkpoints): shortest edge 224,
    /// bilinear, center crop 224x224, mean = std = 0.5.
    pub fn videomae() -> Self {
        PreprocessorConfig {
            image_processor_type: "VideoMAEImageProcessor".to_string(),
            resample: Resample::Bilinear,
            image_mean: STANDARD_MEAN,
            image_std: STANDARD_STD,
            ..Self::clip(224)
        }
    }

    /// Parses a Hugging Face `preprocessor_config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("preprocessor config is not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Parses an already-decoded JSON object.
    pub fn from_value(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("preprocessor config must be a JSON object"))?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());

        let ty = get("image_processor_type")
            .or_else(|| get("feature_extractor_type"))
            .and_then(Value::as_str)
            .unwrap_or("CLIPImageProcessor")
            .replace("FeatureExtractor", "ImageProcessor");
        let mut cfg = if ty.contains("VideoMAE") {
            Self::videomae()
        } else {
            Self::clip(224)
        };
        cfg.image_processor_type = ty;

        let flag = |key: &str, default: bool| -> Result<bool> {
            match get(key) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(Error::invalid(format!(
                    "preprocessor config: `{key}` must be true or false, got {other}"
                ))),
            }
        };
        cfg.do_resize = flag("do_resize", cfg.do_resize)?;
        cfg.do_center_crop = flag("do_center_crop", cfg.do_center_crop)?;
        cfg.do_rescale = flag("do_rescale", cfg.do_rescale)?;
        cfg.do_normalize = flag("do_normalize", cfg.do_normalize)?;
        cfg.do_convert_rgb = flag("do_convert_rgb", cfg.do_convert_rgb)?;

        if let Some(v) = get("size") {
            cfg.size = parse_size(v, false)?;
        }
        if let Some(v) = get("crop_size") {
            cfg.crop_size = match parse_size(v, true)? {
                ResizeTo::Exact { height, width } => (height, width),
                // a `{"shortest_edge": n}` crop means n x n
                ResizeTo::ShortestEdge(n) => (n, n),
            };
        }
        if let Some(v) = get("resample") {
            let code = v.as_i64().ok_or_else(|| {
                Error::invalid(format!(
                    "preprocessor config: `resample` must be an integer, got {v}"
                ))
            })?;
            cfg.resample = Resample::from_pil(code)?;
        }
        if let Some(v) = get("rescale_factor") {
            let f = v.as_f64().filter(|f| f.is_finite() && *f > 0.0);
            cfg.rescale_factor = f.ok_or_else(|| {
                Error::invalid(format!(
                    "preprocessor config: `rescale_factor` must be a positive number, got {v}"
                ))
            })?;
        }
        if let Some(v) = get("image_mean") {
            cfg.image_mean = parse_triple(v, "image_mean")?;
        }
        if let Some(v) = get("image_std") {
            cfg.image_std = parse_triple(v, "image_std")?;
            if cfg.image_std.contains(&0.0) {
                return Err(Error::invalid(
                    "preprocessor config: `image_std` contains a zero",
                ));
            }
        }
        Ok(cfg)
    }

    /// Returns the config with its resize target and crop set to `n` (used when the model's
    /// `vision_config.image_size` disagrees with the preprocessor config): shortest edge `n`
    /// (or exactly `n` x `n` when the config resizes to a fixed size) and an `n` x `n` crop.
    pub fn with_image_size(mut self, n: u32) -> Self {
        self.size = match self.size {
            ResizeTo::ShortestEdge(_) => ResizeTo::ShortestEdge(n),
            ResizeTo::Exact { .. } => ResizeTo::Exact {
                height: n,
                width: n,
            },
        };
        self.crop_size = (n, n);
        self
    }

    /// The (height, width) of every preprocessed image. Exact whenever the config center-crops
    /// or resizes to a fixed size (all GIT checkpoints); otherwise the output depends on the
    /// input (see [`Self::output_size_for`]) and this is the size for a square input.
    pub fn output_size(&self) -> (usize, usize) {
        if self.do_center_crop {
            return (self.crop_size.0 as usize, self.crop_size.1 as usize);
        }
        match self.size {
            ResizeTo::ShortestEdge(n) => (n as usize, n as usize),
            ResizeTo::Exact { height, width } => (height as usize, width as usize),
        }
    }

    /// The (height, width) of the preprocessed version of a `width` x `height` image.
    pub fn output_size_for(&self, width: u32, height: u32) -> (usize, usize) {
        if self.do_center_crop {
            return (self.crop_size.0 as usize, self.crop_size.1 as usize);
        }
        let (w, h) = self.resized_size(width, height);
        (h as usize, w as usize)
    }

    /// The (width, height) the image is resized to before cropping (as transformers'
    /// `get_resize_output_image_size`); the input size when `do_resize` is off.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        if !self.do_resize {
            return (width, height);
        }
        match self.size {
            ResizeTo::Exact {
                height: h,
                width: w,
            } => (w, h),
            ResizeTo::ShortestEdge(s) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: int(s * long / short), a correctly rounded f64 division, truncated.
                let new_long = (f64::from(s) * f64::from(long) / f64::from(short.max(1))) as u32;
                if width <= height {
                    (s, new_long)
                } else {
                    (new_long, s)
                }
            }
        }
    }
}

fn parse_edge(v: &Value, what: &str) -> Result<u32> {
    match v.as_u64() {
        Some(n) if n >= 1 && n <= u64::from(MAX_CONFIG_EDGE) => Ok(n as u32),
        _ => Err(Error::invalid(format!(
            "preprocessor config: `{what}` must be an integer from 1 to {MAX_CONFIG_EDGE}, got {v}"
        ))),
    }
}

/// transformers' `get_size_dict`: an int means shortest edge (`size`) or a square (`crop_size`).
fn parse_size(v: &Value, square_int: bool) -> Result<ResizeTo> {
    let what = if square_int { "crop_size" } else { "size" };
    match v {
        Value::Number(_) => {
            let n = parse_edge(v, what)?;
            Ok(if square_int {
                ResizeTo::Exact {
                    height: n,
                    width: n,
                }
            } else {
                ResizeTo::ShortestEdge(n)
            })
        }
        Value::Array(a) if a.len() == 2 => Ok(ResizeTo::Exact {
            height: parse_edge(&a[0], what)?,
            width: parse_edge(&a[1], what)?,
        }),
        Value::Array(a) if a.len() == 1 => parse_size(&a[0], square_int),
        Value::Object(o) => {
            let field = |k: &str| o.get(k).filter(|x| !x.is_null());
            if let (Some(h), Some(w)) = (field("height"), field("width")) {
                Ok(ResizeTo::Exact {
                    height: parse_edge(h, what)?,
                    width: parse_edge(w, what)?,
                })
            } else if let Some(s) = field("shortest_edge") {
                if field("longest_edge").is_some() {
                    return Err(Error::invalid(format!(
                        "preprocessor config: `{what}` with both shortest_edge and longest_edge is not supported"
                    )));
                }
                Ok(ResizeTo::ShortestEdge(parse_edge(s, what)?))
            } else {
                Err(Error::invalid(format!(
                    "preprocessor config: `{what}` must have `shortest_edge` or `height` and `width`, got {v}"
                )))
            }
        }
        _ => Err(Error::invalid(format!(
            "preprocessor config: `{what}` must be an integer, a [height, width] pair or an object, got {v}"
        ))),
    }
}

fn parse_triple(v: &Value, what: &str) -> Result<[f32; 3]> {
    let bad = || {
        Error::invalid(format!(
            "preprocessor config: `{what}` must be a number or a list of 3 numbers, got {v}"
        ))
    };
    let num = |x: &Value| -> Result<f32> {
        x.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f as f32)
            .ok_or_else(bad)
    };
    match v {
        Value::Number(_) => Ok([num(v)?; 3]),
        Value::Array(a) if a.len() == 1 => Ok([num(&a[0])?; 3]),
        Value::Array(a) if a.len() == 3 => Ok([num(&a[0])?, num(&a[1])?, num(&a[2])?]),
        _ => Err(bad()),
    }
}

impl TryFrom<Value> for PreprocessorConfig {
    type Error = Error;
    fn try_from(v: Value) -> Result<Self> {
        Self::from_value(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_legacy_forms() {
        let c = PreprocessorConfig::from_json(b"{}").unwrap();
        assert_eq!(c, PreprocessorConfig::default());
        let c = PreprocessorConfig::from_json(
            br#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": 384, "crop_size": 384, "resample": 3}"#,
        )
        .unwrap();
        assert_eq!(c.image_processor_type, "CLIPImageProcessor");
        assert_eq!(c.size, ResizeTo::ShortestEdge(384));
        assert_eq!(c.output_size(), (384, 384));
        let v =
            PreprocessorConfig::from_json(br#"{"image_processor_type": "VideoMAEImageProcessor"}"#)
                .unwrap();
        assert_eq!(v, PreprocessorConfig::videomae());
        let e = PreprocessorConfig::from_json(br#"{"size": {"longest_edge": 3}}"#);
        assert!(e.is_err());
    }

    #[test]
    fn shortest_edge_rounding() {
        let c = PreprocessorConfig::default();
        assert_eq!(c.resized_size(451, 300), (336, 224));
        assert_eq!(c.resized_size(300, 451), (224, 336));
        assert_eq!(c.resized_size(1000, 872), (256, 224));
    }
}
