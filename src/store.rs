//! Image stores: a local folder or an S3-compatible bucket, through `object_store`.
//!
//! A [`Store`] is opened from a location — a folder path, `file:///abs/path`, or
//! `s3://bucket/prefix` — and addressed by keys relative to it (`a/b.jpg`). S3 endpoint
//! and credentials come from the usual AWS environment variables (`AWS_ENDPOINT_URL`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, …).
//! Listing streams page by page; every write is atomic (a local write goes to a staged
//! file that is renamed into place; an S3 PUT replaces the object whole), and transient
//! failures (5xx, timeouts, dropped connections) are retried with exponential backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {location}: {message}")]
    Open { location: String, message: String },
    #[error("invalid key {key:?}: {message}")]
    Key { key: String, message: String },
    #[error("{key} changed since it was read; not overwritten")]
    Changed { key: String },
    /// A folder store's key that is, or lies under, a symbolic link: refused, since the
    /// link could lead anywhere on the machine.
    #[error("{}{name} is a symbolic link; a folder store never follows one (it could lead outside the store)", if key == name { String::new() } else { format!("{key}: ") })]
    Link { key: String, name: String },
    /// The store's own message already includes its causes, so it is not chained again.
    #[error("{op} {key}: {cause}")]
    Io { op: &'static str, key: String, cause: object_store::Error },
    /// A request about object versions (listing or deleting one) failed.
    #[error("{op} {key}: {message}")]
    Versions { op: &'static str, key: String, message: String },
}

impl StoreError {
    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { cause: object_store::Error::NotFound { .. }, .. })
    }
}

/// Retry settings for transient store failures.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    /// Attempts after the first (default 5).
    pub max_retries: usize,
    /// First backoff delay, doubled each attempt up to `max_backoff` (default 100 ms / 5 s).
    pub init_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up retrying after this long (default 60 s).
    pub retry_timeout: Duration,
    /// S3 settings that override the environment, as `object_store` names them
    /// (`endpoint`, `access_key_id`, `secret_access_key`, `region`, `allow_http`, …).
    pub s3: Vec<(String, String)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_retries: 5,
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(60),
            s3: Vec::new(),
        }
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Key relative to the store's location, `/`-separated, exactly as listed (it may be
    /// one that [`Store::get`] refuses, such as `../x.jpg` or `a//b.jpg`).
    pub key: String,
    pub size: u64,
    /// The version the listing saw: the S3 ETag, or for a folder the same
    /// inode-mtime-size tag [`Store::get_versioned`] returns. `None` when the store gave
    /// none. A batch journal compares it, so that an object replaced under the same key
    /// (a raw photo re-uploaded where a clean one was) is done again.
    pub version: Option<String>,
    /// Why this entry is not an object that can be read (a symbolic link, a name that is
    /// not UTF-8, a folder marker): listed anyway, so that it is reported, not lost.
    pub problem: Option<Problem>,
}

/// What is wrong with a listed entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not an object to process (a symbolic link, a folder marker): skip it, saying why.
    Skip(String),
    /// An object that cannot be read: it fails, saying why.
    Fail(String),
}

/// A local folder or an S3-compatible bucket prefix.
///
/// ```no_run
/// # async fn f() -> Result<(), obscura::store::StoreError> {
/// use futures::StreamExt;
/// use obscura::store::{Store, StoreOptions};
/// let src = Store::open("s3://uploads/2026/", &StoreOptions::default())?;
/// let dst = Store::open("/srv/anonymised", &StoreOptions::default())?;
/// let mut listing = src.list();
/// while let Some(entry) = listing.next().await {
///     let entry = entry?;
///     let bytes = src.get(&entry.key).await?;
///     dst.put(&entry.key, bytes.to_vec()).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// The same bucket, typed, and an HTTP client, for requests `ObjectStore` does not
    /// cover (object versions).
    s3: Option<(Arc<object_store::aws::AmazonS3>, reqwest::Client)>,
    retry: StoreOptions,
    prefix: Path,
    location: String,
    /// The folder, for local stores.
    local_root: Option<PathBuf>,
    /// The folder store itself, for its own mapping of keys to file names.
    local: Option<Arc<object_store::local::LocalFileSystem>>,
}

