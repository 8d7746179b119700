//! Image input: decoding (with limits and EXIF orientation) and the CLIP-style preprocessing that
//! turns an RGB image into GIT's `pixel_values`.
//!
//! # Reference
//!
//! The numbers are matched against transformers 5 (5.24 when this was written). There,
//! `CLIPImageProcessor` is the torchvision backend and `CLIPImageProcessorPil` the PIL backend;
//! `AutoImageProcessor.from_pretrained(dir)` picks torchvision when torchvision is installed and
//! falls back to PIL otherwise (`CLIPImageProcessor(...)` itself needs torchvision). The
//! reference used for the fixtures is the **PIL backend** (`CLIPImageProcessorPil`,
//! `VideoMAEImageProcessorPil`), i.e. what `AutoImageProcessor` gives without torchvision:
//!
//! 1. `transformers.image_utils.load_image`: `ImageOps.exif_transpose`, then `convert("RGB")`
//!    (grey replicated, alpha dropped; see [`decode_image`]).
//! 2. resize: for `{"shortest_edge": s}` the short side becomes `s` and the long side
//!    `int(s * long / short)` (`get_resize_output_image_size`); then PIL's `Image.resize` with
//!    the configured filter (bicubic = 3 for CLIP, bilinear = 2 for VideoMAE), no `reducing_gap`.
//!    [`resize_pil`] is a port of Pillow's `Resample.c` (separable convolution, support scaled by
//!    the downscale factor, coefficients in 22-bit fixed point, horizontal pass then vertical
//!    pass, rounding and clamping to u8 after each pass), so it reproduces PIL bit for bit.
//! 3. center crop: `top = (h - crop_h) // 2`, `left = (w - crop_w) // 2`; an image smaller than
//!    the crop is padded with zeros (placed at `ceil((crop - size) / 2)`) before rescaling.
//! 4. rescale: `f32(u8 as f64 * rescale_factor)`, then normalize in f32: `(x - mean) / std`.
//!
//! Decoding matches Pillow too: JPEG goes through a port of libjpeg-turbo's decoding path (the
//! library inside Pillow; see `mod jpeg`), because the `image` crate's JPEG decoder
//! (zune-jpeg) differs from it by up to 4 grey levels; PNG, GIF, WebP and BMP are lossless and
//! decoded with the `image` crate.
//!
//! The torchvision backend (`tvF.resize(..., antialias=True)` on uint8 tensors) implements the
//! same antialiased filters and is meant to agree with PIL to about one grey level (not checked
//! here: the reference venv has no torchvision). Its `convert_to_rgb` composites transparency
//! onto white for a PIL image passed in directly, as the PIL backend does; that does not arise
//! when images are loaded with `load_image` (which drops alpha) as the GIT pipelines do.
//!
//! Nothing here touches the file system or spawns threads, so it compiles for wasm32 as well.

use std::io::Cursor;

use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// CLIP's normalization constants (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD in transformers).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)] // the digits transformers uses
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// IMAGENET_STANDARD_MEAN / _STD (VideoMAE's defaults).
pub const STANDARD_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
pub const STANDARD_STD: [f32; 3] = [0.5, 0.5, 0.5];

const NOT_SUPPORTED: &str = "not a supported image (JPEG, PNG, GIF, WebP or BMP)";
const TRUNCATED: &str = "the image file is truncated or corrupt";
/// Largest resize / crop edge accepted from a preprocessor config.
const MAX_CONFIG_EDGE: u32 = 16384;

// ---------------------------------------------------------------------------------------------
// Preprocessor configuration
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Limits applied while decoding untrusted image bytes. Dimensions are checked from the file
/// header before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest accepted width x height.
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate for the decoded image and its working buffers.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    /// 65535 pixels per side, 100 megapixels, 512 MiB of decoder allocations.
    fn default() -> Self {
        ImageLimits {
            max_width: 65_535,
            max_height: 65_535,
            max_pixels: 100_000_000,
            max_alloc: 512 * 1024 * 1024,
        }
    }
}

impl ImageLimits {
    fn check(&self, width: u32, height: u32) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(Error::image(format!(
                "{TRUNCATED}: the header says the image is {width}x{height} pixels"
            )));
        }
        let pixels = u64::from(width) * u64::from(height);
        if width > self.max_width || height > self.max_height || pixels > self.max_pixels {
            return Err(Error::image(format!(
                "the image is too large: {width}x{height} pixels ({:.1} megapixels); the limit is \
                 {}x{} pixels and {:.1} megapixels",
                pixels as f64 / 1e6,
                self.max_width,
                self.max_height,
                self.max_pixels as f64 / 1e6
            )));
        }
        Ok(())
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        _ => "image",
    }
}

/// Decodes a JPEG, PNG, GIF (first frame), WebP or BMP file into RGB, the way
/// `transformers.image_utils.load_image` prepares an image with PIL:
///
/// * the EXIF orientation (all eight values; from the EXIF block, or from XMP
///   `tiff:Orientation` when EXIF has none, as Pillow does) is applied, like
///   `ImageOps.exif_transpose`;
/// * the result is converted like `Image.convert("RGB")`: grey is replicated and alpha is
///   dropped (not composited onto a background). 16-bit samples keep their high byte (what
///   Pillow does for 16-bit RGB; for 16-bit grey Pillow clips values to 255 instead, which
///   whitens the image, and this deliberately does not copy that).
///
/// JPEG pixels are bit-identical to Pillow's (libjpeg-turbo: islow IDCT, fancy upsampling);
/// the other formats are lossless. The dimensions in the header are checked against `limits`
/// before any pixel buffer is allocated; truncated or corrupt files (including a JPEG without
/// its end-of-image marker, which Pillow also rejects), unsupported formats and empty input are
/// errors, never panics.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::image(format!(
            "the image is empty (0 bytes); {NOT_SUPPORTED}"
        )));
    }
    let format = match ::image::guess_format(bytes) {
        Ok(
            f @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Bmp),
        ) => f,
        Ok(other) => {
            return Err(Error::image(format!(
                "{NOT_SUPPORTED}; this looks like {other:?}"
            )))
        }
        Err(_) => return Err(Error::image(NOT_SUPPORTED)),
    };
    let name = format_name(format);

    // Dimensions straight from the header, for formats whose decoder might otherwise fail
    // first on a truncated file, so an oversized image is reported as such.
    if let Some((w, h)) = sniff_dimensions(format, bytes) {
        limits.check(w, h)?;
    }
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
        // libjpeg-turbo-exact decoding; the rare variants it leaves alone (arithmetic coding,
        // 12-bit, lossless, CMYK, ...) go to the `image` crate below
        if let Some(d) = jpeg::decode(bytes, limits)? {
            let orientation = orientation_from(d.exif.as_deref(), d.xmp.as_deref());
            let rgb = RgbImage::from_raw(d.width, d.height, d.rgb)
                .ok_or_else(|| Error::image(format!("{TRUNCATED} (JPEG)")))?;
            return Ok(apply_exif_orientation(rgb, orientation));
        }
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = ::image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(e, name, limits))?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    if decoder.total_bytes() > limits.max_alloc {
        return Err(too_much_memory(
            width,
            height,
            decoder.total_bytes(),
            limits,
        ));
    }
    let orientation = read_orientation(&mut decoder);
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(e, name, limits))?;
    let rgb = to_rgb8_like_pil(decoded);
    Ok(apply_exif_orientation(rgb, orientation))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn too_much_memory(width: u32, height: u32, bytes: u64, limits: &ImageLimits) -> Error {
    Error::image(format!(
        "the image is too large: decoding {width}x{height} pixels needs {}, more than the {} \
         allowed",
        mib(bytes),
        mib(limits.max_alloc)
    ))
}

