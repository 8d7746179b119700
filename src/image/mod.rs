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

/// JPEG decoding that reproduces libjpeg-turbo (what Pillow uses) bit for bit.
mod jpeg;

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
