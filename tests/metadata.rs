//! Metadata is personal data: EXIF orientation is applied before detection, and outputs
//! carry no EXIF/GPS/thumbnail/XMP/comments unless the user opts in (and never the
//! thumbnail, which is an un-redacted copy of the photo).

mod common;

use common::*;
use exif::{Field, In, Tag, Value};
use image::{GenericImageView, ImageEncoder};
use obscura::geometry::PixelRect;

/// Encodes `img` as a JPEG carrying `exif` (a TIFF-structured block).
fn jpeg_with_exif(img: &image::RgbImage, exif: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    enc.set_exif_metadata(exif).unwrap();
    enc.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8).unwrap();
    out
}

fn exif_block(fields: &[Field], thumbnail: Option<&[u8]>) -> Vec<u8> {
    let mut w = exif::experimental::Writer::new();
    for f in fields {
        w.push_field(f);
    }
    if let Some(t) = thumbnail {
        w.set_jpeg(t, In::THUMBNAIL);
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    w.write(&mut buf, false).unwrap();
    buf.into_inner()
}

/// Inserts raw JPEG segments (marker, payload) right after SOI.
fn insert_segments(jpeg: &[u8], segments: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    for (marker, payload) in segments {
        out.extend([0xFF, *marker]);
        out.extend(((payload.len() + 2) as u16).to_be_bytes());
        out.extend(payload);
    }
    out.extend(&jpeg[2..]);
    out
}

/// The markers of a JPEG's header segments (up to SOS).
fn segment_markers(jpeg: &[u8]) -> Vec<u8> {
    let mut markers = Vec::new();
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        markers.push(marker);
        if marker == 0xDA {
            break;
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        i += 2 + len;
    }
    markers
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn exif_orientation_is_applied_before_detection() {
    let upright = load_rgb(&eval_image(ONE_FACE));
    // Stored rotated a quarter turn counter-clockwise, tagged 6 ("rotate 90° clockwise to view").
    let stored = image::imageops::rotate270(&upright);
    let orientation = Field { tag: Tag::Orientation, ifd_num: In::PRIMARY, value: Value::Short(vec![6]) };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("rotated.jpg");
    std::fs::write(&input, jpeg_with_exif(&stored, exif_block(&[orientation], None))).unwrap();
    let output = tmp.path().join("out.jpg");
    assert!(run(obscura().args(["anonymise", "-q"]).arg(&input).arg("-o").arg(&output)).status.success());

    let result = load_rgb(&output);
    assert_eq!(result.dimensions(), upright.dimensions(), "output is upright");
    assert!(mean_abs_diff(&upright, &result, ONE_FACE_BOX) > 15.0, "the face is redacted where it is in the upright photo");
    let far = PixelRect { x: 600, y: 400, w: 300, h: 250 };
    assert!(mean_abs_diff(&upright, &result, far) < 4.0, "and the rest matches the upright photo");
    let bytes = std::fs::read(&output).unwrap();
    assert!(exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&bytes)).is_err(), "no EXIF (so no stale orientation)");
}

fn tagged_photo(tmp: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let upright = load_rgb(&eval_image(ONE_FACE));
    // The thumbnail: a small JPEG of the original, un-redacted photo.
    let small = image::imageops::thumbnail(&upright, 160, 110);
    let mut thumb = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut thumb, 80)
        .write_image(small.as_raw(), small.width(), small.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    let ascii = |tag, s: &str| Field { tag, ifd_num: In::PRIMARY, value: Value::Ascii(vec![s.as_bytes().to_vec()]) };
    let rational = |n: u32| exif::Rational { num: n, denom: 1 };
    let fields = [
        ascii(Tag::Make, "ObscuraTestCam"),
        ascii(Tag::BodySerialNumber, "SERIAL-0451"),
        Field { tag: Tag::GPSLatitudeRef, ifd_num: In::PRIMARY, value: Value::Ascii(vec![b"N".to_vec()]) },
        Field { tag: Tag::GPSLatitude, ifd_num: In::PRIMARY, value: Value::Rational(vec![rational(52), rational(31), rational(12)]) },
    ];
    let jpeg = jpeg_with_exif(&upright, exif_block(&fields, Some(&thumb)));
    let xmp = [b"http://ns.adobe.com/xap/1.0/\0".as_slice(), b"<x:xmpmeta><rdf:Description photoshop:City=\"SecretTown\"/></x:xmpmeta>"].concat();
    let iptc = [b"Photoshop 3.0\0".as_slice(), b"8BIM\x04\x04\0\0\0\0\0\x0cIPTC-SECRET"].concat();
    let jpeg = insert_segments(&jpeg, &[(0xE1, xmp), (0xED, iptc), (0xFE, b"COMMENT-SECRET".to_vec())]);
    let input = tmp.join("tagged.jpg");
    std::fs::write(&input, &jpeg).unwrap();
    // Sanity: the input really carries all of it.
    let parsed = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&jpeg)).unwrap();
    assert!(parsed.get_field(Tag::GPSLatitude, In::PRIMARY).is_some());
    assert!(parsed.fields().any(|f| f.ifd_num == In::THUMBNAIL));
    (input, thumb)
}