impl Store {
    /// Opens a folder (created if missing: right for a destination) or an
    /// `s3://bucket/prefix` location.
    pub fn open(location: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(location, options, true)
    }

    /// A store held in memory, gone when dropped: for an export answered over HTTP, so
    /// that a person's photos are never written to a disk on the way.
    pub fn memory() -> Self {
        Self {
            inner: Arc::new(object_store::memory::InMemory::new()),
            s3: None,
            retry: StoreOptions::default(),
            prefix: Path::default(),
            location: "memory:".into(),
            local_root: None,
            local: None,
        }
    }

    /// [`Store::open`] for a source: a folder that does not exist is an error, so a
    /// mistyped path cannot become an empty batch that "succeeds".
    pub fn open_existing(location: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(location, options, false)
    }

    fn open_with(location: &str, options: &StoreOptions, create: bool) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open { location: location.to_string(), message };
        let retry = RetryConfig {
            backoff: BackoffConfig { init_backoff: options.init_backoff, max_backoff: options.max_backoff, base: 2.0 },
            max_retries: options.max_retries,
            retry_timeout: options.retry_timeout,
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(open_err("no bucket name".into()));
            }
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                // `replace` sends If-Match (AWS S3, MinIO, R2, Ceph and moto support it).
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
            for (key, value) in &options.s3 {
                let key: object_store::aws::AmazonS3ConfigKey = key.parse().map_err(|e: object_store::Error| open_err(e.to_string()))?;
                builder = builder.with_config(key, value);
            }
            let s3 = Arc::new(builder.build().map_err(|e| open_err(e.to_string()))?);
            let prefix = Path::parse(prefix.trim_end_matches('/')).map_err(|e| open_err(e.to_string()))?;
            let http = reqwest::Client::builder().build().map_err(|e| open_err(e.to_string()))?;
            return Ok(Self { inner: s3.clone(), s3: Some((s3, http)), retry: options.clone(), prefix, location: location.to_string(), local_root: None, local: None });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(open_err("unsupported scheme (use a folder path, file://, or s3://)".into()));
        }
        let dir = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        if create {
            std::fs::create_dir_all(&dir).map_err(|e| open_err(e.to_string()))?;
        } else if !dir.is_dir() {
            return Err(open_err("folder does not exist".into()));
        }
        let dir = dir.canonicalize().map_err(|e| open_err(e.to_string()))?;
        // Deleting an object also removes the folders it leaves empty (up to the root):
        // a purged `carol/1.jpg` must not leave a `carol/` behind that names her.
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| open_err(e.to_string()))?.with_automatic_cleanup(true);
        let fs = Arc::new(fs);
        Ok(Self { inner: fs.clone(), s3: None, retry: options.clone(), prefix: Path::default(), location: dir.display().to_string(), local_root: Some(dir), local: Some(fs) })
    }

    /// Where the store is (the canonical folder, or the URL given).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The folder of a local store.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// True when both stores address the same place (same folder, or same bucket prefix).
    pub fn same_place(&self, other: &Store) -> bool {
        self.location.trim_end_matches('/') == other.location.trim_end_matches('/')
    }

    fn path(&self, key: &str) -> Result<Path, StoreError> {
        let rel = Path::parse(key).map_err(|e| StoreError::Key { key: key.to_string(), message: e.to_string() })?;
        if rel.as_ref().is_empty() || key.split('/').any(|part| part == ".." || part == ".") {
            return Err(StoreError::Key { key: key.to_string(), message: "empty, `.` or `..` segments are not allowed".into() });
        }
        // object_store's folder mapping goes through file URLs, where a last segment
        // ending in `:` or `|` (a drive letter to the URL parser) makes the write fail
        // and leave a folder of that name behind (found by the store_key fuzzer).
        if self.local_root.is_some() && rel.parts().last().is_some_and(|last| last.as_ref().ends_with([':', '|'])) {
            return Err(StoreError::Key { key: key.to_string(), message: "a folder store cannot hold a name ending in `:` or `|`".into() });
        }
        let path: Path = self.prefix.parts().chain(rel.parts()).collect();
        self.refuse_links(key, &path)?;
        Ok(path)
    }

    /// In a folder store, refuses a key that is a symbolic link or lies under one: every
    /// operation (read, write, delete) addresses keys through [`Store::path`], so none
    /// reads or writes outside the folder through a link, and none deletes a link while
    /// the file it points to stays. Missing parts are fine (a write creates them). The
    /// check runs right before each operation; someone who can write inside the store
    /// while Obscura runs could still swap a folder for a link in between.
    fn refuse_links(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let (Some(root), Some(local)) = (&self.local_root, &self.local) else { return Ok(()) };
        let Ok(full) = local.path_to_filesystem(path) else { return Ok(()) };
        let Ok(rel) = full.strip_prefix(root) else { return Ok(()) };
        let mut at = root.clone();
        for part in rel.components() {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let name = at.strip_prefix(root).unwrap_or(&at).display().to_string();
                    return Err(StoreError::Link { key: key.to_string(), name });
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Every entry under the location, streamed (S3 lists 1,000 keys per request), in no
    /// particular order. An odd entry never ends the listing: a key that no request can
    /// address, a name that is not UTF-8 or a symbolic link comes as an [`Entry`] with
    /// its [`Problem`]. Only a failure of the listing itself (an unreadable folder at the
    /// root, a failed request) is an error, after which the stream ends.
    pub fn list(&self) -> BoxStream<'static, Result<Entry, StoreError>> {
        match (&self.local_root, &self.s3) {
            (Some(root), _) => list_folder(root.clone()),
            (None, Some(_)) => self.list_s3(),
            // In memory: keys are exactly what was put.
            (None, None) => {
                let size = |m: &object_store::ObjectMeta| m.size;
                self.inner
                    .list(None)
                    .map(move |meta| meta.map(|m| Entry { key: m.location.to_string(), size: size(&m), version: m.e_tag.clone(), problem: None }).map_err(|cause| StoreError::Io { op: "list", key: "memory:".into(), cause }))
                    .boxed()
            }
        }
    }

    /// ListObjectsV2, page by page, with the keys exactly as the bucket holds them
    /// (object_store's own listing fails a whole page on one key it cannot represent).
    fn list_s3(&self) -> BoxStream<'static, Result<Entry, StoreError>> {
        let this = self.clone();
        let prefix = if self.prefix.as_ref().is_empty() { String::new() } else { format!("{}/", self.prefix.as_ref()) };
        futures::stream::try_unfold(Some(None::<String>), move |token| {
            let (this, prefix) = (this.clone(), prefix.clone());
            async move {
                let Some(token) = token else { return Ok(None) };
                let (s3, _) = this.s3.as_ref().expect("an S3 store");
                let mut query = vec![("list-type".to_string(), "2".to_string()), ("prefix".to_string(), prefix.clone())];
                query.extend(token.map(|t| ("continuation-token".to_string(), t)));
                let body = this.signed(s3, reqwest::Method::GET, &Path::default(), query, "list", &this.location).await?;
                let page = parse_list_page(&body).map_err(|message| StoreError::Versions { op: "list", key: this.location.clone(), message })?;
                let entries: Vec<Result<Entry, StoreError>> = page
                    .keys
                    .into_iter()
                    .filter_map(|(key, size, version)| key.strip_prefix(prefix.as_str()).map(|k| (k.to_string(), size, version)))
                    .map(|(key, size, version)| {
                        let problem = (key.ends_with('/') && size == 0).then(|| Problem::Skip("a folder marker, not an object".into()));
                        Ok(Entry { key, size, version, problem })
                    })
                    .collect();
                Ok(Some((futures::stream::iter(entries), page.next.map(Some))))
            }
        })
        .try_flatten()
        .boxed()
    }

    /// True when the location holds nothing: no object under the prefix, or (for a folder)
    /// no entry at all, hidden files and empty folders included.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        if let Some(root) = &self.local_root {
            let io = |e: std::io::Error| StoreError::Open { location: self.location.clone(), message: e.to_string() };
            return Ok(std::fs::read_dir(root).map_err(io)?.next().is_none());
        }
        Ok(self.list().next().await.transpose()?.is_none())
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Ok(self.get_versioned(key).await?.0)
    }

    /// Reads a whole object and the version it was read at (the S3 ETag; for a folder an
    /// inode-mtime-size tag), for [`Store::replace`] and the batch journal.
    pub async fn get_versioned(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        let io = |cause| StoreError::Io { op: "get", key: key.to_string(), cause };
        let result = self.inner.get(&self.path(key)?).await.map_err(io)?;
        let e_tag = result.meta.e_tag.clone();
        Ok((result.bytes().await.map_err(io)?, e_tag))
    }

    /// Overwrites an object read by [`Store::get_versioned`], only if it is still that
    /// version: an upload that replaced it in the meantime is not clobbered
    /// ([`StoreError::Changed`]). Returns the version written. On an object store this is
    /// one conditional PUT (`If-Match`). A folder has no conditional write: the file's
    /// version is checked just before the new file is renamed over it, so only a
    /// replacement landing in the moment between that check and the rename (the time to
    /// write the new file, milliseconds) is overwritten.
    pub async fn replace(&self, key: &str, bytes: Vec<u8>, e_tag: Option<&str>) -> Result<Option<String>, StoreError> {
        let Some(e_tag) = e_tag else { return self.put(key, bytes).await };
        let path = self.path(key)?;
        if self.local_root.is_some() {
            let now = self.inner.head(&path).await.map_err(|cause| StoreError::Io { op: "head", key: key.to_string(), cause })?;
            if now.e_tag.as_deref() != Some(e_tag) {
                return Err(StoreError::Changed { key: key.to_string() });
            }
            return self.put(key, bytes).await;
        }
        let mode = object_store::PutMode::Update(object_store::UpdateVersion { e_tag: Some(e_tag.to_string()), version: None });
        match self.inner.put_opts(&path, PutPayload::from(bytes), mode.into()).await {
            Ok(written) => Ok(written.e_tag),
            Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => Err(StoreError::Changed { key: key.to_string() }),
            Err(cause) => Err(StoreError::Io { op: "put", key: key.to_string(), cause }),
        }
    }

    /// Writes a whole object atomically: readers see the old object or the new one,
    /// never a part. Returns the version written (as [`Store::get_versioned`] would read
    /// it), where the store gives one.
    /// In a folder, a write that fails leaves no folders it created behind.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Option<String>, StoreError> {
        let path = self.path(key)?;
        match self.inner.put(&path, PutPayload::from(bytes)).await {
            Ok(written) => Ok(written.e_tag),
            Err(cause) => {
                self.remove_empty_parents(&path);
                Err(StoreError::Io { op: "put", key: key.to_string(), cause })
            }
        }
    }

    /// Removes the folders above `path` that are empty, up to the root (a folder store).
    fn remove_empty_parents(&self, path: &Path) {
        let (Some(root), Some(local)) = (&self.local_root, &self.local) else { return };
        let Ok(mut dir) = local.path_to_filesystem(path) else { return };
        while let Some(parent) = dir.parent().filter(|p| p.starts_with(root) && *p != root.as_path()) {
            // Folders the write never got to (its failure may be one of them) are passed;
            // the first one that is not empty ends the climb.
            if std::fs::remove_dir(parent).is_err() && parent.exists() {
                break;
            }
            dir = parent.to_path_buf();
        }
    }

    /// True when the object exists (a HEAD request; no body is read).
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(cause) => Err(StoreError::Io { op: "head", key: key.to_string(), cause }),
        }
    }

    /// Deletes an object for good. On a folder that is deleting the file. On S3 it is
    /// deleting the object and then, because a versioned bucket keeps every earlier
    /// version (a plain delete only adds a delete marker), every version and delete marker
    /// of exactly this key, listed with `ListObjectVersions` and deleted by `versionId`
    /// until none is left (the credentials need `s3:ListBucketVersions` and
    /// `s3:DeleteObjectVersion`). On an unversioned bucket that listing is empty and costs
    /// one request. Returns how many versions and markers were deleted by id.
    pub async fn purge(&self, key: &str) -> Result<usize, StoreError> {
        self.delete(key).await?;
        let Some((s3, _)) = &self.s3 else { return Ok(0) };
        let path = self.path(key)?;
        let mut removed = 0;
        // Each pass deletes what one listing page showed; a page holds up to 1,000.
        for _ in 0..10_000 {
            let versions = self.list_versions(s3, &path, key).await?;
            if versions.is_empty() {
                return Ok(removed);
            }
            for version in versions {
                self.delete_version(s3, &path, key, &version).await?;
                removed += 1;
            }
        }
        Err(StoreError::Versions { op: "purge", key: key.to_string(), message: "versions keep appearing".into() })
    }

    /// Purges every key ([`Store::purge`]), then checks that none of them exists any
    /// more. Returns the versions and delete markers removed by id, and the first key
    /// still found (a delete the store acknowledged but did not carry out). In a folder,
    /// every key's link check, delete, removal of the folders it leaves empty and the
    /// check afterwards are one call on the blocking pool, instead of several per key.
    pub async fn purge_verified(&self, keys: &[String]) -> Result<(usize, Option<String>), StoreError> {
        if let Some(local) = &self.local {
            let (this, local, keys) = (self.clone(), local.clone(), keys.to_vec());
            let gone = tokio::task::spawn_blocking(move || this.purge_files(&local, &keys));
            return gone.await.map_err(|e| StoreError::Io { op: "delete", key: self.location.clone(), cause: object_store::Error::JoinError { source: e } })?;
        }
        let mut versions = 0;
        for key in keys {
            versions += self.purge(key).await?;
        }
        for key in keys {
            if self.exists(key).await? {
                return Ok((versions, Some(key.clone())));
            }
        }
        Ok((versions, None))
    }

    /// [`Store::purge_verified`] in a folder, on the calling (blocking) thread: a file
    /// deleted as object_store's own delete does (a missing one is already gone), then
    /// the folders it leaves empty, as its automatic cleanup does.
    fn purge_files(&self, local: &object_store::local::LocalFileSystem, keys: &[String]) -> Result<(usize, Option<String>), StoreError> {
        let io = |op: &'static str, key: &str, e: std::io::Error| StoreError::Io { op, key: key.to_string(), cause: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) } };
        // Every key is checked (links included) before any is deleted.
        let mut files = Vec::with_capacity(keys.len());
        for key in keys {
            let path = self.path(key)?;
            let file = local.path_to_filesystem(&path).map_err(|cause| StoreError::Io { op: "delete", key: key.clone(), cause })?;
            files.push((path, file));
        }
        for (key, (path, file)) in keys.iter().zip(&files) {
            match std::fs::remove_file(file) {
                Ok(()) => self.remove_empty_parents(path),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {}
                Err(e) => return Err(io("delete", key, e)),
            }
        }
        for (key, (_, file)) in keys.iter().zip(&files) {
            match std::fs::symlink_metadata(file) {
                Ok(_) => return Ok((0, Some(key.clone()))),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {}
                Err(e) => return Err(io("head", key, e)),
            }
        }
        Ok((0, None))
    }

    /// Sends a signed S3 request (retried like every other store request) and returns
    /// the body of a 2xx answer.
    async fn signed(
        &self,
        s3: &object_store::aws::AmazonS3,
        method: reqwest::Method,
        path: &Path,
        query: Vec<(String, String)>,
        op: &'static str,
        key: &str,
    ) -> Result<Bytes, StoreError> {
        use object_store::signer::{SignedUrlOptions, Signer};
        let err = |message: String| StoreError::Versions { op, key: key.to_string(), message };
        let options = SignedUrlOptions::new().with_query(query);
        let client = self.s3.as_ref().map(|(_, http)| http).expect("signed requests are only made on S3 stores");
        let mut delay = self.retry.init_backoff;
        let mut attempt = 0;
        loop {
            let url = s3.signed_url_opts(method.clone(), path, Duration::from_secs(300), &options).await.map_err(|e| err(e.to_string()))?;
            let outcome = match client.request(method.clone(), url).send().await {
                Ok(response) if response.status().is_success() => return response.bytes().await.map_err(|e| err(e.to_string())),
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(err(format!("{status}: {}", body.chars().take(300).collect::<String>())));
                }
                Ok(response) => format!("{}", response.status()),
                Err(e) => e.to_string(),
            };
            if attempt >= self.retry.max_retries {
                return Err(err(format!("{outcome} (after {} attempts)", attempt + 1)));
            }
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.retry.max_backoff);
        }
    }

    async fn list_versions(&self, s3: &object_store::aws::AmazonS3, path: &Path, key: &str) -> Result<Vec<String>, StoreError> {
        let query = vec![("versions".to_string(), String::new()), ("prefix".to_string(), path.to_string())];
        let body = self.signed(s3, reqwest::Method::GET, &Path::default(), query, "list versions of", key).await?;
        parse_versions(&body, path.as_ref()).map_err(|message| StoreError::Versions { op: "list versions of", key: key.to_string(), message })
    }

    async fn delete_version(&self, s3: &object_store::aws::AmazonS3, path: &Path, key: &str, version: &str) -> Result<(), StoreError> {
        let query = vec![("versionId".to_string(), version.to_string())];
        self.signed(s3, reqwest::Method::DELETE, path, query, "delete version of", key).await.map(|_| ())
    }

    /// Deletes an object (no error if it is already gone).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(cause) => Err(StoreError::Io { op: "delete", key: key.to_string(), cause }),
        }
    }
}

