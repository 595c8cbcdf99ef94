//! The adversarial review's cases against `obscura anonymise`, each as the attacker or
//! careless user tried it: colliding output names, links planted in the output folder,
//! animations whose frames would silently vanish, and files that lie about their format.

mod common;

use std::path::Path;

use common::*;

fn anonymise() -> std::process::Command {
    let mut c = obscura();
    c.args(["anonymise", "-q", "--targets", "face"]);
    c
}

fn copy_one_face(dir: &Path, rel: &str) -> std::path::PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::copy(eval_image(ONE_FACE), &p).unwrap();
    p
}

/// Every file under `dir`, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                walk(base, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn two_inputs_with_the_same_name_never_overwrite_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_one_face(tmp.path(), "x/a.jpg");
    // A different photo under the same name.
    let b = tmp.path().join("y/a.jpg");
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    load_rgb(&a).save(tmp.path().join("y/a.png")).unwrap();
    std::fs::rename(tmp.path().join("y/a.png"), &b).unwrap();
    let out_dir = tmp.path().join("out");
    let out = run(anonymise().arg(&a).arg(&b).arg("--out-dir").arg(&out_dir));
    assert_eq!(out.status.code(), Some(1), "a lost result must not exit 0");
    let err = stderr(&out);
    assert!(err.contains("y/a.jpg") && err.contains("already the output of"), "{err}");
    assert_eq!(tree(&out_dir), ["a.jpg"]);
    // What is there is x/a.jpg's result (a JPEG), not y/a.jpg's (a PNG in disguise).
    let bytes = std::fs::read(out_dir.join("a.jpg")).unwrap();
    assert_eq!(image::guess_format(&bytes).unwrap(), image::ImageFormat::Jpeg);
}

#[cfg(unix)]
#[test]
fn a_link_planted_in_the_output_folder_does_not_lead_outputs_out() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    copy_one_face(&input, "sub/a.jpg");
    copy_one_face(&input, "b.jpg");
    let out_dir = tmp.path().join("out");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out_dir.join("sub")).unwrap();
    let out = run(anonymise().arg(&input).arg("--out-dir").arg(&out_dir));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(tree(&elsewhere), Vec::<String>::new(), "an output left the output folder");
    assert!(out_dir.join("b.jpg").is_file(), "the other input was still processed");
}

/// The review's case: `anonymise DIR` skipped files of other formats without a word
/// ("0 of 0 image(s)", exit 0). Each skipped file is now listed with its reason, on
/// stderr and in the report; a link in the folder is skipped, not read through.
#[cfg(unix)]
#[test]
fn a_folder_run_lists_every_file_it_skips_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    copy_one_face(&input, "a.jpg");
    copy_one_face(&input, "sub/old.anonymized.jpg");
    let outside = copy_one_face(tmp.path(), "outside.jpg");
    std::fs::write(input.join("scan.BMP"), b"BM").unwrap();
    std::fs::write(input.join("notes"), b"text").unwrap();
    std::os::unix::fs::symlink(&outside, input.join("sub/link.jpg")).unwrap();
    let (out_dir, report) = (tmp.path().join("out"), tmp.path().join("report.json"));
    // Not quiet (`-q` keeps only errors; the report still lists what was skipped).
    let out = run(obscura().args(["anonymise", "--targets", "face"]).arg(&input).arg("--out-dir").arg(&out_dir).arg("--report").arg(&report));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    for (name, why) in [("scan.BMP", ".BMP is not a format Obscura reads"), ("notes", "no extension"), ("sub/link.jpg", "a symbolic link"), ("sub/old.anonymized.jpg", "an earlier output")] {
        assert!(err.contains(&format!("skipped: {}: {why}", input.join(name).display())), "{name}: {err}");
    }
    assert!(err.contains("1 of 1 image(s) anonymised") && err.contains("4 other file(s) skipped"), "{err}");
    assert_eq!(tree(&out_dir), ["a.jpg"], "the link was not read through");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let skipped = report["images"].as_array().unwrap().iter().filter(|i| i["status"] == "skipped").count();
    assert_eq!(skipped, 4, "{report}");
}

/// The review's case: a valid arithmetic-coded JPEG (tests/fixtures/arithmetic.jpg, made
/// with `jpegtran -arithmetic` from scikit-image's public-domain astronaut) failed closed
/// but was called "corrupt". It is refused as unsupported, saying what to do.
#[test]
fn an_arithmetic_coded_jpeg_is_unsupported_not_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("a.jpg");
    std::fs::copy(root().join("tests/fixtures/arithmetic.jpg"), &input).unwrap();
    let out = run(anonymise().arg(&input));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("an arithmetic-coded JPEG is not supported") && err.contains("convert it first") && !err.contains("corrupt"), "{err}");
    assert!(!tmp.path().join("a.anonymized.jpg").exists());
}

