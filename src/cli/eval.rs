//! `obscura eval`: runs detection and region planning over an annotated set and prints
//! coverage recall (see `obscura::eval`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use obscura::detect::Class;
use obscura::eval::{Coverage, FaceSet, PERSON_GT, plan_all};
use obscura::{Anonymizer, Config};

use super::args::EvalArgs;

pub fn run(args: &EvalArgs) -> Result<i32> {
    let manifest = args.manifest.clone().unwrap_or_else(|| args.images.parent().unwrap_or(Path::new(".")).join("manifest.csv"));
    let set = FaceSet::load(&manifest, &args.faces).context("loading the evaluation set")?;
    let persons = match &args.persons {
        Some(p) => Some(FaceSet::load_for(&manifest, PERSON_GT, p).context("loading person boxes")?),
        None => None,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args.jobs.unwrap_or(cores).max(1);
    let mut config = Config::default();
    config.detect.threshold = args.threshold;
    config.detect.face_models = args.face_models.clone();
    config.detect.retinaface.threshold = args.retina_threshold;
    config.redact.padding = args.padding;
    // Scoring plans regions and never redacts: no GPU to probe.
    config.redact.on = obscura::redact::backend::RedactOn::Cpu;
    config.runtime.device = args.device;
    config.runtime.sessions = jobs; // threads per session derived from the cores
    if persons.is_some() {
        config.detect.targets = vec![Class::Face, Class::Person];
    }
    let anonymizer = Anonymizer::new(config)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
    let started = Instant::now();
    let names = set.images.keys().chain(persons.iter().flat_map(|p| p.images.keys()));
    let planned = pool.install(|| plan_all(&anonymizer, &args.images, names))?;
    let mut tables = vec![("faces", Coverage::score(&set, &planned))];
    if let Some(p) = &persons {
        tables.push(("persons", Coverage::score(p, &planned)));
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let map: std::collections::BTreeMap<_, _> = tables.into_iter().collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        println!("threshold {}, padding {}, {:.1} s", args.threshold, args.padding, seconds);
        for (name, coverage) in tables {
            println!("\n{name}:");
            print!("{}", coverage.table());
        }
    }
    Ok(0)
}
