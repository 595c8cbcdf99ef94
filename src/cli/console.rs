//! What the commands share about running on this machine: how many images at once, the
//! progress bar on a terminal, and stopping on SIGTERM or Ctrl-C.

use std::io::IsTerminal;

/// Images processed at once: `--jobs`, or one per CPU core.
pub fn parallelism(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// A progress bar on stderr when it is a terminal and not `--quiet`; hidden otherwise.
/// `total` is `None` when it is not known yet (set it later with `set_length`).
pub fn progress_bar(total: Option<usize>, quiet: bool) -> indicatif::ProgressBar {
    if quiet || total.is_some_and(|t| t < 2) || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0) as u64);
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}  {msg}").expect("valid progress template");
    bar.set_style(style);
    bar
}

/// Completes on SIGTERM or Ctrl-C (SIGINT), logging `what` happens next.
pub async fn shutdown_signal(what: &'static str) {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("{what}");
}
