//! `obscura eval` as a user runs it: on a small annotated set cut from `shared/eval`
//! (faces, persons, a photo without people), with the JSON scores, the PNG chart and the
//! contact sheet of misses.

mod common;

use std::path::Path;

use common::*;

const CROWD: &str = "wider_0_Parade_marchingband_1_139.jpg";
const PERSON: &str = "coco_000000000036.jpg";

/// Copies the rows of `name` in `shared/eval` whose first column is one of `images`.
fn subset_csv(name: &str, images: &[&str], to: &Path) {
    let text = std::fs::read_to_string(eval_dir().join(name)).unwrap();
    let mut lines = text.lines();
    let mut out = format!("{}\n", lines.next().unwrap());
    for line in lines.filter(|l| images.iter().any(|i| l.starts_with(&format!("{i},")))) {
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(to, out).unwrap();
}

#[test]
fn eval_scores_a_small_set_and_draws_its_chart_and_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let negative = std::fs::read_to_string(eval_dir().join("manifest.csv"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("neg_"))
        .map(|l| l.split(',').next().unwrap().to_string())
        .unwrap();
    let all = [ONE_FACE, CROWD, PERSON, negative.as_str()];
    for name in all {
        std::fs::copy(eval_image(name), images.join(name)).unwrap();
    }
    subset_csv("manifest.csv", &all, &tmp.path().join("manifest.csv"));
    subset_csv("faces_wider_attributes.csv", &all, &tmp.path().join("faces.csv"));
    subset_csv("persons.csv", &all, &tmp.path().join("persons.csv"));
    let faces_total = std::fs::read_to_string(tmp.path().join("faces.csv")).unwrap().lines().count() - 1;

    let (chart, misses) = (tmp.path().join("chart.png"), tmp.path().join("misses"));
    // Persons only where NanoDet is sure, so that the band's bodies do not cover its faces.
    let settings = tmp.path().join("obscura.toml");
    std::fs::write(&settings, "[detect.person]\nthreshold = 0.6\n").unwrap();
    let out = run(obscura()
        .arg("eval")
        .arg("--images")
        .arg(&images)
        .arg("--faces")
        .arg(tmp.path().join("faces.csv"))
        .arg("--persons")
        .arg(tmp.path().join("persons.csv"))
        .arg("--chart")
        .arg(&chart)
        .arg("--misses")
        .arg(&misses)
        // A setting that surely misses faces in the marching band (the default covers
        // every one of its faces of 20 px or more), so that the contact sheet has crops.
        .args(["--threshold", "0.6", "--crowd-threshold", "0.6", "--config"])
        .arg(&settings)
        .arg("--json"));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let faces = &json["faces"];
    assert_eq!(faces["coverage"]["all"]["total"], faces_total);
    assert_eq!(faces["coverage"]["negative_photos"], 1, "the photo without people (the COCO photo is scored for persons only)");
    assert!(faces["coverage"]["all"]["covered"].as_u64().unwrap() > 0);
    assert!(faces["matching"]["curve"].as_array().unwrap().len() > 1, "a precision/recall curve");
    assert!(json["persons"]["coverage"]["all"]["covered"].as_u64().unwrap() >= 1, "the COCO person is covered");

    let png = image::open(&chart).expect("the chart is a PNG").to_rgb8();
    assert!(png.width() > 1000 && png.height() > 400);
    let index = std::fs::read_to_string(misses.join("index.html")).unwrap();
    assert!(index.contains("<h2>faces:") && index.contains("<h2>persons:"), "{index}");
    // The marching band has faces this setting misses; each listed crop exists.
    assert!(index.contains("faces/000.png"), "{index}");
    for src in index.split("<img src=\"").skip(1).map(|s| s.split('"').next().unwrap()) {
        assert!(misses.join(src).is_file(), "{src}");
    }
    assert!(image::open(misses.join("faces-misses.png")).is_ok());
}

#[test]
fn eval_refuses_persons_without_the_person_target() {
    let out = run(obscura().args(["eval", "--images", "x", "--faces", "y", "--persons", "z", "--targets", "face"]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("add person to --targets"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// Text is scored on its own, with the same coverage rule, by kind (the `subset`
/// column) and on photos without text (false regions): here on the text fixture and a
/// photo without annotated text, with no face boxes at all.
#[test]
fn eval_scores_text_by_kind_without_a_face_set() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(fixture("text-scene.jpg"), images.join("text-scene.jpg")).unwrap();
    std::fs::copy(eval_image(ONE_FACE), images.join("other.jpg")).unwrap(); // no text annotated
    std::fs::write(tmp.path().join("manifest.csv"), "image,face_gt,person_gt,text_gt\ntext-scene.jpg,no,no,yes\nother.jpg,no,no,yes\n").unwrap();
    let mut boxes = String::from("image,x,y,w,h,subset\n");
    for (name, r) in TEXT_BOXES {
        let kind = if name == "plate" { "plate" } else { "card" };
        boxes.push_str(&format!("text-scene.jpg,{},{},{},{},{kind}\n", r.x, r.y, r.w, r.h));
    }
    std::fs::write(tmp.path().join("text.csv"), boxes).unwrap();
    let out = run(obscura().arg("eval").arg("--images").arg(&images).arg("--text").arg(tmp.path().join("text.csv")).args(["--targets", "text", "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.get("faces").is_none(), "no face set, no face table: {json}");
    let coverage = &json["text"]["coverage"];
    assert_eq!(coverage["all"]["total"], 5);
    assert_eq!(coverage["all"]["covered"], 5, "{coverage}");
    assert_eq!(coverage["by_subset"]["plate"]["covered"], 1, "{coverage}");
    assert_eq!(coverage["negative_photos"], 1);
    assert!(json["text"]["matching"]["true_positives"].as_u64().unwrap() >= 4, "boxes match the letters: {}", json["text"]["matching"]);
    let refused = run(obscura().args(["eval", "--images", "x", "--text", "y", "--targets", "face"]));
    assert!(stderr(&refused).contains("add text to --targets"), "{}", stderr(&refused));
}
