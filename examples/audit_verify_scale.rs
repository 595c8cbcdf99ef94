//! `audit --verify` on a long log (`scripts/bench-audit-verify` runs this in release
//! mode): a fresh catalog gets `--records` purge records, chained exactly as the catalog
//! chains them (`Secret::chain` over each record's fields, the head row and the witness
//! advanced to the last one) but written straight into the `audit` table in large
//! transactions, since appending ten million records one scheduler batch at a time would
//! take hours. The log's secondary indexes are dropped for the load and built again
//! after it (as any bulk load does; timed apart as `index_s`), so the catalog verified
//! is the one the scheduler would have left. Then `Retention::verify_audit` is timed on
//! the whole log, and once more
//! after a database owner has edited one record near the end (it must be caught there).
//! Prints one JSON line.

use std::time::Instant;

use obscura::retention::{AuditFields, Policy, Retention, RetentionConfig, Secret, Witness};

const POLICY: &str = "deadline = \"1h\"\n[classes.photo]\nmax_age = \"1d\"\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\n";

#[tokio::main]
async fn main() {
    let mut it = std::env::args().skip(1);
    let (mut catalog, mut records, mut witness) = (String::new(), 10_000_000i64, String::new());
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--catalog" => catalog = value,
            "--records" => records = value.parse().unwrap(),
            "--witness" => witness = value,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!catalog.is_empty() && !witness.is_empty(), "usage: --catalog URL --witness FILE [--records N]");
    let secret = Secret::from_bytes(vec![7; 32]).unwrap();
    let config = |witnessed: bool| {
        let mut c = RetentionConfig::new(&catalog, Policy::parse(POLICY).unwrap(), secret.clone());
        c.audit_witness = witnessed.then(|| witness.clone().into());
        c
    };
    // The schema, made by the catalog itself.
    drop(Retention::open(config(false)).await.unwrap());

    sqlx::any::install_default_drivers();
    let url = if catalog.starts_with("postgres") { catalog.clone() } else { format!("sqlite://{catalog}") };
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let postgres = catalog.starts_with("postgres");
    // The audit table's own indexes, as the migrations made them, besides its key.
    let indexes_sql = if postgres {
        "SELECT indexname::text AS name, indexdef AS def FROM pg_indexes WHERE tablename = 'audit' AND indexname <> 'audit_pkey'"
    } else {
        "SELECT name, sql AS def FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit' AND sql IS NOT NULL"
    };
    let indexes: Vec<(String, String)> = sqlx::query_as(indexes_sql).fetch_all(&pool).await.unwrap();
    assert!(!indexes.is_empty(), "the audit table has secondary indexes to rebuild");
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {name}")).execute(&pool).await.unwrap();
    }
    let t = Instant::now();
    let (mut prev, at) = (String::new(), obscura::retention::now_ms());
    let detail = "1 object(s) deleted and verified gone";
    const PER_STATEMENT: i64 = 500;
    const PER_TRANSACTION: i64 = 100_000;
    let mut seq = 1;
    while seq <= records {
        let mut tx = pool.begin().await.unwrap();
        let end = (seq + PER_TRANSACTION).min(records + 1);
        while seq < end {
            let n = PER_STATEMENT.min(end - seq);
            // Numbered on PostgreSQL; plain `?` on SQLite, where sqlx looks each numbered
            // parameter up by name, a linear search (quadratic in a 5,000-value statement).
            let param = |i: i64| if postgres { format!("${i}") } else { "?".to_string() };
            let values: Vec<String> = (0..n).map(|r| format!("({})", (1..=10).map(|c| param(r * 10 + c)).collect::<Vec<_>>().join(", "))).collect();
            let sql = format!("INSERT INTO audit (seq, at, event, subject_hash, upload_id, rule, outcome, detail, prev, mac) VALUES {}", values.join(", "));
            let mut query = sqlx::query(&sql);
            for s in seq..seq + n {
                let (subject, upload) = (format!("{:064x}", s % 100_003), format!("u{s}"));
                let fields = AuditFields { seq: s, at, event: "purge", subject_hash: Some(&subject), upload_id: Some(&upload), rule: Some("unsubscribe"), outcome: "purged", detail };
                let mac = secret.chain(&prev, &fields);
                query = query.bind(s).bind(at).bind("purge").bind(subject).bind(upload).bind("unsubscribe").bind("purged").bind(detail).bind(std::mem::replace(&mut prev, mac.clone())).bind(mac);
            }
            query.execute(&mut *tx).await.unwrap();
            seq += n;
        }
        tx.commit().await.unwrap();
    }
    sqlx::query("UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1").bind(records).bind(&prev).execute(&pool).await.unwrap();
    Witness::new(&witness).advance(&secret, records, &prev).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (_, def) in &indexes {
        sqlx::query(def).execute(&pool).await.unwrap();
    }
    let index_s = t.elapsed().as_secs_f64();

    let r = Retention::open(config(true)).await.unwrap();
    let t = Instant::now();
    let verdict = r.verify_audit().await.unwrap();
    let verify_s = t.elapsed().as_secs_f64();
    assert!(verdict.intact() && verdict.records == records, "{verdict:?}");

    // A database owner edits one record near the end: caught there, after a full pass.
    let (disable, enable) = if postgres {
        ("ALTER TABLE audit DISABLE TRIGGER audit_no_update", "ALTER TABLE audit ENABLE TRIGGER audit_no_update")
    } else {
        ("DROP TRIGGER audit_no_update", "SELECT 1")
    };
    let edited = records - 10;
    sqlx::query(disable).execute(&pool).await.unwrap();
    sqlx::query("UPDATE audit SET outcome = 'failed' WHERE seq = $1").bind(edited).execute(&pool).await.unwrap();
    sqlx::query(enable).execute(&pool).await.unwrap();
    let t = Instant::now();
    let tampered = r.verify_audit().await.unwrap();
    let tampered_s = t.elapsed().as_secs_f64();
    assert_eq!(tampered.broken_at, Some(edited), "{tampered:?}");
    println!(
        "{}",
        serde_json::json!({
            "catalog": if postgres { "postgres" } else { "sqlite" },
            "records": records, "write_s": write_s, "index_s": index_s,
            "verify_s": verify_s, "verify_us_per_record": verify_s * 1e6 / records as f64,
            "edited_record": edited, "caught_at": tampered.broken_at, "verify_tampered_s": tampered_s,
        })
    );
}
