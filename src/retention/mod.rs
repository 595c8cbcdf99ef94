//! Retention and erasure: a catalog of stored uploads, a policy saying how long each class
//! is kept and what happens on expiry and unsubscribe, a scheduler that purges or
//! irreversibly anonymises what falls due, and a tamper-evident audit log.
//!
//! Owns: the catalog (`catalog`), the policy file ([`policy`]), store actions
//! ([`actions`]), the job loop ([`scheduler`]) and the audit log's cryptography
//! ([`audit`]). Does not own: pixels (the [`Anonymizer`]) or store
//! access ([`store`](crate::store)).
//!
//! ```no_run
//! # async fn f() -> Result<(), obscura::retention::RetentionError> {
//! use obscura::retention::{NewUpload, Policy, Retention, RetentionConfig, Secret};
//! let policy = Policy::load("retention.toml".as_ref())?;
//! let secret = Secret::load_or_create("/etc/obscura/audit.key".as_ref())?;
//! let retention = Retention::open(RetentionConfig::new("catalog.db", policy, secret)).await?;
//! retention.register(&NewUpload::new("upload-1", "alice", "/srv/uploads", "alice/1.jpg", "photo")).await?;
//! // Purges (or anonymises and unlinks) Alice's uploads before it returns:
//! let summary = retention.unsubscribe("alice").await?;
//! assert_eq!(summary.pending, 0);
//! # Ok(()) }
//! ```

pub mod actions;
pub mod audit;
mod catalog;
pub mod policy;
pub mod residency;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use audit::{AuditFields, Secret, SecretError, Witness, WitnessError, WitnessedHead, normalize_subject};
pub use catalog::{AuditRecord, AuditVerdict, CatalogError, Reason, Upload, UploadState, now_ms};
pub(crate) use catalog::Catalog;
pub use policy::{Action, ClassRule, Policy, PolicyError};
pub use scheduler::{RunOptions, RunSummary};
use scheduler::JobOutcome;

use crate::store::{StoreError, StoreOptions};
use crate::{Anonymizer, Config};
use catalog::{AuditEntry, NewJob, Scope};

/// Why a retention call failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the policy has no class {0:?}")]
    UnknownClass(String),
    #[error("unknown subject {0:?}")]
    UnknownSubject(String),
    #[error("unknown upload {0:?}")]
    UnknownUpload(String),
    #[error("upload {id:?} is already registered (or its store and key are)")]
    Duplicate { id: String },
    #[error("subject {0:?} has unsubscribed; new uploads for them are refused")]
    Unsubscribed(String),
    #[error("that subject's data was erased; new uploads for them are refused")]
    Erased,
    #[error("invalid upload {id:?}: {message}")]
    InvalidUpload { id: String, message: String },
    #[error("anonymise actions need the anonymiser: {0}")]
    Anonymizer(crate::Error),
    #[error("another scheduler holds {path} (one scheduler per SQLite catalog; use PostgreSQL for several)")]
    Locked { path: String },
    #[error(transparent)]
    Witness(#[from] WitnessError),
    #[error("the export destination {0} is not empty; an export goes to a new, empty place so that it holds one person's data only")]
    ExportNotEmpty(String),
    /// Data residency: the write would keep an upload outside the locations its class
    /// allows (see [`residency`]).
    #[error("upload {id:?} (class {class}): {message}")]
    Residency { id: String, class: String, message: String },
    #[error("{0}")]
    Io(String),
}

/// Everything a [`Retention`] needs.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// Catalog: `postgres://…`, `sqlite://PATH` or a file path.
    pub catalog: String,
    pub policy: Policy,
    /// Per-deployment secret for the audit log's subject hashes and MAC chain.
    pub secret: Secret,
    /// Where the audit log's head is witnessed outside the catalog (see [`Witness`]);
    /// `None` turns the truncation and rollback check off. The CLI puts it beside the
    /// secret file.
    pub audit_witness: Option<std::path::PathBuf>,
    /// Retries and S3 settings for the upload stores.
    pub store_options: StoreOptions,
    /// Anonymiser settings (models, runtime); retention always applies
    /// [`actions::strongest`] on top.
    pub anonymizer: Config,
    /// This instance's name in leases (default `host:pid`).
    pub instance: String,
    /// How long a claimed job is reserved for its instance (default 5 min). A crashed
    /// instance's jobs are taken up by others after this.
    pub lease: Duration,
    /// First delay before retrying a failed action, doubled per attempt up to
    /// `retry_max` (defaults 30 s and 1 h).
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Anonymisations run at once (default 8): each decodes, detects and encodes an image.
    pub concurrency: usize,
    /// Purges run at once (default 32). A purge waits on its store (a folder's deletes,
    /// S3 round trips), not on the CPU: with eight at once, a 2-core VM's drain waited on
    /// its disk's deletes (`benches/RESULTS.md`, "Retention at scale").
    pub purge_concurrency: usize,
}

impl RetentionConfig {
    /// How long a claimed job is reserved by default.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);
    /// First retry delay by default.
    pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(30);
    /// Longest retry delay by default.
    pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
    /// Anonymisations at once by default.
    pub const DEFAULT_CONCURRENCY: usize = 8;
    /// Purges at once by default.
    pub const DEFAULT_PURGE_CONCURRENCY: usize = 32;

