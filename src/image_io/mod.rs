//! Image I/O: decoding with size limits and EXIF orientation applied, encoding in the
//! input's format with metadata dropped (or, on request, a sanitised subset kept), and
//! atomic file writes.
//!
//! This module owns bytes ⇄ pixels and files on disk. It knows nothing of detection or
//! redaction; pixels travel as a [`Frame`].

mod frames;
mod heif;
mod jpeg_entropy;
mod metadata;
mod sequence;
mod webp_writer;
mod write;

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, metadata::Orientation};
use serde::{Deserialize, Serialize};

pub use heif::{LIBHEIF_NAME, libheif, sniff};
pub use sequence::{Timing, holds_one, holds_several};
pub use metadata::{EXIF_ALLOWLIST, sanitize_exif, sanitize_icc};
pub use write::{PathError, WriteError, create_dirs_within, create_parent_dirs, remove_stale_temps, safe_join, write_atomic};

/// Decoded pixels: 8-bit RGB (3 channels) or RGBA (4), rows packed top to bottom.
///
/// Its size, channel count and data length always agree ([`Frame::new`] checks, and
/// callers outside the crate can change pixels but not the shape), so every stage can
/// index rows without re-checking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// 3 (RGB) or 4 (RGBA).
    pub(crate) channels: u8,
    pub(crate) data: Vec<u8>,
}

impl Frame {
    /// Wraps packed pixel data; panics if the length does not match the size (a caller bug).
    pub fn new(width: u32, height: u32, channels: u8, data: Vec<u8>) -> Self {
        assert!(channels == 3 || channels == 4, "a Frame has 3 or 4 channels");
        assert_eq!(data.len(), width as usize * height as usize * channels as usize, "Frame data length");
        Self { width, height, channels, data }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// 3 (RGB) or 4 (RGBA).
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// The packed pixels.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The packed pixels, to change in place (the length is fixed).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The packed pixels, taken out.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Bytes per row.
    pub fn stride(&self) -> usize {
        self.width as usize * self.channels as usize
    }

    /// The pixels of `rect` (which must lie inside the frame) as RGB, alpha dropped.
    pub fn rgb_crop(&self, rect: crate::geometry::PixelRect) -> image::RgbImage {
        let c = self.channels as usize;
        let mut rgb = image::RgbImage::new(rect.w, rect.h);
        for (y, row) in rgb.rows_mut().enumerate() {
            let start = (rect.y as usize + y) * self.stride() + rect.x as usize * c;
            for (dst, src) in row.zip(self.data[start..start + rect.w as usize * c].chunks_exact(c)) {
                dst.0 = [src[0], src[1], src[2]];
            }
        }
        rgb
    }

    fn into_dynamic(self) -> DynamicImage {
        let (w, h) = (self.width, self.height);
        if self.channels == 4 {
            DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, self.data).expect("length checked in Frame::new"))
        } else {
            DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, self.data).expect("length checked in Frame::new"))
        }
    }
}

/// The image formats Obscura reads. An image is written in the format it was read in
/// unless another is asked for; HEIC and AVIF, which Obscura reads but does not write,
/// are written as JPEG ([`Format::written_as`]). Every frame of an animated GIF, PNG or
/// WebP and every page of a TIFF is read ([`Decoded::more`]); a HEIF holding several
/// top-level images is refused ([`DecodeError::Animated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
    Tiff,
    /// HEIF with HEVC coding (the iPhone camera's default), and plain HEIF; read through
    /// libheif, loaded at run time.
    Heic,
    /// HEIF with AV1 coding; read through libheif.
    Avif,
}

impl Format {
    /// Every format read, in the order messages list them.
    pub const ALL: [Format; 7] = [Format::Jpeg, Format::Png, Format::Webp, Format::Gif, Format::Tiff, Format::Heic, Format::Avif];

    /// Whether Obscura writes this format (HEIC and AVIF are read only).
    pub fn writable(self) -> bool {
        !matches!(self, Format::Heic | Format::Avif)
    }

