//! The filesystem [`Backend`]: every key is a file under the root, every upload a file under
//! `<root>/uploads/`, on the same filesystem so that a commit is a link and a put a rename.
//!
//! Owns: the mapping from keys to paths, the `uploads/` directory, and upgrading a storage
//! directory written by an earlier layout. Must not: interpret what it stores beyond that upgrade.

use std::io::{self, Read as _, Seek as _};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::fs;
use tokio::io::AsyncWriteExt;

use crate::backend::{Backend, ByteStream, Commit, Key, UploadWriter};
use crate::manifest;
use crate::names::{Digest, UploadId};

/// Bytes read from a file per chunk of a stream: 4 KiB chunks cost a syscall and an HTTP frame
/// each; 512 KiB chunks let a pull run at disk and socket speed, with one chunk read ahead.
const READ_CHUNK: usize = 512 * 1024;

/// `len` bytes of `file` from where it stands, in chunks of [`READ_CHUNK`]. The next chunk is
/// read (on the blocking pool, into the buffer that is sent: no copy) while the consumer sends
/// the one before, so disk and socket work overlap; no thread is held between chunks, so slow
/// clients tie up nothing but their two buffers.
fn read_ahead(file: std::fs::File, len: u64) -> impl Stream<Item = io::Result<Bytes>> + Send {
    type Read = tokio::task::JoinHandle<(std::fs::File, io::Result<Bytes>)>;
    fn read(mut file: std::fs::File, want: u64) -> Read {
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(READ_CHUNK));
            let read = (&mut file).take(want).read_to_end(&mut buf);
            let chunk = match read {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file is short",
                )),
                Ok(_) => Ok(Bytes::from(buf)),
                Err(e) => Err(e),
            };
            (file, chunk)
        })
    }
    let chunk = |remaining: u64| remaining.min(READ_CHUNK as u64);
    let first = (len > 0).then(|| read(file, chunk(len)));
    futures_util::stream::unfold((first, len), move |(pending, remaining)| async move {
        let (file, chunk_read) = match pending?.await {
            Ok(done) => done,
            Err(e) => return Some((Err(io::Error::other(e)), (None, 0))),
        };
        match chunk_read {
            Ok(bytes) => {
                let remaining = remaining - bytes.len() as u64;
                let next = (remaining > 0).then(|| read(file, chunk(remaining)));
                Some((Ok(bytes), (next, remaining)))
            }
            Err(e) => Some((Err(e), (None, 0))),
        }
    })
}

/// How often a write races a delete that pruned the directory it writes into before giving up.
const PRUNE_RETRIES: usize = 5;

/// Objects as files under a root directory.
pub(crate) struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    /// Opens the directory `root`, creating it if missing, and removes uploads an earlier run
    /// left unfinished (their hash state was in that run's memory).
    pub(crate) fn open(root: &Path) -> io::Result<FsBackend> {
        std::fs::create_dir_all(root)?;
        let uploads = root.join("uploads");
        match std::fs::remove_dir_all(&uploads) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&uploads)?;
        Ok(FsBackend {
            root: root.to_owned(),
        })
    }

    fn path(&self, key: &Key) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.components());
        path
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    /// The total size of the files under `prefix`, read synchronously (at start-up).
    pub(crate) fn total_size(&self, prefix: &Key) -> io::Result<u64> {
        let mut total = 0;
        walk(&self.path(prefix), |_, entry| {
            let meta = entry.metadata()?;
            if !meta.is_dir() {
                total += meta.len();
            }
            Ok(meta.is_dir())
        })?;
        Ok(total)
    }

    /// Removes the empty directories from `dir` up to the root, so that a prefix disappears
    /// with its last object. Stops at the first directory that is not empty.
    async fn prune(&self, mut dir: &Path) {
        while dir != self.root && dir.starts_with(&self.root) {
            if fs::remove_dir(dir).await.is_err() {
                return;
            }
            match dir.parent() {
                Some(parent) => dir = parent,
                None => return,
            }
        }
    }

    /// Runs `place` (a rename or a link into `dest`) after creating `dest`'s directory, again
    /// when a concurrent [`FsBackend::prune`] removed that directory in between.
    async fn place<F, Fut, T>(&self, dest: &Path, place: F) -> io::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = io::Result<T>>,
    {
        let parent = dest.parent().unwrap_or(&self.root);
        let mut tries = 0;
        loop {
            fs::create_dir_all(parent).await?;
            match place().await {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < PRUNE_RETRIES => {
                    tries += 1;
                }
                result => return result,
            }
        }
    }
}

