//! `obscura eval`: runs detection and region planning over an annotated set and prints
//! coverage recall (see `obscura::eval`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use obscura::detect::Class;
use obscura::eval::chart::{Series, write_png};
use obscura::eval::misses;
use obscura::eval::{Coverage, FaceSet, Matching, PERSON_GT, TEXT_GT, plan_all};
use clap::ArgMatches;
use obscura::Anonymizer;
use obscura::config::Choice;

use super::args::EvalArgs;
use super::console::parallelism;
use super::settings::{given, layer};

/// Smallest missed boxes the contact sheet shows (smaller faces are too small to judge).
const MISS_MIN_FACE: f32 = 20.0;
const MISS_MIN_PERSON: f32 = 40.0;
const MISS_MIN_TEXT: f32 = 8.0;
/// Most crops per class on the contact sheet.
const MISSES_SHOWN: usize = 200;

pub fn run(args: &EvalArgs, m: &ArgMatches) -> Result<i32> {
    let mut config = args.detection.config(m)?;
    layer(m, "padding", &mut config.redact.padding, &args.padding);
    if given(m, "person_style") {
        config.redact.person_style = args.person_style.style();
    }
    if args.persons.is_some() && !config.detect.targets.contains(&Class::Person) {
        anyhow::bail!("--persons scores person detection: add person to --targets");
    }
    if args.text.is_some() && !config.detect.targets.contains(&Class::Text) {
        anyhow::bail!("--text scores text detection: add text to --targets");
    }
    let manifest = args.manifest.clone().unwrap_or_else(|| args.images.parent().unwrap_or(Path::new(".")).join("manifest.csv"));
    let faces = args.faces.as_ref().map(|f| FaceSet::load(&manifest, f).context("loading the evaluation set")).transpose()?;
    let text = args.text.as_ref().map(|t| FaceSet::load_for(&manifest, TEXT_GT, t).context("loading text boxes")).transpose()?;
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
    let jobs = parallelism(args.jobs);
    // Scoring plans regions and never redacts: no GPU to probe.
    config.redact.on = obscura::redact::backend::RedactOn::Cpu;
    if config.runtime.sessions == 0 {
        config.runtime.sessions = jobs; // threads per session derived from the cores
    }
    let anonymizer = Anonymizer::new(config)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
    let started = Instant::now();
    // Each scored class: its name in tables, its set, its detector's class, the smallest
    // missed box the contact sheet shows.
    let scored: Vec<(&str, &FaceSet, Class, f32)> = [("faces", faces.as_ref(), Class::Face, MISS_MIN_FACE), ("persons", persons.as_ref(), Class::Person, MISS_MIN_PERSON), ("text", text.as_ref(), Class::Text, MISS_MIN_TEXT)]
        .into_iter()
        .filter_map(|(name, set, class, min)| set.map(|s| (name, s, class, min)))
        .collect();
    let names = scored.iter().flat_map(|(_, set, ..)| set.images.keys());
    let planned = pool.install(|| plan_all(&anonymizer, &args.images, names))?;
    let tables: Vec<_> = scored.iter().map(|&(name, set, class, _)| (name, Coverage::score(set, &planned), Matching::score(set, &planned, class))).collect();
    let sets: Vec<_> = scored.iter().map(|&(_, set, _, min)| (set, min)).collect();
    let seconds = started.elapsed().as_secs_f64();
    let d = &anonymizer.config().detect;
    let boost: Vec<String> = d.boost.iter().map(|v| v.name()).collect();
    let targets: Vec<String> = d.targets.iter().map(|v| v.name()).collect();
    let models: Vec<String> = anonymizer.models().into_iter().map(|m| m.name).collect();
    let setting = format!(
        "{}; models {}; threshold {} (crowd {}); padding {}; boost [{}]",
        targets.join(","),
        models.join(","),
        d.threshold,
        d.crowd.threshold,
        anonymizer.config().redact.padding,
        boost.join(",")
    );
    if let Some(dir) = &args.misses {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut sections = Vec::new();
        for ((name, _, _), (set, min_height)) in tables.iter().zip(&sets) {
            let found = misses::find(set, &planned, *min_height);
            sections.push(misses::write_class(dir, &args.images, name, &found, &planned, MISSES_SHOWN)?);
        }
        misses::write_index(dir, &setting, &sections)?;
    }
    if let Some(path) = &args.chart {
        let series: Vec<_> = tables.iter().map(|(name, coverage, matching)| Series { name, coverage, matching }).collect();
        write_png(path, &setting, &series).with_context(|| format!("writing the chart {}", path.display()))?;
    }
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
        println!("{setting}; {seconds:.1} s");
        for (name, coverage, matching) in tables {
            println!("\n{name} — coverage (share of boxes >= 80 % inside redacted regions):");
            print!("{}", coverage.table());
            println!("{name} — detection:");
            print!("{}", matching.table());
        }
    }
    Ok(0)
}
