//! Metadata sanitising for users who opt in to keeping metadata.
//!
//! Opting in never carries a blob through. What is kept is rebuilt from an explicit
//! allowlist of small values, so nothing that can hold an image (or any other hidden
//! payload) survives:
//!
//! - **EXIF**: only the tags in [`EXIF_ALLOWLIST`], each checked to be a short ASCII
//!   string or at most four numbers. Never the thumbnail (IFD1), MakerNote, UserComment,
//!   any `UNDEFINED`-typed tag, GPS, serial numbers, owner or artist names, or unique ids.
//!   The orientation is written as 1, because the pixels are already upright.
//! - **ICC profile**: only matrix/TRC profiles (RGB or grey), rebuilt from their
//!   colorimetric tags (white point, primaries, chromatic adaptation, tone curves) as a
//!   version 4 profile. A tone curve stored as a table is replaced by the parametric curve
//!   closest to it (the sRGB curve, or a pure power law), so no tag can carry more than a
//!   handful of numbers. Private tags, descriptions, LUT-based profiles and everything
//!   else are dropped (a LUT profile is dropped whole).
//!
//! XMP, IPTC, comments, MPF images, PNG text chunks and WebP chunks other than EXIF/ICC
//! are never carried at all (the encoder writes only what [`KeptMetadata`](super::KeptMetadata) holds).

use exif::{Context, Field, In, Tag, Value};

/// The EXIF tags `--keep-metadata` keeps: capture settings, date and time, camera and lens
/// model, resolution and copyright. Each value must be a single ASCII string of at most
/// `MAX_ASCII` (64) bytes or at most `MAX_NUMBERS` (4) numbers; anything else is dropped.
pub const EXIF_ALLOWLIST: &[Tag] = &[
    Tag::Make,
    Tag::Model,
    Tag::Software,
    Tag::DateTime,
    Tag::Copyright,
    Tag::XResolution,
    Tag::YResolution,
    Tag::ResolutionUnit,
    Tag::ExposureTime,
    Tag::FNumber,
    Tag::ExposureProgram,
    Tag::PhotographicSensitivity,
    Tag::DateTimeOriginal,
    Tag::DateTimeDigitized,
    Tag::OffsetTime,
    Tag::OffsetTimeOriginal,
    Tag::OffsetTimeDigitized,
    Tag::ShutterSpeedValue,
    Tag::ApertureValue,
    Tag::BrightnessValue,
    Tag::ExposureBiasValue,
    Tag::MaxApertureValue,
    Tag::MeteringMode,
    Tag::LightSource,
    Tag::Flash,
    Tag::FocalLength,
    Tag::ColorSpace,
    Tag::ExposureMode,
    Tag::WhiteBalance,
    Tag::DigitalZoomRatio,
    Tag::FocalLengthIn35mmFilm,
    Tag::SceneCaptureType,
    Tag::Contrast,
    Tag::Saturation,
    Tag::Sharpness,
    Tag::SubjectDistanceRange,
    Tag::LensSpecification,
    Tag::LensMake,
    Tag::LensModel,
];

/// Longest ASCII value kept (bytes, without the terminating NUL).
pub const MAX_ASCII: usize = 64;
/// Most numbers in one kept value (LensSpecification has four).
pub const MAX_NUMBERS: usize = 4;

/// Whether a value is small and scalar enough to keep: one printable ASCII string of at
/// most [`MAX_ASCII`] bytes, or 1 to [`MAX_NUMBERS`] numbers.
fn is_small_scalar(value: &Value) -> bool {
    let numbers = |n: usize| (1..=MAX_NUMBERS).contains(&n);
    match value {
        Value::Ascii(strings) => {
            strings.len() == 1 && strings[0].len() <= MAX_ASCII && strings[0].iter().all(|b| (0x20..0x7F).contains(b))
        }
        Value::Short(v) => numbers(v.len()),
        Value::Long(v) => numbers(v.len()),
        Value::Rational(v) => numbers(v.len()),
        Value::SShort(v) => numbers(v.len()),
        Value::SLong(v) => numbers(v.len()),
        Value::SRational(v) => numbers(v.len()),
        Value::Float(v) => numbers(v.len()),
        Value::Double(v) => numbers(v.len()),
        // Bytes and UNDEFINED can be anything (MakerNote, UserComment are UNDEFINED).
        Value::Byte(_) | Value::SByte(_) | Value::Undefined(..) | Value::Unknown(..) => false,
    }
}

