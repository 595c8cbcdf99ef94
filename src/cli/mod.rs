//! The `obscura` command line: argument definitions ([`args`]), settings layered from the
//! library's defaults, `--config FILE` and the flags typed ([`settings`]), one module per
//! command, and what they share about running ([`console`]: worker count, progress bar).
//! Output formatting over the library; no logic the library lacks.

pub mod anonymise;
pub mod args;
pub mod batch;
pub mod console;
pub mod eval;
pub mod retention;
pub mod serve;
pub mod settings;
