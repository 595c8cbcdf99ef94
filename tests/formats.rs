//! GIF, TIFF, HEIC and AVIF through the CLI: a still GIF or single-page TIFF is anonymised
//! and written in its own format, a HEIC or AVIF as JPEG, with the face at its
//! ground-truth box redacted and nothing but the pixels carried along (the output's
//! blocks, tags and segments are parsed and listed; the HEIF inputs' thumbnail, alpha
//! image, EXIF and XMP items are listed first, so the test knows what it drops); every
//! frame of an animated GIF, PNG and WebP and every page of a TIFF is redacted where its
//! face is, and written back as an animation (or pages) with its timing and nothing else;
//! a TIFF's thumbnail directory is dropped; a HEIC stored on its side or in tiles is
//! redacted and written as it is shown; a HEIF of several images, a cut file of each format and an animation over the frame
//! limit are refused with no output. (The service and Python take the same bytes:
//! tests/serve.rs, python/tests.)

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
        assert_only_pixels(name, &written, 1);
    }
}

/// The one-face photo as a TIFF the way cameras and scanners write one: the photo and a
/// quarter-size copy of it (a thumbnail, marked NewSubfileType = 1 "reduced resolution")
/// in a directory of its own, after the photo or before it. `turned`: the photo stored a
/// quarter anticlockwise with Orientation 6 (turn it clockwise to show), as a camera
/// held upright writes it. `photo: false`: the thumbnail alone, as a raw file's first
/// directory is (its photo in a sub-IFD, which Obscura does not read).
fn tiff_with_thumbnail(thumbnail_first: bool, turned: bool, photo: bool) -> Vec<u8> {
    use tiff::encoder::{TiffEncoder, colortype::RGB8};
    use tiff::tags::Tag;
    let rgb = load_rgb(&eval_image(ONE_FACE));
    let thumbnail = image::imageops::thumbnail(&rgb, rgb.width() / 4, rgb.height() / 4);
    let stored = if turned { image::imageops::rotate270(&rgb) } else { rgb };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut encoder = TiffEncoder::new(&mut out).unwrap();
    let mut pictures = vec![(&thumbnail, true)];
    if photo {
        pictures.insert(usize::from(thumbnail_first), (&stored, false));
    }
    for (picture, reduced) in pictures {
        let mut page = encoder.new_image::<RGB8>(picture.width(), picture.height()).unwrap();
        if reduced {
            page.encoder().write_tag(Tag::NewSubfileType, 1u32).unwrap();
        } else if turned {
            page.encoder().write_tag(Tag::Orientation, 6u16).unwrap();
        }
        page.write_data(picture.as_raw()).unwrap();
    }
    out.into_inner()
}

/// A TIFF's thumbnail directory is not a page: it is dropped, not redacted and written
/// back (a face in a quarter-size copy may be too small to find, and nobody meant to
/// share it). The output is the photo alone, one directory, upright, its face redacted,
/// whether the thumbnail came after the photo or before it, and whether the photo was
/// stored turned. A TIFF whose only directory is a thumbnail (a raw file's preview) is
/// refused: the photo is elsewhere, and the preview is not it.
#[test]
fn a_tiff_thumbnail_directory_is_dropped_and_only_the_photo_comes_out() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = load_rgb(&eval_image(ONE_FACE));
    for (thumbnail_first, turned) in [(false, false), (true, false), (true, true)] {
        let name = format!("scan-{thumbnail_first}-{turned}");
        let bytes = tiff_with_thumbnail(thumbnail_first, turned, true);
        let directories = tiff_directories(&bytes);
        assert_eq!(directories.len(), 2, "{name}: the input: the photo and its thumbnail");
        assert_eq!(directories.iter().filter(|tags| tags.contains(&254)).count(), 1, "{name}: one directory is marked reduced-resolution");
        let input = tmp.path().join(format!("{name}.tif"));
        std::fs::write(&input, &bytes).unwrap();
        let out = anonymise_one(&input);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("1 region(s) redacted"), "{name}: the photo's face, nothing from the thumbnail: {}", stderr(&out));
        let written = std::fs::read(input.with_extension("anonymized.tif")).unwrap();
        assert_only_pixels(&name, &written, 1);
        let after = decoded_rgb(&written);
        assert_eq!(after.dimensions(), photo.dimensions(), "{name}: the photo, upright, not its thumbnail");
        let face = mean_abs_diff(&photo, &after, ONE_FACE_BOX);
        assert!(face > 15.0, "{name}: the face at its ground-truth box is redacted (mean change {face:.1})");
        let away = mean_abs_diff(&photo, &after, obscura::geometry::PixelRect { x: 0, y: 0, w: 100, h: 100 });
        assert!(away < 3.0, "{name}: upright, and unchanged away from the face ({away:.1})");
    }
    let input = tmp.path().join("preview-only.tif");
    std::fs::write(&input, tiff_with_thumbnail(false, false, false)).unwrap();
    let out = anonymise_one(&input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no full-resolution page"), "{}", stderr(&out));
    assert!(!tmp.path().join("preview-only.anonymized.tif").exists(), "no output");
}