#[test]
fn all_metadata_is_dropped_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, thumb) = tagged_photo(tmp.path());
    let output = tmp.path().join("out.jpg");
    assert!(run(obscura().args(["anonymise", "-q"]).arg(&input).arg("-o").arg(&output)).status.success());
    let bytes = std::fs::read(&output).unwrap();
    let markers = segment_markers(&bytes);
    for (marker, what) in [(0xE1, "EXIF/XMP"), (0xED, "IPTC"), (0xFE, "comment"), (0xE2, "ICC")] {
        assert!(!markers.contains(&marker), "{what} segment in output: {markers:x?}");
    }
    for secret in [b"SERIAL-0451".as_slice(), b"ObscuraTestCam", b"SecretTown", b"IPTC-SECRET", b"COMMENT-SECRET", &thumb[..64]] {
        assert!(!contains(&bytes, secret), "output contains {:?}", String::from_utf8_lossy(&secret[..secret.len().min(16)]));
    }
}

/// A settings file may keep metadata; `--keep-metadata=false` on the command line still
/// strips it all for this call (a flag can turn a file's setting off, not only on).
#[test]
fn keep_metadata_false_overrides_a_settings_file_that_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, _) = tagged_photo(tmp.path());
    let config = tmp.path().join("keep.toml");
    std::fs::write(&config, "[image]\nkeep_metadata = true\n").unwrap();
    let kept = tmp.path().join("kept.jpg");
    assert!(run(obscura().args(["anonymise", "-q", "--config"]).arg(&config).arg(&input).arg("-o").arg(&kept)).status.success());
    assert!(contains(&std::fs::read(&kept).unwrap(), b"ObscuraTestCam"), "the file's keep_metadata applies (Make is allowlisted)");
    let stripped = tmp.path().join("stripped.jpg");
    let out = run(obscura().args(["anonymise", "-q", "--config"]).arg(&config).arg("--keep-metadata=false").arg(&input).arg("-o").arg(&stripped));
    assert!(out.status.success());
    let bytes = std::fs::read(&stripped).unwrap();
    assert!(!segment_markers(&bytes).contains(&0xE1), "no EXIF segment");
    assert!(!contains(&bytes, b"ObscuraTestCam"));
}

/// An ICC profile a hostile (or careless) camera could write: real colorimetry plus a
/// private tag carrying `payload`.
fn icc_with_payload(payload: &[u8]) -> Vec<u8> {
    let xyz = |x: f64, y: f64, z: f64| {
        let mut v = b"XYZ \0\0\0\0".to_vec();
        for c in [x, y, z] {
            v.extend(((c * 65536.0).round() as i32).to_be_bytes());
        }
        v
    };
    let gamma = b"curv\0\0\0\0\0\0\0\x01\x02\x33".to_vec();
    let tags: Vec<(&[u8; 4], Vec<u8>)> = vec![
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", gamma.clone()),
        (b"gTRC", gamma.clone()),
        (b"bTRC", gamma),
        (b"zzzz", payload.to_vec()),
    ];
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    let mut body = Vec::new();
    let start = 132 + tags.len() * 12;
    for (sig, data) in &tags {
        table.extend(*sig);
        table.extend(((start + body.len()) as u32).to_be_bytes());
        table.extend((data.len() as u32).to_be_bytes());
        body.extend(data);
        body.resize(body.len().div_ceil(4) * 4, 0);
    }
    let mut header = vec![0u8; 128];
    header[8..12].copy_from_slice(&[2, 0x10, 0, 0]);
    header[12..16].copy_from_slice(b"mntr");
    header[16..20].copy_from_slice(b"RGB ");
    header[20..24].copy_from_slice(b"XYZ ");
    header[36..40].copy_from_slice(b"acsp");
    let mut icc = [header, table, body].concat();
    let size = (icc.len() as u32).to_be_bytes();
    icc[..4].copy_from_slice(&size);
    icc
}

