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
/// or the complete new one; after a crash at most a stray `.obscura-PID-*.tmp` file
/// remains, which [`remove_stale_temps`] removes. An existing `path` that is not a regular
/// file (a symbolic link, a folder, a device) is an error and is left as it is.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out.bin");
/// obscura::image_io::write_atomic(&path, b"hello").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"hello");
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    // Renaming over a link would replace the link, over a device (`/dev/null` as root)
    // the device node: neither is what a caller naming it meant, so neither is touched.
    if let Ok(existing) = std::fs::symlink_metadata(path) {
        if !existing.file_type().is_file() {
            let kind = if existing.file_type().is_symlink() { "a symbolic link" } else if existing.is_dir() { "a folder" } else { "not a regular file" };
            return Err(err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("is {kind}; only a regular file is replaced"))));
        }
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    let prefix = temp_prefix();
    builder.prefix(&prefix).suffix(".tmp");
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

/// Temporary files are named `.obscura-PID-RANDOM.tmp`, so that a later run can tell
/// the leftovers of a dead process (killed mid-write) from another live run's.
fn temp_prefix() -> String {
    format!(".obscura-{}-", std::process::id())
}

/// Removes the temporary files that dead processes left in `dir` (a run killed by
/// `kill -9` or the file-size limit while writing). Files of live processes are left
/// alone. Returns how many were removed. Only on Linux (it reads `/proc`); elsewhere 0.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    if !Path::new("/proc/self").exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(".obscura-")?.strip_suffix(".tmp")?.split_once('-')).map(|(pid, _)| pid) else {
            continue;
        };
        if pid.bytes().all(|b| b.is_ascii_digit()) && !pid.is_empty() && !Path::new("/proc").join(pid).exists() && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Creates the folders between `root` and `file` (which [`safe_join`] put under `root`),
/// refusing any that exists as a symbolic link or as something other than a folder, so
/// that a file written there cannot land outside `root` through a link planted inside
/// it. `root` itself may be a link: the user named it.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let file = dir.path().join("a/b/c.jpg");
/// obscura::image_io::create_dirs_within(dir.path(), &file).unwrap();
/// assert!(dir.path().join("a/b").is_dir());
/// ```
pub fn create_dirs_within(root: &Path, file: &Path) -> Result<(), WriteError> {
    let err = |path: &Path, source| WriteError { path: path.to_path_buf(), source };
    let Some(parent) = file.parent() else { return Ok(()) };
    let rel = parent.strip_prefix(root).map_err(|_| err(file, std::io::Error::other(format!("not inside {}", root.display()))))?;
    std::fs::create_dir_all(root).map_err(|e| err(root, e))?;
    let mut dir = root.to_path_buf();
    for part in rel.components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(err(file, std::io::Error::other(format!("{} is a symbolic link; outputs never leave the output folder", dir.display()))));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err(file, std::io::Error::other(format!("{} is a file, not a folder", dir.display())))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                Ok(()) => {}
                // Created meanwhile by another writer: fine if it is a real folder.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) => {}
                Err(e) => return Err(err(&dir, e)),
            },
            Err(e) => return Err(err(&dir, e)),
        }
    }
    Ok(())
}

/// Creates `file`'s parent folders (a path the user chose: links are followed), saying
/// which ancestor is in the way when one is a file rather than the bare "File exists".
pub fn create_parent_dirs(file: &Path) -> Result<(), WriteError> {
    let Some(parent) = file.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    if let Some(blocker) = parent.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir()) {
        return Err(WriteError { path: file.to_path_buf(), source: std::io::Error::other(format!("{} is a file, not a folder", blocker.display())) });
    }
    std::fs::create_dir_all(parent).map_err(|source| WriteError { path: parent.to_path_buf(), source })
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
    fn folders_within_the_root_are_never_links() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("sub")).unwrap();
        let e = create_dirs_within(root.path(), &root.path().join("sub/deeper/x.jpg")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!elsewhere.path().join("deeper").exists(), "nothing created through the link");
        std::fs::write(root.path().join("file"), b"").unwrap();
        let e = create_dirs_within(root.path(), &root.path().join("file/x.jpg")).unwrap_err();
        assert!(e.to_string().contains("is a file, not a folder"), "{e}");
        let e = create_parent_dirs(&root.path().join("file/a/x.jpg")).unwrap_err();
        assert!(e.to_string().contains("file, not a folder"), "{e}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_temporary_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has a pid this large (the kernel's limit is 2^22).
        std::fs::write(dir.path().join(".obscura-999999999-abc.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join(format!("{}live.tmp", temp_prefix())), b"half").unwrap();
        std::fs::write(dir.path().join(".obscura-notes.tmp"), b"not ours").unwrap();
        std::fs::write(dir.path().join("photo.jpg"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [format!("{}live.tmp", temp_prefix()), ".obscura-notes.tmp".into(), "photo.jpg".into()]);
    }

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

    /// A destination that is a link, a folder or a device is refused and left alone: the
    /// rename would replace the link (or, as root, `/dev/null` itself) with a file.
    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"kept").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        for (name, kind) in [("link", "symbolic link"), ("folder", "a folder")] {
            let e = write_atomic(&dir.path().join(name), b"new").unwrap_err();
            assert!(e.to_string().contains(kind), "{e}");
        }
        assert!(std::fs::symlink_metadata(dir.path().join("link")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(dir.path().join("target")).unwrap(), b"kept");
        let e = write_atomic(Path::new("/dev/null"), b"new").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp")).count();
        assert_eq!(leftovers, 0);
    }
}
