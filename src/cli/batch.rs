//! `obscura batch SRC DST`: opens the stores and the journal, runs `obscura::batch`, and
//! shows progress (a bar on a terminal, one log line per object otherwise).

use std::io::Write;

use anyhow::{Context, Result, bail};
use obscura::Anonymizer;
use obscura::batch::{self, BatchOptions, Filter, JOURNAL_DIR, Journal, Outcome};
use obscura::store::{Store, StoreOptions};

use clap::ArgMatches;

use super::args::BatchArgs;
use super::console::{parallelism, progress_bar};

/// Runs the subcommand; returns the process exit code.
pub fn run(args: &BatchArgs, m: &ArgMatches, quiet: bool) -> Result<i32> {
    let parallel = parallelism(args.jobs);
    let store_options = StoreOptions { max_retries: args.retries, ..StoreOptions::default() };
    let filter = Filter::new(&args.include, &args.exclude, args.shard).context("--include/--exclude")?;
    if let Some(path) = &args.policy {
        let policy = obscura::retention::Policy::load(path)?;
        if let Some(why) = obscura::retention::residency::move_refusal(&policy.stores, &args.src, &args.dst) {
            bail!("refused by data residency: {why}");
        }
    }
    let mut config = args.redaction.config(parallel, m)?;
    if config.max_concurrency == 0 {
        config.max_concurrency = parallel;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let src = Store::open_existing(&args.src, &store_options)?;
        let dst = Store::open(&args.dst, &store_options)?;
        let journal_path = match (&args.journal, dst.local_root()) {
            (Some(p), _) => p.clone(),
            (None, Some(root)) => {
                let dir = root.join(JOURNAL_DIR);
                if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
                    bail!("{} is a symbolic link; the batch journal is never written through one (it could lead outside the destination)", dir.display());
                }
                dir.join(format!("journal-{}-of-{}.sqlite", args.shard.index, args.shard.count))
            }
            (None, None) => bail!("--journal PATH is required when the destination is an object store"),
        };
        let journal = Journal::open(&journal_path).await?;
        let removed = batch::clean_staged(&dst, args.shard).context("removing staged files of an interrupted run")?;
        if removed > 0 {
            tracing::info!(removed, "removed partial files left by an interrupted run");
        }
        let anonymizer = Anonymizer::new(config)?;
        let options = BatchOptions { filter, in_place: args.in_place, in_flight: parallel * 2 };

        let bar = progress_bar(None, quiet);
        // Unbuffered, one write per object: a run killed with -9 leaves a report of every
        // object it finished, like the journal.
        let mut report = match &args.report {
            Some(p) => Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
            None => None,
        };
        let mut report_error = None;
        let mut failed_now = 0u64;
        let summary = batch::run(
            &anonymizer,
            &src,
            &dst,
            &journal,
            &options,
            |_| bar.inc_length(1),
            |object| {
                bar.inc(1);
                if let Outcome::Failed { error } = &object.outcome {
                    failed_now += 1;
                    bar.set_message(format!("{failed_now} failed"));
                    tracing::warn!(key = %object.key, %error, "failed");
                } else {
                    tracing::info!(key = %object.key, outcome = ?object.outcome, ms = object.ms, "finished");
                }
                if let Some(w) = report.as_mut() {
                    let mut line = serde_json::to_vec(object).expect("reports serialise");
                    line.push(b'\n');
                    if let Err(e) = w.write_all(&line) {
                        report_error.get_or_insert(e);
                    }
                }
            },
        )
        .await?;
        bar.finish_and_clear();
        if let Some(e) = report_error {
            return Err(anyhow::Error::new(e).context("writing the report"));
        }
        for (key, error) in &summary.failures {
            // Keys may hold newlines and other control characters: one line per failure.
            eprintln!("error: {}: {}", key.escape_debug(), error.escape_debug());
        }
        if !quiet {
            let n = summary.this_run;
            let rate = (n.done + n.failed + n.skipped) as f64 / summary.seconds.max(1e-9);
            eprintln!(
                "obscura batch: {} anonymised, {} failed, {} skipped (not images), {} already done before; {:.1} images/s, {:.1} s. Journal: {} done, {} failed ({})",
                n.done,
                n.failed,
                n.skipped,
                summary.already_done,
                rate,
                summary.seconds,
                summary.journal.done,
                summary.journal.failed,
                journal_path.display()
            );
        }
        Ok(if summary.failures.is_empty() { 0 } else { 1 })
    })
}
