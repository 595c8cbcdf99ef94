//! `obscura batch` over local folders: anonymised copies, skipped non-images, fail-closed
//! failures, resuming after `kill -9`, and shards that cover every key exactly once.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Small copies (320 px wide) of eval photos with a large face, so detection is quick.
fn small_photos(dir: &Path, n: usize) -> Vec<String> {
    let face = image::open(eval_image(ONE_FACE)).unwrap();
    let small = face.resize(320, 320, image::imageops::FilterType::Triangle).to_rgb8();
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("d{}/img{i:04}.jpg", i % 7);
        let path = dir.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        small.save(&path).unwrap();
        keys.push(key);
    }
    keys
}

/// Every file under `dir` (relative, `/`-separated), journals excluded.
fn keys_in(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with(".obscura") {
                    stack.push(p);
                }
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

/// The face area (scaled to 320 px) must have changed: it was redacted.
fn assert_redacted(original: &Path, anonymised: &Path) {
    let a = image::open(original).unwrap().to_rgb8();
    let b = image::open(anonymised).unwrap_or_else(|e| panic!("{}: {e}", anonymised.display())).to_rgb8();
    assert_eq!(a.dimensions(), b.dimensions());
    let face = obscura::geometry::PixelRect { x: 116 * 320 / 1024 + 5, y: 124 * 320 / 1024 + 5, w: 30, h: 50 };
    assert!(mean_abs_diff(&a, &b, face) > 8.0, "{} was not redacted", anonymised.display());
}

fn batch(src: &Path, dst: &Path) -> std::process::Command {
    let mut c = obscura();
    c.arg("batch").arg(src).arg(dst).args(["--seed", "1", "-j", "2"]);
    c
}

#[test]
fn anonymises_a_folder_skips_non_images_and_fails_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let keys = small_photos(&src, 3);
    std::fs::write(src.join("notes.txt"), "not a photo").unwrap();
    std::fs::write(src.join("photo.jpg.bak"), std::fs::read(src.join(&keys[0])).unwrap()).unwrap(); // an image by content
    let jpeg = std::fs::read(src.join(&keys[1])).unwrap();
    std::fs::write(src.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let report = tmp.path().join("report.jsonl");
    let out = run(batch(&src, &dst).arg("--report").arg(&report));
    assert_eq!(out.status.code(), Some(1), "one object failed");
    let err = stderr(&out);
    assert!(err.contains("error: truncated.jpg:") && err.contains("truncated"), "{err}");
    let mut want: BTreeSet<String> = keys.iter().cloned().collect();
    want.insert("photo.jpg.bak".into());
    assert_eq!(keys_in(&dst), want, "images only; nothing for the failed or the non-image");
    for k in &keys {
        assert_redacted(&src.join(k), &dst.join(k));
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    let status = |k: &str| lines.iter().find(|l| l["key"] == k).unwrap()["status"].as_str().unwrap().to_string();
    assert_eq!(status("notes.txt"), "skipped");
    assert_eq!(status("truncated.jpg"), "failed");
    assert_eq!(status(&keys[0]), "done");

    // A rerun does no finished work again, and retries the failure (which fails again).
    let out = run(&mut batch(&src, &dst));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("0 anonymised, 1 failed, 0 skipped (not images), 5 already done before"), "{}", stderr(&out));
}

#[test]
fn destination_must_differ_unless_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let keys = small_photos(&src, 2);
    let out = run(&mut batch(&src, &src));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--in-place"), "{}", stderr(&out));
    let before = std::fs::read(src.join(&keys[0])).unwrap();
    let out = run(batch(&src, &src).arg("--in-place"));
    assert!(out.status.success());
    assert_eq!(keys_in(&src), keys.iter().cloned().collect());
    let after = std::fs::read(src.join(&keys[0])).unwrap();
    assert_ne!(before, after, "replaced in place");
    let original = tmp.path().join("original.jpg");
    std::fs::write(&original, before).unwrap();
    assert_redacted(&original, &src.join(&keys[0]));
}

/// The report lines (`--report`) of one run: key → status.
fn report_statuses(path: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["key"].as_str().unwrap().to_string(), v["status"].as_str().unwrap().to_string()))
        .collect()
}

