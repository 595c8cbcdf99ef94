//! One image end to end: decode → detect → plan → redact → encode, with a report.
//!
//! Every stage returns `Result`, and any error means the image yields no output: the
//! caller gets an `Err` and no bytes (fail closed).

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::detect::{Class, Detection, DetectError, Detector, ModelInfo, boost};
use crate::error::Error;
use crate::image_io::{self, Decoded, Format, Frame};
use crate::redact::backend::Redactor;
use crate::redact::{self, Params, Region};

/// An anonymised image and what was done to it.
#[derive(Clone, Debug)]
pub struct Anonymized {
    /// The encoded image, in the input's format unless another was asked for (HEIC and
    /// AVIF come out as JPEG).
    pub bytes: Vec<u8>,
    pub format: Format,
    pub report: Report,
}

/// What happened to one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub width: u32,
    pub height: u32,
    pub format: Format,
    /// EXIF orientation applied before detection (1 = none).
    pub orientation: u8,
    /// Every frame's (or page's) detections and regions, in frame order: the totals.
    pub detections: Vec<Detection>,
    pub regions: Vec<Region>,
    /// For an animation or a multi-page TIFF, each frame or page on its own (empty for
    /// a still: the picture is the report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<FrameReport>,
    /// The models that ran (one per target class).
    pub models: Vec<ModelInfo>,
    pub metadata_kept: bool,
    pub timings_ms: Timings,
}

/// One frame of an animation, or one page of a TIFF.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameReport {
    pub width: u32,
    pub height: u32,
    /// How long the frame shows, for an animation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u32>,
    pub detections: Vec<Detection>,
    pub regions: Vec<Region>,
}

/// Milliseconds spent in each stage (summed over an animation's frames).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub decode: f64,
    pub detect: f64,
    pub redact: f64,
    pub encode: f64,
}

/// Per-call changes to an anonymiser's settings, for callers that serve many clients
/// with one [`Anonymizer`] (the HTTP service's query parameters). Only what needs no
/// other model can change: the redaction, a subset of the targets, and a score threshold
/// at least the configured one. `Default` changes nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    /// Output format (default: the input's, or JPEG for HEIC and AVIF, which Obscura
    /// reads but does not write; see [`Format::written_as`]).
    pub format: Option<Format>,
    /// Redaction settings for this call instead of the configured ones; checked like
    /// [`Config::validate`] checks them.
    pub redact: Option<crate::redact::RedactConfig>,
    /// Only these of the configured targets (asking for one the anonymiser does not
    /// detect is an error: it would be silently left visible).
    pub targets: Option<Vec<Class>>,
    /// CenterFace's score threshold for this call; at least the configured one (a lower
    /// one would need the model run again, and is an error).
    pub threshold: Option<f32>,
}

/// The anonymiser: built once, shared by every caller (`Send + Sync`, cheap to clone).
///
/// ```no_run
/// use obscura::{Anonymizer, Config};
/// let anonymizer = Anonymizer::new(Config::default())?;
/// let photo = std::fs::read("photo.jpg")?;
/// let out = anonymizer.anonymize(&photo)?;          // Err means: no image at all
/// std::fs::write("photo.anon.jpg", &out.bytes)?;
/// println!("{} faces redacted", out.report.regions.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Anonymizer {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    detectors: Vec<Box<dyn Detector>>,
    redactor: Redactor,
    limiter: Arc<tokio::sync::Semaphore>,
}