/// Rebuilds an EXIF (TIFF-structured) block from the primary image's allowlisted fields
/// ([`EXIF_ALLOWLIST`]), with the orientation set to 1 (upright). Returns `None` when the
/// block cannot be parsed or nothing is left to keep; then no EXIF is written.
pub fn sanitize_exif(raw: &[u8]) -> Option<Vec<u8>> {
    let parsed = exif::Reader::new().read_raw(raw.to_vec()).ok()?;
    let mut writer = exif::experimental::Writer::new();
    let mut kept = 0;
    for field in parsed.fields() {
        if field.ifd_num == In::PRIMARY
            && matches!(field.tag.context(), Context::Tiff | Context::Exif)
            && EXIF_ALLOWLIST.contains(&field.tag)
            && is_small_scalar(&field.value)
        {
            writer.push_field(field);
            kept += 1;
        }
    }
    if kept == 0 {
        return None;
    }
    let upright = Field { tag: Tag::Orientation, ifd_num: In::PRIMARY, value: Value::Short(vec![1]) };
    writer.push_field(&upright);
    let mut out = std::io::Cursor::new(Vec::new());
    writer.write(&mut out, parsed.little_endian()).ok()?;
    Some(out.into_inner())
}

/// Rebuilds an ICC profile from its colorimetric tags only (see the module doc). Returns
/// `None` for anything but a well-formed matrix/TRC RGB or grey profile; then no profile
/// is written.
pub fn sanitize_icc(raw: &[u8]) -> Option<Vec<u8>> {
    let be32 = |at: usize| raw.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if raw.len() < 132 || be32(0)? as usize != raw.len() || &raw[36..40] != b"acsp" || &raw[20..24] != b"XYZ " {
        return None;
    }
    let space: [u8; 4] = raw[16..20].try_into().ok()?;
    let required: &[&[u8; 4]] = match &space {
        b"RGB " => &[b"wtpt", b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC"],
        b"GRAY" => &[b"wtpt", b"kTRC"],
        _ => return None,
    };
    let count = be32(128)? as usize;
    if count > 100 || 132 + count * 12 > raw.len() {
        return None;
    }
    let mut tags: Vec<([u8; 4], Vec<u8>)> = Vec::new();
    for i in 0..count {
        let at = 132 + i * 12;
        let sig: [u8; 4] = raw[at..at + 4].try_into().ok()?;
        let (offset, size) = (be32(at + 4)? as usize, be32(at + 8)? as usize);
        let data = raw.get(offset..offset.checked_add(size)?)?;
        let keep = match &sig {
            b"wtpt" | b"bkpt" | b"rXYZ" | b"gXYZ" | b"bXYZ" => xyz_tag(data),
            b"chad" => sf32_matrix_tag(data),
            b"rTRC" | b"gTRC" | b"bTRC" | b"kTRC" => curve_tag(data),
            _ => continue, // dropped: descriptions, private tags, LUTs, …
        };
        if tags.iter().any(|(s, _)| *s == sig) {
            return None; // a tag twice: not a profile we trust
        }
        tags.push((sig, keep?));
    }
    if !required.iter().all(|r| tags.iter().any(|(s, _)| s == *r)) {
        return None;
    }
    tags.push((*b"desc", mluc("colorimetry kept by obscura")));
    Some(write_icc(&raw[64..68], &raw[68..80], &space, &tags))
}

/// `XYZType` with exactly one value (20 bytes), copied as is.
fn xyz_tag(data: &[u8]) -> Option<Vec<u8>> {
    (data.len() == 20 && &data[..4] == b"XYZ ").then(|| data.to_vec())
}

/// `s15Fixed16ArrayType` holding a 3×3 matrix (44 bytes), copied as is.
fn sf32_matrix_tag(data: &[u8]) -> Option<Vec<u8>> {
    (data.len() == 44 && &data[..4] == b"sf32").then(|| data.to_vec())
}

/// A tone curve as at most a handful of numbers: `para` and `curv` with 0 or 1 entries
/// are copied; a `curv` table becomes the sRGB `para` curve if it is one, else the power
/// law closest to it.
fn curve_tag(data: &[u8]) -> Option<Vec<u8>> {
    let be16 = |at: usize| data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match data.get(..4)? {
        b"para" => {
            let params = [1usize, 3, 4, 5, 7].get(usize::from(be16(8)?))?;
            let len = 12 + 4 * params;
            (data.len() >= len).then(|| data[..len].to_vec())
        }
        b"curv" => {
            let n = u32::from_be_bytes(data.get(8..12)?.try_into().ok()?) as usize;
            if n > 4096 || data.len() < 12 + 2 * n {
                return None;
            }
            if n <= 1 {
                return Some(data[..12 + 2 * n].to_vec());
            }
            let table: Vec<f64> = (0..n).map(|i| be16(12 + 2 * i).map(|v| f64::from(v) / 65535.0)).collect::<Option<_>>()?;
            Some(para_for_table(&table))
        }
        _ => None,
    }
}

/// sRGB's tone curve as `para` function type 3: Y = (aX + b)^g for X ≥ d, else cX.
const SRGB_PARAMS: [f64; 5] = [2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045];

fn srgb_curve(x: f64) -> f64 {
    let [g, a, b, c, d] = SRGB_PARAMS;
    if x >= d { (a * x + b).powf(g) } else { c * x }
}

/// The parametric curve standing in for a sampled one.
fn para_for_table(table: &[f64]) -> Vec<u8> {
    let last = (table.len() - 1) as f64;
    let xs = || table.iter().enumerate().map(|(i, &y)| (i as f64 / last, y));
    let srgb_error = xs().map(|(x, y)| (srgb_curve(x) - y).abs()).fold(0.0, f64::max);
    if srgb_error < 0.01 {
        return para(3, &SRGB_PARAMS);
    }
    // Least squares on logs (y = x^g  ⇔  ln y = g ln x) over the mid-tones.
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in xs().filter(|&(x, y)| (0.05..=0.95).contains(&x) && y > 1e-6) {
        num += x.ln() * y.ln();
        den += x.ln() * x.ln();
    }
    let g = if den > 0.0 { (num / den).clamp(0.1, 10.0) } else { 1.0 };
    para(0, &[g])
}

fn s15f16(v: f64) -> [u8; 4] {
    ((v * 65536.0).round() as i32).to_be_bytes()
}

fn para(function: u16, params: &[f64]) -> Vec<u8> {
    let mut out = b"para\0\0\0\0".to_vec();
    out.extend(function.to_be_bytes());
    out.extend([0, 0]);
    for &p in params {
        out.extend(s15f16(p));
    }
    out
}

/// A `multiLocalizedUnicodeType` with one en-US string.
fn mluc(text: &str) -> Vec<u8> {
    let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let mut out = b"mluc\0\0\0\0".to_vec();
    out.extend(1u32.to_be_bytes()); // records
    out.extend(12u32.to_be_bytes()); // record size
    out.extend(b"enUS");
    out.extend((utf16.len() as u32).to_be_bytes());
    out.extend(28u32.to_be_bytes()); // offset of the string from the tag's start
    out.extend(utf16);
    out
}

/// A version 4.3 display profile with `tags`, the rendering intent and illuminant copied
/// from the original, and every other header field zero.
fn write_icc(intent: &[u8], illuminant: &[u8], space: &[u8; 4], tags: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let pad4 = |n: usize| n.div_ceil(4) * 4;
    let table_end = 132 + tags.len() * 12;
    let mut header = vec![0u8; 128];
    header[8..12].copy_from_slice(&[4, 0x30, 0, 0]);
    header[12..16].copy_from_slice(b"mntr");
    header[16..20].copy_from_slice(space);
    header[20..24].copy_from_slice(b"XYZ ");
    header[36..40].copy_from_slice(b"acsp");
    header[64..68].copy_from_slice(intent);
    header[68..80].copy_from_slice(illuminant);
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    let mut body = Vec::new();
    for (sig, data) in tags {
        table.extend(sig);
        table.extend(((table_end + body.len()) as u32).to_be_bytes());
        table.extend((data.len() as u32).to_be_bytes());
        body.extend(data);
        body.resize(pad4(body.len()), 0);
    }
    let mut out = header;
    out.extend(table);
    out.extend(body);
    let size = (out.len() as u32).to_be_bytes();
    out[..4].copy_from_slice(&size);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xyz(x: f64, y: f64, z: f64) -> Vec<u8> {
        let mut v = b"XYZ \0\0\0\0".to_vec();
        for c in [x, y, z] {
            v.extend(s15f16(c));
        }
        v
    }

    fn curv_table(f: impl Fn(f64) -> f64, n: usize) -> Vec<u8> {
        let mut v = b"curv\0\0\0\0".to_vec();
        v.extend((n as u32).to_be_bytes());
        for i in 0..n {
            v.extend(((f(i as f64 / (n - 1) as f64) * 65535.0).round() as u16).to_be_bytes());
        }
        v
    }

    /// An RGB profile as a camera might write one, plus `extra` tags.
    fn rgb_profile(trc: Vec<u8>, extra: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
        let mut tags = vec![
            (*b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (*b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
            (*b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
            (*b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
            (*b"rTRC", trc.clone()),
            (*b"gTRC", trc.clone()),
            (*b"bTRC", trc),
        ];
        tags.extend_from_slice(extra);
        let mut p = write_icc(&[0; 4], &xyz(0.9642, 1.0, 0.8249)[8..20], b"RGB ", &tags);
        p[4..8].copy_from_slice(b"appl"); // a CMM type in the header: not kept
        p
    }

    #[test]
    fn icc_private_tags_and_descriptions_are_dropped() {
        let secret = b"\xFF\xD8\xFF\xE0 a JPEG preview of the face".to_vec();
        let raw = rgb_profile(para(0, &[2.2]), &[(*b"zzzz", secret.clone()), (*b"cprt", b"text\0\0\0\0Jane Doe".to_vec())]);
        let kept = sanitize_icc(&raw).expect("a matrix/TRC profile is kept");
        assert!(!kept.windows(secret.len()).any(|w| w == secret.as_slice()));
        assert!(!kept.windows(8).any(|w| w == b"Jane Doe"));
        assert_eq!(&kept[4..8], &[0; 4], "header fields other than colorimetry are zero");
        let sigs: Vec<&[u8]> = (0..u32::from_be_bytes(kept[128..132].try_into().unwrap()) as usize)
            .map(|i| &kept[132 + i * 12..136 + i * 12])
            .collect();
        assert_eq!(sigs, [b"wtpt", b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC", b"desc"].map(|s| s.as_slice()));
        // The kept profile is itself accepted unchanged (idempotent).
        assert_eq!(sanitize_icc(&kept).as_deref(), Some(kept.as_slice()));
    }

    #[test]
    fn icc_curve_tables_become_a_few_numbers() {
        // A table can carry kilobytes of arbitrary data; it is replaced by a parametric curve.
        let kept = sanitize_icc(&rgb_profile(curv_table(srgb_curve, 1024), &[])).unwrap();
        assert!(kept.len() < 600, "{} bytes (the tables alone were 6 KiB)", kept.len());
        assert!(kept.windows(12).any(|w| w == &para(3, &SRGB_PARAMS)[..12]), "sRGB table → sRGB para");
        let gamma = curve_tag(&curv_table(|x| x.powf(1.8), 4096)).unwrap();
        assert_eq!(&gamma[..10], b"para\0\0\0\0\0\0");
        let g = f64::from(i32::from_be_bytes(gamma[12..16].try_into().unwrap())) / 65536.0;
        assert!((g - 1.8).abs() < 0.01, "fitted gamma {g}");
    }

    #[test]
    fn icc_lut_profiles_and_garbage_are_dropped() {
        let mut lut_only = rgb_profile(para(0, &[2.2]), &[]);
        lut_only[16..20].copy_from_slice(b"CMYK");
        assert_eq!(sanitize_icc(&lut_only), None);
        assert_eq!(sanitize_icc(b"not a profile"), None);
        let mut truncated = rgb_profile(para(0, &[2.2]), &[]);
        truncated.truncate(truncated.len() - 4);
        assert_eq!(sanitize_icc(&truncated), None, "the declared size must match");
        let huge_curve = {
            let mut v = b"curv\0\0\0\0".to_vec();
            v.extend(u32::MAX.to_be_bytes());
            v
        };
        assert_eq!(sanitize_icc(&rgb_profile(huge_curve, &[])), None);
    }

    #[test]
    fn exif_keeps_only_small_allowlisted_scalars() {
        let ascii = |tag, s: &[u8]| Field { tag, ifd_num: In::PRIMARY, value: Value::Ascii(vec![s.to_vec()]) };
        let fields = [
            ascii(Tag::Make, b"Cam"),
            ascii(Tag::Model, &[b'x'; 200]),                   // too long
            ascii(Tag::BodySerialNumber, b"SERIAL-1"),         // not allowlisted
            Field { tag: Tag::MakerNote, ifd_num: In::PRIMARY, value: Value::Undefined(b"\xFF\xD8face".to_vec(), 0) },
            Field { tag: Tag::UserComment, ifd_num: In::PRIMARY, value: Value::Undefined(b"ASCII\0\0\0hi".to_vec(), 0) },
            Field { tag: Tag::FNumber, ifd_num: In::PRIMARY, value: Value::Rational(vec![(28, 10).into()]) },
            Field { tag: Tag::Flash, ifd_num: In::PRIMARY, value: Value::Short(vec![1; 500]) }, // too many numbers
            Field { tag: Tag::Orientation, ifd_num: In::PRIMARY, value: Value::Short(vec![6]) },
        ];
        let mut w = exif::experimental::Writer::new();
        for f in &fields {
            w.push_field(f);
        }
        let mut raw = std::io::Cursor::new(Vec::new());
        w.write(&mut raw, false).unwrap();
        let kept = sanitize_exif(&raw.into_inner()).unwrap();
        let parsed = exif::Reader::new().read_raw(kept).unwrap();
        let mut tags: Vec<Tag> = parsed.fields().map(|f| f.tag).filter(|t| *t != Tag::ExifIFDPointer).collect();
        tags.sort_by_key(|t| t.number());
        assert_eq!(tags, [Tag::Make, Tag::Orientation, Tag::FNumber]);
        assert_eq!(parsed.get_field(Tag::Orientation, In::PRIMARY).unwrap().value.get_uint(0), Some(1));
    }
}