#[test]
fn an_output_extension_names_the_format_written() {
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_one_face(tmp.path(), "a.jpg");
    let bmp = tmp.path().join("x.bmp");
    let out = run(anonymise().arg(&a).arg("-o").arg(&bmp));
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(stderr(&out).contains(".bmp is not a format Obscura writes"), "{}", stderr(&out));
    assert!(!bmp.exists());
    // A named input whose extension lies gets no output under that name either.
    let txt = tmp.path().join("photo.txt");
    std::fs::copy(&a, &txt).unwrap();
    let out = run(anonymise().arg(&txt));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(".txt is not a format Obscura writes"), "{}", stderr(&out));
    assert!(!tmp.path().join("photo.anonymized.txt").exists());
}

#[test]
fn an_output_under_a_file_says_which_file_is_in_the_way() {
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_one_face(tmp.path(), "a.jpg");
    std::fs::write(tmp.path().join("notes"), b"not a folder").unwrap();
    let out = run(anonymise().arg(&a).arg("-o").arg(tmp.path().join("notes/deeper/out.jpg")));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("notes is a file, not a folder"), "{err}");
    assert!(!err.contains("File exists"), "{err}");
}

#[test]
fn a_jpeg_with_another_file_appended_is_anonymised_and_a_cut_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let mut png = Vec::new();
    load_rgb(&eval_image(ONE_FACE)).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let appended = tmp.path().join("appended.jpg");
    std::fs::write(&appended, [jpeg.as_slice(), &png].concat()).unwrap();
    let output = tmp.path().join("out.jpg");
    let out = run(anonymise().arg(&appended).arg("-o").arg(&output));
    assert!(out.status.success(), "the JPEG is whole; what follows it is not part of the image");
    let result = std::fs::read(&output).unwrap();
    assert!(!result.windows(8).any(|w| w == &png[..8]), "the appended file is not carried into the output");
    assert!(mean_abs_diff(&load_rgb(&eval_image(ONE_FACE)), &load_rgb(&output), ONE_FACE_BOX) > 15.0);

    let cut = tmp.path().join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let out = run(anonymise().arg(&cut).arg("-o").arg(tmp.path().join("cut.out.jpg")));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no end-of-image marker"), "{}", stderr(&out));
    assert!(!tmp.path().join("cut.out.jpg").exists());
}

/// A two-frame APNG: the first frame is the face photo, the second the same photo.
fn apng(img: &image::RgbImage) -> Vec<u8> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    // Split the encoder's chunks after the signature.
    let mut chunks = Vec::new();
    let mut i = 8;
    while i < png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        chunks.push((png[i + 4..i + 8].to_vec(), png[i + 8..i + 8 + len].to_vec()));
        i += 12 + len;
    }
    let fctl = |seq: u32| {
        let mut d = seq.to_be_bytes().to_vec();
        d.extend(img.width().to_be_bytes());
        d.extend(img.height().to_be_bytes());
        d.extend([0; 8]); // x, y offsets
        d.extend([0, 1, 0, 10, 0, 0]); // delay 1/10 s, dispose none, blend source
        d
    };
    let mut out = png[..8].to_vec();
    let mut idat = Vec::new();
    for (kind, data) in &chunks {
        match kind.as_slice() {
            b"IHDR" => {
                out.extend(png_chunk(b"IHDR", data));
                out.extend(png_chunk(b"acTL", &[2u32.to_be_bytes(), 0u32.to_be_bytes()].concat()));
                out.extend(png_chunk(b"fcTL", &fctl(0)));
            }
            b"IDAT" => {
                out.extend(png_chunk(b"IDAT", data));
                idat.extend(data);
            }
            b"IEND" => {
                out.extend(png_chunk(b"fcTL", &fctl(1)));
                out.extend(png_chunk(b"fdAT", &[2u32.to_be_bytes().as_slice(), &idat].concat()));
                out.extend(png_chunk(b"IEND", data));
            }
            _ => out.extend(png_chunk(kind.as_slice().try_into().unwrap(), data)),
        }
    }
    out
}

/// A two-frame animated WebP, each frame the lossless photo.
fn animated_webp(img: &image::RgbImage) -> Vec<u8> {
    let mut webp = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut webp), image::ImageFormat::WebP).unwrap();
    assert_eq!(&webp[12..16], b"VP8L", "the image crate writes a simple lossless WebP");
    let vp8l_len = u32::from_le_bytes(webp[16..20].try_into().unwrap()) as usize;
    let vp8l = riff_chunk(b"VP8L", &webp[20..20 + vp8l_len]);
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let (w, h) = (img.width() - 1, img.height() - 1);
    let vp8x = [vec![0x02 | 0x10, 0, 0, 0], u24(w), u24(h)].concat(); // animation + alpha flags
    let anim = [0u8, 0, 0, 0, 0, 0];
    let anmf = [u24(0), u24(0), u24(w), u24(h), u24(100), vec![0], vp8l].concat();
    let body = [b"WEBP".to_vec(), riff_chunk(b"VP8X", &vp8x), riff_chunk(b"ANIM", &anim), riff_chunk(b"ANMF", &anmf), riff_chunk(b"ANMF", &anmf)].concat();
    riff_chunk(b"RIFF", &body)
}