/// A cut file of each still and animated format (HEIC and AVIF: below) is refused with
/// an error naming its format, and nothing is written.
#[test]
fn cut_files_of_every_format_are_refused_with_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let gif = gif_photo();
    let tiff = tiff_photo();
    let rgb = load_rgb(&eval_image(ONE_FACE));
    let (png, webp) = (encoded(&rgb, image::ImageFormat::Png), encoded(&rgb, image::ImageFormat::WebP));
    let read = |name| std::fs::read(fixture(name)).unwrap();
    let (pages, animation, apng, animated_webp) = (read("pages.tif"), read("moving-face.gif"), read("moving-face.png"), read("moving-face.webp"));
    let cases: [(&str, Vec<u8>, &str); 8] = [
        ("cut.gif", gif[..gif.len() / 2].to_vec(), "corrupt or truncated GIF"),
        ("cut.tif", tiff[..tiff.len() / 2].to_vec(), "corrupt or truncated TIFF"),
        ("cut.png", png[..png.len() * 9 / 10].to_vec(), "corrupt or truncated PNG"),
        ("cut.webp", webp[..webp.len() * 9 / 10].to_vec(), "corrupt or truncated WebP"),
        // Cut in its last frame or page: the whole file is refused, not its first part kept.
        ("cut-animation.gif", animation[..animation.len() - 2000].to_vec(), "corrupt or truncated GIF"),
        ("cut-pages.tif", pages[..pages.len() - 2000].to_vec(), "corrupt or truncated TIFF"),
        ("cut-animation.png", apng[..apng.len() - 2000].to_vec(), "corrupt or truncated PNG"),
        // Every frame whole, cut in the metadata chunk after them: the decoder alone would
        // not notice (it stops at the last frame); the RIFF header's length does.
        ("cut-animation.webp", animated_webp[..animated_webp.len() - 100].to_vec(), "corrupt or truncated WebP image: the file is shorter than its RIFF header says"),
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
    assert_eq!(left, ["cut-animation.gif", "cut-animation.png", "cut-animation.webp", "cut-pages.tif", "cut.gif", "cut.png", "cut.tif", "cut.webp"], "no output for any of them");
}

