//! The retention catalog: uploads, subjects, the job queue and the audit log, in SQLite
//! (a file, embedded, one scheduler at a time) or PostgreSQL (several schedulers share the
//! queue with `FOR UPDATE SKIP LOCKED`). One schema, written once per SQL dialect in
//! `migrations/{sqlite,postgres}` and applied with `sqlx` migrations; every query here is
//! plain SQL both accept (`$n` parameters, `CASE` instead of `LEAST`, times as Unix ms).
//!
//! Nothing in it names a person in the clear: subjects are stored as their keyed hash
//! (computed by the caller, at the edge) and store keys sealed with the per-deployment
//! secret ([`Secret::seal`]), so neither a raw id nor a key like `carol/1.jpg` ever
//! reaches the database files, their WAL or their free pages. SQLite also runs with
//! `secure_delete` on.
//!
//! Every state change that must be audited is committed in the same transaction as its
//! audit record, so the log and the catalog never disagree, even after `kill -9`.
//! Write transactions start with a write, so SQLite takes its write lock up front instead
//! of failing to upgrade a read lock under contention.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, FromRow, Row, Transaction};

use super::audit::{AuditFields, Secret, WitnessedHead};
use super::policy::Action;
use super::{Failing, Planned, Status};

/// Why the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {url}: {message}")]
    Open { url: String, message: String },
    #[error("catalog: {what}: {source}")]
    Query { what: &'static str, source: sqlx::Error },
    #[error("catalog holds an unexpected value: {0}")]
    Corrupt(String),
}

/// Maps a database error to [`CatalogError::Query`] saying what was being done.
pub(crate) fn q(what: &'static str) -> impl Fn(sqlx::Error) -> CatalogError + Copy {
    move |source| CatalogError::Query { what, source }
}

/// Which database the catalog lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A statement whose parameters are `$1, $2, …` in the order they appear, written
    /// as this database binds many values fastest: PostgreSQL keeps the numbers; SQLite
    /// gets plain `?`. sqlx asks SQLite for each numbered parameter's name, a linear
    /// search there, so a statement with n numbered parameters cost O(n²) to bind (a
    /// drain's audit insert binds 500 at a time).
    fn bulk(self, sql: String) -> String {
        match self {
            Dialect::Postgres => sql,
            Dialect::Sqlite => {
                let mut out = String::with_capacity(sql.len());
                let mut rest = sql.as_str();
                let mut expected = 1usize;
                while let Some(at) = rest.find('$') {
                    out.push_str(&rest[..at]);
                    let digits = rest[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
                    let number: usize = rest[at + 1..at + 1 + digits].parse().expect("a numbered parameter follows `$`");
                    assert_eq!(number, expected, "parameters in the order they are bound");
                    expected += 1;
                    out.push('?');
                    rest = &rest[at + 1 + digits..];
                }
                out.push_str(rest);
                out
            }
        }
    }
}

/// An action as the catalog stores it.
fn parse_action(text: &str) -> Result<Action, CatalogError> {
    Action::parse(text).ok_or_else(|| CatalogError::Corrupt(format!("job action {text:?}")))
}

/// A queued job as `plan` lists it (from `Catalog::queued_items`'s columns).
impl<'r> FromRow<'r, AnyRow> for Planned {
    fn from_row(row: &'r AnyRow) -> Result<Self, sqlx::Error> {
        let corrupt = |e: CatalogError| sqlx::Error::Decode(e.into());
        Ok(Planned {
            upload: row.try_get("id")?,
            subject_hash: row.try_get("subject_id")?,
            class: row.try_get("class")?,
            action: parse_action(&row.try_get::<String, _>("action")?).map_err(corrupt)?,
            reason: Reason::parse(&row.try_get::<String, _>("reason")?).map_err(corrupt)?,
            at: row.try_get("next_try_at")?,
            held: row.try_get::<String, _>("state")? == "held",
        })
    }
}

/// A job being retried (from `Catalog::failing`'s columns).
impl<'r> FromRow<'r, AnyRow> for Failing {
    fn from_row(row: &'r AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Failing {
            upload: row.try_get("upload_id")?,
            action: row.try_get("action")?,
            attempts: row.try_get("attempts")?,
            due_at: row.try_get("due_at")?,
            next_try_at: row.try_get("next_try_at")?,
            last_error: row.try_get::<Option<String>, _>("last_error")?.unwrap_or_default(),
        })
    }
}

impl<'r> FromRow<'r, AnyRow> for AuditRecord {
    fn from_row(row: &'r AnyRow) -> Result<Self, sqlx::Error> {
        Ok(AuditRecord {
            seq: row.try_get("seq")?,
            at: row.try_get("at")?,
            event: row.try_get("event")?,
            subject_hash: row.try_get("subject_hash")?,
            upload_id: row.try_get("upload_id")?,
            rule: row.try_get("rule")?,
            outcome: row.try_get("outcome")?,
            detail: row.try_get("detail")?,
            prev: row.try_get("prev")?,
            mac: row.try_get("mac")?,
        })
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where an upload is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    Active,
    Anonymised,
    Purged,
}

impl UploadState {
    fn parse(s: &str) -> Result<Self, CatalogError> {
        match s {
            "active" => Ok(Self::Active),
            "anonymised" => Ok(Self::Anonymised),
            "purged" => Ok(Self::Purged),
            other => Err(CatalogError::Corrupt(format!("upload state {other:?}"))),
        }
    }
}

/// Why a job exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The upload reached its class's `max_age`.
    Expiry,
    /// Its person unsubscribed.
    Unsubscribe,
    /// Its person asked for erasure of all their data.
    EraseSubject,
    /// Erasure of this one upload was asked for (e.g. by a guardian).
    EraseUpload,
    /// The service is closing down: everything goes.
    WindDown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Expiry => "expiry",
            Reason::Unsubscribe => "unsubscribe",
            Reason::EraseSubject => "erase_subject",
            Reason::EraseUpload => "erase_upload",
            Reason::WindDown => "wind_down",
        }
    }
    pub(crate) fn parse(s: &str) -> Result<Self, CatalogError> {
        match s {
            "expiry" => Ok(Self::Expiry),
            "unsubscribe" => Ok(Self::Unsubscribe),
            "erase_subject" => Ok(Self::EraseSubject),
            "erase_upload" => Ok(Self::EraseUpload),
            "wind_down" => Ok(Self::WindDown),
            other => Err(CatalogError::Corrupt(format!("job reason {other:?}"))),
        }
    }
}

/// One catalogued upload (keys unsealed).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Upload {
    pub id: String,
    /// The subject's keyed hash ([`Secret::subject_hash`]); `None` once anonymised or purged.
    pub subject_hash: Option<String>,
    /// Whether `key` contains the subject's raw id (known only at registration): then an
    /// anonymised upload moves to a random key.
    pub key_names_subject: bool,
    /// Store location (folder or `s3://bucket/prefix`).
    pub store: String,
    /// `None` once purged.
    pub key: Option<String>,
    pub class: String,
    pub uploaded_at: i64,
    pub state: UploadState,
    /// Thumbnails and other copies, in the same store.
    pub derived: Vec<String>,
}

const UPLOAD_COLUMNS: &str = "u.id, u.subject_id, u.key_names_subject, u.store, u.key, u.class, u.uploaded_at, u.state, u.derived";

/// The `derived` column of an upload row: a JSON array of (sealed) keys.
fn derived_keys(row: &AnyRow) -> Result<Vec<String>, CatalogError> {
    let text: String = row.try_get("derived").map_err(|e| CatalogError::Corrupt(format!("upload row: {e}")))?;
    serde_json::from_str(&text).map_err(|e| CatalogError::Corrupt(format!("derived keys: {e}")))
}

/// A job claimed for execution, with its upload.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: i64,
    pub action: Action,
    pub reason: Reason,
    /// The policy rule that asked for it (e.g. `photo.on_unsubscribe`).
    pub rule: String,
    pub due_at: i64,
    pub attempts: i64,
    /// The random key an anonymised upload moves to, chosen once and kept here so a
    /// rerun after a crash writes to the same place.
    pub new_key: Option<String>,
    /// The claim this job was taken under.
    pub lease: String,
    pub upload: Upload,
}

