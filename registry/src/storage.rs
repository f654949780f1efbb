//! Blob, upload, manifest and tag storage on the local filesystem.
//!
//! Owns: everything under the registry's root directory, and the only code in the crate that
//! touches the disk. Layout:
//!
//! ```text
//! <root>/blobs/<alg>/<hex[0..2]>/<hex>               content, written once, by digest
//! <root>/uploads/<id>                                 upload in progress; temporary files
//! <root>/repositories/<name>/_manifests/<alg>/<hex>   the manifest's media type; its bytes are the blob
//! <root>/repositories/<name>/_tags/<tag>              the digest the tag points at
//! ```
//!
//! Repository components never start with `_`, so `_manifests` and `_tags` cannot collide with a
//! nested repository (`app/_tags` is no valid name). Every file outside `uploads/` appears by an
//! atomic rename from `uploads/` (same filesystem), after its content was verified, so readers
//! never see a partial blob, manifest or tag.
//!
//! Must not: know HTTP, or build a path from anything but the validated types in
//! [`crate::names`]. Blobs are shared by all repositories; per-repository blob visibility comes
//! with access scopes (issue #4).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, Take};
use tokio_util::io::ReaderStream;

/// Bytes read from a blob file per chunk of a GET response.
const READ_CHUNK: usize = 256 * 1024;

use crate::names::{Algorithm, Digest, Reference, RepoName, Tag, UploadId};

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

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_owned();
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

/// An open blob.
pub(crate) struct Blob {
    file: fs::File,
    path: PathBuf,
    size: u64,
}

impl Blob {
    /// The blob's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The `len` bytes from `start` on, as a stream.
    pub(crate) async fn into_stream(
        mut self,
        start: u64,
        len: u64,
    ) -> Result<ReaderStream<Take<fs::File>>, StorageError> {
        if start > 0 {
            self.file
                .seek(io::SeekFrom::Start(start))
                .await
                .map_err(io_err("seek", &self.path))?;
        }
        // ReaderStream's default 4 KiB chunks cost a syscall and an HTTP frame each; 256 KiB
        // chunks let a pull run at disk and socket speed.
        Ok(ReaderStream::with_capacity(self.file.take(len), READ_CHUNK))
    }
}

/// One upload session. The hash state lives in memory, so uploads do not survive a restart
/// (clients then start over); their files are removed when storage is opened.
struct Session {
    repo: RepoName,
    path: PathBuf,
    /// Held for the whole of each request on the session, so chunks never interleave.
    state: tokio::sync::Mutex<UploadState>,
}

/// What has arrived so far: always exactly the content of the session's file.
#[derive(Default)]
struct UploadState {
    size: u64,
    sha256: Sha256,
}

/// The registry's filesystem storage. Cheap to share behind an `Arc`.
pub(crate) struct Storage {
    root: PathBuf,
    sessions: Mutex<HashMap<UploadId, Arc<Session>>>,
}

