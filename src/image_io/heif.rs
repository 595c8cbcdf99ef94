//! HEIC and AVIF input through libheif, loaded when the first such file is read.
//!
//! Owns: recognising a HEIF file by its `ftyp` box ([`sniff`]), finding and loading
//! `libheif.so.1` (the copy `lib/` holds next to the executable, as the Python wheel and
//! the container ship it; else `OBSCURA_LIBHEIF`; else the system's), and decoding a
//! file's **primary image** to upright 8-bit RGB(A) ([`decode`]). Does not own size
//! policy (the caller's [`ImageConfig`]), metadata sanitising (`metadata`), or encoding:
//! Obscura writes no HEIC or AVIF, so such an input is written as JPEG by default.
//!
//! Nothing but the primary image's pixels comes out: thumbnails, depth maps, gain maps,
//! alpha and other auxiliary items, and EXIF/XMP are never read (only with
//! `keep_metadata`, the EXIF block and ICC profile, rebuilt from their allowlists). The
//! rotation, mirroring and crop the file declares (`irot`, `imir`, `clap`) are applied by
//! libheif, so the EXIF orientation tag of a HEIF is ignored, as the format says it must
//! be. A file that holds several top-level images (a collection or burst) is refused:
//! only one of them would come out.
//!
//! libheif is loaded at run time, not linked, so that every other format works on a
//! machine without it, and a HEIC there gets [`DecodeError::CodecMissing`] instead of
//! the program failing to start. The C API used is a small subset stable since libheif
//! 1.12 (Debian 12 ships 1.15).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

use super::{DecodeError, Format, Frame, ImageConfig, KeptMetadata, sanitize_exif, sanitize_icc};

/// The library's file name (its soname): what `lib/` holds and what the system search
/// looks for.
pub const LIBHEIF_NAME: &str = "libheif.so.1";

/// The format a HEIF file's `ftyp` box declares: HEIC (HEVC-coded, and generic HEIF) or
/// AVIF (AV1-coded); `None` if `bytes` does not start with an `ftyp` box of an image brand.
///
/// ```
/// use obscura::image_io::{Format, sniff};
/// let ftyp = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
/// assert_eq!(sniff(ftyp), Some(Format::Heic));
/// ```
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    let size = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    if bytes.get(4..8)? != b"ftyp" || size < 16 {
        return None;
    }
    let major = bytes.get(8..12)?;
    let compatible: Vec<&[u8]> = bytes.get(16..size.min(bytes.len()))?.chunks_exact(4).collect();
    let brand = |b: &[u8]| match b {
        b"avif" | b"avis" => Some(Format::Avif),
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"hevm" | b"hevs" => Some(Format::Heic),
        _ => None,
    };
    if let Some(format) = brand(major) {
        return Some(format);
    }
    // A generic HEIF brand: the compatible brands say which codec (or it is plain HEIF).
    if matches!(major, b"mif1" | b"msf1" | b"mif2" | b"miaf") {
        return compatible.iter().find_map(|b| brand(b)).or(Some(Format::Heic));
    }
    None
}

