//! Batch anonymisation from one [`Store`] to another: list → fetch → decode → detect →
//! redact → encode → put, resumable through a [`Journal`], deterministic shards.
//!
//! Objects stream through a bounded window (`in_flight`), so memory stays flat whatever
//! the number of objects: the listing is consumed lazily, each object is fetched, handed
//! to the anonymiser (which runs the CPU stages on tokio's blocking pool, at most
//! `Config::max_concurrency` at once) and written, while the next objects are already
//! being fetched. Fail closed: an object whose anonymisation or write fails is recorded
//! as failed with its reason, and nothing is written for it.

pub mod journal;

use std::time::Instant;

use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

pub use self::journal::{Counts, Journal, JournalError, Outcome};
use crate::pipeline::Anonymizer;
use crate::store::{Entry, Problem, Store, StoreError};

/// Where journals live inside a local destination (never listed as input).
pub const JOURNAL_DIR: &str = ".obscura";

/// One of N deterministic parts of the key space (`--shard i/N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected i/N, e.g. 0/4")?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| "i is not a number")?, n.trim().parse().map_err(|_| "N is not a number")?);
        if count == 0 || index >= count {
            return Err(format!("need 0 <= i < N, got {index}/{count}"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// True when `key` belongs to this shard: the first 8 bytes of SHA-256(key), mod N.
    /// Stable across machines, versions and listing orders.
    pub fn contains(&self, key: &str) -> bool {
        let digest = Sha256::digest(key.as_bytes());
        let v = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        v % self.count as u64 == self.index as u64
    }
}

/// Which keys a batch takes.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    pub shard: Shard,
}

impl Filter {
    /// `include`/`exclude` are globs over keys (`**/*.jpg`, `raw/**`); with no include,
    /// every key is a candidate (image types are recognised by content, not name).
    pub fn new(include: &[String], exclude: &[String], shard: Shard) -> Result<Self, globset::Error> {
        let set = |globs: &[String]| -> Result<Option<GlobSet>, globset::Error> {
            if globs.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for g in globs {
                b.add(Glob::new(g)?);
            }
            Ok(Some(b.build()?))
        };
        Ok(Self { include: set(include)?, exclude: set(exclude)?, shard })
    }

    pub fn accepts(&self, key: &str) -> bool {
        !key.starts_with(&format!("{JOURNAL_DIR}/"))
            && self.include.as_ref().is_none_or(|s| s.is_match(key))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(key))
            && self.shard.contains(key)
    }
}

/// Why a batch could not run at all (per-object problems are [`Outcome`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Invalid(String),
}

/// Settings of one batch run.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub filter: Filter,
    /// Write over the source objects (only when the destination is the source).
    pub in_place: bool,
    /// Objects fetched, processed or written at once (bounds memory).
    pub in_flight: usize,
}

/// One finished object, as reported to the caller.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObjectReport {
    pub key: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub ms: f64,
}

/// What a run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Objects finished in this run, by outcome.
    pub this_run: Counts,
    /// Objects skipped because an earlier run finished them.
    pub already_done: u64,
    /// Everything the journal holds after the run.
    pub journal: Counts,
    /// Keys whose last attempt failed, with the reason.
    pub failures: Vec<(String, String)>,
    pub seconds: f64,
}

