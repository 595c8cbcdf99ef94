//! The retention policy: a TOML file saying, per class of upload, how long it is kept and
//! what happens on expiry and on unsubscribe. It owns parsing and validation only; the
//! catalog and scheduler act on it.
//!
//! ```toml
//! # An action that has not run this long after it fell due is reported overdue.
//! deadline = "1h"
//!
//! [classes.photo]
//! max_age = "730d"             # optional: without it, kept while the person is subscribed
//! on_expiry = "anonymise"      # purge | anonymise
//! on_unsubscribe = "purge"
//! grace = "0s"                 # delay after unsubscribe (default 0: synchronous)
//! legal_hold = false           # true: nothing of this class is deleted; reported instead
//! locations = ["eu"]           # optional: stored only in stores declared there
//!
//! [stores]                     # optional: where each store keeps its data (`residency`)
//! "s3://photos-eu" = "eu"
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens to an upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Delete the original and every derived object (every version on a versioned bucket).
    Purge,
    /// Redact faces and persons in place, drop metadata and derived objects, and unlink the
    /// upload from the person.
    #[serde(alias = "anonymize")]
    Anonymise,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Purge => "purge",
            Action::Anonymise => "anonymise",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "purge" => Some(Action::Purge),
            "anonymise" => Some(Action::Anonymise),
            _ => None,
        }
    }
}

/// The rule for one class of upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    /// Age at which an upload expires (`None`: kept while its person is subscribed).
    #[serde(default, with = "opt_duration")]
    pub max_age: Option<Duration>,
    pub on_expiry: Action,
    pub on_unsubscribe: Action,
    /// Delay between unsubscribe and the action (default 0: done before the call returns).
    #[serde(default, with = "duration")]
    pub grace: Duration,
    /// While true, nothing of this class is purged or anonymised; due actions wait as
    /// `held` and are reported by `status`.
    #[serde(default)]
    pub legal_hold: bool,
    /// Where uploads of this class may be stored: location names of the policy's
    /// `[stores]` (empty: anywhere). See [`residency`](super::residency).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<String>,
}

/// A whole policy file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How long after it fell due an action may still be pending before it is overdue.
    #[serde(with = "duration")]
    pub deadline: Duration,
    pub classes: BTreeMap<String, ClassRule>,
    /// Store (folder path or `s3://bucket[/prefix]`) → the location it keeps its data in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, String>,
}

/// Why a policy file was refused. The message names the line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("policy {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|message| PolicyError::Invalid { path: path.display().to_string(), message })
    }

    /// Parses policy text; the error names the line and column.
    ///
    /// ```
    /// let policy = obscura::retention::Policy::parse(r#"
    ///     deadline = "1h"
    ///     [classes.photo]
    ///     max_age = "30d"
    ///     on_expiry = "anonymise"
    ///     on_unsubscribe = "purge"
    /// "#).unwrap();
    /// assert_eq!(policy.classes["photo"].max_age, Some(std::time::Duration::from_secs(30 * 86400)));
    /// ```
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Policy = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
        if policy.classes.is_empty() {
            return Err("no [classes.NAME] section: every upload needs a class".into());
        }
        for name in policy.classes.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("class name {name:?}: use letters, digits, '_' or '-'"));
            }
        }
        for (name, rule) in &policy.classes {
            for location in &rule.locations {
                if !policy.stores.values().any(|l| l == location) {
                    return Err(format!("class {name} may only be stored in {location:?}, but no store in [stores] is there: nothing of it could be registered"));
                }
            }
        }
        Ok(policy)
    }

    /// The rule for `class`, if the policy has one.
    pub fn class(&self, class: &str) -> Option<&ClassRule> {
        self.classes.get(class)
    }

    /// Why an upload of `class` may not be kept in `store` (its class limits where it is
    /// stored, and the store is elsewhere), or `None`. A class the policy does not name
    /// has no limit to break.
    pub fn residency_refusal(&self, class: &str, store: &str) -> Option<String> {
        let allowed = self.class(class).map(|r| r.locations.as_slice()).unwrap_or_default();
        super::residency::refusal(&self.stores, allowed, store)
    }
}

/// toml's messages span several lines (a snippet of the file); keep the location and the
/// reason on one line.
fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let head = lines.next().unwrap_or_default().trim_start_matches("TOML parse error ").to_string();
    let reason = message.lines().map(str::trim).rfind(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | ")).unwrap_or_default();
    if reason.is_empty() || head.ends_with(reason) { head } else { format!("{head}: {reason}") }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("duration {s:?}: {e} (write e.g. \"30d\", \"12h\", \"0s\")"))
}

mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::parse_duration(&String::deserialize(d)?).map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
deadline = "1h"

[classes.photo]
max_age = "365d"
on_expiry = "anonymise"
on_unsubscribe = "purge"

[classes.minor]
on_expiry = "purge"
on_unsubscribe = "purge"
grace = "7d"
legal_hold = true
"#;

    #[test]
    fn parses_the_documented_fields() {
        let p = Policy::parse(GOOD).unwrap();
        assert_eq!(p.deadline, Duration::from_secs(3600));
        let photo = p.class("photo").unwrap();
        assert_eq!(photo.max_age, Some(Duration::from_secs(365 * 86400)));
        assert_eq!(photo.on_expiry, Action::Anonymise);
        assert_eq!(photo.grace, Duration::ZERO);
        assert!(!photo.legal_hold);
        let minor = p.class("minor").unwrap();
        assert_eq!(minor.max_age, None);
        assert_eq!(minor.grace, Duration::from_secs(7 * 86400));
        assert!(minor.legal_hold);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD.replace("on_unsubscribe = \"purge\"\n\n[classes.minor]", "on_unsubscribe = \"shred\"\n\n[classes.minor]");
        let e = Policy::parse(&bad).unwrap_err();
        assert!(e.contains("line 7"), "{e}");
        assert!(e.contains("shred") || e.contains("unknown variant"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let e = Policy::parse(&GOOD.replace("\"365d\"", "\"a year\"")).unwrap_err();
        assert!(e.contains("line 5") && e.contains("a year"), "{e}");
        let e = Policy::parse(&GOOD.replace("legal_hold = true", "legal_hold = true\nkeep = 1")).unwrap_err();
        assert!(e.contains("line 14") && e.contains("keep"), "{e}");
        let e = Policy::parse("deadline = \"1h\"\n[classes]\n").unwrap_err();
        assert!(e.contains("no [classes"), "{e}");
    }
}