    /// The format an image read in this one is written in when no other is asked for:
    /// itself, or JPEG for the formats Obscura does not write (HEIC and AVIF are photos,
    /// and JPEG is what every program opens).
    ///
    /// ```
    /// use obscura::image_io::Format;
    /// assert_eq!(Format::Png.written_as(), Format::Png);
    /// assert_eq!(Format::Heic.written_as(), Format::Jpeg);
    /// ```
    pub fn written_as(self) -> Format {
        if self.writable() { self } else { Format::Jpeg }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Tiff => "tif",
            Format::Heic => "heic",
            Format::Avif => "avif",
        }
    }

    /// The format a file extension names, if it is one Obscura handles.
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "webp" => Some(Format::Webp),
            "gif" => Some(Format::Gif),
            "tif" | "tiff" => Some(Format::Tiff),
            "heic" | "heif" | "hif" => Some(Format::Heic),
            "avif" => Some(Format::Avif),
            _ => None,
        }
    }

    /// The names of the formats read, as a list for messages: "JPEG, PNG, …, HEIC or AVIF".
    pub fn names() -> String {
        or_list(Format::ALL.iter().map(|f| f.name()).collect())
    }

    /// The names of the formats written, as a list for messages: "JPEG, PNG, WebP, GIF or TIFF".
    pub fn written_names() -> String {
        or_list(Format::ALL.iter().filter(|f| f.writable()).map(|f| f.name()).collect())
    }

    /// The media type (`image/jpeg`, …).
    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
            Format::Tiff => "image/tiff",
            Format::Heic => "image/heic",
            Format::Avif => "image/avif",
        }
    }

    /// The format's usual name (`JPEG`, `PNG`, `WebP`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Webp => "WebP",
            Format::Gif => "GIF",
            Format::Tiff => "TIFF",
            Format::Heic => "HEIC",
            Format::Avif => "AVIF",
        }
    }

    /// The `image` crate's name for it; `None` for HEIC and AVIF, which libheif reads.
    fn to_image(self) -> Option<ImageFormat> {
        match self {
            Format::Jpeg => Some(ImageFormat::Jpeg),
            Format::Png => Some(ImageFormat::Png),
            Format::Webp => Some(ImageFormat::WebP),
            Format::Gif => Some(ImageFormat::Gif),
            Format::Tiff => Some(ImageFormat::Tiff),
            Format::Heic | Format::Avif => None,
        }
    }
}

fn or_list(names: Vec<&str>) -> String {
    format!("{} or {}", names[..names.len() - 1].join(", "), names[names.len() - 1])
}

/// Decode and encode settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Largest accepted width and height in pixels (default 16384): a guard against
    /// decompression bombs, checked from the header before any pixels are decoded.
    pub max_dimension: u32,
    /// Largest accepted pixel count (default 100 megapixels).
    pub max_pixels: u64,
    /// Most memory one decode may allocate (default 1 GiB).
    pub max_alloc_bytes: u64,
    /// Keep an allowlist of small metadata values: the EXIF tags in [`EXIF_ALLOWLIST`]
    /// and the colorimetry of a matrix/TRC ICC profile, each rebuilt from scratch (see
    /// [`sanitize_exif`], [`sanitize_icc`]); never a blob. Default `false`: outputs carry
    /// no metadata at all.
    pub keep_metadata: bool,
    /// JPEG quality 1–100 (default 90).
    pub jpeg_quality: u8,
    /// Quality 1–100 of lossy WebP output (default 90). WebP is written lossy when the
    /// input was lossy (JPEG, HEIC, AVIF, lossy WebP) and lossless when it was not.
    pub webp_quality: u8,
    /// Most frames of an animation or pages of a TIFF (default 300): each is detected
    /// and redacted, so this bounds the time one file can take.
    pub max_frames: u32,
}

impl ImageConfig {
    /// Whether an image of `width`×`height` pixels is within `max_dimension` and
    /// `max_pixels`: what [`decode`] checks from the header, and what callers handing over
    /// pixels they decoded themselves check before copying them.
    ///
    /// ```
    /// let limits = obscura::image_io::ImageConfig::default();
    /// assert!(limits.check_size(4000, 3000).is_ok());
    /// assert!(limits.check_size(20_000, 10).is_err());
    /// ```
    pub fn check_size(&self, width: u32, height: u32) -> Result<(), DecodeError> {
        if width > self.max_dimension || height > self.max_dimension {
            return Err(DecodeError::TooLarge { width, height, limit: format!("{} pixels per side", self.max_dimension) });
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(DecodeError::TooLarge { width, height, limit: format!("{} pixels", self.max_pixels) });
        }
        Ok(())
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_dimension: 16_384,
            max_pixels: 100_000_000,
            max_alloc_bytes: 1 << 30,
            keep_metadata: false,
            jpeg_quality: 90,
            webp_quality: 90,
            max_frames: 300,
        }
    }
}