/// The review's attack: a camera preview of the un-redacted face inside MakerNote (and
/// UserComment, and a private ICC tag) must not survive `--keep-metadata`, in any output
/// format; what is kept is the README's allowlist of small scalar tags.
#[test]
fn keep_metadata_keeps_only_allowlisted_scalars_never_a_hidden_image() {
    let tmp = tempfile::tempdir().unwrap();
    let upright = load_rgb(&eval_image(ONE_FACE));
    let preview = face_preview();
    let jpeg = jpeg_with_exif(&upright, hostile_exif(&preview));
    // The ICC profile goes in APP2 segments.
    let icc = icc_with_payload(&preview);
    let icc_segments: Vec<(u8, Vec<u8>)> = icc
        .chunks(60_000)
        .enumerate()
        .map(|(i, c)| (0xE2, [b"ICC_PROFILE\0".as_slice(), &[i as u8 + 1, icc.len().div_ceil(60_000) as u8], c].concat()))
        .collect();
    let jpeg = insert_segments(&jpeg, &icc_segments);
    let input = tmp.path().join("preview.jpg");
    std::fs::write(&input, &jpeg).unwrap();
    assert!(contains(&jpeg, &preview[..64]), "the input carries the preview");

    for ext in ["jpg", "png", "webp"] {
        let output = tmp.path().join(format!("out.{ext}"));
        assert!(run(obscura().args(["anonymise", "-q", "--keep-metadata"]).arg(&input).arg("-o").arg(&output)).status.success());
        let bytes = std::fs::read(&output).unwrap();
        // None of the preview's coded data, and in a JPEG no second start-of-image.
        assert!(!contains(&bytes, &preview[preview.len() - 200..preview.len() - 136]), "{ext}: preview bytes survived");
        if ext == "jpg" {
            assert_eq!(bytes.windows(3).filter(|w| *w == [0xFF, 0xD8, 0xFF]).count(), 1, "an embedded JPEG survived");
        }
        for secret in [b"SECRET-SERIAL".as_slice(), b"SECRET-ARTIST", b"SECRET-GPS"] {
            assert!(!contains(&bytes, secret), "{ext}: {:?} survived", String::from_utf8_lossy(secret));
        }
        let parsed = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&bytes)).expect("allowlisted EXIF kept");
        let mut tags: Vec<Tag> = parsed.fields().map(|f| f.tag).filter(|t| *t != Tag::ExifIFDPointer).collect();
        tags.sort_by_key(|t| t.number());
        assert_eq!(tags, [Tag::Make, Tag::Orientation, Tag::FNumber, Tag::DateTimeOriginal], "{ext}");
        for f in parsed.fields() {
            assert!(obscura::image_io::EXIF_ALLOWLIST.contains(&f.tag) || matches!(f.tag, Tag::Orientation | Tag::ExifIFDPointer));
        }
    }
}

#[test]
fn keep_metadata_never_keeps_the_thumbnail_gps_serials_or_xmp() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, thumb) = tagged_photo(tmp.path());
    let output = tmp.path().join("out.jpg");
    assert!(run(obscura().args(["anonymise", "-q", "--keep-metadata"]).arg(&input).arg("-o").arg(&output)).status.success());
    let bytes = std::fs::read(&output).unwrap();
    let parsed = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&bytes)).expect("EXIF kept on request");
    assert_eq!(parsed.get_field(Tag::Make, In::PRIMARY).map(|f| f.display_value().to_string()).as_deref(), Some("\"ObscuraTestCam\""));
    assert!(parsed.get_field(Tag::GPSLatitude, In::PRIMARY).is_none(), "GPS is never kept: it says where a person lives");
    assert!(parsed.get_field(Tag::BodySerialNumber, In::PRIMARY).is_none(), "serials link photos to a person");
    assert!(!parsed.fields().any(|f| f.ifd_num == In::THUMBNAIL), "no thumbnail IFD");
    assert!(!contains(&bytes, &thumb[..64]), "no thumbnail bytes");
    for secret in [b"SecretTown".as_slice(), b"IPTC-SECRET", b"COMMENT-SECRET", b"SERIAL-0451"] {
        assert!(!contains(&bytes, secret), "XMP, IPTC, comments and serials are never kept");
    }
}

