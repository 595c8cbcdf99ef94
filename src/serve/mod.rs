//! `obscura serve`: the HTTP service (Cargo feature `serve`). Anonymises uploads on the
//! way in with one shared [`Anonymizer`], behind bearer tokens
//! ([`auth`]), a bounded admission queue, body and time limits, with health checks and
//! Prometheus metrics ([`metrics`]) on a listener of their own.
//!
//! It owns the listeners, the connection handling (header read timeout, graceful
//! shutdown), admission and the routes ([`api`]); it does not own anonymisation (that is
//! [`Anonymizer::anonymize_with_async`](crate::Anonymizer::anonymize_with_async)) nor
//! settings files (the CLI layers [`ServeSettings`] like every other setting).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use obscura::serve::{Server, ServeSettings, auth::Tokens};
//! let settings = ServeSettings { listen: "127.0.0.1:8080".into(), ..ServeSettings::default() };
//! let anonymizer = obscura::Anonymizer::new(obscura::Config::default())?;
//! let tokens = Tokens::load(std::path::Path::new("tokens.txt"))?;
//! let server = Server::bind(&settings).await?;
//! println!("listening on {}", server.local_addr());
//! let backends = obscura::serve::Backends { anonymizer, tokens, retention: None, scheduler: None };
//! server.run(backends, settings, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod error;
pub mod metrics;
#[cfg(feature = "retention")]
pub mod retention;
#[cfg(feature = "retention")]
pub mod scheduler;
#[cfg(feature = "retention")]
mod tar;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use self::auth::Tokens;
use self::metrics::Metrics;
use crate::Anonymizer;

/// The service's own settings (`[serve]` in a settings file, `obscura serve` flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// Address of the API (default `127.0.0.1:8080`; port 0 picks a free one).
    pub listen: String,
    /// Address of `GET /metrics` (Prometheus); default none. Kept apart from the API so
    /// that it can stay on an internal network.
    pub metrics_listen: Option<String>,
    /// Images processed at once (default 0: the CPU cores).
    pub max_concurrency: usize,
    /// Requests admitted beyond those, waiting their turn (default 0: 2 × max_concurrency).
    /// A request beyond both gets 503 with `Retry-After` at once: memory stays bounded.
    pub queue: usize,
    /// Largest request body in bytes (default 32 MiB); larger ones get 413.
    pub max_body_bytes: usize,
    /// Deadline of a whole request, reading the body included, in seconds (default 30).
    pub request_timeout_secs: f64,
    /// Time a client has to send its request headers, in seconds (default 10): a slow
    /// client does not hold a connection.
    pub header_timeout_secs: f64,
    /// On SIGTERM, how long requests in flight may take to finish, in seconds (default 30).
    pub shutdown_grace_secs: f64,
    /// The stores (folders or `s3://bucket/prefix`, exactly as uploads name them) that
    /// `POST /v1/uploads` may register uploads in. Default none: registering over HTTP is
    /// refused, since an upload registered in any folder would let a token holder have any
    /// file the service can write purged.
    pub stores: Vec<String>,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: None,
            max_concurrency: 0,
            queue: 0,
            max_body_bytes: 32 << 20,
            request_timeout_secs: 30.0,
            header_timeout_secs: 10.0,
            shutdown_grace_secs: 30.0,
            stores: Vec::new(),
        }
    }
}

impl ServeSettings {
    /// `max_concurrency` with 0 resolved to the CPU cores.
    pub fn workers(&self) -> usize {
        match self.max_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// `queue` with 0 resolved to twice the workers.
    pub fn queue_depth(&self) -> usize {
        match self.queue {
            0 => 2 * self.workers(),
            n => n,
        }
    }

    /// Checks the settings (before anything listens).
    pub fn validate(&self) -> Result<(), ServeError> {
        let bad = |what: &str| Err(ServeError::Settings(what.to_string()));
        for (name, secs) in [("request_timeout_secs", self.request_timeout_secs), ("header_timeout_secs", self.header_timeout_secs), ("shutdown_grace_secs", self.shutdown_grace_secs)] {
            if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
                return bad(&format!("serve.{name} must be above 0 and at most a day"));
            }
        }
        if self.max_body_bytes == 0 {
            return bad("serve.max_body_bytes must be above 0");
        }
        Ok(())
    }
}

/// What the service serves: the anonymiser, the tokens, and (with the `retention`
/// feature) the retention catalog whose routes it adds when one is given.
pub struct Backends {
    pub anonymizer: Anonymizer,
    pub tokens: Tokens,
    #[cfg(feature = "retention")]
    pub retention: Option<crate::retention::Retention>,
    /// The scheduler this service runs (`serve --scheduler`), for `/readyz`.
    #[cfg(feature = "retention")]
    pub scheduler: Option<Arc<scheduler::SchedulerHealth>>,
}

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid setting: {0}")]
    Settings(String),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("accepting connections: {0}")]
    Accept(std::io::Error),
}

/// The bound listeners, before serving.
pub struct Server {
    api: TcpListener,
    metrics: Option<TcpListener>,
}

impl Server {
    /// Binds the API and, when configured, the metrics listener.
    pub async fn bind(settings: &ServeSettings) -> Result<Server, ServeError> {
        settings.validate()?;
        let listen = |address: String| async move { TcpListener::bind(&address).await.map_err(|source| ServeError::Listen { address, source }) };
        let api = listen(settings.listen.clone()).await?;
        let metrics = match &settings.metrics_listen {
            Some(address) => Some(listen(address.clone()).await?),
            None => None,
        };
        Ok(Server { api, metrics })
    }

    /// The API's address (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.api.local_addr().expect("a bound listener has an address")
    }

    /// The metrics listener's address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight
    /// finish (up to `shutdown_grace_secs`) and returns.
    pub async fn run(self, backends: Backends, settings: ServeSettings, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let metrics = Arc::new(Metrics::default());
        let state = api::State::new(backends, settings.clone(), metrics.clone());
        let app = api::router(state.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let metrics_task = self.metrics.map(|listener| tokio::spawn(serve_metrics(listener, state.clone())));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs_f64(settings.header_timeout_secs));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.api.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        // Out of file descriptors and the like: wait a moment, keep serving.
                        Err(e) => {
                            tracing::warn!("accepting a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!("connection: {e}");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down: no new connections; waiting for requests in flight");
        state.stop_accepting();
        drop(self.api);
        let grace = Duration::from_secs_f64(settings.shutdown_grace_secs);
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("requests still in flight after {grace:?}; stopping anyway");
        }
        if let Some(task) = metrics_task {
            task.abort();
        }
        Ok(())
    }
}

/// `GET /metrics` on its own listener.
async fn serve_metrics(listener: TcpListener, state: api::State) {
    let app = api::metrics_router(state);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
