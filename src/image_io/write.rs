//! Files on disk: atomic writes (temporary file in the destination folder, then rename)
//! and joining untrusted relative names under an output folder without escaping it.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Writing an output file failed; the destination is untouched.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A relative output name that would land outside its output folder.
#[derive(Debug, thiserror::Error)]
#[error("output path {name:?} escapes the output folder {dir}")]
pub struct PathError {
    pub name: PathBuf,
    pub dir: PathBuf,
}

/// Writes `bytes` to `path` atomically: the data goes to a temporary file in the same
/// folder, is flushed to disk, and is renamed over `path`. Readers see either the old file
/// or the complete new one; after a crash at most a stray `.obscura-*.tmp` file remains.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out.bin");
/// obscura::image_io::write_atomic(&path, b"hello").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"hello");
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".obscura-").suffix(".tmp");
    // tempfile creates 0600 files; an output should get the mode an ordinary write would
    // (0666 less the umask), or keep the mode of the file it replaces.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o666);
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Joins a relative `name` (from a folder walk, an object key, a user flag) under `dir`,
/// refusing absolute names and any `..` that would climb out of `dir`.
///
/// ```
/// use std::path::Path;
/// use obscura::image_io::safe_join;
/// assert_eq!(safe_join(Path::new("out"), Path::new("a/b.jpg")).unwrap(), Path::new("out/a/b.jpg"));
/// assert!(safe_join(Path::new("out"), Path::new("../b.jpg")).is_err());
/// assert!(safe_join(Path::new("out"), Path::new("/etc/passwd")).is_err());
/// ```
pub fn safe_join(dir: &Path, name: &Path) -> Result<PathBuf, PathError> {
    let escape = || PathError { name: name.to_path_buf(), dir: dir.to_path_buf() };
    let mut out = dir.to_path_buf();
    let mut depth = 0usize;
    for component in name.components() {
        match component {
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(escape()),
        }
    }
    if depth == 0 {
        return Err(escape());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn atomic_writes_get_the_mode_of_an_ordinary_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        write_atomic(&dir.path().join("atomic"), b"x").unwrap();
        let mode = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("atomic"), mode("plain"));
        // Replacing a file keeps its mode.
        std::fs::set_permissions(dir.path().join("plain"), std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&dir.path().join("plain"), b"y").unwrap();
        assert_eq!(mode("plain"), 0o640);
    }
}
