//! The `obscura anonymise` command on real files: round trips in every format, bad
//! input, fail-closed behaviour, and set-up errors.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use obscura::geometry::PixelRect;

fn copy_one_face(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::copy(eval_image(ONE_FACE), &p).unwrap();
    p
}

#[test]
fn round_trips_jpeg_png_and_webp_with_the_face_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let original = load_rgb(&eval_image(ONE_FACE));
    copy_one_face(tmp.path(), "photo.jpg");
    original.save(tmp.path().join("photo.png")).unwrap();
    image::DynamicImage::ImageRgb8(original.clone()).save(tmp.path().join("photo.webp")).unwrap();
    let out_dir = tmp.path().join("out");
    let report = tmp.path().join("report.json");
    let out = run(obscura()
        // Faces only: the background check below would otherwise see the body redacted.
        .args(["anonymise", "--targets", "face", "--seed", "1", "--report"])
        .arg(&report)
        .arg("--out-dir")
        .arg(&out_dir)
        .args(["photo.jpg", "photo.png", "photo.webp"].map(|n| tmp.path().join(n))));
    assert!(out.status.success());
    assert_eq!(files_in(&out_dir), ["photo.jpg", "photo.png", "photo.webp"]);
    let far = PixelRect { x: 600, y: 400, w: 300, h: 250 };
    for (name, format) in [("photo.jpg", image::ImageFormat::Jpeg), ("photo.png", image::ImageFormat::Png), ("photo.webp", image::ImageFormat::WebP)] {
        let bytes = std::fs::read(out_dir.join(name)).unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format, "{name} keeps its format");
        let result = load_rgb(&out_dir.join(name));
        assert_eq!(result.dimensions(), original.dimensions());
        let face_change = mean_abs_diff(&original, &result, ONE_FACE_BOX);
        let far_change = mean_abs_diff(&original, &result, far);
        assert!(face_change > 15.0, "{name}: face barely changed ({face_change:.1})");
        assert!(far_change < 3.0, "{name}: background changed ({far_change:.1})");
        if format != image::ImageFormat::Jpeg {
            assert_eq!(far_change, 0.0, "{name}: lossless formats keep the background exactly");
        }
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for img in images {
        assert_eq!(img["status"], "ok");
        assert_eq!(img["models"][0]["name"], "centerface-int8");
        assert!(!img["regions"].as_array().unwrap().is_empty());
        assert!(img["timings_ms"]["detect"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn png_alpha_is_made_opaque_where_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rgba = image::open(eval_image(ONE_FACE)).unwrap().to_rgba8();
    for p in rgba.pixels_mut() {
        p.0[3] = 0; // fully transparent, colour kept underneath
    }
    let input = tmp.path().join("clear.png");
    rgba.save(&input).unwrap();
    let output = tmp.path().join("clear.out.png");
    // Faces only: a person box may cover the whole photo, and the point below is to lie
    // outside every region.
    assert!(run(obscura().args(["anonymise", "-q", "--targets", "face"]).arg(&input).arg("-o").arg(&output)).status.success());
    let result = image::open(&output).unwrap().to_rgba8();
    let centre = result.get_pixel(ONE_FACE_BOX.x + ONE_FACE_BOX.w / 2, ONE_FACE_BOX.y + ONE_FACE_BOX.h / 2);
    assert_eq!(centre.0[3], 255, "the redacted face is opaque");
    assert_eq!(result.get_pixel(900, 650).0[3], 0, "elsewhere alpha is kept");
    let orig = image::open(eval_image(ONE_FACE)).unwrap().to_rgb8();
    let rgb = image::DynamicImage::ImageRgba8(result).to_rgb8();
    assert!(mean_abs_diff(&orig, &rgb, ONE_FACE_BOX) > 15.0, "colour under alpha is redacted too");
}

#[test]
fn stdin_to_stdout() {
    let mut child = obscura()
        .args(["anonymise", "-q", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read(eval_image(ONE_FACE)).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let result = image::load_from_memory(&out.stdout).unwrap().to_rgb8();
    assert!(mean_abs_diff(&load_rgb(&eval_image(ONE_FACE)), &result, ONE_FACE_BOX) > 15.0);
}

#[test]
fn bad_inputs_fail_one_by_one_with_clear_errors_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("empty.jpg"), b"").unwrap();
    let full = std::fs::read(eval_image(ONE_FACE)).unwrap();
    std::fs::write(d.join("truncated.jpg"), &full[..full.len() * 2 / 5]).unwrap();
    // Cut, and given a new end-of-image marker: every decoder would fill the rest in.
    std::fs::write(d.join("cut.jpg"), [&full[..full.len() * 2 / 3], &[0xFF, 0xD9][..]].concat()).unwrap();
    std::fs::write(d.join("text.jpg"), b"this is not an image\n").unwrap();
    std::fs::write(d.join("bomb.png"), png_claiming(100_000, 100_000)).unwrap();
    // 30 bytes that would decode to a 100-megapixel picture of background.
    std::fs::write(d.join("screen.gif"), gif_claiming(10_000, 10_000)).unwrap();
    copy_one_face(d, "good.jpg");
    let out_dir = d.join("out");
    let names = ["empty.jpg", "truncated.jpg", "cut.jpg", "text.jpg", "bomb.png", "screen.gif", "good.jpg", "missing.jpg"];
    let out = run(obscura().arg("anonymise").arg("--out-dir").arg(&out_dir).args(names.map(|n| d.join(n))));
    assert_eq!(out.status.code(), Some(1), "some images failed");
    assert_eq!(files_in(&out_dir), ["good.jpg"], "only the good image has an output");
    let err = stderr(&out);
    let line_for = |name: &str| err.lines().find(|l| l.starts_with("error:") && l.contains(name)).unwrap_or_else(|| panic!("no error line for {name}"));
    assert!(line_for("empty.jpg").contains("empty input"));
    assert!(line_for("truncated.jpg").contains("corrupt or truncated"));
    assert!(line_for("cut.jpg").contains("corrupt or truncated JPEG") && line_for("cut.jpg").contains("cut short"), "{err}");
    assert!(line_for("text.jpg").contains("not a JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF"));
    assert!(line_for("bomb.png").contains("100000×100000") && line_for("bomb.png").contains("over the limit"));
    assert!(line_for("screen.gif").contains("corrupt or truncated GIF") && line_for("screen.gif").contains("claims far more pixels"), "{err}");
    assert!(line_for("missing.jpg").contains("No such file"));
    assert!(err.contains("7 failed"));
}

#[test]
fn output_names_may_not_escape_the_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let mut child = obscura()
        .args(["anonymise", "-", "--stdin-name", "../escaped.jpg", "--out-dir"])
        .arg(&out_dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&std::fs::read(eval_image(ONE_FACE)).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("escapes the output folder"), "{}", stderr(&out));
    assert!(!tmp.path().join("escaped.jpg").exists());
    assert!(files_in(&out_dir).is_empty());
}

#[test]
fn inputs_are_never_overwritten_unless_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_one_face(tmp.path(), "photo.jpg");
    let before = std::fs::read(&input).unwrap();
    let out = run(obscura().arg("anonymise").arg(&input).arg("-o").arg(&input));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("would overwrite an input"));
    assert_eq!(std::fs::read(&input).unwrap(), before);

    // Default output goes next to the input.
    assert!(run(obscura().args(["anonymise", "-q"]).arg(&input)).status.success());
    assert!(tmp.path().join("photo.anonymized.jpg").is_file());
    assert_eq!(std::fs::read(&input).unwrap(), before);

    assert!(run(obscura().args(["anonymise", "-q", "--in-place"]).arg(&input)).status.success());
    let after = load_rgb(&input);
    assert!(mean_abs_diff(&load_rgb(&eval_image(ONE_FACE)), &after, ONE_FACE_BOX) > 15.0);
    let leftovers: Vec<_> = files_in(tmp.path()).into_iter().filter(|n| n.ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
}