fn decode_error(e: ImageError, format: &str, limits: &ImageLimits) -> Error {
    match e {
        ImageError::Limits(l) => Error::image(format!(
            "the image is too large to decode within the {} memory limit ({l})",
            mib(limits.max_alloc)
        )),
        ImageError::Unsupported(u) => Error::image(format!(
            "this {format} file uses a feature that is not supported: {u}"
        )),
        ImageError::IoError(io) => Error::image(format!("{TRUNCATED} ({format}: {io})")),
        other => Error::image(format!("{TRUNCATED} ({format}: {other})")),
    }
}

/// Width and height from the first bytes of PNG, GIF and BMP files.
fn sniff_dimensions(format: ImageFormat, b: &[u8]) -> Option<(u32, u32)> {
    let be32 = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let le32 = |i: usize| {
        b.get(i..i + 4)
            .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let le16 = |i: usize| {
        b.get(i..i + 2)
            .map(|s| u32::from(u16::from_le_bytes([s[0], s[1]])))
    };
    match format {
        // signature, IHDR length, "IHDR", width, height
        ImageFormat::Png if b.get(12..16) == Some(b"IHDR") => Some((be32(16)?, be32(20)?)),
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        ImageFormat::Bmp => match le32(14)? {
            12 => Some((le16(18)?, le16(20)?)),
            n if n >= 40 => Some((le32(18)?.unsigned_abs(), le32(22)?.unsigned_abs())),
            _ => None,
        },
        _ => None,
    }
}

/// Walks the JPEG marker structure and requires it to reach the end-of-image marker, as
/// Pillow does ("image file is truncated"); the JPEG decoder itself would silently fill in a
/// truncated scan.
fn check_jpeg_complete(b: &[u8]) -> Result<()> {
    let truncated = || {
        Error::image(format!(
            "{TRUNCATED} (JPEG: the data ends before the end-of-image marker)"
        ))
    };
    let n = b.len();
    let mut i = 2; // after SOI
    loop {
        // find the next marker, tolerating stray bytes and fill bytes
        match b.get(i..).and_then(|s| s.iter().position(|&x| x == 0xFF)) {
            Some(p) => i += p,
            None => return Err(truncated()),
        }
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return Err(truncated());
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return Ok(()),                 // EOI
            0x00 | 0x01 | 0xD0..=0xD8 => continue, // no payload
            _ => {
                if i + 2 > n {
                    return Err(truncated());
                }
                let len = usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
                if len < 2 {
                    return Err(Error::image(format!(
                        "{TRUNCATED} (JPEG: bad segment length)"
                    )));
                }
                i += len;
                if i > n {
                    return Err(truncated());
                }
                if marker == 0xDA {
                    // entropy-coded data: runs until a 0xFF that is not stuffing (FF 00),
                    // a restart marker (FF D0-D7) or a fill byte
                    loop {
                        match b.get(i..).and_then(|s| s.iter().position(|&x| x == 0xFF)) {
                            Some(p) => i += p,
                            None => return Err(truncated()),
                        }
                        match b.get(i + 1) {
                            None => return Err(truncated()),
                            Some(0x00) | Some(0xD0..=0xD7) => i += 2,
                            Some(0xFF) => i += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// The EXIF orientation (1 to 8) the way Pillow's `getexif()` finds it: the EXIF block first,
/// then XMP `tiff:Orientation`. 1 when there is none.
fn read_orientation(decoder: &mut impl ImageDecoder) -> u32 {
    let exif = decoder.exif_metadata().ok().flatten();
    let xmp = decoder.xmp_metadata().ok().flatten();
    orientation_from(exif.as_deref(), xmp.as_deref())
}

fn orientation_from(exif: Option<&[u8]>, xmp: Option<&[u8]>) -> u32 {
    exif.and_then(exif_orientation)
        .or_else(|| xmp.and_then(xmp_orientation))
        .unwrap_or(1)
}

fn exif_orientation(data: &[u8]) -> Option<u32> {
    let data = data.strip_prefix(b"Exif\0\0").unwrap_or(data);
    match exif::Reader::new().read_raw(data.to_vec()) {
        Ok(parsed) => parsed
            .get_field(exif::Tag::Orientation, exif::In::PRIMARY)
            .and_then(|f| f.value.get_uint(0)),
        // kamadak-exif is strict about the whole structure; Pillow is not, so fall back to a
        // plain scan of the first directory.
        Err(_) => {
            ::image::metadata::Orientation::from_exif_chunk(data).map(|o| u32::from(o.to_exif()))
        }
    }
}

/// Pillow: `re.search(r'tiff:Orientation(="|>)([0-9])', xmp)`.
fn xmp_orientation(xmp: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut start = 0;
    while let Some(p) = xmp
        .get(start..)
        .and_then(|s| s.windows(KEY.len()).position(|w| w == KEY))
    {
        let at = start + p + KEY.len();
        let rest = &xmp[at..];
        let digit = if rest.starts_with(b"=\"") {
            rest.get(2)
        } else if rest.starts_with(b">") {
            rest.get(1)
        } else {
            None
        };
        if let Some(d @ b'0'..=b'9') = digit {
            return Some(u32::from(d - b'0'));
        }
        start = at;
    }
    None
}

/// Pillow's `ImageOps.exif_transpose` on an RGB image.
pub fn apply_exif_orientation(img: RgbImage, orientation: u32) -> RgbImage {
    use ::image::imageops;
    match orientation {
        2 => {
            let mut img = img;
            imageops::flip_horizontal_in_place(&mut img);
            img
        }
        3 => {
            let mut img = img;
            imageops::rotate180_in_place(&mut img);
            img
        }
        4 => {
            let mut img = img;
            imageops::flip_vertical_in_place(&mut img);
            img
        }
        5 => {
            // transpose: (x, y) -> (y, x)
            let mut out = imageops::rotate90(&img);
            imageops::flip_horizontal_in_place(&mut out);
            out
        }
        6 => imageops::rotate90(&img),
        7 => {
            // transverse
            let mut out = imageops::rotate270(&img);
            imageops::flip_horizontal_in_place(&mut out);
            out
        }
        8 => imageops::rotate270(&img),
        _ => img,
    }
}

/// `Image.convert("RGB")`: grey replicated, alpha dropped, 16-bit samples -> high byte.
fn to_rgb8_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let rgb: Vec<u8> = match img {
        DynamicImage::ImageRgb8(x) => return x,
        DynamicImage::ImageLuma8(x) => x.into_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(x) => x
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        DynamicImage::ImageRgba8(x) => x
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLuma16(x) => x
            .into_raw()
            .iter()
            .flat_map(|&v| [(v >> 8) as u8; 3])
            .collect(),
        DynamicImage::ImageLumaA16(x) => x
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [(p[0] >> 8) as u8; 3])
            .collect(),
        DynamicImage::ImageRgb16(x) => x.into_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(x) => x
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        other => return other.to_rgb8(),
    };
    RgbImage::from_raw(w, h, rgb).expect("buffer length matches the dimensions")
}

/// Drops the alpha channel of RGBA pixels (e.g. from a browser canvas' `getImageData`),
/// like `convert("RGB")`.
pub fn rgba_to_rgb(width: u32, height: u32, rgba: &[u8]) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(format!(
            "RGBA pixels: the image is {width}x{height}; both sides must be at least 1"
        )));
    }
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|p| p.checked_mul(4));
    if expected != Some(rgba.len()) {
        return Err(Error::invalid(format!(
            "RGBA pixels: a {width}x{height} image needs {} bytes (4 per pixel), got {}",
            u128::from(width) * u128::from(height) * 4,
            rgba.len()
        )));
    }
    let rgb: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| Error::invalid("RGBA pixels: the image is too large"))
}

