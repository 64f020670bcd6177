//! `ims-s3`: the built-in S3-compatible endpoint that `ims serve` runs in embedded mode.
//!
//! The protocol (SigV4 header and presigned auth, path-style routing, aws-chunked bodies, XML)
//! is the `s3s` crate; the backend is ours and serves the local artifact root: bucket `b`, key
//! `k` is the file `<root>/b/k`, the same tree the IMS server writes through `object_store`.
//! Internal state (metadata, multipart parts, temporary files) lives in a separate state
//! directory, so no key can reach it (layout in `store.rs`).
//!
//! Security rules enforced here:
//! * every request is signed (SigV4, or SigV2 which boto3 uses for presigned URLs by default)
//!   with the long-lived key or an unexpired temporary key issued by [`CredentialStore::issue`];
//!   temporary keys must present their exact session token; anonymous requests get 403;
//! * temporary keys issued with a [`Policy`] ([`CredentialStore::issue_with`], a job's) may do
//!   only what it grants, checked on every request (the source of a copy included); the rest is
//!   `AccessDenied`; [`CredentialStore::revoke_owner`] voids them at once;
//! * keys with empty, `.` or `..` segments, a leading `/`, NUL or backslashes, or over 1024 bytes
//!   are refused with 400 before any file is touched; symlinks inside the root are not followed;
//! * request bodies are streamed to disk (memory does not grow with object size).
//!
//! # Integration notes
//!
//! * Mount the endpoint at the root of its own listener ([`serve`]), or as the
//!   `fallback_service` of an axum `Router` (wrapped in `axum::error_handling::HandleError`,
//!   since its error type is `s3s::HttpError`). Not under a path prefix: SigV4 signs the path,
//!   so a prefix stripped by the router breaks every signature. As a fallback, a bucket named
//!   like a top-level API path (`apis`) is shadowed by the API routes. [`serve`] is the one to
//!   use: an HTTP/1 answer it gives before the request body was read says `Connection: close`
//!   (`Expect: 100-continue` clients such as botocore then skip the body, and without it hyper
//!   may read their next request on the connection as that body); a fallback lacks that.
//! * The STS answer is `CredentialStore::issue(ttl)`: `AccessKeyId`, `SecretAccessKey`,
//!   `SessionToken`, `Expiration` (`expires`), and `EndpointURL` = `http://<host>:<port>` of the
//!   endpoint. Clients must use path-style addressing (boto3 does for custom endpoints).
//! * s3s logs every S3 error response (a HEAD 404 included) at ERROR level under the target
//!   `s3s::ops`; add the filter directive `s3s::ops=off` to keep logs readable (5xx responses are
//!   still logged under `s3s::service`).
//! * SigV4 header auth needs `x-amz-content-sha256` (SDKs send it; curl needs
//!   `-H x-amz-content-sha256:UNSIGNED-PAYLOAD`). Request times may be 15 minutes off the
//!   server's clock (`RequestTimeTooSkewed` beyond).
//! * Limits: XML bodies ≤ 4 MiB; browser-form POST uploads are refused; request headers must
//!   arrive within 60 s; on shutdown in-flight requests get 10 s.
//! * One process per state directory (its `tmp/` is emptied at start), on the same file system as
//!   the root.
//! * Objects written by other code are served: their ETag is their MD5 (computed on first
//!   access, cached) up to 64 MiB, above that a stable `<hex>-1` tag that is not an MD5. Their
//!   user metadata (`md5sum`) is whatever was last written through S3 for that exact file: a
//!   rewrite by other code drops it, and so does a rename unless that code reports it through
//!   [`ObjectMetadata::moved`] (get one from [`service_with_metadata`]), which carries the ETag,
//!   content headers and user metadata to the new key. [`ObjectMetadata::deleted`] removes the
//!   metadata of an object other code deleted.

#![forbid(unsafe_code)]

mod conn;
mod creds;
mod endpoint;
mod ingest;
mod list;
mod policy;
mod store;
mod util;

