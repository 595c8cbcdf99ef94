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
//! # Parts (Cargo features)
//!
//! With `default-features = false` the crate is the core pipeline and nothing else:
//! [`image_io`] (bytes ⇄ pixels, metadata, atomic files), [`detect`] (models through ONNX
//! Runtime), [`redact`] (what happens to pixels; the rayon CPU backend), [`pipeline`] (one
//! image end to end: [`Anonymizer`]), [`config`] (every setting), [`geometry`] (box
//! math), [`assets`] (finding ONNX Runtime and the models) and [`error`].
//!
//! | feature | adds |
//! |---|---|
//! | `gpu` | the wgpu redaction backend (`redact::gpu`) |
//! | `store` | folders and S3 as object stores (`store`) |
//! | `batch` | resumable, sharded batch jobs over stores (`batch`; implies `store`) |
//! | `retention` | catalog, policy, scheduler, erasure, audit (`retention`; implies `store`) |
//! | `eval` | scoring against annotated photos, charts (`eval`) |
//! | `serve` | the HTTP service (`serve`) |
//! | `cli` (default) | the `obscura` binary, with all of the above |
//! | `cuda` | the CUDA execution provider for ONNX Runtime |

pub mod assets;
#[cfg(feature = "batch")]
pub mod batch;
pub mod config;
pub mod detect;
pub mod error;
#[cfg(feature = "eval")]
pub mod eval;
pub mod geometry;
pub mod image_io;
pub mod pipeline;
pub mod redact;
#[cfg(feature = "retention")]
pub mod retention;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "store")]
pub mod store;

pub use config::Config;
pub use error::Error;
pub use pipeline::{Anonymized, Anonymizer, Options, Report};
