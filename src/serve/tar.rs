//! A minimal tar writer (POSIX ustar, with a PAX header for a path over 100 bytes): the
//! archive format of an export answered over HTTP, readable by `tar -x` and every
//! archive library. It owns only the format; what goes in is the caller's.

/// Appends one regular file (`path`, mode 0644, mtime `mtime` Unix seconds) to `out`.
#[cfg(test)]
pub fn append(out: &mut Vec<u8>, path: &str, data: &[u8], mtime: u64) {
    out.extend_from_slice(&entry_header(path, data.len() as u64, mtime));
    out.extend_from_slice(data);
    out.extend_from_slice(padding(data.len() as u64));
}

/// What goes before a file's `size` bytes of data: its header blocks (with a PAX header
/// for a path over 100 bytes). After the data come [`padding`]'s bytes. For a writer that
/// streams the data without copying it.
pub fn entry_header(path: &str, size: u64, mtime: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1536);
    if path.len() > 100 {
        // PAX extended header: "LEN path=VALUE\n", where LEN counts the whole record.
        let body = format!(" path={path}\n");
        let mut len = body.len() + 1;
        while (len.to_string().len() + body.len()) != len {
            len = len.to_string().len() + body.len();
        }
        let record = format!("{len}{body}");
        header(&mut out, "PaxHeader", record.len() as u64, mtime, b'x');
        pad(&mut out, record.as_bytes());
        header(&mut out, &path[path.len() - 100..], size, mtime, b'0');
    } else {
        header(&mut out, path, size, mtime, b'0');
    }
    out
}

/// The zero bytes that follow `size` bytes of file data, up to the next 512-byte block.
pub fn padding(size: u64) -> &'static [u8] {
    &[0u8; 512][..((512 - size % 512) % 512) as usize]
}

/// Ends the archive (two zero blocks).
pub fn finish(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 1024]);
}

fn header(out: &mut Vec<u8>, name: &str, size: u64, mtime: u64, kind: u8) {
    let mut h = [0u8; 512];
    let name = name.as_bytes();
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}", width = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    out.extend_from_slice(&h);
}

fn pad(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system's `tar` reads what this writes, long names included.
    #[test]
    fn tar_reads_the_archive() {
        let long = format!("uploads/0001-{}.jpg", "x".repeat(150));
        let mut archive = Vec::new();
        append(&mut archive, "manifest.json", b"{}", 1_700_000_000);
        append(&mut archive, &long, &[7u8; 1000], 1_700_000_000);
        finish(&mut archive);
        assert_eq!(archive.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, &archive).unwrap();
        let out = std::process::Command::new("tar").arg("-xf").arg(&path).arg("-C").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(dir.path().join("manifest.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(dir.path().join(&long)).unwrap(), vec![7u8; 1000]);
    }
}
