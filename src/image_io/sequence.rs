//! Files of several pictures: an animation's frames (GIF, APNG, animated WebP) and a
//! multi-page TIFF's pages, decoded whole and written back whole.
//!
//! Owns: turning such a file into full pictures, each animation frame composited onto
//! the canvas as a viewer shows it (so a redaction drawn on a frame covers what is seen
//! of it, whatever parts earlier frames left behind), with the animation's timing; and
//! writing redacted pictures back as an animation or as pages, every frame whole (no
//! frame shows through to the one before it). Does not own: still pictures (the parent's
//! `decode` and `encode`), counting pictures from the file's structure (`frames`), WebP
//! coding (`webp_writer`). Animations and page sets are written with no metadata at all,
//! even when the allowlist is kept for stills.

use std::io::Cursor;

use image::{AnimationDecoder, ImageDecoder};

use super::{DecodeError, EncodeError, Format, Frame, ImageConfig};

/// How an animation plays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long each frame shows, in milliseconds (one per frame).
    pub delays_ms: Vec<u32>,
    /// How many times it plays; 0 = forever.
    pub loops: u32,
}

/// Every picture of an animated GIF, PNG or WebP (with its timing) or of a multi-page
/// TIFF (no timing), within `config`'s size, memory and frame limits. All frames of an
/// animation have the canvas's size; all have 3 channels unless one has transparency.
pub(super) fn decode(bytes: &[u8], format: Format, config: &ImageConfig) -> Result<(Vec<Frame>, Option<Timing>), DecodeError> {
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge { width: 0, height: 0, limit: format!("{} bytes of memory", config.max_alloc_bytes) },
        other => DecodeError::Corrupt { format, reason: other.to_string() },
    };
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(config.max_dimension);
    limits.max_image_height = Some(config.max_dimension);
    limits.max_alloc = Some(config.max_alloc_bytes);
    let cursor = Cursor::new(bytes);
    // The size checked from the header before any frame is decoded; the frames come lazily.
    type Started<'a> = (image::Frames<'a>, image::metadata::LoopCount, (u32, u32));
    fn start<'a, D: ImageDecoder + AnimationDecoder<'a>>(mut decoder: D, limits: image::Limits, config: &ImageConfig, corrupt: &dyn Fn(image::ImageError) -> DecodeError) -> Result<Started<'a>, DecodeError> {
        let size = decoder.dimensions();
        config.check_size(size.0, size.1)?;
        decoder.set_limits(limits).map_err(corrupt)?;
        let loops = decoder.loop_count();
        Ok((decoder.into_frames(), loops, size))
    }
    let (frames, loops, (width, height)) = match format {
        Format::Gif => start(image::codecs::gif::GifDecoder::new(cursor).map_err(corrupt)?, limits, config, &corrupt)?,
        Format::Webp => start(image::codecs::webp::WebPDecoder::new(cursor).map_err(corrupt)?, limits, config, &corrupt)?,
        Format::Png => {
            let decoder = image::codecs::png::PngDecoder::with_limits(cursor, limits).map_err(corrupt)?;
            let size = decoder.dimensions();
            config.check_size(size.0, size.1)?;
            let decoder = decoder.apng().map_err(corrupt)?;
            let loops = decoder.loop_count();
            (decoder.into_frames(), loops, size)
        }
        Format::Tiff => return Ok((tiff_pages(bytes, config)?, None)),
        Format::Jpeg | Format::Heic | Format::Avif => unreachable!("{} files hold one picture here", format.name()),
    };
    let canvas = u64::from(width) * u64::from(height) * 4;
    let mut pictures = Vec::new();
    let mut delays_ms = Vec::new();
    for frame in frames {
        let frame = frame.map_err(corrupt)?;
        check_count(format, pictures.len(), config)?;
        check_memory(format, (pictures.len() as u64 + 1) * canvas, width, height, config)?;
        let (numer, denom) = frame.delay().numer_denom_ms();
        delays_ms.push(numer.checked_div(denom).unwrap_or(0));
        let buffer = frame.into_buffer();
        if buffer.dimensions() != (width, height) {
            return Err(DecodeError::Corrupt { format, reason: "a frame is not the size of the canvas".into() });
        }
        pictures.push(Frame::new(width, height, 4, buffer.into_raw()));
    }
    if pictures.is_empty() {
        return Err(DecodeError::Corrupt { format, reason: "the animation has no frames".into() });
    }
    let loops = match loops {
        image::metadata::LoopCount::Infinite => 0,
        image::metadata::LoopCount::Finite(n) => n.get(),
    };
    Ok((opaque_as_rgb(pictures), Some(Timing { delays_ms, loops })))
}