// ---- every kind of metadata, every container, every output mode -------------------------
//
// `scripts/check-metadata` runs this with its table printed. Each input carries every kind
// of metadata its container can hold, each with a secret; each output is parsed
// container by container, and anything but what the README allows fails the check.

const SECRETS: [&str; 12] = ["SECRET-ARTIST", "SECRET-GPS", "SECRET-XMP", "SECRET-IPTC", "SECRET-COM", "SECRET-TEXT", "SECRET-ZTXT", "SECRET-SERIAL", "SECRET-MPF", "SECRET-GIF", "SECRET-PNG", "SECRET-TIFF"];

/// A zlib stream of stored (uncompressed) blocks: enough for iCCP/zTXt without a deflater.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(65_535).collect() };
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        out.extend((c.len() as u16).to_le_bytes());
        out.extend((!(c.len() as u16)).to_le_bytes());
        out.extend(*c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

/// A small JPEG of the un-redacted face: what a MakerNote preview or an MPF image holds.
fn face_preview() -> Vec<u8> {
    let upright = load_rgb(&eval_image(ONE_FACE));
    let face = upright.view(ONE_FACE_BOX.x, ONE_FACE_BOX.y, ONE_FACE_BOX.w, ONE_FACE_BOX.h).to_image();
    let mut preview = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut preview, 85)
        .write_image(face.as_raw(), face.width(), face.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    preview
}

fn hostile_exif(preview: &[u8]) -> Vec<u8> {
    let ascii = |tag, s: &str| Field { tag, ifd_num: In::PRIMARY, value: Value::Ascii(vec![s.as_bytes().to_vec()]) };
    let rational = |n: u32| exif::Rational { num: n, denom: 1 };
    let fields = [
        ascii(Tag::Make, "ObscuraTestCam"),
        ascii(Tag::DateTimeOriginal, "2026:11:30 10:00:00"),
        Field { tag: Tag::FNumber, ifd_num: In::PRIMARY, value: Value::Rational(vec![rational(4)]) },
        ascii(Tag::BodySerialNumber, "SECRET-SERIAL"),
        ascii(Tag::Artist, "SECRET-ARTIST"),
        ascii(Tag::GPSAreaInformation, "SECRET-GPS"),
        Field { tag: Tag::GPSLatitude, ifd_num: In::PRIMARY, value: Value::Rational(vec![rational(52), rational(31), rational(12)]) },
        Field { tag: Tag::MakerNote, ifd_num: In::PRIMARY, value: Value::Undefined(preview.to_vec(), 0) },
        Field { tag: Tag::UserComment, ifd_num: In::PRIMARY, value: Value::Undefined([b"ASCII\0\0\0SECRET-COM ".as_slice(), preview].concat(), 0) },
        Field { tag: Tag::ImageDescription, ifd_num: In::PRIMARY, value: Value::Ascii(vec![preview.to_vec()]) },
    ];
    exif_block(&fields, Some(preview))
}

const XMP: &str = "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:Description photoshop:City=\"SECRET-XMP\"/></x:xmpmeta>";

/// A JPEG with EXIF (GPS, serial, MakerNote preview, thumbnail), XMP, IPTC, an ICC
/// profile with a private tag, a comment, and an MPF second image after the first.
fn hostile_jpeg(img: &image::RgbImage, preview: &[u8]) -> Vec<u8> {
    let jpeg = jpeg_with_exif(img, hostile_exif(preview));
    let icc = icc_with_payload(preview);
    let segments = [
        (0xE1, [b"http://ns.adobe.com/xap/1.0/\0".as_slice(), XMP.as_bytes()].concat()),
        (0xED, [b"Photoshop 3.0\0".as_slice(), b"8BIM\x04\x04\0\0\0\0\0\x0bSECRET-IPTC"].concat()),
        (0xE2, [b"ICC_PROFILE\0\x01\x01".as_slice(), &icc].concat()),
        (0xE2, [b"MPF\0MM\0\x2a\0\0\0\x08".as_slice(), b"SECRET-MPF"].concat()),
        (0xFE, b"SECRET-COM".to_vec()),
    ];
    [insert_segments(&jpeg, &segments), preview.to_vec()].concat()
}

/// A PNG with tEXt, zTXt, iTXt (XMP), eXIf, iCCP (with a private tag) and tIME chunks.
fn hostile_png(img: &image::RgbImage, preview: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut plain), image::ImageFormat::Png).unwrap();
    let ihdr_end = 8 + 12 + 13;
    let extra = [
        png_chunk(b"tEXt", b"Comment\0SECRET-TEXT"),
        png_chunk(b"zTXt", &[b"Author\0\0".as_slice(), &zlib_stored(b"SECRET-ZTXT")].concat()),
        png_chunk(b"iTXt", &[b"XML:com.adobe.xmp\0\0\0\0\0".as_slice(), XMP.as_bytes()].concat()),
        png_chunk(b"eXIf", &hostile_exif(preview)),
        png_chunk(b"iCCP", &[b"hostile\0\0".as_slice(), &zlib_stored(&icc_with_payload(preview))].concat()),
        png_chunk(b"tIME", &[0x07, 0xEA, 11, 30, 10, 0, 0]),
    ]
    .concat();
    [&plain[..ihdr_end], &extra, &plain[ihdr_end..]].concat()
}