/// A job to add (or to merge into the upload's open job: purge beats anonymise, the
/// earlier due time wins).
#[derive(Clone, Debug)]
pub struct NewJob<'a> {
    pub action: Action,
    pub reason: Reason,
    pub rule: &'a str,
    pub due_at: i64,
    pub held: bool,
}

/// One subject's (by keyed hash) or one upload's jobs: what an event claims and counts.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    Subject(&'a str),
    Upload(&'a str),
}

/// A record to append to the audit log.
#[derive(Clone, Debug, Default)]
pub struct AuditEntry {
    pub event: &'static str,
    pub subject_hash: Option<String>,
    pub upload_id: Option<String>,
    pub rule: Option<String>,
    pub outcome: &'static str,
    pub detail: String,
}

/// One stored audit record.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub event: String,
    pub subject_hash: Option<String>,
    pub upload_id: Option<String>,
    pub rule: Option<String>,
    pub outcome: String,
    pub detail: String,
    pub prev: String,
    pub mac: String,
}

impl AuditRecord {
    fn fields(&self) -> AuditFields<'_> {
        AuditFields {
            seq: self.seq,
            at: self.at,
            event: &self.event,
            subject_hash: self.subject_hash.as_deref(),
            upload_id: self.upload_id.as_deref(),
            rule: self.rule.as_deref(),
            outcome: &self.outcome,
            detail: &self.detail,
        }
    }
}

