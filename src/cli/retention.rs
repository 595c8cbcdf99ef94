//! `obscura retention …`: the retention catalog, policy and scheduler from the command
//! line. Output is a short human summary, or JSON with `--json`.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{ArgMatches, Args, Subcommand};
use obscura::detect::Device;
use obscura::retention::{NewUpload, Policy, Retention, RetentionConfig, RunOptions, Secret};
use obscura::store::{Store, StoreOptions};

use super::console::shutdown_signal;
use super::settings::{SHOWN, choice, layer, load_config};

/// Where the retention catalog, its policy and secret are: shared by `retention` and
/// `serve` (which serves the retention routes when a policy is given).
#[derive(Args, Debug)]
pub struct CatalogArgs {
    /// Catalog: a SQLite file (created if missing) or postgres://user@host/db.
    #[arg(long, env = "OBSCURA_CATALOG", default_value = "obscura-catalog.sqlite")]
    pub catalog: String,
    /// Policy file (TOML; see examples/retention.toml).
    #[arg(long, env = "OBSCURA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Per-deployment secret for the audit log (created, mode 0600, if missing). Keep it
    /// away from the database.
    #[arg(long, env = "OBSCURA_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Witness of the audit log's head, kept outside the catalog so that truncating the
    /// log or rolling the catalog back is detected (default: the secret file's path plus
    /// `.witness`). Keep it where the database's owner cannot write.
    #[arg(long, env = "OBSCURA_AUDIT_WITNESS")]
    pub audit_witness: Option<PathBuf>,
    /// Store retries after the first attempt.
    #[arg(long, default_value = SHOWN.retries.as_str())]
    pub retries: usize,
}

impl CatalogArgs {
    /// The retention settings these flags describe, with `anonymizer` for anonymise actions.
    pub fn retention_config(&self, anonymizer: obscura::Config) -> Result<RetentionConfig> {
        let policy_path = self.policy.as_deref().context("--policy FILE (or OBSCURA_POLICY) is required")?;
        let secret_path = self.secret_file.as_deref().context("--secret-file FILE (or OBSCURA_SECRET_FILE) is required")?;
        let policy = Policy::load(policy_path)?;
        let secret = Secret::load_or_create(secret_path)?;
        let mut config = RetentionConfig::new(&self.catalog, policy, secret);
        config.audit_witness = Some(self.audit_witness.clone().unwrap_or_else(|| {
            let mut path = secret_path.as_os_str().to_owned();
            path.push(".witness");
            PathBuf::from(path)
        }));
        config.store_options = StoreOptions { max_retries: self.retries, ..StoreOptions::default() };
        config.anonymizer = anonymizer;
        Ok(config)
    }
}

#[derive(Args, Debug)]
pub struct RetentionArgs {
    #[command(flatten)]
    pub place: CatalogArgs,
    /// Settings for anonymise actions (the library's `Config` as TOML; models, runtime);
    /// retention applies its strongest redaction on top.
    #[arg(long, env = "OBSCURA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where inference runs for anonymise actions.
    #[arg(long, value_parser = choice::<Device>(), default_value = SHOWN.device.as_str())]
    pub device: Device,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: RetentionCommand,
}