fn check_count(format: Format, decoded: usize, config: &ImageConfig) -> Result<(), DecodeError> {
    if decoded as u64 >= u64::from(config.max_frames) {
        return Err(DecodeError::TooManyFrames { format, limit: config.max_frames });
    }
    Ok(())
}

fn check_memory(format: Format, total: u64, width: u32, height: u32, config: &ImageConfig) -> Result<(), DecodeError> {
    if total > config.max_alloc_bytes {
        let what = if format == Format::Tiff { "pages" } else { "frames" };
        return Err(DecodeError::TooLarge { width, height, limit: format!("{} bytes of memory for all its {what}", config.max_alloc_bytes) });
    }
    Ok(())
}

/// RGBA frames become RGB when none of them has a transparent pixel.
fn opaque_as_rgb(frames: Vec<Frame>) -> Vec<Frame> {
    if frames.iter().any(|f| f.channels == 4 && f.data.chunks_exact(4).any(|p| p[3] != 255)) {
        return frames;
    }
    frames
        .into_iter()
        .map(|f| if f.channels == 3 { f } else { Frame::new(f.width, f.height, 3, f.data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()) })
        .collect()
}

/// Every page of a TIFF, each in its own size: 8- or 16-bit grey, grey with alpha, RGB
/// or RGBA (16-bit kept to its high byte), each turned upright by its Orientation tag.
/// Thumbnail and mask directories are skipped (`is_thumbnail_or_mask`).
fn tiff_pages(bytes: &[u8], config: &ImageConfig) -> Result<Vec<Frame>, DecodeError> {
    use tiff::ColorType;
    use tiff::decoder::{Decoder, DecodingResult, Limits};
    let format = Format::Tiff;
    let corrupt = |e: tiff::TiffError| match e {
        tiff::TiffError::LimitsExceeded => DecodeError::TooLarge { width: 0, height: 0, limit: format!("{} bytes of memory", config.max_alloc_bytes) },
        tiff::TiffError::UnsupportedError(what) => DecodeError::Unsupported { format, what: format!("a TIFF page of this kind ({what})") },
        other => DecodeError::Corrupt { format, reason: other.to_string() },
    };
    let mut limits = Limits::default();
    limits.decoding_buffer_size = usize::try_from(config.max_alloc_bytes).unwrap_or(usize::MAX);
    limits.intermediate_buffer_size = limits.decoding_buffer_size;
    let mut decoder = Decoder::new(Cursor::new(bytes)).map_err(corrupt)?.with_limits(limits);
    let mut pages = Vec::new();
    let mut total = 0u64;
    for directory in 0usize.. {
        if directory > 0 {
            if !decoder.more_images() {
                break;
            }
            decoder.next_image().map_err(corrupt)?;
        }
        // Thumbnails and masks count against the limit too: they are not decoded, but a
        // chain of them is still work.
        check_count(format, directory, config)?;
        if is_thumbnail_or_mask(&mut decoder).map_err(corrupt)? {
            continue;
        }
        let (width, height) = decoder.dimensions().map_err(corrupt)?;
        config.check_size(width, height)?;
        let (channels_in, alpha) = match decoder.colortype().map_err(corrupt)? {
            ColorType::Gray(8 | 16) => (1, false),
            ColorType::GrayA(8 | 16) => (2, true),
            ColorType::RGB(8 | 16) => (3, false),
            ColorType::RGBA(8 | 16) => (4, true),
            other => return Err(DecodeError::Unsupported { format, what: format!("a page of a multi-page TIFF in {other:?}") }),
        };
        let channels: u8 = if alpha { 4 } else { 3 };
        total += u64::from(width) * u64::from(height) * u64::from(channels);
        check_memory(format, total, width, height, config)?;
        let samples: Vec<u8> = match decoder.read_image().map_err(corrupt)? {
            DecodingResult::U8(v) => v,
            DecodingResult::U16(v) => v.into_iter().map(|s| (s >> 8) as u8).collect(),
            _ => return Err(DecodeError::Unsupported { format, what: "a TIFF page with samples of more than 16 bits".into() }),
        };
        let pixels = width as usize * height as usize;
        if samples.len() < pixels * channels_in {
            return Err(DecodeError::Corrupt { format, reason: "a page holds fewer samples than its size needs".into() });
        }
        let data: Vec<u8> = match channels_in {
            1 => samples[..pixels].iter().flat_map(|&g| [g, g, g]).collect(),
            2 => samples[..pixels * 2].chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect(),
            _ => samples[..pixels * channels_in].to_vec(),
        };
        let orientation = decoder.find_tag_unsigned(tiff::tags::Tag::Orientation).map_err(corrupt)?;
        pages.push(upright(Frame::new(width, height, channels, data), orientation));
    }
    if pages.is_empty() {
        return Err(DecodeError::Unsupported { format, what: "a TIFF whose every directory is a thumbnail or a mask (no full-resolution page)".into() });
    }
    Ok(pages)
}

