//! The retention catalog's cryptography: the keyed hash that stands in for a subject id
//! (the catalog never stores a raw one), the sealing of store keys (which often name the
//! person), and the MAC chain that makes the append-only audit log tamper-evident.
//! Storage is the catalog's job.
//!
//! Every record carries `mac = HMAC(secret, prev_mac ‖ canonical record)`; the catalog keeps
//! the last sequence number and MAC in a separate head row. Editing, deleting, reordering
//! or inserting a record breaks the chain, and without the per-deployment secret nobody
//! can forge a consistent one.
//!
//! Cutting the log short (and fixing the head row to match), or putting back an older
//! copy of the whole catalog, leaves a shorter chain that is still consistent. The
//! [`Witness`] catches that: a small file outside the catalog (beside the secret) that
//! holds the newest head this host has seen, under its own MAC. The log must reach at
//! least that far and contain that exact record.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The per-deployment secret (at least 32 bytes). Keep it out of the database: whoever
/// has both can test guesses of subject ids against the log.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    /// The AES-SIV key for sealing store keys, derived once from `key`.
    seal_key: [u8; 64],
}

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

/// How subject ids are compared: without surrounding whitespace, in Unicode NFC. So
/// "José" typed on a Mac (NFD) and on Windows (NFC) is one person, and "alice " is
/// "alice". Case is kept: ids are the caller's, and many are case-sensitive.
///
/// ```
/// use obscura::retention::normalize_subject;
/// assert_eq!(normalize_subject(" Jose\u{301}\n"), "Jos\u{e9}");
/// ```
pub fn normalize_subject(subject: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    subject.trim().nfc().collect()
}

impl Secret {
    /// Wraps raw bytes (at least 32).
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        if bytes.len() < 32 {
            return None;
        }
        let mut seal_key = [0u8; 64];
        for (half, label) in seal_key.chunks_exact_mut(32).zip([b"obscura seal 1\0", b"obscura seal 2\0"]) {
            let mut mac = HmacSha256::new_from_slice(&bytes).expect("HMAC takes keys of any length");
            mac.update(label);
            half.copy_from_slice(&mac.finalize().into_bytes());
        }
        Some(Self { key: bytes, seal_key })
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
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// The stand-in for a subject id in the catalog and the audit log: HMAC-SHA256 of the
    /// id as [`normalize_subject`] gives it, hex. The same person always gives the same
    /// hash (so the log can be searched by subject), but it cannot be reversed or tested
    /// without the secret.
    pub fn subject_hash(&self, subject: &str) -> String {
        self.hash_exactly(&normalize_subject(subject))
    }

    /// Every hash under which the catalog may hold `subject`: [`Secret::subject_hash`]
    /// first, then those a catalog written before ids were normalised used (the id's
    /// bytes as given, trimmed or not, in NFC or NFD), so that an erasure still finds a
    /// person registered then.
    pub(crate) fn subject_hashes(&self, subject: &str) -> Vec<String> {
        use unicode_normalization::UnicodeNormalization;
        let mut hashes = vec![self.subject_hash(subject)];
        for form in [subject, subject.trim()] {
            for variant in [form.to_string(), form.nfc().collect(), form.nfd().collect()] {
                let hash = self.hash_exactly(&variant);
                if !hashes.contains(&hash) {
                    hashes.push(hash);
                }
            }
        }
        hashes
    }