#[test]
fn missing_model_is_a_setup_error_with_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_one_face(tmp.path(), "photo.jpg");
    let out = run(obscura().arg("anonymise").arg(&input).arg("--model").arg(tmp.path().join("nope.onnx")));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("face model not found") && err.contains("nope.onnx"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(files_in(tmp.path()), ["photo.jpg"]);
}

#[test]
fn corrupt_model_is_a_setup_error_with_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_one_face(tmp.path(), "photo.jpg");
    let model = std::fs::read(root().join("models/centerface.onnx")).expect("models/centerface.onnx: run scripts/setup");
    let corrupt = tmp.path().join("corrupt.onnx");
    std::fs::write(&corrupt, &model[..model.len() / 2]).unwrap();
    let out = run(obscura().arg("anonymise").arg(&input).arg("--model").arg(&corrupt));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("could not be loaded"));
    assert_eq!(files_in(tmp.path()), ["corrupt.onnx", "photo.jpg"]);
}

#[test]
fn fails_closed_when_detection_fails_at_inference() {
    // A real ONNX model that loads but cannot run on CenterFace's input (NanoDet takes a
    // fixed 416×416 input): every image's detection fails, so no image may be written.
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_one_face(tmp.path(), "a.jpg");
    let b = copy_one_face(tmp.path(), "b.jpg");
    let wrong_model = root().join("../shared/models/nanodet.onnx");
    assert!(wrong_model.is_file(), "{} is part of shared/", wrong_model.display());
    let out_dir = tmp.path().join("out");
    let out = run(obscura().arg("anonymise").arg(&a).arg(&b).arg("--out-dir").arg(&out_dir).arg("--model").arg(&wrong_model));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("inference failed"), "{}", stderr(&out));
    assert!(files_in(&out_dir).is_empty(), "nothing written: {:?}", files_in(&out_dir));
}

