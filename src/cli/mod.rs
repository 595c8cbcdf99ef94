//! The `obscura` command line: argument definitions and output formatting over the
//! library; no logic the library lacks.

pub mod anonymise;
pub mod batch;
pub mod args;
pub mod eval;
pub mod retention;
