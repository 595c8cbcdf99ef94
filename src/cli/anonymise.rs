//! `obscura anonymise`: turns the arguments into jobs (input → output), runs them through
//! one shared `Anonymizer`, writes outputs atomically, and reports.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use obscura::image_io::{Format, create_dirs_within, create_parent_dirs, remove_stale_temps, safe_join, write_atomic};
use obscura::{Anonymizer, Report};
use rayon::prelude::*;
use serde::Serialize;

use clap::ArgMatches;

use super::args::AnonymiseArgs;
use super::console::{parallelism, progress_bar};

enum Source {
    File(PathBuf),
    Stdin,
}

enum Dest {
    /// A file; `within` is the output folder it must not leave (through links inside it).
    File { path: PathBuf, within: Option<PathBuf> },
    Stdout,
}

impl Dest {
    fn file(path: PathBuf) -> Self {
        Dest::File { path, within: None }
    }
}

struct Job {
    name: String,
    source: Source,
    /// Where the output goes, or why there can be none.
    dest: Result<Dest, String>,
}

#[derive(Serialize)]
struct ImageReport {
    input: String,
    output: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    report: Option<Report>,
}

#[derive(Serialize)]
struct RunReport {
    obscura_version: &'static str,
    images: Vec<ImageReport>,
}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: &AnonymiseArgs, m: &ArgMatches, quiet: bool) -> Result<i32> {
    let mut skipped = Vec::new();
    let jobs = plan_jobs(args, &mut skipped)?;
    let parallel = parallelism(args.jobs);
    let anonymizer = Anonymizer::new(args.config(parallel, jobs.len(), m)?)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(parallel).build().context("starting worker threads")?;
    let started = Instant::now();
    let progress = progress_bar(Some(jobs.len()), quiet);
    let cleaned = CleanedDirs::default();
    let images: Vec<ImageReport> = pool.install(|| {
        jobs.par_iter()
            .map(|job| {
                let report = run_job(&anonymizer, job, &cleaned);
                progress.inc(1);
                report
            })
            .collect()
    });
    progress.finish_and_clear();

    let failed: Vec<(String, String)> =
        images.iter().filter_map(|r| r.error.as_ref().map(|e| (r.input.clone(), e.clone()))).collect();
    let regions: usize = images.iter().filter_map(|r| r.report.as_ref()).map(|r| r.regions.len()).sum();
    if let Some(path) = &args.report {
        let mut images = images;
        images.extend(skipped.iter().map(|(path, why)| ImageReport {
            input: path.display().to_string(),
            output: None,
            status: "skipped",
            error: Some(why.clone()),
            report: None,
        }));
        let report = RunReport { obscura_version: env!("CARGO_PKG_VERSION"), images };
        let json = serde_json::to_vec_pretty(&report).context("serialising the report")?;
        write_atomic(path, &json).with_context(|| format!("writing report {}", path.display()))?;
    }
    if !quiet {
        for (path, why) in &skipped {
            eprintln!("skipped: {}: {why}", path.display());
        }
    }
    for (input, error) in &failed {
        eprintln!("error: {input}: {error}");
    }
    let total = jobs.len();
    if !quiet {
        eprintln!(
            "obscura: {} of {total} image(s) anonymised, {regions} region(s) redacted, in {:.2} s{}{}",
            total - failed.len(),
            started.elapsed().as_secs_f64(),
            if failed.is_empty() { String::new() } else { format!("; {} failed (no output written for them)", failed.len()) },
            if skipped.is_empty() { String::new() } else { format!("; {} other file(s) skipped (listed above)", skipped.len()) }
        );
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// Anonymises one job's input and writes its output; never writes on failure.
fn run_job(anonymizer: &Anonymizer, job: &Job, cleaned: &CleanedDirs) -> ImageReport {
    let (output, result) = match &job.dest {
        Err(e) => (None, Err(anyhow::anyhow!("{e}"))),
        Ok(dest) => {
            let output = match dest {
                Dest::File { path, .. } => Some(path.display().to_string()),
                Dest::Stdout => Some("-".to_string()),
            };
            (output, process(anonymizer, &job.source, dest, cleaned))
        }
    };
    match result {
        Ok(report) => ImageReport { input: job.name.clone(), output, status: "ok", error: None, report: Some(report) },
        Err(e) => ImageReport { input: job.name.clone(), output: None, status: "failed", error: Some(format!("{e:#}")), report: None },
    }
}

fn process(anonymizer: &Anonymizer, source: &Source, dest: &Dest, cleaned: &CleanedDirs) -> Result<Report> {
    let bytes = match source {
        Source::File(p) => std::fs::read(p).context("reading")?,
        Source::Stdin => {
            let mut buf = Vec::new();
            std::io::stdin().lock().read_to_end(&mut buf).context("reading stdin")?;
            buf
        }
    };
    // An output file named .png/.jpg/.webp gets that format; without an extension, the
    // input's (checked when the jobs were planned).
    let format = match dest {
        Dest::File { path, .. } => path.extension().and_then(|e| e.to_str()).and_then(Format::from_extension).filter(|f| f.writable()),
        Dest::Stdout => None,
    };
    let out = anonymizer.anonymize_to(&bytes, format)?;
    match dest {
        Dest::File { path, within } => {
            match within {
                Some(root) => create_dirs_within(root, path)?,
                None => create_parent_dirs(path)?,
            }
            cleaned.clean(path);
            write_atomic(path, &out.bytes)?;
        }
        Dest::Stdout => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&out.bytes).and_then(|_| stdout.flush()).context("writing stdout")?;
        }
    }
    Ok(out.report)
}