/// What decoding failed on; each says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input (0 bytes)")]
    Empty,
    #[error("not a {} image", Format::names())]
    UnsupportedFormat,
    #[error("image is {width}×{height} pixels, over the limit of {limit} (raise it with the image limits if this is intended)")]
    TooLarge { width: u32, height: u32, limit: String },
    #[error("corrupt or truncated {} image: {reason}", format.name())]
    Corrupt { format: Format, reason: String },
    /// A HEIF holding several top-level images (a collection or burst): which of them
    /// the viewer shows is not defined, so none is picked.
    #[error("{} is not supported: only its first {} would be anonymised, and the others would be lost (split it into {}s first)", several(*format), picture(*format), picture(*format))]
    Animated { format: Format },
    /// An animation or page set longer than [`ImageConfig::max_frames`].
    #[error("{} has more than {limit} {}s, over the limit (raise the image limit max_frames if this is intended)", several(*format), picture(*format))]
    TooManyFrames { format: Format, limit: u32 },
    /// A valid file of a kind the decoder cannot read (an arithmetic-coded, lossless or
    /// hierarchical JPEG; a HEIF with a codec libheif lacks): refused as unsupported, not
    /// called corrupt.
    #[error("{what} is not supported: {}", if *format == Format::Jpeg { "Obscura reads baseline and progressive (Huffman-coded) JPEG; convert it first" } else { "convert it to JPEG or PNG first" })]
    Unsupported { format: Format, what: String },
    /// The library that reads this format (libheif, for HEIC and AVIF) could not be
    /// loaded: a problem of the installation, not of the file.
    #[error("reading {} needs libheif, which is not available here ({reason}): install it (Debian and Ubuntu: apt install libheif1), or set OBSCURA_LIBHEIF to its {}", format.name(), heif::LIBHEIF_NAME)]
    CodecMissing { format: Format, reason: String },
}

/// What one picture of a multi-picture file is called.
fn picture(format: Format) -> &'static str {
    match format {
        Format::Tiff => "page",
        Format::Heic | Format::Avif => "image",
        _ => "frame",
    }
}

/// What a file of several pictures of `format` is called.
fn several(format: Format) -> String {
    match format {
        Format::Tiff => "a multi-page TIFF".into(),
        Format::Heic | Format::Avif => format!("a {} holding several images (a collection or burst)", format.name()),
        _ => format!("animated {}", format.name()),
    }
}

/// Encoding failed (should not happen for a valid [`Frame`]).
#[derive(Debug, thiserror::Error)]
#[error("encoding {} failed: {reason}", format.name())]
pub struct EncodeError {
    pub format: Format,
    pub reason: String,
}

/// Metadata carried from input to output when the user opts in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptMetadata {
    /// A rebuilt ICC profile (see [`sanitize_icc`]).
    pub icc_profile: Option<Vec<u8>>,
    /// A rebuilt EXIF block (see [`sanitize_exif`]).
    pub exif: Option<Vec<u8>>,
}

/// A decoded image: upright pixels plus what encoding needs to know.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The picture: a still, or an animation's first frame or a TIFF's first page.
    pub frame: Frame,
    pub format: Format,
    /// The EXIF orientation that was applied (1 = none), as the EXIF tag value.
    pub orientation: u8,
    /// Present only when [`ImageConfig::keep_metadata`] is set.
    pub metadata: KeptMetadata,
    /// An animation's frames after the first, each the whole canvas as a viewer shows
    /// it, or a TIFF's pages after the first (each in its own size); empty for a still.
    pub more: Vec<Frame>,
    /// How an animation plays (one delay per frame, `frame` included); `None` for a
    /// still or a TIFF's pages.
    pub timing: Option<Timing>,
    /// Whether the input was coded lossy (JPEG, HEIC, AVIF, lossy WebP): WebP output is
    /// then lossy too, at [`ImageConfig::webp_quality`].
    pub lossy: bool,
}