    pub fn new(catalog: &str, policy: Policy, secret: Secret) -> Self {
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into());
        Self {
            catalog: catalog.to_string(),
            policy,
            secret,
            audit_witness: None,
            store_options: StoreOptions::default(),
            anonymizer: Config::default(),
            instance: format!("{host}:{}", std::process::id()),
            lease: Self::DEFAULT_LEASE,
            retry_base: Self::DEFAULT_RETRY_BASE,
            retry_max: Self::DEFAULT_RETRY_MAX,
            concurrency: Self::DEFAULT_CONCURRENCY,
            purge_concurrency: Self::DEFAULT_PURGE_CONCURRENCY,
        }
    }
}

/// A new upload to catalogue.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUpload {
    /// The service's id for the upload (unique).
    pub id: String,
    pub subject: String,
    /// Store location: a folder or `s3://bucket/prefix`.
    pub store: String,
    pub key: String,
    /// A class named in the policy.
    pub class: String,
    /// Unix ms; default now. In JSON also an RFC 3339 string (see [`parse_time`]). From
    /// 1970 up to an hour ahead of this machine's clock: an upload dated later would
    /// never expire.
    #[serde(default, deserialize_with = "time_field")]
    pub uploaded_at: Option<i64>,
    /// Thumbnails and other copies in the same store, deleted with the original.
    #[serde(default)]
    pub derived: Vec<String>,
}

/// How far ahead of this machine's clock an `uploaded_at` may be (clock skew between hosts).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// A time as the CLI, CSV files and the HTTP service take it: Unix milliseconds, or RFC
/// 3339 in UTC (`2026-01-31T12:00:00Z`). Times before 1970 are refused.
///
/// ```
/// assert_eq!(obscura::retention::parse_time("2026-01-31T12:00:00Z"), Ok(1_769_860_800_000));
/// assert_eq!(obscura::retention::parse_time("1769860800000"), Ok(1_769_860_800_000));
/// assert!(obscura::retention::parse_time("1969-12-31T23:59:59Z").is_err());
/// ```
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| format!("{s:?}: {e}; use RFC 3339 in UTC (2026-01-31T12:00:00Z) or Unix milliseconds"))?;
    let since = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{s:?} is before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| format!("{s:?} is out of range"))
}

fn time_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Time {
        Ms(i64),
        Text(String),
    }
    match <Option<Time> as serde::Deserialize>::deserialize(d)? {
        None => Ok(None),
        Some(Time::Ms(ms)) => Ok(Some(ms)),
        Some(Time::Text(text)) => parse_time(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

impl NewUpload {
    pub fn new(id: &str, subject: &str, store: &str, key: &str, class: &str) -> Self {
        Self {
            id: id.into(),
            subject: subject.into(),
            store: store.into(),
            key: key.into(),
            class: class.into(),
            uploaded_at: None,
            derived: Vec::new(),
        }
    }
}

/// What an event did to the subject's or upload's data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventSummary {
    /// Uploads the event queued an action for.
    pub queued: u64,
    /// Actions finished before the call returned.
    pub done: u64,
    /// Actions waiting under a legal hold.
    pub held: u64,
    /// Actions still to run: after their grace period, or being retried (see `errors`).
    pub pending: u64,
    /// Why actions run now did not finish (the scheduler retries them).
    pub errors: Vec<String>,
}

/// One action the scheduler will take.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Planned {
    pub upload: String,
    /// The subject's keyed hash (the catalog holds no raw ids).
    pub subject_hash: Option<String>,
    pub class: String,
    pub action: Action,
    pub reason: Reason,
    /// When it runs (Unix ms; in the past = due now).
    pub at: i64,
    pub held: bool,
}

/// The dry run of everything due up to a horizon.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    pub purge: u64,
    pub anonymise: u64,
    pub held: u64,
    /// The first actions in time order (at most the limit asked for).
    pub items: Vec<Planned>,
}

/// Counts and the overdue report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Status {
    pub uploads_active: u64,
    pub uploads_anonymised: u64,
    pub uploads_purged: u64,
    pub subjects_subscribed: u64,
    pub subjects_unsubscribed: u64,
    pub jobs_pending: u64,
    pub jobs_held: u64,
    /// Actions due now: pending jobs, plus expiries not queued yet.
    pub jobs_due: u64,
    /// Uploads past their class's `max_age` that no scheduler pass has queued yet
    /// (included in `jobs_due`).
    pub expiries_unqueued: u64,
    /// Actions later than their due time plus the policy deadline: pending jobs, and
    /// expiries not queued yet (computed from the policy, not only from the queue).
    pub overdue: u64,
    /// Due time of the oldest pending action (Unix ms).
    pub oldest_due_at: Option<i64>,
    /// Jobs that failed at least once and are waiting for a retry.
    pub failing: Vec<Failing>,
    /// Active uploads of classes the policy does not name (it was edited after they were
    /// registered). They never expire, since their `max_age` is unknown; unsubscribe,
    /// erasure and wind-down still reach them, by the strictest rule. Not empty: `status`
    /// exits 1.
    pub unaccounted: Vec<Unaccounted>,
    /// Active uploads kept in a store outside the locations their class allows
    /// (registered before the policy said so, or the store was declared elsewhere since).
    /// Not empty: `status` exits 1.
    pub misplaced: Vec<Misplaced>,
}

/// Active uploads of one class in one store outside the locations the class allows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Misplaced {
    pub class: String,
    pub store: String,
    pub uploads: u64,
    /// Where the store is and where the class may be.
    pub reason: String,
}

/// Active uploads of one class the policy does not name.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unaccounted {
    pub class: String,
    pub uploads: u64,
}

