//! Retention end to end against a real SQLite file and a real PostgreSQL server, with real
//! folder stores: events, actions, holds, retries, the audit log, and crash safety.
//!
//! PostgreSQL: set OBSCURA_TEST_POSTGRES_URL (`scripts/test-postgres start DIR` prints
//! one; `.ci/run` does this). Without it the PostgreSQL half prints why and passes,
//! except in CI, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use obscura::retention::{Action, NewUpload, Policy, Retention, RetentionConfig, RetentionError, RunOptions, Secret, UploadState};
use obscura::store::{Store, StoreOptions};
use sqlx::Connection;
use tempfile::TempDir;

/// A fresh, empty catalog database.
struct Db {
    url: String,
    /// Beside the catalog: the audit witness lives here.
    dir: TempDir,
}

impl Db {
    fn sqlite() -> Db {
        let dir = TempDir::new().unwrap();
        Db { url: dir.path().join("catalog.sqlite").display().to_string(), dir }
    }

    /// A new database on the test server, or `None` (skip) outside CI.
    async fn postgres() -> Option<Db> {
        let url = postgres_database("obscura_test").await?;
        Some(Db { url, dir: TempDir::new().unwrap() })
    }
}

/// Declares a scenario `async fn NAME(db: Db)` as two tests, one per database.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::Db::sqlite()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(db) = super::Db::postgres().await {
                    super::$name(db).await
                }
            }
        }
    )*};
}

on_both_databases!(
    unsubscribe_purges_every_object_before_returning,
    legal_hold_blocks_deletion_and_is_reported,
    grace_defers_the_action_and_erasure_overrides_it,
    guardian_erases_one_upload,
    bad_requests_get_clear_errors,
    unreachable_store_is_retried_then_reported_overdue,
    audit_verify_detects_tampering,
    wind_down_queues_everything_and_the_scheduler_finishes_it,
    concurrent_registration_cannot_outlive_an_unsubscribe,
    concurrent_batches_sharing_people_all_register,
    audit_verify_detects_truncation_by_the_database_owner,
    a_forgotten_subject_leaves_no_trace_on_disk,
    audit_verify_detects_a_catalog_rolled_back_to_an_older_copy,
    status_reports_expiries_no_scheduler_has_queued_as_overdue,
    a_class_the_policy_no_longer_names_is_still_reached_and_reported,
    the_cli_erases_uploads_of_a_class_the_policy_no_longer_names,
    symbolic_links_in_a_folder_store_are_refused_not_followed,
    a_subject_id_is_one_person_however_it_is_spelled,
    a_legal_hold_ends_with_the_class_that_set_it,
    a_record_the_database_refuses_does_not_hold_back_the_rest_of_its_batch,
    audit_verify_detects_two_records_of_one_batch_swapped,
    audit_verify_detects_a_record_deleted_or_forged_in_the_middle,
    a_job_queued_for_an_upload_already_purged_is_closed_not_run_again,
    a_drain_forgets_every_finished_subject_and_only_those,
);

const POLICY: &str = r#"
deadline = "1h"

[classes.photo]
max_age = "365d"
on_expiry = "purge"
on_unsubscribe = "purge"

[classes.evidence]
on_expiry = "purge"
on_unsubscribe = "purge"
legal_hold = true

[classes.slow]
on_expiry = "purge"
on_unsubscribe = "purge"
grace = "7d"
"#;

/// The database owner's own connection, beside Obscura's: what someone who controls the
/// database (or a test playing them) edits the tables with.
async fn owner(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("postgres") { url.to_string() } else { format!("sqlite://{url}") };
    sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("connecting as the database owner")
}

fn secret() -> Secret {
    Secret::from_bytes(b"test secret, 32 bytes at least..".to_vec()).unwrap()
}

async fn open(db: &Db, policy: &str) -> Retention {
    open_at(&db.url, db, policy).await
}

/// A catalog at `url` that shares `db`'s audit witness (for a catalog put back from a copy).
async fn open_at(url: &str, db: &Db, policy: &str) -> Retention {
    let mut config = RetentionConfig::new(url, Policy::parse(policy).unwrap(), secret());
    config.store_options = StoreOptions { max_retries: 0, ..StoreOptions::default() };
    config.audit_witness = Some(db.dir.path().join("audit.witness"));
    Retention::open(config).await.unwrap()
}

/// A folder store with `n` small objects per key given.
fn folder_with(keys: &[&str]) -> (TempDir, String) {
    let dir = TempDir::new().unwrap();
    for key in keys {
        let path = dir.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("bytes of {key}")).unwrap();
    }
    let loc = dir.path().display().to_string();
    (dir, loc)
}

fn upload(id: &str, subject: &str, store: &str, key: &str, class: &str) -> NewUpload {
    NewUpload::new(id, subject, store, key, class)
}

/// Nothing in the audit log may carry the raw subject id.
async fn assert_audit_clean(r: &Retention, subjects: &[&str]) {
    let records = r.audit(None, None, 0, 1_000_000).await.unwrap();
    for rec in &records {
        let text = serde_json::to_string(rec).unwrap();
        for s in subjects {
            assert!(!text.contains(s), "audit record carries the raw subject id {s}: {text}");
        }
    }
    let verdict = r.verify_audit().await.unwrap();
    assert!(verdict.intact(), "{verdict:?}");
}

async fn unsubscribe_purges_every_object_before_returning(db: Db) {
    let (dir, store) = folder_with(&["alice-7/1.jpg", "alice-7/1.thumb.jpg", "alice-7/2.png", "bob/1.jpg"]);
    let r = open(&db, POLICY).await;
    let mut a1 = upload("a1", "alice-7", &store, "alice-7/1.jpg", "photo");
    a1.derived = vec!["alice-7/1.thumb.jpg".into()];
    r.register_many(&[a1, upload("a2", "alice-7", &store, "alice-7/2.png", "photo"), upload("b1", "bob", &store, "bob/1.jpg", "photo")]).await.unwrap();

    let summary = r.unsubscribe("alice-7").await.unwrap();
    assert_eq!((summary.queued, summary.done, summary.pending, summary.held), (2, 2, 0, 0), "{summary:?}");
    assert!(summary.errors.is_empty());
    // Gone when the call returns; Bob untouched.
    for key in ["alice-7/1.jpg", "alice-7/1.thumb.jpg", "alice-7/2.png"] {
        assert!(!dir.path().join(key).exists(), "{key} still there");
    }
    assert!(dir.path().join("bob/1.jpg").exists());
    let a1 = r.upload("a1").await.unwrap().unwrap();
    assert_eq!((a1.state, a1.subject_hash.as_deref(), a1.key.as_deref()), (UploadState::Purged, None, None));
    // The subject itself is forgotten (only its keyed hash kept), and cannot come back.
    assert_eq!(r.subject_state("alice-7").await.unwrap(), None);
    let again = r.register(&upload("a3", "alice-7", &store, "alice-7/3.jpg", "photo")).await;
    assert!(matches!(again, Err(RetentionError::Erased)), "{again:?}");
    // Calling again is harmless.
    assert_eq!(r.unsubscribe("alice-7").await.unwrap().queued, 0);

    let log = r.audit(Some("alice-7"), None, 0, 100).await.unwrap();
    let events: Vec<(&str, &str)> = log.iter().map(|a| (a.event.as_str(), a.outcome.as_str())).collect();
    assert_eq!(events.iter().filter(|e| **e == ("purge", "purged")).count(), 2, "{events:?}");
    assert!(events.contains(&("unsubscribe", "queued")) && events.contains(&("subject_forgotten", "done")), "{events:?}");
    assert_audit_clean(&r, &["alice-7"]).await;
    let status = r.status().await.unwrap();
    assert_eq!((status.uploads_active, status.uploads_purged, status.jobs_pending, status.overdue), (1, 2, 0, 0));
}

