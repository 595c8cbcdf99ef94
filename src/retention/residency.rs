//! Data residency: where each store keeps its data (the policy's `[stores]` table) and
//! where each class of upload may be kept (a class's `locations`).
//!
//! ```toml
//! [stores]                     # store → location (the names are yours: a region, a country)
//! "s3://photos-eu" = "eu"
//! "/srv/photos" = "eu"
//! "s3://photos-us/uploads" = "us"
//!
//! [classes.photo]
//! locations = ["eu"]           # uploads of this class may only be stored in these
//! ```
//!
//! A store is in the location of the longest declared store it equals or lies under
//! (`s3://photos-eu/2026` is under `s3://photos-eu`; `s3://photos-eu2` is not). A folder
//! path with `.` or `..` components, or a relative one, is in no location: it could name a
//! folder anywhere. A store in no location satisfies no class that lists locations.
//!
//! This module owns the matching and the wording of a refusal; the checks themselves sit
//! where data is written or reported: registration, export and `status` (`retention`),
//! and the `batch` command (`--policy`). Anonymisation writes back into the upload's own
//! store, so it cannot move data.

use std::collections::BTreeMap;

/// The location `store` is declared in, if any (see the module docs).
pub fn location_of<'a>(stores: &'a BTreeMap<String, String>, store: &str) -> Option<&'a str> {
    let store = normalise(store)?;
    stores
        .iter()
        .filter_map(|(root, location)| normalise(root).map(|root| (root, location)))
        .filter(|(root, _)| store == *root || store.strip_prefix(root.as_str()).is_some_and(|rest| rest.starts_with('/')))
        .max_by_key(|(root, _)| root.len())
        .map(|(_, location)| location.as_str())
}

/// Why keeping data of a class limited to `allowed` in `store` breaks residency, or `None`
/// when it does not (an empty `allowed` allows everywhere).
pub fn refusal(stores: &BTreeMap<String, String>, allowed: &[String], store: &str) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let list = allowed.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ");
    match location_of(stores, store) {
        Some(at) if allowed.iter().any(|l| l == at) => None,
        Some(at) => Some(format!("store {store} is in {at:?}, and this class may only be stored in {list}")),
        None => Some(format!("store {store} is in no location the policy's [stores] declares, and this class may only be stored in {list}")),
    }
}

/// Why copying everything of `src` into `dst` (a batch) would move data to another
/// location, or `None`: a source declared in a location may only be written to a store
/// declared in the same one. A source in no declared location has none to keep.
pub fn move_refusal(stores: &BTreeMap<String, String>, src: &str, dst: &str) -> Option<String> {
    let from = location_of(stores, src)?;
    match location_of(stores, dst) {
        Some(to) if to == from => None,
        Some(to) => Some(format!("{src} is in {from:?} and {dst} in {to:?}: its data may not leave {from:?}")),
        None => Some(format!("{src} is in {from:?} and {dst} in no location the policy's [stores] declares: its data may not leave {from:?}")),
    }
}

/// The store as compared: trailing slashes dropped; `None` for a folder path that is
/// relative or has `.` or `..` components.
fn normalise(store: &str) -> Option<String> {
    let trimmed = store.trim_end_matches('/');
    if let Some(rest) = trimmed.split_once("://").map(|(_, rest)| rest) {
        if rest.split('/').any(|c| matches!(c, "" | "." | "..")) {
            return None;
        }
        return Some(trimmed.to_string());
    }
    let path = trimmed.strip_prefix("file://").unwrap_or(trimmed);
    let inner = path.strip_prefix('/')?;
    if inner.split('/').any(|c| matches!(c, "" | "." | "..")) {
        return None;
    }
    Some(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> BTreeMap<String, String> {
        [("s3://photos-eu", "eu"), ("/srv/photos", "eu"), ("s3://photos-eu/us-copy/", "us"), ("/srv/photos/ch", "ch")].into_iter().map(|(s, l)| (s.to_string(), l.to_string())).collect()
    }

    #[test]
    fn the_longest_declared_store_a_store_lies_under_gives_its_location() {
        let s = stores();
        assert_eq!(location_of(&s, "s3://photos-eu"), Some("eu"));
        assert_eq!(location_of(&s, "s3://photos-eu/2026/"), Some("eu"));
        assert_eq!(location_of(&s, "s3://photos-eu/us-copy/x"), Some("us"));
        assert_eq!(location_of(&s, "/srv/photos/ch/zurich"), Some("ch"));
        assert_eq!(location_of(&s, "/srv/photos/"), Some("eu"));
        // A name that merely starts the same is another store.
        assert_eq!(location_of(&s, "s3://photos-eu2"), None);
        assert_eq!(location_of(&s, "/srv/photos-us"), None);
    }

    #[test]
    fn paths_that_could_lead_anywhere_are_in_no_location() {
        let s = stores();
        for store in ["/srv/photos/../us", "/srv/photos/./x", "srv/photos", "/srv//photos", "s3://photos-eu/../photos-us", "s3://photos-eu//x"] {
            assert_eq!(location_of(&s, store), None, "{store}");
        }
    }

    #[test]
    fn a_batch_keeps_data_in_its_sources_location() {
        let s = stores();
        assert_eq!(move_refusal(&s, "/srv/photos/in", "s3://photos-eu/out"), None);
        assert_eq!(move_refusal(&s, "/tmp/in", "/tmp/out"), None, "an undeclared source has no location to keep");
        assert!(move_refusal(&s, "/srv/photos/in", "/srv/photos/ch/out").unwrap().contains("\"ch\""));
        assert!(move_refusal(&s, "/srv/photos/in", "/srv/photos/../elsewhere").unwrap().contains("no location"));
    }

    #[test]
    fn a_refusal_says_where_the_store_is_and_where_the_class_may_be() {
        let s = stores();
        let eu = vec!["eu".to_string()];
        assert_eq!(refusal(&s, &eu, "/srv/photos/a"), None);
        assert_eq!(refusal(&s, &[], "/anywhere"), None);
        let why = refusal(&s, &eu, "s3://photos-eu/us-copy").unwrap();
        assert!(why.contains("\"us\"") && why.contains("\"eu\""), "{why}");
        let why = refusal(&s, &eu, "/tmp/x").unwrap();
        assert!(why.contains("no location"), "{why}");
    }
}
