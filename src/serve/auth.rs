//! Who may call what: bearer tokens read from a file, each with its scopes. It owns the
//! token file's format and the comparison; it does not own routes (each route says the
//! scope it needs) nor the error bodies.
//!
//! The file holds one token per line, `SCOPES TOKEN`, with scopes separated by commas,
//! and `#` comments:
//!
//! ```text
//! # who            scopes               token
//! anonymise                             4f0c9a1e8b7d2c6f5a3e9d1b0c8f7a6e
//! retention,admin                       b6d1e0f9c8a7b6c5d4e3f2a1b0c9d8e7
//! ```
//!
//! Several tokens may hold the same scope (rotation: add the new one, move clients over,
//! remove the old). A token is compared in constant time against every configured token
//! (by their SHA-256 digests), and is never logged.

use std::path::Path;

use sha2::{Digest, Sha256};

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /v1/anonymise`, `POST /v1/detect`.
    Anonymise,
    /// Registering uploads, erasure, export, retention status and plan.
    Retention,
    /// Everything, including the audit log's verification.
    Admin,
}

impl Scope {
    fn parse(name: &str) -> Option<Scope> {
        match name {
            "anonymise" | "anonymize" => Some(Scope::Anonymise),
            "retention" => Some(Scope::Retention),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Shortest token accepted: 128 bits as hex.
pub const MIN_TOKEN_LEN: usize = 32;

/// Why the token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("token file {path}, line {line}: {reason}")]
    Invalid { path: String, line: usize, reason: String },
    #[error("token file {path} holds no token: every route but the health checks would refuse every request")]
    Empty { path: String },
}

/// The configured tokens (as digests) and their scopes.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], Vec<Scope>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.entries.len())
    }
}

/// The outcome of checking a request's token for a scope.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token, or one that is not configured.
    Unauthenticated,
    /// A valid token without the scope.
    Forbidden,
}

impl Tokens {
    /// Reads the token file (see the module docs).
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io { path: name.clone(), source })?;
        Self::parse(&text).map_err(|(line, reason)| match line {
            0 => TokenFileError::Empty { path: name.clone() },
            line => TokenFileError::Invalid { path: name.clone(), line, reason },
        })
    }

    /// Parses the file's text; `Err((line, reason))`, line 0 when no token at all.
    fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut entries = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(scopes), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err((n + 1, "expected `SCOPES TOKEN`".into()));
            };
            let scopes = scopes
                .split(',')
                .map(|s| Scope::parse(s.trim()).ok_or_else(|| (n + 1, format!("unknown scope {s:?} (anonymise, retention, admin)"))))
                .collect::<Result<Vec<_>, _>>()?;
            if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((n + 1, format!("a token is at least {MIN_TOKEN_LEN} printable characters (e.g. `openssl rand -hex 16`)")));
            }
            entries.push((digest(token), scopes));
        }
        if entries.is_empty() {
            return Err((0, String::new()));
        }
        Ok(Tokens { entries })
    }

    /// Whether `authorization` (the header's value) carries a token with `scope`. Every
    /// configured token is compared, in constant time, whatever matches.
    pub fn check(&self, authorization: Option<&[u8]>, scope: Scope) -> Verdict {
        // The scheme is case-insensitive (RFC 9110); the token is not.
        let token = authorization.filter(|h| h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer ")).map(|h| &h[7..]);
        let Some(token) = token else { return Verdict::Unauthenticated };
        let given = digest_bytes(token);
        let mut scopes: Option<&Vec<Scope>> = None;
        for (expected, s) in &self.entries {
            if constant_time_eq(expected, &given) {
                scopes = Some(s);
            }
        }
        match scopes {
            None => Verdict::Unauthenticated,
            Some(s) if s.contains(&scope) || s.contains(&Scope::Admin) => Verdict::Allowed,
            Some(_) => Verdict::Forbidden,
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    digest_bytes(token.as_bytes())
}

fn digest_bytes(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn tokens_are_checked_by_scope() {
        let tokens = Tokens::parse(&format!("# comment\nanonymise {A}\nretention,admin {B} # ops\n")).unwrap();
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        assert_eq!(tokens.check(Some(&bearer(A)), Scope::Anonymise), Verdict::Allowed);
        assert_eq!(tokens.check(Some(&bearer(A)), Scope::Retention), Verdict::Forbidden);
        assert_eq!(tokens.check(Some(&bearer(B)), Scope::Anonymise), Verdict::Allowed, "admin may do everything");
        assert_eq!(tokens.check(Some(&bearer(&A[1..])), Scope::Anonymise), Verdict::Unauthenticated);
        assert_eq!(tokens.check(Some(A.as_bytes()), Scope::Anonymise), Verdict::Unauthenticated, "no Bearer prefix");
        assert_eq!(tokens.check(Some(format!("bearer {A}").as_bytes()), Scope::Anonymise), Verdict::Allowed, "the scheme is case-insensitive");
        assert_eq!(tokens.check(Some(format!("Bearer {}", A.to_uppercase()).as_bytes()), Scope::Anonymise), Verdict::Unauthenticated, "the token is not");
        assert_eq!(tokens.check(None, Scope::Anonymise), Verdict::Unauthenticated);
    }

    #[test]
    fn weak_or_malformed_token_files_are_refused() {
        assert_eq!(Tokens::parse("anonymise short").unwrap_err().0, 1);
        assert_eq!(Tokens::parse(&format!("\nsuperuser {A}")).unwrap_err().0, 2);
        assert_eq!(Tokens::parse(&format!("anonymise {A} extra")).unwrap_err().0, 1);
        assert_eq!(Tokens::parse("# nothing\n").unwrap_err().0, 0);
    }
}