/// Whether the decoder's current TIFF directory is a thumbnail or a mask, not a page
/// (`frames::tiff_is_thumbnail`).
fn is_thumbnail_or_mask(decoder: &mut tiff::decoder::Decoder<Cursor<&[u8]>>) -> tiff::TiffResult<bool> {
    use tiff::tags::Tag;
    Ok(super::frames::tiff_is_thumbnail(decoder.find_tag_unsigned(Tag::NewSubfileType)?, decoder.find_tag_unsigned(Tag::SubfileType)?))
}

/// A page turned upright by its Orientation tag (274), as a still TIFF is.
fn upright(page: Frame, orientation: Option<u16>) -> Frame {
    let Some(orientation) = orientation.and_then(|o| u8::try_from(o).ok()).and_then(image::metadata::Orientation::from_exif) else {
        return page;
    };
    let (width, height, channels) = (page.width, page.height, page.channels);
    let mut picture = if channels == 4 {
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_raw(width, height, page.data).expect("a frame's size matches its data"))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(width, height, page.data).expect("a frame's size matches its data"))
    };
    picture.apply_orientation(orientation);
    let (width, height) = (picture.width(), picture.height());
    let data = if channels == 4 { picture.into_rgba8().into_raw() } else { picture.into_rgb8().into_raw() };
    Frame::new(width, height, channels, data)
}

/// Whether `format` can hold an input's several pictures: an `animation` goes to GIF,
/// PNG (APNG), WebP or TIFF (as pages), a TIFF's pages only to TIFF (pages can differ in
/// size and have no timing).
pub fn holds_several(format: Format, animation: bool) -> bool {
    match format {
        Format::Tiff => true,
        Format::Gif | Format::Png | Format::Webp => animation,
        Format::Jpeg | Format::Heic | Format::Avif => false,
    }
}

/// Why `format` cannot hold an input's several pictures, naming the formats that can.
pub fn holds_one(format: Format, animation: bool) -> String {
    if animation {
        format!("{} holds one picture, and this is an animation: write it as GIF, PNG, WebP or TIFF (pages)", format.name())
    } else {
        format!("{} cannot hold a TIFF's pages (of their own sizes, with no timing): write it as TIFF", format.name())
    }
}

