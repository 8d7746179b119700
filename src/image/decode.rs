//! Decoding untrusted image bytes into RGB as Pillow does: limits checked before any pixel buffer,
//! the EXIF (or XMP) orientation applied, grey and alpha converted like `convert("RGB")`.

use std::io::Cursor;

use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use super::{jpeg, NOT_SUPPORTED, TRUNCATED};
use crate::{Error, Result};

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
    pub(super) fn check(&self, width: u32, height: u32) -> Result<()> {
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
/// JPEG pixels of well-formed files are bit-identical to Pillow's (libjpeg-turbo: islow IDCT,
/// fancy upsampling; corrupt entropy-coded data is not recovered from as libjpeg does, see
/// fuzz/pillow_diff.py);
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

pub(super) fn too_much_memory(width: u32, height: u32, bytes: u64, limits: &ImageLimits) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;

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
