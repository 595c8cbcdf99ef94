//! WebP output through libwebp (the `libwebp-sys` crate, built from libwebp's own C
//! source with the project; nothing is loaded from the system): lossy or lossless, one
//! picture or an animation.
//!
//! Owns: coding redacted pixels as WebP, and placing kept (already sanitised) EXIF and
//! ICC chunks in a still one. Does not own: reading WebP (image-webp, pure Rust, reads
//! every input, so no untrusted byte reaches this C code), what metadata is kept
//! (`metadata`), the lossy-or-lossless choice (the pipeline's, from the input).

use std::ffi::{CStr, c_int, c_void};

use libwebp_sys as sys;

use super::{Frame, KeptMetadata};
use super::sequence::Timing;

/// A still WebP with `metadata`'s ICC profile and EXIF block added: the extended format
/// (a `VP8X` header whose flags name them, `ICCP` before the picture, `EXIF` after it).
pub(super) fn with_metadata(webp: Vec<u8>, width: u32, height: u32, metadata: &KeptMetadata) -> Vec<u8> {
    if metadata.icc_profile.is_none() && metadata.exif.is_none() {
        return webp;
    }
    let chunk = |kind: &[u8; 4], data: &[u8]| {
        let mut c = Vec::with_capacity(data.len() + 9);
        c.extend_from_slice(kind);
        c.extend_from_slice(&(data.len() as u32).to_le_bytes());
        c.extend_from_slice(data);
        if data.len() % 2 == 1 {
            c.push(0);
        }
        c
    };
    // The chunks libwebp wrote (its own VP8X, if any, is rebuilt below).
    let (mut flags, mut pictures) = (0u8, Vec::new());
    let mut i = 12;
    while let (Some(kind), Some(size)) = (webp.get(i..i + 4), webp.get(i + 4..i + 8)) {
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
        let end = (i + 8 + size + (size & 1)).min(webp.len());
        if kind == b"VP8X" {
            flags = webp.get(i + 8).copied().unwrap_or(0);
        } else {
            pictures.extend_from_slice(&webp[i..end]);
        }
        i = end;
    }
    if metadata.icc_profile.is_some() {
        flags |= 0x20;
    }
    if metadata.exif.is_some() {
        flags |= 0x08;
    }
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let mut body = b"WEBP".to_vec();
    body.extend(chunk(b"VP8X", &[vec![flags, 0, 0, 0], u24(width - 1), u24(height - 1)].concat()));
    if let Some(icc) = &metadata.icc_profile {
        body.extend(chunk(b"ICCP", icc));
    }
    body.extend(pictures);
    if let Some(exif) = &metadata.exif {
        body.extend(chunk(b"EXIF", exif));
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// WebP's largest side.
const MAX_SIDE: u32 = 16_383;

/// Encodes `pictures` as WebP: one picture when `timing` is `None`, else an animation of
/// them (all one size); lossy at `quality` (1–100), or lossless when it is `None`.
pub(super) fn encode(pictures: &[Frame], timing: Option<&Timing>, quality: Option<u8>) -> Result<Vec<u8>, String> {
    let first = pictures.first().ok_or("no picture to write")?;
    let (width, height) = (first.width, first.height);
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!("WebP holds at most {MAX_SIDE} pixels per side; this image is {width}×{height}"));
    }
    let config = config(quality)?;
    match timing {
        None => {
            let [picture] = pictures else { return Err("several pictures need an animation's timing".into()) };
            still(picture, &config, quality.is_none())
        }
        Some(timing) => animation(pictures, timing, &config),
    }
}

fn config(quality: Option<u8>) -> Result<sys::WebPConfig, String> {
    let mut config = std::mem::MaybeUninit::<sys::WebPConfig>::zeroed();
    // SAFETY: libwebp fills in the whole struct, or returns 0 (then it is not read).
    let mut config = unsafe {
        if sys::WebPConfigInitInternal(config.as_mut_ptr(), sys::WebPPreset::WEBP_PRESET_DEFAULT, 75.0, sys::WEBP_ENCODER_ABI_VERSION as c_int) == 0 {
            return Err("libwebp's encoder does not match its headers".into());
        }
        config.assume_init()
    };
    match quality {
        Some(q) => config.quality = f32::from(q.clamp(1, 100)),
        None => {
            config.lossless = 1;
            config.exact = 1; // keep the colour under transparent pixels as it is
        }
    }
    // SAFETY: a fully initialised config.
    if unsafe { sys::WebPValidateConfig(&config) } == 0 {
        return Err("libwebp refused the settings".into());
    }
    Ok(config)
}

/// A `WebPPicture` holding a copy of a frame's pixels, freed when dropped.
struct Picture(sys::WebPPicture);