/// A raw photo uploaded again under a key that a run cleaned before is anonymised by the
/// next run, in place and folder to folder (issue 25: the journal was keyed by name, so
/// the rerun said "already done" and left the new face raw). Unchanged files are not
/// redone.
#[test]
fn a_raw_photo_uploaded_again_under_a_cleaned_key_is_anonymised_again() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let keys = small_photos(&src, 3);
    let raw = std::fs::read(src.join(&keys[0])).unwrap();
    let original = tmp.path().join("original.jpg");
    std::fs::write(&original, &raw).unwrap();
    let report = tmp.path().join("report.jsonl");

    // In place.
    assert!(run(batch(&src, &src).arg("--in-place")).status.success());
    assert_redacted(&original, &src.join(&keys[0]));
    assert!(run(batch(&src, &src).arg("--in-place").arg("--report").arg(&report)).status.success());
    assert!(report_statuses(&report).is_empty(), "nothing redone: {:?}", report_statuses(&report));
    std::fs::write(src.join(&keys[0]), &raw).unwrap();
    assert!(run(batch(&src, &src).arg("--in-place").arg("--report").arg(&report)).status.success());
    assert_eq!(report_statuses(&report), [(keys[0].clone(), "done".to_string())].into(), "only the re-uploaded photo");
    assert_redacted(&original, &src.join(&keys[0]));

    // Folder to folder: a new photo replaces the source file of a key done before.
    let (src, dst) = (tmp.path().join("src2"), tmp.path().join("dst2"));
    let keys = small_photos(&src, 3);
    assert!(run(&mut batch(&src, &dst)).status.success());
    let first = std::fs::read(dst.join(&keys[1])).unwrap();
    let other = image::open(eval_image("wider_27_Spa_Spa_27_212.jpg")).unwrap().resize(320, 320, image::imageops::FilterType::Triangle);
    other.save(src.join(&keys[1])).unwrap();
    assert!(run(batch(&src, &dst).arg("--report").arg(&report)).status.success());
    assert_eq!(report_statuses(&report), [(keys[1].clone(), "done".to_string())].into());
    let second = image::open(dst.join(&keys[1])).unwrap();
    assert_ne!(std::fs::read(dst.join(&keys[1])).unwrap(), first, "the new photo's anonymised copy was written");
    assert_eq!(second.width(), other.width(), "it is the new photo");
}

/// In place in a folder, a file replaced after it was read is not overwritten with the
/// anonymised old version: the write is conditional, as on an object store.
#[test]
fn in_place_in_a_folder_never_overwrites_a_newer_upload() {
    use futures::StreamExt;
    use obscura::store::{Store, StoreError, StoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.jpg"), b"the old upload").unwrap();
    let store = Store::open(tmp.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_, version) = store.get_versioned("a.jpg").await.unwrap();
        assert!(version.is_some(), "a folder reports a version");
        std::thread::sleep(Duration::from_millis(5));
        std::fs::write(tmp.path().join("a.jpg"), b"a newer upload").unwrap();
        let err = store.replace("a.jpg", b"anonymised old".to_vec(), version.as_deref()).await.unwrap_err();
        assert!(matches!(err, StoreError::Changed { .. }), "{err}");
        assert_eq!(std::fs::read(tmp.path().join("a.jpg")).unwrap(), b"a newer upload");
        // Read again, it is replaced, and the version written is what a listing shows.
        let (_, version) = store.get_versioned("a.jpg").await.unwrap();
        let written = store.replace("a.jpg", b"anonymised new".to_vec(), version.as_deref()).await.unwrap();
        assert_eq!(std::fs::read(tmp.path().join("a.jpg")).unwrap(), b"anonymised new");
        let listed: Vec<_> = store.list().collect::<Vec<_>>().await.into_iter().map(|e| e.unwrap()).collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].version, written, "listing and write agree on the version");
        assert_eq!(store.get_versioned("a.jpg").await.unwrap().1, written);
    });
}

#[test]
fn a_destination_inside_the_source_is_not_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let keys = small_photos(&src, 3);
    let dst = src.join("clean");
    assert!(run(&mut batch(&src, &dst)).status.success());
    assert_eq!(keys_in(&dst), keys.iter().cloned().collect::<BTreeSet<_>>(), "no clean/clean/…");
}

