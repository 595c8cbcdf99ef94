//! The scheduler: queues expiries, applies legal holds, claims due jobs, runs them with
//! bounded concurrency and records each result with its audit record.
//!
//! Results are recorded a claimed batch at a time, in one transaction with one update of
//! the audit log's head (group commit): per-job transactions serialised every finished
//! job on that one row and on SQLite's write lock (`benches/RESULTS.md`, "Retention at
//! scale"). The records still form one MAC chain, in claim order, so what `audit
//! --verify` proves is unchanged. While one batch's actions run, the batch before it is
//! recorded and, when the running batch is all purges, the batch after it claimed. A
//! batch the database refuses is recorded job by job, so one bad record cannot hold back
//! its neighbours. On SQLite the drain's WAL is copied into the main file by
//! passive checkpoints on a connection of their own, beside the batches, instead of
//! inside every few commits (where they had cost a third of the recording time).
//!
//! Crash safety comes from three rules: a job is marked done only after its action is
//! complete and verified; actions are idempotent (a rerun after `kill -9` at any point
//! finishes the work); and a claim is a lease, so the jobs of a dead instance are taken
//! up again — at start-up on SQLite (which allows one scheduler, enforced by a lock
//! file), after the lease expires on PostgreSQL (where instances share the queue with
//! `FOR UPDATE SKIP LOCKED`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::actions::{self, ActionError, Done};
use super::catalog::{AuditEntry, Catalog, Dialect, Job, NewJob, now_ms};
use super::{Action, Retention, RetentionError};

/// The pause between SQLite checkpoints while a tick drains ([`Retention::checkpoint_until`]).
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(10);