/// A file under `uploads/` that is removed when dropped unless it was renamed into place, so a
/// failed or abandoned request leaves nothing behind.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile { path, armed: true }
    }

    async fn rename_to(mut self, dest: &Path) -> Result<(), StorageError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .await
                .map_err(io_err("create", parent))?;
        }
        fs::rename(&self.path, dest)
            .await
            .map_err(io_err("rename into", dest))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover is removed on the next start anyway.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Storage {
    /// Opens (creating if missing) the storage under `root` and removes uploads left by an
    /// earlier run.
    pub(crate) fn open(root: &Path) -> Result<Storage, StorageError> {
        for dir in ["blobs", "repositories"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        }
        let uploads = root.join("uploads");
        match std::fs::remove_dir_all(&uploads) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("clear", &uploads)(e)),
        }
        std::fs::create_dir_all(&uploads).map_err(io_err("create", &uploads))?;
        Ok(Storage {
            root: root.to_owned(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn repo_path(&self, repo: &RepoName) -> PathBuf {
        let mut path = self.root.join("repositories");
        path.extend(repo.components());
        path
    }

    fn manifest_link_path(&self, repo: &RepoName, digest: &Digest) -> PathBuf {
        self.repo_path(repo)
            .join("_manifests")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn tag_path(&self, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.repo_path(repo).join("_tags").join(tag.as_str())
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("tmp-{}", UploadId::random()))
    }

    /// The size of a blob, or `None` if it is not stored.
    pub(crate) async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// Opens a blob for reading.
    pub(crate) async fn open_blob(&self, digest: &Digest) -> Result<Blob, StorageError> {
        let path = self.blob_path(digest);
        let file = match fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::BlobUnknown(digest.to_string()));
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let size = file.metadata().await.map_err(io_err("stat", &path))?.len();
        Ok(Blob { file, path, size })
    }

    /// Stores a whole blob sent in one body, verifying it against `digest` as it streams in.
    pub(crate) async fn put_blob<S>(&self, digest: &Digest, body: S) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        let temp = TempFile::new(self.temp_path());
        let mut file = fs::File::create(&temp.path)
            .await
            .map_err(io_err("create", &temp.path))?;
        let mut sha256 = Sha256::new();
        write_body(&mut file, &temp.path, &mut sha256, &mut 0, body).await?;
        self.commit_blob(temp, file, sha256, digest).await
    }

    /// Verifies a finished temporary file against `digest` and renames it into place. On a
    /// mismatch the file is removed, so nothing becomes visible.
    async fn commit_blob(
        &self,
        temp: TempFile,
        file: fs::File,
        sha256: Sha256,
        expected: &Digest,
    ) -> Result<(), StorageError> {
        file.sync_all().await.map_err(io_err("sync", &temp.path))?;
        drop(file);
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => Digest::from_hash(Algorithm::Sha256, &sha256.finalize()),
            // SHA-512 is rare, so it is computed only when asked for, from the file.
            Algorithm::Sha512 => sha512_of_file(&temp.path).await?,
        };
        if actual != *expected {
            return Err(StorageError::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        temp.rename_to(&self.blob_path(expected)).await
    }

    /// Starts an upload session for `repo`.
    pub(crate) async fn start_upload(&self, repo: &RepoName) -> Result<UploadId, StorageError> {
        let id = UploadId::random();
        let path = self.root.join("uploads").join(id.as_str());
        fs::File::create(&path)
            .await
            .map_err(io_err("create", &path))?;
        let session = Session {
            repo: repo.clone(),
            path,
            state: tokio::sync::Mutex::default(),
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

    /// How many bytes an upload holds.
    pub(crate) async fn upload_size(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<u64, StorageError> {
        let session = self.session(repo, id)?;
        let state = session.state.lock().await;
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
        // The append runs as its own task so that a client that goes away mid-chunk cannot
        // cancel it between a write and the matching hash and size update.
        let result = tokio::spawn(async move {
            let mut state = session.state.lock().await;
            if let Some(start) = start
                && start != state.size
            {
                return Err(StorageError::RangeInvalid {
                    start,
                    size: state.size,
                });
            }
            state.append(&session.path, body).await?;
            Ok(state.size)
        })
        .await
        .unwrap_or_else(|e| Err(join_error(e)));
        if matches!(result, Err(StorageError::Io { .. })) {
            // After a failed write the file and the hash may disagree; the session is dead.
            self.cancel_upload(repo, id).await?;
        }
        result
    }

    /// Appends a final (possibly empty) chunk, verifies the whole upload against `digest` and
    /// stores it as a blob. The session ends either way.
    pub(crate) async fn finish_upload<S>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        body: S,
    ) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        let session = self.session(repo, id)?;
        let mut state = session.state.lock().await;
        // Forgetting the session before anything else means no other request touches it again;
        // the temp file guard removes the data if this request fails or is dropped.
        self.sessions().remove(id);
        let temp = TempFile::new(session.path.clone());
        state.append(&temp.path, body).await?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(&temp.path)
            .await
            .map_err(io_err("open", &temp.path))?;
        let sha256 = std::mem::take(&mut state.sha256);
        self.commit_blob(temp, file, sha256, digest).await
    }

    /// Cancels an upload and removes its data.
    pub(crate) async fn cancel_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<(), StorageError> {
        let session = self.session(repo, id)?;
        self.sessions().remove(id);
        // Wait for a running append to end before removing its file.
        let _state = session.state.lock().await;
        match fs::remove_file(&session.path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &session.path)(e)),
        }
    }

    /// Stores a manifest in `repo` under `digest` (already verified by the caller), and points
    /// `tag` at it if given. Every blob in `blobs` must exist.
    pub(crate) async fn put_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
        blobs: &[Digest],
    ) -> Result<(), StorageError> {
        for blob in blobs {
            if self.blob_size(blob).await?.is_none() {
                return Err(StorageError::ManifestBlobUnknown(blob.to_string()));
            }
        }
        if self.blob_size(digest).await?.is_none() {
            self.write_atomic(&self.blob_path(digest), &bytes).await?;
        }
        self.write_atomic(
            &self.manifest_link_path(repo, digest),
            media_type.as_bytes(),
        )
        .await?;
        if let Some(tag) = tag {
            self.write_atomic(&self.tag_path(repo, tag), digest.to_string().as_bytes())
                .await?;
        }
        Ok(())
    }

    /// Reads a manifest of `repo` by tag or digest.
    pub(crate) async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, StorageError> {
        let unknown = |r: &dyn std::fmt::Display| StorageError::ManifestUnknown {
            repository: repo.to_string(),
            reference: r.to_string(),
        };
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => {
                let path = self.tag_path(repo, tag);
                let Some(text) = read_optional(&path).await? else {
                    return Err(unknown(&tag.as_str()));
                };
                let text = String::from_utf8_lossy(&text);
                Digest::parse(text.trim()).map_err(|e| StorageError::Io {
                    op: "parse",
                    path,
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                })?
            }
        };
        let Some(media_type) = read_optional(&self.manifest_link_path(repo, &digest)).await? else {
            return Err(unknown(&digest));
        };
        let blob = self.blob_path(&digest);
        let Some(bytes) = read_optional(&blob).await? else {
            return Err(unknown(&digest));
        };
        Ok(StoredManifest {
            digest,
            media_type: String::from_utf8_lossy(&media_type).into_owned(),
            bytes: bytes.into(),
        })
    }

    /// The tags of `repo`, sorted.
    pub(crate) async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, StorageError> {
        let repo_path = self.repo_path(repo);
        if !is_dir(&repo_path.join("_manifests")).await? {
            return Err(StorageError::RepositoryUnknown(repo.to_string()));
        }
        let mut tags = list_dir(&repo_path.join("_tags")).await?;
        tags.retain(|t| Tag::parse(t).is_ok());
        tags.sort();
        Ok(tags)
    }

    /// Every repository that holds at least one manifest, sorted.
    pub(crate) async fn repositories(&self) -> Result<Vec<String>, StorageError> {
        let base = self.root.join("repositories");
        let mut found = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(prefix) = pending.pop() {
            let dir = if prefix.is_empty() {
                base.clone()
            } else {
                base.join(&prefix)
            };
            for entry in list_dir(&dir).await? {
                if entry == "_manifests" && !prefix.is_empty() {
                    found.push(prefix.clone());
                } else if crate::names::is_component(&entry) {
                    let child = if prefix.is_empty() {
                        entry
                    } else {
                        format!("{prefix}/{entry}")
                    };
                    if is_dir(&base.join(&child)).await? {
                        pending.push(child);
                    }
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Writes `bytes` to `dest` so that readers see either the old file or the whole new one.
    async fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let temp = TempFile::new(self.temp_path());
        let mut file = fs::File::create(&temp.path)
            .await
            .map_err(io_err("create", &temp.path))?;
        file.write_all(bytes)
            .await
            .map_err(io_err("write", &temp.path))?;
        file.sync_all().await.map_err(io_err("sync", &temp.path))?;
        drop(file);
        temp.rename_to(dest).await
    }
}

impl UploadState {
    async fn append<S>(&mut self, path: &Path, body: S) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send,
    {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .await
            .map_err(io_err("open", path))?;
        write_body(&mut file, path, &mut self.sha256, &mut self.size, body).await
    }
}

/// Streams `body` into `file`, feeding `hasher` and counting `size` as it goes. When the body
/// breaks off, what was written still matches the hash and the size; when a write fails, they
/// may disagree and the caller must throw the file away.
async fn write_body<S>(
    file: &mut fs::File,
    path: &Path,
    hasher: &mut Sha256,
    size: &mut u64,
    body: S,
) -> Result<(), StorageError>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send,
{
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
        file.write_all(&chunk)
            .await
            .map_err(io_err("write", path))?;
        hasher.update(&chunk);
        *size += chunk.len() as u64;
    }
    // tokio's File finishes a write in the background; flushing waits for it, so the next
    // request's open sees every byte counted here.
    file.flush().await.map_err(io_err("write", path))?;
    result
}

async fn sha512_of_file(path: &Path) -> Result<Digest, StorageError> {
    let mut file = fs::File::open(path).await.map_err(io_err("open", path))?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_hash(Algorithm::Sha512, &hasher.finalize()))
}

async fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

async fn is_dir(path: &Path) -> Result<bool, StorageError> {
    match fs::metadata(path).await {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

/// The names in a directory; empty when it does not exist.
async fn list_dir(path: &Path) -> Result<Vec<String>, StorageError> {
    let mut entries = match fs::read_dir(path).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", path)(e)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(io_err("list", path))? {
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

fn join_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Io {
        op: "append to upload",
        path: PathBuf::new(),
        source: io::Error::other(e),
    }
}
