//! Helpers for `scripts/bench-batch` (not part of the library):
//!
//! - `make DIR N MAX_SIDE SRC_DIR`: writes N JPEGs (q90) made from the photos in SRC_DIR,
//!   resized so the longer side is MAX_SIDE and cropped differently each time, under
//!   DIR/NNN/ (100 per folder).
//! - `pure DIR JOBS`: loads every file of DIR into memory, then anonymises them all with
//!   the library (default configuration, JOBS images at once) and prints the wall time and
//!   the sum of per-stage times: the pipeline with no store, journal or listing, i.e. the
//!   floor `obscura batch` is compared against.
//!
//! Run: `cargo run --release --example batch_bench_tools -- make /tmp/set 1000 1024 ../shared/eval/images`

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with(".obscura") {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn make(dir: &Path, n: usize, max_side: u32, src: &Path) {
    let sources: Vec<PathBuf> = files(src).into_iter().filter(|p| p.extension().is_some_and(|e| e == "jpg")).collect();
    assert!(!sources.is_empty(), "no .jpg in {}", src.display());
    let photos: Vec<image::DynamicImage> = sources.iter().map(|p| image::open(p).unwrap()).collect();
    (0..n).into_par_iter().for_each(|i| {
        let img = &photos[i % photos.len()];
        // A different crop each round through the photos: 80–100 % of each side.
        let round = (i / photos.len()) as u32;
        let (w, h) = (img.width(), img.height());
        let (cw, ch) = (w - w * (round % 5) / 25, h - h * ((round / 5) % 5) / 25);
        let crop = img.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch);
        let scaled = crop.resize(max_side, max_side, image::imageops::FilterType::Triangle).to_rgb8();
        let path = dir.join(format!("{:03}", i / 100)).join(format!("img{i:06}.jpg"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&scaled).unwrap();
    });
}

fn pure(dir: &Path, jobs: usize) {
    let inputs: Vec<Vec<u8>> = files(dir).iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut config = obscura::Config::default();
    config.runtime.sessions = jobs;
    config.redact.on = obscura::redact::backend::RedactOn::Cpu;
    let anonymizer = obscura::Anonymizer::new(config).expect("run scripts/setup first");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build().unwrap();
    let t = Instant::now();
    let timings: Vec<obscura::pipeline::Timings> =
        pool.install(|| inputs.par_iter().map(|b| anonymizer.anonymize(b).expect("anonymise").report.timings_ms).collect());
    let wall = t.elapsed().as_secs_f64();
    let sum = |f: fn(&obscura::pipeline::Timings) -> f64| timings.iter().map(f).sum::<f64>() / 1000.0;
    println!(
        "pure images={} jobs={jobs} wall_s={wall:.2} images_per_s={:.2} decode_s={:.2} detect_s={:.2} redact_s={:.2} encode_s={:.2}",
        inputs.len(),
        inputs.len() as f64 / wall,
        sum(|t| t.decode),
        sum(|t| t.detect),
        sum(|t| t.redact),
        sum(|t| t.encode)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("make") => make(Path::new(&args[1]), args[2].parse().unwrap(), args[3].parse().unwrap(), Path::new(&args[4])),
        Some("pure") => pure(Path::new(&args[1]), args[2].parse().unwrap()),
        _ => eprintln!("usage: batch_bench_tools make DIR N MAX_SIDE SRC_DIR | pure DIR JOBS"),
    }
}