pub use creds::{CredentialStore, Credentials};
pub use ims_http::Limits;
pub use policy::{Access, Policy};

use s3s::config::StaticConfigProvider;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3Error, S3Result};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the endpoint keeps things.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The artifact root: buckets are its subdirectories, objects the files below them.
    pub root: PathBuf,
    /// Internal state (metadata, multipart parts, temporary files). Must be outside `root` and on
    /// the same file system (objects are renamed into place).
    pub state_dir: PathBuf,
}

/// Limits handed to s3s.
fn s3s_config() -> s3s::config::S3Config {
    let mut c = s3s::config::S3Config::default();
    // XML bodies: CompleteMultipartUpload with 10 000 parts or DeleteObjects with 1000 keys fit.
    c.xml_max_body_size = 4 << 20;
    // Browser-form POST uploads are not supported; s3s would buffer the file in memory before
    // any access check, so allow none.
    c.post_object_max_file_size = 0;
    c.form_max_field_size = 16 << 10;
    c.form_max_fields_size = 64 << 10;
    c.form_max_parts = 32;
    c
}

/// A hyper/tower service for the endpoint.
///
/// Creates the state directories, empties `<state_dir>/tmp` and drops multipart uploads untouched
/// for a week. Fails if `state_dir` is inside `root` (or the reverse) or on another file system.
pub fn service(cfg: S3Config, creds: Arc<CredentialStore>) -> io::Result<S3Service> {
    Ok(service_with_metadata(cfg, creds)?.0)
}

/// [`service`], plus the handle through which other code that moves or deletes objects under the
/// root keeps the endpoint's per-object metadata in step.
pub fn service_with_metadata(
    cfg: S3Config,
    creds: Arc<CredentialStore>,
) -> io::Result<(S3Service, ObjectMetadata)> {
    let store = Arc::new(store::Store::open(&cfg.root, &cfg.state_dir)?);
    tracing::debug!(root = %store.root().display(), "S3 endpoint backend ready");
    let meta = ObjectMetadata {
        store: store.clone(),
    };
    let mut b = S3ServiceBuilder::new(endpoint::Endpoint { store });
    b.set_auth(creds::KeyAuth(creds.clone()));
    b.set_access(creds::TokenAccess(creds));
    b.set_config(Arc::new(StaticConfigProvider::new(Arc::new(s3s_config()))));
    Ok((b.build(), meta))
}

/// The endpoint's per-object metadata (ETag, content headers, user metadata such as `md5sum`),
/// for code that moves or deletes object files under the root itself. Metadata is only used
/// while its object file keeps the size, inode and modification time it was recorded for, so a
/// missed call never shows wrong metadata: a missed move loses it, a missed delete leaves an
/// unused file in the state directory. The calls do blocking file-system work.
#[derive(Clone)]
pub struct ObjectMetadata {
    store: Arc<store::Store>,
}

impl ObjectMetadata {
    /// `bucket/from` was renamed to `bucket/to` (rename(2), within the root): its metadata now
    /// belongs to `to`, if it still describes the file there. Returns whether any was carried.
    pub fn moved(&self, bucket: &str, from: &str, to: &str) -> io::Result<bool> {
        self.store.object_moved(bucket, from, to)
    }

    /// `bucket/key` was deleted: its metadata is removed (unless it describes a file written there
    /// since). Returns whether a metadata file was removed.
    pub fn deleted(&self, bucket: &str, key: &str) -> io::Result<bool> {
        self.store.object_deleted(bucket, key)
    }
}

/// Serves `svc` on `listener` (HTTP/1.1 and h2c) under `limits` (connection limit, header-read
/// and idle timeouts: [`ims_http`], the same rules as the API's) until `shutdown` resolves, then
/// stops accepting, lets in-flight requests finish for up to 10 s and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: S3Service,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    ims_http::serve(
        listener,
        conn::CloseUnreadBodies(svc),
        limits,
        "S3 endpoint",
        shutdown,
    )
    .await
}

/// Runs blocking file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> S3Result<T> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(S3Error::internal_error)?
}
