//! Finding the files Obscura needs at run time (the ONNX Runtime library, model files)
//! without hard-coding one location: an explicit path, then environment variables, then
//! folders next to the executable, then the source checkout the binary was built from
//! (where `scripts/setup` puts them).

use std::path::{Path, PathBuf};

/// The folders searched, in order, for `subdir` (`"lib"` or `"models"`).
pub fn search_dirs(subdir: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.clone());
        dirs.push(exe_dir.join(subdir));
        // target/release/obscura -> <checkout>/<subdir>; target/debug/deps/test -> same.
        for up in exe_dir.ancestors().skip(1).take(3) {
            dirs.push(up.join(subdir));
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(subdir));
    dirs.dedup();
    dirs
}

/// Where a file was looked for when it was not found; printed in errors.
#[derive(Debug, Clone)]
pub struct Searched(pub Vec<PathBuf>);

impl std::fmt::Display for Searched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
        write!(f, "{}", list.join(", "))
    }
}

/// The first existing file among: `explicit`, then the paths in `env_vars`, then each of
/// `names` in [`search_dirs`]`(subdir)`. An explicit path or variable that is set but
/// points nowhere is an error of its own, so a typo is not papered over by a fallback.
pub fn locate(explicit: Option<&Path>, env_vars: &[&str], subdir: &str, names: &[&str]) -> Result<PathBuf, Searched> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(Searched(vec![p.to_path_buf()])) };
    }
    for var in env_vars {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(value);
            return if p.is_file() { Ok(p) } else { Err(Searched(vec![p])) };
        }
    }
    let mut searched = Vec::new();
    for dir in search_dirs(subdir) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
            searched.push(p);
        }
    }
    Err(Searched(searched))
}