/// How `run` behaves.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Pause between ticks when nothing is due (default 10 s).
    pub interval: Duration,
    /// Stop when nothing is runnable (jobs waiting for a retry or a grace period do not
    /// count) instead of waiting for more.
    pub until_idle: bool,
    /// Jobs claimed at a time, their results recorded in one transaction (default 256:
    /// `benches/RESULTS.md`, "Scale-out"; a batch must finish within the lease).
    pub batch: i64,
    /// Set while this run holds the scheduler lock and runs (after the lock and the
    /// models are taken), cleared when it returns: what a service's readiness reads.
    pub running: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { interval: Duration::from_secs(10), until_idle: false, batch: 256, running: None }
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
        // SQLite copies its WAL into the main file beside the drain, on a connection of its
        // own, rather than inside a commit every few batches (`benches/RESULTS.md`).
        let drained = tokio::sync::Notify::new();
        let drain = async {
            let result = self.drain(options, shutdown, tick).await;
            drained.notify_one();
            result
        };
        futures::join!(drain, self.checkpoint_until(&drained)).0
    }

    /// SQLite: passive checkpoints, one after another with a short pause, until
    /// `drained` is notified. PostgreSQL: nothing. A checkpoint that fails is logged; the
    /// writers' own automatic checkpoints still bound the WAL.
    async fn checkpoint_until(&self, drained: &tokio::sync::Notify) {
        if self.catalog().dialect() != Dialect::Sqlite {
            return;
        }
        loop {
            tokio::select! {
                _ = drained.notified() => return,
                _ = tokio::time::sleep(CHECKPOINT_PAUSE) => {}
            }
            if let Err(error) = self.catalog().checkpoint_beside_writers().await {
                tracing::warn!(%error, "checkpoint beside the drain failed");
            }
        }
    }

    /// Claims, runs and records batches until nothing is runnable or `shutdown`.
    async fn drain<F: std::future::Future<Output = ()> + Unpin>(&self, options: &RunOptions, shutdown: &mut F, mut tick: Tick) -> Result<Tick, RetentionError> {
        let owner = format!("scheduler:{}", self.config().instance);
        // While one batch's actions run, the batch before it is recorded and then (for a
        // batch of purges) the batch after it claimed, one after the other (both write,
        // and SQLite lets one writer in at a time). The recording future is lazy: it
        // makes progress only while it is joined with the next batch's actions, or
        // awaited at the end.
        let mut recording: Option<futures::future::BoxFuture<'_, Vec<JobOutcome>>> = None;
        // Asked to stop: claim nothing more (`None`), and the drain ends there, so
        // `shutdown` is never polled after it resolves. A batch already claimed runs to
        // the end (dropping it half-way would be safe, but would leave its jobs leased).
        let mut claim = async || match futures::FutureExt::now_or_never(&mut *shutdown) {
            Some(()) => None,
            None => Some(self.catalog().claim(&owner, None, options.batch, self.config().lease).await),
        };
        let mut claimed = claim().await;
        // A full first batch means a backlog: the planner learns of it before the next claim.
        let mut first = true;
        loop {
            let jobs = match claimed {
                Some(Ok(jobs)) if !jobs.is_empty() => jobs,
                Some(Err(e)) => {
                    // The batch already acted on is still recorded.
                    tick.summary.add(&count(finish(recording.take()).await));
                    return Err(e.into());
                }
                stopped_or_idle => {
                    tick.summary.add(&count(finish(recording.take()).await));
                    if stopped_or_idle.is_none() {
                        tick.stopped = true;
                    } else {
                        self.forget_finished_subjects(None).await?;
                    }
                    return Ok(tick);
                }
            };
            if std::mem::take(&mut first) && jobs.len() as i64 >= options.batch {
                if let Err(error) = self.catalog().refresh_job_statistics().await {
                    tracing::warn!(%error, "refreshing the job statistics failed");
                }
            }
            // A batch of purges acts in well under a lease: the batch after it is claimed
            // while it acts. One with anonymisations may take minutes: the batch after it
            // is claimed once it is done, so that one still has its whole lease to act in.
            let ahead = jobs.iter().all(|job| purges(self, job));
            let record_then_claim = async {
                let recorded = finish(recording.take()).await;
                let next = if ahead { Some(claim().await) } else { None };
                (recorded, next)
            };
            let (acted, (recorded, claimed_ahead)) = futures::join!(act_all(self, jobs), record_then_claim);
            tick.summary.add(&count(recorded));
            recording = Some(Box::pin(record_all(self, acted)));
            claimed = match claimed_ahead {
                Some(next) => next,
                None => claim().await,
            };
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

/// The outcomes of the batch being recorded, if there is one (its recording runs to the end).
async fn finish(recording: Option<futures::future::BoxFuture<'_, Vec<JobOutcome>>>) -> Vec<JobOutcome> {
    match recording {
        Some(r) => r.await,
        None => Vec::new(),
    }
}

/// What a batch's outcomes add up to (failures logged).
fn count(outcomes: Vec<JobOutcome>) -> RunSummary {
    let mut summary = RunSummary::default();
    for outcome in outcomes {
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

/// Runs claimed jobs, `concurrency` at a time, then records every result in one
/// transaction (group commit, [`record`]) and says what each came to.
pub(crate) async fn execute_all(retention: &Retention, jobs: Vec<Job>) -> Vec<JobOutcome> {
    record_all(retention, act_all(retention, jobs).await).await
}

/// Runs the jobs' actions, purges `purge_concurrency` and anonymisations `concurrency` at
/// a time; records nothing.
async fn act_all(retention: &Retention, jobs: Vec<Job>) -> Vec<Acted> {
    let config = retention.config();
    let (purges, anonymisations): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| purges(retention, job));
    let run = |jobs: Vec<Job>, at_once: usize| {
        futures::stream::iter(jobs)
            .map(|job| async move {
                let result = act(retention, &job).await;
                Acted::new(job, result)
            })
            .buffer_unordered(at_once.max(1))
            .collect::<Vec<Acted>>()
    };
    let (mut acted, anonymised) = futures::join!(run(purges, config.purge_concurrency), run(anonymisations, config.concurrency));
    acted.extend(anonymised);
    acted
}

/// Records the results of a batch in one transaction ([`record`]) and says what each job
/// came to.
async fn record_all(retention: &Retention, acted: Vec<Acted>) -> Vec<JobOutcome> {
    match record(retention, &acted).await {
        Ok(recorded) => acted.into_iter().zip(recorded).map(|(a, r)| a.outcome(r)).collect(),
        // One record the batch could not take (or a lost connection) must not hold back
        // its neighbours: each is recorded on its own.
        Err(error) if acted.len() > 1 => {
            tracing::warn!(%error, jobs = acted.len(), "recording the batch failed; recording its jobs one by one");
            let mut outcomes = Vec::with_capacity(acted.len());
            for a in acted {
                let recorded = record(retention, std::slice::from_ref(&a)).await;
                outcomes.push(match recorded {
                    Ok(mut r) => a.outcome(r.remove(0)),
                    Err(error) => JobOutcome::Unrecorded { upload: a.job.upload.id, error },
                });
            }
            outcomes
        }
        // At most one job here.
        Err(error) => acted.into_iter().next().map(|a| JobOutcome::Unrecorded { upload: a.job.upload.id, error }).into_iter().collect(),
    }
}

/// A job whose action ran, with its result and the message to record if it failed
/// (scrubbed: never with a store key in the clear, since keys often name the person and
/// the audit log keeps what it is given forever).
struct Acted {
    job: Job,
    result: Result<Done, ActionError>,
    error: Option<String>,
}

impl Acted {
    fn new(job: Job, result: Result<Done, ActionError>) -> Self {
        let error = result.as_ref().err().map(|e| super::audit::scrub(&e.to_string(), &job_keys(&job)));
        Acted { job, result, error }
    }

    fn outcome(self, recorded: bool) -> JobOutcome {
        match (recorded, self.result) {
            (false, _) => JobOutcome::Released,
            (true, Ok(done)) => JobOutcome::Done(done),
            (true, Err(_)) => JobOutcome::Failed { upload: self.job.upload.id, message: self.error.unwrap_or_default() },
        }
    }

    /// The audit record of this result.
    fn entry(&self, retention: &Retention) -> AuditEntry {
        let job = &self.job;
        let (outcome, detail) = match &self.result {
            Ok(done) => (done.outcome(), super::audit::scrub(&done.detail(), &job_keys(job))),
            Err(_) => {
                let message = self.error.as_deref().unwrap_or_default();
                ("failed", format!("attempt {}: {message}; retry in {}", job.attempts + 1, humantime::format_duration(Duration::from_secs(backoff(retention, job).as_secs()))))
            }
        };
        AuditEntry {
            event: job.action.as_str(),
            subject_hash: job.upload.subject_hash.clone(),
            upload_id: Some(job.upload.id.clone()),
            rule: Some(format!("{} ({})", job.rule, job.reason.as_str())),
            outcome,
            detail,
        }
    }
}

/// Every store key a job touches (what scrubbing removes from messages).
fn job_keys(job: &Job) -> Vec<&str> {
    job.upload.key.iter().chain(&job.upload.derived).chain(&job.new_key).map(String::as_str).collect()
}

/// How long a failed job waits before its next attempt: doubling per attempt, capped.
fn backoff(retention: &Retention, job: &Job) -> Duration {
    let config = retention.config();
    config.retry_base.saturating_mul(1u32 << job.attempts.clamp(0, 20) as u32).min(config.retry_max)
}

/// Records the results of `acted` in one transaction: each job done (or failed and
/// queued for a retry) under its lease, its upload marked, and its audit record
/// appended, all committed together with one update of the log's head. Says, per job,
/// whether it was recorded; one that was not had lost its lease or changed meanwhile
/// (an anonymise upgraded to a purge), and a changed one is given back so it runs
/// again as what it is now, without waiting for the lease.
async fn record(retention: &Retention, acted: &[Acted]) -> Result<Vec<bool>, RetentionError> {
    let catalog = retention.catalog();
    let now = now_ms();
    let mut tx = catalog.begin().await?;
    // Done jobs, marked per (claim, action, outcome): usually one statement a batch.
    let mut groups: HashMap<(&str, Action, &str), Vec<i64>> = HashMap::new();
    for a in acted {
        if let Ok(done) = &a.result {
            groups.entry((a.job.lease.as_str(), a.job.action, done.outcome())).or_default().push(a.job.id);
        }
    }
    let mut recorded = HashSet::new();
    for ((lease, action, outcome), ids) in groups {
        recorded.extend(catalog.finish_jobs(&mut tx, lease, action, outcome, &ids, now).await?);
    }
    let mut purged = Vec::new();
    for a in acted.iter().filter(|a| recorded.contains(&a.job.id)) {
        match &a.result {
            Ok(Done::Anonymised { key, .. }) => catalog.mark_anonymised(&mut tx, &a.job.upload, key, now).await?,
            Ok(Done::Purged { .. } | Done::PurgedInstead { .. }) => purged.push(a.job.upload.id.as_str()),
            Err(_) => {}
        }
    }
    catalog.mark_purged(&mut tx, &purged, now).await?;
    for a in acted.iter().filter(|a| a.result.is_err()) {
        let retry_at = now + super::catalog::ms(backoff(retention, &a.job));
        if Catalog::fail_job(&mut tx, &a.job, a.error.as_deref().unwrap_or_default(), retry_at).await? {
            recorded.insert(a.job.id);
        }
    }
    let entries: Vec<AuditEntry> = acted.iter().filter(|a| recorded.contains(&a.job.id)).map(|a| a.entry(retention)).collect();
    retention.commit_audited_all(tx, &entries, now).await?;
    for a in acted.iter().filter(|a| a.result.is_ok() && !recorded.contains(&a.job.id)) {
        catalog.release(&a.job).await?;
    }
    Ok(acted.iter().map(|a| recorded.contains(&a.job.id)).collect())
}

/// Whether `job`'s action is a purge ([`act`]).
fn purges(retention: &Retention, job: &Job) -> bool {
    // The policy no longer anonymises (the job predates a policy change): the stronger
    // action keeps the promise.
    job.action == Action::Purge || !retention.inner.anonymises
}

async fn act(retention: &Retention, job: &Job) -> Result<Done, ActionError> {
    let store = retention.inner.stores.get(&job.upload.store)?;
    if purges(retention, job) {
        return actions::purge(&store, job).await;
    }
    // A missing model is not the image's fault: the job waits (and is reported) rather
    // than turning into a purge.
    match retention.anonymizer().await {
        Ok(anonymizer) => actions::anonymise(&store, retention.catalog(), anonymizer, job).await,
        Err(e) => Err(ActionError::Anonymizer(e.to_string())),
    }
}