/// Decodes the primary image of a HEIF file: upright pixels (the file's rotation,
/// mirroring and crop applied), RGBA when it has an alpha channel, else RGB; and, when
/// `config.keep_metadata`, its EXIF and ICC profile through the allowlists.
pub(super) fn decode(bytes: &[u8], format: Format, config: &ImageConfig) -> Result<(Frame, KeptMetadata), DecodeError> {
    let api = Api::get(format)?;
    let corrupt = |reason: String| DecodeError::Corrupt { format, reason };
    // SAFETY: every pointer handed to libheif is valid for the call (the input slice
    // outlives the context: the guards below are dropped first), every object libheif
    // returns is released exactly once by its guard, and plane reads stay inside
    // `stride × height` as libheif reports them.
    unsafe {
        let ctx = Guard((api.context_alloc)(), api.context_free);
        if ctx.0.is_null() {
            return Err(corrupt("libheif could not allocate a context".into()));
        }
        // libheif's own bomb guard (width × width pixels); ours is checked below too.
        (api.set_max_size)(ctx.0, c_int::try_from(config.max_dimension).unwrap_or(c_int::MAX));
        api.check((api.read_from_memory)(ctx.0, bytes.as_ptr().cast(), bytes.len(), std::ptr::null()), format)?;
        let images = (api.top_level_images)(ctx.0);
        if images > 1 {
            return Err(DecodeError::Animated { format });
        }
        let mut raw_handle = std::ptr::null_mut();
        api.check((api.primary_handle)(ctx.0, &mut raw_handle), format)?;
        let handle = Guard(raw_handle, api.handle_release);
        let size = |w: c_int, h: c_int| (u32::try_from(w).unwrap_or(0), u32::try_from(h).unwrap_or(0));
        // Both the displayed size and the coded size (before a crop) must be within limits.
        let (width, height) = size((api.handle_width)(handle.0), (api.handle_height)(handle.0));
        let (coded_w, coded_h) = size((api.ispe_width)(handle.0), (api.ispe_height)(handle.0));
        if width == 0 || height == 0 {
            return Err(corrupt("the primary image has no size".into()));
        }
        config.check_size(width, height)?;
        config.check_size(coded_w, coded_h)?;
        let alpha = (api.has_alpha)(handle.0) != 0;
        let channels: u8 = if alpha { 4 } else { 3 };
        if u64::from(width.max(coded_w)) * u64::from(height.max(coded_h)) * u64::from(channels) * 2 > config.max_alloc_bytes {
            return Err(DecodeError::TooLarge { width, height, limit: format!("{} bytes of memory", config.max_alloc_bytes) });
        }
        let metadata = if config.keep_metadata { kept_metadata(api, handle.0) } else { KeptMetadata::default() };
        let options = Guard((api.options_alloc)(), api.options_free);
        if !options.0.is_null() {
            let o = &mut *options.0;
            o.ignore_transformations = 0;
            if o.version >= 2 {
                o.convert_hdr_to_8bit = 1;
            }
            if o.version >= 3 {
                // A damaged file is an error, not a best-effort picture with warnings.
                o.strict_decoding = 1;
            }
        }
        let chroma = if alpha { CHROMA_INTERLEAVED_RGBA } else { CHROMA_INTERLEAVED_RGB };
        let mut raw_image = std::ptr::null_mut();
        api.check((api.decode_image)(handle.0, &mut raw_image, COLORSPACE_RGB, chroma, options.0), format)?;
        let image = Guard(raw_image, api.image_release);
        let (w, h) = size((api.image_width)(image.0, CHANNEL_INTERLEAVED), (api.image_height)(image.0, CHANNEL_INTERLEAVED));
        if (w, h) != (width, height) {
            return Err(corrupt(format!("the decoded image is {w}×{h} pixels, not the {width}×{height} its header declares")));
        }
        let mut stride: c_int = 0;
        let plane = (api.plane)(image.0, CHANNEL_INTERLEAVED, &mut stride);
        let row = width as usize * usize::from(channels);
        let stride = usize::try_from(stride).unwrap_or(0);
        if plane.is_null() || stride < row {
            return Err(corrupt("libheif returned no pixel plane".into()));
        }
        let mut data = Vec::with_capacity(row * height as usize);
        for y in 0..height as usize {
            data.extend_from_slice(std::slice::from_raw_parts(plane.add(y * stride), row));
        }
        Ok((Frame::new(width, height, channels, data), metadata))
    }
}

/// The primary image's EXIF block (the first one, after its 4-byte offset to the TIFF
/// header) and ICC profile, each through its allowlist.
///
/// # Safety
/// `handle` must be a live image handle of `api`'s library.
unsafe fn kept_metadata(api: &Api, handle: *mut c_void) -> KeptMetadata {
    let mut kept = KeptMetadata::default();
    // SAFETY: buffers are sized as libheif reports before it fills them.
    unsafe {
        let mut id: u32 = 0;
        if (api.metadata_ids)(handle, c"Exif".as_ptr(), &mut id, 1) == 1 {
            let size = (api.metadata_size)(handle, id);
            if (8..64 << 20).contains(&size) {
                let mut raw = vec![0u8; size];
                if (api.metadata)(handle, id, raw.as_mut_ptr().cast()).code == 0 {
                    let offset = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
                    kept.exif = raw.get(4 + offset..).and_then(sanitize_exif);
                }
            }
        }
        let size = (api.profile_size)(handle);
        if (132..64 << 20).contains(&size) {
            let mut raw = vec![0u8; size];
            if (api.profile)(handle, raw.as_mut_ptr().cast()).code == 0 {
                kept.icc_profile = sanitize_icc(&raw);
            }
        }
    }
    kept
}

// The C API's values used here (libheif/heif.h).
const COLORSPACE_RGB: c_int = 1;
const CHROMA_INTERLEAVED_RGB: c_int = 10;
const CHROMA_INTERLEAVED_RGBA: c_int = 11;
const CHANNEL_INTERLEAVED: c_int = 10;
const ERROR_UNSUPPORTED_FILETYPE: c_int = 3;
const ERROR_UNSUPPORTED_FEATURE: c_int = 4;

/// `struct heif_error`, returned by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

/// `struct heif_decoding_options` up to its version-4 fields; libheif allocates it (a
/// later version's is longer, with the same start) and says which version it is.
#[repr(C)]
struct DecodingOptions {
    version: u8,
    ignore_transformations: u8,
    start_progress: *mut c_void,
    on_progress: *mut c_void,
    end_progress: *mut c_void,
    progress_user_data: *mut c_void,
    convert_hdr_to_8bit: u8,
    strict_decoding: u8,
    decoder_id: *const c_char,
}