/// A WebP (extended format) with ICCP, EXIF and XMP chunks.
fn hostile_webp(img: &image::RgbImage, preview: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut plain), image::ImageFormat::WebP).unwrap();
    let vp8l_len = u32::from_le_bytes(plain[16..20].try_into().unwrap()) as usize;
    let vp8l = riff_chunk(b"VP8L", &plain[20..20 + vp8l_len]);
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let vp8x = [vec![0x20 | 0x08 | 0x04, 0, 0, 0], u24(img.width() - 1), u24(img.height() - 1)].concat();
    let body = [
        b"WEBP".to_vec(),
        riff_chunk(b"VP8X", &vp8x),
        riff_chunk(b"ICCP", &icc_with_payload(preview)),
        vp8l,
        riff_chunk(b"EXIF", &hostile_exif(preview)),
        riff_chunk(b"XMP ", XMP.as_bytes()),
    ]
    .concat();
    riff_chunk(b"RIFF", &body)
}

/// A GIF with a comment block, an XMP application block and an ICC application block
/// (the face preview inside), before its image.
fn hostile_gif(img: &image::RgbImage, preview: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    image::codecs::gif::GifEncoder::new_with_speed(&mut plain, 30).write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8).unwrap();
    let sub_blocks = |data: &[u8]| -> Vec<u8> { data.chunks(255).flat_map(|c| [&[c.len() as u8][..], c].concat()).chain([0]).collect() };
    let table = if plain[10] & 0x80 != 0 { 3 << ((plain[10] & 7) + 1) } else { 0 };
    let at = 13 + table;
    let extra = [
        [&[0x21, 0xFE][..], &sub_blocks(b"SECRET-COM SECRET-GPS")].concat(),
        [&[0x21, 0xFF, 11][..], b"XMP DataXMP", &sub_blocks(XMP.as_bytes())].concat(),
        [&[0x21, 0xFF, 11][..], b"ICCRGBG1012", &sub_blocks(&icc_with_payload(preview))].concat(),
    ]
    .concat();
    [&plain[..at], &extra, &plain[at..]].concat()
}

