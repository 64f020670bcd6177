//! `ims-artifacts`: the artifact store (recipe tarballs, image manifests, rootfs, kernels, initrds).
//!
//! Artifacts are addressed by the links IMS records carry (`s3://<bucket>/<key>`). The store is the
//! `object_store` crate: the local filesystem by default (each bucket a directory under the artifact
//! root) or any S3 endpoint. Nothing here holds an artifact whole in memory except bounded reads
//! (manifests, ≤ 1 MiB); moves are renames (local) or server-side copies (S3).
//!
//! Something that keeps per-object state beside the local files (the built-in S3 endpoint keeps
//! each object's ETag, content headers and user metadata) can follow the store's moves and deletes
//! through [`ObjectEvents`] ([`ArtifactStore::with_events`]).

mod location;

pub use location::{Location, LocationError, valid_bucket};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, PutPayload};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where artifacts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `<root>/<bucket>/<key>` on the local filesystem.
    Local { root: PathBuf },
    /// An S3 endpoint (Ceph RGW, MinIO, AWS…).
    S3(S3Settings),
}

#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Path-style (`https://host/bucket/key`) rather than virtual-hosted-style addressing.
    pub path_style: bool,
    /// Verify the endpoint's TLS certificate.
    pub verify_tls: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("verify_tls", &self.verify_tls)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error("artifact {0} does not exist")]
    NotFound(String),
    #[error("artifact store error on {location}: {message}")]
    Store { location: String, message: String },
}

pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// What a HEAD tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: String,
}

/// The result of a bounded read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmallRead {
    NotFound,
    /// The object is at least the limit; its size.
    TooLarge(u64),
    Data(Bytes),
}

/// Told, after the fact, about the objects an [`ArtifactStore`] on the local backend moved or
/// deleted, so that state kept beside the files (the built-in S3 endpoint's per-object metadata)
/// can follow them. Called on a blocking thread (file-system work is fine) once the operation has
/// succeeded, before it returns; an error is logged as a warning and never fails the operation,
/// so an implementation must stay correct when an event is lost (a crash between the operation
/// and its event).
pub trait ObjectEvents: Send + Sync + 'static {
    /// `bucket/from` was renamed to `bucket/to`: the same file (inode, size and modification time
    /// unchanged) under another key.
    fn moved(&self, bucket: &str, from: &str, to: &str) -> std::io::Result<()>;
    /// `bucket/key` was deleted.
    fn deleted(&self, bucket: &str, key: &str) -> std::io::Result<()>;
}

/// An event for [`ObjectEvents`].
enum Event {
    Moved {
        bucket: String,
        from: String,
        to: String,
    },
    Deleted {
        bucket: String,
        key: String,
    },
}

/// The artifact store: one `ObjectStore` per bucket, created on first use.
pub struct ArtifactStore {
    backend: Backend,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    events: Option<Arc<dyn ObjectEvents>>,
}

impl ArtifactStore {
    pub fn new(backend: Backend) -> Self {
        ArtifactStore {
            backend,
            buckets: Mutex::new(HashMap::new()),
            events: None,
        }
    }

