//! From flags to the library's settings, in layers: the library's defaults
//! (`Config::default()`, `RunOptions::default()`, …), then `--config FILE` (TOML, the
//! library's `Config`), then each flag the user actually gave (on the command line or
//! through its environment variable).
//!
//! No default is written here. Clap shows the library's own as `[default: …]` (the strings
//! in [`SHOWN`] are made from them), and a flag that was not given never overrides the
//! file: [`given`] tells a typed flag from a shown default.

use std::path::Path;
use std::sync::LazyLock;

use anyhow::{Context, Result};
use clap::ArgMatches;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::parser::ValueSource;
use obscura::Config;
use obscura::config::Choice;
use obscura::redact::Style;
use obscura::retention::{RetentionConfig, RunOptions};
use obscura::store::StoreOptions;

/// The library's defaults as clap shows them.
pub struct Shown {
    pub targets: Vec<String>,
    pub face_models: Vec<String>,
    pub threshold: String,
    pub crowd_threshold: String,
    pub retina_threshold: String,
    pub device: String,
    pub style: String,
    pub person_style: String,
    pub text_style: String,
    pub shape: String,
    pub padding: String,
    pub redact_on: String,
    pub jpeg_quality: String,
    pub retries: String,
    pub interval: String,
    pub lease: String,
    pub retry_after: String,
    pub concurrency: String,
    pub purge_concurrency: String,
    pub batch: String,
}

pub static SHOWN: LazyLock<Shown> = LazyLock::new(|| {
    let c = Config::default();
    Shown {
        targets: c.detect.targets.iter().map(|v| v.name()).collect(),
        face_models: c.detect.face_models.iter().map(|v| v.name()).collect(),
        threshold: c.detect.threshold.to_string(),
        crowd_threshold: c.detect.crowd.threshold.to_string(),
        retina_threshold: c.detect.retinaface.threshold.to_string(),
        device: c.runtime.device.name(),
        style: style_name(Some(c.redact.style)).into(),
        person_style: style_name(c.redact.person_style).into(),
        text_style: style_name(Some(c.redact.text_style)).into(),
        shape: c.redact.shape.name(),
        padding: c.redact.padding.to_string(),
        redact_on: c.redact.on.name(),
        jpeg_quality: c.image.jpeg_quality.to_string(),
        retries: StoreOptions::default().max_retries.to_string(),
        interval: humantime::format_duration(RunOptions::default().interval).to_string(),
        lease: humantime::format_duration(RetentionConfig::DEFAULT_LEASE).to_string(),
        retry_after: humantime::format_duration(RetentionConfig::DEFAULT_RETRY_BASE).to_string(),
        concurrency: RetentionConfig::DEFAULT_CONCURRENCY.to_string(),
        purge_concurrency: RetentionConfig::DEFAULT_PURGE_CONCURRENCY.to_string(),
        batch: RunOptions::default().batch.to_string(),
    }
});

/// The `--style`/`--person-style` name of a style (`None`: persons kept).
pub fn style_name(style: Option<Style>) -> &'static str {
    style.map_or("keep", |s| s.kind())
}

/// A style by its `--style` name, with that style's default parameters; `keep` is `None`.
pub fn style_named(name: &str) -> Option<Style> {
    Style::of_kind(name)
}

/// Parses a library [`Choice`] by its names, listing them in `--help` and in errors.
pub fn choice<T: Choice + Send + Sync + Clone>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| PossibleValue::new(v.name())))
        .map(|name| T::from_name(&name).expect("clap accepted only listed names"))
}

/// Whether the user gave the flag `id` (on the command line or in its environment
/// variable), as opposed to clap filling in the shown default.
pub fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

/// `value` into `slot` when the flag `id` was given.
pub fn layer<T: Clone>(m: &ArgMatches, id: &str, slot: &mut T, value: &T) {
    if given(m, id) {
        *slot = value.clone();
    }
}

/// The settings file (the library's `Config` as TOML; unknown keys are errors), or the
/// library's defaults without one.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let Some(path) = path else { return Ok(Config::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the settings file {}", path.display()))?;
    parse_config(&text, path)
}

/// [`load_config`] on text already read from `path`.
pub fn parse_config(text: &str, path: &Path) -> Result<Config> {
    let config: Config = toml::from_str(text).with_context(|| format!("the settings file {}", path.display()))?;
    config.validate().with_context(|| format!("the settings file {}", path.display()))?;
    Ok(config)
}

/// The service's defaults as clap shows them.
pub struct ServeShown {
    pub listen: String,
    pub max_concurrency: String,
    pub queue: String,
    pub max_body_bytes: String,
    pub request_timeout_secs: String,
    pub header_timeout_secs: String,
    pub shutdown_grace_secs: String,
}

pub static SERVE_SHOWN: LazyLock<ServeShown> = LazyLock::new(|| {
    let s = obscura::serve::ServeSettings::default();
    ServeShown {
        listen: s.listen,
        max_concurrency: s.max_concurrency.to_string(),
        queue: s.queue.to_string(),
        max_body_bytes: s.max_body_bytes.to_string(),
        request_timeout_secs: s.request_timeout_secs.to_string(),
        header_timeout_secs: s.header_timeout_secs.to_string(),
        shutdown_grace_secs: s.shutdown_grace_secs.to_string(),
    }
});