/// A TIFF whose directory also holds an ImageDescription, Artist, XMP, IPTC, an ICC
/// profile (the face preview inside), an EXIF block (GPS, serial, MakerNote preview)
/// and a SubIFD pointer to a thumbnail directory: the tags a camera or archive writes.
fn hostile_tiff(img: &image::RgbImage, preview: &[u8]) -> Vec<u8> {
    let mut tiff = std::io::Cursor::new(Vec::new());
    image::codecs::tiff::TiffEncoder::new(&mut tiff).write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8).unwrap();
    let mut tiff = tiff.into_inner();
    let (at, n) = first_ifd(&tiff);
    let mut entries: Vec<[u8; 12]> = (0..n).map(|k| tiff[at + 2 + 12 * k..at + 14 + 12 * k].try_into().unwrap()).collect();
    let entry = |tag: u16, kind: u16, count: u32, value: u32| -> [u8; 12] {
        let mut e = [0u8; 12];
        e[..2].copy_from_slice(&tag.to_le_bytes());
        e[2..4].copy_from_slice(&kind.to_le_bytes());
        e[4..8].copy_from_slice(&count.to_le_bytes());
        e[8..].copy_from_slice(&value.to_le_bytes());
        e
    };
    // Appends a directory of `entries` (sorted by tag, no next directory) at an even
    // offset, and returns that offset.
    let directory = |tiff: &mut Vec<u8>, mut entries: Vec<[u8; 12]>| -> u32 {
        entries.sort_by_key(|e| u16::from_le_bytes([e[0], e[1]]));
        if tiff.len() % 2 == 1 {
            tiff.push(0);
        }
        let at = u32::try_from(tiff.len()).unwrap();
        tiff.extend_from_slice(&u16::try_from(entries.len()).unwrap().to_le_bytes());
        for e in &entries {
            tiff.extend_from_slice(e);
        }
        tiff.extend_from_slice(&[0; 4]);
        at
    };
    // A sub-IFD (tag 330, outside the main chain, as DNG and TIFF/EP cameras write their
    // previews): a directory marked reduced-resolution (NewSubfileType 1) over the same
    // pixels.
    let mut thumbnail = entries.clone();
    thumbnail.push(entry(254, 4, 1, 1));
    let sub_ifd = directory(&mut tiff, thumbnail);
    entries.push(entry(330, 4, 1, sub_ifd));
    // Values go after the image; each extra tag points at its own (type UNDEFINED/ASCII).
    let exif = hostile_exif(preview);
    let exif_body = &exif[6..]; // without "Exif\0\0"
    let extras: [(u16, u16, Vec<u8>); 6] = [
        (270, 2, b"SECRET-TEXT\0".to_vec()),
        (315, 2, b"SECRET-ARTIST\0".to_vec()),
        (700, 1, XMP.as_bytes().to_vec()),
        (33723, 7, b"SECRET-IPTC".to_vec()),
        (34675, 7, icc_with_payload(preview)),
        (34665, 7, exif_body.to_vec()),
    ];
    for (tag, kind, value) in extras {
        if tiff.len() % 2 == 1 {
            tiff.push(0);
        }
        let offset = u32::try_from(tiff.len()).unwrap();
        tiff.extend_from_slice(&value);
        entries.push(entry(tag, kind, u32::try_from(value.len()).unwrap(), offset));
    }
    let ifd = directory(&mut tiff, entries);
    tiff[4..8].copy_from_slice(&ifd.to_le_bytes());
    tiff
}

