//! `obscura eval`: runs detection and region planning over an annotated set and prints
//! coverage recall (see `obscura::eval`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use obscura::eval::{Coverage, FaceSet};
use obscura::image_io::decode;
use obscura::{Anonymizer, Config};
use rayon::prelude::*;

use super::args::EvalArgs;

pub fn run(args: &EvalArgs) -> Result<i32> {
    let manifest = args.manifest.clone().unwrap_or_else(|| args.images.parent().unwrap_or(Path::new(".")).join("manifest.csv"));
    let set = FaceSet::load(&manifest, &args.faces).context("loading the evaluation set")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args.jobs.unwrap_or(cores).max(1);
    let mut config = Config::default();
    config.detect.threshold = args.threshold;
    config.redact.padding = args.padding;
    config.runtime.device = args.device;
    config.runtime.sessions = jobs;
    config.runtime.intra_threads = (cores / jobs).max(1);
    let anonymizer = Anonymizer::new(config)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
    let started = Instant::now();
    let results: Vec<Result<_>> = pool.install(|| {
        set.images
            .par_iter()
            .map(|(name, faces)| {
                let path = args.images.join(name);
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let decoded = decode(&bytes, &anonymizer.config().image).with_context(|| name.clone())?;
                let (_, regions) = anonymizer.plan(&decoded.frame).with_context(|| name.clone())?;
                let rects: Vec<_> = regions.iter().map(|r| r.rect).collect();
                Ok((name, faces, rects, decoded.frame.width, decoded.frame.height))
            })
            .collect()
    });
    let mut coverage = Coverage::default();
    for r in results {
        let (name, faces, rects, w, h) = r?;
        coverage.add_image(name, faces, &rects, w, h);
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&coverage)?);
    } else {
        println!("{} images in {seconds:.1} s (threshold {}, padding {})", set.images.len(), args.threshold, args.padding);
        print!("{}", coverage.table());
    }
    Ok(0)
}