/// Decodes `bytes` into upright 8-bit pixels.
///
/// Checks the header against the size limits before decoding any pixels, applies the
/// EXIF orientation, and converts to RGB, or RGBA when the image has an alpha channel.
///
/// ```
/// use obscura::image_io::{decode, DecodeError, ImageConfig};
/// let err = decode(b"", &ImageConfig::default()).unwrap_err();
/// assert!(matches!(err, DecodeError::Empty));
/// ```
pub fn decode(bytes: &[u8], config: &ImageConfig) -> Result<Decoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = format_of(bytes).ok_or(DecodeError::UnsupportedFormat)?;
    let Some(image_format) = format.to_image() else {
        // HEIC and AVIF: libheif reads them, rotation and crop applied.
        let (frame, metadata) = heif::decode(bytes, format, config)?;
        return Ok(Decoded { frame, format, orientation: 1, metadata, more: Vec::new(), timing: None, lossy: true });
    };
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format, reason: e.to_string() };
    let mut jpeg_stray = Vec::new();
    if format == Format::Jpeg {
        jpeg_stray = jpeg_check_structure(bytes).map_err(|problem| match problem {
            JpegProblem::Corrupt(reason) => DecodeError::Corrupt { format, reason: reason.into() },
            JpegProblem::Unsupported(what) => DecodeError::Unsupported { format, what: what.into() },
        })?;
    }
    if format == Format::Webp {
        // The WebP decoder stops at the last chunk it needs, so a file cut in a later one
        // (metadata after an animation's frames) would pass as whole.
        frames::webp_check_length(bytes).map_err(|reason| DecodeError::Corrupt { format, reason: reason.into() })?;
    }
    // Read the header under the memory limit but no size limit, check the size ourselves
    // so the error can say how large the image claims to be, then decode. The memory limit
    // matters here already: a PNG's colour profile is inflated while its header is read (a
    // 2 MB file can hold a profile of gigabytes), and the png decoder keeps the limits it
    // is created with.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut header_limits = image::Limits::no_limits();
    header_limits.max_alloc = Some(config.max_alloc_bytes);
    reader.limits(header_limits.clone());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    config.check_size(width, height)?;
    if format == Format::Gif {
        frames::gif_check_screen(bytes).map_err(|reason| DecodeError::Corrupt { format, reason: reason.into() })?;
    }
    let lossy = format == Format::Jpeg || (format == Format::Webp && frames::webp_is_lossy(bytes));
    if is_animated(bytes, format, header_limits).map_err(corrupt)? {
        // Every frame or page; none of an animation's metadata is kept.
        let (mut pictures, timing) = sequence::decode(bytes, format, config)?;
        let frame = pictures.remove(0);
        return Ok(Decoded { frame, format, orientation: 1, metadata: KeptMetadata::default(), more: pictures, timing, lossy });
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(config.max_dimension);
    limits.max_image_height = Some(config.max_dimension);
    limits.max_alloc = Some(config.max_alloc_bytes);
    let limited = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge { width, height, limit: format!("{} bytes of memory", config.max_alloc_bytes) },
        other => corrupt(other),
    };
    decoder.set_limits(limits).map_err(limited)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let metadata = if config.keep_metadata {
        KeptMetadata {
            icc_profile: decoder.icc_profile().ok().flatten().and_then(|raw| sanitize_icc(&raw)),
            exif: decoder.exif_metadata().ok().flatten().and_then(|raw| sanitize_exif(&raw)),
        }
    } else {
        KeptMetadata::default()
    };
    let mut image = match format {
        // Strict: a scan that ends early fails instead of being filled in (image's own
        // JPEG decoder is the same zune-jpeg, lenient).
        Format::Jpeg => {
            drop(decoder);
            if jpeg_stray.is_empty() {
                jpeg_pixels(bytes, config)?
            } else {
                let mut kept = Vec::with_capacity(bytes.len());
                let mut from = 0;
                for run in &jpeg_stray {
                    kept.extend_from_slice(&bytes[from..run.start]);
                    from = run.end;
                }
                kept.extend_from_slice(&bytes[from..]);
                jpeg_pixels(&kept, config)?
            }
        }
        _ => DynamicImage::from_decoder(decoder).map_err(limited)?,
    };
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    let frame = if image.color().has_alpha() {
        Frame::new(width, height, 4, image.into_rgba8().into_raw())
    } else {
        Frame::new(width, height, 3, image.into_rgb8().into_raw())
    };
    Ok(Decoded { frame, format, orientation: orientation_tag(orientation), metadata, more: Vec::new(), timing: None, lossy })
}

/// The format `bytes` are in, by their content (not a name): one Obscura reads, or `None`.
///
/// ```
/// use obscura::image_io::{format_of, Format};
/// assert_eq!(format_of(b"\x89PNG\r\n\x1a\n"), Some(Format::Png));
/// assert_eq!(format_of(b"\0\0\0\x14ftypavif\0\0\0\0mif1"), Some(Format::Avif));
/// assert_eq!(format_of(b"%PDF-1.7"), None);
/// ```
pub fn format_of(bytes: &[u8]) -> Option<Format> {
    if let Some(heif) = sniff(bytes) {
        return Some(heif);
    }
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => Some(Format::Jpeg),
        Ok(ImageFormat::Png) => Some(Format::Png),
        Ok(ImageFormat::WebP) => Some(Format::Webp),
        Ok(ImageFormat::Gif) => Some(Format::Gif),
        Ok(ImageFormat::Tiff) => Some(Format::Tiff),
        _ => None,
    }
}

