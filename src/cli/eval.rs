//! `obscura eval`: runs detection and region planning over an annotated set and prints
//! coverage recall (see `obscura::eval`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use obscura::detect::Class;
use obscura::eval::{Coverage, FaceSet, Matching, PERSON_GT, plan_all};
use obscura::{Anonymizer, Config};

use super::args::EvalArgs;

pub fn run(args: &EvalArgs) -> Result<i32> {
    let manifest = args.manifest.clone().unwrap_or_else(|| args.images.parent().unwrap_or(Path::new(".")).join("manifest.csv"));
    let set = FaceSet::load(&manifest, &args.faces).context("loading the evaluation set")?;
    let persons = match &args.persons {
        Some(p) => {
            let set = FaceSet::load_for(&manifest, PERSON_GT, p).context("loading person boxes")?;
            match args.persons_ignore.clone().or_else(|| Some(p.with_file_name("persons_crowd_ignore.csv")).filter(|f| f.is_file())) {
                Some(ignore) => Some(set.with_ignore(&ignore).with_context(|| format!("loading {}", ignore.display()))?),
                None => Some(set),
            }
        }
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
    let mut tables = vec![("faces", Coverage::score(&set, &planned), Matching::score(&set, &planned, Class::Face))];
    if let Some(p) = &persons {
        tables.push(("persons", Coverage::score(p, &planned), Matching::score(p, &planned, Class::Person)));
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let map: std::collections::BTreeMap<_, _> = tables
            .into_iter()
            .map(|(name, coverage, matching)| {
                let mut matching_json = serde_json::to_value(&matching).expect("serialisable");
                matching_json["precision"] = matching.precision().into();
                matching_json["false_positives_per_image"] = matching.false_positives_per_image().into();
                (name, serde_json::json!({ "coverage": coverage, "matching": matching_json }))
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        println!("threshold {}, padding {}, {:.1} s", args.threshold, args.padding, seconds);
        for (name, coverage, matching) in tables {
            println!("\n{name} — coverage (share of boxes >= 80 % inside redacted regions):");
            print!("{}", coverage.table());
            println!("{name} — detection:");
            print!("{}", matching.table());
        }
    }
    Ok(0)
}