/// The containers' metadata in an output: what is there, or what should not be. An
/// `animation` (or page set) may have the structure that holds its frames (APNG frame
/// chunks, WebP ANIM/ANMF, several GIF images and the loop block, several TIFF
/// directories), and carries no metadata even when it is kept for stills.
fn audit_output(bytes: &[u8], keep: bool, preview: &[u8], animation: bool) -> Result<String, String> {
    let keep = keep && !animation;
    let mut kept = Vec::new();
    let deny = |what: String| Err::<(), String>(what);
    let format = image::guess_format(bytes).map_err(|e| e.to_string())?;
    match format {
        image::ImageFormat::Jpeg => {
            let mut i = 2;
            loop {
                let (marker, len) = (bytes[i + 1], u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize);
                let payload = &bytes[i + 4..i + 2 + len];
                match marker {
                    0xDA => break,
                    0xE0 if payload.starts_with(b"JFIF\0") => {}
                    0xE1 if keep && payload.starts_with(b"Exif\0\0") => kept.push("EXIF".to_string()),
                    0xE2 if keep && payload.starts_with(b"ICC_PROFILE\0") => kept.push("ICC".to_string()),
                    0xDB | 0xC4 | 0xC0..=0xC3 | 0xDD => {}
                    m => deny(format!("JPEG segment {m:#04x} ({:?})", String::from_utf8_lossy(&payload[..payload.len().min(12)])))?,
                }
                i += 2 + len;
            }
            if bytes.windows(3).filter(|w| *w == [0xFF, 0xD8, 0xFF]).count() != 1 || !bytes.ends_with(&[0xFF, 0xD9]) {
                deny("a second image or trailing data in the JPEG".into())?;
            }
        }
        image::ImageFormat::Png => {
            let mut i = 8;
            while i < bytes.len() {
                let len = u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
                match &bytes[i + 4..i + 8] {
                    b"IHDR" | b"PLTE" | b"tRNS" | b"IDAT" | b"IEND" => {}
                    b"acTL" | b"fcTL" | b"fdAT" if animation => {}
                    b"eXIf" if keep => kept.push("EXIF".into()),
                    b"iCCP" if keep => kept.push("ICC".into()),
                    other => deny(format!("PNG chunk {}", String::from_utf8_lossy(other)))?,
                }
                i += 12 + len;
            }
        }
        image::ImageFormat::WebP => {
            let mut i = 12;
            while i + 8 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().unwrap()) as usize;
                match &bytes[i..i + 4] {
                    b"VP8 " | b"VP8L" | b"VP8X" | b"ALPH" => {}
                    b"ANIM" | b"ANMF" if animation => {}
                    b"EXIF" if keep => kept.push("EXIF".into()),
                    b"ICCP" if keep => kept.push("ICC".into()),
                    other => deny(format!("WebP chunk {}", String::from_utf8_lossy(other)))?,
                }
                i += 8 + len + len % 2;
            }
        }
        image::ImageFormat::Gif => {
            // Only the images and their graphic control extensions (timing,
            // transparency); an animation also its one loop block (NETSCAPE2.0, an
            // application extension like those that carry XMP or ICC, so told apart by
            // its identifier, and only one).
            let blocks = gif_blocks(bytes);
            let applications = blocks.iter().filter(|&&(kind, label)| kind == "extension" && label == 0xFF).count();
            let loop_block = animation && applications == 1 && bytes.windows(14).any(|w| w == b"\x21\xFF\x0BNETSCAPE2.0");
            if let Some((_, label)) = blocks.iter().find(|&&(kind, label)| kind == "extension" && label != 0xF9 && !(label == 0xFF && loop_block)) {
                deny(format!("GIF extension block {label:#04x}"))?;
            }
            let images = blocks.iter().filter(|b| b.0 == "image").count();
            if images != 1 && !animation {
                deny(format!("{images} images in the GIF"))?;
            }
        }
        image::ImageFormat::Tiff => {
            let directories = tiff_directories(bytes);
            for tag in directories.iter().flatten() {
                match *tag {
                    34675 if keep => kept.push("ICC".into()),
                    tag if !TIFF_PIXEL_TAGS.contains(&tag) => deny(format!("TIFF tag {tag}"))?,
                    _ => {}
                }
            }
            if directories.len() > 1 && !animation {
                deny("a second TIFF directory (a thumbnail or another page)".into())?;
            }
        }
        other => deny(format!("unexpected format {other:?}"))?,
    }
    // (A TIFF is itself read as an EXIF block: its tags were audited above.)
    let exif = if format == image::ImageFormat::Tiff { Err(exif::Error::NotFound("TIFF")) } else { exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)) };
    if let Ok(parsed) = exif {
        for f in parsed.fields() {
            if !(obscura::image_io::EXIF_ALLOWLIST.contains(&f.tag) || matches!(f.tag, Tag::Orientation | Tag::ExifIFDPointer)) {
                deny(format!("EXIF tag {} kept", f.tag))?;
            }
        }
        kept.push(format!("{} EXIF fields", parsed.fields().count()));
    }
    let mut decoder = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().unwrap().into_decoder().unwrap();
    if let Some(icc) = image::ImageDecoder::icc_profile(&mut decoder).unwrap() {
        if obscura::image_io::sanitize_icc(&icc).as_deref() != Some(icc.as_slice()) {
            deny("an ICC profile that is not a rebuilt one".into())?;
        }
        kept.push(format!("ICC {} B", icc.len()));
    }
    for secret in SECRETS {
        if contains(bytes, secret.as_bytes()) {
            deny(format!("{secret} survived"))?;
        }
    }
    if contains(bytes, &preview[preview.len() - 100..preview.len() - 40]) {
        deny("the face preview survived".into())?;
    }
    Ok(if kept.is_empty() { "nothing".into() } else { kept.join(", ") })
}

