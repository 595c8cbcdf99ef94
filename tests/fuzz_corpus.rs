//! Every fuzz target's committed corpus and every input a fuzzer ever crashed on
//! (`fuzz/regressions/TARGET/`), replayed through the same checks the fuzz targets run
//! (`fuzz/checks.rs`). `scripts/fuzz` runs the fuzzers themselves.

mod common;

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let name = file.display().to_string();
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("{name}: {}", message.unwrap_or_default());
            }
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for {target}");
    eprintln!("{target}: {n} inputs replayed");
}

#[test]
fn anonymize_corpus() {
    replay("anonymize", checks::anonymize);
}

#[test]
fn metadata_corpus() {
    replay("metadata", checks::metadata);
}

#[test]
fn policy_corpus() {
    replay("policy", checks::policy);
}

#[test]
fn store_key_corpus() {
    replay("store_key", checks::store_key);
}