/// Animations once refused (so that a later frame could not pass un-redacted) are now
/// read whole: a hand-built APNG and animated WebP, two frames each (the second an APNG
/// `fdAT` or a second WebP `ANMF`), come back with the face redacted in both frames.
#[test]
fn hand_built_animations_have_every_frame_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = load_rgb(&eval_image(ONE_FACE));
    let img = image::imageops::thumbnail(&photo, 320, 240);
    let scale = f64::from(img.width()) / f64::from(photo.width());
    let s = |v: u32| (f64::from(v) * scale) as u32;
    let face = obscura::geometry::PixelRect { x: s(ONE_FACE_BOX.x), y: s(ONE_FACE_BOX.y), w: s(ONE_FACE_BOX.w), h: s(ONE_FACE_BOX.h) };
    for (name, bytes) in [("anim.png", apng(&img)), ("anim.webp", animated_webp(&img))] {
        let input = tmp.path().join(name);
        std::fs::write(&input, &bytes).unwrap();
        let (before, _) = all_pictures(&bytes);
        assert_eq!(before.len(), 2, "{name}: the fixture is an animation of two frames");
        let output = tmp.path().join(format!("out-{name}"));
        let out = run(anonymise().arg(&input).arg("-o").arg(&output));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let (after, _) = all_pictures(&std::fs::read(&output).unwrap());
        assert_eq!(after.len(), 2, "{name}: both frames written");
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let change = mean_abs_diff(b, a, face);
            assert!(change > 15.0, "{name} frame {i}: the face is redacted (mean change {change:.1})");
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn temporary_files_of_a_killed_run_are_cleaned_up_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_one_face(tmp.path(), "in/a.jpg");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    // What a run killed mid-write leaves (its pid is long gone).
    let stale = out_dir.join(".obscura-999999999-Ab12Cd.tmp");
    std::fs::write(&stale, b"half an image of the original").unwrap();
    let out = run(anonymise().arg(&a).arg("--out-dir").arg(&out_dir));
    assert!(out.status.success());
    assert!(!stale.exists(), "a stale temporary file was left");
    assert_eq!(tree(&out_dir), ["a.jpg"]);
}

/// Padding between JPEG segments (some writers emit it; libjpeg skips it) is not an error.
#[test]
fn stray_bytes_between_jpeg_segments_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    // After SOI and the first segment.
    let first_len = u16::from_be_bytes([jpeg[4], jpeg[5]]) as usize;
    let cut = 4 + first_len;
    let padded = [&jpeg[..cut], &[0u8; 4][..], &jpeg[cut..]].concat();
    let input = tmp.path().join("padded.jpg");
    std::fs::write(&input, padded).unwrap();
    let output = tmp.path().join("out.jpg");
    let out = run(anonymise().arg(&input).arg("-o").arg(&output));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(mean_abs_diff(&load_rgb(&eval_image(ONE_FACE)), &load_rgb(&output), ONE_FACE_BOX) > 15.0);
}

/// A PNG of a few megabytes whose colour profile (iCCP) inflates to 4 GiB. The profile is
/// inflated while the header is read; it used to be inflated without any limit, so the
/// process aborted on the failed allocation (no error, no other image done). Now the
/// image's memory limit bounds it: the profile is dropped (it is never kept by default)
/// and the photo is anonymised, under an address-space limit the old code could not meet.
#[test]
fn a_colour_profile_that_inflates_to_gigabytes_stays_under_the_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut z = fdeflate::Compressor::new(Vec::new()).unwrap();
    let zeros = vec![0u8; 64 << 20];
    for _ in 0..64 {
        z.write_data(&zeros).unwrap();
    }
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend(z.finish().unwrap());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &[0, 0, 0, 64, 0, 0, 0, 64, 8, 2, 0, 0, 0]));
    png.extend(png_chunk(b"iCCP", &iccp));
    let mut raw = Vec::new();
    for _ in 0..64 {
        raw.push(0u8);
        raw.extend([128u8; 64 * 3]);
    }
    png.extend(png_chunk(b"IDAT", &fdeflate::compress_to_vec(&raw)));
    png.extend(png_chunk(b"IEND", b""));
    assert!(png.len() < 64 << 20, "{} bytes", png.len());
    let (bomb, good) = (tmp.path().join("bomb.png"), copy_one_face(tmp.path(), "good.jpg"));
    std::fs::write(&bomb, &png).unwrap();
    let settings = tmp.path().join("limits.toml");
    std::fs::write(&settings, "[image]\nmax_alloc_bytes = 268435456\n").unwrap();
    // 3 GiB of address space: enough for the runtime, the models and 256 MiB, not 4 GiB.
    let out = run(std::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -v 3145728 && exec \"$@\"")
        .arg("bash")
        .arg(obscura().get_program())
        .args(["anonymise", "-q", "--targets", "face", "--config"])
        .arg(&settings)
        .arg("--out-dir")
        .arg(tmp.path().join("out"))
        .args([&bomb, &good]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(tmp.path().join("out/bomb.png").is_file() && tmp.path().join("out/good.jpg").is_file());
}
