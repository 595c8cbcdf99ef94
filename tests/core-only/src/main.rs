//! The smallest useful dependant of Obscura's core: `obscura-core-only < in.jpg > out.jpg`
//! anonymises one photo from stdin to stdout, and writes nothing when that fails.
//! CI builds it with `cargo build -p obscura-core-only`, which compiles the core and only
//! what the core needs (no database, object store, GPU, charts or command-line parser).

use std::io::{Read, Write};

fn main() {
    let anonymizer = match obscura::Anonymizer::new(obscura::Config::default()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("error: reading stdin: {e}");
        std::process::exit(2);
    }
    match anonymizer.anonymize(&input) {
        Ok(out) => {
            if let Err(e) = std::io::stdout().write_all(&out.bytes) {
                eprintln!("error: writing stdout: {e}");
                std::process::exit(1);
            }
            eprintln!("{} region(s) redacted", out.report.regions.len());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
