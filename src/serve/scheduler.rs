//! The retention scheduler inside `obscura serve --scheduler`: it owns keeping the
//! scheduler going (a scheduler that cannot start is tried again, it does not stay down
//! until a restart) and saying whether it runs, for `/readyz`. What the scheduler does is
//! [`Retention::run`]'s.
//!
//! On SQLite one scheduler runs per catalog: a second service waits in standby, trying
//! the lock again every [`STANDBY_RETRY`], and takes over when the first stops. Any other
//! failure (a missing model, an unreachable catalog) is retried with a doubling delay, up
//! to [`MAX_RETRY`]. Meanwhile `/readyz` answers 503 `scheduler_not_running`, saying why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::retention::{Retention, RetentionError, RunOptions, RunSummary};

/// How often a service in standby tries the SQLite scheduler lock again.
pub const STANDBY_RETRY: Duration = Duration::from_secs(5);
/// The longest wait before a failed scheduler is started again.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Whether the scheduler runs, and if not, why.
#[derive(Debug, Default)]
pub struct SchedulerHealth {
    running: Arc<AtomicBool>,
    why: Mutex<String>,
}

impl SchedulerHealth {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { running: Arc::new(AtomicBool::new(false)), why: Mutex::new("starting".into()) })
    }

    /// `None` while the scheduler runs; otherwise what keeps it from running.
    pub fn not_running(&self) -> Option<String> {
        if self.running.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    fn set_why(&self, why: String) {
        *self.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }
}

/// Runs the scheduler until `stopped` turns true, starting it again whenever it cannot
/// start or stops with an error. Returns what it did.
pub async fn supervise(retention: Retention, health: Arc<SchedulerHealth>, mut stopped: tokio::sync::watch::Receiver<bool>) -> RunSummary {
    let options = RunOptions { running: Some(health.running.clone()), ..RunOptions::default() };
    let mut total = RunSummary::default();
    let mut delay = STANDBY_RETRY;
    let mut was_standby = false;
    loop {
        let mut stop = stopped.clone();
        let started = std::time::Instant::now();
        let result = retention
            .run(&options, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        let wait = match result {
            Ok(summary) => {
                total.add(&summary);
                return total;
            }
            Err(RetentionError::Locked { path }) => {
                if !was_standby {
                    tracing::warn!("standby: another scheduler holds {path}; trying again every {}s", STANDBY_RETRY.as_secs());
                    was_standby = true;
                }
                health.set_why(format!("standby: another scheduler holds {path} (one per SQLite catalog); trying again every {}s", STANDBY_RETRY.as_secs()));
                STANDBY_RETRY
            }
            Err(e) => {
                if started.elapsed() > delay {
                    delay = STANDBY_RETRY; // it ran a while: a new failure, not the same one
                }
                tracing::error!("the retention scheduler stopped: {e}; starting it again in {}s", delay.as_secs());
                health.set_why(format!("the scheduler stopped: {e}; starting it again in {}s", delay.as_secs()));
                let wait = delay;
                delay = (delay * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return total,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
