//! The registry's rules for what is stored and what is visible, over any [`Backend`].
//!
//! Owns: verifying content against its digest while it streams in, upload sessions and their
//! expiry, which repository sees which blob, manifests, tags and the referrers index, and the
//! count of stored bytes. Every write that spans several backend calls runs as its own task, so
//! a client that goes away mid-request cannot leave it half done. Layout of keys:
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                                content, written once, by digest
//! repositories/<name>/_blobs/<alg>/<hex>                       empty: the blob is in the repository
//! repositories/<name>/_manifests/<alg>/<hex>                   the manifest's media type; its bytes are content
//! repositories/<name>/_tags/<tag>                              the digest the tag points at
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>/<hex>       a referrer's descriptor, by subject
//! ```
//!
//! Repository components never start with `_`, so these names cannot collide with a nested
//! repository (`app/_tags` is no valid name). Content becomes visible only by a commit after its
//! digest was verified; a blob becomes visible in a repository only after its content is there;
//! a manifest only after every blob and child manifest it references is visible in its
//! repository. Content is never removed here: deleting a blob or manifest removes its link,
//! and reclaiming unlinked content is garbage collection's job.
//!
//! Must not: know HTTP, or build a key from anything but fixed words and the validated types in
//! [`crate::names`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use sha2::{Digest as _, Sha256, Sha512};

use crate::backend::{Backend, ByteStream, Commit, Key};
use crate::fs::{self, FsBackend};
use crate::manifest::{self, Inspected};
use crate::names::{Algorithm, Digest, Reference, RepoName, Tag, UploadId};

