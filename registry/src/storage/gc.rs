//! Garbage collection: removes the manifests nobody needs, the blob links no remaining manifest
//! references, and the content no remaining link references.
//!
//! Owns the rules of what survives. A manifest survives if the caller keeps it, a tag points at
//! it (except in the repositories the caller manages, where its keep list alone decides, and
//! tags of removed manifests go with them), a surviving index lists it, its subject survives, or its link is younger than the grace
//! period. A blob link survives if a surviving manifest of its repository references it or it
//! is younger than the grace period (a push in progress: blobs uploaded, manifest not yet).
//! Content survives while any surviving link names it, or while it is younger than the grace
//! period. Must not: run while a push makes something visible; it holds the storage's
//! collection lock exclusively from the first listing to the last delete, and pushes hold it
//! shared, so a push sees either everything before the collection or everything after it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use slipway_core::ports::{CollectedBlob, CollectedManifest, GcReport};

use super::{Storage, StorageError, io_err};
use crate::backend::Key;
use crate::manifest;
use crate::names::{Algorithm, Digest, RepoName, Tag};

/// A manifest as collection sees it: what it references and whether it is protected by age.
struct Node {
    blobs: Vec<Digest>,
    children: Vec<Digest>,
    subject: Option<Digest>,
    young: bool,
    bytes: u64,
}

/// Everything in storage, read once under the collection lock.
#[derive(Default)]
struct Scan {
    manifests: HashMap<(RepoName, Digest), Node>,
    /// Blob links and whether each is younger than the grace period.
    links: Vec<(RepoName, Digest, bool)>,
    tagged: Vec<(RepoName, Digest)>,
    /// Tags in managed repositories, which protect nothing: `(repository, tag, digest)`.
    managed_tags: Vec<(RepoName, Tag, Digest)>,
    /// Content objects with their size and whether each is younger than the grace period.
    content: Vec<(Digest, u64, bool)>,
}