/// Migrations compiled into the binary, one set per dialect.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| Migration::new(*version, Cow::Borrowed(description), MigrationType::Simple, Cow::Borrowed(sql), false))
                .collect())
        })
    }
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "retention", include_str!("../../migrations/sqlite/0001_retention.sql")),
    (2, "sealed", include_str!("../../migrations/sqlite/0002_sealed.sql")),
    (3, "partial indexes", include_str!("../../migrations/sqlite/0003_partial_indexes.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "retention", include_str!("../../migrations/postgres/0001_retention.sql")),
    (2, "sealed", include_str!("../../migrations/postgres/0002_sealed.sql")),
    (3, "partial indexes", include_str!("../../migrations/postgres/0003_partial_indexes.sql")),
];

/// The catalog database.
#[derive(Clone, Debug)]
pub struct Catalog {
    pool: AnyPool,
    dialect: Dialect,
    /// The URL with any password removed, for messages.
    display: String,
    /// Seals and unseals store keys.
    secret: Secret,
    /// Jobs this process queued since it last refreshed `jobs`' statistics, and how many
    /// it had queued by then ([`jobs_queued`](Self::jobs_queued)).
    queued: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
}

/// A database URL for messages: the password, if any, replaced.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Catalog {
    /// Opens (and creates or migrates) a catalog: `postgres://…`, `sqlite://path`, or a
    /// plain file path (SQLite). `secret` seals the store keys; a catalog made before
    /// keys were sealed is converted once, here.
    pub async fn open(url: &str, secret: &Secret) -> Result<Self, CatalogError> {
        sqlx::any::install_default_drivers();
        let display = redact_url(url);
        let open_err = |message: String| CatalogError::Open { url: display.clone(), message };
        let (dialect, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
            if path.is_empty() || path.contains('?') {
                return Err(open_err("give a file path (sqlite://PATH or PATH)".into()));
            }
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
            }
            (Dialect::Sqlite, format!("sqlite://{path}?mode=rwc"))
        };
        let options = match dialect {
            Dialect::Sqlite => AnyPoolOptions::new().max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL: readers never block the writer; NORMAL: a commit survives a
                    // process kill (FULL would also survive power loss).
                    // secure_delete: deleted rows are overwritten, not left in free pages.
                    // wal_autocheckpoint: a commit checkpoints only past 16 MiB of WAL (not
                    // 4 MiB); the scheduler checkpoints beside its drain, off the commits.
                    // temp_store: statement journals (the pages a multi-row statement
                    // changes, kept so it can be undone alone) and temporary tables stay in
                    // memory. In a temporary file they held old rows on disk and took more
                    // than a third of the drain's writes (`benches/RESULTS.md`, "statement journals").
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000; PRAGMA secure_delete = ON; PRAGMA wal_autocheckpoint = 4000; PRAGMA temp_store = MEMORY;")
                        .await?;
                    Ok(())
                })
            }),
            Dialect::Postgres => AnyPoolOptions::new().max_connections(8),
        };
        let pool = options.acquire_timeout(Duration::from_secs(30)).connect(&url).await.map_err(|e| open_err(e.to_string()))?;
        let source = match dialect {
            Dialect::Sqlite => Embedded(SQLITE_MIGRATIONS),
            Dialect::Postgres => Embedded(POSTGRES_MIGRATIONS),
        };
        let migrator = Migrator::new(source).await.map_err(|e| open_err(e.to_string()))?;
        migrator.run(&pool).await.map_err(|e| open_err(format!("migrating: {e}")))?;
        let catalog = Self { pool, dialect, display, secret: secret.clone(), queued: Default::default() };
        catalog.seal_legacy_rows().await?;
        Ok(catalog)
    }

    /// Converts a catalog written before ids were hashed and keys sealed (format 1): every
    /// subject id becomes its keyed hash, every key, derived key and chosen new key is
    /// sealed, and error messages lose the keys and ids they quote. One transaction;
    /// then the old values are wiped from the files (SQLite `VACUUM`, PostgreSQL `VACUUM`
    /// of the tables) as far as the database allows.
    async fn seal_legacy_rows(&self) -> Result<(), CatalogError> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM catalog_format WHERE id = 1").fetch_one(&self.pool).await.map_err(q("reading catalog format"))?;
        if version >= 2 {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let subjects = sqlx::query("SELECT id, state, created_at, unsubscribed_at FROM subjects").fetch_all(&mut *tx).await.map_err(q("reading subjects"))?;
        let mut renamed: Vec<(String, String)> = Vec::new();
        for row in &subjects {
            let raw: String = row.try_get("id").map_err(q("reading subjects"))?;
            let hash = self.secret.subject_hash(&raw);
            sqlx::query("INSERT INTO subjects (id, state, created_at, unsubscribed_at) VALUES ($1, $2, $3, $4)")
                .bind(&hash)
                .bind(row.try_get::<String, _>("state").map_err(q("reading subjects"))?)
                .bind(row.try_get::<i64, _>("created_at").map_err(q("reading subjects"))?)
                .bind(row.try_get::<Option<i64>, _>("unsubscribed_at").map_err(q("reading subjects"))?)
                .execute(&mut *tx)
                .await
                .map_err(q("hashing subject ids"))?;
            renamed.push((raw, hash));
        }
        let uploads = sqlx::query("SELECT id, subject_id, store, key, derived FROM uploads").fetch_all(&mut *tx).await.map_err(q("reading uploads"))?;
        for row in &uploads {
            let get = |e| CatalogError::Corrupt(format!("upload row: {e}"));
            let (id, store): (String, String) = (row.try_get("id").map_err(get)?, row.try_get("store").map_err(get)?);
            let raw_subject: Option<String> = row.try_get("subject_id").map_err(get)?;
            let key: Option<String> = row.try_get("key").map_err(get)?;
            let derived = derived_keys(row)?;
            let names = matches!((&raw_subject, &key), (Some(s), Some(k)) if !s.is_empty() && k.contains(s.as_str()));
            sqlx::query("UPDATE uploads SET subject_id = $2, key = $3, derived = $4, key_names_subject = $5 WHERE id = $1")
                .bind(&id)
                .bind(raw_subject.as_deref().map(|s| self.secret.subject_hash(s)))
                .bind(key.as_deref().map(|k| self.secret.seal(&store, k)))
                .bind(self.seal_derived(&store, &derived))
                .bind(i64::from(names))
                .execute(&mut *tx)
                .await
                .map_err(q("sealing keys"))?;
            let mut quoted: Vec<&str> = key.iter().chain(&derived).map(String::as_str).collect();
            quoted.extend(raw_subject.as_deref());
            let jobs = sqlx::query("SELECT id, new_key, last_error FROM jobs WHERE upload_id = $1").bind(&id).fetch_all(&mut *tx).await.map_err(q("reading jobs"))?;
            for job in &jobs {
                let new_key: Option<String> = job.try_get("new_key").map_err(get)?;
                let last_error: Option<String> = job.try_get("last_error").map_err(get)?;
                let mut quoted = quoted.clone();
                quoted.extend(new_key.as_deref());
                sqlx::query("UPDATE jobs SET new_key = $2, last_error = $3 WHERE id = $1")
                    .bind(job.try_get::<i64, _>("id").map_err(get)?)
                    .bind(new_key.as_deref().map(|k| self.secret.seal(&store, k)))
                    .bind(last_error.map(|e| super::audit::scrub(&e, &quoted)))
                    .execute(&mut *tx)
                    .await
                    .map_err(q("sealing keys"))?;
            }
        }
        for (raw, _) in &renamed {
            sqlx::query("DELETE FROM subjects WHERE id = $1").bind(raw).execute(&mut *tx).await.map_err(q("hashing subject ids"))?;
        }
        sqlx::query("UPDATE catalog_format SET version = 2 WHERE id = 1").execute(&mut *tx).await.map_err(q("recording catalog format"))?;
        Self::commit(tx).await?;
        self.wipe_deleted().await
    }

    /// Removes what deleted and updated rows left behind in the database files, as far as
    /// the database allows: SQLite rewrites its file (`VACUUM`) and empties its WAL;
    /// PostgreSQL vacuums the tables that name people. (PostgreSQL's own WAL segments
    /// are its business; with hashed ids and sealed keys they never held anything in
    /// the clear.)
    pub(crate) async fn wipe_deleted(&self) -> Result<(), CatalogError> {
        let sql = match self.dialect {
            Dialect::Sqlite => "VACUUM",
            Dialect::Postgres => "VACUUM subjects, uploads, jobs",
        };
        sqlx::query(sql).execute(&self.pool).await.map_err(q("vacuuming"))?;
        self.truncate_wal().await
    }

    /// SQLite: copies the WAL into the main file and truncates it to nothing, so rows
    /// deleted since the last checkpoint leave no copy there. PostgreSQL: nothing.
    pub(crate) async fn truncate_wal(&self) -> Result<(), CatalogError> {
        if self.dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await.map_err(q("checkpointing"))?;
        }
        Ok(())
    }

    /// SQLite: copies what the WAL holds into the main file without waiting for
    /// writers or blocking them (a passive checkpoint), on a connection of its own, so
    /// the scheduler can run it beside a batch's recording instead of inside a commit.
    /// PostgreSQL: nothing.
    pub(crate) async fn checkpoint_beside_writers(&self) -> Result<(), CatalogError> {
        if self.dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await.map_err(q("checkpointing"))?;
        }
        Ok(())
    }

    /// PostgreSQL: refreshes the planner's statistics of `jobs` (`ANALYZE`, a sample of
    /// the table). Run when a backlog appears faster than autovacuum notices: planned
    /// with statistics that say pending jobs are rare, each claim sorted every pending
    /// job and each batch's finishing walked them all (quadratic in the backlog;
    /// `benches/RESULTS.md`, "Scale-out"). SQLite: nothing (its statements name their
    /// plans, as in [`finish_jobs`](Self::finish_jobs)).
    pub(crate) async fn refresh_job_statistics(&self) -> Result<(), CatalogError> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("ANALYZE jobs").execute(&self.pool).await.map_err(q("analysing jobs"))?;
        }
        Ok(())
    }

    /// Counts `n` jobs just queued by an event, and refreshes `jobs`' statistics
    /// ([`refresh_job_statistics`](Self::refresh_job_statistics)) once the jobs queued
    /// since the last refresh reach half of all queued before it (at least 1,000): a
    /// handful of refreshes for a wave of any size. An unsubscribe wave grows `jobs` one
    /// person at a time; planned with the statistics of a nearly empty table, each
    /// person's claim and count read every job, and 10,000 unsubscribes at 1M uploads
    /// slowed to ~20/s until autovacuum analysed the table (`benches/RESULTS.md`,
    /// "an unsubscribe wave").
    pub(crate) async fn jobs_queued(&self, n: u64) -> Result<(), CatalogError> {
        if self.dialect != Dialect::Postgres || n == 0 {
            return Ok(());
        }
        let due = {
            let mut queued = self.queued.lock().expect("no panics while held");
            queued.0 += n;
            let due = queued.0 >= (queued.1 / 2).max(1_000);
            if due {
                *queued = (0, queued.1 + queued.0);
            }
            due
        };
        if due { self.refresh_job_statistics().await } else { Ok(()) }
    }

    fn seal_derived(&self, store: &str, derived: &[String]) -> String {
        serde_json::to_string(&derived.iter().map(|d| self.secret.seal(store, d)).collect::<Vec<_>>()).expect("strings serialise")
    }

    fn unseal(&self, store: &str, sealed: &str) -> Result<String, CatalogError> {
        self.secret.unseal(store, sealed).ok_or_else(|| CatalogError::Corrupt("a store key that does not open with this secret (another deployment's catalog, or edited)".into()))
    }

    fn upload_from(&self, row: &AnyRow) -> Result<Upload, CatalogError> {
        let get = |e| CatalogError::Corrupt(format!("upload row: {e}"));
        let store: String = row.try_get("store").map_err(get)?;
        let derived = derived_keys(row)?;
        Ok(Upload {
            id: row.try_get("id").map_err(get)?,
            subject_hash: row.try_get("subject_id").map_err(get)?,
            key_names_subject: row.try_get::<i64, _>("key_names_subject").map_err(get)? != 0,
            key: row.try_get::<Option<String>, _>("key").map_err(get)?.map(|k| self.unseal(&store, &k)).transpose()?,
            derived: derived.iter().map(|d| self.unseal(&store, d)).collect::<Result<_, _>>()?,
            class: row.try_get("class").map_err(get)?,
            uploaded_at: row.try_get("uploaded_at").map_err(get)?,
            state: UploadState::parse(&row.try_get::<String, _>("state").map_err(get)?)?,
            store,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The URL, password removed.
    pub fn display(&self) -> &str {
        &self.display
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, CatalogError> {
        self.pool.begin().await.map_err(q("begin"))
    }

    pub(crate) async fn commit(tx: Transaction<'static, Any>) -> Result<(), CatalogError> {
        tx.commit().await.map_err(q("commit"))
    }

    pub(crate) async fn rollback(tx: Transaction<'static, Any>) -> Result<(), CatalogError> {
        tx.rollback().await.map_err(q("rollback"))
    }

    /// A query that touches no table: whether the database answers.
    pub(crate) async fn ping(&self) -> Result<(), CatalogError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(q("checking the catalog"))?;
        Ok(())
    }

    // ---- subjects -------------------------------------------------------------------

    /// `Some(subscribed?)` for a known subject (by keyed hash), `None` for an unknown one.
    pub async fn subject_state(&self, subject_hash: &str) -> Result<Option<String>, CatalogError> {
        sqlx::query_scalar("SELECT state FROM subjects WHERE id = $1").bind(subject_hash).fetch_optional(&self.pool).await.map_err(q("reading subject"))
    }

    pub async fn subject_erased(&self, subject_hash: &str) -> Result<bool, CatalogError> {
        erased(&self.pool, subject_hash).await
    }

    /// Creates the subjects that are new (subscribed), locks their rows until the
    /// transaction ends, and returns each one's state by keyed hash — `None` for one whose
    /// data was erased (its keyed hash is recorded, or its row vanished under us because
    /// it was being erased). Three statements per 500 subjects. `subject_hashes` must be
    /// sorted and distinct: PostgreSQL locks the rows in that order (`ORDER BY id FOR
    /// UPDATE` locks as it returns), so two registrations sharing people cannot deadlock;
    /// on SQLite the first `INSERT` takes the database's one write lock.
    pub(crate) async fn lock_subjects(&self, tx: &mut Transaction<'static, Any>, subject_hashes: &[&str], now: i64) -> Result<HashMap<String, Option<String>>, CatalogError> {
        debug_assert!(subject_hashes.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE",
            Dialect::Sqlite => "",
        };
        let mut states = HashMap::with_capacity(subject_hashes.len());
        for chunk in subject_hashes.chunks(IN_LIST) {
            let rows = (0..chunk.len()).map(|r| format!("(${}, 'subscribed', ${})", 2 * r + 1, 2 * r + 2)).collect::<Vec<_>>().join(", ");
            let sql = self.dialect.bulk(format!("INSERT INTO subjects (id, state, created_at) VALUES {rows} ON CONFLICT (id) DO NOTHING"));
            let mut query = sqlx::query(&sql);
            for hash in chunk {
                query = query.bind(*hash).bind(now);
            }
            query.execute(&mut **tx).await.map_err(q("adding subjects"))?;
            let sql = self.dialect.bulk(format!("SELECT id, state FROM subjects WHERE id IN ({}) ORDER BY id {lock}", placeholders(1, chunk.len())));
            let mut query = sqlx::query_as::<_, (String, String)>(&sql);
            for hash in chunk {
                query = query.bind(*hash);
            }
            let locked: HashMap<String, String> = query.fetch_all(&mut **tx).await.map_err(q("locking subjects"))?.into_iter().collect();
            // Checked after the lock, so an erasure finishing concurrently is seen.
            let sql = self.dialect.bulk(format!("SELECT subject_hash FROM erased_subjects WHERE subject_hash IN ({})", placeholders(1, chunk.len())));
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for hash in chunk {
                query = query.bind(*hash);
            }
            let erased: HashSet<String> = query.fetch_all(&mut **tx).await.map_err(q("reading erased subjects"))?.into_iter().collect();
            for hash in chunk {
                let state = if erased.contains(*hash) { None } else { locked.get(*hash).cloned() };
                states.insert(hash.to_string(), state);
            }
        }
        Ok(states)
    }

    /// Marks a subject unsubscribed; false if it already was.
    pub(crate) async fn mark_unsubscribed(tx: &mut Transaction<'static, Any>, subject_hash: &str, now: i64) -> Result<bool, CatalogError> {
        let r = sqlx::query("UPDATE subjects SET state = 'unsubscribed', unsubscribed_at = $2 WHERE id = $1 AND state = 'subscribed'")
            .bind(subject_hash)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(q("unsubscribing"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Drops those of `subject_hashes` that are unsubscribed and that no upload refers to
    /// any more, keeping only each one's keyed hash in the erased list. Returns the ones
    /// dropped, in the order given. Two statements per 500 subjects, not two per subject
    /// (a wave of 10,000 unsubscribes is forgotten at the end of the drain that purged it).
    pub(crate) async fn forget_subjects_if_done(&self, tx: &mut Transaction<'static, Any>, subject_hashes: &[String], now: i64) -> Result<Vec<String>, CatalogError> {
        let mut forgotten = Vec::new();
        for chunk in subject_hashes.chunks(IN_LIST) {
            let sql = self.dialect.bulk(format!(
                "DELETE FROM subjects WHERE id IN ({}) AND state = 'unsubscribed'
                 AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.subject_id = subjects.id) RETURNING id",
                placeholders(1, chunk.len())
            ));
            let mut query = sqlx::query(&sql);
            for hash in chunk {
                query = query.bind(hash);
            }
            let rows = query.fetch_all(&mut **tx).await.map_err(q("forgetting subjects"))?;
            let gone: HashSet<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>().map_err(q("forgetting subjects"))?;
            let gone: Vec<&String> = chunk.iter().filter(|h| gone.contains(*h)).collect();
            if gone.is_empty() {
                continue;
            }
            let values = value_rows(gone.len(), 2);
            let sql = self.dialect.bulk(format!("INSERT INTO erased_subjects (subject_hash, erased_at) VALUES {values} ON CONFLICT (subject_hash) DO NOTHING"));
            let mut query = sqlx::query(&sql);
            for hash in &gone {
                query = query.bind(*hash).bind(now);
            }
            query.execute(&mut **tx).await.map_err(q("recording erased subjects"))?;
            forgotten.extend(gone.into_iter().cloned());
        }
        Ok(forgotten)
    }

    // ---- uploads --------------------------------------------------------------------

    /// Adds uploads (their keys sealed), eight values a row, 62 rows a statement. Returns
    /// the id of the first one not added because its id or its store+key is already
    /// catalogued (or given twice), if any; the caller rolls back.
    pub(crate) async fn insert_uploads(&self, tx: &mut Transaction<'static, Any>, uploads: &[Upload]) -> Result<Option<String>, CatalogError> {
        for chunk in uploads.chunks(IN_LIST / 8) {
            let rows = (0..chunk.len()).map(|r| format!("({}, 'active', ${})", placeholders(8 * r + 1, 7), 8 * r + 8)).collect::<Vec<_>>().join(", ");
            let sql = self.dialect.bulk(format!("INSERT INTO uploads (id, subject_id, key_names_subject, store, key, class, uploaded_at, state, derived) VALUES {rows} ON CONFLICT DO NOTHING RETURNING id"));
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for u in chunk {
                query = query
                    .bind(&u.id)
                    .bind(&u.subject_hash)
                    .bind(i64::from(u.key_names_subject))
                    .bind(&u.store)
                    .bind(u.key.as_deref().map(|k| self.secret.seal(&u.store, k)))
                    .bind(&u.class)
                    .bind(u.uploaded_at)
                    .bind(self.seal_derived(&u.store, &u.derived));
            }
            let added = query.fetch_all(&mut **tx).await.map_err(q("adding uploads"))?;
            if added.len() < chunk.len() {
                // Each added id once; an id given twice was added for its first row only.
                let mut added: HashSet<String> = added.into_iter().collect();
                return Ok(chunk.iter().find(|u| !added.remove(&u.id)).map(|u| u.id.clone()));
            }
        }
        Ok(None)
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>, CatalogError> {
        let row = sqlx::query(&format!("SELECT {UPLOAD_COLUMNS} FROM uploads u WHERE u.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading upload"))?;
        row.as_ref().map(|r| self.upload_from(r)).transpose()
    }

    /// A subject's uploads, by keyed hash (all states that still name them: active ones).
    pub async fn subject_uploads(&self, subject_hash: &str) -> Result<Vec<Upload>, CatalogError> {
        let rows = sqlx::query(&format!("SELECT {UPLOAD_COLUMNS} FROM uploads u WHERE u.subject_id = $1 ORDER BY u.uploaded_at, u.id"))
            .bind(subject_hash)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading uploads"))?;
        rows.iter().map(|r| self.upload_from(r)).collect()
    }

    // ---- jobs -----------------------------------------------------------------------

    /// Queues `job` for every upload matching `filter_sql` (a condition on `u` whose
    /// parameters start at `$7`), merging into open jobs. Returns how many it touched.
    async fn enqueue_where(
        tx: &mut Transaction<'static, Any>,
        job: &NewJob<'_>,
        now: i64,
        filter_sql: &str,
        binds: &[&str],
    ) -> Result<u64, CatalogError> {
        let sql = format!(
            "INSERT INTO jobs (upload_id, action, reason, rule, due_at, state, next_try_at, created_at)
             SELECT u.id, $1, $2, $3, $4, $5, $4, $6 FROM uploads u WHERE u.state <> 'purged' AND {filter_sql}
             ON CONFLICT (upload_id) WHERE state <> 'done' DO UPDATE SET
                action = CASE WHEN excluded.action = 'purge' THEN 'purge' ELSE jobs.action END,
                reason = CASE WHEN (excluded.action = 'purge' AND jobs.action <> 'purge') OR excluded.due_at < jobs.due_at
                              THEN excluded.reason ELSE jobs.reason END,
                rule = CASE WHEN (excluded.action = 'purge' AND jobs.action <> 'purge') OR excluded.due_at < jobs.due_at
                            THEN excluded.rule ELSE jobs.rule END,
                due_at = CASE WHEN excluded.due_at < jobs.due_at THEN excluded.due_at ELSE jobs.due_at END,
                next_try_at = CASE WHEN excluded.due_at < jobs.next_try_at THEN excluded.due_at ELSE jobs.next_try_at END"
        );
        let state = if job.held { "held" } else { "pending" };
        let mut query =
            sqlx::query(&sql).bind(job.action.as_str()).bind(job.reason.as_str()).bind(job.rule).bind(job.due_at).bind(state).bind(now);
        for b in binds {
            query = query.bind(*b);
        }
        let r = query.execute(&mut **tx).await.map_err(q("queueing jobs"))?;
        Ok(r.rows_affected())
    }

    /// Queues a job for each active upload of the subject (by keyed hash) in `class`.
    pub(crate) async fn enqueue_subject_class(
        tx: &mut Transaction<'static, Any>,
        subject_hash: &str,
        class: &str,
        job: &NewJob<'_>,
        now: i64,
    ) -> Result<u64, CatalogError> {
        Self::enqueue_where(tx, job, now, "u.state = 'active' AND u.subject_id = $7 AND u.class = $8", &[subject_hash, class]).await
    }

    /// Active uploads per class, of one subject (by keyed hash) or of everyone. Events that
    /// must reach every upload (unsubscribe, erasure, wind-down) start from this, not from
    /// the policy's classes, so an upload whose class the policy no longer names is reached.
    pub(crate) async fn active_classes(tx: &mut Transaction<'static, Any>, subject_hash: Option<&str>) -> Result<Vec<(String, u64)>, CatalogError> {
        let rows: Vec<(String, i64)> = match subject_hash {
            Some(hash) => sqlx::query_as("SELECT class, COUNT(*) AS n FROM uploads WHERE state = 'active' AND subject_id = $1 GROUP BY class ORDER BY class")
                .bind(hash)
                .fetch_all(&mut **tx)
                .await,
            None => sqlx::query_as("SELECT class, COUNT(*) AS n FROM uploads WHERE state = 'active' GROUP BY class ORDER BY class").fetch_all(&mut **tx).await,
        }
        .map_err(q("counting uploads per class"))?;
        Ok(rows.into_iter().map(|(class, n)| (class, n as u64)).collect())
    }

    /// Queues a job for every active upload of `class`.
    pub(crate) async fn enqueue_class(tx: &mut Transaction<'static, Any>, class: &str, job: &NewJob<'_>, now: i64) -> Result<u64, CatalogError> {
        Self::enqueue_where(tx, job, now, "u.state = 'active' AND u.class = $7", &[class]).await
    }

    /// Queues a job for one upload (active, or anonymised for a purge).
    pub(crate) async fn enqueue_upload(tx: &mut Transaction<'static, Any>, upload: &str, job: &NewJob<'_>, now: i64) -> Result<u64, CatalogError> {
        Self::enqueue_where(tx, job, now, "u.id = $7", &[upload]).await
    }

    /// Queues expiry jobs for active uploads of `class` uploaded at or before `cutoff`
    /// that have no open job. Returns how many were queued.
    ///
    /// An upload with an open job is skipped by the unique index (`ON CONFLICT … DO
    /// NOTHING`), not by a `NOT EXISTS` over `jobs`: PostgreSQL planned that as a scan of
    /// `jobs` per upload when the table had no statistics yet, which made queueing N
    /// expiries quadratic (100,000 took 174 s; `benches/RESULTS.md`, "Scale-out").
    pub async fn enqueue_expired(&self, class: &str, max_age: i64, cutoff: i64, job: &NewJob<'_>, now: i64) -> Result<u64, CatalogError> {
        let state = if job.held { "held" } else { "pending" };
        let r = sqlx::query(
            "INSERT INTO jobs (upload_id, action, reason, rule, due_at, state, next_try_at, created_at)
             SELECT u.id, $1, 'expiry', $2, u.uploaded_at + $3, $4, u.uploaded_at + $3, $5 FROM uploads u
             WHERE u.class = $6 AND u.state = 'active' AND u.uploaded_at <= $7
             ON CONFLICT (upload_id) WHERE state <> 'done' DO NOTHING",
        )
        .bind(job.action.as_str())
        .bind(job.rule)
        .bind(max_age)
        .bind(state)
        .bind(now)
        .bind(class)
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(q("queueing expiries"))?;
        Ok(r.rows_affected())
    }

    /// Expiries the scheduler has not queued yet: active uploads of `class` uploaded at or
    /// before `cutoff` with no open job. Returns how many, and the oldest upload time.
    pub(crate) async fn unqueued_expiries(&self, class: &str, cutoff: i64) -> Result<(u64, Option<i64>), CatalogError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(u.uploaded_at) AS oldest FROM uploads u WHERE u.class = $1 AND u.state = 'active' AND u.uploaded_at <= $2
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.upload_id = u.id AND j.state <> 'done')",
        )
        .bind(class)
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting expiries"))?;
        let n: i64 = row.try_get("n").map_err(q("counting expiries"))?;
        Ok((n as u64, row.try_get("oldest").map_err(q("counting expiries"))?))
    }

    /// Moves the open jobs of `class` between `pending` and `held` to follow its legal hold.
    pub async fn apply_hold(&self, class: &str, held: bool) -> Result<u64, CatalogError> {
        // A job being executed right now (leased) finishes; holds apply from the next one.
        // Each open job's upload is looked up by id: `upload_id IN (SELECT id FROM uploads
        // WHERE class = …)` made SQLite list every upload of the class first, on every
        // tick (half a second at 200,000 uploads; `benches/RESULTS.md`).
        let sql = if held {
            "UPDATE jobs SET state = 'held' WHERE state = 'pending' AND lease_owner IS NULL
             AND EXISTS (SELECT 1 FROM uploads u WHERE u.id = jobs.upload_id AND u.class = $1)"
        } else {
            "UPDATE jobs SET state = 'pending' WHERE state = 'held'
             AND EXISTS (SELECT 1 FROM uploads u WHERE u.id = jobs.upload_id AND u.class = $1)"
        };
        let r = sqlx::query(sql).bind(class).execute(&self.pool).await.map_err(q("applying legal hold"))?;
        Ok(r.rows_affected())
    }

    /// Claims up to `limit` runnable jobs in `scope` (`None`: any job) for `lease_for`,
    /// under a fresh claim id derived from `owner`. On PostgreSQL, rows another instance
    /// is claiming are skipped (`FOR UPDATE SKIP LOCKED`), so no job is claimed twice.
    ///
    /// A job whose upload is already purged is closed here (outcome `already_purged`, no
    /// action, no audit record: nothing of the person is left to act on) and not
    /// returned. Such a job comes from a race no constraint can stop: an expiry pass or
    /// an event reads the upload as active in its snapshot, and by the time its insert
    /// checks the one-open-job index, another scheduler has purged the upload and closed
    /// the job that stood there. Acting on it would record a second purge.
    pub async fn claim(&self, owner: &str, scope: Option<Scope<'_>>, limit: i64, lease_for: Duration) -> Result<Vec<Job>, CatalogError> {
        loop {
            let claimed = self.claim_once(owner, scope, limit, lease_for).await?;
            if claimed.is_empty() {
                return Ok(claimed);
            }
            let (obsolete, live): (Vec<Job>, Vec<Job>) = claimed.into_iter().partition(|j| j.upload.state == UploadState::Purged);
            if let Some(first) = obsolete.first() {
                // One claim, one lease; `finish_jobs` matches each job's action too.
                let mut tx = self.begin().await?;
                let mut closed = 0;
                for action in [Action::Purge, Action::Anonymise] {
                    let ids: Vec<i64> = obsolete.iter().filter(|j| j.action == action).map(|j| j.id).collect();
                    if !ids.is_empty() {
                        closed += self.finish_jobs(&mut tx, &first.lease, action, "already_purged", &ids, now_ms()).await?.len();
                    }
                }
                Self::commit(tx).await?;
                tracing::info!(jobs = closed, "closed jobs queued for uploads already purged");
            }
            if !live.is_empty() {
                return Ok(live);
            }
        }
    }

    async fn claim_once(&self, owner: &str, scope: Option<Scope<'_>>, limit: i64, lease_for: Duration) -> Result<Vec<Job>, CatalogError> {
        let now = now_ms();
        let lease = format!("{owner}:{}", unique_suffix());
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE OF j SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        // Scoped claims (an event's own jobs) start from the subject's or upload's rows:
        // `CROSS JOIN` makes SQLite loop over `u` first instead of over every due job.
        let candidates = match scope {
            None => "SELECT j.id FROM jobs j WHERE",
            Some(Scope::Subject(_)) => "SELECT j.id FROM uploads u CROSS JOIN jobs j WHERE u.subject_id = $5 AND j.upload_id = u.id AND",
            Some(Scope::Upload(_)) => "SELECT j.id FROM uploads u CROSS JOIN jobs j WHERE u.id = $5 AND j.upload_id = u.id AND",
        };
        let sql = format!(
            "UPDATE jobs SET lease_owner = $1, lease_until = $2 WHERE id IN (
                {candidates} j.state = 'pending' AND j.next_try_at <= $3
                  AND (j.lease_until IS NULL OR j.lease_until < $3)
                ORDER BY j.next_try_at, j.id LIMIT $4 {lock})
             RETURNING id"
        );
        let mut query = sqlx::query(&sql).bind(&lease).bind(now + ms(lease_for)).bind(now).bind(limit);
        if let Some(Scope::Subject(s) | Scope::Upload(s)) = scope {
            query = query.bind(s);
        }
        let ids: Vec<i64> = query.fetch_all(&self.pool).await.map_err(q("claiming jobs"))?.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>().map_err(q("claiming jobs"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = placeholders(1, ids.len());
        let sql = self.dialect.bulk(format!(
            "SELECT j.id AS job_id, j.action, j.reason, j.rule, j.due_at, j.attempts, j.new_key, {UPLOAD_COLUMNS}
             FROM jobs j JOIN uploads u ON u.id = j.upload_id WHERE j.id IN ({list}) ORDER BY j.next_try_at, j.id"
        ));
        let mut select = sqlx::query(&sql);
        for id in &ids {
            select = select.bind(*id);
        }
        let rows = select.fetch_all(&self.pool).await.map_err(q("reading claimed jobs"))?;
        rows.iter()
            .map(|row| {
                let get = |e| CatalogError::Corrupt(format!("job row: {e}"));
                let action: String = row.try_get("action").map_err(get)?;
                Ok(Job {
                    id: row.try_get("job_id").map_err(get)?,
                    action: parse_action(&action)?,
                    reason: Reason::parse(&row.try_get::<String, _>("reason").map_err(get)?)?,
                    rule: row.try_get("rule").map_err(get)?,
                    due_at: row.try_get("due_at").map_err(get)?,
                    attempts: row.try_get("attempts").map_err(get)?,
                    new_key: row.try_get::<Option<String>, _>("new_key").map_err(get)?.map(|k| self.unseal(&row.try_get::<String, _>("store").map_err(get)?, &k)).transpose()?,
                    lease: lease.clone(),
                    upload: self.upload_from(row)?,
                })
            })
            .collect()
    }

    /// Releases every scheduler's lease (SQLite only, at start-up under the instance lock:
    /// a scheduler lease left then belongs to one that died).
    pub async fn release_scheduler_leases(&self) -> Result<u64, CatalogError> {
        let r = sqlx::query("UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner LIKE 'scheduler:%' AND state <> 'done'")
            .execute(&self.pool)
            .await
            .map_err(q("releasing leases"))?;
        Ok(r.rows_affected())
    }

    /// Stores the key an anonymised upload will move to, once; returns the key stored
    /// (an earlier attempt's, if there was one).
    pub async fn choose_new_key(&self, job: &Job, key: &str) -> Result<String, CatalogError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE jobs SET new_key = $3 WHERE id = $1 AND lease_owner = $2 AND new_key IS NULL")
            .bind(job.id)
            .bind(&job.lease)
            .bind(self.secret.seal(&job.upload.store, key))
            .execute(&mut *tx)
            .await
            .map_err(q("choosing new key"))?;
        let chosen: Option<String> =
            sqlx::query_scalar("SELECT new_key FROM jobs WHERE id = $1").bind(job.id).fetch_one(&mut *tx).await.map_err(q("reading new key"))?;
        Self::commit(tx).await?;
        self.unseal(&job.upload.store, &chosen.ok_or_else(|| CatalogError::Corrupt("new key not stored".into()))?)
    }

    /// Marks done, under `lease`, those of the jobs `ids` that are still pending as
    /// `action`, with `outcome`; returns the ids it marked. A job left out had its lease
    /// lost or was changed meanwhile (e.g. an anonymise upgraded to a purge): nothing of
    /// it changed.
    pub(crate) async fn finish_jobs(&self, tx: &mut Transaction<'static, Any>, lease: &str, action: Action, outcome: &str, ids: &[i64], now: i64) -> Result<Vec<i64>, CatalogError> {
        // SQLite, with no statistics, would walk `jobs_runnable` for `state = 'pending'`
        // (every pending job: the drain turned quadratic in the backlog) instead of
        // looking the ids up by rowid.
        let jobs = match self.dialect {
            Dialect::Sqlite => "jobs NOT INDEXED",
            Dialect::Postgres => "jobs",
        };
        let mut marked = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_LIST) {
            let list = placeholders(5, chunk.len());
            let sql = self.dialect.bulk(format!(
                "UPDATE {jobs} SET state = 'done', outcome = $1, finished_at = $2, lease_owner = NULL, lease_until = NULL, last_error = NULL
                 WHERE lease_owner = $3 AND action = $4 AND state = 'pending' AND id IN ({list}) RETURNING id"
            ));
            let mut query = sqlx::query(&sql).bind(outcome).bind(now).bind(lease).bind(action.as_str());
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut **tx).await.map_err(q("finishing jobs"))? {
                marked.push(row.try_get::<i64, _>("id").map_err(q("finishing jobs"))?);
            }
        }
        Ok(marked)
    }

    /// Records a failed attempt and when to try again; the lease is released.
    pub(crate) async fn fail_job(tx: &mut Transaction<'static, Any>, job: &Job, error: &str, retry_at: i64) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE jobs SET attempts = attempts + 1, last_error = $3, next_try_at = $4, lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(job.id)
        .bind(&job.lease)
        .bind(error)
        .bind(retry_at)
        .execute(&mut **tx)
        .await
        .map_err(q("recording failure"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives a claimed job back untouched (e.g. on shutdown).
    pub async fn release(&self, job: &Job) -> Result<(), CatalogError> {
        sqlx::query("UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2")
            .bind(job.id)
            .bind(&job.lease)
            .execute(&self.pool)
            .await
            .map_err(q("releasing job"))?;
        Ok(())
    }

    /// Marks `uploads` purged: no key, no derived objects, no subject.
    pub(crate) async fn mark_purged(&self, tx: &mut Transaction<'static, Any>, uploads: &[&str], now: i64) -> Result<(), CatalogError> {
        for chunk in uploads.chunks(IN_LIST) {
            let sql = self.dialect.bulk(format!(
                "UPDATE uploads SET state = 'purged', subject_id = NULL, key = NULL, derived = '[]', finished_at = $1 WHERE id IN ({})",
                placeholders(2, chunk.len())
            ));
            let mut query = sqlx::query(&sql).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut **tx).await.map_err(q("marking purged"))?;
        }
        Ok(())
    }

    pub(crate) async fn mark_anonymised(&self, tx: &mut Transaction<'static, Any>, upload: &Upload, key: &str, now: i64) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE uploads SET state = 'anonymised', subject_id = NULL, key_names_subject = 0, key = $2, derived = '[]', finished_at = $3 WHERE id = $1",
        )
        .bind(&upload.id)
        .bind(self.secret.seal(&upload.store, key))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(q("marking anonymised"))?;
        Ok(())
    }

    // ---- reports: what plan, status and events show ---------------------------------

    /// Subjects that unsubscribed and that no upload names any more (at most `limit`),
    /// by keyed hash: the ones the catalog can forget.
    pub(crate) async fn finished_subjects(&self, limit: i64) -> Result<Vec<String>, CatalogError> {
        sqlx::query_scalar(
            "SELECT s.id FROM subjects s WHERE s.state = 'unsubscribed'
             AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.subject_id = s.id) LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("finding finished subjects"))
    }

    /// Open (not done) jobs of one subject or upload: `(pending, held)`.
    pub(crate) async fn open_jobs(&self, scope: Scope<'_>) -> Result<(u64, u64), CatalogError> {
        let (sql, id) = match scope {
            Scope::Subject(s) => ("SELECT j.state, COUNT(*) AS n FROM jobs j JOIN uploads u ON u.id = j.upload_id WHERE u.subject_id = $1 AND j.state <> 'done' GROUP BY j.state", s),
            Scope::Upload(u) => ("SELECT state, COUNT(*) AS n FROM jobs WHERE upload_id = $1 AND state <> 'done' GROUP BY state", u),
        };
        let rows: Vec<(String, i64)> = sqlx::query_as(sql).bind(id).fetch_all(&self.pool).await.map_err(q("counting jobs"))?;
        let held = rows.iter().filter(|(state, _)| state == "held").map(|(_, n)| *n as u64).sum();
        let all: u64 = rows.iter().map(|(_, n)| *n as u64).sum();
        Ok((all - held, held))
    }

    /// Open jobs due by `until`, counted by action: `(action, held, count)`.
    pub(crate) async fn queued_counts(&self, until: i64) -> Result<Vec<(Action, bool, u64)>, CatalogError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT action, state, COUNT(*) AS n FROM jobs WHERE state <> 'done' AND next_try_at <= $1 GROUP BY action, state")
                .bind(until)
                .fetch_all(&self.pool)
                .await
                .map_err(q("planning"))?;
        rows.into_iter().map(|(action, state, n)| Ok((parse_action(&action)?, state == "held", n as u64))).collect()
    }

    /// The first `limit` open jobs due by `until`, in time order.
    pub(crate) async fn queued_items(&self, until: i64, limit: usize) -> Result<Vec<Planned>, CatalogError> {
        sqlx::query_as(
            "SELECT u.id, u.subject_id, u.class, j.action, j.reason, j.next_try_at, j.state FROM jobs j JOIN uploads u ON u.id = j.upload_id
             WHERE j.state <> 'done' AND j.next_try_at <= $1 ORDER BY j.next_try_at, j.id LIMIT $2",
        )
        .bind(until)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(q("planning"))
    }

    /// The first `limit` expiries of `class` no scheduler pass has queued yet (active
    /// uploads at or before `cutoff` with no open job): `(upload id, subject hash, uploaded_at)`.
    pub(crate) async fn unqueued_items(&self, class: &str, cutoff: i64, limit: usize) -> Result<Vec<(String, Option<String>, i64)>, CatalogError> {
        sqlx::query_as(
            "SELECT u.id, u.subject_id, u.uploaded_at FROM uploads u WHERE u.class = $1 AND u.state = 'active' AND u.uploaded_at <= $2
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.upload_id = u.id AND j.state <> 'done') ORDER BY u.uploaded_at LIMIT $3",
        )
        .bind(class)
        .bind(cutoff)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(q("planning"))
    }

    /// Active uploads counted per (class, store), for the residency check of `status`.
    pub(crate) async fn uploads_by_store(&self) -> Result<Vec<(String, String, u64)>, CatalogError> {
        let rows = sqlx::query("SELECT class, store, COUNT(*) AS n FROM uploads WHERE state = 'active' GROUP BY class, store ORDER BY class, store")
            .fetch_all(&self.pool)
            .await
            .map_err(q("counting uploads per store"))?;
        rows.iter()
            .map(|r| Ok((r.try_get("class")?, r.try_get("store")?, r.try_get::<i64, _>("n")? as u64)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("counting uploads per store"))
    }

    /// The catalog's part of `status` at `now`, with `deadline` ms of grace before a job
    /// is overdue: the counts of uploads, subjects and queued jobs. Expiries not queued yet
    /// and the failing jobs are the caller's to add (the first need the policy).
    pub(crate) async fn queue_status(&self, now: i64, deadline: i64) -> Result<Status, CatalogError> {
        let err = q("status");
        let mut counts = Status::default();
        // Counted from indexes (the active and anonymised ones are partial: migration
        // 0003), not by grouping every row by state.
        let (all, active, anonymised): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM uploads) AS all_uploads,
                    (SELECT COUNT(*) FROM uploads WHERE state = 'active') AS active,
                    (SELECT COUNT(*) FROM uploads WHERE state = 'anonymised') AS anonymised",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        (counts.uploads_active, counts.uploads_anonymised, counts.uploads_purged) = (active as u64, anonymised as u64, (all - active - anonymised) as u64);
        let subjects: Vec<(String, i64)> = sqlx::query_as("SELECT state, COUNT(*) AS n FROM subjects GROUP BY state").fetch_all(&self.pool).await.map_err(err)?;
        for (state, n) in subjects {
            match state.as_str() {
                "subscribed" => counts.subjects_subscribed = n as u64,
                _ => counts.subjects_unsubscribed += n as u64,
            }
        }
        let (pending, due, overdue, oldest): (i64, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*) AS pending,
                    SUM(CASE WHEN next_try_at <= $1 THEN 1 ELSE 0 END) AS due,
                    SUM(CASE WHEN due_at + $2 < $1 THEN 1 ELSE 0 END) AS overdue,
                    MIN(due_at) AS oldest
             FROM jobs WHERE state = 'pending'",
        )
        .bind(now)
        .bind(deadline)
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        (counts.jobs_pending, counts.jobs_due, counts.overdue, counts.oldest_due_at) = (pending as u64, due.unwrap_or(0) as u64, overdue.unwrap_or(0) as u64, oldest);
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'held'").fetch_one(&self.pool).await.map_err(err)?;
        counts.jobs_held = held as u64;
        Ok(counts)
    }

    /// The first `limit` jobs that failed at least once and wait for a retry, oldest due first.
    pub(crate) async fn failing(&self, limit: i64) -> Result<Vec<Failing>, CatalogError> {
        sqlx::query_as(
            "SELECT upload_id, action, attempts, due_at, next_try_at, last_error FROM jobs
             WHERE state = 'pending' AND attempts > 0 ORDER BY due_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("status"))
    }

    // ---- audit ----------------------------------------------------------------------

    /// Appends `entries`, in order, to the audit log inside `tx`. Call it last in a
    /// transaction: on PostgreSQL it holds the log's head row until commit. The head row
    /// is read and written once however many records are appended (group commit: a batch
    /// of jobs finishes in one transaction), and each record's MAC chains to the one
    /// before it exactly as if they had been appended one by one.
    /// Returns the last record's sequence number and MAC (for the
    /// [`Witness`](super::audit::Witness)); with no entries, the head as it is.
    pub(crate) async fn append_audit(&self, tx: &mut Transaction<'static, Any>, entries: &[AuditEntry], now: i64) -> Result<(i64, String), CatalogError> {
        let n = entries.len() as i64;
        // The update takes the head row's lock (PostgreSQL) or the write lock (SQLite)
        // before the head is read, so no other transaction can chain to the same record.
        sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1").bind(n).execute(&mut **tx).await.map_err(q("locking audit log"))?;
        let row = sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_one(&mut **tx).await.map_err(q("reading audit head"))?;
        let last: i64 = row.try_get("seq").map_err(q("reading audit head"))?;
        let mut prev: String = row.try_get("mac").map_err(q("reading audit head"))?;
        if entries.is_empty() {
            return Ok((last, prev));
        }
        let first = last - n + 1;
        let mut rows = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let seq = first + i as i64;
            let fields = AuditFields {
                seq,
                at: now,
                event: entry.event,
                subject_hash: entry.subject_hash.as_deref(),
                upload_id: entry.upload_id.as_deref(),
                rule: entry.rule.as_deref(),
                outcome: entry.outcome,
                detail: &entry.detail,
            };
            let mac = self.secret.chain(&prev, &fields);
            rows.push((seq, entry, std::mem::replace(&mut prev, mac.clone()), mac));
        }
        // Ten values a record; chunks keep well under either database's bind limit.
        for chunk in rows.chunks(IN_LIST / 10) {
            let values = value_rows(chunk.len(), 10);
            let sql = self.dialect.bulk(format!("INSERT INTO audit (seq, at, event, subject_hash, upload_id, rule, outcome, detail, prev, mac) VALUES {values}"));
            let mut query = sqlx::query(&sql);
            for (seq, entry, prev, mac) in chunk {
                query = query
                    .bind(*seq)
                    .bind(now)
                    .bind(entry.event)
                    .bind(&entry.subject_hash)
                    .bind(&entry.upload_id)
                    .bind(&entry.rule)
                    .bind(entry.outcome)
                    .bind(&entry.detail)
                    .bind(prev)
                    .bind(mac);
            }
            query.execute(&mut **tx).await.map_err(q("appending audit record"))?;
        }
        sqlx::query("UPDATE audit_head SET mac = $1 WHERE id = 1").bind(&prev).execute(&mut **tx).await.map_err(q("updating audit head"))?;
        Ok((last, prev))
    }

    /// Audit records in order, optionally only those about one subject hash or upload,
    /// from sequence number `after` on, at most `limit`.
    pub async fn audit_records(
        &self,
        subject_hash: Option<&str>,
        upload: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, CatalogError> {
        let rows = sqlx::query_as(
            "SELECT seq, at, event, subject_hash, upload_id, rule, outcome, detail, prev, mac FROM audit
             WHERE seq > $1 AND ($2 IS NULL OR subject_hash = $2) AND ($3 IS NULL OR upload_id = $3)
             ORDER BY seq LIMIT $4",
        )
        .bind(after)
        .bind(subject_hash)
        .bind(upload)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading audit log"))?;
        Ok(rows)
    }

    /// The log head: last sequence number and MAC.
    pub async fn audit_head(&self) -> Result<(i64, String), CatalogError> {
        let row = sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_one(&self.pool).await.map_err(q("reading audit head"))?;
        Ok((row.try_get("seq").map_err(q("audit head"))?, row.try_get("mac").map_err(q("audit head"))?))
    }

    /// Walks the whole log and checks every link, and that the log reaches the head seen
    /// by `witness` (kept outside the catalog) with that very record.
    pub async fn verify_audit(&self, secret: &Secret, witness: Option<&WitnessedHead>) -> Result<AuditVerdict, CatalogError> {
        let mut expected_seq = 1;
        let mut prev = String::new();
        loop {
            let page = self.audit_records(None, None, expected_seq - 1, 10_000).await?;
            if page.is_empty() {
                break;
            }
            for record in &page {
                let problem = if record.seq != expected_seq {
                    Some(format!("record {expected_seq} is missing (next is {})", record.seq))
                } else if record.prev != prev {
                    Some("its link to the previous record does not match".to_string())
                } else if secret.chain(&prev, &record.fields()) != record.mac {
                    Some("its contents do not match its MAC (edited, or a different secret)".to_string())
                } else if witness.is_some_and(|w| w.seq == record.seq && w.mac != record.mac) {
                    Some("it is not the record the witness outside the catalog saw: the log was rewritten from here".to_string())
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Ok(AuditVerdict { records: expected_seq - 1, broken_at: Some(expected_seq), problem: Some(problem) });
                }
                prev = record.mac.clone();
                expected_seq += 1;
            }
        }
        let records = expected_seq - 1;
        let (head_seq, head_mac) = self.audit_head().await?;
        if head_seq != records || head_mac != prev {
            return Ok(AuditVerdict {
                records,
                broken_at: Some(records + 1),
                problem: Some(format!("the log ends at record {records} but its head says {head_seq}: records were removed from the end")),
            });
        }
        if let Some(w) = witness.filter(|w| w.seq > records) {
            return Ok(AuditVerdict {
                records,
                broken_at: Some(records + 1),
                problem: Some(format!(
                    "the log ends at record {records} but the witness outside the catalog saw record {}: records were removed from the end, or the catalog was rolled back to an older copy",
                    w.seq
                )),
            });
        }
        Ok(AuditVerdict { records, broken_at: None, problem: None })
    }
}

