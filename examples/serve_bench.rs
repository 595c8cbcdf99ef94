//! Load benchmark of `obscura serve` (`scripts/bench-serve` runs this in release mode),
//! side by side with the library in-process on the same photos in the same run.
//!
//! 1. In-process: one `Anonymizer`, `--workers` threads, each photo once per round, for
//!    `--rounds` rounds: images/s at saturation.
//! 2. The service (`--binary`, started here on a loopback port with `--max-concurrency
//!    --workers`): for each client count in `--clients`, that many clients send the photos
//!    round-robin until `--requests` have been answered or `--seconds` have passed. A 503
//!    (`busy`, the documented back-pressure) is counted and retried after its `Retry-After`;
//!    any other failure is an error. Reports images/s (answered 200), p50/p99 latency of the 200s,
//!    the 503 count, errors, and the service's peak RSS (VmHWM) after the level.
//!
//! Prints one JSON object per line: `{"mode": "library", …}` then one per client count.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use obscura::{Anonymizer, Config};

struct Args {
    binary: PathBuf,
    photos: Vec<PathBuf>,
    workers: usize,
    clients: Vec<usize>,
    requests: usize,
    seconds: f64,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args { binary: PathBuf::new(), photos: Vec::new(), workers: 2, clients: vec![1, 8, 64, 256], requests: 200, seconds: 60.0, rounds: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--binary" => a.binary = value.into(),
            "--photos" => a.photos = std::fs::read_dir(&value).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jpg")).collect(),
            "--limit-photos" => a.photos.truncate(value.parse().unwrap()),
            "--workers" => a.workers = value.parse().unwrap(),
            "--clients" => a.clients = value.split(',').map(|c| c.parse().unwrap()).collect(),
            "--requests" => a.requests = value.parse().unwrap(),
            "--seconds" => a.seconds = value.parse().unwrap(),
            "--rounds" => a.rounds = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    a.photos.sort();
    assert!(!a.photos.is_empty() && !a.binary.as_os_str().is_empty(), "usage: --binary PATH --photos DIR [--limit-photos N --workers N --clients 1,8,64,256 --requests N --seconds S]");
    a
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Peak resident memory of `pid` in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).map_or(0.0, |kb| kb / 1024.0)
}

fn library(a: &Args, photos: &[Vec<u8>]) -> serde_json::Value {
    let mut config = Config::default();
    config.runtime.sessions = a.workers;
    // The same backend as the service below (`--redact-on cpu`): the comparison is of the
    // serving, not of where pixels are redacted.
    config.redact.on = obscura::redact::backend::RedactOn::Cpu;
    let anonymizer = Anonymizer::new(config).unwrap();
    // Warm-up: one pass, not timed.
    for p in photos.iter().take(a.workers) {
        anonymizer.anonymize(p).unwrap();
    }
    let next = AtomicUsize::new(0);
    let total = photos.len() * a.rounds;
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..a.workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    anonymizer.anonymize(&photos[i % photos.len()]).unwrap();
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    serde_json::json!({ "mode": "library", "workers": a.workers, "images": total, "seconds": seconds, "images_per_s": total as f64 / seconds })
}

async fn level(url: &str, token: &str, pid: u32, clients: usize, a: &Args, photos: Arc<Vec<Vec<u8>>>) -> serde_json::Value {
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).timeout(Duration::from_secs(120)).build().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, photos, answered, url, token) = (http.clone(), photos.clone(), answered.clone(), url.to_string(), token.to_string());
        let requests = a.requests;
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut busy, mut errors) = (Vec::new(), 0usize, 0usize);
            let mut i = c;
            while answered.load(Ordering::Relaxed) < requests && Instant::now() < deadline {
                let body = photos[i % photos.len()].clone();
                let t = Instant::now();
                match http.post(format!("{url}/v1/anonymise")).bearer_auth(&token).body(body).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed().as_secs_f64());
                        answered.fetch_add(1, Ordering::Relaxed);
                        i += clients;
                    }
                    Ok(r) if r.status() == 503 => {
                        // As a well-behaved client does: wait as long as Retry-After says.
                        busy += 1;
                        let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    _ => errors += 1,
                }
            }
            (latencies, busy, errors)
        }));
    }
    let (mut latencies, mut busy, mut errors) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, b, e) = t.await.unwrap();
        latencies.extend(l);
        busy += b;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    serde_json::json!({
        "mode": "service", "clients": clients, "images": latencies.len(), "seconds": seconds,
        "images_per_s": latencies.len() as f64 / seconds,
        "p50_ms": percentile(&latencies, 0.5) * 1000.0, "p99_ms": percentile(&latencies, 0.99) * 1000.0,
        "busy_503": busy, "errors": errors, "peak_rss_mib": peak_rss_mib(pid),
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let photos: Vec<Vec<u8>> = a.photos.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let lib = tokio::task::block_in_place(|| library(&a, &photos));
    println!("{lib}");

    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("tokens"), format!("anonymise {token}\n")).unwrap();
    let mut child = std::process::Command::new(&a.binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--redact-on", "cpu", "--max-concurrency", &a.workers.to_string(), "--tokens"])
        .arg(dir.path().join("tokens"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let url = loop {
        let line = lines.next().expect("obscura serve exited").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split([',', ' ']).next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let photos = Arc::new(photos);
    for &clients in &a.clients {
        println!("{}", level(&url, token, child.id(), clients, &a, photos.clone()).await);
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "obscura serve did not exit cleanly: {exit:?}");
}