impl Storage {
    /// Collects garbage: see the module documentation for what survives. `keep` names the
    /// manifests the caller still needs; in the repositories under a `managed` prefix (a
    /// repository name or its first components) tags protect nothing. Nothing younger than
    /// `grace` is removed. A `dry_run` removes nothing and reports what a real run would remove.
    pub(crate) async fn gc(
        &self,
        keep: &[(RepoName, Digest)],
        managed: &[String],
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcReport, StorageError> {
        let _exclusive = self.gc_lock.write().await;
        let now = SystemTime::now();
        let scan = self.scan(managed, now, grace).await?;

        // Mark, until nothing changes: what is reachable from the roots through index children,
        // and every manifest whose subject is marked.
        let mut live: HashSet<(RepoName, Digest)> = HashSet::new();
        let mut pending: Vec<(RepoName, Digest)> = keep
            .iter()
            .chain(&scan.tagged)
            .cloned()
            .chain(
                scan.manifests
                    .iter()
                    .filter(|(_, n)| n.young)
                    .map(|(k, _)| k.clone()),
            )
            .collect();
        loop {
            while let Some(at) = pending.pop() {
                let Some(node) = scan.manifests.get(&at) else {
                    continue;
                };
                if !live.insert(at.clone()) {
                    continue;
                }
                pending.extend(node.children.iter().map(|c| (at.0.clone(), c.clone())));
            }
            pending.extend(
                scan.manifests
                    .iter()
                    .filter(|(k, n)| {
                        !live.contains(*k)
                            && n.subject
                                .as_ref()
                                .is_some_and(|s| live.contains(&(k.0.clone(), s.clone())))
                    })
                    .map(|(k, _)| k.clone()),
            );
            if pending.is_empty() {
                break;
            }
        }

        // Sweep plan: dead manifests, dead links, unreferenced content.
        let needed: HashSet<(RepoName, Digest)> = live
            .iter()
            .flat_map(|k| {
                scan.manifests[k]
                    .blobs
                    .iter()
                    .map(|b| (k.0.clone(), b.clone()))
            })
            .collect();
        let dead_manifests: BTreeMap<(String, String), (&RepoName, &Digest, &Node)> = scan
            .manifests
            .iter()
            .filter(|(k, _)| !live.contains(*k))
            .map(|((r, d), n)| ((r.to_string(), d.to_string()), (r, d, n)))
            .collect();
        let (dead_links, kept_links): (Vec<_>, Vec<_>) = scan
            .links
            .iter()
            .partition(|(r, d, young)| !young && !needed.contains(&(r.clone(), d.clone())));
        let referenced: HashSet<&Digest> = live
            .iter()
            .map(|(_, d)| d)
            .chain(kept_links.iter().map(|(_, d, _)| d))
            .collect();
        let dead_content: BTreeMap<String, (&Digest, u64)> = scan
            .content
            .iter()
            .filter(|(d, _, young)| !young && !referenced.contains(d))
            .map(|(d, size, _)| (d.to_string(), (d, *size)))
            .collect();

        let report = GcReport {
            dry_run,
            manifests: dead_manifests
                .iter()
                .map(|((repository, digest), (_, _, n))| CollectedManifest {
                    repository: repository.clone(),
                    digest: digest.clone(),
                    bytes: n.bytes,
                })
                .collect(),
            blobs: dead_content
                .iter()
                .map(|(digest, (_, bytes))| CollectedBlob {
                    digest: digest.clone(),
                    bytes: *bytes,
                })
                .collect(),
            bytes_freed: dead_content.values().map(|(_, b)| b).sum(),
        };
        if dry_run {
            return Ok(report);
        }

        for (repo, digest, node) in dead_manifests.values() {
            self.delete(&Storage::manifest_link(repo, digest)).await?;
            if let Some(subject) = &node.subject {
                self.delete(&Storage::referrer_key(repo, subject, digest))
                    .await?;
            }
        }
        for (repo, tag, digest) in &scan.managed_tags {
            if !live.contains(&(repo.clone(), digest.clone())) {
                self.delete(&Storage::tag_key(repo, tag)).await?;
            }
        }
        for (repo, digest, _) in dead_links {
            self.delete(&Storage::blob_link(repo, digest)).await?;
        }
        for (digest, bytes) in dead_content.values() {
            if self.delete(&Storage::content_key(digest)).await? {
                self.stored.fetch_sub(*bytes, Ordering::Relaxed);
            }
        }
        Ok(report)
    }

    /// Reads every manifest, blob link, tag and content object.
    async fn scan(
        &self,
        managed: &[String],
        now: SystemTime,
        grace: Duration,
    ) -> Result<Scan, StorageError> {
        let young = async |key: &Key| -> Result<bool, StorageError> {
            let written = self
                .backend
                .modified(key)
                .await
                .map_err(io_err("stat", key))?;
            Ok(written.is_some_and(|t| now.duration_since(t).is_ok_and(|age| age < grace)))
        };
        let mut scan = Scan::default();
        for repo in self.repositories().await? {
            let Ok(repo) = RepoName::parse(&repo) else {
                continue;
            };
            let is_managed = managed.iter().any(|m| {
                repo.as_str()
                    .strip_prefix(m.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
            for digest in self
                .digests(&Storage::repo_key(&repo).join("_manifests"))
                .await?
            {
                let link = Storage::manifest_link(&repo, &digest);
                let media_type = self.get(&link).await?.unwrap_or_default();
                let bytes = self
                    .get(&Storage::content_key(&digest))
                    .await?
                    .unwrap_or_default();
                let inspected =
                    manifest::inspect(Some(&String::from_utf8_lossy(&media_type)), &bytes).ok();
                let (blobs, children, subject) = inspected
                    .map(|i| (i.blobs, i.manifests, i.subject))
                    .unwrap_or_default();
                let node = Node {
                    blobs,
                    children,
                    subject,
                    young: young(&link).await?,
                    bytes: bytes.len() as u64,
                };
                scan.manifests.insert((repo.clone(), digest), node);
            }
            for digest in self
                .digests(&Storage::repo_key(&repo).join("_blobs"))
                .await?
            {
                let young = young(&Storage::blob_link(&repo, &digest)).await?;
                scan.links.push((repo.clone(), digest, young));
            }
            for tag in self.list(&Storage::repo_key(&repo).join("_tags")).await? {
                let Ok(tag) = Tag::parse(&tag) else { continue };
                // A tag that cannot be read protects nothing it could name, so the whole
                // collection stops rather than guess.
                match self.resolve_tag(&repo, &tag).await? {
                    Some(digest) if is_managed => {
                        scan.managed_tags.push((repo.clone(), tag, digest));
                    }
                    Some(digest) => scan.tagged.push((repo.clone(), digest)),
                    None => {}
                }
            }
        }
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let base = Key::new("blobs").join(alg.as_str());
            for prefix in self.list(&base).await? {
                if prefix.len() != 2 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                for hex in self.list(&base.join(&prefix)).await? {
                    let Ok(digest) = Digest::parse(&format!("{}:{hex}", alg.as_str())) else {
                        continue;
                    };
                    let key = Storage::content_key(&digest);
                    let Some(size) = self.size(&key).await? else {
                        continue;
                    };
                    scan.content.push((digest, size, young(&key).await?));
                }
            }
        }
        Ok(scan)
    }

    /// The digests named by `<base>/<alg>/<hex>` objects.
    async fn digests(&self, base: &Key) -> Result<Vec<Digest>, StorageError> {
        let mut found = BTreeSet::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            for hex in self.list(&base.join(alg.as_str())).await? {
                if let Ok(digest) = Digest::parse(&format!("{}:{hex}", alg.as_str())) {
                    found.insert(digest.to_string());
                }
            }
        }
        Ok(found
            .into_iter()
            .filter_map(|d| Digest::parse(&d).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
    use crate::names::Reference;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Fresh storage in its own temporary directory.
    fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Storage::open(dir.path()).expect("open storage");
        (dir, storage)
    }

    fn repo(name: &str) -> RepoName {
        RepoName::parse(name).expect("repository name")
    }

    fn body(bytes: &[u8]) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + use<> {
        futures_util::stream::iter([Ok(Bytes::copy_from_slice(bytes))])
    }

    async fn blob(s: &Storage, repo: &RepoName, content: &str) -> Digest {
        let digest = Digest::of(Algorithm::Sha256, content.as_bytes());
        s.put_blob(repo, &digest, body(content.as_bytes()))
            .await
            .expect("put blob");
        digest
    }

    fn descriptor(media_type: &str, digest: &Digest) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": digest.to_string(), "size": 1})
    }

    async fn put(
        s: &Storage,
        repo: &RepoName,
        tag: Option<&str>,
        doc: serde_json::Value,
    ) -> Digest {
        let bytes = Bytes::from(doc.to_string());
        let digest = Digest::of(Algorithm::Sha256, &bytes);
        let inspected = manifest::inspect(None, &bytes).expect("valid manifest");
        let tag = tag.map(|t| Tag::parse(t).expect("tag"));
        s.put_manifest(repo, tag.as_ref(), &digest, inspected, bytes)
            .await
            .expect("put manifest");
        digest
    }

    /// An image manifest over a config and layers; `subject` makes it a referrer.
    async fn image(
        s: &Storage,
        repo: &RepoName,
        tag: Option<&str>,
        config: &Digest,
        layers: &[&Digest],
        subject: Option<&Digest>,
    ) -> Digest {
        let mut doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        });
        if let Some(subject) = subject {
            doc["subject"] = descriptor(OCI_MANIFEST, subject);
        }
        put(s, repo, tag, doc).await
    }

    async fn exists(s: &Storage, repo: &RepoName, manifest: &Digest) -> bool {
        s.get_manifest(repo, &Reference::Digest(manifest.clone()))
            .await
            .is_ok()
    }

    async fn has_content(s: &Storage, digest: &Digest) -> bool {
        s.size(&Storage::content_key(digest))
            .await
            .expect("stat")
            .is_some()
    }

    /// Two images of one app sharing a config: the kept one stays whole, the other goes with
    /// the layer only it used.
    #[tokio::test]
    async fn keeps_what_is_kept_and_collects_the_rest() {
        let (_dir, s) = storage();
        let app = repo("apps/web");
        let config = blob(&s, &app, "config").await;
        let (old_layer, new_layer) = (
            blob(&s, &app, "old layer").await,
            blob(&s, &app, "new").await,
        );
        let old = image(&s, &app, None, &config, &[&old_layer], None).await;
        let new = image(&s, &app, None, &config, &[&new_layer], None).await;
        let before = s.stored_bytes();

        let report = s
            .gc(&[(app.clone(), new.clone())], &[], Duration::ZERO, false)
            .await
            .expect("gc");
        assert_eq!(
            report.manifests,
            [CollectedManifest {
                repository: "apps/web".into(),
                digest: old.to_string(),
                bytes: report.manifests[0].bytes,
            }]
        );
        let mut gone: Vec<String> = vec![old.to_string(), old_layer.to_string()];
        gone.sort();
        let reported: Vec<String> = report.blobs.iter().map(|b| b.digest.clone()).collect();
        assert_eq!(reported, gone);
        assert_eq!(before - s.stored_bytes(), report.bytes_freed);
        assert!(report.bytes_freed > 0);

        assert!(exists(&s, &app, &new).await);
        assert!(!exists(&s, &app, &old).await);
        assert!(s.blob_size(&app, &config).await.expect("stat").is_some());
        assert!(s.blob_size(&app, &new_layer).await.expect("stat").is_some());
        assert!(s.blob_size(&app, &old_layer).await.expect("stat").is_none());
        assert!(!has_content(&s, &old_layer).await);

        // A second run finds nothing more.
        let again = s
            .gc(&[(app, new)], &[], Duration::ZERO, false)
            .await
            .expect("gc");
        assert_eq!(again, GcReport::default());
    }

    #[tokio::test]
    async fn a_dry_run_deletes_nothing_and_reports_the_same() {
        let (_dir, s) = storage();
        let app = repo("apps/web");
        let config = blob(&s, &app, "config").await;
        let layer = blob(&s, &app, "layer").await;
        let old = image(&s, &app, None, &config, &[&layer], None).await;
        let before = s.stored_bytes();

        let dry = s.gc(&[], &[], Duration::ZERO, true).await.expect("dry run");
        assert!(dry.dry_run);
        assert_eq!(dry.manifests.len(), 1);
        assert_eq!(dry.blobs.len(), 3);
        assert_eq!(s.stored_bytes(), before);
        assert!(exists(&s, &app, &old).await);
        assert!(s.blob_size(&app, &layer).await.expect("stat").is_some());

        let real = s.gc(&[], &[], Duration::ZERO, false).await.expect("gc");
        assert_eq!(
            GcReport {
                dry_run: true,
                ..real
            },
            dry
        );
        assert!(!exists(&s, &app, &old).await);
        assert_eq!(s.stored_bytes(), 0);
    }

    /// Stack images are pushed by tag, and an index keeps its children.
    #[tokio::test]
    async fn tags_and_indexes_keep_manifests() {
        let (_dir, s) = storage();
        let run = repo("stacks/run");
        let config = blob(&s, &run, "config").await;
        let layer = blob(&s, &run, "base").await;
        let tagged = image(&s, &run, Some("bookworm"), &config, &[&layer], None).await;
        let arm = blob(&s, &run, "arm layer").await;
        let child = image(&s, &run, None, &config, &[&arm], None).await;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, &child)],
        });
        let index = put(&s, &run, Some("multi"), index).await;

        let report = s.gc(&[], &[], Duration::ZERO, false).await.expect("gc");
        assert_eq!(report, GcReport::default());
        for m in [&tagged, &child, &index] {
            assert!(exists(&s, &run, m).await, "{m}");
        }

        // Once the tag goes, so does the index and the child only it held.
        s.delete_manifest(&run, &Reference::Tag(Tag::parse("multi").expect("tag")))
            .await
            .expect("untag");
        let report = s.gc(&[], &[], Duration::ZERO, false).await.expect("gc");
        assert_eq!(report.manifests.len(), 2);
        assert!(!exists(&s, &run, &child).await);
        assert!(!has_content(&s, &arm).await);
        assert!(exists(&s, &run, &tagged).await);
    }

    /// A referrer (a signature, an SBOM) lives and dies with its subject.
    #[tokio::test]
    async fn referrers_follow_their_subject() {
        let (_dir, s) = storage();
        let app = repo("apps/web");
        let config = blob(&s, &app, "config").await;
        let layer = blob(&s, &app, "layer").await;
        let subject = image(&s, &app, None, &config, &[&layer], None).await;
        let sig = blob(&s, &app, "signature").await;
        let referrer = image(&s, &app, None, &config, &[&sig], Some(&subject)).await;

        let kept = s
            .gc(
                &[(app.clone(), subject.clone())],
                &[],
                Duration::ZERO,
                false,
            )
            .await
            .expect("gc");
        assert_eq!(kept, GcReport::default());
        assert!(exists(&s, &app, &referrer).await);
        let listed = s.referrers(&app, &subject, None).await.expect("referrers");
        assert_eq!(listed.len(), 1);

        let report = s.gc(&[], &[], Duration::ZERO, false).await.expect("gc");
        assert_eq!(report.manifests.len(), 2);
        assert!(!exists(&s, &app, &referrer).await);
        assert!(!has_content(&s, &sig).await);
        let base = Storage::referrers_key(&app, &subject);
        assert!(s.list(&base.join("sha256")).await.expect("list").is_empty());
    }

    /// Within the grace period nothing goes: a push that uploaded its blobs but not yet its
    /// manifest stays intact, and so does an unreferenced image pushed a moment ago.
    #[tokio::test]
    async fn nothing_younger_than_the_grace_period_goes() {
        let (_dir, s) = storage();
        let app = repo("apps/web");
        let config = blob(&s, &app, "config").await;
        let layer = blob(&s, &app, "layer").await;
        let unkept = image(&s, &app, None, &config, &[&layer], None).await;
        let pending = blob(&s, &app, "pushed, manifest still to come").await;

        let report = s.gc(&[], &[], HOUR, false).await.expect("gc");
        assert_eq!(report, GcReport::default());
        assert!(exists(&s, &app, &unkept).await);
        // The push goes on: its manifest finds its blobs.
        image(&s, &app, Some("latest"), &config, &[&pending], None).await;

        // Without grace the untagged image goes.
        let report = s.gc(&[], &[], Duration::ZERO, false).await.expect("gc");
        assert_eq!(report.manifests.len(), 1);
        assert!(!exists(&s, &app, &unkept).await);
    }

    /// An upload session that is still open survives a collection and finishes afterwards.
    #[tokio::test]
    async fn uploads_in_flight_survive() {
        let (_dir, s) = storage();
        let app = repo("apps/web");
        let id = s.start_upload(&app).await.expect("start");
        s.append_upload(&app, &id, Some(0), body(b"half "))
            .await
            .expect("append");

        s.gc(&[], &[], Duration::ZERO, false).await.expect("gc");

        let digest = Digest::of(Algorithm::Sha256, b"half done");
        s.finish_upload(&app, &id, &digest, None, body(b"done"))
            .await
            .expect("finish after gc");
        assert!(s.blob_size(&app, &digest).await.expect("stat").is_some());
    }

    /// Content one repository still links survives when another repository's link goes.
    #[tokio::test]
    async fn shared_content_survives_while_any_repository_needs_it() {
        let (_dir, s) = storage();
        let (a, b) = (repo("apps/a"), repo("apps/b"));
        let config = blob(&s, &a, "config").await;
        let layer = blob(&s, &a, "shared layer").await;
        image(&s, &a, None, &config, &[&layer], None).await;
        assert!(s.mount_blob(&b, &a, &layer).await.expect("mount"));
        assert!(s.mount_blob(&b, &a, &config).await.expect("mount"));
        let kept = image(&s, &b, None, &config, &[&layer], None).await;

        let report = s
            .gc(&[(b.clone(), kept.clone())], &[], Duration::ZERO, false)
            .await
            .expect("gc");
        assert_eq!(report.manifests.len(), 1);
        assert_eq!(report.manifests[0].repository, "apps/a");
        assert!(s.blob_size(&a, &layer).await.expect("stat").is_none());
        assert!(s.blob_size(&b, &layer).await.expect("stat").is_some());
        assert!(has_content(&s, &layer).await);
    }

    /// In a managed repository (the builder tags each build by commit) the keep list alone
    /// decides: an unkept tagged image goes with its tag, while other repositories' tags hold.
    #[tokio::test]
    async fn tags_protect_nothing_in_managed_repositories() {
        let (_dir, s) = storage();
        let (app, stack) = (repo("apps/web"), repo("stacks/run"));
        let config = blob(&s, &app, "config").await;
        let (one, two) = (blob(&s, &app, "one").await, blob(&s, &app, "two").await);
        let old = image(&s, &app, Some("c0ffee1"), &config, &[&one], None).await;
        let new = image(&s, &app, Some("c0ffee2"), &config, &[&two], None).await;
        let base = blob(&s, &stack, "base").await;
        let run = image(&s, &stack, Some("bookworm"), &base, &[], None).await;
        let apps = ["apps".to_owned()];

        let report = s
            .gc(&[(app.clone(), new.clone())], &apps, Duration::ZERO, false)
            .await
            .expect("gc");
        assert_eq!(report.manifests.len(), 1);
        assert_eq!(report.manifests[0].digest, old.to_string());
        assert!(!exists(&s, &app, &old).await);
        assert_eq!(s.tags(&app).await.expect("tags"), ["c0ffee2"]);
        assert!(exists(&s, &app, &new).await);
        assert!(exists(&s, &stack, &run).await);
        // "apps" manages apps/web, not a repository that merely starts with the same letters.
        let other = repo("appsx/web");
        let cfg = blob(&s, &other, "other config").await;
        let tagged = image(&s, &other, Some("v1"), &cfg, &[], None).await;
        s.gc(&[], &apps, Duration::ZERO, false).await.expect("gc");
        assert!(exists(&s, &other, &tagged).await);
        assert!(!exists(&s, &app, &new).await);
    }

    /// Pushes and collections at once: whatever a collection with no grace removes, a manifest
    /// that is visible always has all its blobs, and every push either succeeds or is told its
    /// blobs are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collections_never_break_what_pushes_make_visible() {
        let (_dir, s) = storage();
        let app = repo("apps/web");
        let pushes = (0..4).map(|n| {
            let s = s.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let mut pushed = Vec::new();
                for i in 0..25 {
                    let config = blob(&s, &app, &format!("config {n}")).await;
                    let layer = blob(&s, &app, &format!("layer {n} {i}")).await;
                    let bytes = Bytes::from(
                        json!({
                            "schemaVersion": 2,
                            "mediaType": OCI_MANIFEST,
                            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
                            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
                        })
                        .to_string(),
                    );
                    let digest = Digest::of(Algorithm::Sha256, &bytes);
                    let inspected = manifest::inspect(None, &bytes).expect("valid");
                    // Without grace, a collection may take the blobs before the manifest comes:
                    // then the push is refused, never half stored.
                    match s.put_manifest(&app, None, &digest, inspected, bytes).await {
                        Ok(()) => pushed.push((digest, [config, layer])),
                        Err(StorageError::ManifestBlobUnknown(_)) => {}
                        Err(e) => panic!("push: {e}"),
                    }
                }
                pushed
            })
        });
        let pushes: Vec<_> = pushes.collect();
        let mut collections = 0;
        while collections < 5 || !pushes.iter().all(|p| p.is_finished()) {
            s.gc(&[], &[], Duration::ZERO, false).await.expect("gc");
            collections += 1;
        }
        for push in pushes {
            for (manifest, blobs) in push.await.expect("push task") {
                if !exists(&s, &app, &manifest).await {
                    continue;
                }
                for b in blobs {
                    assert!(has_content(&s, &b).await, "{manifest} lost {b}");
                    assert!(s.blob_size(&app, &b).await.expect("stat").is_some());
                }
            }
        }
    }
}
