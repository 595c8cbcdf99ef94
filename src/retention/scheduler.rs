//! The scheduler: queues expiries, applies legal holds, claims due jobs, runs them with
//! bounded concurrency and records each result with its audit record in one transaction.
//!
//! Crash safety comes from three rules: a job is marked done only after its action is
//! complete and verified; actions are idempotent (a rerun after `kill -9` at any point
//! finishes the work); and a claim is a lease, so the jobs of a dead instance are taken
//! up again — at start-up on SQLite (which allows one scheduler, enforced by a lock
//! file), after the lease expires on PostgreSQL (where instances share the queue with
//! `FOR UPDATE SKIP LOCKED`).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::actions::{self, ActionError, Done};
use super::catalog::{AuditEntry, Catalog, Dialect, Job, NewJob, now_ms};
use super::{Action, Retention, RetentionError};

/// How `run` behaves.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Pause between ticks when nothing is due (default 10 s).
    pub interval: Duration,
    /// Stop when nothing is runnable (jobs waiting for a retry or a grace period do not
    /// count) instead of waiting for more.
    pub until_idle: bool,
    /// Jobs claimed at a time (default 64).
    pub batch: i64,
    /// Set while this run holds the scheduler lock and runs (after the lock and the
    /// models are taken), cleared when it returns: what a service's readiness reads.
    pub running: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { interval: Duration::from_secs(10), until_idle: false, batch: 64, running: None }
    }
}

/// Clears [`RunOptions::running`] however `run` returns.
struct Running<'a>(Option<&'a AtomicBool>);

