//! Throughput of the Rust library in-process, the baseline `scripts/bench-python` puts
//! the Python package and deface beside: every photo of `--photos` read into memory, then
//! anonymised `--rounds` times by `--threads` threads sharing one `Anonymizer` (each
//! thread takes the next photo; bytes in, bytes out, nothing written).
//!
//!   cargo run --release --example library_bench -- --photos DIR [--threads N]
//!       [--rounds R] [--limit-photos N] [--targets face|face,person]
//!
//! Prints one JSON line: tool, threads, images, seconds, images_per_s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use obscura::config::Choice;
use obscura::detect::Class;
use obscura::{Anonymizer, Config};

fn main() {
    let (mut dir, mut threads, mut rounds, mut limit, mut targets) = (None, 1usize, 1usize, usize::MAX, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--photos" => dir = Some(value),
            "--threads" => threads = value.parse().expect("--threads N"),
            "--rounds" => rounds = value.parse().expect("--rounds N"),
            "--limit-photos" => limit = value.parse().expect("--limit-photos N"),
            "--targets" => targets = Some(value.split(',').map(|t| Class::from_name(t).expect("face or person")).collect::<Vec<_>>()),
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = dir.expect("usage: --photos DIR [--threads N --rounds R --limit-photos N --targets face]");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jpg")).collect();
    paths.sort();
    paths.truncate(limit);
    let photos: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let mut config = Config::default();
    // The Python package has no GPU backend: redact on the CPU here too, so that the
    // two differ only by the binding.
    config.redact.on = obscura::redact::backend::RedactOn::Cpu;
    if let Some(targets) = targets {
        config.detect.targets = targets;
    }
    let anonymizer = Anonymizer::new(config).expect("scripts/setup has been run");
    let total = photos.len() * rounds;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let out = anonymizer.anonymize(&photos[i % photos.len()]).expect("anonymised");
                    std::hint::black_box(out.bytes.len());
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"tool": "rust library", "threads": threads, "images": total, "seconds": seconds, "images_per_s": total as f64 / seconds})
    );
}