#[test]
fn missing_onnx_runtime_library_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_one_face(tmp.path(), "photo.jpg");
    let out = run(obscura().arg("anonymise").arg(&input).env("OBSCURA_ORT_LIB", tmp.path().join("libonnxruntime.so")));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("ONNX Runtime library not found") && err.contains("scripts/setup"), "{err}");
    assert_eq!(err.lines().count(), 1);
    assert_eq!(files_in(tmp.path()), ["photo.jpg"]);
}

#[test]
fn too_old_onnx_runtime_library_is_a_clear_error() {
    let old = root().join(".cache/test-fixtures/libonnxruntime.so.1.20.1");
    if !old.is_file() {
        assert!(!in_ci(), "CI must run `scripts/setup --test-fixtures`");
        eprintln!("skipped: {} missing (run scripts/setup --test-fixtures)", old.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_one_face(tmp.path(), "photo.jpg");
    let out = run(obscura().arg("anonymise").arg(&input).env("OBSCURA_ORT_LIB", &old));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("cannot be used") && err.contains("1.20.1") && err.contains("1.31 or newer"), "{err}");
    assert_eq!(err.lines().count(), 1);
    assert_eq!(files_in(tmp.path()), ["photo.jpg"]);
}

/// `--config FILE` is the library's `Config` as TOML; flags typed on the command line win
/// over it, and a flag left out (whose default `--help` shows) never does.
#[test]
fn a_settings_file_is_layered_under_the_flags_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = copy_one_face(tmp.path(), "photo.jpg");
    let config = tmp.path().join("obscura.toml");
    std::fs::write(
        &config,
        "[detect]\ntargets = [\"face\"]\nthreshold = 0.3\n\n[redact]\nstyle = { kind = \"fill\", color = [255, 0, 255] }\npadding = 0.5\n",
    )
    .unwrap();
    let report_of = |extra: &[&str], name: &str| {
        let report = tmp.path().join(format!("{name}.json"));
        let out = run(obscura()
            .args(["anonymise", "--config"])
            .arg(&config)
            .args(extra)
            .arg("--report")
            .arg(&report)
            .arg("-o")
            .arg(tmp.path().join(format!("{name}.png")))
            .arg(&photo));
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        json["images"][0].clone()
    };
    // The file alone: its style, targets and padding, not the defaults --help shows.
    let from_file = report_of(&[], "file");
    let region = &from_file["regions"][0];
    assert_eq!(region["style"]["kind"], "fill", "{from_file}");
    assert_eq!(region["style"]["color"], serde_json::json!([255, 0, 255]));
    assert_eq!(from_file["models"].as_array().unwrap().len(), 1, "targets = [face] from the file: no person model");
    let output = load_rgb(&tmp.path().join("file.png"));
    let centre = (ONE_FACE_BOX.x + ONE_FACE_BOX.w / 2, ONE_FACE_BOX.y + ONE_FACE_BOX.h / 2);
    assert_eq!(output.get_pixel(centre.0, centre.1).0, [255, 0, 255], "filled with the file's colour");
    // A typed flag overrides the file; the rest of the file still applies.
    let typed = report_of(&["--style", "pixelate"], "typed");
    assert_eq!(typed["regions"][0]["style"]["kind"], "pixelate", "{typed}");
    assert_eq!(typed["models"].as_array().unwrap().len(), 1);
    let (file_w, typed_w) = (from_file["regions"][0]["rect"]["w"].as_u64(), typed["regions"][0]["rect"]["w"].as_u64());
    assert_eq!(file_w, typed_w, "padding 0.5 from the file either way");
}

#[test]
fn an_invalid_settings_file_is_refused_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = copy_one_face(tmp.path(), "photo.jpg");
    for (text, expected) in [
        ("[detect]\nthreshold = 1.5\n", "detect.threshold"),
        ("[detect]\ntargets = []\n", "detect.targets"),
        ("[redact]\nstyle = { kind = \"pixelate\", cells = 0 }\n", "redact.style"),
        ("[detect]\nthreshhold = 0.3\n", "threshhold"),
    ] {
        let config = tmp.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = run(obscura().args(["anonymise", "--config"]).arg(&config).arg("--out-dir").arg(tmp.path().join("out")).arg(&photo));
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stderr(&out).contains(expected), "{text}: {}", stderr(&out));
        assert!(!tmp.path().join("out").exists(), "{text}: nothing written");
    }
    // The same check guards flags: a threshold above 1 is refused, not clamped.
    let out = run(obscura().args(["anonymise", "--threshold", "7", "--out-dir"]).arg(tmp.path().join("out")).arg(&photo));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("detect.threshold"), "{}", stderr(&out));
}

/// `--help` shows the library's defaults (not a second copy of them).
#[test]
fn help_shows_the_library_defaults() {
    let out = run(obscura().args(["anonymise", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    let defaults = obscura::Config::default();
    assert!(help.contains(&format!("[default: {}]", defaults.detect.threshold)), "{help}");
    assert!(help.contains("[default: face person]"), "{help}");
    assert!(help.contains("[default: centerface-int8]"), "{help}");
    assert!(help.contains("--config"), "{help}");
}