mod gc;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No blob with this digest.
    #[error("blob {0} not found")]
    BlobUnknown(String),
    /// No upload session with this id in this repository.
    #[error("upload {0} not found: start a new upload")]
    UploadUnknown(String),
    /// A chunk that does not start where the upload ends.
    #[error("chunk starts at byte {start} but the upload holds {size} bytes")]
    RangeInvalid {
        /// Where the client said the chunk starts.
        start: u64,
        /// How many bytes the upload holds.
        size: u64,
    },
    /// Uploaded content that does not hash to the digest the client named.
    #[error("content has digest {actual}, not {expected}")]
    DigestMismatch {
        /// The digest the client named.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A manifest that references a blob this registry lacks.
    #[error("manifest references blob {0}, which is not in the registry: push it first")]
    ManifestBlobUnknown(String),
    /// No manifest with this tag or digest in this repository.
    #[error("manifest {reference} not found in repository {repository}")]
    ManifestUnknown {
        /// The repository.
        repository: String,
        /// The tag or digest asked for.
        reference: String,
    },
    /// No repository by this name.
    #[error("repository {0} not found")]
    RepositoryUnknown(String),
    /// The request body broke off.
    #[error("reading the request body: {0}")]
    Body(io::Error),
    /// The filesystem failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `write`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The key-shaped error of a failed backend call.
fn io_err(op: &'static str, key: &Key) -> impl FnOnce(io::Error) -> StorageError {
    let path = PathBuf::from(key.as_str());
    move |source| StorageError::Io { op, path, source }
}

/// The error of a failed call on an upload.
fn upload_err(op: &'static str, id: &UploadId) -> impl FnOnce(io::Error) -> StorageError {
    let path = Path::new("uploads").join(id.as_str());
    move |source| StorageError::Io { op, path, source }
}

/// A stored manifest, as read back.
#[derive(Debug, Clone)]
pub(crate) struct StoredManifest {
    /// Its digest.
    pub(crate) digest: Digest,
    /// The media type it was pushed with.
    pub(crate) media_type: String,
    /// Its bytes, exactly as pushed.
    pub(crate) bytes: Bytes,
}

/// One upload session. The hash state lives in memory, so uploads do not survive a restart
/// (clients then start over); the backend drops their data when it is opened.
struct Session {
    repo: RepoName,
    /// Held for the whole of each request on the session, so chunks never interleave.
    state: tokio::sync::Mutex<UploadState>,
}

/// What has arrived so far: always exactly the content of the session's upload.
struct UploadState {
    size: u64,
    hashes: Hashes,
    /// When a request last used the session; sessions untouched for long expire.
    touched: Instant,
    /// Set when the session ended (finished, cancelled, expired or broken) while a request was
    /// waiting for it, so that request finds it gone.
    ended: bool,
}

/// The running hashes of content as it streams in. A chunked upload learns its digest only at
/// the end, so it feeds both algorithms; a monolithic one feeds only the one it was given.
#[derive(Clone)]
struct Hashes {
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

impl Hashes {
    fn both() -> Hashes {
        Hashes {
            sha256: Some(Sha256::new()),
            sha512: Some(Sha512::new()),
        }
    }

    fn only(algorithm: Algorithm) -> Hashes {
        Hashes {
            sha256: (algorithm == Algorithm::Sha256).then(Sha256::new),
            sha512: (algorithm == Algorithm::Sha512).then(Sha512::new),
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(chunk);
        }
    }

    /// The digest under `algorithm` of everything fed so far, if that algorithm was fed.
    fn digest(&self, algorithm: Algorithm) -> Option<Digest> {
        match algorithm {
            Algorithm::Sha256 => self
                .sha256
                .clone()
                .map(|h| Digest::from_hash(algorithm, &h.finalize())),
            Algorithm::Sha512 => self
                .sha512
                .clone()
                .map(|h| Digest::from_hash(algorithm, &h.finalize())),
        }
    }
}

/// The registry's storage. Cheap to clone; clones share everything.
#[derive(Clone)]
pub(crate) struct Storage {
    backend: Arc<dyn Backend>,
    sessions: Arc<Mutex<HashMap<UploadId, Arc<Session>>>>,
    /// The bytes of all content, counted at open and on every commit that created content.
    stored: Arc<AtomicU64>,
    /// Held shared by every write that makes content or a link visible (from its checks to its
    /// last write), and exclusively by garbage collection, so a collection never sees half a push.
    gc_lock: Arc<tokio::sync::RwLock<()>>,
}

impl Storage {
    /// Opens (creating if missing) filesystem storage under `root`, drops uploads left by an
    /// earlier run and upgrades an older layout.
    pub(crate) fn open(root: &Path) -> Result<Storage, StorageError> {
        let at = |op| {
            let path = root.to_owned();
            move |source| StorageError::Io { op, path, source }
        };
        let backend = FsBackend::open(root).map_err(at("open"))?;
        fs::upgrade_layout(root).map_err(at("upgrade"))?;
        let stored = backend
            .total_size(&Key::new("blobs"))
            .map_err(at("measure"))?;
        Ok(Storage::new(Arc::new(backend), stored))
    }

    /// Storage over `backend`, which holds `stored` bytes of content.
    pub(crate) fn new(backend: Arc<dyn Backend>, stored: u64) -> Storage {
        Storage {
            backend,
            sessions: Arc::default(),
            stored: Arc::new(AtomicU64::new(stored)),
            gc_lock: Arc::default(),
        }
    }

    /// The bytes of content stored, counting each blob once however many repositories hold it.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    // Keys. Only these functions build them.

    fn content_key(digest: &Digest) -> Key {
        let hex = digest.hex();
        Key::new("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn repo_key(repo: &RepoName) -> Key {
        Key::new("repositories").join(repo.as_str())
    }

    fn digest_key(repo: &RepoName, kind: &str, digest: &Digest) -> Key {
        Storage::repo_key(repo)
            .join(kind)
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn blob_link(repo: &RepoName, digest: &Digest) -> Key {
        Storage::digest_key(repo, "_blobs", digest)
    }

    fn manifest_link(repo: &RepoName, digest: &Digest) -> Key {
        Storage::digest_key(repo, "_manifests", digest)
    }

    fn tag_key(repo: &RepoName, tag: &Tag) -> Key {
        Storage::repo_key(repo).join("_tags").join(tag.as_str())
    }

    fn referrers_key(repo: &RepoName, subject: &Digest) -> Key {
        Storage::digest_key(repo, "_referrers", subject)
    }

    fn referrer_key(repo: &RepoName, subject: &Digest, referrer: &Digest) -> Key {
        Storage::referrers_key(repo, subject)
            .join(referrer.algorithm().as_str())
            .join(referrer.hex())
    }

    // Small backend calls with the error naming the key.

    async fn size(&self, key: &Key) -> Result<Option<u64>, StorageError> {
        self.backend.size(key).await.map_err(io_err("stat", key))
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>, StorageError> {
        self.backend.get(key).await.map_err(io_err("read", key))
    }

    async fn put(&self, key: &Key, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        let bytes = bytes.into();
        self.backend
            .put(key, bytes)
            .await
            .map_err(io_err("write", key))
    }

    async fn delete(&self, key: &Key) -> Result<bool, StorageError> {
        self.backend
            .delete(key)
            .await
            .map_err(io_err("delete", key))
    }

    async fn list(&self, key: &Key) -> Result<Vec<String>, StorageError> {
        self.backend.list(key).await.map_err(io_err("list", key))
    }

    // Blobs.

    /// The size of a blob of `repo`, or `None` if the repository does not hold it.
    pub(crate) async fn blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, StorageError> {
        if self
            .size(&Storage::blob_link(repo, digest))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        self.size(&Storage::content_key(digest)).await
    }

    /// `len` bytes of a blob from `start` on.
    pub(crate) async fn read_blob(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> Result<ByteStream, StorageError> {
        let key = Storage::content_key(digest);
        self.backend
            .stream(&key, start, len)
            .await
            .map_err(io_err("open", &key))?
            .ok_or_else(|| StorageError::BlobUnknown(digest.to_string()))
    }

    /// Makes a blob that `from` holds visible in `repo` too; `false` when `from` lacks it.
    pub(crate) async fn mount_blob(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        let _visible = self.gc_lock.read().await;
        if self.blob_size(from, digest).await?.is_none() {
            return Ok(false);
        }
        self.put(&Storage::blob_link(repo, digest), Bytes::new())
            .await?;
        Ok(true)
    }

    /// Removes a blob from `repo`. Its content stays for other repositories and for garbage
    /// collection.
    pub(crate) async fn delete_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), StorageError> {
        if self.delete(&Storage::blob_link(repo, digest)).await? {
            Ok(())
        } else {
            Err(StorageError::BlobUnknown(digest.to_string()))
        }
    }

    /// Stores a whole blob sent in one body into `repo`, verifying it against `digest` as it
    /// streams in.
    pub(crate) async fn put_blob<S>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: S,
    ) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        let this = self.clone();
        let (repo, digest) = (repo.clone(), digest.clone());
        detach(async move {
            let id = UploadId::random();
            this.backend
                .create_upload(&id)
                .await
                .map_err(upload_err("create", &id))?;
            let mut hashes = Hashes::only(digest.algorithm());
            let mut size = 0;
            let written = this.write_body(&id, &mut hashes, &mut size, body).await;
            match written {
                Ok(()) => this.commit(&id, &repo, &digest, &hashes, size).await,
                Err(e) => {
                    this.discard(&id).await;
                    Err(e)
                }
            }
        })
        .await
    }

    /// Streams `body` onto the upload `id`, feeding `hashes` and counting `size`. When the body
    /// breaks off, what was written still matches the hashes and the size; when a write fails,
    /// they may disagree and the caller must throw the upload away.
    async fn write_body<S>(
        &self,
        id: &UploadId,
        hashes: &mut Hashes,
        size: &mut u64,
        body: S,
    ) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send,
    {
        let mut writer = self
            .backend
            .append_upload(id)
            .await
            .map_err(upload_err("open", id))?;
        let mut body = std::pin::pin!(body);
        let mut result = Ok(());
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    result = Err(StorageError::Body(e));
                    break;
                }
            };
            writer
                .write(&chunk)
                .await
                .map_err(upload_err("write", id))?;
            hashes.update(&chunk);
            *size += chunk.len() as u64;
        }
        writer.finish().await.map_err(upload_err("write", id))?;
        result
    }

    /// Verifies the finished upload `id` against `expected` and commits it as content linked
    /// into `repo`. On a mismatch the upload is discarded, so nothing becomes visible.
    async fn commit(
        &self,
        id: &UploadId,
        repo: &RepoName,
        expected: &Digest,
        hashes: &Hashes,
        size: u64,
    ) -> Result<(), StorageError> {
        let actual = hashes.digest(expected.algorithm());
        if actual.as_ref() != Some(expected) {
            self.discard(id).await;
            return Err(StorageError::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.map_or_else(|| "unknown".to_owned(), |d| d.to_string()),
            });
        }
        let _visible = self.gc_lock.read().await;
        let key = Storage::content_key(expected);
        let committed = self
            .backend
            .commit_upload(id, &key)
            .await
            .map_err(io_err("commit", &key))?;
        if committed == Commit::Created {
            self.stored.fetch_add(size, Ordering::Relaxed);
        }
        self.put(&Storage::blob_link(repo, expected), Bytes::new())
            .await
    }

    /// Stores `bytes`, already known to have digest `digest`, as content.
    async fn put_content(&self, digest: &Digest, bytes: Bytes) -> Result<(), StorageError> {
        let key = Storage::content_key(digest);
        if self.size(&key).await?.is_some() {
            return Ok(());
        }
        let id = UploadId::random();
        let written = async {
            self.backend.create_upload(&id).await?;
            let mut writer = self.backend.append_upload(&id).await?;
            writer.write(&bytes).await?;
            writer.finish().await?;
            self.backend.commit_upload(&id, &key).await
        }
        .await;
        match written {
            Ok(Commit::Created) => {
                self.stored.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(Commit::Existed) => Ok(()),
            Err(e) => {
                self.discard(&id).await;
                Err(io_err("store", &key)(e))
            }
        }
    }

    /// Removes an upload whose request failed. Best effort: what is left is dropped when the
    /// backend is opened again.
    async fn discard(&self, id: &UploadId) {
        if let Err(e) = self.backend.remove_upload(id).await {
            tracing::warn!(error = %e, upload = %id, "removing a failed upload");
        }
    }

    // Upload sessions.

    /// Starts an upload session for `repo`.
    pub(crate) async fn start_upload(&self, repo: &RepoName) -> Result<UploadId, StorageError> {
        let id = UploadId::random();
        self.backend
            .create_upload(&id)
            .await
            .map_err(upload_err("create", &id))?;
        let session = Session {
            repo: repo.clone(),
            state: tokio::sync::Mutex::new(UploadState {
                size: 0,
                hashes: Hashes::both(),
                touched: Instant::now(),
                ended: false,
            }),
        };
        self.sessions().insert(id.clone(), Arc::new(session));
        Ok(id)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Arc<Session>>> {
        // No code panics while holding this lock, and a map operation cannot be left half done,
        // so a poisoned lock is still consistent.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session `id`, if it belongs to `repo`.
    fn session(&self, repo: &RepoName, id: &UploadId) -> Result<Arc<Session>, StorageError> {
        self.sessions()
            .get(id)
            .filter(|s| s.repo == *repo)
            .cloned()
            .ok_or_else(|| StorageError::UploadUnknown(id.to_string()))
    }

    /// The session's state, locked, unless the session ended while this request waited.
    async fn lock<'s>(
        session: &'s Session,
        id: &UploadId,
    ) -> Result<tokio::sync::MutexGuard<'s, UploadState>, StorageError> {
        let mut state = session.state.lock().await;
        if state.ended {
            return Err(StorageError::UploadUnknown(id.to_string()));
        }
        state.touched = Instant::now();
        Ok(state)
    }

    /// Ends a session whose state is locked: no request uses it again, and its data is removed.
    async fn end(&self, id: &UploadId, state: &mut UploadState) -> Result<(), StorageError> {
        state.ended = true;
        self.sessions().remove(id);
        self.backend
            .remove_upload(id)
            .await
            .map_err(upload_err("remove", id))
    }

    /// How many bytes an upload holds.
    pub(crate) async fn upload_size(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<u64, StorageError> {
        let session = self.session(repo, id)?;
        let state = Storage::lock(&session, id).await?;
        Ok(state.size)
    }

    /// Appends a chunk to an upload. `start`, when the client sent a `Content-Range`, must equal
    /// the upload's current size. Returns the new size.
    pub(crate) async fn append_upload<S>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: S,
    ) -> Result<u64, StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        let session = self.session(repo, id)?;
        let (this, id) = (self.clone(), id.clone());
        detach(async move {
            let mut state = Storage::lock(&session, &id).await?;
            if let Some(start) = start
                && start != state.size
            {
                return Err(StorageError::RangeInvalid {
                    start,
                    size: state.size,
                });
            }
            let UploadState { size, hashes, .. } = &mut *state;
            let written = this.write_body(&id, hashes, size, body).await;
            if let Err(StorageError::Io { .. }) = &written {
                // After a failed write the upload and the hashes may disagree; the session is
                // dead.
                this.end(&id, &mut state).await?;
            }
            state.touched = Instant::now();
            written.map(|()| state.size)
        })
        .await
    }

    /// Appends a final (possibly empty) chunk, verifies the whole upload against `digest` and
    /// stores it as a blob of `repo`. The session ends either way, unless the chunk says it
    /// starts (`start`) elsewhere than where the upload ends: then nothing changes and the client
    /// may resume.
    pub(crate) async fn finish_upload<S>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        body: S,
    ) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        let session = self.session(repo, id)?;
        let (this, id, repo, digest) = (self.clone(), id.clone(), repo.clone(), digest.clone());
        detach(async move {
            let mut state = Storage::lock(&session, &id).await?;
            if let Some(start) = start
                && start != state.size
            {
                return Err(StorageError::RangeInvalid {
                    start,
                    size: state.size,
                });
            }
            // Ending the session first means no other request touches it again.
            state.ended = true;
            this.sessions().remove(&id);
            let UploadState { size, hashes, .. } = &mut *state;
            match this.write_body(&id, hashes, size, body).await {
                Ok(()) => this.commit(&id, &repo, &digest, hashes, *size).await,
                Err(e) => {
                    this.discard(&id).await;
                    Err(e)
                }
            }
        })
        .await
    }

    /// Cancels an upload and removes its data.
    pub(crate) async fn cancel_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<(), StorageError> {
        let session = self.session(repo, id)?;
        let mut state = Storage::lock(&session, id).await?;
        self.end(id, &mut state).await
    }

    /// Ends every upload session that no request has touched for `max_age` and removes its
    /// data. Returns how many ended. A session in use by a request is never expired.
    pub(crate) async fn expire_uploads(&self, max_age: Duration) -> usize {
        let sessions: Vec<(UploadId, Arc<Session>)> = self
            .sessions()
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut expired = 0;
        for (id, session) in sessions {
            let Ok(mut state) = session.state.try_lock() else {
                continue;
            };
            if state.ended || state.touched.elapsed() < max_age {
                continue;
            }
            match self.end(&id, &mut state).await {
                Ok(()) => expired += 1,
                Err(e) => tracing::warn!(error = %e, upload = %id, "expiring an upload"),
            }
        }
        expired
    }

    // Manifests, tags and referrers.

    /// Stores a manifest in `repo` under `digest` (already verified by the caller), and points
    /// `tag` at it if given. Every blob and child manifest it references must be in `repo`; a
    /// manifest with a subject is listed among the subject's referrers.
    pub(crate) async fn put_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        inspected: Inspected,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        let visible = self.gc_lock.clone().read_owned().await;
        for blob in &inspected.blobs {
            if self.blob_size(repo, blob).await?.is_none() {
                return Err(StorageError::ManifestBlobUnknown(blob.to_string()));
            }
        }
        for child in &inspected.manifests {
            if self
                .size(&Storage::manifest_link(repo, child))
                .await?
                .is_none()
            {
                return Err(StorageError::ManifestBlobUnknown(child.to_string()));
            }
        }
        let this = self.clone();
        let (repo, tag, digest) = (repo.clone(), tag.cloned(), digest.clone());
        detach(async move {
            let _visible = visible;
            let size = bytes.len();
            this.put_content(&digest, bytes).await?;
            if let Some(subject) = &inspected.subject {
                let descriptor = inspected.referrer_descriptor(&digest, size);
                let key = Storage::referrer_key(&repo, subject, &digest);
                this.put(&key, descriptor.to_string()).await?;
            }
            let link = Storage::manifest_link(&repo, &digest);
            this.put(&link, inspected.media_type).await?;
            if let Some(tag) = tag {
                this.put(&Storage::tag_key(&repo, &tag), digest.to_string())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// The digest a tag of `repo` points at.
    async fn resolve_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, StorageError> {
        let key = Storage::tag_key(repo, tag);
        let Some(text) = self.get(&key).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&text);
        Digest::parse(text.trim())
            .map(Some)
            .map_err(|e| io_err("parse", &key)(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    /// Reads a manifest of `repo` by tag or digest.
    pub(crate) async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, StorageError> {
        let unknown = || StorageError::ManifestUnknown {
            repository: repo.to_string(),
            reference: reference.to_string(),
        };
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => self.resolve_tag(repo, tag).await?.ok_or_else(unknown)?,
        };
        let Some(media_type) = self.get(&Storage::manifest_link(repo, &digest)).await? else {
            return Err(unknown());
        };
        let Some(bytes) = self.get(&Storage::content_key(&digest)).await? else {
            return Err(unknown());
        };
        Ok(StoredManifest {
            digest,
            media_type: String::from_utf8_lossy(&media_type).into_owned(),
            bytes,
        })
    }

    /// Deletes a tag, or a manifest by digest together with the tags that point at it and its
    /// entry among its subject's referrers. Its content stays for garbage collection.
    pub(crate) async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), StorageError> {
        let unknown = || StorageError::ManifestUnknown {
            repository: repo.to_string(),
            reference: reference.to_string(),
        };
        let digest = match reference {
            Reference::Tag(tag) => {
                return match self.delete(&Storage::tag_key(repo, tag)).await? {
                    true => Ok(()),
                    false => Err(unknown()),
                };
            }
            Reference::Digest(digest) => digest.clone(),
        };
        let stored = self.get_manifest(repo, reference).await?;
        let this = self.clone();
        let repo = repo.clone();
        detach(async move {
            if !this.delete(&Storage::manifest_link(&repo, &digest)).await? {
                // A concurrent delete won.
                return Ok(());
            }
            for tag in this.tags(&repo).await.unwrap_or_default() {
                let Ok(tag) = Tag::parse(&tag) else { continue };
                if this.resolve_tag(&repo, &tag).await?.as_ref() == Some(&digest) {
                    this.delete(&Storage::tag_key(&repo, &tag)).await?;
                }
            }
            let subject = manifest::inspect(Some(&stored.media_type), &stored.bytes)
                .ok()
                .and_then(|i| i.subject);
            if let Some(subject) = subject {
                this.delete(&Storage::referrer_key(&repo, &subject, &digest))
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// The descriptors of the manifests in `repo` whose subject is `subject`, sorted by digest;
    /// only those of `artifact_type` when given.
    pub(crate) async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Value>, StorageError> {
        let base = Storage::referrers_key(repo, subject);
        let mut found = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            for hex in self.list(&base.join(alg.as_str())).await? {
                let Ok(digest) = Digest::parse(&format!("{}:{hex}", alg.as_str())) else {
                    continue;
                };
                // An entry whose manifest is gone (deleted, or a push that failed half way) is
                // not listed.
                if self
                    .size(&Storage::manifest_link(repo, &digest))
                    .await?
                    .is_none()
                {
                    continue;
                }
                let key = Storage::referrer_key(repo, subject, &digest);
                let Some(bytes) = self.get(&key).await? else {
                    continue;
                };
                let Ok(descriptor) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                let wanted =
                    artifact_type.is_none_or(|t| descriptor["artifactType"].as_str() == Some(t));
                if wanted {
                    found.push((digest.to_string(), descriptor));
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, d)| d).collect())
    }

    /// The tags of `repo`, sorted.
    pub(crate) async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, StorageError> {
        let base = Storage::repo_key(repo);
        if !is_repository(&self.list(&base).await?) {
            return Err(StorageError::RepositoryUnknown(repo.to_string()));
        }
        let mut tags = self.list(&base.join("_tags")).await?;
        tags.retain(|t| Tag::parse(t).is_ok());
        tags.sort();
        Ok(tags)
    }

    /// Every repository that holds a blob, manifest or tag, sorted.
    pub(crate) async fn repositories(&self) -> Result<Vec<String>, StorageError> {
        let base = Key::new("repositories");
        let mut found = Vec::new();
        let mut pending: Vec<Option<RepoName>> = vec![None];
        while let Some(prefix) = pending.pop() {
            let key = match &prefix {
                None => base.clone(),
                Some(repo) => Storage::repo_key(repo),
            };
            let children = self.list(&key).await?;
            if let Some(repo) = &prefix
                && is_repository(&children)
            {
                found.push(repo.to_string());
            }
            for child in children {
                let name = match &prefix {
                    None => child,
                    Some(repo) => format!("{repo}/{child}"),
                };
                if let Ok(repo) = RepoName::parse(&name) {
                    pending.push(Some(repo));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

/// Whether a prefix with these children is a repository rather than only a parent of one.
fn is_repository(children: &[String]) -> bool {
    children
        .iter()
        .any(|c| matches!(c.as_str(), "_blobs" | "_manifests" | "_tags"))
}

/// Runs a write as its own task, so that dropping the request (a client that went away) cannot
/// stop it between two steps that must happen together.
async fn detach<T, F>(write: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StorageError>> + Send + 'static,
{
    tokio::spawn(write).await.unwrap_or_else(|e| {
        Err(StorageError::Io {
            op: "finish a write",
            path: PathBuf::new(),
            source: io::Error::other(e),
        })
    })
}
