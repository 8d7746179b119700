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

mod config;
mod decode;
/// JPEG decoding that reproduces libjpeg-turbo (what Pillow uses) bit for bit.
mod jpeg;
mod preprocess;
mod resample;

pub use config::{PreprocessorConfig, Resample, ResizeTo};
pub use decode::{apply_exif_orientation, decode_image, rgba_to_rgb, ImageLimits};
pub use preprocess::{pixel_values, preprocess, resize_and_crop};
pub use resample::resize_pil;

/// CLIP's normalization constants (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD in transformers).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)] // the digits transformers uses
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// IMAGENET_STANDARD_MEAN / _STD (VideoMAE's defaults).
pub const STANDARD_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
pub const STANDARD_STD: [f32; 3] = [0.5, 0.5, 0.5];

const NOT_SUPPORTED: &str = "not a supported image (JPEG, PNG, GIF, WebP or BMP)";
const TRUNCATED: &str = "the image file is truncated or corrupt";