#[async_trait]
impl Backend for FsBackend {
    async fn size(&self, key: &Key) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(key)).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn modified(&self, key: &Key) -> io::Result<Option<std::time::SystemTime>> {
        match fs::metadata(self.path(key)).await {
            Ok(meta) if meta.is_file() => meta.modified().map(Some),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &Key) -> io::Result<Option<Bytes>> {
        match fs::read(self.path(key)).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn stream(&self, key: &Key, start: u64, len: u64) -> io::Result<Option<ByteStream>> {
        let path = self.path(key);
        let opened = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(path)?;
            file.seek(io::SeekFrom::Start(start))?;
            Ok::<_, io::Error>(file)
        })
        .await
        .map_err(io::Error::other)?;
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(read_ahead(file, len).boxed()))
    }

    async fn put(&self, key: &Key, bytes: Bytes) -> io::Result<()> {
        let temp = self
            .root
            .join("uploads")
            .join(format!("put-{}", UploadId::random()));
        let written = async {
            let mut file = fs::File::create(&temp).await?;
            file.write_all(&bytes).await?;
            file.sync_all().await
        }
        .await;
        let dest = self.path(key);
        let result = match written {
            Ok(()) => self.place(&dest, || fs::rename(&temp, &dest)).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = fs::remove_file(&temp).await;
        }
        result
    }

    async fn delete(&self, key: &Key) -> io::Result<bool> {
        let path = self.path(key);
        match fs::remove_file(&path).await {
            Ok(()) => {
                if let Some(parent) = path.parent() {
                    self.prune(parent).await;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &Key) -> io::Result<Vec<String>> {
        let mut entries = match fs::read_dir(self.path(prefix)).await {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    async fn create_upload(&self, id: &UploadId) -> io::Result<()> {
        fs::File::create(self.upload_path(id)).await.map(drop)
    }

    async fn append_upload(&self, id: &UploadId) -> io::Result<Box<dyn UploadWriter>> {
        let file = fs::OpenOptions::new()
            .append(true)
            .open(self.upload_path(id))
            .await?;
        Ok(Box::new(FileWriter { file }))
    }

    async fn commit_upload(&self, id: &UploadId, dest: &Key) -> io::Result<Commit> {
        let source = self.upload_path(id);
        let dest = self.path(dest);
        let committed = async {
            fs::File::open(&source).await?.sync_all().await?;
            // A hard link, unlike a rename, fails when the destination exists: the first of two
            // concurrent uploads of the same content wins and the second learns it lost.
            let linked = self.place(&dest, || fs::hard_link(&source, &dest)).await;
            match linked {
                Ok(()) => Ok(Commit::Created),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Commit::Existed),
                Err(e) => Err(e),
            }
        }
        .await;
        self.remove_upload(id).await?;
        committed
    }

    async fn remove_upload(&self, id: &UploadId) -> io::Result<()> {
        match fs::remove_file(self.upload_path(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Appends to an upload's file.
struct FileWriter {
    file: fs::File,
}

#[async_trait]
impl UploadWriter for FileWriter {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk).await
    }

    async fn finish(mut self: Box<Self>) -> io::Result<()> {
        // tokio's File finishes a write in the background; flushing waits for it, so the next
        // writer's open sees every byte.
        self.file.flush().await
    }
}

/// Upgrades a storage directory from layout 1, where blobs belonged to no repository, to layout
/// 2, where a repository sees only the blobs linked into it. Each repository gets a link to
/// every blob its manifests reference, so every image that could be pulled still can. Runs
/// once; the marker file `layout` records the version. Layout 1 existed only on the filesystem,
/// so this lives here rather than in [`crate::storage`].
pub(crate) fn upgrade_layout(root: &Path) -> io::Result<()> {
    let marker = root.join("layout");
    if marker.exists() {
        return Ok(());
    }
    walk(&root.join("repositories"), |dir, entry| {
        let name = entry.file_name();
        if name == "_manifests" {
            link_manifest_blobs(root, dir)?;
            return Ok(false);
        }
        Ok(!name.to_string_lossy().starts_with('_') && entry.file_type()?.is_dir())
    })?;
    std::fs::write(&marker, "2\n")
}

/// Visits every entry under `start` (synchronously, for start-up work), descending into those
/// for which `visit` answers `true`. A missing directory has no entries.
fn walk(
    start: &Path,
    mut visit: impl FnMut(&Path, &std::fs::DirEntry) -> io::Result<bool>,
) -> io::Result<()> {
    let mut pending = vec![start.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if visit(&dir, &entry)? {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Links every blob that the manifests of the repository at `repo_dir` reference into it.
fn link_manifest_blobs(root: &Path, repo_dir: &Path) -> io::Result<()> {
    for alg in ["sha256", "sha512"] {
        let dir = repo_dir.join("_manifests").join(alg);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = Digest::parse(&format!("{alg}:{name}")) else {
                continue;
            };
            let media_type = std::fs::read_to_string(entry.path())?;
            let hex = digest.hex();
            let blob = root.join("blobs").join(alg).join(&hex[..2]).join(hex);
            let Ok(bytes) = std::fs::read(&blob) else {
                continue;
            };
            let Ok(inspected) = manifest::inspect(Some(media_type.trim()), &bytes) else {
                continue;
            };
            for blob in inspected.blobs {
                let link = repo_dir
                    .join("_blobs")
                    .join(blob.algorithm().as_str())
                    .join(blob.hex());
                std::fs::create_dir_all(link.parent().unwrap_or(repo_dir))?;
                std::fs::write(link, b"")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::check_contract;

    #[tokio::test]
    async fn keeps_the_backend_contract() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = FsBackend::open(dir.path()).expect("open");
        check_contract(&backend).await;
        // Nothing of the uploads is left, and prefixes went with their objects.
        let names = |p: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(p)
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(dir.path()), ["d", "uploads"]);
        assert!(names(&dir.path().join("uploads")).is_empty());
    }

    #[tokio::test]
    async fn reads_ahead_in_chunks_and_reports_short_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..READ_CHUNK * 2 + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");
        let read = |start: u64, len: u64| {
            let mut file = std::fs::File::open(&path).expect("open");
            file.seek(io::SeekFrom::Start(start)).expect("seek");
            read_ahead(file, len).collect::<Vec<_>>()
        };
        let chunks = read(100, data.len() as u64 - 100).await;
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|c| c.as_ref().expect("chunk").len())
            .collect();
        assert_eq!(sizes, [READ_CHUNK, READ_CHUNK, 900]);
        let joined: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(joined, data[100..]);
        assert!(read(0, 0).await.is_empty());
        // A file shorter than its length says ends in an error, not a short body.
        let short = read(0, data.len() as u64 + 1).await;
        let last = short.last().expect("chunks");
        assert_eq!(
            last.as_ref().map_err(io::Error::kind).err(),
            Some(io::ErrorKind::UnexpectedEof)
        );
    }

    #[tokio::test]
    async fn opening_drops_unfinished_uploads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = FsBackend::open(dir.path()).expect("open");
        let id = UploadId::random();
        backend.create_upload(&id).await.expect("create");
        drop(backend);
        FsBackend::open(dir.path()).expect("reopen");
        assert!(!dir.path().join("uploads").join(id.as_str()).exists());
    }
}
