//! The audit log's cryptography: the keyed hash that stands in for a subject id, and the
//! MAC chain that makes the append-only log tamper-evident. Storage is the catalog's job.
//!
//! Every record carries `mac = HMAC(secret, prev_mac ‖ canonical record)`; the catalog keeps
//! the last sequence number and MAC in a separate head row. Editing, deleting, reordering
//! or inserting a record, or cutting the log short, breaks the chain, and without the
//! per-deployment secret nobody can forge a consistent one.

use std::path::Path;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The per-deployment secret (at least 32 bytes). Keep it out of the database: whoever
/// has both can test guesses of subject ids against the log.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a secret could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("audit secret {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("audit secret {path} is too short ({len} bytes; at least 32 needed)")]
    Short { path: String, len: usize },
}

impl Secret {
    /// Wraps raw bytes (at least 32).
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= 32).then_some(Self(bytes))
    }

    /// Reads a secret file.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SecretError::Io { path: name.clone(), source })?;
        let trimmed = String::from_utf8(bytes.clone()).ok().map(|s| s.trim().as_bytes().to_vec()).unwrap_or(bytes);
        let len = trimmed.len();
        Self::from_bytes(trimmed).ok_or(SecretError::Short { path: name, len })
    }

    /// Reads a secret file, creating it (64 random hex digits, mode 0600) if it is missing.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        if !path.exists() {
            let name = path.display().to_string();
            let io = |source| SecretError::Io { path: name.clone(), source };
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(|e| io(std::io::Error::other(e.to_string())))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut f) => std::io::Write::write_all(&mut f, hex::encode(raw).as_bytes()).map_err(io)?,
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        Self::load(path)
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The stand-in for a subject id in the audit log: HMAC-SHA256 of the id, hex. The
    /// same id always gives the same hash (so the log can be searched by subject), but it
    /// cannot be reversed or tested without the secret.
    pub fn subject_hash(&self, subject: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"obscura subject\0");
        mac.update(subject.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The chain MAC of `record` following `prev`.
    pub fn chain(&self, prev: &str, record: &AuditFields<'_>) -> String {
        let mut mac = self.mac();
        mac.update(b"obscura audit\0");
        mac.update(prev.as_bytes());
        mac.update(b"\0");
        mac.update(&serde_json::to_vec(record).expect("audit fields serialise"));
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The fields of one audit record that its MAC covers, in a fixed order.
#[derive(Clone, Debug, Serialize)]
pub struct AuditFields<'a> {
    pub seq: i64,
    pub at: i64,
    pub event: &'a str,
    pub subject_hash: Option<&'a str>,
    pub upload_id: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: &'a str,
}

/// Replaces every occurrence of the raw subject id in a message (store errors quote keys,
/// and keys often embed the id) by its hash, so the log never holds the id.
pub fn scrub(message: &str, subject: Option<&str>, secret: &Secret) -> String {
    match subject {
        Some(id) if !id.is_empty() && message.contains(id) => message.replace(id, &format!("subject:{}", secret.subject_hash(id))),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(vec![b; 32]).unwrap()
    }

    fn fields(detail: &str) -> AuditFields<'_> {
        AuditFields { seq: 1, at: 5, event: "purge", subject_hash: Some("ab"), upload_id: Some("u1"), rule: None, outcome: "done", detail }
    }

    #[test]
    fn subject_hash_is_keyed_and_stable() {
        assert_eq!(secret(1).subject_hash("alice"), secret(1).subject_hash("alice"));
        assert_ne!(secret(1).subject_hash("alice"), secret(2).subject_hash("alice"));
        assert_ne!(secret(1).subject_hash("alice"), secret(1).subject_hash("bob"));
        assert!(!secret(1).subject_hash("alice").contains("alice"));
    }

    #[test]
    fn chain_depends_on_key_previous_and_every_field() {
        let s = secret(1);
        let base = s.chain("p", &fields("x"));
        assert_ne!(base, s.chain("q", &fields("x")));
        assert_ne!(base, s.chain("p", &fields("y")));
        assert_ne!(base, secret(2).chain("p", &fields("x")));
        let mut other = fields("x");
        other.seq = 2;
        assert_ne!(base, s.chain("p", &other));
    }

    #[test]
    fn scrub_removes_the_raw_id() {
        let s = secret(1);
        let m = scrub("delete users/alice-42/1.jpg: timeout", Some("alice-42"), &s);
        assert!(!m.contains("alice-42") && m.contains(&s.subject_hash("alice-42")), "{m}");
    }

    #[test]
    fn short_secrets_are_refused_and_created_ones_are_private() {
        assert!(Secret::from_bytes(vec![0; 31]).is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/secret");
        let a = Secret::load_or_create(&path).unwrap();
        let b = Secret::load_or_create(&path).unwrap();
        assert_eq!(a.subject_hash("x"), b.subject_hash("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
