//! What can go wrong between the client and S3, each failure with what it concerned (object,
//! file, request) and its cause. The `Display` texts are what the CLI prints after `Error: `.

use std::path::PathBuf;

/// Which transfer was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Upload,
    Download,
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transfer::Upload => "uploading",
            Transfer::Download => "downloading",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The STS request to the IMS server failed.
    #[error(transparent)]
    Api(#[from] crate::Error),
    /// The server URL cannot carry the STS route.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The STS answer is not one this client can use.
    #[error("STS: {0}")]
    Sts(String),
    /// No S3 client can be made for the endpoint STS named.
    #[error("S3 client for {endpoint}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: object_store::Error,
    },
    #[error("invalid key {key:?}: {source}")]
    InvalidKey {
        key: String,
        #[source]
        source: object_store::path::Error,
    },
    #[error("not an s3://BUCKET/KEY path: {0:?}")]
    NotS3Path(String),
    #[error("Object was not found in bucket: s3://{bucket}/{key}")]
    NotFound { bucket: String, key: String },
    /// Any other failure of an object operation.
    #[error("s3://{bucket}/{key}: {source}")]
    Object {
        bucket: String,
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// The transfer was cancelled (Ctrl-C, a cancelled job); what it left behind was cleaned up.
    #[error("interrupted while {transfer} s3://{bucket}/{key}")]
    Interrupted {
        transfer: Transfer,
        bucket: String,
        key: String,
    },
    #[error("s3://{bucket}/{key}: short read at offset {offset} ({got} of {want} bytes)")]
    ShortRead {
        bucket: String,
        key: String,
        offset: u64,
        got: u64,
        want: u64,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} changed while it was uploaded ({before} bytes before, {read} read)", .path.display())]
    Changed {
        path: PathBuf,
        before: u64,
        read: u64,
    },
    /// A signed request (ListBuckets, ListObjects, CopyObject) could not be sent or read.
    #[error(transparent)]
    Request(#[from] ims_artifacts::sigv4::SendError),
    /// The endpoint refused a signed request (`what`: the request and its object).
    #[error("{what}: {detail}")]
    Refused { what: String, detail: String },
    /// The endpoint's answer cannot be read (`what`: the request).
    #[error("{what}: {detail}")]
    Answer { what: String, detail: String },
    /// Setting an object's metadata (a CopyObject onto itself) failed.
    #[error("setting the metadata of s3://{bucket}/{key} failed: {status}: {detail}")]
    Metadata {
        bucket: String,
        key: String,
        status: reqwest::StatusCode,
        detail: String,
    },
    /// A blocking worker thread failed (panicked).
    #[error("internal error: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl S3Error {
    /// Whether the operation stopped because it was cancelled.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, S3Error::Interrupted { .. })
    }
}

/// An object operation's error, naming the object (a missing object is [`S3Error::NotFound`]).
pub fn s3_error(bucket: &str, key: &str, e: object_store::Error) -> S3Error {
    match e {
        object_store::Error::NotFound { .. } => S3Error::NotFound {
            bucket: bucket.to_string(),
            key: key.to_string(),
        },
        source => S3Error::Object {
            bucket: bucket.to_string(),
            key: key.to_string(),
            source,
        },
    }
}

/// For callers whose errors are still messages (the job pipelines, the CLI).
impl From<S3Error> for String {
    fn from(e: S3Error) -> String {
        e.to_string()
    }
}

pub type Result<T, E = S3Error> = std::result::Result<T, E>;
