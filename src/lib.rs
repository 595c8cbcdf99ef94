//! # Obscura
//!
//! Face and body anonymisation for photos that people upload: detects faces and persons
//! with ONNX models through ONNX Runtime (by default CenterFace INT8 and NanoDet-m),
//! redacts them irreversibly (face-relative pixelation with noise by default), applies
//! EXIF orientation first and drops all metadata from the output. Any failure yields an
//! error and no image — never the original passed through.
//!
//! ```no_run
//! use obscura::{Anonymizer, Config};
//! use obscura::redact::Style;
//!
//! let mut config = Config::default();
//! config.redact.style = Style::DEFAULT_FILL;           // solid fill instead of pixelation
//! let anonymizer = Anonymizer::new(config)?;           // finds ONNX Runtime and the models
//! let out = anonymizer.anonymize(&std::fs::read("in.jpg")?)?;
//! std::fs::write("out.jpg", &out.bytes)?;
//! for region in &out.report.regions {
//!     println!("{:?} at {:?}", region.class, region.rect);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules: [`image_io`] (bytes ⇄ pixels, files), [`detect`] (models, ONNX Runtime),
//! [`redact`] (what happens to pixels), [`pipeline`] (one image end to end), [`eval`]
//! (scoring against annotated photos),
//! [`geometry`] (box math), [`config`] (all settings).

pub mod assets;
pub mod batch;
pub mod config;
pub mod detect;
pub mod error;
pub mod eval;
pub mod geometry;
pub mod image_io;
pub mod pipeline;
pub mod redact;
pub mod retention;
pub mod store;

pub use config::Config;
pub use error::Error;
pub use pipeline::{Anonymized, Anonymizer, Report};