    fn hash_exactly(&self, subject: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"obscura subject\0");
        mac.update(subject.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Seals a store key for the catalog: AES-256-SIV (RFC 5297, deterministic, so the
    /// catalog can still find and de-duplicate keys) under a key derived from the secret,
    /// with the store location as associated data. The result is `s1:` plus hex.
    pub(crate) fn seal(&self, store: &str, key: &str) -> String {
        let sealed = self.siv().encrypt([b"obscura store key".as_slice(), store.as_bytes()], key.as_bytes()).expect("SIV encryption of a short key cannot fail");
        format!("s1:{}", hex::encode(sealed))
    }

    /// Opens a key sealed by [`seal`](Self::seal) for the same store. `None` when it was
    /// not sealed with this secret for this store (or was altered).
    pub(crate) fn unseal(&self, store: &str, sealed: &str) -> Option<String> {
        let raw = hex::decode(sealed.strip_prefix("s1:")?).ok()?;
        let plain = self.siv().decrypt([b"obscura store key".as_slice(), store.as_bytes()], &raw).ok()?;
        String::from_utf8(plain).ok()
    }

    fn siv(&self) -> aes_siv::siv::Aes256Siv {
        use aes_siv::KeyInit;
        aes_siv::siv::Aes256Siv::new_from_slice(&self.seal_key).expect("a 64-byte key")
    }

    /// The tag that makes a [`Witness`] file unforgeable without the secret.
    fn witness_tag(&self, seq: i64, mac: &str) -> String {
        let mut m = self.mac();
        m.update(b"obscura witness\0");
        m.update(seq.to_string().as_bytes());
        m.update(b"\0");
        m.update(mac.as_bytes());
        hex::encode(m.finalize().into_bytes())
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

/// A witness of the audit log's head, kept outside the catalog (by default beside the
/// secret): `seq` and `mac` of the newest record this host appended, plus a tag (HMAC
/// under the secret) so it cannot be edited without the secret. Only ever moves forward.
///
/// It detects truncation and rollback of the catalog by whoever can write the database
/// but not the witness. It does not help against someone who can also write the witness
/// file (they can put back an old one with an old catalog), and the last record appended
/// before a crash may not be witnessed yet.
#[derive(Clone, Debug)]
pub struct Witness {
    path: PathBuf,
}

/// The head a witness file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessedHead {
    pub seq: i64,
    pub mac: String,
}

/// Why a witness file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("audit witness {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("audit witness {path} was edited or belongs to another secret (its tag does not match)")]
    Forged { path: String },
}

impl Witness {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> WitnessError {
        WitnessError::Io { path: self.path.display().to_string(), source }
    }

    /// The witnessed head, `None` when there is no witness file yet.
    pub fn read(&self, secret: &Secret) -> Result<Option<WitnessedHead>, WitnessError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let forged = || WitnessError::Forged { path: self.path.display().to_string() };
        let mut parts = text.split_whitespace();
        let (Some("obscura-audit-witness-v1"), Some(seq), Some(mac), Some(tag), None) = (
            parts.next(),
            parts.next().and_then(|p| p.strip_prefix("seq=")),
            parts.next().and_then(|p| p.strip_prefix("mac=")),
            parts.next().and_then(|p| p.strip_prefix("tag=")),
            parts.next(),
        ) else {
            return Err(forged());
        };
        let seq: i64 = seq.parse().map_err(|_| forged())?;
        if secret.witness_tag(seq, mac) != tag {
            return Err(forged());
        }
        Ok(Some(WitnessedHead { seq, mac: mac.to_string() }))
    }

    /// Moves the witness to `seq`/`mac` unless it already witnesses a later record.
    /// Several processes may call this at once: a lock file beside the witness orders them.
    pub fn advance(&self, secret: &Secret, seq: i64, mac: &str) -> Result<(), WitnessError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let current = self.read(secret)?;
        if current.is_some_and(|c| c.seq >= seq) {
            return Ok(());
        }
        let line = format!("obscura-audit-witness-v1 seq={seq} mac={mac} tag={}\n", secret.witness_tag(seq, mac));
        crate::image_io::write_atomic(&self.path, line.as_bytes()).map_err(|e| self.io(e.source))
        // The lock is released when `lock` is dropped.
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

/// Replaces every occurrence of an upload's store keys in a message (store errors quote
/// keys, and keys often name the person) by `<key>`, so the catalog and its append-only
/// log never hold them in the clear.
pub fn scrub(message: &str, keys: &[&str]) -> String {
    let mut keys: Vec<&str> = keys.iter().copied().filter(|k| !k.is_empty()).collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len())); // a key that contains another goes first
    keys.iter().fold(message.to_string(), |m, k| m.replace(k, "<key>"))
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
        // One person however the id is spelled in Unicode or padded.
        assert_eq!(secret(1).subject_hash("Jos\u{e9}"), secret(1).subject_hash("Jose\u{301}"));
        assert_eq!(secret(1).subject_hash("alice"), secret(1).subject_hash(" alice\t"));
        assert_ne!(secret(1).subject_hash("alice"), secret(1).subject_hash("Alice"));
        // A catalog from before normalisation hashed the bytes as given: still found.
        let legacy = secret(1).hash_exactly("Jose\u{301} ");
        assert!(secret(1).subject_hashes("Jose\u{301} ").contains(&legacy));
        assert!(secret(1).subject_hashes("Jos\u{e9} ").contains(&legacy), "the NFD form of an NFC request");
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
    fn scrub_removes_the_keys() {
        let m = scrub("delete users/alice-42/1.jpg: timeout; then users/alice-42/1.jpg.thumb", &["users/alice-42/1.jpg", "users/alice-42/1.jpg.thumb"]);
        assert_eq!(m, "delete <key>: timeout; then <key>");
    }

    #[test]
    fn sealed_keys_open_only_with_the_same_secret_and_store() {
        let (a, b) = (secret(1), secret(2));
        let sealed = a.seal("/srv/up", "carol-unique-id-42/1.jpg");
        assert!(!sealed.contains("carol"), "{sealed}");
        assert_eq!(sealed, a.seal("/srv/up", "carol-unique-id-42/1.jpg"), "deterministic: the catalog can look keys up");
        assert_ne!(sealed, a.seal("/srv/other", "carol-unique-id-42/1.jpg"));
        assert_eq!(a.unseal("/srv/up", &sealed).as_deref(), Some("carol-unique-id-42/1.jpg"));
        assert_eq!(b.unseal("/srv/up", &sealed), None);
        assert_eq!(a.unseal("/srv/other", &sealed), None);
        assert_eq!(a.unseal("/srv/up", "carol-unique-id-42/1.jpg"), None, "a key in the clear is not taken as sealed");
    }

    #[test]
    fn witness_only_moves_forward_and_cannot_be_edited() {
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::new(dir.path().join("audit.witness"));
        let s = secret(1);
        assert_eq!(w.read(&s).unwrap(), None);
        w.advance(&s, 5, "m5").unwrap();
        w.advance(&s, 3, "m3").unwrap(); // a slower process: ignored
        assert_eq!(w.read(&s).unwrap(), Some(WitnessedHead { seq: 5, mac: "m5".into() }));
        let text = std::fs::read_to_string(w.path()).unwrap();
        std::fs::write(w.path(), text.replace(" seq=5 ", " seq=9 ")).unwrap();
        assert!(matches!(w.read(&s), Err(WitnessError::Forged { .. })));
        std::fs::write(w.path(), text).unwrap();
        assert!(matches!(w.read(&secret(2)), Err(WitnessError::Forged { .. })), "another secret");
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