impl<'a> Running<'a> {
    fn start(flag: Option<&'a Arc<AtomicBool>>) -> Self {
        let flag = flag.map(|f| &**f);
        if let Some(f) = flag {
            f.store(true, Ordering::SeqCst);
        }
        Running(flag)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            f.store(false, Ordering::SeqCst);
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub expiries_queued: u64,
    pub purged: u64,
    pub anonymised: u64,
    /// Anonymisations that failed and were purged instead.
    pub purged_instead: u64,
    /// Attempts that failed and will be retried.
    pub failed_attempts: u64,
}

/// Holds the SQLite scheduler lock while alive (released by the OS if the process dies).
struct InstanceLock {
    _file: Option<File>,
}

fn lock_instance(catalog: &Catalog, url: &str) -> Result<InstanceLock, RetentionError> {
    if catalog.dialect() != Dialect::Sqlite {
        return Ok(InstanceLock { _file: None });
    }
    let db = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    // The file's real path: a catalog opened through a link must find the same lock.
    let db = std::fs::canonicalize(db).map_or_else(|_| db.to_string(), |p| p.display().to_string());
    let path = format!("{db}.scheduler-lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| RetentionError::Io(format!("{path}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(InstanceLock { _file: Some(file) }),
        Err(std::fs::TryLockError::WouldBlock) => Err(RetentionError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(RetentionError::Io(format!("{path}: {e}"))),
    }
}

impl Retention {
    /// The scheduler loop: tick, sleep `interval` when idle, until `shutdown` resolves
    /// (jobs in flight finish first) or, with `until_idle`, until nothing is runnable.
    pub async fn run(&self, options: &RunOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<RunSummary, RetentionError> {
        let _lock = lock_instance(self.catalog(), &self.config().catalog)?;
        if self.inner.anonymises {
            self.anonymizer().await?;
        }
        if self.catalog().dialect() == Dialect::Sqlite {
            // We hold the only scheduler lock: leases left by schedulers are stale.
            let released = self.catalog().release_scheduler_leases().await?;
            if released > 0 {
                tracing::info!(released, "took back jobs claimed by a scheduler that stopped");
            }
        }
        let _running = Running::start(options.running.as_ref());
        // The policy is read once per process: a class it dropped is found here, once.
        let unaccounted = self.unaccounted().await?;
        self.release_unnamed_holds(&unaccounted.iter().map(|u| u.class.clone()).collect::<Vec<_>>()).await?;
        for u in unaccounted {
            tracing::error!(
                class = %u.class,
                uploads = u.uploads,
                "uploads of a class the policy does not name never expire: put [classes.{}] back in the policy, or erase them",
                u.class
            );
        }
        let mut total = RunSummary::default();
        tokio::pin!(shutdown);
        loop {
            let tick = self.tick_inner(options, &mut shutdown).await?;
            let done = &tick.summary;
            let busy = done.purged + done.anonymised + done.purged_instead + done.failed_attempts > 0;
            total.add(done);
            if tick.stopped {
                return Ok(total);
            }
            if options.until_idle && !busy {
                return Ok(total);
            }
            if !busy {
                tokio::select! {
                    _ = &mut shutdown => return Ok(total),
                    _ = tokio::time::sleep(options.interval) => {}
                }
            }
        }
    }

    /// One pass: queue expiries, apply holds, run everything runnable now.
    pub async fn tick(&self, options: &RunOptions) -> Result<RunSummary, RetentionError> {
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        Ok(self.tick_inner(options, &mut never).await?.summary)
    }

    async fn tick_inner<F: std::future::Future<Output = ()> + Unpin>(&self, options: &RunOptions, shutdown: &mut F) -> Result<Tick, RetentionError> {
        let now = now_ms();
        let mut tick = Tick::default();
        for (class, rule) in &self.policy().classes {
            self.catalog().apply_hold(class, rule.legal_hold).await?;
            let Some(max_age) = rule.max_age else { continue };
            let age = super::catalog::ms(max_age);
            let name = format!("{class}.max_age");
            let job = NewJob { action: rule.on_expiry, reason: super::Reason::Expiry, rule: &name, due_at: 0, held: rule.legal_hold };
            tick.summary.expiries_queued += self.catalog().enqueue_expired(class, age, now - age, &job, now).await?;
        }
        let owner = format!("scheduler:{}", self.config().instance);
        loop {
            // Asked to stop: claim nothing more. A batch already claimed runs to the end
            // (dropping it half-way would be safe, but would leave its jobs leased).
            if futures::FutureExt::now_or_never(&mut *shutdown).is_some() {
                tick.stopped = true;
                return Ok(tick);
            }
            let jobs = self.catalog().claim(&owner, None, options.batch, self.config().lease).await?;
            if jobs.is_empty() {
                self.forget_finished_subjects(None).await?;
                return Ok(tick);
            }
            let results = execute_counted(self, jobs).await;
            tick.summary.add(&results);
        }
    }
}

#[derive(Default)]
struct Tick {
    summary: RunSummary,
    stopped: bool,
}

impl RunSummary {
    pub(crate) fn add(&mut self, other: &RunSummary) {
        self.expiries_queued += other.expiries_queued;
        self.purged += other.purged;
        self.anonymised += other.anonymised;
        self.purged_instead += other.purged_instead;
        self.failed_attempts += other.failed_attempts;
    }
}

/// What running one claimed job came to.
#[derive(Debug)]
pub(crate) enum JobOutcome {
    /// Carried out, and recorded with its audit record.
    Done(Done),
    /// Changed hands or kind meanwhile: nothing recorded; it runs again as what it is now.
    Released,
    /// The action failed: recorded, audited and queued for a retry. `message` names no
    /// store key.
    Failed { upload: String, message: String },
    /// The action may have happened but its result could not be recorded: the lease
    /// expires and the job runs again, which the actions allow.
    Unrecorded { upload: String, error: RetentionError },
}

impl std::fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobOutcome::Done(done) => write!(f, "{}", done.outcome()),
            JobOutcome::Released => write!(f, "released"),
            JobOutcome::Failed { upload, message } => write!(f, "upload {upload}: {message}"),
            JobOutcome::Unrecorded { upload, error } => write!(f, "upload {upload}: recording the result: {error}"),
        }
    }
}

async fn execute_counted(retention: &Retention, jobs: Vec<Job>) -> RunSummary {
    let mut summary = RunSummary::default();
    for outcome in execute_all(retention, jobs).await {
        match outcome {
            JobOutcome::Done(Done::Purged { .. }) => summary.purged += 1,
            JobOutcome::Done(Done::Anonymised { .. }) => summary.anonymised += 1,
            JobOutcome::Done(Done::PurgedInstead { .. }) => summary.purged_instead += 1,
            JobOutcome::Released => {}
            failed @ (JobOutcome::Failed { .. } | JobOutcome::Unrecorded { .. }) => {
                tracing::warn!("{failed}");
                summary.failed_attempts += 1;
            }
        }
    }
    summary
}