/// A job being retried.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failing {
    pub upload: String,
    pub action: String,
    pub attempts: i64,
    pub due_at: i64,
    pub next_try_at: i64,
    pub last_error: String,
}

/// A subject's export (access request): the files and a manifest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Export {
    pub subject: String,
    pub exported_at: i64,
    pub uploads: Vec<ExportedUpload>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportedUpload {
    pub id: String,
    pub class: String,
    pub uploaded_at: i64,
    /// Path inside the export folder.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The retention service: catalog, policy, stores, anonymiser, audit log.
#[derive(Clone)]
pub struct Retention {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention").field("catalog", &self.inner.catalog).field("anonymises", &self.inner.anonymises).finish()
    }
}

struct Inner {
    config: RetentionConfig,
    catalog: Catalog,
    stores: actions::Stores,
    /// Whether the policy can anonymise at all.
    anonymises: bool,
    witness: Option<Witness>,
    /// Built on first use (models take a second to load; `status` and `plan` never need
    /// them) and at the start of `run`, so a missing model stops the scheduler at once.
    anonymizer: tokio::sync::OnceCell<Anonymizer>,
}

fn validate_key(id: &str, key: &str) -> Result<(), RetentionError> {
    let bad = |message: &str| RetentionError::InvalidUpload { id: id.to_string(), message: message.to_string() };
    if id.trim().is_empty() {
        return Err(bad("empty id"));
    }
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(bad("the key must be a relative path without empty, `.` or `..` segments"));
    }
    Ok(())
}

impl Retention {
    /// Opens the catalog (creating and migrating it).
    pub async fn open(config: RetentionConfig) -> Result<Self, RetentionError> {
        // The anonymiser is built on the first anonymise action; its settings are checked now.
        config.anonymizer.validate()?;
        let catalog = Catalog::open(&config.catalog, &config.secret).await?;
        let anonymises = config.policy.classes.values().any(|c| c.on_expiry == Action::Anonymise || c.on_unsubscribe == Action::Anonymise);
        let stores = actions::Stores::new(config.store_options.clone());
        let witness = config.audit_witness.clone().map(Witness::new);
        let retention = Self { inner: Arc::new(Inner { config, catalog, stores, anonymises, witness, anonymizer: tokio::sync::OnceCell::new() }) };
        retention.start_witness().await?;
        Ok(retention)
    }

    /// A deployment's first witness starts at the current head. Over a log that already
    /// has records this is recorded in the log itself, so a witness deleted to hide a
    /// truncation leaves a trace.
    async fn start_witness(&self) -> Result<(), RetentionError> {
        let Some(witness) = &self.inner.witness else { return Ok(()) };
        if witness.read(self.secret())?.is_some() {
            return Ok(());
        }
        let (seq, mac) = self.catalog().audit_head().await?;
        if seq == 0 {
            witness.advance(self.secret(), seq, &mac)?;
            return Ok(());
        }
        tracing::warn!(witness = %witness.path().display(), records = seq, "no audit witness yet: starting one at the current head");
        let entry = AuditEntry {
            event: "audit_witness_started",
            outcome: "done",
            detail: format!("the log had {seq} record(s) before its head was first witnessed outside the catalog"),
            ..Default::default()
        };
        let tx = self.catalog().begin().await?;
        self.commit_audited(tx, &entry, now_ms()).await
    }

    /// Appends `entry` to the audit log as the last step of `tx`, commits, and moves the
    /// witness forward. A witness that cannot be written is logged, not fatal: the
    /// catalog change is already committed.
    pub(crate) async fn commit_audited(&self, tx: sqlx::Transaction<'static, sqlx::Any>, entry: &AuditEntry, now: i64) -> Result<(), RetentionError> {
        self.commit_audited_all(tx, std::slice::from_ref(entry), now).await
    }

    /// [`commit_audited`](Self::commit_audited) for several records in one transaction
    /// (a batch of finished jobs), in order.
    pub(crate) async fn commit_audited_all(&self, mut tx: sqlx::Transaction<'static, sqlx::Any>, entries: &[AuditEntry], now: i64) -> Result<(), RetentionError> {
        if entries.is_empty() {
            return Ok(Catalog::commit(tx).await?);
        }
        let (seq, mac) = self.catalog().append_audit(&mut tx, entries, now).await?;
        Catalog::commit(tx).await?;
        if let Some(witness) = &self.inner.witness
            && let Err(e) = witness.advance(self.secret(), seq, &mac)
        {
            tracing::error!(error = %e, "audit witness not updated");
        }
        Ok(())
    }

    /// The anonymiser in its strongest setting ([`actions::strongest`]), built once.
    pub(crate) async fn anonymizer(&self) -> Result<&Anonymizer, RetentionError> {
        self.inner
            .anonymizer
            .get_or_try_init(|| async {
                let cfg = actions::strongest(self.inner.config.anonymizer.clone());
                tokio::task::spawn_blocking(move || Anonymizer::new(cfg)).await.map_err(|e| RetentionError::Io(e.to_string()))?.map_err(RetentionError::Anonymizer)
            })
            .await
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Whether the catalog answers (for readiness checks).
    pub async fn ping(&self) -> Result<(), RetentionError> {
        Ok(self.catalog().ping().await?)
    }

    /// The catalog's URL, password removed (for logs and reports).
    pub fn catalog_display(&self) -> &str {
        self.inner.catalog.display()
    }

    /// The rule an event applies to uploads of `class`: the policy's, or for a class the
    /// policy no longer names, the strictest: purge at once, with no legal hold (the policy
    /// states none). `status` reports such uploads as unaccounted.
    fn rule_for(&self, class: &str) -> std::borrow::Cow<'_, ClassRule> {
        match self.policy().class(class) {
            Some(rule) => std::borrow::Cow::Borrowed(rule),
            None => std::borrow::Cow::Owned(ClassRule {
                max_age: None,
                on_expiry: Action::Purge,
                on_unsubscribe: Action::Purge,
                grace: Duration::ZERO,
                legal_hold: false,
                locations: Vec::new(),
            }),
        }
    }

