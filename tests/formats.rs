//! GIF and TIFF through the CLI: a still GIF or single-page TIFF is anonymised and written
//! in its own format, with the face at its ground-truth box redacted and nothing but the
//! pixels carried along (the output's blocks and tags are parsed and listed); an animated
//! GIF or a multi-page TIFF, and a cut file of either, is refused with no output.
//! (The service and Python take the same bytes: tests/serve.rs, python/tests.)

mod common;

use common::*;
use image::ImageEncoder;
use std::path::Path;

/// The one-face evaluation photo, written as a GIF by `image`'s encoder (NeuQuant palette).
fn gif_photo() -> Vec<u8> {
    let rgb = load_rgb(&eval_image(ONE_FACE));
    let mut out = Vec::new();
    image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10).write_image(rgb.as_raw(), rgb.width(), rgb.height(), image::ExtendedColorType::Rgb8).unwrap();
    out
}

/// The one-face evaluation photo as an uncompressed little-endian TIFF.
fn tiff_photo() -> Vec<u8> {
    let rgb = load_rgb(&eval_image(ONE_FACE));
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::tiff::TiffEncoder::new(&mut out).write_image(rgb.as_raw(), rgb.width(), rgb.height(), image::ExtendedColorType::Rgb8).unwrap();
    out.into_inner()
}

/// Two frames: the photo, then the photo again (each frame would need anonymising).
fn animated_gif() -> Vec<u8> {
    let rgba = image::DynamicImage::ImageRgb8(load_rgb(&eval_image(ONE_FACE))).into_rgba8();
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 30);
        let frames = (0..2).map(|_| image::Frame::new(rgba.clone()));
        encoder.encode_frames(frames).unwrap();
    }
    out
}

fn anonymise_one(input: &Path) -> std::process::Output {
    run(obscura().args(["anonymise", "--targets", "face"]).arg(input))
}

#[test]
fn a_still_gif_and_a_tiff_are_anonymised_in_their_own_format_with_nothing_carried_along() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes, format) in [("photo.gif", gif_photo(), image::ImageFormat::Gif), ("photo.tif", tiff_photo(), image::ImageFormat::Tiff)] {
        let input = tmp.path().join(name);
        std::fs::write(&input, &bytes).unwrap();
        let out = anonymise_one(&input);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let output = input.with_file_name(name.replace('.', ".anonymized."));
        let written = std::fs::read(&output).unwrap();
        assert_eq!(image::guess_format(&written).unwrap(), format, "{name}: written in its own format");
        let before = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let after = image::load_from_memory(&written).unwrap().to_rgb8();
        assert_eq!(after.dimensions(), before.dimensions(), "{name}");
        let face = mean_abs_diff(&before, &after, ONE_FACE_BOX);
        assert!(face > 15.0, "{name}: the face at its ground-truth box is redacted (mean change {face:.1})");
        match format {
            image::ImageFormat::Gif => {
                // One image, and no extension but the graphic control block (timing and
                // transparency): no comment, application (XMP, ICC) or plain-text block.
                let blocks = gif_blocks(&written);
                assert_eq!(blocks.iter().filter(|b| b.0 == "image").count(), 1, "{blocks:?}");
                assert!(blocks.iter().all(|&(kind, label)| kind == "image" || label == 0xF9), "{name}: {blocks:?}");
            }
            _ => {
                // Only baseline tags describing the pixels: no EXIF, GPS, XMP, IPTC, ICC or
                // description tag, and no second directory (a thumbnail or another page).
                let (tags, more) = tiff_tags(&written);
                assert!(tags.iter().all(|t| TIFF_PIXEL_TAGS.contains(t)), "{name}: tags {tags:?}");
                assert!(!more, "{name}: one directory only");
            }
        }
    }
}

#[test]
fn an_animated_gif_a_multi_page_tiff_and_cut_files_are_refused_with_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let gif = gif_photo();
    let tiff = tiff_photo();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("animated.gif", animated_gif(), "animated GIF is not supported: only its first frame would be anonymised"),
        ("pages.tif", with_second_page(tiff.clone()), "a multi-page TIFF is not supported: only its first page would be anonymised"),
        ("cut.gif", gif[..gif.len() / 2].to_vec(), "corrupt or truncated GIF"),
        ("cut.tif", tiff[..tiff.len() / 2].to_vec(), "corrupt or truncated TIFF"),
    ];
    for (name, bytes, message) in cases {
        let input = tmp.path().join(name);
        std::fs::write(&input, &bytes).unwrap();
        let out = anonymise_one(&input);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
    }
    let mut left: Vec<String> = files_in(tmp.path());
    left.sort();
    assert_eq!(left, ["animated.gif", "cut.gif", "cut.tif", "pages.tif"], "no output for any of them");
}

/// A folder run picks up .gif, .tif and .tiff files, and `-o x.gif` or `-o x.tif` writes
/// that format from a JPEG.
#[test]
fn folders_and_output_names_take_the_new_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.gif"), gif_photo()).unwrap();
    std::fs::write(input.join("b.tiff"), tiff_photo()).unwrap();
    let out_dir = tmp.path().join("out");
    let out = run(obscura().args(["anonymise", "--targets", "face", "--out-dir"]).arg(&out_dir).arg(&input));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(files_in(&out_dir), ["a.gif", "b.tiff"]);
    for (ext, format) in [("gif", image::ImageFormat::Gif), ("tif", image::ImageFormat::Tiff)] {
        let dest = tmp.path().join(format!("x.{ext}"));
        let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(eval_image(ONE_FACE)).arg("-o").arg(&dest));
        assert!(out.status.success(), "{ext}: {}", stderr(&out));
        assert_eq!(image::guess_format(&std::fs::read(&dest).unwrap()).unwrap(), format);
    }
}