/// A JPEG's pixels, decoded by zune-jpeg (the decoder `image` uses) in strict mode, in
/// the colour type `image` would give (grey stays grey; YCbCr and CMYK become RGB):
/// markers inside coded data and other spec violations the lenient mode papers over are
/// errors (every photo of the evaluation set still decodes, to the same pixels). Before
/// any pixel is allocated, the header is checked against how much coded data the file
/// holds, so a header that claims far more pixels than the data can hold is refused at
/// once; then every scan's coded data is walked to its last block ([`jpeg_entropy`]), so a
/// file cut inside its coded data and given a new end-of-image marker, which zune-jpeg
/// fills in, strict or not, is refused.
fn jpeg_pixels(bytes: &[u8], config: &ImageConfig) -> Result<DynamicImage, DecodeError> {
    use zune_core::colorspace::ColorSpace;
    let format = Format::Jpeg;
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| DecodeError::Corrupt { format, reason: e.to_string() };
    let max = config.max_dimension as usize;
    let options = zune_core::options::DecoderOptions::default().set_strict_mode(true).set_max_width(max).set_max_height(max);
    let mut header = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    header.decode_headers().map_err(corrupt)?;
    let (width, height) = header.dimensions().ok_or_else(|| DecodeError::Corrupt { format, reason: "no frame header".into() })?;
    let (width, height) = (width as u32, height as u32);
    let out = match header.input_colorspace() {
        Some(c @ (ColorSpace::RGB | ColorSpace::RGBA | ColorSpace::Luma | ColorSpace::LumaA)) => c,
        _ => ColorSpace::RGB,
    };
    if u64::from(width) * u64::from(height) * out.num_components() as u64 > config.max_alloc_bytes {
        return Err(DecodeError::TooLarge { width, height, limit: format!("{} bytes of memory", config.max_alloc_bytes) });
    }
    if let Some(reason) = jpeg_data_too_short(bytes, width, height) {
        return Err(DecodeError::Corrupt { format, reason });
    }
    jpeg_entropy::check(bytes).map_err(|reason| DecodeError::Corrupt { format, reason })?;
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options.jpeg_set_out_colorspace(out));
    let pixels = decoder.decode().map_err(corrupt)?;
    let built = match out {
        ColorSpace::Luma => image::GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        ColorSpace::LumaA => image::GrayAlphaImage::from_raw(width, height, pixels).map(DynamicImage::ImageLumaA8),
        ColorSpace::RGBA => image::RgbaImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8),
        _ => image::RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
    };
    built.ok_or_else(|| DecodeError::Corrupt { format, reason: "the decoded data does not match the image's size".into() })
}

/// Whether a JPEG's coded data is too short for the pixels its header claims: every 8×8
/// block of every component costs at least one bit (its DC code) in the first scan that
/// codes it, so a file with fewer bits of scan data than blocks is cut short, whatever a
/// lenient decoder would fill in. Returns why, or `None`.
fn jpeg_data_too_short(bytes: &[u8], width: u32, height: u32) -> Option<String> {
    let (mut sampling, mut scan_bytes, mut i) = (Vec::<(u32, u32)>::new(), 0u64, 2usize);
    while let (Some(&0xFF), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) {
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if marker == 0xD9 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(i + 2)?, *bytes.get(i + 3)?]));
        let segment = bytes.get(i + 4..i + 2 + len)?;
        if matches!(marker, 0xC0..=0xC2) && segment.len() >= 6 {
            let n = usize::from(segment[5]);
            sampling = (0..n).filter_map(|c| segment.get(6 + 3 * c + 1)).map(|&hv| (u32::from(hv >> 4).max(1), u32::from(hv & 15).max(1))).collect();
        }
        i += 2 + len;
        if marker == 0xDA {
            let start = i;
            i = entropy_data_end(bytes, i).unwrap_or(bytes.len());
            scan_bytes += (i - start) as u64;
        }
    }
    let (h_max, v_max) = sampling.iter().fold((1, 1), |(h, v), &(a, b)| (h.max(a), v.max(b)));
    let blocks: u64 = sampling
        .iter()
        .map(|&(h, v)| u64::from((width * h).div_ceil(h_max).div_ceil(8)) * u64::from((height * v).div_ceil(v_max).div_ceil(8)))
        .sum();
    (blocks > scan_bytes * 8).then(|| format!("its header claims {width}×{height} pixels ({blocks} blocks), more than its {scan_bytes} bytes of coded data can hold"))
}