    /// What an event's audit detail says about `class`'s rule besides its action.
    fn rule_note(&self, class: &str) -> &'static str {
        match self.policy().class(class) {
            None => " (class not in the policy: strictest rule)",
            Some(rule) if rule.legal_hold => " (legal hold)",
            Some(_) => "",
        }
    }

    /// A hold comes from the policy: jobs held under a class it no longer names are
    /// released (an upload queued while its class had a hold, before the class was removed).
    pub(crate) async fn release_unnamed_holds(&self, classes: &[String]) -> Result<(), RetentionError> {
        for class in classes.iter().filter(|c| self.policy().class(c).is_none()) {
            self.catalog().apply_hold(class, false).await?;
        }
        Ok(())
    }

    /// Active uploads of classes the policy does not name (see [`Status::unaccounted`]).
    pub async fn unaccounted(&self) -> Result<Vec<Unaccounted>, RetentionError> {
        let mut tx = self.catalog().begin().await?;
        let classes = Catalog::active_classes(&mut tx, None).await?;
        Catalog::rollback(tx).await?;
        Ok(classes
            .into_iter()
            .filter(|(class, _)| self.policy().class(class).is_none())
            .map(|(class, uploads)| Unaccounted { class, uploads })
            .collect())
    }

    /// One upload's catalog row (state, class, times), or `None` if it is not catalogued
    /// (never registered, or purged and forgotten).
    pub async fn upload(&self, id: &str) -> Result<Option<Upload>, RetentionError> {
        Ok(self.catalog().upload(id).await?)
    }

    /// `Some("subscribed" | "unsubscribed")` for a known subject, `None` for an unknown
    /// or forgotten one.
    pub async fn subject_state(&self, subject: &str) -> Result<Option<String>, RetentionError> {
        for hash in self.secret().subject_hashes(subject) {
            if let Some(state) = self.catalog().subject_state(&hash).await? {
                return Ok(Some(state));
            }
        }
        Ok(None)
    }

    /// The hashes the catalog holds `subject` under (usually one; see
    /// [`Secret::subject_hashes`]), or [`RetentionError::UnknownSubject`].
    async fn known_hashes(&self, subject: &str) -> Result<Vec<String>, RetentionError> {
        let mut known = Vec::new();
        for hash in self.secret().subject_hashes(subject) {
            if self.catalog().subject_state(&hash).await?.is_some() {
                known.push(hash);
            }
        }
        if known.is_empty() {
            return Err(RetentionError::UnknownSubject(subject.to_string()));
        }
        Ok(known)
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.config.policy
    }

    pub fn config(&self) -> &RetentionConfig {
        &self.inner.config
    }

    fn secret(&self) -> &Secret {
        &self.inner.config.secret
    }

    /// Catalogues one upload.
    pub async fn register(&self, upload: &NewUpload) -> Result<(), RetentionError> {
        self.register_many(std::slice::from_ref(upload)).await
    }

    /// Catalogues uploads in one transaction: all or none.
    pub async fn register_many(&self, uploads: &[NewUpload]) -> Result<(), RetentionError> {
        let now = now_ms();
        for u in uploads {
            validate_key(&u.id, &u.key)?;
            for d in &u.derived {
                validate_key(&u.id, d)?;
            }
            if self.policy().class(&u.class).is_none() {
                return Err(RetentionError::UnknownClass(u.class.clone()));
            }
            if let Some(message) = self.policy().residency_refusal(&u.class, &u.store) {
                return Err(RetentionError::Residency { id: u.id.clone(), class: u.class.clone(), message });
            }
            if let Some(at) = u.uploaded_at {
                if at < 0 {
                    return Err(RetentionError::InvalidUpload { id: u.id.clone(), message: format!("uploaded_at {at} is before 1970") });
                }
                if at > now.saturating_add(catalog::ms(MAX_CLOCK_SKEW)) {
                    return Err(RetentionError::InvalidUpload {
                        id: u.id.clone(),
                        message: format!("uploaded_at {at} is more than an hour ahead of this machine's clock ({now}); an upload dated in the future would not expire on time"),
                    });
                }
            }
            let subject = normalize_subject(&u.subject);
            if subject.is_empty() {
                return Err(RetentionError::InvalidUpload { id: u.id.clone(), message: "empty subject".into() });
            }
            // Upload ids stay in the audit log after erasure: one that names the person
            // would outlive their erasure there.
            if names_subject(&u.id, &u.subject) {
                return Err(RetentionError::InvalidUpload {
                    id: u.id.clone(),
                    message: "the upload id contains the subject id; upload ids are kept in the audit log after erasure, so they must not name the person".into(),
                });
            }
        }
        // A person erased or unsubscribed under a hash from before ids were normalised
        // stays so (see `Secret::subject_hashes`).
        for u in uploads {
            for legacy in self.secret().subject_hashes(&u.subject).iter().skip(1) {
                if self.catalog().subject_erased(legacy).await? {
                    return Err(RetentionError::Erased);
                }
                if self.catalog().subject_state(legacy).await?.is_some_and(|s| s != "subscribed") {
                    return Err(RetentionError::Unsubscribed(u.subject.clone()));
                }
            }
        }
        let mut tx = self.catalog().begin().await?;
        // Each person first, locked for the rest of the transaction: an unsubscribe
        // running at the same time either comes first (and this is refused) or waits and
        // then sees these uploads. Locked in the order of their hashes, so two batches
        // sharing people cannot deadlock.
        let hashes: Vec<String> = uploads.iter().map(|u| self.secret().subject_hash(&u.subject)).collect();
        let mut sorted: Vec<&str> = hashes.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let states = self.catalog().lock_subjects(&mut tx, &sorted, now).await?;
        // Refused for the first person in the order given who may not be registered.
        for (u, hash) in uploads.iter().zip(&hashes) {
            match states[hash].as_deref() {
                None => return Err(RetentionError::Erased),
                Some("subscribed") => {}
                Some(_) => return Err(RetentionError::Unsubscribed(normalize_subject(&u.subject))),
            }
        }
        let rows: Vec<Upload> = uploads
            .iter()
            .zip(hashes)
            .map(|(u, hash)| Upload {
                id: u.id.clone(),
                subject_hash: Some(hash),
                key_names_subject: names_subject(&u.key, &u.subject),
                store: u.store.clone(),
                key: Some(u.key.clone()),
                class: u.class.clone(),
                uploaded_at: u.uploaded_at.unwrap_or(now),
                state: UploadState::Active,
                derived: u.derived.clone(),
            })
            .collect();
        if let Some(id) = self.catalog().insert_uploads(&mut tx, &rows).await? {
            return Err(RetentionError::Duplicate { id });
        }
        Catalog::commit(tx).await?;
        Ok(())
    }

    /// The person left: each of their uploads gets its class's `on_unsubscribe` action
    /// after its `grace`. With no grace the actions run before this returns (failures are
    /// retried by the scheduler and reported in the summary). Calling it again is safe.
    pub async fn unsubscribe(&self, subject: &str) -> Result<EventSummary, RetentionError> {
        self.subject_event(subject, "unsubscribe", None).await
    }

    /// Erasure request: every upload of the person is purged now (legal holds still
    /// apply), whatever the policy's grace or `on_unsubscribe` say.
    pub async fn erase_subject(&self, subject: &str) -> Result<EventSummary, RetentionError> {
        self.subject_event(subject, "erase_subject", Some(Action::Purge)).await
    }

    /// An unsubscribe or erasure for every hash the catalog may hold the person under
    /// (see [`Secret::subject_hashes`]).
    async fn subject_event(&self, subject: &str, event: &'static str, force: Option<Action>) -> Result<EventSummary, RetentionError> {
        let mut total: Option<EventSummary> = None;
        let mut erased = false;
        for hash in self.secret().subject_hashes(subject) {
            match self.subject_event_on(&hash, event, force).await? {
                Some(summary) => {
                    let t = total.get_or_insert_with(EventSummary::default);
                    (t.queued, t.done, t.held, t.pending) = (t.queued + summary.queued, t.done + summary.done, t.held + summary.held, t.pending + summary.pending);
                    t.errors.extend(summary.errors);
                }
                None => erased |= self.catalog().subject_erased(&hash).await?,
            }
        }
        match total {
            Some(summary) => Ok(summary),
            None if erased => Ok(EventSummary::default()),
            None => Err(RetentionError::UnknownSubject(subject.to_string())),
        }
    }

    /// The event for the subject with keyed hash `hash`; `None` if the catalog has no such subject.
    async fn subject_event_on(&self, hash: &str, event: &'static str, force: Option<Action>) -> Result<Option<EventSummary>, RetentionError> {
        let now = now_ms();
        let hash = hash.to_string();
        let mut tx = self.catalog().begin().await?;
        let changed = Catalog::mark_unsubscribed(&mut tx, &hash, now).await?;
        if !changed && self.catalog().subject_state(&hash).await?.is_none() {
            drop(tx);
            return Ok(None);
        }
        let mut summary = EventSummary::default();
        let mut rules = Vec::new();
        let mut unnamed = Vec::new();
        // Every class the person has uploads in, not only those the policy names now.
        for (class, _) in Catalog::active_classes(&mut tx, Some(&hash)).await? {
            if self.policy().class(&class).is_none() {
                unnamed.push(class.clone());
            }
            let rule = self.rule_for(&class);
            let (action, reason, due, name) = match force {
                Some(action) => (action, Reason::EraseSubject, now, format!("erasure request ({class})")),
                None => (rule.on_unsubscribe, Reason::Unsubscribe, now + catalog::ms(rule.grace), format!("{class}.on_unsubscribe")),
            };
            let job = NewJob { action, reason, rule: &name, due_at: due, held: rule.legal_hold };
            let n = Catalog::enqueue_subject_class(&mut tx, &hash, &class, &job, now).await?;
            if n > 0 {
                rules.push(format!("{n} {class} → {}{}", action.as_str(), self.rule_note(&class)));
            }
            summary.queued += n;
        }
        let detail = if rules.is_empty() { "no active uploads".to_string() } else { rules.join(", ") };
        let entry = AuditEntry { event, subject_hash: Some(hash.clone()), outcome: "queued", detail, ..Default::default() };
        self.commit_audited(tx, &entry, now).await?;
        if let Err(error) = self.catalog().jobs_queued(summary.queued).await {
            tracing::warn!(%error, "refreshing the job statistics failed");
        }
        self.release_unnamed_holds(&unnamed).await?;
        self.run_now(Scope::Subject(&hash), &mut summary).await?;
        self.count_open(Scope::Subject(&hash), &mut summary).await?;
        self.forget_finished_subjects(Some(&hash)).await?;
        Ok(Some(summary))
    }

    /// Deletes unsubscribed subjects (all of them, or just the one with keyed hash `only`)
    /// that no upload names any more, keeping their hash in the erased list so a late
    /// upload for them is refused. Each deletion is audited; afterwards SQLite's WAL is
    /// emptied so the deleted rows leave no copy there.
    pub(crate) async fn forget_finished_subjects(&self, only: Option<&str>) -> Result<u64, RetentionError> {
        let ids: Vec<String> = match only {
            Some(s) => vec![s.to_string()],
            None => self.catalog().finished_subjects(10_000).await?,
        };
        let mut forgotten = 0;
        // A transaction per chunk of subjects, with their records (group commit).
        for chunk in ids.chunks(256) {
            let now = now_ms();
            let mut tx = self.catalog().begin().await?;
            let entries: Vec<AuditEntry> = self
                .catalog()
                .forget_subjects_if_done(&mut tx, chunk, now)
                .await?
                .into_iter()
                .map(|hash| AuditEntry {
                    event: "subject_forgotten",
                    subject_hash: Some(hash),
                    outcome: "done",
                    detail: "no uploads left: subject id deleted from the catalog".into(),
                    ..Default::default()
                })
                .collect();
            forgotten += entries.len() as u64;
            self.commit_audited_all(tx, &entries, now).await?;
        }
        if forgotten > 0 {
            self.catalog().truncate_wal().await?;
        }
        Ok(forgotten)
    }

    /// Purges one upload now (e.g. a minor's photo on a guardian's request), including
    /// one already anonymised. Legal holds still apply.
    pub async fn erase_upload(&self, upload_id: &str) -> Result<EventSummary, RetentionError> {
        let now = now_ms();
        let upload = self.catalog().upload(upload_id).await?.ok_or_else(|| RetentionError::UnknownUpload(upload_id.to_string()))?;
        let mut summary = EventSummary::default();
        if upload.state == UploadState::Purged {
            return Ok(summary);
        }
        let held = self.policy().class(&upload.class).is_some_and(|r| r.legal_hold);
        let rule = format!("erasure request ({})", upload.class);
        let job = NewJob { action: Action::Purge, reason: Reason::EraseUpload, rule: &rule, due_at: now, held };
        let mut tx = self.catalog().begin().await?;
        summary.queued = Catalog::enqueue_upload(&mut tx, upload_id, &job, now).await?;
        let entry = AuditEntry {
            event: "erase_upload",
            subject_hash: upload.subject_hash.clone(),
            upload_id: Some(upload_id.to_string()),
            rule: Some(rule.clone()),
            outcome: "queued",
            detail: if held { "legal hold: waiting".into() } else { "purge queued".into() },
        };
        self.commit_audited(tx, &entry, now).await?;
        self.release_unnamed_holds(std::slice::from_ref(&upload.class)).await?;
        self.run_now(Scope::Upload(upload_id), &mut summary).await?;
        self.count_open(Scope::Upload(upload_id), &mut summary).await?;
        Ok(summary)
    }

    /// The service is closing: every active upload gets its class's `on_expiry` action
    /// (or `action`, for all classes), due now; the scheduler carries them out and
    /// `status` reports any still pending after the policy's `deadline`. Legal holds still
    /// apply. Calling it again is safe.
    pub async fn wind_down(&self, action: Option<Action>) -> Result<EventSummary, RetentionError> {
        let now = now_ms();
        let mut summary = EventSummary::default();
        let mut parts = Vec::new();
        let mut tx = self.catalog().begin().await?;
        let classes = Catalog::active_classes(&mut tx, None).await?;
        for (class, _) in &classes {
            let class = class.clone();
            let rule = self.rule_for(&class);
            let action = action.unwrap_or(rule.on_expiry);
            let name = format!("wind-down ({class})");
            let job = NewJob { action, reason: Reason::WindDown, rule: &name, due_at: now, held: rule.legal_hold };
            let n = Catalog::enqueue_class(&mut tx, &class, &job, now).await?;
            summary.queued += n;
            if n > 0 {
                parts.push(format!("{n} {class} → {}{}", action.as_str(), self.rule_note(&class)));
            }
        }
        let detail = if parts.is_empty() { "no active uploads".to_string() } else { parts.join(", ") };
        let entry = AuditEntry { event: "wind_down", outcome: "queued", detail, ..Default::default() };
        self.commit_audited(tx, &entry, now).await?;
        self.release_unnamed_holds(&classes.into_iter().map(|(c, _)| c).collect::<Vec<_>>()).await?;
        let status = self.status().await?;
        summary.pending = status.jobs_pending;
        summary.held = status.jobs_held;
        Ok(summary)
    }

    /// Runs the due jobs in `scope` now, once each; failures stay queued for the scheduler.
    async fn run_now(&self, scope: Scope<'_>, summary: &mut EventSummary) -> Result<(), RetentionError> {
        let owner = format!("inline:{}", self.inner.config.instance);
        loop {
            let jobs = self.catalog().claim(&owner, Some(scope), 256, self.inner.config.lease).await?;
            if jobs.is_empty() {
                return Ok(());
            }
            for outcome in scheduler::execute_all(self, jobs).await {
                match outcome {
                    JobOutcome::Done(_) => summary.done += 1,
                    JobOutcome::Released => {}
                    failed @ (JobOutcome::Failed { .. } | JobOutcome::Unrecorded { .. }) => summary.errors.push(failed.to_string()),
                }
            }
            if !summary.errors.is_empty() {
                return Ok(());
            }
        }
    }

    async fn count_open(&self, scope: Scope<'_>, summary: &mut EventSummary) -> Result<(), RetentionError> {
        let (pending, held) = self.catalog().open_jobs(scope).await?;
        summary.pending += pending;
        summary.held += held;
        Ok(())
    }

    /// Access request: copies the subject's active uploads into `out` (a folder or
    /// bucket prefix) with a `manifest.json`, and logs the export. `out` must be empty, so
    /// that an export holds exactly one person's data and nothing else. An export that
    /// fails part-way deletes what it wrote, so no partial copy is left to hand over.
    pub async fn export(&self, subject: &str, out: &crate::store::Store) -> Result<Export, RetentionError> {
        let hashes = self.known_hashes(subject).await?;
        // Residency: nothing is copied to a place an upload's class may not be stored in.
        for hash in &hashes {
            for upload in self.catalog().subject_uploads(hash).await?.into_iter().filter(|u| u.key.is_some()) {
                if let Some(message) = self.policy().residency_refusal(&upload.class, out.location()) {
                    return Err(RetentionError::Residency { id: upload.id, class: upload.class, message: format!("not exported: {message}") });
                }
            }
        }
        if !out.is_empty().await? {
            return Err(RetentionError::ExportNotEmpty(out.location().to_string()));
        }
        let result = self
            .export_with(subject, |file, bytes| {
                let out = out.clone();
                async move { Ok(out.put(&file, bytes.to_vec()).await.map(|_| ())?) }
            })
            .await;
        if result.is_err() {
            // `out` was empty: whatever is in it now is this export's.
            let mut listing = out.list();
            while let Some(Ok(entry)) = futures::StreamExt::next(&mut listing).await {
                if let Err(e) = out.delete(&entry.key).await {
                    tracing::error!("a failed export could not remove {} from {}: {e}", entry.key, out.location());
                }
            }
        }
        result
    }

    /// Access request, streamed: hands the subject's active uploads to `sink` one at a
    /// time as `(file name, bytes)` (`uploads/0001-NAME`, …), then `manifest.json`, and
    /// logs the export. At most one upload is held in memory at a time, whatever the
    /// export's size. Every upload is checked to be readable before the first is handed
    /// over (a key that is a symbolic link in a folder store fails here), so a refused
    /// export sends nothing. An export that fails after `sink` got something is logged as
    /// interrupted.
    ///
    /// ```no_run
    /// # async fn f(retention: obscura::retention::Retention) -> Result<(), obscura::retention::RetentionError> {
    /// let export = retention.export_with("alice", |name: String, bytes: bytes::Bytes| async move {
    ///     println!("{name}: {} bytes", bytes.len()); // write to a socket, an archive…
    ///     Ok(())
    /// }).await?;
    /// println!("{} upload(s)", export.uploads.len());
    /// # Ok(()) }
    /// ```
    pub async fn export_with<F>(
        &self,
        subject: &str,
        mut sink: impl FnMut(String, bytes::Bytes) -> F,
    ) -> Result<Export, RetentionError>
    where
        F: std::future::Future<Output = Result<(), RetentionError>>,
    {
        use sha2::Digest;
        let hashes = self.known_hashes(subject).await?;
        let now = now_ms();
        let mut uploads = Vec::new();
        for hash in &hashes {
            uploads.extend(self.catalog().subject_uploads(hash).await?.into_iter().filter(|u| u.key.is_some()));
        }
        for upload in &uploads {
            let key = upload.key.as_deref().unwrap_or_default();
            if !self.inner.stores.get(&upload.store)?.exists(key).await? {
                return Err(RetentionError::Io(format!("upload {} is missing from its store", upload.id)));
            }
        }
        let mut export = Export { subject: normalize_subject(subject), exported_at: now, uploads: Vec::new() };
        let mut sent = 0;
        let mut result = Ok(());
        for (n, upload) in uploads.iter().enumerate() {
            let key = upload.key.as_deref().unwrap_or_default();
            let bytes = match self.inner.stores.get(&upload.store) {
                Ok(store) => store.get(key).await.map_err(RetentionError::from),
                Err(e) => Err(e.into()),
            };
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let name = key.rsplit('/').next().unwrap_or(key);
            let file = format!("uploads/{:04}-{}", n + 1, sanitize(name));
            let (sha256, len) = (hex::encode(sha2::Sha256::digest(&bytes)), bytes.len() as u64);
            sent += 1;
            if let Err(e) = sink(file.clone(), bytes).await {
                result = Err(e);
                break;
            }
            export.uploads.push(ExportedUpload { id: upload.id.clone(), class: upload.class.clone(), uploaded_at: upload.uploaded_at, file, sha256, bytes: len });
        }
        if result.is_ok() {
            let manifest = serde_json::to_vec_pretty(&export).expect("export serialises");
            sent += 1;
            result = sink("manifest.json".to_string(), manifest.into()).await;
        }
        let (outcome, detail) = match &result {
            Ok(()) => ("done", format!("{} upload(s) exported", export.uploads.len())),
            Err(_) if sent == 0 => return result.map(|_| export),
            Err(e) => ("interrupted", format!("{} of {} upload(s) handed over before it stopped: {e}", export.uploads.len(), uploads.len())),
        };
        let tx = self.catalog().begin().await?;
        let entry = AuditEntry { event: "export", subject_hash: Some(hashes[0].clone()), outcome, detail, ..Default::default() };
        self.commit_audited(tx, &entry, now).await?;
        result.map(|_| export)
    }

    /// Dry run: what will happen to whom and when, up to `horizon` from now — queued jobs
    /// plus expiries the scheduler has not queued yet. Lists at most `limit` items.
    pub async fn plan(&self, horizon: Duration, limit: usize) -> Result<Plan, RetentionError> {
        let now = now_ms();
        let until = now.saturating_add(catalog::ms(horizon));
        let mut plan = Plan::default();
        for (action, held, n) in self.catalog().queued_counts(until).await? {
            plan.add(action, held, n);
        }
        let mut items = self.catalog().queued_items(until, limit).await?;
        // Expiries not queued yet.
        for (class, rule) in &self.policy().classes {
            let Some(max_age) = rule.max_age else { continue };
            let age = catalog::ms(max_age);
            let cutoff = until.saturating_sub(age);
            let (n, _) = self.catalog().unqueued_expiries(class, cutoff).await?;
            plan.add(rule.on_expiry, rule.legal_hold, n);
            for (upload, subject_hash, uploaded_at) in self.catalog().unqueued_items(class, cutoff, limit).await? {
                items.push(Planned {
                    upload,
                    subject_hash,
                    class: class.clone(),
                    action: rule.on_expiry,
                    reason: Reason::Expiry,
                    at: uploaded_at + age,
                    held: rule.legal_hold,
                });
            }
        }
        items.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.upload.cmp(&b.upload)));
        items.truncate(limit);
        plan.items = items;
        Ok(plan)
    }

    /// Counts, the overdue report and the jobs being retried.
    pub async fn status(&self) -> Result<Status, RetentionError> {
        let now = now_ms();
        let deadline = catalog::ms(self.policy().deadline);
        let mut status = self.catalog().queue_status(now, deadline).await?;
        // Expiries not queued yet (no scheduler pass since they fell due) are as due as
        // queued ones: the policy, not the queue, says when an upload must go.
        for (class, rule) in &self.policy().classes {
            let Some(max_age) = rule.max_age.map(catalog::ms) else { continue };
            if rule.legal_hold {
                continue;
            }
            let (due, oldest) = self.catalog().unqueued_expiries(class, now - max_age).await?;
            let (overdue, _) = self.catalog().unqueued_expiries(class, now - max_age - deadline - 1).await?;
            status.expiries_unqueued += due;
            status.jobs_due += due;
            status.overdue += overdue;
            if let Some(at) = oldest.map(|t| t + max_age) {
                status.oldest_due_at = Some(status.oldest_due_at.map_or(at, |o| o.min(at)));
            }
        }
        status.failing = self.catalog().failing(20).await?;
        status.unaccounted = self.unaccounted().await?;
        // Only when some class limits where it is stored: it reads every active upload.
        let limited = self.policy().classes.values().any(|r| !r.locations.is_empty());
        for (class, store, uploads) in if limited { self.catalog().uploads_by_store().await? } else { Vec::new() } {
            if let Some(reason) = self.policy().residency_refusal(&class, &store) {
                status.misplaced.push(Misplaced { class, store, uploads, reason });
            }
        }
        Ok(status)
    }

    /// Audit records about a subject (by its keyed hash) and/or an upload, after `after`.
    pub async fn audit(&self, subject: Option<&str>, upload: Option<&str>, after: i64, limit: i64) -> Result<Vec<AuditRecord>, RetentionError> {
        let hash = subject.map(|s| self.secret().subject_hash(s));
        Ok(self.catalog().audit_records(hash.as_deref(), upload, after, limit).await?)
    }

    /// Checks the audit log's chain from the first record to the head, and against the
    /// witness outside the catalog (when configured): truncation, rollback to an older
    /// copy, and an edited or missing witness file are all reported as broken.
    pub async fn verify_audit(&self) -> Result<AuditVerdict, RetentionError> {
        let witnessed = match &self.inner.witness {
            None => None,
            Some(w) => match w.read(self.secret()) {
                Ok(Some(head)) => Some(head),
                Ok(None) => return Ok(AuditVerdict::broken(0, format!("the audit witness {} is missing", w.path().display()))),
                Err(e) => return Ok(AuditVerdict::broken(0, e.to_string())),
            },
        };
        Ok(self.catalog().verify_audit(self.secret(), witnessed.as_ref()).await?)
    }
}

impl Plan {
    fn add(&mut self, action: Action, held: bool, n: u64) {
        match (held, action) {
            (true, _) => self.held += n,
            (false, Action::Purge) => self.purge += n,
            (false, Action::Anonymise) => self.anonymise += n,
        }
    }
}

/// Whether `text` (an upload id or key) contains the subject id, compared as ids are
/// (see [`normalize_subject`]): "Rene\u{301}e/1.jpg" names "Ren\u{e9}e" too.
fn names_subject(text: &str, subject: &str) -> bool {
    use unicode_normalization::UnicodeNormalization;
    let normalized: String = text.nfc().collect();
    normalized.contains(normalize_subject(subject).as_str()) || text.contains(subject)
}

/// A file name safe in any folder: letters, digits, `.`, `-`, `_`; others become `_`.
fn sanitize(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() { "upload".into() } else { s }
}