// ---------------------------------------------------------------------------------------------
// Resampling: a port of Pillow's libImaging/Resample.c (8 bits per channel)
// ---------------------------------------------------------------------------------------------

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
fn resample_window(
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

// ---------------------------------------------------------------------------------------------
// Preprocessing
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// JPEG: a decoder that reproduces libjpeg-turbo (what Pillow uses) bit for bit
// ---------------------------------------------------------------------------------------------

/// Baseline / extended-sequential / progressive Huffman JPEG, 8-bit, 1 or 3 components, decoded
/// the way libjpeg-turbo does with Pillow's settings: `jpeg_idct_islow`, fancy upsampling
/// (h2v1, h2v2, h1v2; box for other integral factors), `ycc_rgb_convert` with its 16-bit
/// tables, colour space chosen as in `default_decompress_parms`. `image`'s decoder (zune-jpeg)
/// differs from libjpeg by up to a few grey levels, which is why this exists. Anything else
/// (arithmetic coding, 12-bit, lossless, CMYK, fractional sampling, missing Huffman tables)
/// returns `Ok(None)` and the caller falls back to the `image` crate.
mod jpeg {
    use super::{ImageLimits, TRUNCATED};
    use crate::{Error, Result};

    pub(super) struct Decoded {
        pub width: u32,
        pub height: u32,
        pub rgb: Vec<u8>,
        pub exif: Option<Vec<u8>>,
        pub xmp: Option<Vec<u8>>,
    }

    /// Zigzag index -> natural index, with libjpeg's 16 extra entries so a corrupt run
    /// length cannot index out of the block.
    const NATURAL: [usize; 80] = [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
        20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63,
        63, 63, 63, 63, 63, 63, 63, 63, 63,
    ];
    const MAX_SCANS: usize = 1000;

    fn corrupt(msg: &str) -> Error {
        Error::image(format!("{TRUNCATED} (JPEG: {msg})"))
    }

    // ----- Huffman tables (jdhuff.c) -----

    #[derive(Clone)]
    struct Huff {
        /// 9-bit lookahead: (length << 8) | symbol, 0 when the code is longer
        fast: Vec<u16>,
        maxcode: [i32; 17],
        valoffset: [i32; 17],
        vals: Vec<u8>,
    }

    impl Huff {
        fn new(counts: &[u8], vals: &[u8]) -> Option<Huff> {
            let mut fast = vec![0u16; 512];
            let mut maxcode = [-1i32; 17];
            let mut valoffset = [0i32; 17];
            let mut code: u32 = 0;
            let mut k = 0usize;
            for l in 1..=16usize {
                let n = usize::from(counts[l - 1]);
                valoffset[l] = k as i32 - code as i32;
                for _ in 0..n {
                    let sym = *vals.get(k)?;
                    if code >= 1 << l {
                        return None; // more codes than fit in l bits
                    }
                    if l <= 9 {
                        let shift = 9 - l;
                        for j in 0..(1u32 << shift) {
                            fast[((code << shift) | j) as usize] =
                                ((l as u16) << 8) | u16::from(sym);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                if n > 0 {
                    maxcode[l] = code as i32 - 1;
                }
                if code >= 1 << l {
                    return None;
                }
                code <<= 1;
            }
            Some(Huff {
                fast,
                maxcode,
                valoffset,
                vals: vals.to_vec(),
            })
        }

        #[inline]
        fn decode(&self, br: &mut BitReader) -> u8 {
            let peek = br.peek16();
            let f = self.fast[(peek >> 7) as usize];
            if f != 0 {
                br.consume(u32::from(f >> 8));
                return f as u8;
            }
            for l in 10..=16usize {
                let code = (peek >> (16 - l)) as i32;
                if code <= self.maxcode[l] {
                    br.consume(l as u32);
                    let i = (code + self.valoffset[l]) as usize;
                    return self.vals.get(i).copied().unwrap_or(0);
                }
            }
            // libjpeg: "Corrupt JPEG data: bad Huffman code", returns 0
            br.consume(16);
            0
        }
    }

    // ----- entropy-coded data (jdhuff.c fill_bit_buffer) -----

    struct BitReader<'a> {
        data: &'a [u8],
        pos: usize,
        acc: u64,
        nbits: u32,
        /// a marker (or the end of the data) was reached: zeros are fed from here on
        stopped: bool,
        eof: bool,
    }

    impl<'a> BitReader<'a> {
        fn new(data: &'a [u8], pos: usize) -> Self {
            BitReader {
                data,
                pos,
                acc: 0,
                nbits: 0,
                stopped: false,
                eof: false,
            }
        }

        fn fill(&mut self) {
            while self.nbits <= 56 {
                let mut byte = 0u8;
                if !self.stopped {
                    match self.data.get(self.pos) {
                        None => {
                            self.stopped = true;
                            self.eof = true;
                        }
                        Some(&b) if b != 0xFF => {
                            byte = b;
                            self.pos += 1;
                        }
                        Some(_) => {
                            let mut p = self.pos + 1;
                            while self.data.get(p) == Some(&0xFF) {
                                p += 1;
                            }
                            match self.data.get(p) {
                                None => {
                                    self.stopped = true;
                                    self.eof = true;
                                }
                                Some(0) => {
                                    byte = 0xFF;
                                    self.pos = p + 1;
                                }
                                Some(_) => self.stopped = true, // pos stays on the marker
                            }
                        }
                    }
                }
                self.acc |= u64::from(byte) << (56 - self.nbits);
                self.nbits += 8;
            }
        }

        #[inline]
        fn peek16(&mut self) -> u32 {
            if self.nbits < 16 {
                self.fill();
            }
            (self.acc >> 48) as u32
        }

        #[inline]
        fn consume(&mut self, n: u32) {
            self.acc <<= n;
            self.nbits -= n;
        }

        #[inline]
        fn bits(&mut self, n: u32) -> i32 {
            if n == 0 {
                return 0;
            }
            if self.nbits < n {
                self.fill();
            }
            let v = (self.acc >> (64 - n)) as i32;
            self.consume(n);
            v
        }

        /// At a restart boundary: drop buffered bits and consume the RSTn marker.
        fn restart(&mut self) {
            self.acc = 0;
            self.nbits = 0;
            self.stopped = false;
            if let Some((m, after)) = next_marker(self.data, self.pos) {
                if (0xD0..=0xD7).contains(&m) {
                    self.pos = after;
                } else {
                    // not a restart marker: leave it, zeros are fed (libjpeg's resync action 3)
                    self.pos = after - 2;
                    self.stopped = true;
                }
            } else {
                self.stopped = true;
                self.eof = true;
            }
        }
    }

    #[inline]
    fn extend(v: i32, s: u32) -> i32 {
        if s == 0 {
            0
        } else if v < (1 << (s - 1)) {
            v + (-1 << s) + 1
        } else {
            v
        }
    }

    /// The next marker at or after `pos`: (marker code, position after the two marker bytes).
    fn next_marker(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
        loop {
            pos += data.get(pos..)?.iter().position(|&b| b == 0xFF)?;
            while data.get(pos + 1) == Some(&0xFF) {
                pos += 1;
            }
            match *data.get(pos + 1)? {
                0x00 => pos += 2,
                m => return Some((m, pos + 2)),
            }
        }
    }

    // ----- inverse DCT (jidctint.c, jpeg_idct_islow) -----

    const CONST_BITS: u32 = 13;
    const PASS1_BITS: u32 = 2;
    const FIX_0_298631336: i64 = 2446;
    const FIX_0_390180644: i64 = 3196;
    const FIX_0_541196100: i64 = 4433;
    const FIX_0_765366865: i64 = 6270;
    const FIX_0_899976223: i64 = 7373;
    const FIX_1_175875602: i64 = 9633;
    const FIX_1_501321110: i64 = 12299;
    const FIX_1_847759065: i64 = 15137;
    const FIX_1_961570560: i64 = 16069;
    const FIX_2_053119869: i64 = 16819;
    const FIX_2_562915447: i64 = 20995;
    const FIX_3_072711026: i64 = 25172;

    #[inline]
    fn descale(x: i64, n: u32) -> i64 {
        (x + (1i64 << (n - 1))) >> n
    }

    /// libjpeg's post-IDCT range limit: `sample_range_limit[CENTERJSAMPLE + (x & 1023)]`.
    #[inline]
    fn range_limit(x: i64) -> u8 {
        let i = (x as i32 & 1023) as usize;
        if i < 128 {
            (i + 128) as u8
        } else if i < 512 {
            255
        } else if i < 896 {
            0
        } else {
            (i - 896) as u8
        }
    }

    /// The shared odd/even butterfly of both passes; returns the 8 outputs before descaling.
    #[inline]
    fn butterfly(v: [i64; 8]) -> [i64; 8] {
        // even part
        let (z2, z3) = (v[2], v[6]);
        let z1 = (z2 + z3) * FIX_0_541196100;
        let tmp2 = z1 + z3 * -FIX_1_847759065;
        let tmp3 = z1 + z2 * FIX_0_765366865;
        let tmp0 = (v[0] + v[4]) << CONST_BITS;
        let tmp1 = (v[0] - v[4]) << CONST_BITS;
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        // odd part
        let (mut t0, mut t1, mut t2, mut t3) = (v[7], v[5], v[3], v[1]);
        let z1 = t0 + t3;
        let z2 = t1 + t2;
        let z3 = t0 + t2;
        let z4 = t1 + t3;
        let z5 = (z3 + z4) * FIX_1_175875602;
        t0 *= FIX_0_298631336;
        t1 *= FIX_2_053119869;
        t2 *= FIX_3_072711026;
        t3 *= FIX_1_501321110;
        let z1 = z1 * -FIX_0_899976223;
        let z2 = z2 * -FIX_2_562915447;
        let z3 = z3 * -FIX_1_961570560 + z5;
        let z4 = z4 * -FIX_0_390180644 + z5;
        t0 += z1 + z3;
        t1 += z2 + z4;
        t2 += z2 + z3;
        t3 += z1 + z4;
        [
            tmp10 + t3,
            tmp11 + t2,
            tmp12 + t1,
            tmp13 + t0,
            tmp13 - t0,
            tmp12 - t1,
            tmp11 - t2,
            tmp10 - t3,
        ]
    }

    fn idct_islow(coef: &[i16], q: &[u16; 64], out: &mut [u8], stride: usize) {
        let mut ws = [0i32; 64];
        for col in 0..8 {
            let c = |r: usize| i64::from(coef[r * 8 + col]) * i64::from(q[r * 8 + col]);
            if (1..8).all(|r| coef[r * 8 + col] == 0) {
                let dc = (c(0) << PASS1_BITS) as i32;
                for r in 0..8 {
                    ws[r * 8 + col] = dc;
                }
                continue;
            }
            let o = butterfly([c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7)]);
            for r in 0..8 {
                ws[r * 8 + col] = descale(o[r], CONST_BITS - PASS1_BITS) as i32;
            }
        }
        for row in 0..8 {
            let w = &ws[row * 8..row * 8 + 8];
            let dst = &mut out[row * stride..row * stride + 8];
            if w[1..].iter().all(|&x| x == 0) {
                dst.fill(range_limit(descale(i64::from(w[0]), PASS1_BITS + 3)));
                continue;
            }
            let o = butterfly(std::array::from_fn(|i| i64::from(w[i])));
            for (d, v) in dst.iter_mut().zip(o) {
                *d = range_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
            }
        }
    }

    // ----- frame -----

    struct Component {
        id: u8,
        h: usize,
        v: usize,
        tq: usize,
        /// downsampled size (libjpeg's downsampled_width / _height)
        w: usize,
        hgt: usize,
        /// allocated blocks per row / column (padded to whole MCUs)
        bw: usize,
        bh: usize,
        qt: Option<[u16; 64]>,
        plane: Vec<u8>,
        coefs: Vec<i16>,
        pred: i32,
    }

    impl Component {
        fn block_out(&mut self, bx: usize, by: usize) -> &mut [u8] {
            let stride = self.bw * 8;
            &mut self.plane[by * 8 * stride + bx * 8..]
        }
    }

    struct Frame {
        width: usize,
        height: usize,
        progressive: bool,
        comps: Vec<Component>,
        hmax: usize,
        vmax: usize,
        mcux: usize,
        mcuy: usize,
    }

    struct Scan {
        comps: Vec<(usize, usize, usize)>, // (component index, dc table, ac table)
        ss: usize,
        se: usize,
        ah: u32,
        al: u32,
    }

    /// Decodes `data` (a complete JPEG file, checked by `check_jpeg_complete`), or `Ok(None)`
    /// when it uses a feature this decoder leaves to the `image` crate.
    pub(super) fn decode(data: &[u8], limits: &ImageLimits) -> Result<Option<Decoded>> {
        if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
            return Err(corrupt("missing start-of-image marker"));
        }
        let mut qts: [Option<[u16; 64]>; 4] = [None; 4];
        let mut dc_tables: [Option<Huff>; 4] = [None, None, None, None];
        let mut ac_tables: [Option<Huff>; 4] = [None, None, None, None];
        let mut frame: Option<Frame> = None;
        let mut restart_interval = 0usize;
        let mut saw_jfif = false;
        let mut adobe_transform: Option<u8> = None;
        let mut exif = None;
        let mut xmp = None;
        let mut scans = 0usize;
        let mut pos = 2usize;

        loop {
            let Some((marker, after)) = next_marker(data, pos) else {
                return Err(corrupt("the data ends before the end-of-image marker"));
            };
            pos = after;
            match marker {
                0xD9 => break,
                0xD8 => return Err(corrupt("two start-of-image markers")),
                0xD0..=0xD7 | 0x01 => continue,
                _ => {}
            }
            let len = match data.get(pos..pos + 2) {
                Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
                None => return Err(corrupt("the data ends inside a marker segment")),
            };
            if len < 2 || pos + len > data.len() {
                return Err(corrupt("bad marker segment length"));
            }
            let seg = &data[pos + 2..pos + len];
            pos += len;
            match marker {
                0xC0..=0xC2 => {
                    if frame.is_some() {
                        return Err(corrupt("more than one frame header"));
                    }
                    match parse_frame(seg, marker == 0xC2, limits)? {
                        Some(f) => frame = Some(f),
                        None => return Ok(None),
                    }
                }
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDC => return Ok(None),
                0xC4 => parse_dht(seg, &mut dc_tables, &mut ac_tables)?,
                0xDB => parse_dqt(seg, &mut qts)?,
                0xDD => {
                    if seg.len() < 2 {
                        return Err(corrupt("bad restart interval"));
                    }
                    restart_interval = usize::from(u16::from_be_bytes([seg[0], seg[1]]));
                }
                0xE0 if seg.starts_with(b"JFIF\0") => saw_jfif = true,
                // Pillow keeps the first EXIF block
                0xE1 if seg.starts_with(b"Exif\0\0") && exif.is_none() => {
                    exif = Some(seg[6..].to_vec());
                }
                0xE1 if seg.starts_with(b"http://ns.adobe.com/xap/1.0/\0") => {
                    xmp = Some(seg[29..].to_vec());
                }
                0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                    adobe_transform = Some(seg[11]);
                }
                0xDA => {
                    let Some(f) = frame.as_mut() else {
                        return Err(corrupt("scan before the frame header"));
                    };
                    scans += 1;
                    if scans > MAX_SCANS {
                        return Err(corrupt("too many scans"));
                    }
                    let scan = parse_sos(seg, f)?;
                    // tables: a missing one means libjpeg-turbo's defaults (Motion JPEG)
                    for &(ci, td, ta) in &scan.comps {
                        let needs_dc = !f.progressive || (scan.ss == 0 && scan.ah == 0);
                        let needs_ac = !f.progressive || scan.ss > 0;
                        if (needs_dc && dc_tables[td].is_none())
                            || (needs_ac && ac_tables[ta].is_none())
                        {
                            return Ok(None);
                        }
                        if needs_dc
                            && dc_tables[td]
                                .as_ref()
                                .is_some_and(|t| t.vals.iter().any(|&s| s > 15))
                        {
                            return Err(corrupt("bad Huffman table"));
                        }
                        let c = &mut f.comps[ci];
                        if c.qt.is_none() {
                            c.qt = Some(
                                qts[c.tq].ok_or_else(|| corrupt("missing quantization table"))?,
                            );
                        }
                    }
                    pos = decode_scan(
                        data,
                        pos,
                        f,
                        &scan,
                        &dc_tables,
                        &ac_tables,
                        restart_interval,
                    )?;
                }
                _ => {}
            }
        }

        let Some(mut f) = frame else {
            return Err(corrupt("no frame header"));
        };
        if scans == 0 {
            return Err(corrupt("no image data"));
        }
        if f.progressive {
            for c in f.comps.iter_mut() {
                let q = c.qt.unwrap_or([0; 64]);
                let stride = c.bw * 8;
                for by in 0..c.bh {
                    for bx in 0..c.bw {
                        let i = (by * c.bw + bx) * 64;
                        let coef = &c.coefs[i..i + 64];
                        let out = &mut c.plane[by * 8 * stride + bx * 8..];
                        idct_islow(coef, &q, out, stride);
                    }
                }
                c.coefs = Vec::new();
            }
        }

        let ycc = f.comps.len() == 3
            && if saw_jfif {
                true
            } else if let Some(t) = adobe_transform {
                t != 0
            } else {
                let ids: Vec<u8> = f.comps.iter().map(|c| c.id).collect();
                ids != [b'R', b'G', b'B']
            };
        let rgb = to_rgb(&f, ycc);
        Ok(Some(Decoded {
            width: f.width as u32,
            height: f.height as u32,
            rgb,
            exif,
            xmp,
        }))
    }

    fn parse_frame(seg: &[u8], progressive: bool, limits: &ImageLimits) -> Result<Option<Frame>> {
        if seg.len() < 6 {
            return Err(corrupt("short frame header"));
        }
        if seg[0] != 8 {
            return Ok(None); // 12-bit etc.
        }
        let height = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
        let width = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
        let n = usize::from(seg[5]);
        if height == 0 {
            return Ok(None); // height from a DNL marker
        }
        limits.check(width as u32, height as u32)?;
        if n != 1 && n != 3 {
            return Ok(None);
        }
        if seg.len() < 6 + 3 * n {
            return Err(corrupt("short frame header"));
        }
        let mut comps = Vec::with_capacity(n);
        for i in 0..n {
            let c = &seg[6 + 3 * i..9 + 3 * i];
            let (h, v, tq) = (
                usize::from(c[1] >> 4),
                usize::from(c[1] & 15),
                usize::from(c[2]),
            );
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
                return Err(corrupt("bad component sampling factors"));
            }
            comps.push((c[0], h, v, tq));
        }
        let hmax = comps.iter().map(|c| c.1).max().unwrap_or(1);
        let vmax = comps.iter().map(|c| c.2).max().unwrap_or(1);
        if comps.iter().any(|c| hmax % c.1 != 0 || vmax % c.2 != 0) {
            return Ok(None); // fractional sampling: libjpeg refuses too
        }
        let mcux = width.div_ceil(8 * hmax);
        let mcuy = height.div_ceil(8 * vmax);
        let mut bytes = (width as u64) * (height as u64) * 3;
        for c in &comps {
            let samples = (mcux * c.1 * 8) as u64 * (mcuy * c.2 * 8) as u64;
            bytes += samples * if progressive { 3 } else { 1 };
        }
        if bytes > limits.max_alloc {
            return Err(super::too_much_memory(
                width as u32,
                height as u32,
                bytes,
                limits,
            ));
        }
        let comps = comps
            .into_iter()
            .map(|(id, h, v, tq)| {
                let (bw, bh) = (mcux * h, mcuy * v);
                Component {
                    id,
                    h,
                    v,
                    tq,
                    w: (width * h).div_ceil(hmax),
                    hgt: (height * v).div_ceil(vmax),
                    bw,
                    bh,
                    qt: None,
                    plane: vec![128; bw * bh * 64],
                    coefs: if progressive {
                        vec![0; bw * bh * 64]
                    } else {
                        Vec::new()
                    },
                    pred: 0,
                }
            })
            .collect();
        Ok(Some(Frame {
            width,
            height,
            progressive,
            comps,
            hmax,
            vmax,
            mcux,
            mcuy,
        }))
    }

    fn parse_dht(
        mut seg: &[u8],
        dc: &mut [Option<Huff>; 4],
        ac: &mut [Option<Huff>; 4],
    ) -> Result<()> {
        while !seg.is_empty() {
            if seg.len() < 17 {
                return Err(corrupt("short Huffman table"));
            }
            let (class, id) = (seg[0] >> 4, usize::from(seg[0] & 15));
            if class > 1 || id > 3 {
                return Err(corrupt("bad Huffman table id"));
            }
            let counts = &seg[1..17];
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            if total > 256 || seg.len() < 17 + total {
                return Err(corrupt("bad Huffman table"));
            }
            let table = Huff::new(counts, &seg[17..17 + total])
                .ok_or_else(|| corrupt("bad Huffman table"))?;
            if class == 0 {
                dc[id] = Some(table);
            } else {
                ac[id] = Some(table);
            }
            seg = &seg[17 + total..];
        }
        Ok(())
    }

    fn parse_dqt(mut seg: &[u8], qts: &mut [Option<[u16; 64]>; 4]) -> Result<()> {
        while !seg.is_empty() {
            let (pq, id) = (seg[0] >> 4, usize::from(seg[0] & 15));
            if pq > 1 || id > 3 {
                return Err(corrupt("bad quantization table"));
            }
            let n = if pq == 0 { 64 } else { 128 };
            if seg.len() < 1 + n {
                return Err(corrupt("short quantization table"));
            }
            let mut t = [0u16; 64];
            for (i, &nat) in NATURAL[..64].iter().enumerate() {
                t[nat] = if pq == 0 {
                    u16::from(seg[1 + i])
                } else {
                    u16::from_be_bytes([seg[1 + 2 * i], seg[2 + 2 * i]])
                };
            }
            qts[id] = Some(t);
            seg = &seg[1 + n..];
        }
        Ok(())
    }

    fn parse_sos(seg: &[u8], f: &Frame) -> Result<Scan> {
        let n = usize::from(*seg.first().ok_or_else(|| corrupt("short scan header"))?);
        if n == 0 || n > 4 || seg.len() < 1 + 2 * n + 3 {
            return Err(corrupt("bad scan header"));
        }
        let mut comps = Vec::with_capacity(n);
        for i in 0..n {
            let (id, t) = (seg[1 + 2 * i], seg[2 + 2 * i]);
            let ci = f
                .comps
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| corrupt("scan refers to an unknown component"))?;
            let (td, ta) = (usize::from(t >> 4), usize::from(t & 15));
            if td > 3 || ta > 3 {
                return Err(corrupt("bad Huffman table id in scan"));
            }
            comps.push((ci, td, ta));
        }
        let p = 1 + 2 * n;
        let (ss, se, ah, al) = (
            usize::from(seg[p]),
            usize::from(seg[p + 1]),
            u32::from(seg[p + 2] >> 4),
            u32::from(seg[p + 2] & 15),
        );
        if f.progressive {
            // jdphuff.c start_pass_phuff_decoder
            let bad = if ss == 0 {
                se != 0
            } else {
                se < ss || se > 63 || n != 1
            };
            if bad || (ah != 0 && al != ah - 1) || al > 13 {
                return Err(corrupt("bad progression parameters"));
            }
        }
        let blocks: usize = comps
            .iter()
            .map(|&(ci, _, _)| f.comps[ci].h * f.comps[ci].v)
            .sum();
        if n > 1 && blocks > 10 {
            return Err(corrupt("too many blocks in an MCU"));
        }
        Ok(Scan {
            comps,
            ss,
            se,
            ah,
            al,
        })
    }

    /// Decodes one scan starting at `pos`; returns the position after its entropy-coded data.
    #[allow(clippy::too_many_arguments)]
    fn decode_scan(
        data: &[u8],
        pos: usize,
        f: &mut Frame,
        scan: &Scan,
        dc_tables: &[Option<Huff>; 4],
        ac_tables: &[Option<Huff>; 4],
        restart_interval: usize,
    ) -> Result<usize> {
        let mut br = BitReader::new(data, pos);
        for &(ci, _, _) in &scan.comps {
            f.comps[ci].pred = 0;
        }
        let mut eobrun = 0u32;
        let mut block = [0i16; 64];
        let single = scan.comps.len() == 1;
        // units: blocks of the one component for a non-interleaved scan, MCUs otherwise
        let (ux, uy) = if single {
            let c = &f.comps[scan.comps[0].0];
            (c.w.div_ceil(8), c.hgt.div_ceil(8))
        } else {
            (f.mcux, f.mcuy)
        };
        let mut todo = restart_interval;
        for uyi in 0..uy {
            for uxi in 0..ux {
                if restart_interval > 0 {
                    if todo == 0 {
                        br.restart();
                        for &(ci, _, _) in &scan.comps {
                            f.comps[ci].pred = 0;
                        }
                        eobrun = 0;
                        todo = restart_interval;
                    }
                    todo -= 1;
                }
                for &(ci, td, ta) in &scan.comps {
                    let (bh_n, bv_n) = if single {
                        (1, 1)
                    } else {
                        (f.comps[ci].h, f.comps[ci].v)
                    };
                    for by_off in 0..bv_n {
                        for bx_off in 0..bh_n {
                            let (bx, by) = if single {
                                (uxi, uyi)
                            } else {
                                (uxi * bh_n + bx_off, uyi * bv_n + by_off)
                            };
                            let c = &mut f.comps[ci];
                            if !f.progressive {
                                decode_block_seq(
                                    &mut br,
                                    dc_tables[td].as_ref().expect("checked"),
                                    ac_tables[ta].as_ref().expect("checked"),
                                    &mut c.pred,
                                    &mut block,
                                );
                                let q = c.qt.expect("latched");
                                let stride = c.bw * 8;
                                idct_islow(&block, &q, c.block_out(bx, by), stride);
                                continue;
                            }
                            let i = (by * c.bw + bx) * 64;
                            let coef = &mut c.coefs[i..i + 64];
                            if scan.ss == 0 {
                                if scan.ah == 0 {
                                    let t = dc_tables[td].as_ref().expect("checked");
                                    let s = u32::from(t.decode(&mut br));
                                    let diff = extend(br.bits(s), s);
                                    c.pred = c.pred.wrapping_add(diff);
                                    coef[0] = (c.pred << scan.al) as i16;
                                } else if br.bits(1) != 0 {
                                    coef[0] |= 1 << scan.al;
                                }
                            } else if scan.ah == 0 {
                                let t = ac_tables[ta].as_ref().expect("checked");
                                ac_first(&mut br, t, coef, scan, &mut eobrun);
                            } else {
                                let t = ac_tables[ta].as_ref().expect("checked");
                                ac_refine(&mut br, t, coef, scan, &mut eobrun);
                            }
                        }
                    }
                }
            }
        }
        if br.eof {
            return Err(corrupt("the data ends inside a scan"));
        }
        // continue at the next marker (libjpeg skips any stray bytes before it)
        match next_marker(data, br.pos) {
            Some((_, after)) => Ok(after - 2),
            None => Err(corrupt("the data ends before the end-of-image marker")),
        }
    }

    fn decode_block_seq(
        br: &mut BitReader,
        dc: &Huff,
        ac: &Huff,
        pred: &mut i32,
        block: &mut [i16; 64],
    ) {
        block.fill(0);
        let s = u32::from(dc.decode(br));
        let diff = extend(br.bits(s), s);
        *pred = pred.wrapping_add(diff);
        block[0] = *pred as i16;
        let mut k = 1usize;
        while k < 64 {
            let rs = ac.decode(br);
            let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
            if s != 0 {
                k += r;
                let v = extend(br.bits(s), s);
                block[NATURAL[k]] = v as i16;
            } else {
                if r != 15 {
                    break;
                }
                k += 15;
            }
            k += 1;
        }
    }

    fn ac_first(br: &mut BitReader, t: &Huff, coef: &mut [i16], scan: &Scan, eobrun: &mut u32) {
        if *eobrun > 0 {
            *eobrun -= 1;
            return;
        }
        let mut k = scan.ss;
        while k <= scan.se {
            let rs = t.decode(br);
            let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
            if s != 0 {
                k += r as usize;
                let v = extend(br.bits(s), s);
                coef[NATURAL[k]] = ((v as u32) << scan.al) as i16;
            } else if r == 15 {
                k += 15;
            } else {
                *eobrun = 1 << r;
                if r != 0 {
                    *eobrun += br.bits(r) as u32;
                }
                *eobrun -= 1;
                break;
            }
            k += 1;
        }
    }

    fn ac_refine(br: &mut BitReader, t: &Huff, coef: &mut [i16], scan: &Scan, eobrun: &mut u32) {
        let p1: i16 = 1 << scan.al;
        let m1: i16 = (-1i16) << scan.al;
        let mut k = scan.ss;
        let refine = |c: &mut i16, br: &mut BitReader| {
            if br.bits(1) != 0 && (*c & p1) == 0 {
                *c = if *c >= 0 {
                    c.wrapping_add(p1)
                } else {
                    c.wrapping_add(m1)
                };
            }
        };
        if *eobrun == 0 {
            while k <= scan.se {
                let rs = t.decode(br);
                let (mut r, s) = (i32::from(rs >> 4), rs & 15);
                let mut newval = 0i16;
                if s != 0 {
                    newval = if br.bits(1) != 0 { p1 } else { m1 };
                } else if r != 15 {
                    *eobrun = 1 << r;
                    if r != 0 {
                        *eobrun += br.bits(r as u32) as u32;
                    }
                    break;
                }
                loop {
                    let c = &mut coef[NATURAL[k]];
                    if *c != 0 {
                        refine(c, br);
                    } else {
                        r -= 1;
                        if r < 0 {
                            break;
                        }
                    }
                    k += 1;
                    if k > scan.se {
                        break;
                    }
                }
                if s != 0 {
                    coef[NATURAL[k]] = newval;
                }
                k += 1;
            }
        }
        if *eobrun > 0 {
            while k <= scan.se {
                let c = &mut coef[NATURAL[k]];
                if *c != 0 {
                    refine(c, br);
                }
                k += 1;
            }
            *eobrun -= 1;
        }
    }

    // ----- upsampling (jdsample.c) and colour conversion (jdcolor.c) -----

    /// Upsamples row `y` of component `c` to full width into `out` (`tmp`: scratch of at
    /// least `2 * c.w` bytes). Returns the row, which is the plane itself for full-size
    /// components.
    fn upsample_row<'a>(
        c: &'a Component,
        hmax: usize,
        vmax: usize,
        y: usize,
        tmp: &mut [u8],
        out: &'a mut [u8],
    ) -> &'a [u8] {
        let (hf, vf) = (hmax / c.h, vmax / c.v);
        let stride = c.bw * 8;
        let w = c.w;
        let row = |r: usize| &c.plane[r * stride..r * stride + w];
        let width = out.len();
        match (hf, vf) {
            (1, 1) => return &row(y)[..width],
            (2, 1) if w > 2 => {
                let inp = row(y);
                let t = &mut tmp[..2 * w];
                t[0] = inp[0];
                t[1] = ((u32::from(inp[0]) * 3 + u32::from(inp[1]) + 2) >> 2) as u8;
                for (o, win) in t[2..2 * w - 2].chunks_exact_mut(2).zip(inp.windows(3)) {
                    let v = u32::from(win[1]) * 3;
                    o[0] = ((v + u32::from(win[0]) + 1) >> 2) as u8;
                    o[1] = ((v + u32::from(win[2]) + 2) >> 2) as u8;
                }
                t[2 * w - 2] = ((u32::from(inp[w - 1]) * 3 + u32::from(inp[w - 2]) + 1) >> 2) as u8;
                t[2 * w - 1] = inp[w - 1];
                out.copy_from_slice(&t[..width]);
            }
            (2, 2) if w > 2 => {
                let r = y / 2;
                let ctx = if y.is_multiple_of(2) {
                    r.saturating_sub(1)
                } else {
                    (r + 1).min(c.hgt - 1)
                };
                let (i0, i1) = (row(r), row(ctx));
                let t = &mut tmp[..2 * w];
                // column sums: 3 * nearer row + further row
                let sum = |x: usize| u32::from(i0[x]) * 3 + u32::from(i1[x]);
                let (first, second) = (sum(0), sum(1));
                t[0] = ((first * 4 + 8) >> 4) as u8;
                t[1] = ((first * 3 + second + 7) >> 4) as u8;
                let (mut last, mut this) = (first, second);
                for (x, o) in (2..w).zip(t[2..2 * w - 2].chunks_exact_mut(2)) {
                    let next = sum(x);
                    o[0] = ((this * 3 + last + 8) >> 4) as u8;
                    o[1] = ((this * 3 + next + 7) >> 4) as u8;
                    last = this;
                    this = next;
                }
                t[2 * w - 2] = ((this * 3 + last + 8) >> 4) as u8;
                t[2 * w - 1] = ((this * 4 + 7) >> 4) as u8;
                out.copy_from_slice(&t[..width]);
            }
            (1, 2) => {
                let r = y / 2;
                let (ctx, bias) = if y.is_multiple_of(2) {
                    (r.saturating_sub(1), 1)
                } else {
                    ((r + 1).min(c.hgt - 1), 2)
                };
                let (i0, i1) = (row(r), row(ctx));
                for ((o, &a), &b) in out.iter_mut().zip(i0).zip(i1) {
                    *o = ((u32::from(a) * 3 + u32::from(b) + bias) >> 2) as u8;
                }
            }
            _ => {
                let inp = row((y / vf).min(c.hgt - 1));
                for (x, o) in out.iter_mut().enumerate() {
                    *o = inp[(x / hf).min(w - 1)];
                }
            }
        }
        out
    }

    fn to_rgb(f: &Frame, ycc: bool) -> Vec<u8> {
        let width = f.width;
        let mut rgb = vec![0u8; width * f.height * 3];
        let mut bufs = vec![vec![0u8; width]; f.comps.len()];
        let mut tmp = vec![0u8; 2 * f.comps.iter().map(|c| c.w).max().unwrap_or(0) + 2];
        // jdcolor.c build_ycc_rgb_table (SCALEBITS = 16)
        const ONE_HALF: i32 = 1 << 15;
        let fix = |x: f64| (x * 65536.0 + 0.5) as i32;
        let table =
            |f: &dyn Fn(i32) -> i32| -> [i32; 256] { std::array::from_fn(|i| f(i as i32 - 128)) };
        let cr_r = table(&|x| (fix(1.402) * x + ONE_HALF) >> 16);
        let cb_b = table(&|x| (fix(1.772) * x + ONE_HALF) >> 16);
        let cr_g = table(&|x| -fix(0.71414) * x);
        let cb_g = table(&|x| -fix(0.34414) * x + ONE_HALF);
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        for (y, out) in rgb.chunks_exact_mut(width * 3).enumerate() {
            let mut rows: Vec<&[u8]> = Vec::with_capacity(3);
            for (c, buf) in f.comps.iter().zip(bufs.iter_mut()) {
                rows.push(upsample_row(c, f.hmax, f.vmax, y, &mut tmp, buf));
            }
            match rows[..] {
                [g] => {
                    for (o, &g) in out.chunks_exact_mut(3).zip(g) {
                        o.fill(g);
                    }
                }
                [y0, cb, cr] if ycc => {
                    for (o, ((&yy, &cb), &cr)) in
                        out.chunks_exact_mut(3).zip(y0.iter().zip(cb).zip(cr))
                    {
                        let (yy, cb, cr) = (i32::from(yy), usize::from(cb), usize::from(cr));
                        o[0] = clamp(yy + cr_r[cr]);
                        o[1] = clamp(yy + ((cb_g[cb] + cr_g[cr]) >> 16));
                        o[2] = clamp(yy + cb_b[cb]);
                    }
                }
                [r, g, b] => {
                    for (o, ((&r, &g), &b)) in out.chunks_exact_mut(3).zip(r.iter().zip(g).zip(b)) {
                        o.copy_from_slice(&[r, g, b]);
                    }
                }
                _ => unreachable!("1 or 3 components"),
            }
        }
        rgb
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

    #[test]
    fn jpeg_walker() {
        assert!(check_jpeg_complete(&[0xFF, 0xD8, 0xFF, 0xD9]).is_ok());
        assert!(check_jpeg_complete(&[0xFF, 0xD8, 0xFF]).is_err());
        assert!(check_jpeg_complete(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00]).is_err());
        assert!(check_jpeg_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 1, 0xFF, 0, 2]).is_err());
        assert!(
            check_jpeg_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 1, 0xFF, 0, 0xFF, 0xD9]).is_ok()
        );
    }

    #[test]
    fn xmp() {
        assert_eq!(xmp_orientation(b"<x tiff:Orientation=\"6\"/>"), Some(6));
        assert_eq!(
            xmp_orientation(b"<tiff:Orientation>3</tiff:Orientation>"),
            Some(3)
        );
        assert_eq!(
            xmp_orientation(b"tiff:Orientation tiff:Orientation=\"8\""),
            Some(8)
        );
        assert_eq!(xmp_orientation(b"nothing"), None);
    }
}