/// Where a scan's entropy-coded data, starting at `from`, ends: at the next marker, since
/// FF inside the data is followed by 00 (a stuffed byte) or a restart marker, which
/// belong to the data. `None` when the file ends first.
fn entropy_data_end(bytes: &[u8], mut from: usize) -> Option<usize> {
    loop {
        match bytes.get(from..from + 2)? {
            [0xFF, 0x00 | 0xD0..=0xD7] => from += 2,
            [0xFF, _] => return Some(from),
            _ => from += 1,
        }
    }
}

/// What is wrong with a JPEG's structure.
#[derive(Debug, PartialEq, Eq)]
enum JpegProblem {
    Corrupt(&'static str),
    /// A coding process the decoder does not implement (named).
    Unsupported(&'static str),
}

impl From<&'static str> for JpegProblem {
    fn from(reason: &'static str) -> Self {
        JpegProblem::Corrupt(reason)
    }
}

/// Walks a JPEG's segments and entropy-coded scans to its end-of-image marker. The
/// decoder is lenient and would return a truncated photo with its missing part grey; we
/// refuse it, and say what is wrong. Bytes after the end-of-image marker (a trailer, or
/// another file appended) are ignored: the output is re-encoded without them. A frame
/// coded in a process the decoder lacks (lossless, hierarchical, arithmetic) is refused
/// as unsupported.
///
/// Returns where stray bytes between segments are (which strict decoding refuses, and
/// libjpeg skips), so that they can be left out.
fn jpeg_check_structure(bytes: &[u8]) -> Result<Vec<std::ops::Range<usize>>, JpegProblem> {
    const TRUNCATED: &str = "the data ends before the image does (no end-of-image marker)";
    let mut i = 2; // after SOI (checked by format detection)
    let mut scans = 0;
    let mut stray: Vec<std::ops::Range<usize>> = Vec::new();
    loop {
        // Fill bytes (FF FF …) may precede a marker.
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        match (bytes.get(i), bytes.get(i + 1)) {
            (None, _) | (_, None) => return Err(TRUNCATED.into()),
            (Some(0xFF), Some(&marker)) => {
                i += 2;
                match marker {
                    0xD9 if scans > 0 => return Ok(stray),
                    0xD9 => return Err("the image ends before any image data (end-of-image marker before the first scan)".into()),
                    0xD0..=0xD7 | 0x01 => continue,
                    0xC3 => return Err(JpegProblem::Unsupported("a lossless JPEG (SOF3)")),
                    0xC5..=0xC7 => return Err(JpegProblem::Unsupported("a hierarchical JPEG (SOF5-7)")),
                    0xC9..=0xCB | 0xCD..=0xCF | 0xCC => return Err(JpegProblem::Unsupported("an arithmetic-coded JPEG")),
                    _ => {}
                }
                let len = match bytes.get(i..i + 2) {
                    Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
                    None => return Err(TRUNCATED.into()),
                };
                if len < 2 {
                    return Err("a segment has an invalid length".into());
                }
                i += len;
                if i > bytes.len() {
                    return Err(TRUNCATED.into());
                }
                if marker == 0xDA {
                    scans += 1;
                    i = entropy_data_end(bytes, i).ok_or(TRUNCATED)?;
                }
            }
            // Stray bytes between segments (some writers pad): skipped, as libjpeg does.
            _ => {
                match stray.last_mut() {
                    Some(run) if run.end == i => run.end += 1,
                    _ => stray.push(i..i + 1),
                }
                i += 1;
            }
        }
    }
}

/// Whether a PNG is an APNG, a WebP or GIF is animated, or a TIFF has several pages (or
/// a thumbnail first): such files are decoded picture by picture (`sequence`), every
/// one of them kept (a TIFF's thumbnails and masks dropped).
fn is_animated(bytes: &[u8], format: Format, limits: image::Limits) -> Result<bool, image::ImageError> {
    let broken = |reason: &str| image::ImageError::Decoding(image::error::DecodingError::new(format.to_image().map_or(image::error::ImageFormatHint::Unknown, Into::into), reason.to_string()));
    match format {
        Format::Png => image::codecs::png::PngDecoder::with_limits(Cursor::new(bytes), limits)?.is_apng(),
        Format::Webp => Ok(image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))?.has_animation()),
        Format::Gif => Ok(frames::gif_images(bytes, 2).map_err(broken)? > 1),
        // A TIFF whose first directory is a thumbnail (a raw file's preview) too: its
        // directories are sorted there, and a file of thumbnails only is refused.
        Format::Tiff => Ok(frames::tiff_pages(bytes, 2).map_err(broken)? > 1 || frames::tiff_first_is_thumbnail(bytes).map_err(broken)?),
        Format::Jpeg | Format::Heic | Format::Avif => Ok(false),
    }
}

