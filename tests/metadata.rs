//! Metadata is personal data: EXIF orientation is applied before detection, and outputs
//! carry no EXIF/GPS/thumbnail/XMP/comments unless the user opts in (and never the
//! thumbnail, which is an un-redacted copy of the photo).

mod common;

use common::*;
use exif::{Field, In, Tag, Value};
use image::ImageEncoder;
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

#[test]
fn keep_metadata_keeps_exif_but_never_the_thumbnail() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, thumb) = tagged_photo(tmp.path());
    let output = tmp.path().join("out.jpg");
    assert!(run(obscura().args(["anonymise", "-q", "--keep-metadata"]).arg(&input).arg("-o").arg(&output)).status.success());
    let bytes = std::fs::read(&output).unwrap();
    let parsed = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&bytes)).expect("EXIF kept on request");
    assert!(parsed.get_field(Tag::GPSLatitude, In::PRIMARY).is_some(), "GPS kept: the user opted in");
    assert!(parsed.get_field(Tag::BodySerialNumber, In::PRIMARY).is_some());
    assert!(!parsed.fields().any(|f| f.ifd_num == In::THUMBNAIL), "no thumbnail IFD");
    assert!(!contains(&bytes, &thumb[..64]), "no thumbnail bytes");
    for secret in [b"SecretTown".as_slice(), b"IPTC-SECRET", b"COMMENT-SECRET"] {
        assert!(!contains(&bytes, secret), "XMP, IPTC and comments are never kept");
    }
}