/// Each animation fixture and its TIFF sibling through the CLI: written in its own
/// format, three pictures, each with its face redacted at its box (an animation's frames
/// also where their neighbours' faces are) and the rest of the picture as it was; the timing kept; nothing else in the file (its blocks, chunks or
/// tags parsed and listed).
#[test]
fn every_frame_of_an_animation_and_every_page_of_a_tiff_is_redacted_with_nothing_carried_along() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["moving-face.gif", "moving-face.png", "moving-face.webp", "pages.tif"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        assert!(bytes.windows(6).any(|w| w == b"SECRET"), "{name} carries its secrets");
        let (before, played) = all_pictures(&bytes);
        assert_eq!(before.len(), 3, "{name}: the fixture has three pictures");
        let input = tmp.path().join(name);
        std::fs::write(&input, &bytes).unwrap();
        let out = anonymise_one(&input);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        // One face in each picture; an animation's frames also take their neighbours'
        // regions (a face missed in one frame is covered where the next one found it):
        // 2 + 3 + 2. A TIFF's pages are separate pictures.
        let regions = if name.ends_with(".tif") { "3 region(s) redacted" } else { "7 region(s) redacted" };
        assert!(stderr(&out).contains(regions), "{name}: {regions}: {}", stderr(&out));
        let written = std::fs::read(input.with_file_name(name.replace('.', ".anonymized."))).unwrap();
        assert_eq!(image::guess_format(&written).unwrap(), image::guess_format(&bytes).unwrap(), "{name}: its own format");
        let (after, played_after) = all_pictures(&written);
        assert_eq!(after.len(), 3, "{name}: every picture written");
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let face = mean_abs_diff(b, a, MOVING_FACE[i]);
            assert!(face > 15.0, "{name} picture {i}: the face at its box is redacted (mean change {face:.1})");
            // Below every frame's faces (and their neighbours') and above the progress bar.
            let away = if i == 2 { obscura::geometry::PixelRect { x: 0, y: 20, w: 60, h: 40 } } else { obscura::geometry::PixelRect { x: 0, y: 174, w: 320, h: 14 } };
            let rest = mean_abs_diff(b, a, away);
            assert!(rest < 6.0, "{name} picture {i}: away from the face only the coding changes ({rest:.1})");
        }
        match played {
            Some((delays, loops)) => {
                assert_eq!(delays, [100, 150, 200], "{name}: the fixture's timing");
                assert_eq!(played_after, Some((delays, loops)), "{name}: the timing is kept");
            }
            None => assert_eq!(played_after, None, "{name}"),
        }
        assert_only_pixels(name, &written, 3);
    }
}
/// A face the detector misses in one frame of an animation (here smeared by a 61-pixel
/// horizontal motion blur and upside down in the middle frame of three: either alone is
/// still found) is still redacted there, where the frames either side found it: the
/// report shows no detection in that frame but a region, and its pixels changed.
#[test]
fn a_face_missed_in_one_frame_is_covered_by_its_neighbours_regions() {
    use image::imageops;
    let tmp = tempfile::tempdir().unwrap();
    let photo = load_rgb(&eval_image(ONE_FACE));
    let mut turned = photo.clone();
    let face = imageops::crop_imm(&photo, ONE_FACE_BOX.x, ONE_FACE_BOX.y, ONE_FACE_BOX.w, ONE_FACE_BOX.h).to_image();
    let mut smeared = face.clone();
    for (x, y, pixel) in smeared.enumerate_pixels_mut() {
        let row = (x.saturating_sub(30)..(x + 31).min(face.width())).map(|x| face.get_pixel(x, y).0);
        let (n, sum) = row.fold((0u32, [0u32; 3]), |(n, s), p| (n + 1, [s[0] + u32::from(p[0]), s[1] + u32::from(p[1]), s[2] + u32::from(p[2])]));
        *pixel = image::Rgb(sum.map(|c| (c / n) as u8));
    }
    imageops::replace(&mut turned, &imageops::rotate180(&smeared), i64::from(ONE_FACE_BOX.x), i64::from(ONE_FACE_BOX.y));
    let frames = [&photo, &turned, &photo].map(|rgb| {
        let rgba = image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8();
        image::Frame::from_parts(rgba, 0, 0, image::Delay::from_numer_denom_ms(100, 1))
    });
    let input = tmp.path().join("turned.gif");
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut bytes, 10);
        encoder.set_repeat(image::codecs::gif::Repeat::Infinite).unwrap();
        encoder.encode_frames(frames).unwrap();
    }
    std::fs::write(&input, &bytes).unwrap();
    let (before, _) = all_pictures(&bytes);
    let report = tmp.path().join("report.json");
    let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(&input).arg("--report").arg(&report));
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let frames = report["images"][0]["frames"].as_array().unwrap_or_else(|| panic!("{report}")).clone();
    assert_eq!(frames.len(), 3);
    let detected = |i: usize| frames[i]["detections"].as_array().unwrap().len();
    assert_eq!((detected(0), detected(2)), (1, 1), "the upright face is found in the outer frames: {frames:?}");
    assert_eq!(detected(1), 0, "the turned face is missed on its own (else this test shows nothing): {:?}", frames[1]);
    assert_eq!(frames[1]["regions"].as_array().unwrap().len(), 1, "its neighbours' region (the same in both) is spread to it once");
    let (after, _) = all_pictures(&std::fs::read(tmp.path().join("turned.anonymized.gif")).unwrap());
    for i in 0..3 {
        let change = mean_abs_diff(&before[i], &after[i], ONE_FACE_BOX);
        assert!(change > 15.0, "frame {i}: the face at its box is redacted (mean change {change:.1})");
    }
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