/// The output folders already rid of temporary files that killed runs left behind
/// (each folder is scanned once, before the first write into it).
#[derive(Default)]
struct CleanedDirs(std::sync::Mutex<std::collections::HashSet<PathBuf>>);

impl CleanedDirs {
    fn clean(&self, output: &Path) {
        let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.insert(dir.to_path_buf()) {
            match remove_stale_temps(dir) {
                Ok(0) => {}
                Ok(n) => tracing::info!(dir = %dir.display(), removed = n, "removed temporary files of an interrupted run"),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not check for temporary files of an interrupted run"),
            }
        }
    }
}

fn plan_jobs(args: &AnonymiseArgs, skipped: &mut Vec<(PathBuf, String)>) -> Result<Vec<Job>> {
    let mut sources: Vec<(Source, Option<PathBuf>, String)> = Vec::new(); // (source, path relative to a folder input, name)
    let mut stdin_seen = false;
    for input in &args.inputs {
        if input.as_os_str() == "-" {
            if stdin_seen {
                bail!("`-` (stdin) given more than once");
            }
            stdin_seen = true;
            sources.push((Source::Stdin, None, "-".into()));
        } else if input.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files, skipped).with_context(|| format!("listing {}", input.display()))?;
            skipped.sort();
            files.sort();
            for f in files {
                let rel = f.strip_prefix(input).map(Path::to_path_buf).unwrap_or_else(|_| f.clone());
                let name = f.display().to_string();
                sources.push((Source::File(f), Some(rel), name));
            }
        } else {
            // Named files are taken whatever their extension; a missing one fails as a job.
            sources.push((Source::File(input.clone()), None, input.display().to_string()));
        }
    }
    if args.output.is_some() && sources.len() != 1 {
        bail!("-o/--output takes exactly one input image ({} given); use --out-dir for several", sources.len());
    }
    if let Some(o) = args.output.as_deref().filter(|o| o.as_os_str() != "-") {
        check_extension(o).map_err(anyhow::Error::msg)?;
    }
    let inputs: Vec<PathBuf> =
        sources.iter().filter_map(|(s, _, _)| if let Source::File(p) = s { p.canonicalize().ok() } else { None }).collect();
    // Two inputs never share an output: the later one fails instead of overwriting.
    let mut taken: HashMap<PathBuf, String> = HashMap::new();
    Ok(sources
        .into_iter()
        .map(|(source, rel, name)| {
            let dest = destination(args, &source, rel.as_deref()).and_then(|d| match &d {
                Dest::File { path, .. } => {
                    if !args.in_place && is_input(path, &inputs) {
                        return Err(format!("output {} would overwrite an input; pass --in-place to replace inputs", path.display()));
                    }
                    check_extension(path)?;
                    match taken.entry(path.clone()) {
                        Entry::Occupied(first) => Err(format!(
                            "output {} is already the output of {}; give the inputs distinct names or use separate runs",
                            path.display(),
                            first.get()
                        )),
                        Entry::Vacant(slot) => {
                            slot.insert(name.clone());
                            Ok(d)
                        }
                    }
                }
                Dest::Stdout => Ok(d),
            });
            Job { name, source, dest }
        })
        .collect())
}