/// Writes several pictures: GIF (each frame quantised to its own palette, replacing the
/// one before), APNG, animated WebP, or TIFF pages (uncompressed).
pub(super) fn encode(pictures: Vec<Frame>, timing: Option<&Timing>, format: Format, webp_quality: Option<u8>) -> Result<Vec<u8>, EncodeError> {
    let err = |e: &dyn std::fmt::Display| EncodeError { format, reason: e.to_string() };
    let mut out = Vec::new();
    if format == Format::Tiff {
        let mut encoder = tiff::encoder::TiffEncoder::new(Cursor::new(&mut out)).map_err(|e| err(&e))?;
        for page in &pictures {
            let result = if page.channels == 4 {
                encoder.write_image::<tiff::encoder::colortype::RGBA8>(page.width, page.height, &page.data)
            } else {
                encoder.write_image::<tiff::encoder::colortype::RGB8>(page.width, page.height, &page.data)
            };
            result.map_err(|e| err(&e))?;
        }
        drop(encoder);
        return Ok(out);
    }
    let timing = timing.ok_or_else(|| err(&"pages of a TIFF have no timing: they are written as TIFF pages only"))?;
    let (width, height) = (pictures[0].width, pictures[0].height);
    if pictures.iter().any(|p| (p.width, p.height) != (width, height)) || timing.delays_ms.len() != pictures.len() {
        return Err(err(&"the frames of an animation must share one size and have one delay each"));
    }
    match format {
        Format::Gif => {
            let (w16, h16) = (u16::try_from(width).map_err(|e| err(&e))?, u16::try_from(height).map_err(|e| err(&e))?);
            let mut encoder = gif::Encoder::new(&mut out, w16, h16, &[]).map_err(|e| err(&e))?;
            let repeat = match timing.loops {
                0 => gif::Repeat::Infinite,
                n => gif::Repeat::Finite(u16::try_from(n).unwrap_or(u16::MAX)),
            };
            encoder.set_repeat(repeat).map_err(|e| err(&e))?;
            for (picture, delay) in pictures.into_iter().zip(&timing.delays_ms) {
                let mut rgba = to_rgba(picture);
                let mut frame = gif::Frame::from_rgba_speed(w16, h16, &mut rgba, super::GIF_QUANTISER_SPEED);
                frame.delay = u16::try_from(delay / 10).unwrap_or(u16::MAX);
                // Each frame is whole: cleared after it shows, so where the next one is
                // transparent nothing of this one shows through.
                frame.dispose = gif::DisposalMethod::Background;
                encoder.write_frame(&frame).map_err(|e| err(&e))?;
            }
            drop(encoder);
            Ok(out)
        }
        Format::Png => {
            let mut encoder = png::Encoder::new(&mut out, width, height);
            let alpha = pictures.iter().any(|p| p.channels == 4);
            encoder.set_color(if alpha { png::ColorType::Rgba } else { png::ColorType::Rgb });
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Fast);
            encoder.set_animated(u32::try_from(pictures.len()).map_err(|e| err(&e))?, timing.loops).map_err(|e| err(&e))?;
            let mut writer = encoder.write_header().map_err(|e| err(&e))?;
            for (picture, delay) in pictures.into_iter().zip(&timing.delays_ms) {
                // Milliseconds as a fraction of a second, within the chunk's 16 bits.
                let (numer, denom) = if *delay <= u32::from(u16::MAX) { (*delay as u16, 1000) } else { (u16::try_from(delay / 100).unwrap_or(u16::MAX), 10) };
                writer.set_frame_delay(numer, denom).map_err(|e| err(&e))?;
                writer.set_dispose_op(png::DisposeOp::Background).map_err(|e| err(&e))?;
                writer.set_blend_op(png::BlendOp::Source).map_err(|e| err(&e))?;
                let data = if alpha { to_rgba(picture) } else { picture.data };
                writer.write_image_data(&data).map_err(|e| err(&e))?;
            }
            writer.finish().map_err(|e| err(&e))?;
            Ok(out)
        }
        Format::Webp => super::webp_writer::encode(&pictures, Some(timing), webp_quality).map_err(|e| err(&e)),
        Format::Tiff | Format::Jpeg | Format::Heic | Format::Avif => Err(err(&format!("{} does not hold an animation", format.name()))),
    }
}

fn to_rgba(picture: Frame) -> Vec<u8> {
    if picture.channels == 4 {
        picture.data
    } else {
        picture.data.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moving_square(frames: u32) -> Vec<Frame> {
        (0..frames)
            .map(|i| {
                let mut f = Frame::new(32, 16, 3, vec![40; 32 * 16 * 3]);
                for y in 4..12 {
                    for x in (i * 8)..(i * 8 + 8) {
                        let at = (y * 32 + x) as usize * 3;
                        f.data[at..at + 3].copy_from_slice(&[250, 20, 20]);
                    }
                }
                f
            })
            .collect()
    }

    #[test]
    fn animations_and_pages_come_back_frame_for_frame_with_their_timing() {
        let timing = Timing { delays_ms: vec![100, 250, 40], loops: 3 };
        for format in [Format::Gif, Format::Png, Format::Webp, Format::Tiff] {
            let frames = moving_square(3);
            let bytes = encode(frames.clone(), Some(&timing), format, None).unwrap();
            let (back, back_timing) = decode(&bytes, format, &ImageConfig::default()).unwrap();
            assert_eq!(back.len(), 3, "{format:?}");
            for (i, (a, b)) in frames.iter().zip(&back).enumerate() {
                assert_eq!((b.width, b.height, b.channels), (32, 16, 3), "{format:?} frame {i}");
                let worst = a.data.iter().zip(&b.data).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
                assert!(worst <= 12, "{format:?} frame {i}: off by {worst}");
            }
            if format == Format::Tiff {
                assert_eq!(back_timing, None);
            } else {
                assert_eq!(back_timing, Some(timing.clone()), "{format:?}");
            }
        }
    }

    #[test]
    fn frame_and_memory_limits_hold_for_the_whole_file() {
        let timing = Timing { delays_ms: vec![10; 3], loops: 0 };
        let bytes = encode(moving_square(3), Some(&timing), Format::Gif, None).unwrap();
        let few = ImageConfig { max_frames: 2, ..ImageConfig::default() };
        assert!(matches!(decode(&bytes, Format::Gif, &few), Err(DecodeError::TooManyFrames { limit: 2, .. })));
        let small = ImageConfig { max_alloc_bytes: 32 * 16 * 4 * 2, ..ImageConfig::default() };
        assert!(matches!(decode(&bytes, Format::Gif, &small), Err(DecodeError::TooLarge { .. })));
    }
}