/// 300 people leave with a one-second grace, three of whom also have an upload under
/// legal hold. One drain, in batches of 64 (several claimed ahead of their recording),
/// purges the rest and forgets exactly the 297 people with nothing left: more than one
/// transaction of forgetting (256 each), one record each, none forgotten twice.
async fn a_drain_forgets_every_finished_subject_and_only_those(db: Db) {
    let people: Vec<String> = (0..300).map(|i| format!("person-{i}")).collect();
    let held = [0, 150, 299];
    let mut keys: Vec<String> = people.iter().map(|p| format!("{p}/1.jpg")).collect();
    keys.extend(held.iter().map(|&i| format!("{}/evidence.jpg", people[i])));
    let (dir, store) = folder_with(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    let policy = format!("{POLICY}\n[classes.soon]\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\ngrace = \"1s\"\n");
    let r = open(&db, &policy).await;
    let mut uploads: Vec<NewUpload> = people.iter().enumerate().map(|(i, p)| upload(&format!("s{i}"), p, &store, &format!("{p}/1.jpg"), "soon")).collect();
    uploads.extend(held.iter().map(|&i| upload(&format!("e{i}"), &people[i], &store, &format!("{}/evidence.jpg", people[i]), "evidence")));
    r.register_many(&uploads).await.unwrap();
    for p in &people {
        r.unsubscribe(p).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = r.run(&RunOptions { until_idle: true, batch: 64, ..RunOptions::default() }, std::future::pending()).await.unwrap();
    assert_eq!((run.purged, run.failed_attempts), (300, 0), "{run:?}");

    for (i, p) in people.iter().enumerate() {
        assert!(!dir.path().join(format!("{p}/1.jpg")).exists(), "{p}/1.jpg still there");
        let state = r.subject_state(p).await.unwrap();
        if held.contains(&i) {
            assert!(dir.path().join(format!("{p}/evidence.jpg")).exists(), "a held upload was deleted");
            assert_eq!(state.as_deref(), Some("unsubscribed"), "{p} was forgotten with an upload left");
        } else {
            assert_eq!(state, None, "{p} was not forgotten");
        }
    }
    let forgotten: Vec<String> = r.audit(None, None, 0, 1_000_000).await.unwrap().into_iter().filter(|a| a.event == "subject_forgotten").filter_map(|a| a.subject_hash).collect();
    let mut expected: Vec<String> = people.iter().enumerate().filter(|(i, _)| !held.contains(i)).map(|(_, p)| secret().subject_hash(p)).collect();
    let mut got = forgotten;
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "one subject_forgotten record for each person with nothing left, and none other");
    let again = r.register(&upload("again", &people[1], &store, "person-1/2.jpg", "soon")).await;
    assert!(matches!(again, Err(RetentionError::Erased)), "{again:?}");
    assert_audit_clean(&r, &people.iter().map(String::as_str).collect::<Vec<_>>()).await;
}

async fn legal_hold_blocks_deletion_and_is_reported(db: Db) {
    let (dir, store) = folder_with(&["c/1.jpg", "c/2.jpg"]);
    let r = open(&db, POLICY).await;
    r.register_many(&[upload("e1", "carol", &store, "c/1.jpg", "evidence"), upload("p1", "carol", &store, "c/2.jpg", "photo")]).await.unwrap();
    let summary = r.unsubscribe("carol").await.unwrap();
    assert_eq!((summary.done, summary.held), (1, 1), "{summary:?}");
    assert!(dir.path().join("c/1.jpg").exists(), "a held upload was deleted");
    assert!(!dir.path().join("c/2.jpg").exists());
    // An erasure request does not break the hold either.
    let erase = r.erase_upload("e1").await.unwrap();
    assert_eq!((erase.done, erase.held), (0, 1));
    r.tick(&RunOptions::default()).await.unwrap();
    assert!(dir.path().join("c/1.jpg").exists());
    let status = r.status().await.unwrap();
    assert_eq!(status.jobs_held, 1);
    let plan = r.plan(Duration::ZERO, 10).await.unwrap();
    assert_eq!(plan.held, 1);
    assert!(plan.items.iter().any(|p| p.upload == "e1" && p.held));

    // Lifting the hold (a policy change) lets the purge run.
    let lifted = open(&db, &POLICY.replace("legal_hold = true", "legal_hold = false")).await;
    let run = lifted.tick(&RunOptions::default()).await.unwrap();
    assert_eq!(run.purged, 1);
    assert!(!dir.path().join("c/1.jpg").exists());
    assert_audit_clean(&lifted, &["carol"]).await;
}

async fn grace_defers_the_action_and_erasure_overrides_it(db: Db) {
    let (dir, store) = folder_with(&["d/1.jpg", "d/2.jpg"]);
    let r = open(&db, POLICY).await;
    r.register_many(&[upload("s1", "dave", &store, "d/1.jpg", "slow"), upload("s2", "dave", &store, "d/2.jpg", "slow")]).await.unwrap();
    let summary = r.unsubscribe("dave").await.unwrap();
    assert_eq!((summary.queued, summary.done, summary.pending), (2, 0, 2));
    assert!(dir.path().join("d/1.jpg").exists());
    assert_eq!(r.tick(&RunOptions::default()).await.unwrap().purged, 0, "ran before the grace period ended");
    // The plan shows it 7 days ahead, not before.
    assert_eq!(r.plan(Duration::from_secs(86400), 10).await.unwrap().purge, 0);
    let plan = r.plan(Duration::from_secs(8 * 86400), 10).await.unwrap();
    assert_eq!(plan.purge, 2);
    assert!(plan.items.iter().all(|p| p.action == Action::Purge && p.subject_hash == Some(secret().subject_hash("dave"))));
    // An erasure request does not wait for the grace period.
    let erase = r.erase_subject("dave").await.unwrap();
    assert_eq!((erase.done, erase.pending), (2, 0), "{erase:?}");
    assert!(!dir.path().join("d/1.jpg").exists() && !dir.path().join("d/2.jpg").exists());
}

async fn guardian_erases_one_upload(db: Db) {
    let (dir, store) = folder_with(&["kid/1.jpg", "kid/1_small.jpg", "kid/2.jpg"]);
    let r = open(&db, POLICY).await;
    let mut k1 = upload("k1", "erin", &store, "kid/1.jpg", "photo");
    k1.derived = vec!["kid/1_small.jpg".into()];
    r.register_many(&[k1, upload("k2", "erin", &store, "kid/2.jpg", "photo")]).await.unwrap();
    let summary = r.erase_upload("k1").await.unwrap();
    assert_eq!((summary.done, summary.pending), (1, 0));
    assert!(!dir.path().join("kid/1.jpg").exists() && !dir.path().join("kid/1_small.jpg").exists());
    assert!(dir.path().join("kid/2.jpg").exists(), "the other upload must stay");
    assert_eq!(r.subject_state("erin").await.unwrap().as_deref(), Some("subscribed"));
    let log = r.audit(None, Some("k1"), 0, 10).await.unwrap();
    assert_eq!(log.iter().map(|a| a.event.as_str()).collect::<Vec<_>>(), ["erase_upload", "purge"]);
    assert!(matches!(r.erase_upload("nope").await, Err(RetentionError::UnknownUpload(_))));
}

async fn bad_requests_get_clear_errors(db: Db) {
    let (_dir, store) = folder_with(&["f/1.jpg"]);
    let r = open(&db, POLICY).await;
    r.register(&upload("f1", "frank", &store, "f/1.jpg", "photo")).await.unwrap();
    let dup = r.register(&upload("f1", "frank", &store, "f/other.jpg", "photo")).await.unwrap_err();
    assert!(dup.to_string().contains("already registered"), "{dup}");
    let same_key = r.register(&upload("f2", "frank", &store, "f/1.jpg", "photo")).await.unwrap_err();
    assert!(matches!(same_key, RetentionError::Duplicate { .. }), "{same_key}");
    let class = r.register(&upload("f3", "frank", &store, "f/3.jpg", "video")).await.unwrap_err();
    assert_eq!(class.to_string(), "the policy has no class \"video\"");
    let key = r.register(&upload("f4", "frank", &store, "../etc/passwd", "photo")).await.unwrap_err();
    assert!(matches!(key, RetentionError::InvalidUpload { .. }), "{key}");
    let unknown = r.unsubscribe("nobody-like-this").await.unwrap_err();
    assert_eq!(unknown.to_string(), "unknown subject \"nobody-like-this\"");
    // A batch with one bad upload registers none.
    let batch = r.register_many(&[upload("g1", "gina", &store, "g/1.jpg", "photo"), upload("f1", "gina", &store, "g/2.jpg", "photo")]).await;
    assert!(batch.is_err());
    assert!(r.upload("g1").await.unwrap().is_none(), "half a batch was registered");
    // The same id twice in one batch, and two ids for one store key: refused whole.
    for (twice, named) in [(["g1", "g1"], ["g/1.jpg", "g/2.jpg"]), (["g1", "g2"], ["g/1.jpg", "g/1.jpg"])] {
        let batch = r.register_many(&[upload(twice[0], "gina", &store, named[0], "photo"), upload(twice[1], "gina", &store, named[1], "photo")]).await.unwrap_err();
        assert!(matches!(&batch, RetentionError::Duplicate { id } if id == twice[1]), "{batch}");
        assert!(r.upload("g1").await.unwrap().is_none(), "half a batch was registered");
    }
    assert_eq!(r.status().await.unwrap().uploads_active, 1);
    // Upload times that would never expire, or are nonsense, are refused (the review
    // registered i64::MAX, i64::MIN and the year 2099); an hour of clock skew is allowed.
    let now = obscura::retention::now_ms();
    for (at, why) in [(i64::MAX, "ahead of this machine's clock"), (i64::MIN, "before 1970"), (4_070_908_800_000, "ahead"), (now + 2 * 3_600_000, "ahead"), (-1, "before 1970")] {
        let mut u = upload("h1", "hana", &store, "h/1.jpg", "photo");
        u.uploaded_at = Some(at);
        let e = r.register(&u).await.unwrap_err();
        assert!(matches!(e, RetentionError::InvalidUpload { .. }) && e.to_string().contains(why), "{at}: {e}");
    }
    let mut skewed = upload("h2", "hana", &store, "h/2.jpg", "photo");
    skewed.uploaded_at = Some(now + 30 * 60_000);
    r.register(&skewed).await.unwrap();
}

async fn unreachable_store_is_retried_then_reported_overdue(db: Db) {
    // An S3 endpoint where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = RetentionConfig::new(&db.url, Policy::parse(&POLICY.replace("deadline = \"1h\"", "deadline = \"0s\"")).unwrap(), secret());
    config.store_options = StoreOptions {
        max_retries: 1,
        init_backoff: Duration::from_millis(10),
        s3: [("endpoint", format!("http://127.0.0.1:{port}")), ("allow_http", "true".into()), ("access_key_id", "k".into()), ("secret_access_key", "s".into()), ("region", "us-east-1".into())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..StoreOptions::default()
    };
    config.retry_base = Duration::from_millis(200);
    let r = Retention::open(config).await.unwrap();
    r.register(&upload("h1", "hana", "s3://bucket/up", "hana/1.jpg", "photo")).await.unwrap();
    let summary = r.unsubscribe("hana").await.unwrap();
    assert_eq!((summary.done, summary.pending), (0, 1), "{summary:?}");
    assert_eq!(summary.errors.len(), 1);
    assert!(!summary.errors[0].contains("hana"), "raw subject id in an error: {}", summary.errors[0]);
    // Nothing marked done that is not done.
    let h1 = r.upload("h1").await.unwrap().unwrap();
    assert_eq!(h1.state, UploadState::Active);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = r.tick(&RunOptions::default()).await.unwrap();
    assert_eq!((again.purged, again.failed_attempts), (0, 1), "{again:?}");
    let status = r.status().await.unwrap();
    assert_eq!((status.jobs_pending, status.overdue), (1, 1), "{status:?}");
    assert_eq!(status.failing.len(), 1);
    assert_eq!(status.failing[0].attempts, 2);
    assert!(status.failing[0].last_error.contains("127.0.0.1"), "{}", status.failing[0].last_error);
    let failures = r.audit(None, Some("h1"), 0, 10).await.unwrap();
    assert_eq!(failures.iter().filter(|a| a.outcome == "failed").count(), 2);
    assert_audit_clean(&r, &["hana"]).await;
}

/// A catalog with a few audited events: two people's uploads, one person unsubscribed
/// and the other erased.
async fn with_history(db: &Db) -> (TempDir, Retention) {
    let (dir, store) = folder_with(&["i/1.jpg", "i/2.jpg", "j/1.jpg"]);
    let r = open(db, POLICY).await;
    r.register_many(&[upload("i1", "ivan", &store, "i/1.jpg", "photo"), upload("i2", "ivan", &store, "i/2.jpg", "photo"), upload("j1", "jo", &store, "j/1.jpg", "photo")]).await.unwrap();
    r.unsubscribe("ivan").await.unwrap();
    r.erase_subject("jo").await.unwrap();
    (dir, r)
}

/// What a database owner can do to the append-only log: switch its update guard off, run
/// `sql`, and switch it back on (PostgreSQL; SQLite's guard is dropped).
async fn edit_audit_as_owner(db: &Db, pool: &sqlx::AnyPool, sql: &str) {
    let (disable, enable) = if db.url.starts_with("postgres") {
        ("ALTER TABLE audit DISABLE TRIGGER audit_no_update", "ALTER TABLE audit ENABLE TRIGGER audit_no_update")
    } else {
        ("DROP TRIGGER audit_no_update", "SELECT 1")
    };
    sqlx::query(disable).execute(pool).await.unwrap();
    sqlx::query(sql).execute(pool).await.unwrap();
    sqlx::query(enable).execute(pool).await.unwrap();
}

async fn audit_verify_detects_tampering(db: Db) {
    let (_dir, r) = with_history(&db).await;
    let records = r.verify_audit().await.unwrap().records;
    assert!(records >= 7, "{records}");

    // The log refuses edits through SQL…
    let pool = owner(&db.url).await;
    let edit = sqlx::query("UPDATE audit SET detail = 'nothing happened' WHERE seq = 2").execute(&pool).await;
    assert!(edit.is_err(), "the audit table accepted an UPDATE");
    // …and someone who disables that guard is caught by verify.
    edit_audit_as_owner(&db, &pool, "UPDATE audit SET detail = 'nothing happened' WHERE seq = 3").await;
    let verdict = r.verify_audit().await.unwrap();
    assert_eq!(verdict.broken_at, Some(3), "{verdict:?}");
    assert_eq!(verdict.records, 2);
}

/// Records appended together (one batch, one transaction: ivan's two purges) are still
/// chained one to the next: the database owner swapping which upload each names is caught
/// at the first of them.
async fn audit_verify_detects_two_records_of_one_batch_swapped(db: Db) {
    let (_dir, r) = with_history(&db).await;
    let purges: Vec<_> = r.audit(None, None, 0, 100).await.unwrap().into_iter().filter(|a| a.event == "purge" && a.outcome == "purged").collect();
    let (a, b) = (purges.iter().find(|p| p.upload_id.as_deref() == Some("i1")).unwrap(), purges.iter().find(|p| p.upload_id.as_deref() == Some("i2")).unwrap());
    assert_eq!((a.seq - b.seq).abs(), 1, "one batch, consecutive records: {purges:?}");
    assert_eq!(a.at, b.at, "appended in one transaction");
    let pool = owner(&db.url).await;
    edit_audit_as_owner(&db, &pool, "UPDATE audit SET upload_id = CASE upload_id WHEN 'i1' THEN 'i2' ELSE 'i1' END WHERE event = 'purge' AND upload_id IN ('i1', 'i2')").await;
    let verdict = r.verify_audit().await.unwrap();
    assert_eq!(verdict.broken_at, Some(a.seq.min(b.seq)), "{verdict:?}");
}

/// The database owner deletes one record from the middle of the log (guards dropped):
/// caught there, as missing. Then puts a forged one in its place, chained to the record
/// before it with a made-up MAC (the secret is not the owner's): caught there too.
async fn audit_verify_detects_a_record_deleted_or_forged_in_the_middle(db: Db) {
    let (_dir, r) = with_history(&db).await;
    let records = r.verify_audit().await.unwrap();
    assert!(records.intact() && records.records >= 6, "{records:?}");
    let pool = owner(&db.url).await;
    let disable = if db.url.starts_with("postgres") { "ALTER TABLE audit DISABLE TRIGGER audit_no_update" } else { "DROP TRIGGER audit_no_delete" };
    sqlx::query(disable).execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM audit WHERE seq = 4").execute(&pool).await.unwrap();
    let verdict = r.verify_audit().await.unwrap();
    assert_eq!(verdict.broken_at, Some(4), "{verdict:?}");
    assert!(verdict.problem.as_deref().unwrap().contains("record 4 is missing"), "{verdict:?}");
    let prev: String = sqlx::query_scalar("SELECT mac FROM audit WHERE seq = 3").fetch_one(&pool).await.unwrap();
    let forged = format!("INSERT INTO audit (seq, at, event, outcome, detail, prev, mac) VALUES (4, 0, 'purge', 'purged', 'nothing to see', '{prev}', '{}')", "0".repeat(64));
    sqlx::query(&forged).execute(&pool).await.unwrap();
    let verdict = r.verify_audit().await.unwrap();
    assert_eq!(verdict.broken_at, Some(4), "{verdict:?}");
    assert!(verdict.problem.as_deref().unwrap().contains("MAC"), "{verdict:?}");
}

/// The review's attack: drop the guards, delete the newest records and point the head row
/// at the new last record. The chain alone is still consistent; the witness outside the
/// catalog is not fooled.
async fn audit_verify_detects_truncation_by_the_database_owner(db: Db) {
    let (_dir, r) = with_history(&db).await;
    let records = r.verify_audit().await.unwrap();
    assert!(records.intact() && records.records >= 6, "{records:?}");
    let pool = &owner(&db.url).await;
    let disable = if db.url.starts_with("postgres") { "ALTER TABLE audit DISABLE TRIGGER audit_no_update" } else { "DROP TRIGGER audit_no_delete" };
    sqlx::query(disable).execute(pool).await.unwrap();
    let cut = |keep: i64| async move {
        sqlx::query(&format!("DELETE FROM audit WHERE seq > {keep}")).execute(pool).await.unwrap();
        let mac: String = if keep == 0 {
            String::new()
        } else {
            sqlx::query_scalar(&format!("SELECT mac FROM audit WHERE seq = {keep}")).fetch_one(pool).await.unwrap()
        };
        sqlx::query(&format!("UPDATE audit_head SET seq = {keep}, mac = '{mac}' WHERE id = 1")).execute(pool).await.unwrap();
    };
    cut(records.records - 2).await;
    let verdict = r.verify_audit().await.unwrap();
    assert!(!verdict.intact(), "a cut-short log passed: {verdict:?}");
    assert!(verdict.problem.as_deref().unwrap().contains("witness"), "{verdict:?}");
    // Every record deleted.
    cut(0).await;
    let verdict = r.verify_audit().await.unwrap();
    assert_eq!(verdict.broken_at, Some(1), "an emptied log passed: {verdict:?}");
    // An edited witness file is caught too.
    let witness = db.dir.path().join("audit.witness");
    let text = std::fs::read_to_string(&witness).unwrap();
    let edited = text.replacen(&format!(" seq={} ", records.records), " seq=0 ", 1);
    assert_ne!(text, edited);
    std::fs::write(&witness, edited).unwrap();
    let verdict = r.verify_audit().await.unwrap();
    assert!(verdict.problem.as_deref().unwrap().contains("edited"), "{verdict:?}");
    // And a deleted one.
    std::fs::remove_file(&witness).unwrap();
    let verdict = r.verify_audit().await.unwrap();
    assert!(verdict.problem.as_deref().unwrap().contains("missing"), "{verdict:?}");
}

/// Finished jobs are recorded a batch at a time, in one transaction (group commit). The
/// database owner makes the catalog refuse one upload's record: the other jobs of the
/// batch are still recorded, done once each; the refused one stays open (its object is
/// gone, as the action ran) and is finished exactly once when the database takes it again.
async fn a_record_the_database_refuses_does_not_hold_back_the_rest_of_its_batch(db: Db) {
    let keys: Vec<String> = (1..=5).map(|i| format!("k/{i}.jpg")).collect();
    let (dir, store) = folder_with(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    let mut config = RetentionConfig::new(&db.url, Policy::parse(POLICY).unwrap(), secret());
    config.audit_witness = Some(db.dir.path().join("audit.witness"));
    config.lease = Duration::from_millis(300);
    let r = Retention::open(config).await.unwrap();
    let uploads: Vec<NewUpload> = (1..=5).map(|i| upload(&format!("k{i}"), "kim", &store, &keys[i - 1], "photo")).collect();
    r.register_many(&uploads).await.unwrap();
    let pool = owner(&db.url).await;
    let (add, drop) = if db.url.starts_with("postgres") {
        (
            vec![
                "CREATE FUNCTION refuse_k2() RETURNS trigger AS $$ BEGIN IF NEW.id = 'k2' AND NEW.state = 'purged' THEN RAISE EXCEPTION 'refused by the owner'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_k2 BEFORE UPDATE ON uploads FOR EACH ROW EXECUTE FUNCTION refuse_k2()",
            ],
            "DROP TRIGGER refuse_k2 ON uploads",
        )
    } else {
        (vec!["CREATE TRIGGER refuse_k2 BEFORE UPDATE ON uploads WHEN NEW.id = 'k2' AND NEW.state = 'purged' BEGIN SELECT RAISE(ABORT, 'refused by the owner'); END"], "DROP TRIGGER refuse_k2")
    };
    for sql in add {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let summary = r.unsubscribe("kim").await.unwrap();
    assert_eq!((summary.queued, summary.done), (5, 4), "{summary:?}");
    assert_eq!(summary.errors.len(), 1, "{summary:?}");
    assert!(summary.errors[0].contains("k2"), "{summary:?}");
    for i in [1, 3, 4, 5] {
        assert_eq!(r.upload(&format!("k{i}")).await.unwrap().unwrap().state, UploadState::Purged, "k{i}");
    }
    assert_eq!(r.upload("k2").await.unwrap().unwrap().state, UploadState::Active, "the refused record is not claimed done");
    sqlx::query(drop).execute(&pool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = r.tick(&RunOptions::default()).await.unwrap();
    assert_eq!(again.purged, 1, "{again:?}");
    assert_eq!(r.upload("k2").await.unwrap().unwrap().state, UploadState::Purged);
    assert_eq!(count_files(dir.path()), 0, "every object gone");
    for i in 1..=5 {
        let records = r.audit(None, Some(&format!("k{i}")), 0, 10).await.unwrap();
        assert_eq!(records.iter().filter(|a| a.outcome == "purged").count(), 1, "k{i} purged exactly once: {records:?}");
    }
    assert_audit_clean(&r, &["kim"]).await;
}

/// Two schedulers on one PostgreSQL catalog: one's expiry pass reads an upload as active
/// in its snapshot, and its insert finds no open job, because the other has just purged
/// the upload and closed its job. The new job is there (the database owner writes it here,
/// as that race leaves it); the scheduler closes it without acting or recording a second
/// purge, and the log stays intact.
async fn a_job_queued_for_an_upload_already_purged_is_closed_not_run_again(db: Db) {
    let (dir, store) = folder_with(&["l/1.jpg", "l/2.jpg"]);
    let mut config = RetentionConfig::new(&db.url, Policy::parse(POLICY).unwrap(), secret());
    config.audit_witness = Some(db.dir.path().join("audit.witness"));
    let r = Retention::open(config).await.unwrap();
    r.register_many(&[upload("l1", "lee", &store, "l/1.jpg", "photo"), upload("l2", "lee", &store, "l/2.jpg", "photo")]).await.unwrap();
    let summary = r.unsubscribe("lee").await.unwrap();
    assert_eq!(summary.done, 2, "{summary:?}");
    let pool = owner(&db.url).await;
    sqlx::query("INSERT INTO jobs (upload_id, action, reason, rule, due_at, state, next_try_at, created_at) VALUES ('l1', 'purge', 'expiry', 'photo.max_age', 0, 'pending', 0, 0)")
        .execute(&pool)
        .await
        .unwrap();
    let tick = r.tick(&RunOptions::default()).await.unwrap();
    assert_eq!((tick.purged, tick.failed_attempts), (0, 0), "{tick:?}");
    let (state, outcome): (String, String) = sqlx::query_as("SELECT state, outcome FROM jobs WHERE upload_id = 'l1' AND reason = 'expiry'").fetch_one(&pool).await.unwrap();
    assert_eq!((state.as_str(), outcome.as_str()), ("done", "already_purged"));
    let records = r.audit(None, Some("l1"), 0, 10).await.unwrap();
    assert_eq!(records.iter().filter(|a| a.outcome == "purged").count(), 1, "purged once: {records:?}");
    assert_eq!(r.status().await.unwrap().jobs_pending, 0);
    assert_eq!(count_files(dir.path()), 0);
    assert_audit_clean(&r, &["lee"]).await;
}

/// Every file under `dir` (recursively) whose name or bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if e.file_name().as_encoded_bytes().windows(needle.len()).any(|w| w == needle) {
                hits.push(path.clone());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

/// The review's attack: after `unsubscribe carol-unique-id-42` the id was still in the
/// SQLite WAL and free pages, in PostgreSQL's heap, and as an empty store folder. Now it
/// must occur nowhere on disk: catalog files (SQLite main, -wal, -shm; PostgreSQL's whole
/// data directory after a checkpoint), the witness, and the store.
async fn a_forgotten_subject_leaves_no_trace_on_disk(db: Db) {
    let mut raw = [0u8; 4];
    getrandom::fill(&mut raw).unwrap();
    let carol = format!("carol-unique-id-42-{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let keys = [format!("{carol}/1.jpg"), format!("{carol}/1.thumb.jpg"), format!("{carol}/2.jpg"), "shared/bob.jpg".to_string()];
    let (dir, store) = folder_with(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    let r = open(&db, POLICY).await;
    let mut c1 = upload("c1", &carol, &store, &keys[0], "photo");
    c1.derived = vec![keys[1].clone()];
    r.register_many(&[c1, upload("c2", &carol, &store, &keys[2], "photo"), upload("b1", "bob", &store, &keys[3], "photo")]).await.unwrap();
    // A careless service puts the person's id into an upload id: refused, since upload
    // ids stay in the audit log.
    let bad = r.register(&upload(&format!("{carol}-3"), &carol, &store, "x/3.jpg", "photo")).await;
    assert!(matches!(bad, Err(RetentionError::InvalidUpload { .. })), "{bad:?}");
    r.export(&carol, &Store::open(&db.dir.path().join("export").display().to_string(), &StoreOptions::default()).unwrap()).await.unwrap();
    std::fs::remove_dir_all(db.dir.path().join("export")).unwrap(); // the person's own copy, handed over

    let summary = r.unsubscribe(&carol).await.unwrap();
    assert_eq!((summary.done, summary.pending), (2, 0), "{summary:?}");
    assert_eq!(r.subject_state(&carol).await.unwrap(), None);
    r.tick(&RunOptions::default()).await.unwrap();

    let needle = carol.as_bytes();
    assert_eq!(files_containing(dir.path(), needle), Vec::<PathBuf>::new(), "the store still names the person");
    assert!(dir.path().join("shared/bob.jpg").exists());
    if db.url.starts_with("postgres") {
        let pool = &owner(&db.url).await;
        sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
        let data: String = sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'data_directory'").fetch_one(pool).await.unwrap();
        assert_eq!(files_containing(Path::new(&data), needle), Vec::<PathBuf>::new(), "PostgreSQL's files still hold the id");
    } else {
        let files = files_in(db.dir.path());
        assert!(files.iter().any(|f| f == "catalog.sqlite"), "{files:?}");
        assert_eq!(files_containing(db.dir.path(), needle), Vec::<PathBuf>::new(), "SQLite's files still hold the id");
    }
    // The person can still be found in the log through the keyed hash, and nowhere else.
    assert!(r.audit(Some(&carol), None, 0, 100).await.unwrap().iter().any(|a| a.event == "subject_forgotten"));
    assert!(r.verify_audit().await.unwrap().intact());
}

/// A catalog written before ids were hashed and keys sealed is converted when it is
/// opened: the raw values leave the files, and everything keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catalog_from_before_sealing_is_converted_on_open() {
    let db = Db::sqlite();
    let (dir, store) = folder_with(&["dora-legacy-77/1.jpg", "dora-legacy-77/1.thumb.jpg"]);
    let r = open(&db, POLICY).await;
    let pool = &owner(&db.url).await;
    // What version 1 wrote: the raw id and the key in the clear, and a failed job.
    for sql in [
        "UPDATE catalog_format SET version = 1".to_string(),
        "INSERT INTO subjects (id, state, created_at) VALUES ('dora-legacy-77', 'subscribed', 1)".to_string(),
        format!("INSERT INTO uploads (id, subject_id, store, key, class, uploaded_at, state, derived) VALUES ('d1', 'dora-legacy-77', '{store}', 'dora-legacy-77/1.jpg', 'photo', 1, 'active', '[\"dora-legacy-77/1.thumb.jpg\"]')"),
        "INSERT INTO jobs (upload_id, action, reason, rule, due_at, state, next_try_at, created_at, attempts, last_error) VALUES ('d1', 'purge', 'expiry', 'photo.max_age', 1, 'pending', 9999999999999, 1, 1, 'delete dora-legacy-77/1.jpg: timeout')".to_string(),
    ] {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
    drop(r);
    let r = open(&db, POLICY).await;
    assert_eq!(files_containing(db.dir.path(), b"dora-legacy-77"), Vec::<PathBuf>::new(), "raw values left in the converted catalog");
    assert_eq!(r.subject_state("dora-legacy-77").await.unwrap().as_deref(), Some("subscribed"));
    let d1 = r.upload("d1").await.unwrap().unwrap();
    assert_eq!((d1.key.as_deref(), d1.key_names_subject), (Some("dora-legacy-77/1.jpg"), true));
    assert_eq!(d1.derived, ["dora-legacy-77/1.thumb.jpg"]);
    assert_eq!(r.status().await.unwrap().failing[0].last_error, "delete <key>: timeout");
    let summary = r.erase_subject("dora-legacy-77").await.unwrap();
    assert_eq!(summary.done, 1, "{summary:?}");
    assert_eq!(files_containing(dir.path(), b"dora-legacy-77"), Vec::<PathBuf>::new());
}

/// Overdue comes from the policy: an upload registered long after its class's `max_age`
/// is overdue before any scheduler pass has queued its expiry.
async fn status_reports_expiries_no_scheduler_has_queued_as_overdue(db: Db) {
    let (_dir, store) = folder_with(&["v/1.jpg", "v/2.jpg"]);
    let r = open(&db, &POLICY.replace("max_age = \"365d\"", "max_age = \"90d\"")).await;
    let day = 86_400_000;
    let now = obscura::retention::now_ms();
    let mut old = upload("v1", "vera", &store, "v/1.jpg", "photo");
    old.uploaded_at = Some(now - 100 * day);
    let mut recent = upload("v2", "vera", &store, "v/2.jpg", "photo");
    recent.uploaded_at = Some(now - 89 * day - 23 * 3_600_000); // due in 1 h: not yet
    r.register_many(&[old, recent]).await.unwrap();
    let plan = r.plan(Duration::ZERO, 10).await.unwrap();
    assert_eq!(plan.purge, 1, "{plan:?}");
    let status = r.status().await.unwrap();
    assert_eq!((status.overdue, status.expiries_unqueued, status.jobs_due, status.jobs_pending), (1, 1, 1, 0), "{status:?}");
    let due = status.oldest_due_at.unwrap();
    assert!((due - (now - 10 * day)).abs() < 60_000, "oldest due ~10 days ago: {due}");
    // Once the scheduler has run, it is neither due nor overdue.
    r.tick(&RunOptions::default()).await.unwrap();
    let status = r.status().await.unwrap();
    assert_eq!((status.overdue, status.expiries_unqueued, status.jobs_due), (0, 0, 0), "{status:?}");
}

/// Issue 25, case 1: uploads registered under a class that a later policy removes. Before
/// the fix, erasure queued nothing ("no active uploads"), exited 0 and left the photos;
/// status ignored them. Now every event reaches them by the strictest rule (purge at once)
/// and status names the class until none is left.
async fn a_class_the_policy_no_longer_names_is_still_reached_and_reported(db: Db) {
    let (dir, store) = folder_with(&["g/1.jpg", "g/2.jpg", "h/1.jpg", "i/1.jpg", "j/1.jpg"]);
    let legacy = "\n[classes.legacy]\non_expiry = \"anonymise\"\non_unsubscribe = \"anonymise\"\ngrace = \"30d\"\nlegal_hold = true\n";
    let r = open(&db, &format!("{POLICY}{legacy}")).await;
    r.register_many(&[
        upload("g1", "gil", &store, "g/1.jpg", "photo"),
        upload("g2", "gil", &store, "g/2.jpg", "legacy"),
        upload("h1", "hal", &store, "h/1.jpg", "legacy"),
        upload("i1", "ida", &store, "i/1.jpg", "legacy"),
        upload("j1", "jon", &store, "j/1.jpg", "photo"),
    ])
    .await
    .unwrap();
    drop(r);
    // The policy is edited: `legacy` is gone (removed or renamed).
    let r = open(&db, POLICY).await;
    let status = r.status().await.unwrap();
    assert_eq!(status.unaccounted, vec![obscura::retention::Unaccounted { class: "legacy".into(), uploads: 3 }], "{status:?}");

    let erased = r.erase_subject("gil").await.unwrap();
    assert_eq!((erased.queued, erased.done, erased.pending, erased.held), (2, 2, 0, 0), "{erased:?}");
    assert!(!dir.path().join("g/1.jpg").exists() && !dir.path().join("g/2.jpg").exists(), "gil's photos survived the erasure");
    let log = r.audit(Some("gil"), None, 0, 100).await.unwrap();
    let queued = log.iter().find(|a| a.event == "erase_subject").unwrap();
    assert!(queued.detail.contains("1 legacy → purge (class not in the policy: strictest rule)"), "{queued:?}");

    // Unsubscribe: no grace, no hold, no anonymising (the policy states none of them now).
    let unsubscribed = r.unsubscribe("hal").await.unwrap();
    assert_eq!((unsubscribed.queued, unsubscribed.done, unsubscribed.pending, unsubscribed.held), (1, 1, 0, 0), "{unsubscribed:?}");
    assert!(!dir.path().join("h/1.jpg").exists());
    assert_eq!(r.status().await.unwrap().unaccounted[0].uploads, 1);

    // Wind-down reaches it too, and the scheduler finishes it.
    let wound = r.wind_down(None).await.unwrap();
    assert_eq!(wound.queued, 2, "ida's legacy upload and jon's photo: {wound:?}");
    assert_eq!(r.tick(&RunOptions::default()).await.unwrap().purged, 2);
    assert_eq!(count_files(dir.path()), 0);
    let status = r.status().await.unwrap();
    assert_eq!((status.uploads_active, status.unaccounted.len()), (0, 0), "{status:?}");
    assert_audit_clean(&r, &["gil", "hal", "ida", "jon"]).await;
}

/// The review's case: an upload unsubscribed while its class had a legal hold (its job
/// held), then the class removed from the policy. The hold outlived the class: erase,
/// wind-down and the scheduler all left the photo. A hold comes from the policy; with the
/// class gone it ends, by the strictest rule, wherever the job is picked up again.
async fn a_legal_hold_ends_with_the_class_that_set_it(db: Db) {
    let (dir, store) = folder_with(&["p/1.jpg", "q/1.jpg"]);
    let r = open(&db, POLICY).await;
    r.register_many(&[upload("p1", "pia", &store, "p/1.jpg", "evidence"), upload("q1", "quinn", &store, "q/1.jpg", "evidence")]).await.unwrap();
    for subject in ["pia", "quinn"] {
        let held = r.unsubscribe(subject).await.unwrap();
        assert_eq!((held.queued, held.held), (1, 1), "{held:?}");
    }
    drop(r);
    let without = POLICY.replace("[classes.evidence]\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\nlegal_hold = true\n", "");
    assert!(!without.contains("evidence"));
    let r = open(&db, &without).await;
    // An erasure releases it and purges at once.
    let erased = r.erase_subject("pia").await.unwrap();
    assert_eq!((erased.done, erased.held), (1, 0), "{erased:?}");
    assert!(!dir.path().join("p/1.jpg").exists());
    // The scheduler releases the other one when it starts.
    let run = r.run(&RunOptions { until_idle: true, ..RunOptions::default() }, std::future::pending()).await.unwrap();
    assert_eq!(run.purged, 1, "{run:?}");
    assert_eq!(count_files(dir.path()), 0);
    let status = r.status().await.unwrap();
    assert_eq!((status.jobs_held, status.uploads_active, status.unaccounted.len()), (0, 0, 0), "{status:?}");
}

/// The same through the command line: `status` names the class and exits 1; `erase`
/// removes the photo (it printed "0 upload(s) queued" and exited 0 before).
async fn the_cli_erases_uploads_of_a_class_the_policy_no_longer_names(db: Db) {
    let dir = db.dir.path();
    let store = dir.join("store");
    std::fs::create_dir_all(store.join("k")).unwrap();
    std::fs::write(store.join("k/1.jpg"), b"kim's photo").unwrap();
    let old = dir.join("old.toml");
    std::fs::write(&old, format!("{POLICY}\n[classes.legacy]\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\n")).unwrap();
    let new = dir.join("new.toml");
    std::fs::write(&new, POLICY).unwrap();
    let register = retention_cmd(&db.url, &old, dir)
        .args(["register", "--id", "k1", "--subject", "kim", "--key", "k/1.jpg", "--class", "legacy", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(register.status.success(), "{}", String::from_utf8_lossy(&register.stderr));

    let status = retention_cmd(&db.url, &new, dir).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1), "{text}");
    assert!(text.contains("UNACCOUNTED: 1 active upload(s) of class \"legacy\""), "{text}");

    let erase = retention_cmd(&db.url, &new, dir).args(["erase", "--subject", "kim"]).output().unwrap();
    let text = String::from_utf8_lossy(&erase.stdout);
    assert!(erase.status.success(), "{text}{}", String::from_utf8_lossy(&erase.stderr));
    assert!(text.contains("1 upload(s) queued"), "{text}");
    assert!(!store.join("k/1.jpg").exists(), "the erasure left the photo: {text}");
    let status = retention_cmd(&db.url, &new, dir).arg("status").output().unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stdout));
}

/// The review's case: ids were compared byte for byte, so after "José" (NFC) was erased,
/// "José" (NFD, as a Mac types it) registered again, and so did "alice " after "alice".
/// Ids are now compared trimmed and in NFC, through the library and the command line.
async fn a_subject_id_is_one_person_however_it_is_spelled(db: Db) {
    let (dir, store) = folder_with(&["j/1.jpg", "j/2.jpg", "a/1.jpg"]);
    let (nfc, nfd) = ("Jos\u{e9}", "Jose\u{301}");
    let r = open(&db, POLICY).await;
    r.register_many(&[upload("j1", nfc, &store, "j/1.jpg", "photo"), upload("j2", nfd, &store, "j/2.jpg", "photo"), upload("a1", "alice", &store, "a/1.jpg", "photo")]).await.unwrap();
    assert_eq!(r.subject_state(&format!(" {nfd}\n")).await.unwrap().as_deref(), Some("subscribed"));
    let erased = r.erase_subject(nfd).await.unwrap();
    assert_eq!((erased.queued, erased.done), (2, 2), "both spellings are one person: {erased:?}");
    assert!(!dir.path().join("j/1.jpg").exists() && !dir.path().join("j/2.jpg").exists());
    for again in [nfc, nfd, " Jos\u{e9} "] {
        let result = r.register(&upload("j3", again, &store, "j/3.jpg", "photo")).await;
        assert!(matches!(result, Err(RetentionError::Erased)), "{again:?}: {result:?}");
    }
    // The command line normalises the same way (it calls the library).
    let policy = db.dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let secret_dir = TempDir::new().unwrap();
    std::fs::write(secret_dir.path().join("secret"), b"test secret, 32 bytes at least..").unwrap();
    let out = retention_cmd(&db.url, &policy, secret_dir.path()).args(["erase", "--subject", "alice\t"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 upload(s) queued: 1 done now"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!dir.path().join("a/1.jpg").exists());
    let result = r.register(&upload("a2", "alice ", &store, "a/2.jpg", "photo")).await;
    assert!(matches!(result, Err(RetentionError::Erased)), "{result:?}");
    // The review's cases: an upload id naming the person in another normal form was
    // accepted (and stayed in the audit log after erasure), and a key naming them in
    // another form was not moved to a random key when anonymised.
    let (renee_nfc, renee_nfd) = ("Ren\u{e9}e", "Rene\u{301}e");
    let result = r.register(&upload(&format!("x-{renee_nfd}-y"), renee_nfc, &store, "r/1.jpg", "photo")).await;
    assert!(matches!(result, Err(RetentionError::InvalidUpload { .. })), "{result:?}");
    r.register(&upload("r2", renee_nfc, &store, &format!("{renee_nfd}/2.jpg"), "photo")).await.unwrap();
    assert!(r.upload("r2").await.unwrap().unwrap().key_names_subject, "an NFD key names an NFC subject");
}

/// A store beside a folder outside it, with a key that is a link to a file outside and
/// a folder that is a link to a folder outside: (store dir, store location, outside dir).
fn store_with_links() -> (TempDir, String, PathBuf) {
    let (dir, store) = folder_with(&["o/real.jpg"]);
    let outside = dir.path().parent().unwrap().join(format!("{}-outside", dir.path().file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.key"), b"THE DEPLOYMENT SECRET").unwrap();
    std::fs::write(outside.join("p.jpg"), b"THE PHOTO OUTSIDE").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.key"), dir.path().join("o/link.jpg")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("linked")).unwrap();
    (dir, store, outside)
}

/// Issue 25, case 3: a folder-store key that is a link, or under a linked folder, was read
/// through (the export returned a file from outside the store), and purge deleted the
/// link alone while reporting the upload purged. Now every store operation refuses links:
/// the export fails, the purge stays pending and reported, and nothing outside is touched.
async fn symbolic_links_in_a_folder_store_are_refused_not_followed(db: Db) {
    let (dir, store, outside) = store_with_links();
    let r = open(&db, POLICY).await;
    // An upload whose own file is fine but whose thumbnail is a link: refused whole,
    // before any of its files is deleted.
    std::fs::write(dir.path().join("o/kept.jpg"), b"jpeg").unwrap();
    std::os::unix::fs::symlink(outside.join("p.jpg"), dir.path().join("o/kept.thumb.jpg")).unwrap();
    let mut o4 = upload("o4", "oda", &store, "o/kept.jpg", "photo");
    o4.derived = vec!["o/kept.thumb.jpg".into()];
    r.register_many(&[upload("o1", "oda", &store, "o/link.jpg", "photo"), upload("o2", "oda", &store, "linked/p.jpg", "photo"), upload("o3", "oda", &store, "o/real.jpg", "photo"), o4])
        .await
        .unwrap();
    let out_dir = TempDir::new().unwrap();
    let out = Store::open(&out_dir.path().display().to_string(), &StoreOptions::default()).unwrap();
    let err = r.export("oda", &out).await.unwrap_err();
    assert!(err.to_string().contains("is a symbolic link"), "{err}");
    assert_eq!(files_containing(out_dir.path(), b"THE DEPLOYMENT SECRET"), Vec::<PathBuf>::new());
    assert_eq!(files_containing(out_dir.path(), b"THE PHOTO OUTSIDE"), Vec::<PathBuf>::new());

    let summary = r.erase_subject("oda").await.unwrap();
    assert_eq!((summary.queued, summary.done, summary.pending), (4, 1, 3), "{summary:?}");
    assert!(summary.errors.iter().all(|e| e.contains("symbolic link")), "{:?}", summary.errors);
    assert!(!dir.path().join("o/real.jpg").exists());
    assert!(dir.path().join("o/kept.jpg").exists(), "o4's photo stays until its whole purge can be done");
    // Nothing outside deleted, and the links stay too: deleting a link alone while the
    // photo it names stays would be reported as a purge that did not happen.
    assert!(outside.join("secret.key").exists() && outside.join("p.jpg").exists());
    assert!(dir.path().join("o/link.jpg").symlink_metadata().is_ok() && dir.path().join("linked").symlink_metadata().is_ok());
    let status = r.status().await.unwrap();
    assert_eq!((status.uploads_active, status.jobs_pending, status.failing.len()), (3, 3, 3), "{status:?}");
    assert!(status.failing.iter().all(|f| f.last_error.contains("symbolic link")), "{status:?}");
    std::fs::remove_dir_all(&outside).unwrap();
}

async fn wind_down_queues_everything_and_the_scheduler_finishes_it(db: Db) {
    let (dir, store) = folder_with(&["w/1.jpg", "w/2.jpg", "x/1.jpg", "x/held.jpg"]);
    let r = open(&db, POLICY).await;
    r.register_many(&[
        upload("w1", "wes", &store, "w/1.jpg", "photo"),
        upload("w2", "wes", &store, "w/2.jpg", "slow"),
        upload("x1", "xia", &store, "x/1.jpg", "photo"),
        upload("x2", "xia", &store, "x/held.jpg", "evidence"),
    ])
    .await
    .unwrap();
    let summary = r.wind_down(None).await.unwrap();
    assert_eq!((summary.queued, summary.pending, summary.held), (4, 3, 1), "{summary:?}");
    assert_eq!(r.wind_down(None).await.unwrap().queued, 4, "a second call merges into the same jobs");
    let run = r.tick(&RunOptions::default()).await.unwrap();
    assert_eq!(run.purged, 3, "{run:?}");
    assert_eq!(count_files(dir.path()), 1, "only the held upload may remain");
    assert!(dir.path().join("x/held.jpg").exists());
    let status = r.status().await.unwrap();
    assert_eq!((status.uploads_active, status.jobs_pending, status.jobs_held), (1, 0, 1));
    assert_audit_clean(&r, &["wes", "xia"]).await;
}

/// Registering uploads while the same person unsubscribes: every upload that got in is
/// erased by the unsubscribe, or the registration is refused — never an upload left behind.
async fn concurrent_registration_cannot_outlive_an_unsubscribe(db: Db) {
    let (_dir, store) = folder_with(&[]);
    let r = open(&db, POLICY).await;
    r.register(&upload("y0", "yan", &store, "y/0.jpg", "photo")).await.unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let registering = {
        let (r, store, accepted) = (r.clone(), store.clone(), accepted.clone());
        // Registers until refused (the unsubscribe has happened).
        tokio::spawn(async move {
            for i in 1..100_000 {
                match r.register(&upload(&format!("y{i}"), "yan", &store, &format!("y/{i}.jpg"), "photo")).await {
                    Ok(()) => accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    Err(e) => return Some(e),
                };
            }
            None
        })
    };
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    r.unsubscribe("yan").await.unwrap();
    let refusal = registering.await.unwrap().expect("registration never refused after the unsubscribe");
    assert!(matches!(refusal, RetentionError::Unsubscribed(_) | RetentionError::Erased), "{refusal}");
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let status = r.status().await.unwrap();
    assert_eq!(status.uploads_active, 0, "an upload registered around the unsubscribe survived it ({accepted} accepted): {status:?}");
}

/// Batches that share people, registered at the same time with their people in opposite
/// orders (each batch locks its people; out of order, two would deadlock on PostgreSQL):
/// every batch gets in, every upload is catalogued once under its own person.
async fn concurrent_batches_sharing_people_all_register(db: Db) {
    let (_dir, store) = folder_with(&[]);
    let r = open(&db, POLICY).await;
    let people: Vec<String> = (0..300).map(|p| format!("person-{p}")).collect();
    let batches = (0..8).map(|b| {
        let (r, store, people) = (r.clone(), store.clone(), people.clone());
        tokio::spawn(async move {
            let order: Vec<&String> = if b % 2 == 0 { people.iter().collect() } else { people.iter().rev().collect() };
            let uploads: Vec<_> = order.iter().enumerate().map(|(i, p)| upload(&format!("b{b}-{i}"), p, &store, &format!("{b}/{p}.jpg"), "photo")).collect();
            r.register_many(&uploads).await
        })
    });
    for (b, done) in futures::future::join_all(batches).await.into_iter().enumerate() {
        done.unwrap().unwrap_or_else(|e| panic!("batch {b}: {e}"));
    }
    assert_eq!(r.status().await.unwrap().uploads_active, 8 * 300);
    let kept = r.upload("b1-0").await.unwrap().expect("catalogued");
    assert_eq!(kept.key.as_deref(), Some("1/person-299.jpg"));
    assert_eq!(r.subject_state("person-299").await.unwrap().as_deref(), Some("subscribed"));
}

// ---- anonymisation (real models) -------------------------------------------------------

const ANONYMISE: &str = r#"
deadline = "1h"
[classes.photo]
max_age = "30d"
on_expiry = "anonymise"
on_unsubscribe = "anonymise"
"#;

fn face_photo() -> PathBuf {
    eval_image("wider_8_Election_Campain_Election_Campaign_8_69.jpg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_anonymises_in_the_strongest_setting_and_unlinks_the_person() {
    let db = Db::sqlite();
    let (dir, store) = folder_with(&["kim-3/thumb.jpg", "shared/plain.jpg"]);
    let original = std::fs::read(face_photo()).unwrap();
    std::fs::write(dir.path().join("kim-3/beach.jpg"), &original).unwrap();
    std::fs::write(dir.path().join("shared/plain.jpg"), &original).unwrap();
    std::fs::write(dir.path().join("kim-3/broken.jpg"), &original[..original.len() / 3]).unwrap();
    let r = open(&db, ANONYMISE).await;
    let year_ago = obscura::retention::now_ms() - 365 * 86_400_000;
    let mut beach = upload("k1", "kim-3", &store, "kim-3/beach.jpg", "photo");
    beach.uploaded_at = Some(year_ago);
    beach.derived = vec!["kim-3/thumb.jpg".into()];
    let mut plain = upload("k2", "kim-3", &store, "shared/plain.jpg", "photo");
    plain.uploaded_at = Some(year_ago);
    let mut broken = upload("k3", "kim-3", &store, "kim-3/broken.jpg", "photo");
    broken.uploaded_at = Some(year_ago);
    let mut fresh = upload("k4", "kim-3", &store, "kim-3/new.jpg", "photo");
    fresh.uploaded_at = Some(obscura::retention::now_ms());
    // A badge with the person's name and an ID card: the strongest setting fills text too.
    std::fs::write(dir.path().join("shared/badge.jpg"), std::fs::read(fixture("text-scene.jpg")).unwrap()).unwrap();
    let mut badge = upload("k5", "kim-3", &store, "shared/badge.jpg", "photo");
    badge.uploaded_at = Some(year_ago);
    r.register_many(&[beach, plain, broken, fresh, badge]).await.unwrap();

    let run = r.tick(&RunOptions::default()).await.unwrap();
    assert_eq!((run.expiries_queued, run.anonymised, run.purged_instead), (4, 3, 1), "{run:?}");
    let badge = image::load_from_memory(&std::fs::read(dir.path().join("shared/badge.jpg")).unwrap()).unwrap().to_rgb8();
    for (name, rect) in TEXT_BOXES {
        let centre = badge.get_pixel(rect.x + rect.w / 2, rect.y + rect.h / 2);
        assert!(centre.0.iter().all(|&c| c < 16), "{name}: centre {centre:?} not filled");
    }

    // The key named the person: moved to a random key; the original and thumbnail gone.
    let k1 = r.upload("k1").await.unwrap().unwrap();
    assert_eq!((k1.state, k1.subject_hash.as_deref()), (UploadState::Anonymised, None));
    let new_key = k1.key.clone().unwrap();
    assert!(new_key.starts_with("anonymised/") && !new_key.contains("kim"), "{new_key}");
    assert!(!dir.path().join("kim-3/beach.jpg").exists() && !dir.path().join("kim-3/thumb.jpg").exists());
    // A key without the subject id is rewritten in place.
    let k2 = r.upload("k2").await.unwrap().unwrap();
    assert_eq!((k2.state, k2.key.as_deref(), k2.subject_hash.as_deref()), (UploadState::Anonymised, Some("shared/plain.jpg"), None));
    // Faces filled solid: the annotated face's box is now (almost) one colour.
    for key in [new_key.as_str(), "shared/plain.jpg"] {
        let out = std::fs::read(dir.path().join(key)).unwrap();
        assert!(!out.windows(4).any(|w| w == b"Exif"), "{key} kept EXIF");
        let img = image::load_from_memory(&out).unwrap().to_rgb8();
        let face = first_face_box();
        let centre = img.get_pixel(face.0 + face.2 / 2, face.1 + face.3 / 2);
        assert!(centre.0.iter().all(|&c| c < 8), "{key}: face centre {centre:?} not filled");
    }
    // The corrupt image could not be anonymised: purged instead (fail closed), and logged.
    assert!(!dir.path().join("kim-3/broken.jpg").exists());
    let k3 = r.upload("k3").await.unwrap().unwrap();
    assert_eq!(k3.state, UploadState::Purged);
    let log = r.audit(None, Some("k3"), 0, 10).await.unwrap();
    assert_eq!(log.last().unwrap().outcome, "purged_instead");
    assert!(log.last().unwrap().detail.contains("anonymisation failed"), "{}", log.last().unwrap().detail);
    // The fresh upload is kept.
    assert_eq!(r.upload("k4").await.unwrap().unwrap().state, UploadState::Active);
    assert_audit_clean(&r, &["kim-3"]).await;
}

/// Expiry-anonymise through a link: it reported "anonymised 1" and rewrote the link
/// alone, leaving the photo it pointed to. Now the job fails and the photo is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_anonymise_refuses_a_key_that_is_a_symbolic_link() {
    let db = Db::sqlite();
    let (dir, store, outside) = store_with_links();
    std::fs::write(outside.join("p.jpg"), std::fs::read(face_photo()).unwrap()).unwrap();
    let before = std::fs::read(outside.join("p.jpg")).unwrap();
    let r = open(&db, ANONYMISE).await;
    let mut linked = upload("q1", "quy", &store, "linked/p.jpg", "photo");
    linked.uploaded_at = Some(obscura::retention::now_ms() - 365 * 86_400_000);
    r.register(&linked).await.unwrap();
    let run = r.tick(&RunOptions::default()).await.unwrap();
    assert_eq!((run.anonymised, run.purged, run.purged_instead, run.failed_attempts), (0, 0, 0, 1), "{run:?}");
    assert_eq!(std::fs::read(outside.join("p.jpg")).unwrap(), before, "the photo behind the link was rewritten");
    assert!(dir.path().join("linked").symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(r.upload("q1").await.unwrap().unwrap().state, UploadState::Active);
    std::fs::remove_dir_all(&outside).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_model_makes_anonymise_jobs_wait_not_purge() {
    let db = Db::sqlite();
    let (dir, store) = folder_with(&["n/1.jpg"]);
    let mut config = RetentionConfig::new(&db.url, Policy::parse(ANONYMISE).unwrap(), secret());
    config.anonymizer.detect.model = Some(dir.path().join("no-such-model.onnx"));
    let r = Retention::open(config).await.unwrap();
    r.register(&upload("n1", "nia", &store, "n/1.jpg", "photo")).await.unwrap();
    let summary = r.unsubscribe("nia").await.unwrap();
    assert_eq!((summary.done, summary.pending), (0, 1), "{summary:?}");
    assert!(summary.errors[0].contains("no-such-model.onnx"), "{}", summary.errors[0]);
    assert!(dir.path().join("n/1.jpg").exists(), "the upload was purged although only the model was missing");
    assert_eq!(r.upload("n1").await.unwrap().unwrap().state, UploadState::Active);
    // The scheduler refuses to start without it.
    let err = r.run(&RunOptions { until_idle: true, ..RunOptions::default() }, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, RetentionError::Anonymizer(_)), "{err}");
}

/// The first annotated face of the test photo (x, y, w, h).
fn first_face_box() -> (u32, u32, u32, u32) {
    let faces = std::fs::read_to_string(eval_dir().join("faces.csv")).unwrap();
    let line = faces.lines().find(|l| l.starts_with("wider_8_Election_Campain_Election_Campaign_8_69.jpg,")).unwrap();
    let f: Vec<f64> = line.split(',').skip(1).take(4).map(|v| v.parse().unwrap()).collect();
    (f[0] as u32, f[1] as u32, f[2] as u32, f[3] as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_copies_a_persons_uploads_with_a_manifest() {
    let db = Db::sqlite();
    let (_dir, store) = folder_with(&["l/1.jpg", "l/2.jpg", "m/1.jpg"]);
    let r = open(&db, POLICY).await;
    r.register_many(&[upload("l1", "lee", &store, "l/1.jpg", "photo"), upload("l2", "lee", &store, "l/2.jpg", "photo"), upload("m1", "max", &store, "m/1.jpg", "photo")]).await.unwrap();
    let out_dir = TempDir::new().unwrap();
    let out = Store::open(&out_dir.path().display().to_string(), &StoreOptions::default()).unwrap();
    let export = r.export("lee", &out).await.unwrap();
    assert_eq!(export.uploads.len(), 2);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["uploads"].as_array().unwrap().len(), 2);
    for u in &export.uploads {
        let bytes = std::fs::read(out_dir.path().join(&u.file)).unwrap();
        assert_eq!(bytes, format!("bytes of l/{}.jpg", &u.id[1..]).into_bytes());
    }
    assert!(matches!(r.export("nobody", &out).await, Err(RetentionError::UnknownSubject(_))));
    assert_eq!(r.audit(Some("lee"), None, 0, 10).await.unwrap()[0].event, "export");
    // The review's attack: a second person's export into the same folder would mix the
    // two people's files. It is refused, and the first export is left as it was.
    let before = count_files(out_dir.path());
    let mixed = r.export("max", &out).await;
    assert!(matches!(mixed, Err(RetentionError::ExportNotEmpty(_))), "{mixed:?}");
    assert_eq!(count_files(out_dir.path()), before);
    // Even a hidden file makes a folder non-empty.
    let other = TempDir::new().unwrap();
    std::fs::write(other.path().join(".keep"), b"").unwrap();
    let other_store = Store::open(&other.path().display().to_string(), &StoreOptions::default()).unwrap();
    assert!(matches!(r.export("max", &other_store).await, Err(RetentionError::ExportNotEmpty(_))));
}

#[test]
fn the_export_command_refuses_a_folder_holding_another_export() {
    let tmp = TempDir::new().unwrap();
    let (_dir, store) = folder_with(&["b/1.jpg", "a/1.jpg"]);
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let catalog = tmp.path().join("c.sqlite").display().to_string();
    for (id, subject, key) in [("b1", "bob", "b/1.jpg"), ("a1", "al", "a/1.jpg")] {
        let out = run(retention_cmd(&catalog, &policy, tmp.path()).args(["register", "--id", id, "--subject", subject, "--store", &store, "--key", key, "--class", "photo"]));
        assert!(out.status.success());
    }
    let e = tmp.path().join("E");
    assert!(run(retention_cmd(&catalog, &policy, tmp.path()).args(["export", "bob", "--out"]).arg(&e)).status.success());
    let out = run(retention_cmd(&catalog, &policy, tmp.path()).args(["export", "al", "--out"]).arg(&e));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(e.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["subject"], "bob", "the first export is untouched");
    assert_eq!(count_files(&e), 2, "bob's photo and manifest only");
}

/// The review's case: `retention export` followed a linked folder in the store and
/// copied what lay outside. It now fails naming the link, and leaves no partial export.
#[test]
fn the_export_command_refuses_a_linked_folder() {
    let tmp = TempDir::new().unwrap();
    let (_dir, store, outside) = store_with_links();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let catalog = tmp.path().join("c.sqlite").display().to_string();
    for (id, key) in [("r1", "o/real.jpg"), ("r2", "linked/p.jpg")] {
        let out = run(retention_cmd(&catalog, &policy, tmp.path()).args(["register", "--id", id, "--subject", "rae", "--store", &store, "--key", key, "--class", "photo"]));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let e = tmp.path().join("E");
    let out = run(retention_cmd(&catalog, &policy, tmp.path()).args(["export", "rae", "--out"]).arg(&e));
    assert_eq!(out.status.code(), Some(2), "an error, not a partial result");
    assert!(stderr(&out).contains("linked is a symbolic link"), "{}", stderr(&out));
    assert_eq!(count_files(&e), 0, "a failed export leaves nothing behind");
    std::fs::remove_dir_all(&outside).unwrap();
}

/// Data residency through the CLI. The policy puts one folder store in "eu" and another
/// in "us", and limits `photo` to "eu": registering a photo in the us store, or in a path
/// that climbs out of the eu one, is refused and catalogues nothing; exporting a person's
/// photos to the us store is refused and writes nothing, to another eu folder it works;
/// `batch --policy` refuses to copy the eu store into the us one; and an upload
/// registered before the limit is reported MISPLACED by `status` (exit 1).
#[test]
fn residency_refuses_registration_export_and_batch_outside_the_location_and_status_flags_misplaced_uploads() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (eu, us) = (root.join("eu"), root.join("us"));
    for d in [&eu, &us] {
        std::fs::create_dir_all(d.join("w")).unwrap();
        std::fs::write(d.join("w/1.jpg"), b"photo").unwrap();
    }
    let (eu_s, us_s) = (eu.display().to_string(), us.display().to_string());
    let open = format!("{POLICY}\n[stores]\n{eu_s:?} = \"eu\"\n{us_s:?} = \"us\"\n");
    let limited = open.replace("[classes.photo]\n", "[classes.photo]\nlocations = [\"eu\"]\n");
    let (open_p, limited_p) = (root.join("open.toml"), root.join("limited.toml"));
    std::fs::write(&open_p, &open).unwrap();
    std::fs::write(&limited_p, &limited).unwrap();
    let catalog = root.join("c.sqlite").display().to_string();
    let register = |policy: &Path, id: &str, store: &str| run(retention_cmd(&catalog, policy, &root).args(["register", "--id", id, "--subject", "wim", "--store", store, "--key", "w/1.jpg", "--class", "photo"]));
    // Before the limit: a photo in the us store is taken.
    assert!(register(&open_p, "w0", &us_s).status.success());
    let status = run(retention_cmd(&catalog, &open_p, &root).arg("status"));
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stdout));
    // With it: refused, naming where the store is and where photos may be.
    assert!(register(&limited_p, "w1", &eu_s).status.success());
    for (id, store) in [("w2", us_s.clone()), ("w3", format!("{eu_s}/../us"))] {
        let out = register(&limited_p, id, &store);
        assert_eq!(out.status.code(), Some(2), "{store}: {}", stderr(&out));
        assert!(stderr(&out).contains("may only be stored in \"eu\""), "{store}: {}", stderr(&out));
    }
    let status = run(retention_cmd(&catalog, &limited_p, &root).args(["status", "--json"]));
    assert_eq!(status.status.code(), Some(1), "a misplaced upload makes status fail");
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["uploads_active"], 2, "the refused ones are not catalogued: {json}");
    assert_eq!(json["misplaced"][0]["store"], us_s.as_str(), "{json}");
    assert_eq!(json["misplaced"][0]["uploads"], 1, "{json}");
    let text = run(retention_cmd(&catalog, &limited_p, &root).arg("status"));
    assert!(String::from_utf8_lossy(&text.stdout).contains("MISPLACED: 1 active upload(s) of class \"photo\""), "{}", String::from_utf8_lossy(&text.stdout));
    // Export: not into the us store; into a new eu folder, yes.
    let out = run(retention_cmd(&catalog, &limited_p, &root).args(["export", "wim", "--out"]).arg(us.join("export")));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not exported"), "{}", stderr(&out));
    assert!(!us.join("export").exists() || count_files(&us.join("export")) == 0, "nothing written");
    // (w0 lies in the us store: an export anywhere in "eu" still copies it out of "us" into
    // "eu", which residency allows: the limit says where data may be, not where from.)
    let out = run(retention_cmd(&catalog, &limited_p, &root).args(["export", "wim", "--out"]).arg(eu.join("export")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count_files(&eu.join("export")), 3, "two photos and the manifest");
    // Batch: the eu store may not be copied into the us one.
    let out = run(obscura().args(["batch", "--policy"]).arg(&limited_p).arg(&eu).arg(us.join("copy")));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("may not leave \"eu\""), "{}", stderr(&out));
    assert!(!us.join("copy").exists(), "nothing written");
}

/// `register --uploaded-at`: a date in the far future (it would never expire) or before
/// 1970 (it became 0, silently) is refused with the reason.
#[test]
fn the_register_command_refuses_upload_times_that_would_never_expire() {
    let tmp = TempDir::new().unwrap();
    let (_dir, store) = folder_with(&["v/1.jpg"]);
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let catalog = tmp.path().join("c.sqlite").display().to_string();
    for (at, why) in [("2099-01-01T00:00:00Z", "ahead of this machine's clock"), ("1969-07-20T20:17:00Z", "out of range"), ("9223372036854775807", "ahead")] {
        let out = run(retention_cmd(&catalog, &policy, tmp.path()).args(["register", "--id", "v1", "--subject", "vic", "--store", &store, "--key", "v/1.jpg", "--class", "photo", "--uploaded-at", at]));
        assert_eq!(out.status.code(), Some(2), "{at}");
        assert!(stderr(&out).contains(why), "{at}: {}", stderr(&out));
    }
    let out = run(retention_cmd(&catalog, &policy, tmp.path()).args(["register", "--id", "v1", "--subject", "vic", "--store", &store, "--key", "v/1.jpg", "--class", "photo", "--uploaded-at", "2024-01-31T12:00:00Z"]));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Putting back an older copy of the catalog (a backup, a snapshot) rolls the log back
/// to a shorter, consistent chain; the witness catches it.
async fn audit_verify_detects_a_catalog_rolled_back_to_an_older_copy(db: Db) {
    let (_dir, store) = folder_with(&["w/1.jpg", "w/2.jpg"]);
    let r = open(&db, POLICY).await;
    r.register(&upload("w1", "wes", &store, "w/1.jpg", "photo")).await.unwrap();
    r.erase_upload("w1").await.unwrap();
    let backup = if db.url.starts_with("postgres") {
        // A copy made from the database as a template (which needs it idle).
        drop(r);
        let (server, name) = db.url.rsplit_once('/').unwrap();
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await.unwrap();
        // A closed connection's backend may still be exiting on the server; wait for it
        // (CI once saw "being accessed by other users" right after the close).
        let mut tries = 0;
        while let Err(e) = sqlx::query(&format!("CREATE DATABASE {name}_backup TEMPLATE {name}")).execute(&mut admin).await {
            tries += 1;
            assert!(tries < 100 && e.to_string().contains("being accessed by other users"), "{e}");
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                .bind(name).execute(&mut admin).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        format!("{server}/{name}_backup")
    } else {
        let path = db.dir.path().join("backup.sqlite");
        sqlx::query(&format!("VACUUM INTO '{}'", path.display())).execute(&owner(&db.url).await).await.unwrap();
        path.display().to_string()
    };
    let r = open(&db, POLICY).await;
    r.register(&upload("w2", "wes", &store, "w/2.jpg", "photo")).await.unwrap();
    r.unsubscribe("wes").await.unwrap();
    assert!(r.verify_audit().await.unwrap().intact());
    // The restored copy is intact on its own, but older than what the witness saw.
    let restored = open_at(&backup, &db, POLICY).await;
    let verdict = restored.verify_audit().await.unwrap();
    assert!(!verdict.intact(), "a rolled-back catalog passed: {verdict:?}");
    assert!(verdict.problem.as_deref().unwrap().contains("rolled back"), "{verdict:?}");
}

// ---- crash safety and several instances -------------------------------------------------

/// `n` expired uploads (with a thumbnail each) of class `photo` (purged on expiry) and
/// `n_anon` expired photos of class `keep` (anonymised on expiry), due in between, all
/// registered through the CLI's CSV.
fn crash_fixture(n: usize, n_anon: usize, dir: &Path) -> (String, PathBuf, PathBuf) {
    let store = dir.join("store");
    let mut csv = String::from("id,subject,store,key,class,uploaded_at,derived\n");
    for i in 0..n {
        let key = format!("s{:03}/{i}.jpg", i % 300);
        let thumb = format!("s{:03}/{i}.thumb.jpg", i % 300);
        for k in [&key, &thumb] {
            let p = store.join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        csv.push_str(&format!("u{i},s{:03},{},{key},photo,{},{thumb}\n", i % 300, store.display(), 1000 + i));
    }
    if n_anon > 0 {
        let photo = image::open(face_photo()).unwrap().resize(480, 480, image::imageops::FilterType::Triangle);
        let mut bytes = std::io::Cursor::new(Vec::new());
        photo.to_rgb8().write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
        for i in 0..n_anon {
            let key = format!("s{:03}/face{i}.jpg", i % 300);
            std::fs::write(store.join(&key), bytes.get_ref()).unwrap();
            // Due among the purges, around where the scheduler gets killed.
            csv.push_str(&format!("f{i},s{:03},{},{key},keep,{},\n", i % 300, store.display(), 1000 + n / 3 + i * 20));
        }
    }
    let csv_path = dir.join("uploads.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let policy = dir.join("policy.toml");
    let mut text = String::from("deadline = \"1h\"\n[classes.photo]\nmax_age = \"1d\"\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\n");
    if n_anon > 0 {
        text.push_str("[classes.keep]\nmax_age = \"1d\"\non_expiry = \"anonymise\"\non_unsubscribe = \"purge\"\n");
    }
    std::fs::write(&policy, text).unwrap();
    (store.display().to_string(), csv_path, policy)
}

/// [`crash_fixture`] registered through the CLI in a SQLite catalog in `dir`: the store,
/// the catalog and the policy.
fn registered_on_sqlite(n: usize, n_anon: usize, dir: &Path) -> (String, String, PathBuf) {
    let (store, csv, policy) = crash_fixture(n, n_anon, dir);
    let catalog = dir.join("catalog.sqlite").display().to_string();
    let out = run(retention_cmd(&catalog, &policy, dir).args(["register", "--csv"]).arg(&csv));
    assert!(out.status.success(), "{}", stderr(&out));
    (store, catalog, policy)
}

fn retention_cmd(catalog: &str, policy: &Path, dir: &Path) -> std::process::Command {
    let mut cmd = obscura();
    cmd.args(["retention", "--catalog", catalog, "--policy"]).arg(policy).arg("--secret-file").arg(dir.join("secret"));
    cmd
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()).unwrap_or(0)
}

/// Every `photo` upload purged and every `keep` upload anonymised, each exactly once (one
/// audit record), with an intact log.
async fn check_every_job_done_once(catalog: &str, policy: &Path, secret_dir: &Path, n: usize, n_anon: usize) {
    let mut config = RetentionConfig::new(catalog, Policy::load(policy).unwrap(), Secret::load(&secret_dir.join("secret")).unwrap());
    config.store_options = StoreOptions::default();
    let r = Retention::open(config).await.unwrap();
    let status = r.status().await.unwrap();
    assert_eq!((status.uploads_active, status.uploads_purged, status.uploads_anonymised, status.jobs_pending), (0, n as u64, n_anon as u64, 0), "{status:?}");
    let records = r.audit(None, None, 0, 10 * n as i64).await.unwrap();
    for i in 0..n_anon {
        let u = r.upload(&format!("f{i}")).await.unwrap().unwrap();
        assert_eq!((u.state, u.subject_hash.as_deref()), (UploadState::Anonymised, None));
        assert!(u.key.as_deref().unwrap().starts_with("anonymised/"), "{u:?}");
        let done: Vec<_> = records.iter().filter(|a| a.upload_id.as_deref() == Some(u.id.as_str()) && a.outcome != "failed").collect();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].outcome, "anonymised");
    }
    let mut per_upload = std::collections::HashMap::<String, usize>::new();
    for rec in records.iter().filter(|a| a.event == "purge" && a.outcome == "purged") {
        *per_upload.entry(rec.upload_id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per_upload.len(), n, "uploads with a purge record");
    assert!(per_upload.values().all(|&c| c == 1), "an upload was purged (recorded) twice");
    assert!(r.verify_audit().await.unwrap().intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_killed_mid_purge_finishes_every_job_once_after_restart() {
    let dir = TempDir::new().unwrap();
    let (n, n_anon) = (3000, 12);
    let (store, catalog, policy) = registered_on_sqlite(n, n_anon, dir.path());
    let total = 2 * n + n_anon;
    assert_eq!(count_files(Path::new(&store)), total);

    let mut child = retention_cmd(&catalog, &policy, dir.path()).args(["run", "--concurrency", "4"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    loop {
        let left = count_files(Path::new(&store));
        if left < total * 2 / 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the scheduler made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = count_files(Path::new(&store));
    assert!(left > 0, "finished before the kill; the test needs more objects");

    // A second scheduler while none runs takes over the dead one's claims at once.
    let out = run(retention_cmd(&catalog, &policy, dir.path()).args(["run", "--until-idle"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // Only the anonymised copies are left, each under a random key.
    assert_eq!(count_files(Path::new(&store)), n_anon, "objects left after the restart");
    assert_eq!(count_files(&Path::new(&store).join("anonymised")), n_anon);
    check_every_job_done_once(&catalog, &policy, dir.path(), n, n_anon).await;
}

/// SQLite writes a statement journal (the old contents of every row a statement changes,
/// so the statement alone can be undone) for each multi-row statement of a drain, in a
/// temporary file unless the catalog keeps it in memory, as it does: a scheduler purging
/// thousands of uploads, given a temporary folder of its own, never opens a file there.
/// Watched from outside through `/proc/PID/fd`: SQLite unlinks its temporary files as it
/// opens them, so they never show in the folder's listing.
#[test]
fn a_drain_on_sqlite_writes_no_temporary_file_of_old_rows() {
    let dir = TempDir::new().unwrap();
    let n = 3000;
    let (store, catalog, policy) = registered_on_sqlite(n, 0, dir.path());
    let temp = dir.path().join("sqlite-temp");
    std::fs::create_dir(&temp).unwrap();
    let mut child = retention_cmd(&catalog, &policy, dir.path()).args(["run", "--until-idle"]).env("SQLITE_TMPDIR", &temp).env("TMPDIR", &temp).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let fds = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let (mut looks, mut opened) = (0, Vec::new());
    while child.try_wait().unwrap().is_none() {
        for link in std::fs::read_dir(&fds).into_iter().flatten().flatten().filter_map(|e| std::fs::read_link(e.path()).ok()) {
            if link.starts_with(&temp) {
                opened.push(link);
            }
        }
        looks += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count_files(Path::new(&store)), 0, "every object purged");
    assert!(looks > 20, "the drain ended before it could be watched ({looks} looks)");
    assert!(opened.is_empty(), "the scheduler opened temporary files: {opened:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_scheduler_cleanly_between_batches() {
    let dir = TempDir::new().unwrap();
    let n = 3000;
    let (store, catalog, policy) = registered_on_sqlite(n, 0, dir.path());
    let child = retention_cmd(&catalog, &policy, dir.path()).args(["run", "--concurrency", "2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while count_files(Path::new(&store)) > 2 * n - 200 {
        assert!(started.elapsed() < Duration::from_secs(120), "the scheduler made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let left = count_files(Path::new(&store));
    assert!(left > 0, "finished before SIGTERM; the test needs more objects");
    // Stopped between batches: nothing leased, and what is done is recorded.
    let r = Retention::open(RetentionConfig::new(&catalog, Policy::load(&policy).unwrap(), Secret::load(&dir.path().join("secret")).unwrap())).await.unwrap();
    let leased: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE lease_owner IS NOT NULL").fetch_one(&owner(&catalog).await).await.unwrap();
    assert_eq!(leased, 0);
    let status = r.status().await.unwrap();
    assert_eq!(2 * status.uploads_active as usize, left, "catalog and store disagree: {status:?}");
    assert!(r.verify_audit().await.unwrap().intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_scheduler_runs_on_a_sqlite_catalog() {
    let dir = TempDir::new().unwrap();
    let (_store, _csv, policy) = crash_fixture(1, 0, dir.path());
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let mut first = retention_cmd(&catalog, &policy, dir.path()).args(["run", "--interval", "1s"]).stderr(Stdio::null()).spawn().unwrap();
    // The lock file appears the moment the first scheduler takes the lock.
    let started = Instant::now();
    while !Path::new(&format!("{catalog}.scheduler-lock")).exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the first scheduler did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let second = run(retention_cmd(&catalog, &policy, dir.path()).args(["run", "--until-idle"]));
    // The review's case: the same catalog through a link to its file took a lock of its
    // own, and a second scheduler ran.
    let alias = dir.path().join("alias.sqlite");
    std::os::unix::fs::symlink(&catalog, &alias).unwrap();
    let third = run(retention_cmd(&alias.display().to_string(), &policy, dir.path()).args(["run", "--until-idle"]));
    first.kill().unwrap();
    first.wait().unwrap();
    for other in [second, third] {
        assert_eq!(other.status.code(), Some(2));
        assert!(stderr(&other).contains("another scheduler holds"), "{}", stderr(&other));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_on_postgres_never_run_a_job_twice() {
    let Some(db) = Db::postgres().await else { return };
    let dir = TempDir::new().unwrap();
    let n = 2000;
    let (store, csv, policy) = crash_fixture(n, 0, dir.path());
    let out = run(retention_cmd(&db.url, &policy, dir.path()).args(["register", "--csv"]).arg(&csv));
    assert!(out.status.success(), "{}", stderr(&out));
    let spawn = || retention_cmd(&db.url, &policy, dir.path()).args(["run", "--until-idle", "--concurrency", "4"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{}\n{}", stderr(&a), stderr(&b));
    let purged = |o: &std::process::Output| -> u64 {
        let s = String::from_utf8_lossy(&o.stdout);
        s.split("purged ").nth(1).and_then(|t| t.split(',').next()).and_then(|t| t.trim().parse().ok()).unwrap()
    };
    assert_eq!(purged(&a) + purged(&b), n as u64, "the two instances' counts must add up exactly");
    eprintln!("instance A purged {}, instance B {}", purged(&a), purged(&b));
    assert_eq!(count_files(Path::new(&store)), 0);
    check_every_job_done_once(&db.url, &policy, dir.path(), n, 0).await;
}

#[test]
fn malformed_policy_is_refused_naming_the_line() {
    let dir = TempDir::new().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "deadline = \"1h\"\n[classes.photo]\non_expiry = \"purge\"\non_unsubscribe = \"shred\"\n").unwrap();
    let out = run(retention_cmd(&dir.path().join("c.sqlite").display().to_string(), &policy, dir.path()).arg("status"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("line 4") && err.contains("p.toml"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A witness that cannot be created (here: its folder is a file) stops `retention` from
/// starting rather than running without the truncation check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_that_cannot_be_written_is_refused_at_start() {
    let db = Db::sqlite();
    let blocker = db.dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"").unwrap();
    let mut config = RetentionConfig::new(&db.url, Policy::parse(POLICY).unwrap(), secret());
    config.audit_witness = Some(blocker.join("audit.witness"));
    let opened = Retention::open(config).await;
    assert!(matches!(opened, Err(RetentionError::Witness(_))), "{opened:?}");
}