/// Whether a subject with this keyed hash was erased.
async fn erased<'c>(db: impl sqlx::Executor<'c, Database = Any>, subject_hash: &str) -> Result<bool, CatalogError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM erased_subjects WHERE subject_hash = $1")
        .bind(subject_hash)
        .fetch_one(db)
        .await
        .map_err(q("reading erased subjects"))?;
    Ok(n > 0)
}

/// The result of checking the audit chain.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditVerdict {
    /// Records checked and found sound.
    pub records: i64,
    /// The first record that fails, if any.
    pub broken_at: Option<i64>,
    pub problem: Option<String>,
}

impl AuditVerdict {
    pub(crate) fn broken(records: i64, problem: String) -> Self {
        Self { records, broken_at: Some(records + 1), problem: Some(problem) }
    }

    pub fn intact(&self) -> bool {
        self.broken_at.is_none()
    }
}

/// A random suffix that makes each claim's lease id unique.
/// Most values one `IN (…)` list or multi-row statement binds (both databases allow far
/// more; this keeps statements small).
const IN_LIST: usize = 500;

/// `$from, $from+1, …` for `n` values.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// The rows of a multi-row `VALUES` list, `width` parameters each, numbered from `$1`:
/// `value_rows(2, 2)` is `($1, $2), ($3, $4)`.
fn value_rows(rows: usize, width: usize) -> String {
    (0..rows).map(|r| format!("({})", placeholders(r * width + 1, width))).collect::<Vec<_>>().join(", ")
}