impl Picture {
    fn new(frame: &Frame, argb: bool) -> Result<Self, String> {
        let mut picture = std::mem::MaybeUninit::<sys::WebPPicture>::zeroed();
        // SAFETY: libwebp initialises the struct (returning 0 on a version mismatch, and
        // then it is not used); the import reads `height` rows of `stride` bytes from the
        // frame's data, which holds exactly that (checked in Frame::new).
        unsafe {
            if sys::WebPPictureInitInternal(picture.as_mut_ptr(), sys::WEBP_ENCODER_ABI_VERSION as c_int) == 0 {
                return Err("libwebp's encoder does not match its headers".into());
            }
            let mut picture = Picture(picture.assume_init());
            picture.0.use_argb = c_int::from(argb);
            picture.0.width = frame.width as c_int;
            picture.0.height = frame.height as c_int;
            let stride = frame.stride() as c_int;
            let imported = if frame.channels == 4 {
                sys::WebPPictureImportRGBA(&mut picture.0, frame.data.as_ptr(), stride)
            } else {
                sys::WebPPictureImportRGB(&mut picture.0, frame.data.as_ptr(), stride)
            };
            if imported == 0 {
                return Err("libwebp could not take the pixels (out of memory)".into());
            }
            Ok(picture)
        }
    }
}

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`; frees only what libwebp allocated for it.
        unsafe { sys::WebPPictureFree(&mut self.0) }
    }
}

fn still(frame: &Frame, config: &sys::WebPConfig, lossless: bool) -> Result<Vec<u8>, String> {
    let mut picture = Picture::new(frame, lossless)?;
    // SAFETY: the writer lives until it is cleared below, after the encoder's last call
    // to it; its buffer is copied out before it is freed.
    unsafe {
        let mut writer = std::mem::MaybeUninit::<sys::WebPMemoryWriter>::zeroed().assume_init();
        sys::WebPMemoryWriterInit(&mut writer);
        picture.0.writer = Some(sys::WebPMemoryWrite);
        picture.0.custom_ptr = (&mut writer as *mut sys::WebPMemoryWriter).cast::<c_void>();
        let ok = sys::WebPEncode(config, &mut picture.0);
        let result = if ok == 0 {
            Err(format!("libwebp failed ({:?})", picture.0.error_code))
        } else {
            Ok(std::slice::from_raw_parts(writer.mem, writer.size).to_vec())
        };
        sys::WebPMemoryWriterClear(&mut writer);
        result
    }
}

/// A `WebPAnimEncoder`, deleted when dropped.
struct AnimEncoder(*mut sys::WebPAnimEncoder);

impl Drop for AnimEncoder {
    fn drop(&mut self) {
        // SAFETY: made by WebPAnimEncoderNewInternal, deleted once.
        unsafe { sys::WebPAnimEncoderDelete(self.0) }
    }
}

impl AnimEncoder {
    fn error(&self) -> String {
        // SAFETY: libwebp returns a NUL-terminated string owned by the encoder, or null.
        let message = unsafe { sys::WebPAnimEncoderGetError(self.0) };
        if message.is_null() { "libwebp failed".into() } else { unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned() }
    }
}

fn animation(frames: &[Frame], timing: &Timing, config: &sys::WebPConfig) -> Result<Vec<u8>, String> {
    let (width, height) = (frames[0].width, frames[0].height);
    if frames.iter().any(|f| (f.width, f.height) != (width, height)) || timing.delays_ms.len() != frames.len() {
        return Err("the frames of an animation must share one size and have one delay each".into());
    }
    // SAFETY: the options are initialised by libwebp before use; every picture handed to
    // the encoder outlives the call; the assembled data is copied out, then freed once.
    unsafe {
        let mut options = std::mem::MaybeUninit::<sys::WebPAnimEncoderOptions>::zeroed();
        if sys::WebPAnimEncoderOptionsInitInternal(options.as_mut_ptr(), sys::WEBP_MUX_ABI_VERSION as c_int) == 0 {
            return Err("libwebp's animation encoder does not match its headers".into());
        }
        let mut options = options.assume_init();
        options.anim_params.loop_count = c_int::try_from(timing.loops).unwrap_or(0xFFFF).min(0xFFFF);
        let encoder = AnimEncoder(sys::WebPAnimEncoderNewInternal(width as c_int, height as c_int, &options, sys::WEBP_MUX_ABI_VERSION as c_int));
        if encoder.0.is_null() {
            return Err("libwebp could not start an animation (out of memory)".into());
        }
        let mut at_ms: c_int = 0;
        for (frame, delay) in frames.iter().zip(&timing.delays_ms) {
            let mut picture = Picture::new(frame, true)?;
            if sys::WebPAnimEncoderAdd(encoder.0, &mut picture.0, at_ms, config) == 0 {
                return Err(encoder.error());
            }
            at_ms = c_int::try_from(*delay).ok().and_then(|d| at_ms.checked_add(d)).ok_or("the animation is too long for WebP")?;
        }
        // The end of the last frame, so that it keeps its own delay.
        if sys::WebPAnimEncoderAdd(encoder.0, std::ptr::null_mut(), at_ms, std::ptr::null()) == 0 {
            return Err(encoder.error());
        }
        let mut data = sys::WebPData::default();
        if sys::WebPAnimEncoderAssemble(encoder.0, &mut data) == 0 {
            return Err(encoder.error());
        }
        let out = std::slice::from_raw_parts(data.bytes, data.size).to_vec();
        sys::WebPDataClear(&mut data);
        Ok(out)
    }
}