/// Releases a libheif object when dropped.
struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching allocation and is released once.
            unsafe { (self.1)(self.0) }
        }
    }
}

type Ptr = *mut c_void;

/// The loaded library and the functions used.
struct Api {
    path: String,
    _library: libloading::Library,
    context_alloc: unsafe extern "C" fn() -> Ptr,
    context_free: unsafe extern "C" fn(Ptr),
    set_max_size: unsafe extern "C" fn(Ptr, c_int),
    read_from_memory: unsafe extern "C" fn(Ptr, *const c_void, usize, *const c_void) -> HeifError,
    top_level_images: unsafe extern "C" fn(Ptr) -> c_int,
    primary_handle: unsafe extern "C" fn(Ptr, *mut Ptr) -> HeifError,
    handle_release: unsafe extern "C" fn(Ptr),
    handle_width: unsafe extern "C" fn(Ptr) -> c_int,
    handle_height: unsafe extern "C" fn(Ptr) -> c_int,
    ispe_width: unsafe extern "C" fn(Ptr) -> c_int,
    ispe_height: unsafe extern "C" fn(Ptr) -> c_int,
    has_alpha: unsafe extern "C" fn(Ptr) -> c_int,
    metadata_ids: unsafe extern "C" fn(Ptr, *const c_char, *mut u32, c_int) -> c_int,
    metadata_size: unsafe extern "C" fn(Ptr, u32) -> usize,
    metadata: unsafe extern "C" fn(Ptr, u32, *mut c_void) -> HeifError,
    profile_size: unsafe extern "C" fn(Ptr) -> usize,
    profile: unsafe extern "C" fn(Ptr, *mut c_void) -> HeifError,
    options_alloc: unsafe extern "C" fn() -> *mut DecodingOptions,
    options_free: unsafe extern "C" fn(*mut DecodingOptions),
    decode_image: unsafe extern "C" fn(Ptr, *mut Ptr, c_int, c_int, *const DecodingOptions) -> HeifError,
    image_release: unsafe extern "C" fn(Ptr),
    image_width: unsafe extern "C" fn(Ptr, c_int) -> c_int,
    image_height: unsafe extern "C" fn(Ptr, c_int) -> c_int,
    plane: unsafe extern "C" fn(Ptr, c_int, *mut c_int) -> *const u8,
}

// SAFETY: the function pointers are plain C functions of a library that stays loaded for
// the life of the process; libheif allows separate contexts on separate threads.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

static LOADED: OnceLock<Result<Api, String>> = OnceLock::new();

