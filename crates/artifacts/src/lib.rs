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

#![forbid(unsafe_code)]

mod location;
pub mod sigv4;

/// The S3 bucket naming rules ([`ims_core::s3name`]), for callers that check a bucket name they
/// will use with the artifact store (`ims serve`'s settings).
pub use ims_core::s3name::valid_bucket;
pub use location::{Location, LocationError};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, PutPayload};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where artifacts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
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
    /// Objects larger than this many bytes are moved with a multipart copy (UploadPartCopy)
    /// instead of one CopyObject, which S3 and Ceph RGW refuse above 5 GiB.
    pub copy_multipart_threshold: u64,
    /// The part size of multipart copies (raised when an object would need more than 10,000 parts).
    pub copy_part_size: u64,
}

/// The largest object S3 copies in one CopyObject (and the default multipart-copy threshold).
pub const MAX_SINGLE_COPY: u64 = 5 << 30;
/// The smallest part S3 accepts (but the last).
pub const MIN_PART: u64 = 5 << 20;
/// The default part size of multipart copies.
pub const DEFAULT_COPY_PART: u64 = 512 << 20;
/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// Part copies in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("verify_tls", &self.verify_tls)
            .field("copy_multipart_threshold", &self.copy_multipart_threshold)
            .field("copy_part_size", &self.copy_part_size)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error("artifact {0} does not exist")]
    NotFound(String),
    /// The store failed. `location` names the artifact, bucket or endpoint (never a server
    /// path: it may be shown to clients); `message` is the store's own, which may name files.
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

/// Told, after the fact, about the objects an [`ArtifactStore`] on local storage moved or
/// deleted, so that state kept beside the files (the built-in S3 endpoint's per-object metadata)
/// can follow them. Called on a blocking thread (file-system work is fine) once the operation has
/// succeeded, before it returns; an error is logged as a warning and never fails the operation,
/// so an implementation must stay correct when an event is lost (a crash between the operation
/// and its event) or repeated ([`ArtifactStore::complete_move`] and
/// [`ArtifactStore::complete_delete`] tell it again when the records service replays a move or
/// delete after a crash).
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
    storage: Storage,
    /// HTTP client of the signed S3 calls (multipart copies), made on first use.
    http: std::sync::OnceLock<reqwest::Client>,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    events: Option<Arc<dyn ObjectEvents>>,
}

impl ArtifactStore {
    pub fn new(storage: Storage) -> Self {
        ArtifactStore {
            storage,
            http: std::sync::OnceLock::new(),
            buckets: Mutex::new(HashMap::new()),
            events: None,
        }
    }