    /// Reports every successful move and delete on the local backend to `events` (on the S3
    /// backend there is nothing local to follow, and nothing is reported).
    pub fn with_events(mut self, events: Arc<dyn ObjectEvents>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Creates the given buckets (local: their directories) so that they exist from the start.
    pub fn ensure_buckets(&self, buckets: &[&str]) -> Result<()> {
        if let Backend::Local { root } = &self.backend {
            for b in buckets {
                if !valid_bucket(b) {
                    return Err(LocationError::Bucket(b.to_string()).into());
                }
                let dir = root.join(b);
                std::fs::create_dir_all(&dir).map_err(|e| ArtifactError::Store {
                    location: dir.display().to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// The object store of a bucket. Local buckets that do not exist yet are created only when
    /// `create` is set (writes); reads of an unknown bucket answer "not found" without touching disk.
    fn bucket(&self, bucket: &str, create: bool) -> Result<Option<Arc<dyn ObjectStore>>> {
        if let Some(s) = self.buckets.lock().map_err(poisoned)?.get(bucket) {
            return Ok(Some(s.clone()));
        }
        let store: Arc<dyn ObjectStore> = match &self.backend {
            Backend::Local { root } => {
                let dir = root.join(bucket);
                if !dir.is_dir() {
                    if !create {
                        return Ok(None);
                    }
                    std::fs::create_dir_all(&dir).map_err(|e| ArtifactError::Store {
                        location: dir.display().to_string(),
                        message: e.to_string(),
                    })?;
                }
                Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
                    ArtifactError::Store {
                        location: dir.display().to_string(),
                        message: e.to_string(),
                    }
                })?)
            }
            Backend::S3(s) => {
                let opts = ClientOptions::new()
                    .with_allow_http(true)
                    .with_allow_invalid_certificates(!s.verify_tls);
                Arc::new(
                    AmazonS3Builder::new()
                        .with_endpoint(&s.endpoint)
                        .with_region(&s.region)
                        .with_bucket_name(bucket)
                        .with_access_key_id(&s.access_key)
                        .with_secret_access_key(&s.secret_key)
                        .with_virtual_hosted_style_request(!s.path_style)
                        .with_client_options(opts)
                        .build()
                        .map_err(|e| ArtifactError::Store {
                            location: format!("s3://{bucket}"),
                            message: e.to_string(),
                        })?,
                )
            }
        };
        self.buckets
            .lock()
            .map_err(poisoned)?
            .insert(bucket.to_string(), store.clone());
        Ok(Some(store))
    }

    /// HEAD: `None` if the object does not exist.
    pub async fn head(&self, loc: &Location) -> Result<Option<ObjectInfo>> {
        let Some(store) = self.bucket(&loc.bucket, false)? else {
            return Ok(None);
        };
        match store.head(&loc.path).await {
            Ok(m) => Ok(Some(ObjectInfo {
                size: m.size,
                etag: m.e_tag.unwrap_or_default(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(loc, e)),
        }
    }

    /// Reads an object only if it is smaller than `limit` bytes (manifests).
    pub async fn read_small(&self, loc: &Location, limit: u64) -> Result<SmallRead> {
        let Some(store) = self.bucket(&loc.bucket, false)? else {
            return Ok(SmallRead::NotFound);
        };
        let res = match store.get(&loc.path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(SmallRead::NotFound),
            Err(e) => return Err(store_err(loc, e)),
        };
        if res.meta.size >= limit {
            return Ok(SmallRead::TooLarge(res.meta.size));
        }
        let mut buf = Vec::with_capacity(res.meta.size as usize);
        let mut stream = res.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store_err(loc, e))?;
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 >= limit {
                return Ok(SmallRead::TooLarge(buf.len() as u64));
            }
        }
        Ok(SmallRead::Data(Bytes::from(buf)))
    }

    /// Writes a small object (a manifest); returns its new info.
    pub async fn put_small(&self, loc: &Location, data: Bytes) -> Result<ObjectInfo> {
        let store = self
            .bucket(&loc.bucket, true)?
            .ok_or_else(|| missing(loc))?;
        let size = data.len() as u64;
        let r = store
            .put(&loc.path, PutPayload::from(data))
            .await
            .map_err(|e| store_err(loc, e))?;
        Ok(ObjectInfo {
            size,
            etag: r.e_tag.unwrap_or_default(),
        })
    }

    /// Deletes an object; `false` if it did not exist.
    pub async fn delete(&self, loc: &Location) -> Result<bool> {
        let Some(store) = self.bucket(&loc.bucket, false)? else {
            return Ok(false);
        };
        if self.head(loc).await?.is_none() {
            return Ok(false);
        }
        match store.delete(&loc.path).await {
            Ok(()) => {
                self.prune_empty_dirs(loc);
                self.notify(Event::Deleted {
                    bucket: loc.bucket.clone(),
                    key: loc.key.clone(),
                })
                .await;
                Ok(true)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(loc, e)),
        }
    }

    /// Moves an object within its bucket (local: a rename; S3: server-side copy + delete).
    /// `None` if the source does not exist.
    pub async fn rename(&self, from: &Location, to: &Location) -> Result<Option<ObjectInfo>> {
        if from.bucket != to.bucket {
            return Err(ArtifactError::Store {
                location: from.to_string(),
                message: format!("cannot move across buckets to {to}"),
            });
        }
        let Some(store) = self.bucket(&from.bucket, false)? else {
            return Ok(None);
        };
        match store.rename(&from.path, &to.path).await {
            Ok(()) => self.prune_empty_dirs(from),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err(from, e)),
        }
        self.notify(Event::Moved {
            bucket: from.bucket.clone(),
            from: from.key.clone(),
            to: to.key.clone(),
        })
        .await;
        self.head(to).await
    }

    /// Drives a move to completion, idempotently (the records service's journal replays moves
    /// after a crash): `from` moves to `to` if it exists (replacing what `to` held); if `from` is
    /// gone, the move counts as done when `to` exists, and the [`ObjectEvents`] hook is told again
    /// (a crash may have lost the first event; the hook ignores repeats). The info of `to`;
    /// `None` if neither exists.
    pub async fn complete_move(
        &self,
        from: &Location,
        to: &Location,
    ) -> Result<Option<ObjectInfo>> {
        if let Some(info) = self.rename(from, to).await? {
            return Ok(Some(info));
        }
        let info = self.head(to).await?;
        if info.is_some() {
            self.notify(Event::Moved {
                bucket: from.bucket.clone(),
                from: from.key.clone(),
                to: to.key.clone(),
            })
            .await;
        }
        Ok(info)
    }

    /// Deletes an object idempotently: also when it is already gone, the [`ObjectEvents`] hook is
    /// told (a crash may have lost the first event).
    pub async fn complete_delete(&self, loc: &Location) -> Result<()> {
        if !self.delete(loc).await? {
            self.notify(Event::Deleted {
                bucket: loc.bucket.clone(),
                key: loc.key.clone(),
            })
            .await;
        }
        Ok(())
    }
}

impl ArtifactStore {
    /// Local store: tells the [`ObjectEvents`] hook, if any, about a move or delete that succeeded.
    /// Its failure is only logged: the operation itself is done.
    async fn notify(&self, event: Event) {
        let (Some(events), Backend::Local { .. }) = (&self.events, &self.backend) else {
            return;
        };
        let events = events.clone();
        let res = tokio::task::spawn_blocking(move || match &event {
            Event::Moved { bucket, from, to } => events
                .moved(bucket, from, to)
                .map_err(|e| format!("after moving s3://{bucket}/{from} to {to}: {e}")),
            Event::Deleted { bucket, key } => events
                .deleted(bucket, key)
                .map_err(|e| format!("after deleting s3://{bucket}/{key}: {e}")),
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not update the state kept beside an artifact")
            }
            Err(e) => tracing::warn!(error = %e, "artifact event handler failed"),
        }
    }

    /// Local store: removes the directories a delete or move left empty, up to (not including) the
    /// bucket directory, so `deleted/<id>/` and `<id>/` do not pile up.
    fn prune_empty_dirs(&self, loc: &Location) {
        let Backend::Local { root } = &self.backend else {
            return;
        };
        let bucket_dir = root.join(&loc.bucket);
        let mut dir = bucket_dir.join(&loc.key);
        while dir.pop() && dir.starts_with(&bucket_dir) && dir != bucket_dir {
            // Fails (and stops) at the first directory that is not empty.
            if std::fs::remove_dir(&dir).is_err() {
                break;
            }
        }
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> ArtifactError {
    ArtifactError::Store {
        location: "bucket cache".into(),
        message: "lock poisoned".into(),
    }
}

fn missing(loc: &Location) -> ArtifactError {
    ArtifactError::NotFound(loc.to_string())
}

fn store_err(loc: &Location, e: object_store::Error) -> ArtifactError {
    ArtifactError::Store {
        location: loc.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, ArtifactStore) {
        let d = tempfile::tempdir().unwrap();
        let s = ArtifactStore::new(Backend::Local {
            root: d.path().to_path_buf(),
        });
        (d, s)
    }

    #[tokio::test]
    async fn put_head_read_rename_delete() {
        let (d, s) = local();
        let a = Location::parse("s3://boot-images/x/manifest.json").unwrap();
        assert_eq!(s.head(&a).await.unwrap(), None);
        s.put_small(&a, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(s.head(&a).await.unwrap().unwrap().size, 2);
        assert_eq!(
            s.read_small(&a, 10).await.unwrap(),
            SmallRead::Data(Bytes::from_static(b"{}"))
        );
        assert_eq!(s.read_small(&a, 2).await.unwrap(), SmallRead::TooLarge(2));
        let b = a.deleted();
        assert_eq!(b.to_string(), "s3://boot-images/deleted/x/manifest.json");
        assert!(s.rename(&a, &b).await.unwrap().is_some());
        assert!(
            d.path()
                .join("boot-images/deleted/x/manifest.json")
                .is_file()
        );
        assert_eq!(s.head(&a).await.unwrap(), None);
        assert!(
            !d.path().join("boot-images/x").exists(),
            "emptied directory removed"
        );
        let c = Location::parse("s3://boot-images/deleted/y/other").unwrap();
        s.put_small(&c, Bytes::from_static(b"1")).await.unwrap();
        assert!(s.delete(&b).await.unwrap());
        assert!(!s.delete(&b).await.unwrap());
        assert!(!d.path().join("boot-images/deleted/x").exists());
        assert!(
            d.path().join("boot-images/deleted/y/other").is_file(),
            "others untouched"
        );
        assert!(d.path().join("boot-images").is_dir(), "the bucket stays");
        assert!(s.rename(&a, &b).await.unwrap().is_none());
    }

    /// Records the events it is told about; fails on demand.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<String>>,
        fail: bool,
    }

    impl ObjectEvents for Recorder {
        fn moved(&self, bucket: &str, from: &str, to: &str) -> std::io::Result<()> {
            self.seen
                .lock()
                .unwrap()
                .push(format!("moved {bucket} {from} {to}"));
            if self.fail {
                return Err(std::io::Error::other("hook failure"));
            }
            Ok(())
        }
        fn deleted(&self, bucket: &str, key: &str) -> std::io::Result<()> {
            self.seen
                .lock()
                .unwrap()
                .push(format!("deleted {bucket} {key}"));
            if self.fail {
                return Err(std::io::Error::other("hook failure"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn events_follow_successful_moves_and_deletes() {
        for fail in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let rec = Arc::new(Recorder {
                fail,
                ..Recorder::default()
            });
            let s = ArtifactStore::new(Backend::Local {
                root: d.path().to_path_buf(),
            })
            .with_events(rec.clone());
            let a = Location::parse("s3://boot-images/x/rootfs").unwrap();
            let b = a.deleted();
            s.put_small(&a, Bytes::from_static(b"r")).await.unwrap();
            // A failing hook does not fail the operation.
            assert_eq!(s.rename(&a, &b).await.unwrap().unwrap().size, 1);
            assert!(s.rename(&a, &b).await.unwrap().is_none(), "nothing to move");
            assert!(s.delete(&b).await.unwrap());
            assert!(!s.delete(&b).await.unwrap(), "nothing to delete");
            assert!(
                !s.delete(&Location::parse("s3://nobucket/k").unwrap())
                    .await
                    .unwrap()
            );
            assert_eq!(
                *rec.seen.lock().unwrap(),
                [
                    "moved boot-images x/rootfs deleted/x/rootfs",
                    "deleted boot-images deleted/x/rootfs",
                ],
                "fail = {fail}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_bucket_reads_create_nothing() {
        let (d, s) = local();
        let a = Location::parse("s3://nobucket/k").unwrap();
        assert_eq!(s.head(&a).await.unwrap(), None);
        assert!(!d.path().join("nobucket").exists());
    }
}
