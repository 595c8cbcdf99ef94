//! `obscura serve`: the HTTP service (`obscura::serve`) from the command line. Settings
//! are layered like every command's: the library's defaults, then `--config FILE` (the
//! anonymiser's `Config`, plus a `[serve]` table for the service), then `OBSCURA_*`
//! environment variables and flags. `--print-config` shows the result.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{ArgMatches, Args};
use obscura::Anonymizer;
use obscura::retention::Retention;
use obscura::serve::auth::Tokens;
use obscura::serve::{Backends, ServeSettings, Server};

use super::args::RedactionArgs;
use super::retention::CatalogArgs;
use super::console::shutdown_signal;
use super::settings::{SERVE_SHOWN, layer};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the API (port 0 picks a free one; the address is printed on stderr).
    #[arg(long, env = "OBSCURA_LISTEN", default_value = SERVE_SHOWN.listen.as_str())]
    pub listen: String,
    /// Address of `GET /metrics` (Prometheus); none by default.
    #[arg(long, env = "OBSCURA_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Bearer tokens, one per line: `SCOPES TOKEN` (scopes: anonymise, retention, admin).
    #[arg(long, env = "OBSCURA_TOKENS_FILE")]
    pub tokens: Option<PathBuf>,
    /// Images processed at once (0: the CPU cores).
    #[arg(long, env = "OBSCURA_MAX_CONCURRENCY", default_value = SERVE_SHOWN.max_concurrency.as_str())]
    pub max_concurrency: usize,
    /// Requests waiting beyond those (0: twice the workers); more get 503 + Retry-After.
    #[arg(long, env = "OBSCURA_QUEUE", default_value = SERVE_SHOWN.queue.as_str())]
    pub queue: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "OBSCURA_MAX_BODY_BYTES", default_value = SERVE_SHOWN.max_body_bytes.as_str())]
    pub max_body_bytes: usize,
    /// Deadline of a whole request, in seconds.
    #[arg(long, env = "OBSCURA_REQUEST_TIMEOUT", default_value = SERVE_SHOWN.request_timeout_secs.as_str())]
    pub request_timeout: f64,
    /// Time a client has to send its request headers, in seconds.
    #[arg(long, env = "OBSCURA_HEADER_TIMEOUT", default_value = SERVE_SHOWN.header_timeout_secs.as_str())]
    pub header_timeout: f64,
    /// On SIGTERM, how long requests in flight may take to finish, in seconds.
    #[arg(long, env = "OBSCURA_SHUTDOWN_GRACE", default_value = SERVE_SHOWN.shutdown_grace_secs.as_str())]
    pub shutdown_grace: f64,
    /// A store (folder or s3://bucket/prefix, as uploads name it) that `POST /v1/uploads`
    /// may register uploads in; repeat for several. None: registering over HTTP is refused.
    #[arg(long = "allow-store", env = "OBSCURA_ALLOW_STORES", value_delimiter = ',')]
    pub allow_store: Vec<String>,
    /// Print the effective settings (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Also run the retention scheduler in this process (needs --policy; on PostgreSQL any
    /// number of instances share the queue, on SQLite one holds it).
    #[arg(long, requires = "policy")]
    pub scheduler: bool,
    /// The retention catalog: with --policy the service adds the retention and erasure routes.
    #[command(flatten)]
    pub place: CatalogArgs,
    #[command(flatten)]
    pub redaction: RedactionArgs,
}

/// Runs the service until SIGTERM or Ctrl-C; returns the process exit code.
pub fn run(args: &ServeArgs, m: &ArgMatches) -> Result<i32> {
    let (file_serve, file) = serve_table(args.redaction.detection.config.as_deref())?;
    let mut settings = file_serve;
    layer(m, "listen", &mut settings.listen, &args.listen);
    if args.metrics_listen.is_some() {
        settings.metrics_listen = args.metrics_listen.clone();
    }
    layer(m, "max_concurrency", &mut settings.max_concurrency, &args.max_concurrency);
    layer(m, "queue", &mut settings.queue, &args.queue);
    layer(m, "max_body_bytes", &mut settings.max_body_bytes, &args.max_body_bytes);
    layer(m, "request_timeout", &mut settings.request_timeout_secs, &args.request_timeout);
    layer(m, "header_timeout", &mut settings.header_timeout_secs, &args.header_timeout);
    layer(m, "shutdown_grace", &mut settings.shutdown_grace_secs, &args.shutdown_grace);
    layer(m, "allow_store", &mut settings.stores, &args.allow_store);
    settings.validate()?;
    let mut config = args.redaction.config_over(file, settings.workers(), m)?;
    // The anonymiser's own limit is the service's worker count; the service queues in front.
    config.max_concurrency = settings.workers();
    if args.print_config {
        let mut table = toml::Table::try_from(&config).context("showing the settings")?;
        table.insert("serve".into(), toml::Value::try_from(&settings).context("showing the settings")?);
        print!("{}", toml::to_string(&table).context("showing the settings")?);
        return Ok(0);
    }
    let tokens_path = args.tokens.as_deref().context("--tokens FILE (or OBSCURA_TOKENS_FILE) is required: every route but the health checks needs a token")?;
    let tokens = Tokens::load(tokens_path)?;
    let retention_config = match &args.place.policy {
        Some(_) => Some(args.place.retention_config(config.clone())?),
        None => None,
    };
    let anonymizer = Anonymizer::new(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let retention = match retention_config {
            Some(c) => Some(Retention::open(c).await?),
            None => None,
        };
        let server = Server::bind(&settings).await?;
        let metrics = server.metrics_addr().map(|a| format!(", metrics on http://{a}/metrics")).unwrap_or_default();
        // One signal stops both the server and the scheduler (between its batches).
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let health = (retention.is_some() && args.scheduler).then(obscura::serve::scheduler::SchedulerHealth::new);
        let scheduler = match (&retention, &health) {
            (Some(r), Some(h)) => Some(tokio::spawn(obscura::serve::scheduler::supervise(r.clone(), h.clone(), stopped.clone()))),
            _ => None,
        };
        // The one line scripts and tests wait for (stderr, whatever the log level).
        eprintln!("obscura serve: listening on http://{}{metrics}", server.local_addr());
        drop(stopped);
        let signal = async move {
            shutdown_signal("stopping: no new requests; finishing those in flight").await;
            let _ = stop.send(true);
        };
        server.run(Backends { anonymizer, tokens, retention, scheduler: health }, settings, signal).await?;
        if let Some(task) = scheduler {
            let summary = task.await.context("the scheduler task")?;
            tracing::info!(?summary, "scheduler stopped");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

/// The settings file split in two: its `[serve]` table (or the defaults) and the rest
/// (the anonymiser's `Config`, as TOML text), or `None` without a file.
fn serve_table(path: Option<&Path>) -> Result<(ServeSettings, Option<String>)> {
    let Some(path) = path else { return Ok((ServeSettings::default(), None)) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the settings file {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("the settings file {}", path.display()))?;
    let serve = match table.remove("serve") {
        Some(value) => value.try_into().with_context(|| format!("the settings file {}, [serve]", path.display()))?,
        None => ServeSettings::default(),
    };
    Ok((serve, Some(toml::to_string(&table).context("re-reading the settings file")?)))
}