fn unique_suffix() -> String {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("the OS random source works");
    hex::encode(raw)
}

#[cfg(test)]
mod tests {
    use super::{Dialect, placeholders, redact_url, value_rows};

    #[test]
    fn bulk_statements_bind_in_order_on_sqlite_and_by_number_on_postgres() {
        let sql = format!("UPDATE t SET a = $1 WHERE b = $2 AND id IN ({})", placeholders(3, 11));
        assert_eq!(Dialect::Postgres.bulk(sql.clone()), sql);
        assert_eq!(Dialect::Sqlite.bulk(sql), format!("UPDATE t SET a = ? WHERE b = ? AND id IN ({})", vec!["?"; 11].join(", ")));
        assert_eq!(Dialect::Sqlite.bulk("SELECT 1".into()), "SELECT 1");
        assert_eq!(value_rows(2, 2), "($1, $2), ($3, $4)");
        // `$10` is one parameter, not `$1` followed by a zero.
        assert_eq!(Dialect::Sqlite.bulk(placeholders(1, 10)).matches('?').count(), 10);
        assert!(!Dialect::Sqlite.bulk(placeholders(1, 10)).contains('0'));
    }

    #[test]
    #[should_panic(expected = "in the order they are bound")]
    fn a_bulk_statement_with_parameters_out_of_order_is_refused() {
        Dialect::Sqlite.bulk("UPDATE t SET a = $2 WHERE b = $1".into());
    }

