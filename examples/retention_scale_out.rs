//! Several schedulers on one PostgreSQL catalog (`scripts/bench-scale-out` runs this in
//! release mode): `--uploads` expired uploads, each one file in a local folder store, are
//! registered; then `--schedulers` processes of `obscura retention run --until-idle` drain
//! them together. With `--kill-one`, the first process is killed with SIGKILL once a
//! third of the files are gone; the others carry on, and once the dead one's lease has
//! expired one more process takes its claims over. Then it checks exactly-once: every
//! upload purged, every file gone, exactly one purge record per upload, and the audit log
//! intact. Prints one JSON line. `--prepare-only` registers the uploads and stops, to
//! profile one scheduler by hand on the catalog it leaves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use obscura::retention::{NewUpload, Policy, Retention, RetentionConfig, Secret};

struct Args {
    obscura: PathBuf,
    catalog: String,
    dir: PathBuf,
    uploads: usize,
    schedulers: usize,
    concurrency: usize,
    kill_one: bool,
    prepare_only: bool,
}

fn args() -> Args {
    let mut a = Args { obscura: PathBuf::new(), catalog: String::new(), dir: PathBuf::new(), uploads: 100_000, schedulers: 1, concurrency: 8, kill_one: false, prepare_only: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--kill-one" || flag == "--prepare-only" {
            a.kill_one |= flag == "--kill-one";
            a.prepare_only |= flag == "--prepare-only";
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--obscura" => a.obscura = value.into(),
            "--catalog" => a.catalog = value,
            "--dir" => a.dir = value.into(),
            "--uploads" => a.uploads = value.parse().unwrap(),
            "--schedulers" => a.schedulers = value.parse().unwrap(),
            "--concurrency" => a.concurrency = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.catalog.is_empty() && !a.dir.as_os_str().is_empty() && !a.obscura.as_os_str().is_empty(), "usage: --obscura BIN --catalog URL --dir DIR [--uploads N --schedulers K --kill-one]");
    a
}

const POLICY: &str = "deadline = \"1h\"\n[classes.photo]\nmax_age = \"1d\"\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\n";
/// The schedulers' lease: short, so a killed one's claims come back soon.
const LEASE: &str = "5s";

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()).unwrap_or(0)
}

fn scheduler(a: &Args, policy: &Path) -> Child {
    Command::new(&a.obscura)
        .args(["-q", "retention", "--catalog", &a.catalog, "--policy"])
        .arg(policy)
        .arg("--secret-file")
        .arg(a.dir.join("secret"))
        .args(["run", "--until-idle", "--lease", LEASE, "--concurrency", &a.concurrency.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting obscura retention run")
}

/// The `purged N` a scheduler printed.
fn purged(out: &std::process::Output) -> u64 {
    let s = String::from_utf8_lossy(&out.stdout);
    s.split("purged ").nth(1).and_then(|t| t.split(',').next()).and_then(|t| t.trim().parse().ok()).unwrap_or_else(|| panic!("no count in {s:?}"))
}

#[tokio::main]
async fn main() {
    let a = args();
    let store = a.dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let policy = a.dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let secret = Secret::load_or_create(&a.dir.join("secret")).unwrap();
    let r = Retention::open(RetentionConfig::new(&a.catalog, Policy::parse(POLICY).unwrap(), secret)).await.unwrap();
    let store_loc = store.display().to_string();
    for start in (0..a.uploads).step_by(10_000) {
        let chunk: Vec<NewUpload> = (start..(start + 10_000).min(a.uploads))
            .map(|i| {
                let key = format!("{:04}/{i}.jpg", i % 1000);
                let p = store.join(&key);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, b"jpeg").unwrap();
                let mut u = NewUpload::new(&format!("u{i}"), &format!("subject-{}", i % 10_000), &store_loc, &key, "photo");
                u.uploaded_at = Some(1_000 + i as i64);
                u
            })
            .collect();
        r.register_many(&chunk).await.unwrap();
    }
    if a.prepare_only {
        eprintln!("retention_scale_out: registered {} expired uploads; stopping before the schedulers", a.uploads);
        return;
    }

    let t = Instant::now();
    let mut children: Vec<Child> = (0..a.schedulers).map(|_| scheduler(&a, &policy)).collect();
    let mut killed = false;
    if a.kill_one {
        while count_files(&store) > a.uploads * 2 / 3 {
            std::thread::sleep(Duration::from_millis(20));
        }
        children[0].kill().unwrap(); // SIGKILL
        children[0].wait().unwrap();
        killed = true;
    }
    let mut per_process = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        if killed && i == 0 {
            continue;
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a scheduler failed");
        per_process.push(purged(&out));
    }
    let drain_s = t.elapsed().as_secs_f64();
    let left_after_drain = count_files(&store);
    // The killed scheduler's claims: back after its lease, taken by one more process.
    let mut takeover = 0;
    if killed {
        std::thread::sleep(humantime::parse_duration(LEASE).unwrap() + Duration::from_secs(1));
        let out = scheduler(&a, &policy).wait_with_output().unwrap();
        assert!(out.status.success(), "the take-over scheduler failed");
        takeover = purged(&out);
    }

    // Exactly once.
    let status = r.status().await.unwrap();
    assert_eq!((status.uploads_active, status.uploads_purged, status.jobs_pending), (0, a.uploads as u64, 0), "{status:?}");
    assert_eq!(count_files(&store), 0, "every file gone");
    let records = r.audit(None, None, 0, 10 * a.uploads as i64).await.unwrap();
    let mut per_upload = std::collections::HashMap::<&str, usize>::new();
    for rec in records.iter().filter(|rec| rec.event == "purge" && rec.outcome == "purged") {
        *per_upload.entry(rec.upload_id.as_deref().unwrap()).or_default() += 1;
    }
    assert_eq!(per_upload.len(), a.uploads, "uploads with a purge record");
    let twice = per_upload.values().filter(|&&c| c > 1).count();
    assert_eq!(twice, 0, "uploads recorded as purged more than once");
    let counted: u64 = per_process.iter().sum::<u64>() + takeover;
    let t = Instant::now();
    let verdict = r.verify_audit().await.unwrap();
    assert!(verdict.intact(), "{verdict:?}");
    println!(
        "{}",
        serde_json::json!({
            "uploads": a.uploads, "schedulers": a.schedulers, "killed_one": killed,
            "drain_s": drain_s, "objects_per_s": (a.uploads - left_after_drain) as f64 / drain_s,
            "left_after_drain": left_after_drain, "taken_over": takeover,
            "per_process": per_process, "counted_by_survivors": counted,
            "purge_records": per_upload.len(), "recorded_twice": twice,
            "audit_records": verdict.records, "audit_verify_s": t.elapsed().as_secs_f64(),
        })
    );
}