#[derive(Subcommand, Debug)]
pub enum RetentionCommand {
    /// Catalogue an upload (or many, from a CSV file).
    Register(RegisterArgs),
    /// The person unsubscribed: apply each class's on_unsubscribe (now, when grace = 0).
    Unsubscribe { subject: String },
    /// Erasure request: purge all of a person's uploads, or one upload, now.
    Erase(EraseArgs),
    /// The service is closing: queue every active upload's on_expiry action (or --action
    /// for all) now; `run` carries them out, `status` reports what is left.
    WindDown {
        #[arg(long, value_parser = parse_action)]
        action: Option<obscura::retention::Action>,
    },
    /// Access request: copy a person's uploads and a manifest.json into a folder.
    Export {
        subject: String,
        /// Destination folder (or s3://bucket/prefix).
        #[arg(long)]
        out: String,
    },
    /// Dry run: what will be purged or anonymised, for whom, and when.
    Plan {
        /// How far ahead to look (e.g. 30d).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        horizon: Duration,
        /// Items listed (totals always count everything).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Counts, overdue actions and failing ones. Exit 1 when something is overdue, or when
    /// uploads belong to a class the policy no longer names.
    Status,
    /// Read the audit log, or check its chain with --verify (exit 1 if broken).
    Audit(AuditArgs),
    /// The scheduler: run due actions until stopped (Ctrl-C / SIGTERM) or, with
    /// --until-idle, until nothing is due.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[arg(long, required_unless_present = "csv")]
    pub id: Option<String>,
    #[arg(long, required_unless_present = "csv")]
    pub subject: Option<String>,
    /// Store location: a folder or s3://bucket/prefix.
    #[arg(long, required_unless_present = "csv")]
    pub store: Option<String>,
    #[arg(long, required_unless_present = "csv")]
    pub key: Option<String>,
    /// A class named in the policy.
    #[arg(long, required_unless_present = "csv")]
    pub class: Option<String>,
    /// Upload time: RFC 3339 (2026-01-31T12:00:00Z) or Unix milliseconds; default now.
    #[arg(long)]
    pub uploaded_at: Option<String>,
    /// Derived objects (thumbnails…) in the same store; repeatable.
    #[arg(long)]
    pub derived: Vec<String>,
    /// Many uploads, one transaction: CSV with header id,subject,store,key,class[,uploaded_at[,derived]]
    /// (derived keys separated by ';').
    #[arg(long, conflicts_with_all = ["id", "subject", "store", "key", "class"])]
    pub csv: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct EraseArgs {
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub upload: Option<String>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Check the MAC chain from the first record to the head.
    #[arg(long)]
    pub verify: bool,
    /// Only records about this person (matched through the keyed hash).
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub upload: Option<String>,
    /// Records after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long)]
    pub until_idle: bool,
    /// Pause between passes when nothing is due.
    #[arg(long, default_value = SHOWN.interval.as_str(), value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Anonymisations at once (each decodes, detects and encodes an image).
    #[arg(long, default_value = SHOWN.concurrency.as_str())]
    pub concurrency: usize,
    /// Purges at once (each waits on its store, not on the CPU).
    #[arg(long, default_value = SHOWN.purge_concurrency.as_str())]
    pub purge_concurrency: usize,
    /// Jobs claimed at a time; their results are recorded in one transaction. Each
    /// claimed batch must finish within `--lease`.
    #[arg(long, default_value = SHOWN.batch.as_str(), value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub batch: i64,
    /// How long a claimed job is reserved for this instance.
    #[arg(long, default_value = SHOWN.lease.as_str(), value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// First retry delay after a failed action (doubles per attempt, up to the library's
    /// longest delay).
    #[arg(long, default_value = SHOWN.retry_after.as_str(), value_parser = humantime::parse_duration)]
    pub retry_after: Duration,
}

fn parse_action(s: &str) -> Result<obscura::retention::Action, String> {
    match s {
        "purge" => Ok(obscura::retention::Action::Purge),
        "anonymise" | "anonymize" => Ok(obscura::retention::Action::Anonymise),
        _ => Err("purge or anonymise".into()),
    }
}

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_time(s: &str) -> Result<i64> {
    obscura::retention::parse_time(s).map_err(|e| anyhow::anyhow!("--uploaded-at {e}"))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: &RetentionArgs, m: &ArgMatches) -> Result<i32> {
    let mut config = args.place.retention_config(load_config(args.config.as_deref())?)?;
    layer(m, "device", &mut config.anonymizer.runtime.device, &args.device);
    if let RetentionCommand::Run(run) = &args.command {
        config.concurrency = run.concurrency.max(1);
        config.purge_concurrency = run.purge_concurrency.max(1);
        config.lease = run.lease;
        config.retry_base = run.retry_after;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let retention = Retention::open(config).await?;
        match &args.command {
            RetentionCommand::Register(r) => register(&retention, r).await,
            RetentionCommand::Unsubscribe { subject } => event(args, retention.unsubscribe(subject).await?),
            RetentionCommand::Erase(e) => match (&e.subject, &e.upload) {
                (Some(s), _) => event(args, retention.erase_subject(s).await?),
                (_, Some(u)) => event(args, retention.erase_upload(u).await?),
                _ => bail!("give --subject or --upload"),
            },
            RetentionCommand::WindDown { action } => event(args, retention.wind_down(*action).await?),
            RetentionCommand::Export { subject, out } => {
                let created = !out.contains("://") && !std::path::Path::new(out).exists();
                let out = Store::open(out, &StoreOptions::default())?;
                let export = match retention.export(subject, &out).await {
                    Ok(export) => export,
                    Err(e) => {
                        // A folder this command made is not left behind, empty, by a failed export.
                        if let Some(root) = out.local_root().filter(|_| created) {
                            let _ = std::fs::remove_dir(root);
                        }
                        return Err(e.into());
                    }
                };
                if args.json {
                    print_json(&export)?;
                } else {
                    println!("exported {} upload(s) of {subject} to {} (manifest.json)", export.uploads.len(), out.location());
                }
                Ok(0)
            }
            RetentionCommand::Plan { horizon, limit } => {
                let plan = retention.plan(*horizon, *limit).await?;
                if args.json {
                    return print_json(&plan).map(|_| 0);
                }
                println!("within {}: {} purge, {} anonymise, {} held by legal hold", humantime::format_duration(*horizon), plan.purge, plan.anonymise, plan.held);
                for p in &plan.items {
                    println!(
                        "{}  {:<9} {:<24} subject {:<16} class {:<10} ({}){}",
                        time(p.at),
                        p.action.as_str(),
                        p.upload,
                        p.subject_hash.as_deref().unwrap_or("-"),
                        p.class,
                        serde_json::to_value(p.reason)?.as_str().unwrap_or_default(),
                        if p.held { "  HELD" } else { "" }
                    );
                }
                Ok(0)
            }
            RetentionCommand::Status => {
                let s = retention.status().await?;
                if args.json {
                    print_json(&s)?;
                } else {
                    println!("uploads: {} active, {} anonymised, {} purged", s.uploads_active, s.uploads_anonymised, s.uploads_purged);
                    println!("subjects: {} subscribed, {} unsubscribed (pending erasure)", s.subjects_subscribed, s.subjects_unsubscribed);
                    println!("jobs: {} pending ({} due now), {} held by legal hold", s.jobs_pending, s.jobs_due, s.jobs_held);
                    match s.oldest_due_at {
                        Some(t) => println!("overdue: {} (oldest pending action due {})", s.overdue, time(t)),
                        None => println!("overdue: 0"),
                    }
                    for f in &s.failing {
                        println!("failing: {} {} after {} attempt(s), next try {}: {}", f.action, f.upload, f.attempts, time(f.next_try_at), f.last_error);
                    }
                    for u in &s.unaccounted {
                        println!(
                            "UNACCOUNTED: {} active upload(s) of class {:?}, which the policy does not name: they never expire; \
                             unsubscribe and erasure purge them. Put [classes.{}] back in the policy, or erase them.",
                            u.uploads, u.class, u.class
                        );
                    }
                    for m in &s.misplaced {
                        println!("MISPLACED: {} active upload(s) of class {:?} in {}: {}", m.uploads, m.class, m.store, m.reason);
                    }
                }
                Ok(if s.overdue > 0 || !s.unaccounted.is_empty() || !s.misplaced.is_empty() { 1 } else { 0 })
            }
            RetentionCommand::Audit(a) if a.verify => {
                let v = retention.verify_audit().await?;
                if args.json {
                    print_json(&v)?;
                } else if v.intact() {
                    println!("audit log intact: {} record(s)", v.records);
                } else {
                    println!("audit log BROKEN at record {}: {}", v.broken_at.unwrap_or_default(), v.problem.as_deref().unwrap_or_default());
                }
                Ok(if v.intact() { 0 } else { 1 })
            }
            RetentionCommand::Audit(a) => {
                let records = retention.audit(a.subject.as_deref(), a.upload.as_deref(), a.after, a.limit).await?;
                if args.json {
                    return print_json(&records).map(|_| 0);
                }
                for r in &records {
                    println!(
                        "{:>6} {} {:<17} {:<14} upload {:<20} subject {} {}: {}",
                        r.seq,
                        time(r.at),
                        r.event,
                        r.outcome,
                        r.upload_id.as_deref().unwrap_or("-"),
                        r.subject_hash.as_deref().unwrap_or("-"),
                        r.rule.as_deref().unwrap_or(""),
                        r.detail
                    );
                }
                Ok(0)
            }
            RetentionCommand::Run(r) => {
                let options = RunOptions { interval: r.interval, until_idle: r.until_idle, batch: r.batch, ..RunOptions::default() };
                let summary = retention.run(&options, shutdown_signal("stopping: finishing the actions in flight")).await?;
                if args.json {
                    print_json(&summary)?;
                } else {
                    println!(
                        "purged {}, anonymised {}, purged instead of anonymised {}, failed attempts {} (retried later), expiries queued {}",
                        summary.purged, summary.anonymised, summary.purged_instead, summary.failed_attempts, summary.expiries_queued
                    );
                }
                Ok(if summary.failed_attempts > 0 { 1 } else { 0 })
            }
        }
    })
}

async fn register(retention: &Retention, r: &RegisterArgs) -> Result<i32> {
    let uploads = match &r.csv {
        Some(path) => read_csv(path)?,
        None => {
            let mut u = NewUpload::new(
                r.id.as_deref().unwrap_or_default(),
                r.subject.as_deref().unwrap_or_default(),
                r.store.as_deref().unwrap_or_default(),
                r.key.as_deref().unwrap_or_default(),
                r.class.as_deref().unwrap_or_default(),
            );
            u.uploaded_at = r.uploaded_at.as_deref().map(parse_time).transpose()?;
            u.derived = r.derived.clone();
            vec![u]
        }
    };
    retention.register_many(&uploads).await?;
    println!("registered {} upload(s)", uploads.len());
    Ok(0)
}

fn read_csv(path: &std::path::Path) -> Result<Vec<NewUpload>> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{} line {}", path.display(), n + 2))?;
        if record.len() < 5 {
            bail!("{} line {}: need id,subject,store,key,class", path.display(), n + 2);
        }
        let mut u = NewUpload::new(&record[0], &record[1], &record[2], &record[3], &record[4]);
        if let Some(t) = record.get(5).filter(|t| !t.is_empty()) {
            u.uploaded_at = Some(parse_time(t).with_context(|| format!("{} line {}", path.display(), n + 2))?);
        }
        if let Some(d) = record.get(6) {
            u.derived = d.split(';').filter(|s| !s.is_empty()).map(String::from).collect();
        }
        out.push(u);
    }
    Ok(out)
}

fn event(args: &RetentionArgs, summary: obscura::retention::EventSummary) -> Result<i32> {
    if args.json {
        print_json(&summary)?;
    } else {
        println!("{} upload(s) queued: {} done now, {} pending, {} held by legal hold", summary.queued, summary.done, summary.pending, summary.held);
        for e in &summary.errors {
            println!("not done yet (the scheduler retries): {e}");
        }
    }
    Ok(if summary.errors.is_empty() { 0 } else { 1 })
}