/// Anonymises every accepted object of `src` into `dst` under the same key (a HEIC or
/// AVIF object is written as JPEG under its own key: a key is what the store's users hold).
/// `on_object` sees each finished object (progress, reports); `on_listed` each key
/// accepted for work, as the listing proceeds.
pub async fn run(
    anonymizer: &Anonymizer,
    src: &Store,
    dst: &Store,
    journal: &Journal,
    options: &BatchOptions,
    mut on_listed: impl FnMut(&str),
    mut on_object: impl FnMut(&ObjectReport),
) -> Result<Summary, BatchError> {
    if src.same_place(dst) && !options.in_place {
        return Err(BatchError::Invalid(format!("destination {} is the source: pass --in-place to replace the originals", dst.location())));
    }
    if !src.same_place(dst) && options.in_place {
        return Err(BatchError::Invalid("--in-place needs the destination to be the source".into()));
    }
    // A destination folder inside the source folder must not be read back as input.
    let dst_inside_src = match (src.local_root(), dst.local_root()) {
        (Some(s), Some(d)) if d != s && d.starts_with(s) => Some(format!("{}/", d.strip_prefix(s).unwrap_or(d).to_string_lossy())),
        _ => None,
    };
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut already_done = 0u64;
    // Keys to do, lazily: listing errors stop the run (a partial listing would look done).
    let mut listing = src.list();
    let (tx, rx) = tokio::sync::mpsc::channel::<Entry>(options.in_flight.max(1) * 4);
    let lister = async {
        while let Some(entry) = listing.next().await {
            let entry = entry?;
            if !options.filter.accepts(&entry.key) || dst_inside_src.as_ref().is_some_and(|p| entry.key.starts_with(p.as_str())) {
                continue;
            }
            if journal.is_finished(&entry.key, entry.version.as_deref()).await? {
                already_done += 1;
                continue;
            }
            on_listed(&entry.key);
            if tx.send(entry).await.is_err() {
                break;
            }
        }
        drop(tx);
        Ok::<(), BatchError>(())
    };
    let worker = async {
        let mut rx = rx;
        let mut work = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|entry: Entry| async move {
                let t = Instant::now();
                // An odd entry (a link, an unusable name, a folder marker) is reported
                // with its reason, and the rest go on.
                let (outcome, version) = match entry.problem {
                    Some(Problem::Skip(reason)) => (Outcome::Skipped { reason }, entry.version.clone()),
                    Some(Problem::Fail(error)) => (Outcome::Failed { error }, None),
                    None => process(anonymizer, src, dst, &entry.key, options.in_place).await,
                };
                (ObjectReport { key: entry.key, outcome, ms: t.elapsed().as_secs_f64() * 1000.0 }, version)
            })
            .buffer_unordered(options.in_flight.max(1));
        while let Some((report, version)) = work.next().await {
            journal.record(&report.key, &report.outcome, version.as_deref()).await?;
            match report.outcome {
                Outcome::Done { .. } => summary.this_run.done += 1,
                Outcome::Failed { .. } => summary.this_run.failed += 1,
                Outcome::Skipped { .. } => summary.this_run.skipped += 1,
            }
            on_object(&report);
        }
        Ok::<(), BatchError>(())
    };
    let (listed, worked) = tokio::join!(lister, worker);
    listed?;
    worked?;
    summary.already_done = already_done;
    summary.journal = journal.counts().await?;
    summary.failures = journal.failures().await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// One object end to end. Never writes anything unless anonymisation succeeded; in
/// place, never overwrites an object that changed since it was read. Returns the outcome
/// and the version the journal records with it: the source as read, or in place the
/// object as written (what the next listing will show if nobody replaces it).
async fn process(anonymizer: &Anonymizer, src: &Store, dst: &Store, key: &str, in_place: bool) -> (Outcome, Option<String>) {
    let (bytes, version) = match src.get_versioned(key).await {
        Ok(b) => b,
        Err(e) => return (Outcome::Failed { error: e.to_string() }, None),
    };
    if crate::image_io::format_of(&bytes).is_none() {
        return (Outcome::Skipped { reason: "not an image (by content)".into() }, version);
    }
    let out = match anonymizer.anonymize_async(bytes.to_vec()).await {
        Ok(out) => out,
        Err(e) => return (Outcome::Failed { error: e.to_string() }, None),
    };
    let regions = out.report.regions.len();
    if !in_place {
        return match dst.put(key, out.bytes).await {
            Ok(_) => (Outcome::Done { regions }, version),
            Err(e) => (Outcome::Failed { error: e.to_string() }, None),
        };
    }
    match dst.replace(key, out.bytes, version.as_deref()).await {
        Ok(written) => (Outcome::Done { regions }, written),
        Err(e) => (Outcome::Failed { error: e.to_string() }, None),
    }
}

/// Removes staged files (`name#123`) a killed run left in a local destination, for keys
/// of this shard only (other shards may be writing theirs right now).
pub fn clean_staged(dst: &Store, shard: Shard) -> std::io::Result<usize> {
    let Some(root) = dst.local_root() else { return Ok(0) };
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((stem, suffix)) = name.rsplit_once('#') else { continue };
            if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let rel = path.parent().unwrap_or(root).strip_prefix(root).unwrap_or(std::path::Path::new("")).join(stem);
            let key = rel.to_string_lossy().replace('\\', "/");
            if shard.contains(&key) {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