/// Walks a folder on a blocking thread, feeding a bounded channel. Symbolic links are
/// not followed (they could lead outside the folder, or round in a loop).
fn list_folder(root: PathBuf) -> BoxStream<'static, Result<Entry, StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Entry, StoreError>>(1024);
    tokio::task::spawn_blocking(move || {
        let location = root.display().to_string();
        let mut stack = vec![(root, String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if rel.is_empty() => {
                    let _ = tx.blocking_send(Err(StoreError::Open { location: location.clone(), message: e.to_string() }));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Ok(Entry { key: rel, size: 0, version: None, problem: Some(Problem::Fail(format!("unreadable folder: {e}"))) }));
                    continue;
                }
            };
            for entry in entries {
                let sent = match entry {
                    Err(e) => tx.blocking_send(Ok(Entry { key: rel.clone(), size: 0, version: None, problem: Some(Problem::Fail(format!("unreadable folder entry: {e}"))) })),
                    Ok(entry) => {
                        let name = entry.file_name();
                        let key = if rel.is_empty() { name.to_string_lossy().into_owned() } else { format!("{rel}/{}", name.to_string_lossy()) };
                        let kind = entry.file_type();
                        let problem = match (&kind, name.to_str()) {
                            (Err(e), _) => Some(Problem::Fail(format!("cannot tell what it is: {e}"))),
                            (Ok(k), _) if k.is_symlink() => Some(Problem::Skip("a symbolic link (not followed: it could lead outside the source)".into())),
                            (Ok(_), None) => Some(Problem::Fail("the name is not valid UTF-8, so no key can name it".into())),
                            (Ok(k), Some(_)) if k.is_dir() => {
                                stack.push((entry.path(), key));
                                continue;
                            }
                            (Ok(k), Some(_)) if !k.is_file() => Some(Problem::Skip("not a regular file".into())),
                            // object_store stages writes as `NAME#N` and cannot address such
                            // names: one beside its NAME is a write in progress (an in-place
                            // batch writing into the folder it lists) and is not listed;
                            // any other is reported.
                            (Ok(_), Some(n)) if n.split_once('#').is_some_and(|(_, d)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) => {
                                let stem = n.split_once('#').map_or(n, |(stem, _)| stem);
                                if dir.join(stem).is_file() {
                                    continue;
                                }
                                Some(Problem::Skip("named like a partial write (NAME#digits), which the store reserves".into()))
                            }
                            _ => None,
                        };
                        let meta = entry.metadata().ok();
                        let size = meta.as_ref().map_or(0, |m| m.len());
                        // Links and other odd entries get one too (of the entry itself, never
                        // followed): a skipped entry stays skipped while it is unchanged.
                        let version = meta.as_ref().map(folder_version);
                        tx.blocking_send(Ok(Entry { key, size, version, problem }))
                    }
                };
                if sent.is_err() {
                    return; // the listing was dropped
                }
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// One ListObjectsV2 page: (key, size) pairs and the continuation token, if truncated.
/// The version tag a folder store's reads return for a file (object_store's local
/// ETag: inode, modification time in microseconds and size, in hex), computed from a
/// listing's metadata without opening the file.
fn folder_version(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default().as_micros();
    format!("\"{:x}-{mtime:x}-{:x}\"", meta.ino(), meta.len())
}

struct ListPage {
    /// Key, size and ETag of each object.
    keys: Vec<(String, u64, Option<String>)>,
    next: Option<String>,
}

fn parse_list_page(xml: &[u8]) -> Result<ListPage, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut page = ListPage { keys: Vec::new(), next: None };
    let (mut in_contents, mut text, mut truncated) = (false, String::new(), false);
    let (mut key, mut size, mut e_tag) = (None::<String>, 0u64, None::<String>);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(|e| format!("unreadable answer: {e}"))? {
            Event::Start(e) => {
                if e.local_name().as_ref() == b"Contents" {
                    (in_contents, key, size, e_tag) = (true, None, 0, None);
                }
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| e.to_string())?),
            Event::GeneralRef(r) => push_entity(&mut text, &r)?,
            Event::End(e) => match e.local_name().as_ref() {
                b"Key" if in_contents => key = Some(std::mem::take(&mut text)),
                b"ETag" if in_contents => e_tag = Some(std::mem::take(&mut text)),
                b"Size" if in_contents => size = text.trim().parse().map_err(|_| format!("bad object size {text:?}"))?,
                b"Contents" => {
                    in_contents = false;
                    page.keys.push((key.take().ok_or("an entry without a key")?, size, e_tag.take()));
                }
                b"IsTruncated" => truncated = text.trim() == "true",
                b"NextContinuationToken" => page.next = Some(std::mem::take(&mut text)),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if truncated && page.next.is_none() {
        return Err("a truncated listing without a continuation token".into());
    }
    if !truncated {
        page.next = None;
    }
    Ok(page)
}

/// Appends a character or entity reference (`&amp;`, `&#10;`) to `text`.
fn push_entity(text: &mut String, r: &quick_xml::events::BytesRef<'_>) -> Result<(), String> {
    match r.resolve_char_ref().map_err(|e| e.to_string())? {
        Some(c) => text.push(c),
        None => {
            let name = r.decode().map_err(|e| e.to_string())?;
            let c = quick_xml::escape::resolve_xml_entity(&name).ok_or_else(|| format!("unknown entity &{name};"))?;
            text.push_str(c);
        }
    }
    Ok(())
}

/// The version ids (of versions and of delete markers) of exactly `key` in a
/// `ListObjectVersions` answer.
fn parse_versions(xml: &[u8], key: &str) -> Result<Vec<String>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut out = Vec::new();
    let (mut in_entry, mut text) = (false, String::new());
    let (mut entry_key, mut entry_version) = (None::<String>, None::<String>);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(|e| format!("unreadable answer: {e}"))? {
            Event::Start(e) => {
                if matches!(e.local_name().as_ref(), b"Version" | b"DeleteMarker") {
                    (in_entry, entry_key, entry_version) = (true, None, None);
                }
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| e.to_string())?),
            // `&amp;` and friends arrive as separate events.
            Event::GeneralRef(r) => push_entity(&mut text, &r)?,
            Event::End(e) => match e.local_name().as_ref() {
                b"Key" if in_entry => entry_key = Some(std::mem::take(&mut text)),
                b"VersionId" if in_entry => entry_version = Some(std::mem::take(&mut text)),
                b"Version" | b"DeleteMarker" => {
                    in_entry = false;
                    if entry_key.as_deref() == Some(key) {
                        out.extend(entry_version.take());
                    }
                }
                _ => {}
            },
            Event::Eof => return Ok(out),
            _ => {}
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_versions;

    #[test]
    fn versions_of_exactly_the_key_including_delete_markers() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>u/a&amp;b.jpg</Prefix>
  <DeleteMarker><Key>u/a&amp;b.jpg</Key><VersionId>m1</VersionId><IsLatest>true</IsLatest></DeleteMarker>
  <Version><Key>u/a&amp;b.jpg</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest><Size>3</Size></Version>
  <Version><Key>u/a&amp;b.jpg.bak</Key><VersionId>x</VersionId></Version>
  <Version><Key>u/a&amp;b.jpg</Key><VersionId>v1</VersionId></Version>
</ListVersionsResult>"#;
        assert_eq!(parse_versions(xml, "u/a&b.jpg").unwrap(), ["m1", "v2", "v1"]);
        assert!(parse_versions(b"<ListVersionsResult></ListVersionsResult>", "k").unwrap().is_empty());
    }
}