/// What each HEIF fixture carries beside its primary image, read from its boxes: a
/// thumbnail and an alpha image (both coded items, referenced `thmb` and `auxl`), an EXIF
/// block with GPS and an XMP packet (`Exif` and `mime` items, referenced `cdsc`).
fn heif_fixture(name: &str, codec: &str) -> Vec<u8> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let items = heif_item_types(&bytes);
    let coded = items.iter().filter(|t| *t == codec).count();
    assert!(coded >= 3, "{name}: primary, thumbnail and alpha images are coded items: {items:?}");
    assert!(items.contains(&"Exif".to_string()) && items.contains(&"mime".to_string()), "{name}: EXIF and XMP items: {items:?}");
    let mut refs = heif_references(&bytes);
    refs.sort();
    refs.dedup();
    assert_eq!(refs, ["auxl", "cdsc", "thmb"], "{name}");
    for secret in [&b"SECRET-XMP"[..], b"SECRET-ARTIST", b"ObscuraTestCam"] {
        assert!(bytes.windows(secret.len()).any(|w| w == secret), "{name} carries {}", String::from_utf8_lossy(secret));
    }
    bytes
}

#[test]
fn heic_and_avif_come_out_as_jpeg_with_the_face_redacted_and_only_the_primary_image() {
    if !libheif_here("heic_and_avif_come_out_as_jpeg") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for (name, codec) in [("astronaut.heic", "hvc1"), ("astronaut.avif", "av01")] {
        let bytes = heif_fixture(name, codec);
        // Named as phones name them; a folder run picks up .HEIC and .avif.
        std::fs::write(input.join(name.replace("astronaut", &format!("IMG_{codec}")).replace(".heic", ".HEIC")), &bytes).unwrap();
    }
    let out_dir = tmp.path().join("out");
    let out = run(obscura().args(["anonymise", "--targets", "face", "--out-dir"]).arg(&out_dir).arg(&input));
    assert!(out.status.success(), "{}", stderr(&out));
    // Written as JPEG, under the JPEG extension.
    assert_eq!(files_in(&out_dir), ["IMG_av01.jpg", "IMG_hvc1.jpg"]);
    for (name, output) in [("astronaut.heic", "IMG_hvc1.jpg"), ("astronaut.avif", "IMG_av01.jpg")] {
        let written = std::fs::read(out_dir.join(output)).unwrap();
        let before = decoded_rgb(&std::fs::read(fixture(name)).unwrap());
        let after = image::load_from_memory_with_format(&written, image::ImageFormat::Jpeg).unwrap().to_rgb8();
        assert_eq!(after.dimensions(), (384, 384), "{name}");
        let face = mean_abs_diff(&before, &after, ASTRONAUT_FACE);
        assert!(face > 15.0, "{name}: the face at its marked box is redacted (mean change {face:.1})");
        let corner = mean_abs_diff(&before, &after, obscura::geometry::PixelRect { x: 300, y: 300, w: 80, h: 80 });
        assert!(corner < 8.0, "{name}: away from the face only the JPEG coding changes ({corner:.1})");
        // One picture (no thumbnail, no alpha or other auxiliary image: a JPEG has no
        // place for them but a second image, and there is none) and no metadata
        // segment: only JFIF, tables, the frame and the scan.
        assert_only_pixels(name, &written, 1);
        assert!(!written.windows(14).any(|w| w == b"ObscuraTestCam"), "{name}: the camera model survived");
    }
    // --keep-metadata keeps the allowlist only: the camera make, not the artist or the
    // GPS position.
    for name in ["astronaut.heic", "astronaut.avif"] {
        let dest = tmp.path().join(format!("{name}.kept.jpg"));
        let out = run(obscura().args(["anonymise", "--targets", "face", "--keep-metadata"]).arg(fixture(name)).arg("-o").arg(&dest));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(std::fs::read(&dest).unwrap())).unwrap();
        let tags: Vec<String> = exif.fields().map(|f| f.tag.to_string()).collect();
        assert!(tags.contains(&"Make".to_string()), "{name}: {tags:?}");
        assert!(exif.fields().all(|f| obscura::image_io::EXIF_ALLOWLIST.contains(&f.tag) || matches!(f.tag, exif::Tag::Orientation | exif::Tag::ExifIFDPointer)), "{name}: {tags:?}");
        assert!(tags.iter().all(|t| !t.starts_with("GPS") && t != "Artist"), "{name}: {tags:?}");
        assert_eq!(exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY).and_then(|f| f.value.get_uint(0)), Some(1), "{name}: upright");
    }
}

