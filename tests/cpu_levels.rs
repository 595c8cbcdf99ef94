//! The same protection on every supported CPU: the default pipeline run under an
//! emulated AVX2-only CPU (qemu-user's `Haswell`: AVX2 and FMA, no AVX-512, no VNNI)
//! detects and redacts exactly what it does natively, on a fixed sample of
//! `shared/eval`.
//!
//! Why this can break: ONNX Runtime picks its integer kernels by CPU. With 8-bit weights
//! the AVX2 kernel adds pairs of products in 16 bits with saturation, so the same INT8
//! model file gave other scores there and missed must-cover faces (issue 21). The
//! default models are quantised with 7-bit weights, where no kernel saturates, and this
//! test holds that: every region and every detection score equal on both CPUs.
//!
//! Needs `qemu-x86_64` (Debian's `qemu-user`; `OBSCURA_QEMU` names another). Without it
//! the test prints why and passes, except in CI, where it fails. The sample: the photos
//! that once lost must-cover faces on AVX2, the photos of the known misses (their faces
//! sit nearest a threshold), and every 12th photo of the manifest (faces, persons and
//! photos without people). Scores are compared exactly: the default models' outputs
//! came out bit-identical on both CPUs (the float layers around the integer ones too);
//! should a future ONNX Runtime round its float kernels differently per CPU, this test is
//! where that shows.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Photos where the INT8 models of fae4a46 missed must-cover faces on AVX2 (issue 21).
const LOST_ON_AVX2: [&str; 2] = ["wider_27_Spa_Spa_27_212.jpg", "wider_49_Greeting_peoplegreeting_49_920.jpg"];

fn qemu() -> Option<PathBuf> {
    let candidate = std::env::var_os("OBSCURA_QEMU").map(PathBuf::from).unwrap_or_else(|| "qemu-x86_64".into());
    Command::new(&candidate).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| candidate)
}

fn sample() -> Vec<String> {
    let manifest = std::fs::read_to_string(eval_dir().join("manifest.csv")).unwrap();
    let known = std::fs::read_to_string(root().join("tests/fixtures/must_cover_known_misses.csv")).unwrap();
    let mut names: Vec<String> = LOST_ON_AVX2.iter().map(|s| s.to_string()).collect();
    names.extend(known.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()));
    names.extend(manifest.lines().skip(1).step_by(12).map(|l| l.split(',').next().unwrap().to_string()));
    names.sort();
    names.dedup();
    names
}

/// `obscura anonymise` on `images` (under `wrapper` when given): per input file name, its
/// regions and detections as the report gives them.
fn plan(wrapper: Option<&[&str]>, images: &Path, out: &Path) -> BTreeMap<String, (serde_json::Value, serde_json::Value)> {
    let report = out.with_extension("json");
    let exe = option_env!("CARGO_BIN_EXE_obscura").unwrap();
    let mut cmd = match wrapper {
        Some([prog, args @ ..]) => {
            let mut c = Command::new(prog);
            c.args(args).arg(exe);
            c
        }
        _ => Command::new(exe),
    };
    cmd.env_remove("OBSCURA_LOG").args(["anonymise", "-q", "-j", "2", "--out-dir"]).arg(out).arg("--report").arg(&report).arg(images);
    let result = run(&mut cmd);
    assert!(result.status.success(), "{}", stderr(&result));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let name = Path::new(i["input"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
            (name, (i["regions"].clone(), i["detections"].clone()))
        })
        .collect()
}

#[test]
fn the_default_pipeline_detects_the_same_on_an_emulated_avx2_cpu() {
    let Some(qemu) = qemu() else {
        assert!(!in_ci(), "CI must run the emulated AVX2 check: install qemu-user (qemu-x86_64)");
        eprintln!("skipped: qemu-x86_64 not found (apt-get install qemu-user), so the AVX2-only CPU cannot be emulated");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let names = sample();
    for name in &names {
        std::fs::copy(eval_image(name), images.join(name)).unwrap();
    }
    let native = plan(None, &images, &tmp.path().join("native"));
    let qemu = qemu.to_string_lossy().into_owned();
    // qemu warns about each feature of the CPU model it cannot emulate: one about AVX or
    // FMA (qemu before 7.2 has no AVX2) means this would not test an AVX2 CPU.
    let probe = Command::new(&qemu).args(["-cpu", "Haswell", "/bin/true"]).output().unwrap();
    let warnings = String::from_utf8_lossy(&probe.stderr).to_lowercase();
    assert!(probe.status.success() && !warnings.contains("avx") && !warnings.contains("fma"), "qemu cannot emulate Haswell's AVX2: {warnings}");
    let vnni = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().split_whitespace().any(|f| f == "avx512_vnni");
    eprintln!("native CPU with AVX-512 VNNI: {vnni}{}", if vnni { "" } else { " (so this compares two CPUs without VNNI)" });
    let emulated = plan(Some(&[qemu.as_str(), "-cpu", "Haswell"]), &images, &tmp.path().join("haswell"));
    assert_eq!(native.len(), names.len());
    assert_eq!(emulated.len(), names.len());
    let mut differ = Vec::new();
    for (name, (regions, detections)) in &native {
        let (r, d) = &emulated[name];
        if r != regions || d != detections {
            differ.push(format!("{name}: native {} regions, {} detections; AVX2 {} regions, {} detections", regions.as_array().unwrap().len(),
                detections.as_array().unwrap().len(), r.as_array().unwrap().len(), d.as_array().unwrap().len()));
        }
    }
    assert!(differ.is_empty(), "the emulated AVX2 CPU detects differently on {} of {} photos:\n{}", differ.len(), names.len(), differ.join("\n"));
    // The sample is not trivial: both classes are found on it.
    let classes: Vec<String> =
        native.values().flat_map(|(r, _)| r.as_array().unwrap().iter().map(|r| r["class"].as_str().unwrap().to_string())).collect();
    assert!(classes.iter().any(|c| c == "face") && classes.iter().any(|c| c == "person"), "{classes:?}");
    eprintln!("{} photos, {} regions: identical on the native CPU and on an emulated AVX2-only CPU", names.len(), classes.len());
}