#[test]
fn every_kind_of_metadata_in_every_output_mode_leaves_only_the_allowlist() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image::imageops::thumbnail(&load_rgb(&eval_image(ONE_FACE)), 512, 354);
    let preview = face_preview();
    let mut inputs = vec![
        ("hostile.jpg", hostile_jpeg(&img, &preview)),
        ("hostile.png", hostile_png(&img, &preview)),
        ("hostile.webp", hostile_webp(&img, &preview)),
        ("hostile.gif", hostile_gif(&img, &preview)),
        ("hostile.tif", hostile_tiff(&img, &preview)),
    ];
    // A phone's HEIC and an AVIF, made by libheif's encoder (tests/fixtures/make_heif.py):
    // EXIF with GPS and an artist, XMP, a thumbnail item and an alpha image.
    if libheif_here("every_kind_of_metadata (HEIC and AVIF inputs)") {
        inputs.push(("hostile.heic", std::fs::read(fixture("astronaut.heic")).unwrap()));
        inputs.push(("hostile.avif", std::fs::read(fixture("astronaut.avif")).unwrap()));
        // The same HEIC with a depth map and an HDR gain map (auxiliary images).
        inputs.push(("depth-map.heic", std::fs::read(fixture("astronaut-depth-gainmap.heic")).unwrap()));
    }
    // Animations and pages (tests/fixtures/make_animations.py): a GIF comment, PNG text
    // and EXIF with GPS, WebP EXIF and XMP, TIFF artist and description on every page.
    let animations = ["moving-face.gif", "moving-face.png", "moving-face.webp", "pages.tif"];
    for name in animations {
        inputs.push((name, std::fs::read(fixture(name)).unwrap()));
    }
    let animated = |name: &str| animations.contains(&name);
    let in_dir = tmp.path().join("in");
    std::fs::create_dir_all(&in_dir).unwrap();
    for (name, bytes) in &inputs {
        // Sanity: each input really carries its secrets and the preview (the HEIF ones
        // their own thumbnail).
        let heif = name.ends_with(".heic") || name.ends_with(".avif");
        if animated(name) {
            assert!(contains(bytes, b"SECRET-"), "{name}");
        } else {
            assert!(contains(bytes, b"SECRET-XMP") && (heif || contains(bytes, &preview[preview.len() - 100..preview.len() - 40])), "{name}");
        }
        // …and the checker sees it: the inputs themselves fail the audit, kept or not.
        for keep in [false, true] {
            assert!(audit_output(bytes, keep, &preview, animated(name)).is_err(), "{name}: the audit misses the input's own metadata");
        }
        std::fs::write(in_dir.join(name), bytes).unwrap();
    }
    let mut failures = Vec::new();
    let mut check = |mode: &str, input: &str, output: &std::path::Path, keep: bool| {
        let verdict = std::fs::read(output).map_err(|e| e.to_string()).and_then(|b| audit_output(&b, keep, &preview, animated(input)));
        println!("{:<28} {:<14} {:<6} {}", mode, input, if keep { "keep" } else { "strip" }, match &verdict {
            Ok(kept) => format!("ok: {kept}"),
            Err(e) => format!("LEAK: {e}"),
        });
        if let Err(e) = verdict {
            failures.push(format!("{mode} {input} keep={keep}: {e}"));
        }
    };
    println!("{:<28} {:<14} {:<6} kept", "mode", "input", "");
    for keep in [false, true] {
        for (name, _) in &inputs {
            for ext in ["jpg", "png", "webp", "gif", "tif"] {
                let output = tmp.path().join(format!("{name}.{keep}.{ext}"));
                let mut cmd = obscura();
                cmd.args(["anonymise", "-q", "--targets", "face"]).arg(in_dir.join(name)).arg("-o").arg(&output);
                if keep {
                    cmd.arg("--keep-metadata");
                }
                // Several pictures go only where they fit (tests/formats.rs): refused, no output.
                if animated(name) && (ext == "jpg" || (*name == "pages.tif" && ext != "tif")) {
                    assert_eq!(run(&mut cmd).status.code(), Some(1), "{name} -> {ext}");
                    assert!(!output.exists());
                    continue;
                }
                assert!(run(&mut cmd).status.success(), "{name} -> {ext}");
                check(&format!("anonymise -o .{ext}"), name, &output, keep);
            }
            // stdout
            let mut cmd = obscura();
            cmd.args(["anonymise", "-q", "--targets", "face", "-"]).stdin(std::fs::File::open(in_dir.join(name)).unwrap());
            if keep {
                cmd.arg("--keep-metadata");
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success());
            let piped = tmp.path().join(format!("{name}.{keep}.stdout"));
            std::fs::write(&piped, &out.stdout).unwrap();
            check("anonymise - (stdout)", name, &piped, keep);
        }
        // Batch over a folder.
        let dst = tmp.path().join(format!("batch-{keep}"));
        let mut cmd = obscura();
        cmd.args(["batch", "-q", "--targets", "face"]).arg(&in_dir).arg(&dst);
        if keep {
            cmd.arg("--keep-metadata");
        }
        assert!(run(&mut cmd).status.success());
        for (name, _) in &inputs {
            check("batch (folder)", name, &dst.join(name), keep);
        }
    }
    assert!(failures.is_empty(), "metadata survived:\n{}", failures.join("\n"));
}