/// A phone's HEIC also carries a depth map and an HDR gain map: auxiliary images of the
/// photo itself (tests/fixtures/make_heif.py retypes astronaut.heic's two alpha images).
/// Neither survives: the output is the one redacted picture.
#[test]
fn a_heic_with_a_depth_map_and_a_gain_map_comes_out_as_the_photo_alone() {
    if !libheif_here("a_heic_with_a_depth_map_and_a_gain_map") {
        return;
    }
    let name = "astronaut-depth-gainmap.heic";
    let bytes = heif_fixture(name, "hvc1");
    // The input really holds both, each an auxiliary image (`auxl`) of the primary item.
    let urns: Vec<String> = isobmff_boxes(&bytes, &["meta", "iprp", "ipco"])
        .into_iter()
        .filter(|(k, _)| k == "auxC")
        .map(|(_, body)| String::from_utf8_lossy(&body[4..body[4..].iter().position(|&b| b == 0).unwrap() + 4]).into_owned())
        .collect();
    assert_eq!(urns, ["urn:mpeg:hevc:2015:auxid:2", "urn:com:apple:photo:2020:aux:hdrgainmap"], "a depth map and a gain map");
    let pitm = isobmff_boxes(&bytes, &["meta"]).into_iter().find(|(k, _)| k == "pitm").unwrap().1;
    let primary = u16::from_be_bytes([pitm[4], pitm[5]]);
    let aux_of: Vec<u16> =
        isobmff_boxes(&bytes, &["meta", "iref"]).into_iter().filter(|(k, _)| k == "auxl").map(|(_, body)| u16::from_be_bytes([body[4], body[5]])).collect();
    assert_eq!(aux_of, [primary, primary], "both belong to the photo");

    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out.jpg");
    let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(fixture(name)).arg("-o").arg(&dest));
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read(&dest).unwrap();
    let after = image::load_from_memory_with_format(&written, image::ImageFormat::Jpeg).unwrap().to_rgb8();
    assert_eq!(after.dimensions(), (384, 384), "the photo, not the 96-pixel gain map");
    let face = mean_abs_diff(&decoded_rgb(&bytes), &after, ASTRONAUT_FACE);
    assert!(face > 15.0, "the face is redacted (mean change {face:.1})");
    // One image, no depth map or gain map beside it, no metadata segment (an MPF gain
    // map would be APP2).
    assert_only_pixels(name, &written, 1);
    for secret in [&b"hdrgainmap"[..], b"auxid"] {
        assert!(!written.windows(secret.len()).any(|w| w == secret), "{} survived", String::from_utf8_lossy(secret));
    }
}