/// An output file's extension must name a format Obscura writes (or be absent): bytes of
/// one format under another's name mislead every program that opens them.
fn check_extension(path: &Path) -> Result<(), String> {
    match path.extension().map(|e| e.to_string_lossy()) {
        Some(ext) if !Format::from_extension(&ext).is_some_and(|f| f.writable()) => Err(format!(
            "cannot write {}: .{ext} is not a format Obscura writes (use .jpg, .png, .webp, .gif or .tif, or no extension for the input's format; HEIC and AVIF are read, not written)",
            path.display()
        )),
        _ => Ok(()),
    }
}

fn destination(args: &AnonymiseArgs, source: &Source, rel: Option<&Path>) -> Result<Dest, String> {
    match (source, &args.output, &args.out_dir) {
        (_, Some(o), _) if o.as_os_str() == "-" => Ok(Dest::Stdout),
        (_, Some(o), _) => Ok(Dest::file(o.clone())),
        (Source::Stdin, None, Some(dir)) => match &args.stdin_name {
            Some(name) => within(dir, &written_name(name)),
            None => Err("reading stdin with --out-dir needs --stdin-name NAME".into()),
        },
        (Source::Stdin, None, None) => Ok(Dest::Stdout),
        (Source::File(p), None, Some(dir)) => {
            let name = rel.map(Path::to_path_buf).or_else(|| p.file_name().map(PathBuf::from)).ok_or("input has no file name")?;
            within(dir, &written_name(&name))
        }
        (Source::File(p), None, None) if args.in_place => Ok(Dest::file(p.clone())),
        (Source::File(p), None, None) => {
            let stem = p.file_stem().ok_or("input has no file name")?.to_string_lossy();
            let ext = p.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| Format::Jpeg.extension().into());
            Ok(Dest::file(written_name(&p.with_file_name(format!("{stem}.anonymized.{ext}")))))
        }
    }
}

/// An output named after its input, with the extension of the format it is written in
/// where the input's names a format Obscura reads but does not write: `IMG_1.HEIC` is
/// written as `IMG_1.jpg` (two inputs meeting there is caught when jobs are planned).
fn written_name(name: &Path) -> PathBuf {
    match name.extension().and_then(|e| e.to_str()).and_then(Format::from_extension) {
        Some(f) if !f.writable() => name.with_extension(f.written_as().extension()),
        _ => name.to_path_buf(),
    }
}

/// `name` under the output folder `dir`, never outside it.
fn within(dir: &Path, name: &Path) -> Result<Dest, String> {
    let path = safe_join(dir, name).map_err(|e| e.to_string())?;
    Ok(Dest::File { path, within: Some(dir.to_path_buf()) })
}

fn is_input(path: &Path, inputs: &[PathBuf]) -> bool {
    path.canonicalize().map(|c| inputs.contains(&c)).unwrap_or(false)
}

/// Image files under `dir`, recursively, and every other entry with why it is skipped:
/// other formats, earlier outputs, symbolic links (never followed: they could lead out of
/// the folder) and anything that is not a regular file.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, skipped: &mut Vec<(PathBuf, String)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let why = if kind.is_symlink() {
            "a symbolic link (not followed: it could lead out of the folder)".to_string()
        } else if kind.is_dir() {
            walk(&path, out, skipped)?;
            continue;
        } else if !kind.is_file() {
            "not a regular file".to_string()
        } else if name.starts_with(".obscura-") && name.ends_with(".tmp") {
            continue; // a killed run's partial output, removed by this run
        } else if path.file_stem().is_some_and(|s| s.to_string_lossy().ends_with(".anonymized")) {
            "an earlier output (*.anonymized.*)".to_string()
        } else {
            match path.extension().map(|e| e.to_string_lossy().into_owned()) {
                Some(ext) if Format::from_extension(&ext).is_some() => {
                    out.push(path);
                    continue;
                }
                Some(ext) => format!(".{ext} is not a format Obscura reads ({})", Format::names()),
                None => "no extension: give the file by name to have it read whatever it holds".to_string(),
            }
        };
        skipped.push((path, why));
    }
    Ok(())
}