    /// Reports every successful move and delete on local storage to `events` (on the S3
    /// storage there is nothing local to follow, and nothing is reported).
    pub fn with_events(mut self, events: Arc<dyn ObjectEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Creates the given buckets (local: their directories) so that they exist from the start.
    pub fn ensure_buckets(&self, buckets: &[&str]) -> Result<()> {
        if let Storage::Local { root } = &self.storage {
            for b in buckets {
                if !valid_bucket(b) {
                    return Err(LocationError::Bucket(b.to_string()).into());
                }
                let dir = root.join(b);
                std::fs::create_dir_all(&dir).map_err(|e| local_error(b, &dir, e))?;
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
        let store: Arc<dyn ObjectStore> = match &self.storage {
            Storage::Local { root } => {
                let dir = root.join(bucket);
                if !dir.is_dir() {
                    if !create {
                        return Ok(None);
                    }
                    std::fs::create_dir_all(&dir).map_err(|e| local_error(bucket, &dir, e))?;
                }
                Arc::new(
                    LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| local_error(bucket, &dir, e))?,
                )
            }
            Storage::S3(s) => {
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

    /// Moves an object within its bucket (local: a rename; S3: server-side copy + delete, a
    /// multipart copy above [`S3Settings::copy_multipart_threshold`]). `None` if the source does
    /// not exist.
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
        if let Storage::S3(s) = &self.storage {
            let Some(src) = self.head(from).await? else {
                return Ok(None);
            };
            if src.size > s.copy_multipart_threshold {
                self.multipart_copy(s, from, to, src.size).await?;
                // The copy is complete; now the source goes. Should that fail, both exist and the
                // move (re-run from the records service's journal) copies again over the copy.
                match store.delete(&from.path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(from, e)),
                }
                return self.head(to).await;
            }
        }
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
    /// The HTTP client of signed S3 calls.
    fn http(&self, s: &S3Settings) -> Result<&reqwest::Client> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let c = reqwest::Client::builder()
            .danger_accept_invalid_certs(!s.verify_tls)
            .build()
            .map_err(|e| ArtifactError::Store {
                location: s.endpoint.clone(),
                message: format!("cannot make an HTTP client: {e}"),
            })?;
        Ok(self.http.get_or_init(|| c))
    }

    /// Copies `from` to `to` (same bucket, `size` bytes) with a multipart upload whose parts are
    /// server-side copies of byte ranges (UploadPartCopy), keeping the content headers and user
    /// metadata (`md5sum`…) as CopyObject does. On any failure the upload is aborted: the source
    /// stays as it was and no part is left behind.
    async fn multipart_copy(
        &self,
        s: &S3Settings,
        from: &Location,
        to: &Location,
        size: u64,
    ) -> Result<()> {
        let http = self.http(s)?;
        let fail = |what: &str, m: String| ArtifactError::Store {
            location: to.to_string(),
            message: format!("multipart copy from {from}: {what}: {m}"),
        };
        // Path-style: `endpoint/bucket/key`; virtual-hosted-style: `bucket.endpoint/key`.
        let (endpoint, prefix) = if s.path_style {
            (s.endpoint.clone(), format!("/{}", from.bucket))
        } else {
            let mut u =
                reqwest::Url::parse(&s.endpoint).map_err(|e| fail("endpoint", e.to_string()))?;
            let host = format!("{}.{}", from.bucket, u.host_str().unwrap_or_default());
            u.set_host(Some(&host))
                .map_err(|e| fail("endpoint", e.to_string()))?;
            (u.to_string(), String::new())
        };
        let signer = sigv4::Signer {
            endpoint: &endpoint,
            region: &s.region,
            access_key: &s.access_key,
            secret_key: &s.secret_key,
            token: "",
        };
        let (src_path, dst_path) = (
            format!("{prefix}/{}", from.key),
            format!("{prefix}/{}", to.key),
        );
        let call = |method: reqwest::Method,
                    path: String,
                    query: Vec<(&'static str, String)>,
                    headers: Vec<(String, String)>,
                    body: Bytes| {
            let signer = &signer;
            async move {
                let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let h: Vec<(&str, String)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                let a = sigv4::send(http, signer, method, &path, &q, &h, body)
                    .await
                    .map_err(|e| e.to_string())?;
                // S3 may answer 200 with an error document for a copy that failed midway.
                if !a.status.is_success() || sigv4::is_error_document(&a.body) {
                    return Err(sigv4::error_text(a.status, &a.body));
                }
                Ok(a)
            }
        };
        // The source's content headers and user metadata go onto the new object.
        let head = call(
            reqwest::Method::HEAD,
            src_path,
            vec![],
            vec![],
            Bytes::new(),
        )
        .await
        .map_err(|e| fail("HEAD", e))?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for (k, v) in &head.headers {
            let k = k.as_str();
            let keep = k.starts_with("x-amz-meta-")
                || matches!(
                    k,
                    "content-type"
                        | "content-encoding"
                        | "content-disposition"
                        | "content-language"
                        | "cache-control"
                        | "expires"
                );
            if keep && let Ok(v) = v.to_str() {
                headers.push((k.to_string(), v.to_string()));
            }
        }
        let created = call(
            reqwest::Method::POST,
            dst_path.clone(),
            vec![("uploads", String::new())],
            headers,
            Bytes::new(),
        )
        .await
        .map_err(|e| fail("CreateMultipartUpload", e))?;
        let Some(upload) = sigv4::xml_text(&created.body, "UploadId") else {
            return Err(fail(
                "CreateMultipartUpload",
                "no UploadId in the answer".into(),
            ));
        };
        let part = s.copy_part_size.max(size.div_ceil(MAX_PARTS)).max(1);
        let source = sigv4::uri_encode(&format!("/{}/{}", from.bucket, from.key), true);
        let copy = async {
            let etags: Vec<String> = futures::stream::iter(0..size.div_ceil(part))
                .map(|i| {
                    let (start, end) = (i * part, ((i + 1) * part).min(size) - 1);
                    let query = vec![
                        ("partNumber", (i + 1).to_string()),
                        ("uploadId", upload.clone()),
                    ];
                    let headers = vec![
                        ("x-amz-copy-source".to_string(), source.clone()),
                        (
                            "x-amz-copy-source-range".to_string(),
                            format!("bytes={start}-{end}"),
                        ),
                    ];
                    let call = &call;
                    let dst_path = dst_path.clone();
                    async move {
                        let a = call(reqwest::Method::PUT, dst_path, query, headers, Bytes::new())
                            .await
                            .map_err(|e| format!("UploadPartCopy {}: {e}", i + 1))?;
                        sigv4::xml_text(&a.body, "ETag").ok_or_else(|| {
                            format!("UploadPartCopy {}: no ETag in the answer", i + 1)
                        })
                    }
                })
                .buffered(PARTS_IN_FLIGHT)
                .try_collect()
                .await?;
            let mut xml = String::from("<CompleteMultipartUpload>");
            for (i, etag) in etags.iter().enumerate() {
                xml.push_str(&format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                    i + 1,
                    etag.replace('&', "&amp;").replace('"', "&quot;")
                ));
            }
            xml.push_str("</CompleteMultipartUpload>");
            call(
                reqwest::Method::POST,
                dst_path.clone(),
                vec![("uploadId", upload.clone())],
                vec![],
                Bytes::from(xml),
            )
            .await
            .map_err(|e| format!("CompleteMultipartUpload: {e}"))
        };
        if let Err(e) = copy.await {
            if let Err(a) = call(
                reqwest::Method::DELETE,
                dst_path.clone(),
                vec![("uploadId", upload.clone())],
                vec![],
                Bytes::new(),
            )
            .await
            {
                tracing::error!(location = %to, upload = %upload, error = %a, "could not abort a failed multipart copy; its parts stay until the bucket's lifecycle rules remove them");
            }
            return Err(fail("copy", e));
        }
        Ok(())
    }
}

impl ArtifactStore {
    /// Local store: tells the [`ObjectEvents`] hook, if any, about a move or delete that succeeded.
    /// Its failure is only logged: the operation itself is done.
    async fn notify(&self, event: Event) {
        let (Some(events), Storage::Local { .. }) = (&self.events, &self.storage) else {
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
        let Storage::Local { root } = &self.storage else {
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

/// A failure of local storage with bucket directory `dir`.
fn local_error(bucket: &str, dir: &std::path::Path, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Store {
        location: format!("s3://{bucket}"),
        message: format!("{}: {e}", dir.display()),
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
        let s = ArtifactStore::new(Storage::Local {
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
            let s = ArtifactStore::new(Storage::Local {
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
    async fn completing_moves_and_deletes_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder::default());
        let s = ArtifactStore::new(Storage::Local {
            root: d.path().to_path_buf(),
        })
        .with_events(rec.clone());
        let a = Location::parse("s3://boot-images/x/rootfs").unwrap();
        let b = a.deleted();
        s.put_small(&a, Bytes::from_static(b"r")).await.unwrap();
        let first = s.complete_move(&a, &b).await.unwrap().unwrap();
        // Re-run after a crash: the source is gone, the destination there: done, same object,
        // and the hook is told again (its first event may have been lost).
        assert_eq!(s.complete_move(&a, &b).await.unwrap(), Some(first));
        assert_eq!(s.head(&a).await.unwrap(), None);
        // Neither there: nothing to move.
        let c = Location::parse("s3://boot-images/y/rootfs").unwrap();
        assert_eq!(s.complete_move(&c, &c.deleted()).await.unwrap(), None);
        s.complete_delete(&b).await.unwrap();
        s.complete_delete(&b).await.unwrap();
        assert_eq!(s.head(&b).await.unwrap(), None);
        assert_eq!(
            *rec.seen.lock().unwrap(),
            [
                "moved boot-images x/rootfs deleted/x/rootfs",
                "moved boot-images x/rootfs deleted/x/rootfs",
                "deleted boot-images deleted/x/rootfs",
                "deleted boot-images deleted/x/rootfs",
            ]
        );
    }

    #[tokio::test]
    async fn unknown_bucket_reads_create_nothing() {
        let (d, s) = local();
        let a = Location::parse("s3://nobucket/k").unwrap();
        assert_eq!(s.head(&a).await.unwrap(), None);
        assert!(!d.path().join("nobucket").exists());
    }
}