impl Api {
    /// The process's libheif, loaded on first use; a load failure is remembered.
    fn get(format: Format) -> Result<&'static Api, DecodeError> {
        LOADED.get_or_init(Api::load).as_ref().map_err(|reason| DecodeError::CodecMissing { format, reason: reason.clone() })
    }

    fn load() -> Result<Api, String> {
        // A bundled copy (`lib/` beside the executable, or the variable) first, so the
        // wheel and the container use what they ship; then the system's search path.
        let path: PathBuf = match crate::assets::locate(None, &["OBSCURA_LIBHEIF"], "lib", &[LIBHEIF_NAME]) {
            Ok(p) => p,
            Err(searched) if std::env::var_os("OBSCURA_LIBHEIF").is_some_and(|v| !v.is_empty()) => {
                return Err(format!("OBSCURA_LIBHEIF names {searched}, which is not a file"));
            }
            Err(_) => PathBuf::from(LIBHEIF_NAME),
        };
        // SAFETY: loading libheif runs its initialisers, which have no preconditions.
        let library = unsafe { libloading::Library::new(&path) }.map_err(|e| format!("{LIBHEIF_NAME} could not be loaded ({e})"))?;
        let name = path.display().to_string();
        // SAFETY: each symbol is looked up with the signature libheif's header gives it.
        unsafe {
            macro_rules! sym {
                ($name:literal) => {
                    *library.get(concat!($name, "\0").as_bytes()).map_err(|e| format!("{name} lacks {} ({e})", $name))?
                };
            }
            let version: unsafe extern "C" fn() -> *const c_char = sym!("heif_get_version");
            let init: Option<libloading::Symbol<unsafe extern "C" fn(*const c_void) -> HeifError>> = library.get(b"heif_init\0").ok();
            if let Some(init) = init {
                let e = init(std::ptr::null());
                if e.code != 0 {
                    return Err(format!("{name} failed to initialise: {}", message(&e)));
                }
            }
            let api = Api {
                path: format!("{name} (libheif {})", CStr::from_ptr(version()).to_string_lossy()),
                context_alloc: sym!("heif_context_alloc"),
                context_free: sym!("heif_context_free"),
                set_max_size: sym!("heif_context_set_maximum_image_size_limit"),
                read_from_memory: sym!("heif_context_read_from_memory_without_copy"),
                top_level_images: sym!("heif_context_get_number_of_top_level_images"),
                primary_handle: sym!("heif_context_get_primary_image_handle"),
                handle_release: sym!("heif_image_handle_release"),
                handle_width: sym!("heif_image_handle_get_width"),
                handle_height: sym!("heif_image_handle_get_height"),
                ispe_width: sym!("heif_image_handle_get_ispe_width"),
                ispe_height: sym!("heif_image_handle_get_ispe_height"),
                has_alpha: sym!("heif_image_handle_has_alpha_channel"),
                metadata_ids: sym!("heif_image_handle_get_list_of_metadata_block_IDs"),
                metadata_size: sym!("heif_image_handle_get_metadata_size"),
                metadata: sym!("heif_image_handle_get_metadata"),
                profile_size: sym!("heif_image_handle_get_raw_color_profile_size"),
                profile: sym!("heif_image_handle_get_raw_color_profile"),
                options_alloc: sym!("heif_decoding_options_alloc"),
                options_free: sym!("heif_decoding_options_free"),
                decode_image: sym!("heif_decode_image"),
                image_release: sym!("heif_image_release"),
                image_width: sym!("heif_image_get_width"),
                image_height: sym!("heif_image_get_height"),
                plane: sym!("heif_image_get_plane_readonly"),
                _library: library,
            };
            tracing::debug!(library = %api.path, "loaded libheif");
            Ok(api)
        }
    }

    /// An error libheif returned, as ours: a codec or feature libheif lacks is
    /// unsupported; anything else (damaged data, a security limit) is corrupt.
    fn check(&self, e: HeifError, format: Format) -> Result<(), DecodeError> {
        if e.code == 0 {
            return Ok(());
        }
        let reason = message(&e);
        Err(match e.code {
            ERROR_UNSUPPORTED_FILETYPE | ERROR_UNSUPPORTED_FEATURE => DecodeError::Unsupported { format, what: format!("this {} file ({reason})", format.name()) },
            _ => DecodeError::Corrupt { format, reason },
        })
    }
}

/// The libheif this process reads HEIC and AVIF with (its path and version), loaded now if
/// it was not yet; or why there is none.
///
/// ```
/// match obscura::image_io::libheif() {
///     Ok(library) => println!("HEIC and AVIF are read with {library}"),
///     Err(why) => println!("HEIC and AVIF will be refused: {why}"),
/// }
/// ```
pub fn libheif() -> Result<&'static str, String> {
    LOADED.get_or_init(Api::load).as_ref().map(|a| a.path.as_str()).map_err(Clone::clone)
}

fn message(e: &HeifError) -> String {
    if e.message.is_null() {
        return format!("libheif error {}.{}", e.code, e.subcode);
    }
    // SAFETY: libheif's messages are static, NUL-terminated strings.
    unsafe { CStr::from_ptr(e.message) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftyp(major: &[u8; 4], compatible: &[&[u8; 4]]) -> Vec<u8> {
        let mut b = ((16 + 4 * compatible.len()) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(b"ftyp");
        b.extend_from_slice(major);
        b.extend_from_slice(&[0; 4]);
        for c in compatible {
            b.extend_from_slice(*c);
        }
        b
    }

    #[test]
    fn the_ftyp_brands_name_the_format() {
        assert_eq!(sniff(&ftyp(b"heic", &[b"mif1"])), Some(Format::Heic));
        assert_eq!(sniff(&ftyp(b"heix", &[])), Some(Format::Heic));
        assert_eq!(sniff(&ftyp(b"avif", &[b"mif1", b"miaf"])), Some(Format::Avif));
        assert_eq!(sniff(&ftyp(b"mif1", &[b"miaf", b"avif"])), Some(Format::Avif));
        assert_eq!(sniff(&ftyp(b"mif1", &[b"heic"])), Some(Format::Heic));
        assert_eq!(sniff(&ftyp(b"mif1", &[])), Some(Format::Heic), "plain HEIF");
        // A video (MP4, QuickTime) is not an image.
        assert_eq!(sniff(&ftyp(b"isom", &[b"mp41"])), None);
        assert_eq!(sniff(&ftyp(b"qt  ", &[])), None);
        // Too short, a lying size, or no ftyp at all.
        assert_eq!(sniff(b"\0\0\0\x18ftyp"), None);
        assert_eq!(sniff(b"\0\0\0\x04ftypheic"), None);
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0"), None);
        let mut huge = ftyp(b"mif1", &[b"avif"]);
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(sniff(&huge), Some(Format::Avif), "a size past the end reads what is there");
    }
}