fn orientation_tag(o: Orientation) -> u8 {
    match o {
        Orientation::NoTransforms => 1,
        Orientation::FlipHorizontal => 2,
        Orientation::Rotate180 => 3,
        Orientation::FlipVertical => 4,
        Orientation::Rotate90FlipH => 5,
        Orientation::Rotate90 => 6,
        Orientation::Rotate270FlipH => 7,
        Orientation::Rotate270 => 8,
    }
}

/// NeuQuant's sampling step for GIF palettes (1 best and slowest, 30 fastest): 10 is
/// `gif`'s own suggestion for a balance.
const GIF_QUANTISER_SPEED: i32 = 10;

/// Encodes a still frame in `format`, WebP lossless: [`encode_pictures`] with one
/// picture and [`Quality::lossless_webp`].
pub fn encode(frame: Frame, format: Format, metadata: &KeptMetadata, jpeg_quality: u8) -> Result<Vec<u8>, EncodeError> {
    encode_pictures(vec![frame], None, format, metadata, Quality::lossless_webp(jpeg_quality))
}

/// How lossy formats are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quality {
    /// 1–100.
    pub jpeg: u8,
    /// 1–100 for lossy WebP; `None` writes WebP lossless.
    pub webp: Option<u8>,
}

impl Quality {
    /// JPEG at `jpeg`, WebP lossless.
    pub fn lossless_webp(jpeg: u8) -> Self {
        Self { jpeg, webp: None }
    }
}