    /// Every pooled SQLite connection overwrites what it deletes and keeps its statement
    /// journals and temporary tables in memory: in a temporary file they would put the
    /// old rows a statement changed on disk, outside the catalog's own files.
    #[tokio::test]
    async fn every_sqlite_connection_keeps_undo_pages_off_disk_and_overwrites_deletions() {
        let dir = std::env::temp_dir().join(format!("obscura-catalog-pragmas-{}", super::unique_suffix()));
        let catalog = super::Catalog::open(&dir.join("catalog.sqlite").display().to_string(), &crate::retention::Secret::from_bytes(vec![7; 32]).unwrap()).await.unwrap();
        let mut held = Vec::new();
        // All of them at once, so the pool cannot hand the same one back twice.
        for _ in 0..catalog.pool.options().get_max_connections() {
            let mut conn = catalog.pool.acquire().await.unwrap();
            let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&mut *conn).await.unwrap();
            let secure_delete: i64 = sqlx::query_scalar("PRAGMA secure_delete").fetch_one(&mut *conn).await.unwrap();
            assert_eq!((temp_store, secure_delete), (2, 1), "temp_store = MEMORY and secure_delete = ON on every connection");
            held.push(conn);
        }
        drop(held);
        catalog.pool.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("/var/lib/obscura/catalog.db"), "/var/lib/obscura/catalog.db");
    }
}
