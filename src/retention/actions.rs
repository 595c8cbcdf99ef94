//! What a job does to the stored objects: purge (delete the original and every derived
//! object, then check they are gone) or anonymise (redact in the strongest setting, write
//! back atomically, move to a random key if the key names the person, delete derived
//! objects). Both are idempotent: running one again after a crash at any point finishes
//! the work without harm. The catalog bookkeeping around them is the scheduler's.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::detect::Class;
use crate::redact::{Shape, Style};
use crate::store::{Store, StoreError, StoreOptions};
use crate::{Anonymizer, Config};

use super::catalog::{Catalog, CatalogError, Job};

/// Why an action did not complete; it is retried later.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{key} still exists after it was deleted")]
    NotGone { key: String },
    #[error("upload has no key (already purged)")]
    NoKey,
    #[error("{0}")]
    Anonymizer(String),
}

/// What an action did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// Original and derived objects deleted (`objects` keys; `versions` older versions
    /// and delete markers removed from a versioned bucket).
    Purged { objects: usize, versions: usize },
    /// Redacted and written back at `key`; derived objects deleted.
    Anonymised { key: String, renamed: bool, regions: usize },
    /// Anonymisation failed, so the upload was purged instead (fail closed).
    PurgedInstead { objects: usize, error: String },
}

impl Done {
    pub fn outcome(&self) -> &'static str {
        match self {
            Done::Purged { .. } => "purged",
            Done::Anonymised { .. } => "anonymised",
            Done::PurgedInstead { .. } => "purged_instead",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Done::Purged { objects, versions: 0 } => format!("{objects} object(s) deleted and verified gone"),
            Done::Purged { objects, versions } => format!("{objects} object(s) deleted with {versions} stored version(s) and verified gone"),
            Done::Anonymised { renamed, regions, .. } => {
                format!("{regions} region(s) filled, metadata dropped{}", if *renamed { ", moved to a random key" } else { "" })
            }
            Done::PurgedInstead { objects, error } => format!("anonymisation failed ({error}); purged instead: {objects} object(s) deleted"),
        }
    }
}

/// The anonymiser settings for retention: faces, persons and text (a name badge or a
/// number plate would still name the person), solid fill, no metadata. Irreversible by
/// construction (the pixels are replaced, not transformed).
pub fn strongest(mut config: Config) -> Config {
    config.detect.targets = vec![Class::Face, Class::Person, Class::Text];
    config.redact.style = Style::DEFAULT_FILL;
    config.redact.person_style = Some(Style::DEFAULT_FILL);
    config.redact.text_style = Style::DEFAULT_FILL;
    config.redact.shape = Shape::Rect;
    config.redact.draw_boxes = false;
    config.image.keep_metadata = false;
    // One image at a time, and a fill costs next to nothing: no GPU to probe.
    config.redact.on = crate::redact::backend::RedactOn::Cpu;
    config
}

/// Opens each store location once.
#[derive(Debug, Default)]
pub struct Stores {
    options: StoreOptions,
    open: Mutex<HashMap<String, Store>>,
}

