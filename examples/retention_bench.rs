//! Retention at scale (`scripts/bench-retention` runs this in release mode): a catalog of
//! `--uploads` uploads over `--subjects` people; `--unsubscribe` of them leave; the
//! scheduler drains every due purge from a local folder store. Prints one JSON line of
//! timings. Only the objects that will be purged are written to disk; the rest exist in
//! the catalog only (their files would not be touched).
//!
//! To profile the drain alone: `--prepare-only` stops before the drain (copy the folder
//! aside); `--drain-only` drains a catalog so prepared (put the copy back at the same
//! path first: the catalog names the store by its absolute path).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use obscura::retention::{NewUpload, Policy, Retention, RetentionConfig, RunOptions, Secret};

struct Args {
    catalog: String,
    dir: PathBuf,
    uploads: usize,
    subjects: usize,
    unsubscribe: usize,
    concurrency: usize,
    batch: i64,
    prepare_only: bool,
    drain_only: bool,
}

fn args() -> Args {
    let mut a = Args { catalog: String::new(), dir: PathBuf::new(), uploads: 1_000_000, subjects: 100_000, unsubscribe: 10_000, concurrency: 8, batch: 256, prepare_only: false, drain_only: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--prepare-only" => {
                a.prepare_only = true;
                continue;
            }
            "--drain-only" => {
                a.drain_only = true;
                continue;
            }
            _ => {}
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--catalog" => a.catalog = value,
            "--dir" => a.dir = value.into(),
            "--uploads" => a.uploads = value.parse().unwrap(),
            "--subjects" => a.subjects = value.parse().unwrap(),
            "--unsubscribe" => a.unsubscribe = value.parse().unwrap(),
            "--concurrency" => a.concurrency = value.parse().unwrap(),
            "--batch" => a.batch = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.catalog.is_empty() && !a.dir.as_os_str().is_empty(), "usage: --catalog URL --dir DIR [--uploads N --subjects N --unsubscribe N]");
    a
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let a = args();
    let store = a.dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    // A one-second grace period, so unsubscribing only queues and the scheduler's drain
    // can be timed on its own.
    let policy = Policy::parse("deadline = \"1h\"\n[classes.photo]\nmax_age = \"3650d\"\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\ngrace = \"1s\"\n").unwrap();
    let mut config = RetentionConfig::new(&a.catalog, policy, Secret::from_bytes(vec![42; 32]).unwrap());
    config.concurrency = a.concurrency;
    let r = Retention::open(config).await.unwrap();
    let store_loc = store.display().to_string();
    let now = obscura::retention::now_ms();

    // Upload i belongs to subject i % subjects; subjects below `unsubscribe` leave.
    let t = Instant::now();
    let mut files = 0usize;
    for chunk_start in (0..if a.drain_only { 0 } else { a.uploads }).step_by(10_000) {
        let chunk: Vec<NewUpload> = (chunk_start..(chunk_start + 10_000).min(a.uploads))
            .map(|i| {
                let subject = i % a.subjects;
                let key = format!("{:05}/{subject}/{i}.jpg", subject % 10_000);
                if subject < a.unsubscribe {
                    let p = store.join(&key);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, b"jpeg").unwrap();
                    files += 1;
                }
                let mut u = NewUpload::new(&format!("u{i}"), &format!("subject-{subject}"), &store_loc, &key, "photo");
                u.uploaded_at = Some(now - (i as i64 % 86_400_000));
                u
            })
            .collect();
        r.register_many(&chunk).await.unwrap();
    }
    let register_s = secs(t);

    let t = Instant::now();
    let plan = r.plan(Duration::from_secs(30 * 86400), 50).await.unwrap();
    let plan_empty_s = secs(t);

    let t = Instant::now();
    for s in 0..if a.drain_only { 0 } else { a.unsubscribe } {
        r.unsubscribe(&format!("subject-{s}")).await.unwrap();
    }
    let unsubscribe_s = secs(t);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = Instant::now();
    let plan_due = r.plan(Duration::ZERO, 50).await.unwrap();
    let plan_due_s = secs(t);
    let t = Instant::now();
    let status = r.status().await.unwrap();
    let status_s = secs(t);
    if a.drain_only {
        files = plan_due.purge as usize;
    }
    assert_eq!(plan_due.purge as usize, files, "every unsubscribed upload is due");
    if a.prepare_only {
        eprintln!("retention_bench: prepared {} due purges; stopping before the drain", plan_due.purge);
        return;
    }

    eprintln!("retention_bench: draining {} due purges (pid {})", plan_due.purge, std::process::id());
    let t = Instant::now();
    let run = r.run(&RunOptions { until_idle: true, batch: a.batch, ..RunOptions::default() }, std::future::pending()).await.unwrap();
    let drain_s = secs(t);
    assert_eq!(run.purged as usize, files);
    let after = r.status().await.unwrap();
    assert_eq!(after.jobs_pending, 0);

    let t = Instant::now();
    let verdict = r.verify_audit().await.unwrap();
    let verify_s = secs(t);
    assert!(verdict.intact());

    println!(
        "{}",
        serde_json::json!({
            "catalog": r.catalog_display(),
            "uploads": a.uploads, "subjects": a.subjects, "unsubscribed": a.unsubscribe, "purged": run.purged,
            "register_s": register_s, "register_per_s": a.uploads as f64 / register_s,
            "plan_30d_s": plan_empty_s, "plan_30d_items": plan.purge + plan.anonymise,
            "unsubscribe_s": unsubscribe_s, "unsubscribe_per_s": a.unsubscribe as f64 / unsubscribe_s,
            "plan_due_s": plan_due_s, "status_s": status_s, "status_due": status.jobs_due,
            "drain_s": drain_s, "drain_objects_per_s": run.purged as f64 / drain_s,
            "audit_records": verdict.records, "audit_verify_s": verify_s,
        })
    );
}
