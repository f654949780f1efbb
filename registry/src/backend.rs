//! The storage driver boundary: a small object store that [`crate::storage`] keeps the registry
//! in, so that a second backend (S3-compatible) needs only this trait, not the HTTP layer or the
//! registry's rules.
//!
//! Owns: the [`Backend`] trait, the [`Key`] objects are stored under, and the contract each
//! backend keeps. Must not: know digests, manifests or repositories; verifying content and
//! deciding what becomes visible is [`crate::storage`]'s job, done the same for every backend.
//!
//! The contract:
//! - `put` and `commit_upload` are atomic: readers see the old object or the whole new one.
//! - `commit_upload` never replaces an existing object, and says whether it created one, so
//!   concurrent uploads of the same content are safe and counted once.
//! - A prefix exists exactly while some object lives under it (as on S3), so `list` of a prefix
//!   whose last object was deleted is empty.
//! - Uploads are invisible to `get`, `size`, `stream` and `list`.

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::names::UploadId;

/// A stream of an object's bytes.
pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Where an object lives: `/`-separated components. Only [`crate::storage`] builds keys, from
/// fixed words and the validated names of [`crate::names`], so every component is non-empty,
/// holds no `/`, and is neither `.` nor `..`: a safe relative path and a valid S3 object key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(String);

impl Key {
    /// A key of one component.
    pub(crate) fn new(component: &str) -> Key {
        debug_assert!(is_safe(component), "unsafe key component {component:?}");
        Key(component.to_owned())
    }

    /// This key with `part` appended; `part` may hold several `/`-separated components.
    pub(crate) fn join(&self, part: &str) -> Key {
        debug_assert!(
            part.split('/').all(is_safe),
            "unsafe key component {part:?}"
        );
        Key(format!("{}/{part}", self.0))
    }

    /// The key's components, in order.
    pub(crate) fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The key as a string.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_safe(component: &str) -> bool {
    !component.is_empty()
        && component != "."
        && component != ".."
        && !component.contains(['/', '\\', '\0'])
}

/// What [`Backend::commit_upload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// The object did not exist and now holds the upload.
    Created,
    /// The object already existed and was left alone; the upload was discarded.
    Existed,
}

/// A small object store with staged uploads. See the module documentation for the contract.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// The size of the object at `key`, or `None` if there is none.
    async fn size(&self, key: &Key) -> io::Result<Option<u64>>;

    /// When the object at `key` was last written, or `None` if there is none. Garbage
    /// collection spares what is younger than its grace period.
    async fn modified(&self, key: &Key) -> io::Result<Option<std::time::SystemTime>>;

    /// The whole object at `key`, or `None`. Only for small objects (manifests, links, tags).
    async fn get(&self, key: &Key) -> io::Result<Option<Bytes>>;

    /// `len` bytes of the object at `key` from `start` on, streamed; `None` if there is none.
    async fn stream(&self, key: &Key, start: u64, len: u64) -> io::Result<Option<ByteStream>>;

    /// Stores a small object, replacing any object at `key` atomically.
    async fn put(&self, key: &Key, bytes: Bytes) -> io::Result<()>;

    /// Removes the object at `key`; `false` if there was none.
    async fn delete(&self, key: &Key) -> io::Result<bool>;

    /// The names of the objects and prefixes directly under `prefix`, in no particular order;
    /// empty when there are none.
    async fn list(&self, prefix: &Key) -> io::Result<Vec<String>>;

    /// Creates an empty upload.
    async fn create_upload(&self, id: &UploadId) -> io::Result<()>;

    /// A writer that appends to the upload `id`.
    async fn append_upload(&self, id: &UploadId) -> io::Result<Box<dyn UploadWriter>>;

    /// Makes the upload `id` durable and moves it to `dest` unless an object is there already.
    /// The upload is gone afterwards either way.
    async fn commit_upload(&self, id: &UploadId, dest: &Key) -> io::Result<Commit>;

    /// Discards the upload `id`; succeeds when it is already gone.
    async fn remove_upload(&self, id: &UploadId) -> io::Result<()>;
}

/// Appends bytes to one upload.
#[async_trait]
pub(crate) trait UploadWriter: Send {
    /// Appends `chunk`.
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()>;

    /// Finishes this writer: everything written is in the upload when this returns, for the
    /// next writer or the commit to see.
    async fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Checks that an empty `backend` keeps the contract in the module documentation; every
/// backend's tests run it.
#[cfg(test)]
pub(crate) async fn check_contract(backend: &dyn Backend) {
    use futures_util::TryStreamExt;

    let key = Key::new("a").join("b/c");
    assert_eq!(backend.size(&key).await.expect("size"), None);
    assert!(backend.get(&key).await.expect("get").is_none());
    assert!(backend.stream(&key, 0, 1).await.expect("stream").is_none());

    backend
        .put(&key, Bytes::from_static(b"first"))
        .await
        .expect("put");
    backend
        .put(&key, Bytes::from_static(b"second"))
        .await
        .expect("replace");
    assert_eq!(backend.size(&key).await.expect("size"), Some(6));
    let written = backend.modified(&key).await.expect("modified");
    assert!(written.is_some_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() < 60)));
    assert!(
        backend
            .modified(&Key::new("none"))
            .await
            .expect("modified")
            .is_none()
    );
    assert_eq!(
        &backend.get(&key).await.expect("get").expect("object")[..],
        b"second"
    );
    let part = backend
        .stream(&key, 1, 3)
        .await
        .expect("stream")
        .expect("object");
    let part: Vec<Bytes> = part.try_collect().await.expect("read");
    assert_eq!(part.concat(), b"eco");
    assert_eq!(backend.list(&Key::new("a")).await.expect("list"), ["b"]);

    // Uploads are invisible until committed, and a commit never replaces.
    let upload = async |chunks: &[&[u8]]| {
        let id = UploadId::random();
        backend.create_upload(&id).await.expect("create");
        for chunk in chunks {
            let mut writer = backend.append_upload(&id).await.expect("writer");
            writer.write(chunk).await.expect("write");
            writer.finish().await.expect("finish");
        }
        id
    };
    let dest = Key::new("d").join("e");
    for (chunks, commit) in [
        (&[&b"up"[..], b"load"][..], Commit::Created),
        (&[&b"other"[..]][..], Commit::Existed),
    ] {
        let id = upload(chunks).await;
        assert!(backend.get(&dest).await.expect("get").is_none() || commit == Commit::Existed);
        let committed = backend.commit_upload(&id, &dest).await.expect("commit");
        assert_eq!(committed, commit);
        let stored = backend.get(&dest).await.expect("get").expect("object");
        assert_eq!(&stored[..], b"upload");
        backend
            .remove_upload(&id)
            .await
            .expect("already gone is fine");
    }

    // A prefix lives as long as an object under it.
    assert!(backend.delete(&key).await.expect("delete"));
    assert!(!backend.delete(&key).await.expect("delete again"));
    assert!(backend.list(&Key::new("a")).await.expect("list").is_empty());
    assert_eq!(backend.list(&Key::new("d")).await.expect("list"), ["e"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_components() {
        let key = Key::new("repositories").join("team/app").join("_tags");
        assert_eq!(key.as_str(), "repositories/team/app/_tags");
        assert_eq!(
            key.components().collect::<Vec<_>>(),
            ["repositories", "team", "app", "_tags"]
        );
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0"] {
            assert!(!is_safe(bad), "{bad:?}");
        }
    }
}