#[test]
fn three_shards_cover_what_one_run_covers_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let keys = small_photos(&src, 24);
    let all = tmp.path().join("all");
    assert!(run(&mut batch(&src, &all)).status.success());
    let sharded = tmp.path().join("sharded");
    let mut seen: Vec<BTreeSet<String>> = Vec::new();
    for i in 0..3 {
        let part = tmp.path().join(format!("part{i}"));
        assert!(run(batch(&src, &part).arg("--shard").arg(format!("{i}/3"))).status.success());
        seen.push(keys_in(&part));
        // And all three into one folder, as machines sharing a destination would.
        assert!(run(batch(&src, &sharded).arg("--shard").arg(format!("{i}/3"))).status.success());
    }
    let total: usize = seen.iter().map(|s| s.len()).sum();
    assert_eq!(total, keys.len(), "no key in two shards");
    assert!(seen.iter().all(|s| !s.is_empty()), "24 keys spread over 3 shards: {seen:?}");
    let union: BTreeSet<String> = seen.into_iter().flatten().collect();
    assert_eq!(union, keys_in(&all));
    assert_eq!(keys_in(&sharded), keys_in(&all));
    for k in &keys {
        // Same seed, same model: the same pixels whichever shard did the key.
        assert_eq!(std::fs::read(all.join(k)).unwrap(), std::fs::read(sharded.join(k)).unwrap(), "{k}");
    }
    let out = run(obscura().args(["batch", "a", "b", "--shard", "3/3"]));
    assert_eq!(out.status.code(), Some(2));
    let missing = tmp.path().join("no-such-folder");
    let out = run(obscura().arg("batch").arg(&missing).arg(tmp.path().join("x")));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!missing.exists() && !tmp.path().join("x").exists(), "nothing created");
}

#[test]
fn resumes_after_kill_9_without_redoing_or_half_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let keys = small_photos(&src, 240);
    let mut child = batch(&src, &dst).stderr(std::process::Stdio::null()).spawn().unwrap();
    // Let it finish some objects, then kill it without warning.
    let started = Instant::now();
    while keys_in(&dst).len() < 40 {
        assert!(started.elapsed() < Duration::from_secs(300), "batch made no progress");
        assert!(child.try_wait().unwrap().is_none(), "batch ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = keys_in(&dst).len();
    assert!(partial < keys.len(), "killed mid-run ({partial} of {})", keys.len());

    let out = run(&mut batch(&src, &dst));
    assert!(out.status.success());
    let err = stderr(&out);
    let redone: usize = err.split(" anonymised").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    let before: usize = err.split(" already done before").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(redone + before, keys.len(), "{err}");
    assert!(before >= 20, "finished work was not redone ({before} kept): {err}");
    // Exactly the source's keys: nothing missing, nothing extra, no staged leftovers.
    assert_eq!(keys_in(&dst), keys.iter().cloned().collect::<BTreeSet<_>>());
    for k in &keys {
        assert_redacted(&src.join(k), &dst.join(k));
    }
    // The journal agrees: a third run finds everything done.
    let out = run(&mut batch(&src, &dst));
    assert!(stderr(&out).contains(&format!("0 anonymised, 0 failed, 0 skipped (not images), {} already done before", keys.len())), "{}", stderr(&out));
}

/// The review's cases: two runs at once on one destination each did every object, and a
/// run killed with -9 left an empty `--report` although it had finished objects.
#[test]
fn a_second_run_on_the_same_journal_is_refused_and_a_killed_run_keeps_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let keys = small_photos(&src, 160);
    let report = tmp.path().join("report.jsonl");
    let mut child = batch(&src, &dst).arg("--report").arg(&report).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while keys_in(&dst).len() < 30 {
        assert!(started.elapsed() < Duration::from_secs(300), "batch made no progress");
        assert!(child.try_wait().unwrap().is_none(), "batch ended before the test could run a second one");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run(&mut batch(&src, &dst));
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(still_running, "the first run ended before the second was tried");
    assert_eq!(second.status.code(), Some(2), "a second run on the same journal must not start");
    let err = stderr(&second);
    assert!(err.contains("in use by another batch run") && err.contains(&format!("pid {}", child.id())), "{err}");

    let written = keys_in(&dst).len();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 30 && lines.len() <= written, "{} report lines for {written} objects written", lines.len());
    assert!(lines.iter().all(|l| l["status"] == "done"), "{lines:?}");
    // Once the holder is gone (killed, so it never released anything), the lock is free.
    let out = run(&mut batch(&src, &dst));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keys_in(&dst), keys.iter().cloned().collect::<BTreeSet<_>>());
}