impl Anonymizer {
    /// Loads ONNX Runtime and a model per target class. Fails with a message that says
    /// what is missing and how to get it.
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let detectors = crate::detect::registry::build(&config)?;
        Self::with_detectors(config, detectors)
    }

    /// Builds an anonymiser around any detectors (other models, several fused); their
    /// detections are concatenated, person detectors first (their boxes feed the
    /// person-faces booster, and a face's redaction is applied over its body's), otherwise
    /// in the order given. At least one is required: an anonymiser that detects nothing
    /// would pass every photo through.
    pub fn with_detectors(config: Config, mut detectors: Vec<Box<dyn Detector>>) -> Result<Self, Error> {
        config.validate()?;
        detectors.sort_by_key(|d| d.class() != Class::Person);
        if detectors.is_empty() {
            return Err(DetectError::InvalidConfig("no detector to run (targets or face models are empty); nothing would be redacted".into()).into());
        }
        let permits = match config.max_concurrency {
            0 => config.runtime.resolved_threads().0,
            n => n,
        };
        let limiter = Arc::new(tokio::sync::Semaphore::new(permits.max(1)));
        let redactor = Redactor::new(config.redact.on)?;
        Ok(Self { inner: Arc::new(Inner { config, detectors, redactor, limiter }) })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The redaction backend in use (`"cpu"` or `"gpu: <adapter>"`).
    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    /// The models in use.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.inner.detectors.iter().map(|d| d.model().clone()).collect()
    }

    /// Anonymises an encoded image (JPEG, PNG, WebP, GIF, TIFF, HEIC or AVIF) and returns it
    /// in the same format (HEIC and AVIF as JPEG: [`Format::written_as`]).
    /// Blocks the calling thread; from async code use [`Anonymizer::anonymize_async`].
    pub fn anonymize(&self, bytes: &[u8]) -> Result<Anonymized, Error> {
        self.anonymize_to(bytes, None)
    }

    /// [`Anonymizer::anonymize`], encoding the output as `format` (or the input's format
    /// when `None`).
    pub fn anonymize_to(&self, bytes: &[u8], format: Option<Format>) -> Result<Anonymized, Error> {
        self.anonymize_with(bytes, &Options { format, ..Options::default() })
    }

    /// [`Anonymizer::anonymize`] with per-call [`Options`]; invalid options are an
    /// [`Error::Config`] before anything is decoded.
    pub fn anonymize_with(&self, bytes: &[u8], options: &Options) -> Result<Anonymized, Error> {
        self.check(options)?;
        let config = &self.inner.config;
        let t = Instant::now();
        let decoded = image_io::decode(bytes, &config.image)?;
        let decode_ms = ms(t);
        let Decoded { frame, format: input_format, orientation, metadata, more, timing, lossy } = decoded;
        let format = options.format.unwrap_or(input_format.written_as());
        if !more.is_empty() && !image_io::holds_several(format, timing.is_some()) {
            return Err(crate::config::ConfigError { field: "format", reason: image_io::holds_one(format, timing.is_some()) }.into());
        }
        // Every frame or page is detected on its own; any failure fails the whole image.
        let mut pictures = Vec::with_capacity(1 + more.len());
        pictures.push(frame);
        pictures.extend(more);
        let mut timings = Timings { decode: decode_ms, ..Timings::default() };
        let mut plans = Vec::with_capacity(pictures.len());
        for picture in &pictures {
            let t = Instant::now();
            plans.push(self.plan_with(picture, options)?);
            timings.detect += ms(t);
        }
        if timing.is_some() {
            // An animation's frames share one canvas: a face missed in one frame is still
            // covered where its neighbours found it.
            let own: Vec<Vec<Region>> = plans.iter().map(|(_, regions)| regions.clone()).collect();
            let spread = redact::spread_over_frames(&own, (pictures[0].width, pictures[0].height));
            for ((_, regions), spread) in plans.iter_mut().zip(spread) {
                *regions = spread;
            }
        }
        let mut frames = Vec::with_capacity(pictures.len());
        for (i, (picture, (detections, regions))) in pictures.iter_mut().zip(plans).enumerate() {
            timings.redact += self.apply(picture, &detections, &regions, options)?;
            frames.push(FrameReport { width: picture.width, height: picture.height, delay_ms: timing.as_ref().map(|t| t.delays_ms[i]), detections, regions });
        }
        // A still's one picture is the report itself; several are listed, and totalled.
        let (detections, regions) = if frames.len() == 1 {
            let only = frames.pop().expect("one frame");
            (only.detections, only.regions)
        } else {
            (frames.iter().flat_map(|f| f.detections.clone()).collect(), frames.iter().flat_map(|f| f.regions.clone()).collect())
        };
        let (width, height) = (pictures[0].width, pictures[0].height);
        let quality = image_io::Quality { jpeg: config.image.jpeg_quality, webp: lossy.then_some(config.image.webp_quality) };
        let t = Instant::now();
        let bytes = image_io::encode_pictures(pictures, timing.as_ref(), format, &metadata, quality)?;
        timings.encode = ms(t);
        let report = Report {
            width,
            height,
            format,
            orientation,
            detections,
            regions,
            frames,
            models: self.models(),
            metadata_kept: metadata.icc_profile.is_some() || metadata.exif.is_some(),
            timings_ms: timings,
        };
        Ok(Anonymized { bytes, format, report })
    }

    /// Checks per-call options against this anonymiser (see [`Options`]).
    pub fn check(&self, options: &Options) -> Result<(), Error> {
        let config = &self.inner.config;
        let bad = |field: &'static str, reason: String| Err(crate::config::ConfigError { field, reason }.into());
        if let Some(format) = options.format.filter(|f| !f.writable()) {
            return bad("format", format!("Obscura reads {} but does not write it: write {}", format.name(), Format::written_names()));
        }
        if let Some(redact) = &options.redact {
            let mut with = config.clone();
            with.redact = redact.clone();
            with.validate()?;
            if redact.on != config.redact.on {
                return bad("redact.on", "the redaction backend is chosen once, when the anonymiser is built".into());
            }
        }
        if let Some(targets) = &options.targets {
            if targets.is_empty() {
                return bad("detect.targets", "is empty: nothing would be detected, so nothing would be redacted".into());
            }
            if let Some(missing) = targets.iter().find(|t| !self.inner.detectors.iter().any(|d| d.class() == **t)) {
                return bad("detect.targets", format!("{missing:?} is not detected by this anonymiser"));
            }
            // Faces found by searching persons need the person detector to run.
            if config.detect.boost.contains(&crate::detect::Booster::PersonFaces) && targets.contains(&Class::Face) && !targets.contains(&Class::Person) {
                return bad("detect.targets", "faces without persons would lose the person-faces booster this anonymiser is configured with".into());
            }
        }
        if let Some(threshold) = options.threshold {
            if !(config.detect.threshold..=1.0).contains(&threshold) {
                return bad("detect.threshold", format!("must be between the configured {} and 1", config.detect.threshold));
            }
        }
        Ok(())
    }

    /// Detects faces and plans the regions to redact, without changing any pixel.
    pub fn plan(&self, frame: &Frame) -> Result<(Vec<Detection>, Vec<Region>), DetectError> {
        self.plan_with(frame, &Options::default())
    }

    /// [`Anonymizer::plan`] with per-call [`Options`] (already [checked](Anonymizer::check)).
    pub fn plan_with(&self, frame: &Frame, options: &Options) -> Result<(Vec<Detection>, Vec<Region>), DetectError> {
        let detect = &self.inner.config.detect;
        let wanted = |class: Class| options.targets.as_ref().is_none_or(|t| t.contains(&class));
        let mut detections = Vec::new();
        // Person detectors come first (see `with_detectors`), so their boxes are there
        // for the person-faces booster.
        for detector in self.inner.detectors.iter().filter(|d| wanted(d.class())) {
            let mut found = match detector.class() {
                Class::Face => boost::detect(detector.as_ref(), frame, detect, &detections)?,
                Class::Person | Class::Text => detector.detect(frame)?,
            };
            if let Some(threshold) = options.threshold {
                // CenterFace's threshold, as the setting is; other models keep theirs.
                found.retain(|d| !d.model.starts_with("centerface") || d.score.0 >= threshold);
            }
            detections.extend(found);
        }
        let redact = options.redact.as_ref().unwrap_or(&self.inner.config.redact);
        let regions = redact::plan(&detections, redact, frame.width, frame.height);
        Ok((detections, regions))
    }

    /// Detects and redacts in place on already-decoded pixels. On `Err` the frame may be
    /// partly redacted and must be discarded.
    pub fn redact_frame(&self, frame: &mut Frame) -> Result<(Vec<Detection>, Vec<Region>, Timings), Error> {
        let t = Instant::now();
        let (detections, regions) = self.plan(frame)?;
        let detect = ms(t);
        let redact = self.apply(frame, &detections, &regions, &Options::default())?;
        Ok((detections, regions, Timings { detect, redact, ..Timings::default() }))
    }

    /// Redacts planned regions in place (and outlines the detections when the settings
    /// ask for it); returns the milliseconds spent.
    fn apply(&self, frame: &mut Frame, detections: &[Detection], regions: &[Region], options: &Options) -> Result<f64, Error> {
        let redact = options.redact.as_ref().unwrap_or(&self.inner.config.redact);
        let t = Instant::now();
        self.inner.redactor.redact(frame, regions, &Params::for_image(redact))?;
        if redact.draw_boxes {
            for d in detections {
                if let Some(rect) = d.bbox.to_pixels(frame.width, frame.height) {
                    redact::cpu::draw_outline(frame, rect, [255, 0, 0]);
                }
            }
        }
        Ok(ms(t))
    }

    /// [`Anonymizer::anonymize`] for async code: runs on tokio's blocking pool, never on
    /// the reactor threads, with at most `max_concurrency` images in flight (callers
    /// beyond that wait their turn). Needs a tokio runtime.
    pub async fn anonymize_async(&self, bytes: Vec<u8>) -> Result<Anonymized, Error> {
        self.anonymize_with_async(bytes, Options::default()).await
    }

    /// [`Anonymizer::anonymize_with`] for async code, like [`Anonymizer::anonymize_async`].
    pub async fn anonymize_with_async(&self, bytes: Vec<u8>, options: Options) -> Result<Anonymized, Error> {
        let permit = self.inner.limiter.clone().acquire_owned().await.map_err(|_| Error::ShuttingDown)?;
        let this = self.clone();
        // The permit goes with the work: a caller that stops waiting (a timeout) does not
        // free a slot while the image is still being processed.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.anonymize_with(&bytes, &options)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))?
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