impl Stores {
    pub fn new(options: StoreOptions) -> Self {
        Self { options, open: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, location: &str) -> Result<Store, StoreError> {
        // A panic elsewhere while holding the lock leaves a usable cache of opened stores.
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = open.get(location) {
            return Ok(store.clone());
        }
        let store = Store::open_existing(location, &self.options)?;
        open.insert(location.to_string(), store.clone());
        Ok(store)
    }
}

/// Deletes `keys` and checks each is gone (every version, on a versioned bucket).
/// Returns the number of versions removed by id.
pub async fn delete_verified(store: &Store, keys: &[String]) -> Result<usize, ActionError> {
    match store.purge_verified(keys).await? {
        (versions, None) => Ok(versions),
        (_, Some(key)) => Err(ActionError::NotGone { key }),
    }
}

/// Purges an upload's original and derived objects.
pub async fn purge(store: &Store, job: &Job) -> Result<Done, ActionError> {
    let mut keys: Vec<String> = job.upload.key.iter().cloned().collect();
    // A half-done anonymisation may have written the new key already.
    keys.extend(job.new_key.iter().filter(|k| Some(*k) != job.upload.key.as_ref()).cloned());
    keys.extend(job.upload.derived.iter().cloned());
    let versions = delete_verified(store, &keys).await?;
    Ok(Done::Purged { objects: keys.len(), versions })
}

/// A random key for an anonymised upload whose key named its person:
/// `anonymised/<32 hex digits>.<original extension>`.
pub fn random_key(old: &str) -> String {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).expect("the OS random source works");
    let ext = old.rsplit_once('/').map_or(old, |(_, name)| name).rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.filter(|e| !e.is_empty() && e.len() <= 5 && e.chars().all(|c| c.is_ascii_alphanumeric())) {
        Some(ext) => format!("anonymised/{}.{ext}", hex::encode(raw)),
        None => format!("anonymised/{}", hex::encode(raw)),
    }
}

/// Anonymises an upload in place (or at a fresh random key when its key contains the
/// subject id), then deletes its derived objects. If the image cannot be anonymised
/// (corrupt, not an image, detection fails), it is purged instead.
pub async fn anonymise(store: &Store, catalog: &Catalog, anonymizer: &Anonymizer, job: &Job) -> Result<Done, ActionError> {
    let old = job.upload.key.clone().ok_or(ActionError::NoKey)?;
    let renaming = job.upload.key_names_subject;
    let target = match (&job.new_key, renaming) {
        (Some(k), _) => k.clone(),
        (None, true) => catalog.choose_new_key(job, &random_key(&old)).await?,
        (None, false) => old.clone(),
    };
    let renamed = target != old;
    let mut fallback_keys = vec![old.clone()];
    if renamed {
        fallback_keys.push(target.clone());
    }
    fallback_keys.extend(job.upload.derived.iter().cloned());
    let bytes = match store.get(&old).await {
        Ok(bytes) => Some(bytes),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let regions = match bytes {
        Some(bytes) => match anonymizer.anonymize_async(bytes.to_vec()).await {
            Ok(out) => {
                let regions = out.report.regions.len();
                store.put(&target, out.bytes).await?;
                if renamed {
                    store.purge(&old).await?;
                }
                regions
            }
            Err(e) => return purge_instead(store, &fallback_keys, e.to_string()).await,
        },
        // The original is gone: either an earlier attempt moved it (the new key holds
        // the anonymised copy) or it was lost; without a copy there is nothing to keep.
        None if renamed && store.exists(&target).await? => 0,
        None => return purge_instead(store, &fallback_keys, format!("{old} is missing from the store")).await,
    };
    delete_verified(store, &job.upload.derived).await?;
    if renamed && store.exists(&old).await? {
        return Err(ActionError::NotGone { key: old });
    }
    Ok(Done::Anonymised { key: target, renamed, regions })
}

async fn purge_instead(store: &Store, keys: &[String], error: String) -> Result<Done, ActionError> {
    delete_verified(store, keys).await?;
    Ok(Done::PurgedInstead { objects: keys.len(), error })
}

#[cfg(test)]
mod tests {
    use super::random_key;

    #[test]
    fn random_keys_keep_only_a_plain_extension() {
        let k = random_key("users/alice/2024/beach.JPG");
        assert!(k.starts_with("anonymised/") && k.ends_with(".jpg") && !k.contains("alice"), "{k}");
        assert_eq!(k.len(), "anonymised/".len() + 32 + 4);
        assert!(!random_key("users/alice/noext").contains('.'));
        assert!(!random_key("a.b/alice.tar gz").contains(' '));
        assert_ne!(random_key("x.png"), random_key("x.png"));
    }
}