/// HEICs shaped as phones write them (tests/fixtures/make_heif.py): a photo taken
/// upright with the sensor sideways (the coded picture on its side, an `irot` property
/// turning it for display), and a photo coded as a grid of tiles (an iPhone's are
/// 512x512; here 2x2 of 192x192, the face across two of them). Each is read as it is
/// shown, the face found and redacted there, and the JPEG written is that picture, with
/// nothing left for a viewer to turn or assemble.
#[test]
fn rotated_and_tiled_heics_are_redacted_where_the_photo_shows_the_face() {
    if !libheif_here("rotated_and_tiled_heics_are_redacted") {
        return;
    }
    let upright = decoded_rgb(&std::fs::read(fixture("astronaut.heic")).unwrap());
    let whole = obscura::geometry::PixelRect { x: 0, y: 0, w: 384, h: 384 };
    let tmp = tempfile::tempdir().unwrap();
    for name in ["astronaut-rotated.heic", "astronaut-grid.heic"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        if name.contains("rotated") {
            let properties: Vec<String> = isobmff_boxes(&bytes, &["meta", "iprp", "ipco"]).into_iter().map(|(kind, _)| kind).collect();
            assert!(properties.iter().any(|p| p == "irot"), "{name}: marked to be turned: {properties:?}");
        } else {
            let items = heif_item_types(&bytes);
            assert_eq!(items.iter().filter(|t| *t == "hvc1").count(), 4, "{name}: four coded tiles: {items:?}");
            assert!(items.iter().any(|t| t == "grid"), "{name}: a grid item: {items:?}");
            assert_eq!(heif_references(&bytes), ["dimg"], "{name}: the grid derives from the tiles");
        }
        // Read as shown: the picture of astronaut.heic (coded upright, whole), not one
        // on its side or one tile.
        let shown = decoded_rgb(&bytes);
        assert_eq!(shown.dimensions(), (384, 384), "{name}");
        assert!(mean_abs_diff(&shown, &upright, whole) < 6.0, "{name}: read as the photo is shown");
        let dest = tmp.path().join(format!("{name}.jpg"));
        let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(fixture(name)).arg("-o").arg(&dest));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("1 region(s) redacted"), "{name}: {}", stderr(&out));
        let written = std::fs::read(&dest).unwrap();
        assert_only_pixels(name, &written, 1);
        let after = image::load_from_memory_with_format(&written, image::ImageFormat::Jpeg).unwrap().to_rgb8();
        let face = mean_abs_diff(&shown, &after, ASTRONAUT_FACE);
        assert!(face > 15.0, "{name}: the face, where the photo shows it, is redacted (mean change {face:.1})");
        let corner = mean_abs_diff(&shown, &after, obscura::geometry::PixelRect { x: 300, y: 300, w: 80, h: 80 });
        assert!(corner < 8.0, "{name}: written as shown: away from the face only the JPEG coding changes ({corner:.1})");
    }
}

#[test]
fn bad_heif_files_are_refused_with_the_format_named_and_no_output() {
    if !libheif_here("bad_heif_files_are_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let heic = std::fs::read(fixture("astronaut.heic")).unwrap();
    let avif = std::fs::read(fixture("astronaut.avif")).unwrap();
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![
        ("two.heic".into(), std::fs::read(fixture("two-images.heic")).unwrap(), "a HEIC holding several images (a collection or burst) is not supported"),
        ("header-only.heic".into(), heic[..40].to_vec(), "corrupt or truncated HEIC image"),
    ];
    // Cut anywhere (in its boxes, or in the coded pictures at its end): refused, never
    // half a picture.
    for (ext, bytes, name) in [("heic", &heic, "HEIC"), ("avif", &avif, "AVIF")] {
        let message = if name == "HEIC" { "corrupt or truncated HEIC image" } else { "corrupt or truncated AVIF image" };
        for cut in [200, bytes.len() / 2, bytes.len() - 100, bytes.len() - 1] {
            cases.push((format!("cut-{cut}.{ext}"), bytes[..cut].to_vec(), message));
        }
    }
    for (name, bytes, message) in &cases {
        let input = tmp.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(&input).arg("-o").arg(tmp.path().join("out.jpg")));
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
        assert!(!tmp.path().join("out.jpg").exists(), "{name}: no output");
    }
    // HEIC and AVIF are read, not written: asking for one is refused before anything is
    // read, and so is replacing a HEIC in place (it would have to become a JPEG).
    let input = tmp.path().join("photo.heic");
    std::fs::write(&input, &heic).unwrap();
    for target in ["x.heic", "x.avif"] {
        let out = run(obscura().args(["anonymise"]).arg(&input).arg("-o").arg(tmp.path().join(target)));
        assert_eq!(out.status.code(), Some(2), "{target}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not a format Obscura writes"), "{target}: {}", stderr(&out));
    }
    let out = run(obscura().args(["anonymise", "--in-place"]).arg(&input));
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("HEIC and AVIF are read, not written"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&input).unwrap(), heic, "the input is untouched");
    let mut left = files_in(tmp.path());
    left.retain(|f| !cases.iter().any(|(n, _, _)| n == f));
    assert_eq!(left, ["photo.heic"], "no output for any of them");
}