/// Runs claimed jobs, `concurrency` at a time, and says what each came to.
pub(crate) async fn execute_all(retention: &Retention, jobs: Vec<Job>) -> Vec<JobOutcome> {
    futures::stream::iter(jobs).map(|job| run_job(retention, job)).buffer_unordered(retention.config().concurrency.max(1)).collect().await
}

/// Executes one job and records the outcome (or the failure) with its audit record.
async fn run_job(retention: &Retention, job: Job) -> JobOutcome {
    let result = act(retention, &job).await;
    let subject_hash = job.upload.subject_hash.clone();
    let now = now_ms();
    // Messages as logged, stored and returned: never with a store key in the clear
    // (keys often name the person, and the audit log keeps what it is given forever).
    let keys: Vec<&str> = job.upload.key.iter().chain(&job.upload.derived).chain(&job.new_key).map(String::as_str).collect();
    let error = result.as_ref().err().map(|e| super::audit::scrub(&e.to_string(), &keys));
    let record = async {
        let mut tx = retention.catalog().begin().await?;
        let entry = match &result {
            Ok(done) => {
                if !Catalog::finish_job(&mut tx, &job, done.outcome(), now).await? {
                    // Changed meanwhile (an anonymise upgraded to a purge): give it back so
                    // it runs again as what it is now, without waiting for the lease.
                    Catalog::rollback(tx).await?;
                    retention.catalog().release(&job).await?;
                    return Ok::<_, super::RetentionError>(None);
                }
                match done {
                    Done::Anonymised { key, .. } => retention.catalog().mark_anonymised(&mut tx, &job.upload, key, now).await?,
                    Done::Purged { .. } | Done::PurgedInstead { .. } => Catalog::mark_purged(&mut tx, &job.upload.id, now).await?,
                }
                let entry = AuditEntry {
                    event: job.action.as_str(),
                    subject_hash: subject_hash.clone(),
                    upload_id: Some(job.upload.id.clone()),
                    rule: Some(format!("{} ({})", job.rule, job.reason.as_str())),
                    outcome: done.outcome(),
                    detail: super::audit::scrub(&done.detail(), &keys),
                };
                entry
            }
            Err(_) => {
                let message = error.as_deref().unwrap_or_default();
                let config = retention.config();
                let backoff = config.retry_base.saturating_mul(1u32 << job.attempts.clamp(0, 20) as u32).min(config.retry_max);
                let retry_at = now + super::catalog::ms(backoff);
                if !Catalog::fail_job(&mut tx, &job, message, retry_at).await? {
                    Catalog::rollback(tx).await?;
                    return Ok(None);
                }
                let entry = AuditEntry {
                    event: job.action.as_str(),
                    subject_hash: subject_hash.clone(),
                    upload_id: Some(job.upload.id.clone()),
                    rule: Some(format!("{} ({})", job.rule, job.reason.as_str())),
                    outcome: "failed",
                    detail: format!("attempt {}: {message}; retry in {}", job.attempts + 1, humantime::format_duration(Duration::from_secs(backoff.as_secs()))),
                };
                entry
            }
        };
        retention.commit_audited(tx, &entry, now).await?;
        Ok(Some(()))
    };
    match record.await {
        Ok(Some(())) => match result {
            Ok(done) => JobOutcome::Done(done),
            Err(_) => JobOutcome::Failed { upload: job.upload.id, message: error.unwrap_or_default() },
        },
        Ok(None) => JobOutcome::Released,
        Err(error) => JobOutcome::Unrecorded { upload: job.upload.id, error },
    }
}

async fn act(retention: &Retention, job: &Job) -> Result<Done, ActionError> {
    let store = retention.inner.stores.get(&job.upload.store)?;
    match job.action {
        Action::Purge => actions::purge(&store, job).await,
        // The policy no longer anonymises (the job predates a policy change): the
        // stronger action keeps the promise.
        Action::Anonymise if !retention.inner.anonymises => actions::purge(&store, job).await,
        // A missing model is not the image's fault: the job waits (and is reported) rather
        // than turning into a purge.
        Action::Anonymise => match retention.anonymizer().await {
            Ok(anonymizer) => actions::anonymise(&store, retention.catalog(), anonymizer, job).await,
            Err(e) => Err(ActionError::Anonymizer(e.to_string())),
        },
    }
}