/// Issue 25, case 3, for batch: a folder in the destination store that is a link to a
/// folder outside it. The outputs under it would have been written outside the store;
/// they fail naming the link, and every other photo is done.
#[cfg(unix)]
#[test]
fn a_linked_folder_in_the_destination_store_is_not_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, elsewhere) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("elsewhere"));
    let keys = small_photos(&src, 8);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dst.join("d0")).unwrap();
    let report = tmp.path().join("report.jsonl");
    let out = run(batch(&src, &dst).arg("--report").arg(&report));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(keys_in(&elsewhere), BTreeSet::new(), "an output was written through the link");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for k in &keys {
        let line = lines.iter().find(|l| l["key"] == k.as_str()).unwrap_or_else(|| panic!("{k}: {lines:?}"));
        if k.starts_with("d0/") {
            assert_eq!(line["status"], "failed", "{line}");
            assert!(line["error"].as_str().unwrap().contains("d0 is a symbolic link"), "{line}");
        } else {
            assert_eq!(line["status"], "done", "{line}");
        }
    }
}

/// The review's case: the batch journal in `DST/.obscura` was written through a link
/// planted there (the journal file, or the folder), overwriting a file outside the store.
#[cfg(unix)]
#[test]
fn the_batch_journal_is_never_written_through_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, victim) = (tmp.path().join("src"), tmp.path().join("victim"));
    small_photos(&src, 1);
    std::fs::write(&victim, b"").unwrap();
    let (file_link, dir_link) = (tmp.path().join("dst1"), tmp.path().join("dst2"));
    std::fs::create_dir_all(file_link.join(".obscura")).unwrap();
    std::os::unix::fs::symlink(&victim, file_link.join(".obscura/journal-0-of-1.sqlite")).unwrap();
    std::fs::create_dir_all(&dir_link).unwrap();
    std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir_link.join(".obscura")).unwrap();
    for dst in [&file_link, &dir_link] {
        let out = run(&mut batch(&src, dst));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("is a symbolic link"), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"", "the file behind the link was overwritten");
    assert_eq!(keys_in(&tmp.path().join("elsewhere")), BTreeSet::new());
}

/// The review's case: one odd entry in a source folder (a symbolic link loop, a name
/// that is not UTF-8, a newline in a name) stopped the whole batch with exit 2. Each is
/// now reported with its reason, and every other photo is anonymised.
#[cfg(unix)]
#[test]
fn odd_entries_in_a_folder_are_reported_and_never_stop_the_batch() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let keys = small_photos(&src, 6);
    let photo = std::fs::read(src.join(&keys[0])).unwrap();
    std::os::unix::fs::symlink("..", src.join("d0/loop")).unwrap();
    std::os::unix::fs::symlink("/etc", src.join("outside")).unwrap();
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"bad\xffname.jpg")), &photo).unwrap();
    std::fs::write(src.join("new\nline.jpg"), &photo).unwrap();
    // A store's write in progress beside its object (an in-place run) is not an entry;
    // a lone name of that shape is reported.
    std::fs::write(src.join(format!("{}#12", keys[1])), &photo).unwrap();
    std::fs::write(src.join("lonely.jpg#7"), &photo).unwrap();
    let report = tmp.path().join("report.jsonl");
    let out = run(batch(&src, &dst).arg("--report").arg(&report));
    assert_eq!(out.status.code(), Some(1), "two photos could not be read: exit 1, not 2");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let status = |key: &str| lines.iter().find(|l| l["key"] == key).map(|l| l["status"].as_str().unwrap().to_string());
    for k in &keys {
        assert_eq!(status(k).as_deref(), Some("done"), "{k}: {lines:?}");
    }
    assert_eq!(status("d0/loop").as_deref(), Some("skipped"), "{lines:?}");
    assert_eq!(status("outside").as_deref(), Some("skipped"), "links are not followed out of the source");
    assert_eq!(status("bad\u{fffd}name.jpg").as_deref(), Some("failed"));
    assert_eq!(status("new\nline.jpg").as_deref(), Some("failed"));
    assert_eq!(status("lonely.jpg#7").as_deref(), Some("skipped"));
    assert_eq!(status(&format!("{}#12", keys[1])), None, "{lines:?}");
    assert_eq!(keys_in(&dst), keys.iter().cloned().collect::<BTreeSet<_>>(), "nothing else written, nothing from /etc");
    // Each failure is one line on stderr, the newline escaped.
    assert!(stderr(&out).contains("error: new\\nline.jpg:"), "{}", stderr(&out));
}
