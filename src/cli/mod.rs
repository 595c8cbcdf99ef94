//! The `obscura` command line: argument definitions and output formatting over the
//! library; no logic the library lacks.

pub mod anonymise;
pub mod args;
pub mod batch;
pub mod console;
pub mod eval;
pub mod retention;
pub mod settings;