/// Encodes pictures in `format`: one (a still), an animation's frames with their
/// `timing` (GIF, APNG, animated WebP, or TIFF pages) or a TIFF's pages (TIFF only).
/// No metadata is written except what `metadata` holds, and for one picture only.
///
/// JPEG has no alpha: an RGBA frame is flattened to RGB (`jpeg-encoder`, SIMD). WebP is
/// lossless (image-webp) or lossy at `quality.webp` (libwebp, kept metadata added in the
/// extended container). GIF is quantised to one
/// 256-colour palette per frame (NeuQuant); TIFF is written uncompressed, with only its
/// baseline tags (and an ICC profile, when kept). GIF keeps no metadata at all.
pub fn encode_pictures(mut pictures: Vec<Frame>, timing: Option<&Timing>, format: Format, metadata: &KeptMetadata, quality: Quality) -> Result<Vec<u8>, EncodeError> {
    use image::ImageEncoder;
    use image::codecs::{png::PngEncoder, webp::WebPEncoder};
    let err = |e: &dyn std::fmt::Display| EncodeError { format, reason: e.to_string() };
    if !format.writable() {
        return Err(err(&format!("Obscura does not write {}; write {}", format.name(), Format::written_names())));
    }
    if pictures.len() > 1 {
        if !holds_several(format, timing.is_some()) {
            return Err(err(&holds_one(format, timing.is_some())));
        }
        return sequence::encode(pictures, timing, format, quality.webp);
    }
    let frame = pictures.pop().ok_or_else(|| err(&"no picture to write"))?;
    if format == Format::Webp && quality.webp.is_some() {
        let (width, height) = (frame.width, frame.height);
        let webp = webp_writer::encode(&[frame], None, quality.webp).map_err(|e| err(&e))?;
        return Ok(webp_writer::with_metadata(webp, width, height, metadata));
    }
    let jpeg_quality = quality.jpeg;
    let mut out = Vec::with_capacity(frame.data.len() / 4);
    let (w, h) = (frame.width, frame.height);
    if format == Format::Jpeg {
        let (w16, h16) = (u16::try_from(w).map_err(|e| err(&e))?, u16::try_from(h).map_err(|e| err(&e))?);
        let mut enc = jpeg_encoder::Encoder::new(&mut out, jpeg_quality.clamp(1, 100));
        if let Some(icc) = &metadata.icc_profile {
            enc.add_icc_profile(icc).map_err(|e| err(&e))?;
        }
        if let Some(exif) = &metadata.exif {
            enc.add_exif_metadata(exif).map_err(|e| err(&e))?;
        }
        let color = if frame.channels == 4 { jpeg_encoder::ColorType::Rgba } else { jpeg_encoder::ColorType::Rgb };
        enc.encode(&frame.data, w16, h16, color).map_err(|e| err(&e))?;
        return Ok(out);
    }
    fn with_metadata<E: ImageEncoder>(mut enc: E, m: &KeptMetadata) -> E {
        // Both encoders accept both; an error would only mean "unsupported", and then the
        // metadata is simply not written, which is the safe direction.
        if let Some(icc) = &m.icc_profile {
            let _ = enc.set_icc_profile(icc.clone());
        }
        if let Some(exif) = &m.exif {
            let _ = enc.set_exif_metadata(exif.clone());
        }
        enc
    }
    let image = frame.into_dynamic();
    let color = image.color().into();
    let result = match format {
        Format::Png => {
            let enc = PngEncoder::new_with_quality(&mut out, image::codecs::png::CompressionType::Fast, image::codecs::png::FilterType::Adaptive);
            with_metadata(enc, metadata).write_image(image.as_bytes(), w, h, color)
        }
        Format::Gif => image::codecs::gif::GifEncoder::new_with_speed(&mut out, GIF_QUANTISER_SPEED).write_image(image.as_bytes(), w, h, color),
        Format::Tiff => with_metadata(image::codecs::tiff::TiffEncoder::new(Cursor::new(&mut out)), metadata).write_image(image.as_bytes(), w, h, color),
        Format::Webp => with_metadata(WebPEncoder::new_lossless(&mut out), metadata).write_image(image.as_bytes(), w, h, color),
        Format::Jpeg | Format::Heic | Format::Avif => unreachable!("handled above"),
    };
    result.map_err(|e| err(&e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A baseline JPEG whose start-of-frame marker is changed to `sof`.
    fn with_frame_marker(sof: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        let frame = Frame::new(16, 16, 3, vec![128; 16 * 16 * 3]);
        bytes.extend(encode(frame, Format::Jpeg, &KeptMetadata::default(), 90).unwrap());
        let at = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline frame");
        bytes[at + 1] = sof;
        bytes
    }

    #[test]
    fn jpeg_coding_processes_the_decoder_lacks_are_unsupported_not_corrupt() {
        for (sof, what) in [(0xC3, "lossless"), (0xC5, "hierarchical"), (0xC7, "hierarchical"), (0xC9, "arithmetic"), (0xCB, "arithmetic"), (0xCD, "arithmetic")] {
            let err = decode(&with_frame_marker(sof), &ImageConfig::default()).unwrap_err();
            assert!(matches!(err, DecodeError::Unsupported { format: Format::Jpeg, .. }), "{sof:#x}: {err}");
            assert!(err.to_string().contains(what), "{sof:#x}: {err}");
        }
        // Baseline, extended sequential and progressive frames are read.
        assert!(decode(&with_frame_marker(0xC0), &ImageConfig::default()).is_ok());
        assert!(decode(&with_frame_marker(0xC1), &ImageConfig::default()).is_ok());
    }

    fn eval_images() -> Vec<std::path::PathBuf> {
        let eval = std::env::var_os("OBSCURA_EVAL_DIR").map(std::path::PathBuf::from);
        let eval = eval.unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval"));
        let mut photos: Vec<_> = std::fs::read_dir(eval.join("images")).expect("the shared eval photos").map(|e| e.unwrap().path()).collect();
        photos.sort();
        photos
    }

    /// A header that claims far more pixels than the data holds (here 16000×6000 from a
    /// 16×16 file) is refused before its pixels are allocated, not decoded grey.
    #[test]
    fn a_jpeg_header_claiming_more_pixels_than_its_data_holds_is_refused() {
        let mut bytes = encode(Frame::new(16, 16, 3, vec![90; 16 * 16 * 3]), Format::Jpeg, &KeptMetadata::default(), 90).unwrap();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x17, 0x70, 0x3E, 0x80]); // height 6000, width 16000
        let err = decode(&bytes, &ImageConfig::default()).unwrap_err();
        assert!(err.to_string().contains("claims 16000×6000 pixels"), "{err}");
    }

    /// Strict decoding reads every photo of the evaluation set exactly as `image`'s own
    /// (lenient) decoder does.
    #[test]
    fn strict_jpeg_decoding_reads_every_eval_photo_as_image_does() {
        let config = ImageConfig::default();
        let mut jpegs = 0;
        for path in eval_images() {
            let bytes = std::fs::read(&path).unwrap();
            if image::guess_format(&bytes).ok() != Some(ImageFormat::Jpeg) {
                continue;
            }
            let strict = jpeg_pixels(&bytes, &config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let lenient = image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg).unwrap();
            assert_eq!(strict.color(), lenient.color(), "{}", path.display());
            assert!(strict.as_bytes() == lenient.as_bytes(), "{}: pixels differ", path.display());
            jpegs += 1;
        }
        assert!(jpegs > 300, "{jpegs} JPEGs read");
    }
}