/// Without libheif (here: OBSCURA_LIBHEIF naming a file that is not there), a HEIC is
/// refused with what to install, and nothing is written; every other format still works.
#[test]
fn without_libheif_a_heic_is_refused_and_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-libheif.so.1");
    let out = run(obscura().env("OBSCURA_LIBHEIF", &missing).args(["anonymise", "--targets", "face"]).arg(fixture("astronaut.heic")).arg("-o").arg(tmp.path().join("a.jpg")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("reading HEIC needs libheif, which is not available here"), "{}", stderr(&out));
    assert!(stderr(&out).contains("apt install libheif1"), "{}", stderr(&out));
    assert!(!tmp.path().join("a.jpg").exists());
    let out = run(obscura().env("OBSCURA_LIBHEIF", &missing).args(["anonymise", "--targets", "face"]).arg(eval_image(ONE_FACE)).arg("-o").arg(tmp.path().join("b.jpg")));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An animation is written as another animation format (or TIFF pages) when asked, never
/// as one picture: `-o x.jpg` is refused, as is a TIFF's pages as an animation; past the
/// frame limit (`max_frames`, here from a settings file) the file is refused; none of
/// them leaves an output.
#[test]
fn animations_convert_to_animations_only_and_the_frame_limit_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let gif = fixture("moving-face.gif");
    for (target, pictures) in [("x.webp", 3), ("x.png", 3), ("x.tif", 3)] {
        let dest = tmp.path().join(target);
        let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(&gif).arg("-o").arg(&dest));
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        let (after, _) = all_pictures(&std::fs::read(&dest).unwrap());
        assert_eq!(after.len(), pictures, "{target}");
        for (i, frame) in after.iter().enumerate() {
            let (before, _) = all_pictures(&std::fs::read(&gif).unwrap());
            assert!(mean_abs_diff(&before[i], frame, MOVING_FACE[i]) > 15.0, "{target} frame {i} redacted");
        }
    }
    let refusals = [
        (gif.clone(), "y.jpg", "JPEG holds one picture, and this is an animation"),
        (fixture("pages.tif"), "y.gif", "GIF cannot hold a TIFF's pages"),
    ];
    for (input, target, message) in refusals {
        let dest = tmp.path().join(target);
        let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(&input).arg("-o").arg(&dest));
        assert_eq!(out.status.code(), Some(1), "{target}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{target}: {}", stderr(&out));
        assert!(!dest.exists(), "{target}: no output");
    }
    let settings = tmp.path().join("obscura.toml");
    std::fs::write(&settings, "[image]\nmax_frames = 2\n").unwrap();
    for name in ["moving-face.webp", "pages.tif"] {
        let dest = tmp.path().join(format!("limited-{name}"));
        let out = run(obscura().args(["anonymise", "--targets", "face", "--config"]).arg(&settings).arg(fixture(name)).arg("-o").arg(&dest));
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("more than 2") && stderr(&out).contains("max_frames"), "{name}: {}", stderr(&out));
        assert!(!dest.exists(), "{name}: no output");
    }
}

/// WebP is written lossy when what was read was lossy (a JPEG, a lossy WebP) and
/// lossless when it was not (a PNG): a lossy upload no longer comes back lossless and
/// several times larger, and a lossless one does not lose detail.
#[test]
fn webp_output_is_lossy_for_lossy_inputs_and_lossless_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = eval_image(ONE_FACE);
    let png = tmp.path().join("photo.png");
    load_rgb(&jpeg).save(&png).unwrap();
    let webp_of = |input: &Path, name: &str| {
        let dest = tmp.path().join(name);
        let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(input).arg("-o").arg(&dest));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        std::fs::read(dest).unwrap()
    };
    let from_jpeg = webp_of(&jpeg, "from-jpeg.webp");
    let from_png = webp_of(&png, "from-png.webp");
    assert_eq!(riff_chunks(&from_jpeg), ["VP8 "], "a JPEG becomes a lossy WebP");
    assert_eq!(riff_chunks(&from_png), ["VP8L"], "a PNG becomes a lossless WebP");
    assert!(from_jpeg.len() * 3 < from_png.len(), "lossy {} bytes, lossless {}", from_jpeg.len(), from_png.len());
    let again = webp_of(&tmp.path().join("from-jpeg.webp"), "again.webp");
    assert_eq!(riff_chunks(&again), ["VP8 "], "a lossy WebP stays lossy");
    let before = load_rgb(&jpeg);
    let after = image::load_from_memory(&from_jpeg).unwrap().to_rgb8();
    assert!(mean_abs_diff(&before, &after, ONE_FACE_BOX) > 15.0, "the face is redacted");
}
