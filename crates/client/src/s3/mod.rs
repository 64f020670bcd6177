//! S3 through STS, as `cray artifacts` does (`clients.md` §5): `PUT /apis/sts/token` (with the
//! configured bearer token), then path-style SigV4 requests to the returned `EndpointURL` with the
//! returned key, secret and session token.
//!
//! * [`Ctx`] (`sts`): the STS request and an `object_store` client per bucket.
//! * `signed`: SigV4 requests for what `object_store` does not offer — [`list_buckets`],
//!   [`list_objects`] (`listing`, the XML read with a real parser) and [`replace_metadata`].
//! * `upload`, `download`: single-pass multipart uploads and ranged parallel downloads. Uploads
//!   are multipart (8 MiB parts, several in flight); a reader thread reads the file once and hashes
//!   each part (md5 and sha256) while earlier parts are on the wire. Downloads are ranged and
//!   parallel, each range written at its offset. Memory stays bounded by `PART * (IN_FLIGHT + 2)`
//!   whatever the object's size.
//!
//! Nothing here draws or prints: transfers report their bytes to the [`Progress`] the caller set
//! on the [`Ctx`] (the CLI draws bars), and a cancelled transfer fails with
//! [`S3Error::Interrupted`] after cleaning up.

mod download;
mod error;
mod listing;
mod signed;
mod sts;
mod upload;

pub use download::{download, download_hashed, hash_object, remove};
pub use error::{Result, S3Error, Transfer, s3_error};
pub use ims_artifacts::sigv4::hex;
pub use listing::{Listed, bucket_exists, list_buckets, list_objects};
pub use signed::replace_metadata;
pub use sts::{Creds, Ctx};
pub use upload::{Hashing, Uploaded, file_md5, upload};

use object_store::path::Path as ObjPath;

/// Part and range size (what boto3 uses).
pub const PART: usize = 8 * 1024 * 1024;
/// Parts or ranges in flight at once.
pub const IN_FLIGHT: usize = 8;
const REGION: &str = "us-east-1";

/// Where transfers report their progress. The default ([`NoProgress`]) shows nothing; the CLI
/// draws a bar on a terminal.
pub trait Progress: Send + Sync {
    /// A transfer of `total` bytes of `what` (the object's key) starts.
    fn start(&self, what: &str, total: u64) -> Box<dyn Meter>;
}

/// One transfer's progress.
pub trait Meter: Send + Sync {
    /// `bytes` more were sent or received.
    fn advance(&self, bytes: u64);
    /// The transfer is complete.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: u64) -> Box<dyn Meter> {
        Box::new(NoProgress)
    }
}

impl Meter for NoProgress {
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

pub fn key_path(key: &str) -> Result<ObjPath> {
    ObjPath::parse(key).map_err(|source| S3Error::InvalidKey {
        key: key.to_string(),
        source,
    })
}

/// `s3://bucket/key` → (bucket, key).
pub fn split_s3(path: &str) -> Result<(String, String)> {
    path.strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .map(|(b, k)| (b.to_string(), k.to_string()))
        .ok_or_else(|| S3Error::NotS3Path(path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_paths() {
        assert_eq!(
            split_s3("s3://boot-images/a/b").unwrap(),
            ("boot-images".into(), "a/b".into())
        );
        assert!(matches!(split_s3("s3://b"), Err(S3Error::NotS3Path(_))));
        assert!(split_s3("http://b/k").is_err());
    }

    #[test]
    fn messages_name_the_object() {
        let e = s3_error(
            "b",
            "k",
            object_store::Error::NotFound {
                path: "k".into(),
                source: "gone".into(),
            },
        );
        assert_eq!(e.to_string(), "Object was not found in bucket: s3://b/k");
        let e = S3Error::Interrupted {
            transfer: Transfer::Upload,
            bucket: "b".into(),
            key: "k".into(),
        };
        assert!(e.is_interrupted());
        assert_eq!(e.to_string(), "interrupted while uploading s3://b/k");
    }
}
