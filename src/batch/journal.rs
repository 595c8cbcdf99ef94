//! The batch journal: a SQLite file recording the outcome of every object, so a rerun
//! after a crash or `kill -9` skips finished work. An object is recorded `done` only
//! after its anonymised copy is fully written; a crash between the write and the record
//! means that one object is done again (the write is atomic, so never half).
//!
//! Each record keeps the version of the object it is about (the S3 ETag, or a folder
//! file's inode-mtime-size tag): the source as read, or in place, the anonymised object
//! as written. An object counts as finished only while the store still lists that
//! version, so a photo uploaded again under a key that was cleaned before (a new raw
//! photo at the same name) is anonymised by the next run, not reported "already done".

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// Anonymised and written.
    Done { regions: usize },
    /// Nothing written: the reason (fail closed).
    Failed { error: String },
    /// Not an image (by content): left alone.
    Skipped { reason: String },
}

impl Outcome {
    fn status(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "done",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

/// Objects per status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal {path} is in use by another batch run ({holder}); wait for it to finish, or split the work with --shard")]
    Locked { path: String, holder: String },
    #[error("journal {path} is a symbolic link; a journal is never written through one (it could lead anywhere)")]
    Link { path: String },
}

/// A journal file (created on first use), held by one run at a time: two runs on the
/// same journal would each anonymise every object (and race on each output), so the
/// second is refused with who holds it. The lock is an OS file lock on `JOURNAL.lock`,
/// released when the process ends, however it ends.
#[derive(Clone, Debug)]
pub struct Journal {
    pool: SqlitePool,
    path: String,
    _lock: std::sync::Arc<std::fs::File>,
}

/// Takes the run lock beside the journal, writing this process's id and host into it.
fn lock(path: &Path) -> Result<std::fs::File, JournalError> {
    use std::io::{Read, Seek, Write};
    let name = path.display().to_string();
    let io = |e: std::io::Error| JournalError::Db { path: name.clone(), source: sqlx::Error::Io(e) };
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lock_path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = if holder.trim().is_empty() { "holder unknown".to_string() } else { holder.trim().to_string() };
            return Err(JournalError::Locked { path: name, holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "this host".into());
    file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "pid {} on {host}", std::process::id())).map_err(io)?;
    Ok(file)
}

impl Journal {
    pub async fn open(path: &Path) -> Result<Self, JournalError> {
        let name = path.display().to_string();
        let err = |source| JournalError::Db { path: name.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(sqlx::Error::Io(e)))?;
        }
        // The journal, SQLite's files beside it and the lock file are written: none may
        // be a link planted to make this run overwrite a file elsewhere.
        for suffix in ["", "-wal", "-shm", "-journal", ".lock"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            if std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(JournalError::Link { path: std::path::PathBuf::from(file).display().to_string() });
            }
        }
        let lock = lock(path)?;
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A committed record survives a process kill; FULL also survives power loss.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS objects (
                key TEXT PRIMARY KEY,
                status TEXT NOT NULL CHECK (status IN ('done', 'failed', 'skipped')),
                regions INTEGER,
                detail TEXT,
                version TEXT,
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            )",
        )
        .execute(&pool)
        .await
        .map_err(err)?;
        // A journal written before versions were recorded: its records name no version, so
        // each of its objects is done once more, and recorded with its version then.
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('objects')").fetch_all(&pool).await.map_err(err)?;
        if !columns.iter().any(|c| c == "version") {
            sqlx::query("ALTER TABLE objects ADD COLUMN version TEXT").execute(&pool).await.map_err(err)?;
        }
        Ok(Self { pool, path: name, _lock: std::sync::Arc::new(lock) })
    }

    fn err(&self, source: sqlx::Error) -> JournalError {
        JournalError::Db { path: self.path.clone(), source }
    }

    /// True when `key` was anonymised and written (or skipped as not an image) before, at
    /// the `version` the store lists now. An unknown version is never finished.
    pub async fn is_finished(&self, key: &str, version: Option<&str>) -> Result<bool, JournalError> {
        let Some(version) = version else { return Ok(false) };
        let row: Option<String> = sqlx::query_scalar("SELECT status FROM objects WHERE key = ? AND version = ?")
            .bind(key)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(matches!(row.as_deref(), Some("done" | "skipped")))
    }

    /// Records what happened to `key`; `version` is the object's version that the record
    /// is about (see the module docs), `None` for a failure.
    pub async fn record(&self, key: &str, outcome: &Outcome, version: Option<&str>) -> Result<(), JournalError> {
        let (regions, detail) = match outcome {
            Outcome::Done { regions } => (Some(*regions as i64), None),
            Outcome::Failed { error } => (None, Some(error.as_str())),
            Outcome::Skipped { reason } => (None, Some(reason.as_str())),
        };
        sqlx::query(
            "INSERT INTO objects (key, status, regions, detail, version) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET status = excluded.status, regions = excluded.regions,
                detail = excluded.detail, version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(outcome.status())
        .bind(regions)
        .bind(detail)
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn counts(&self) -> Result<Counts, JournalError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM objects GROUP BY status").fetch_all(&self.pool).await.map_err(|e| self.err(e))?;
        let mut c = Counts::default();
        for (status, n) in rows {
            match status.as_str() {
                "done" => c.done = n as u64,
                "failed" => c.failed = n as u64,
                _ => c.skipped = n as u64,
            }
        }
        Ok(c)
    }

    /// Objects whose last attempt failed, with the reason, by key.
    pub async fn failures(&self) -> Result<Vec<(String, String)>, JournalError> {
        sqlx::query_as("SELECT key, COALESCE(detail, '') FROM objects WHERE status = 'failed' ORDER BY key")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }
}
