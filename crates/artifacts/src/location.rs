//! Parsing links (`s3://bucket/key`) into safe locations.
//!
//! The original parses a link `path` with `urlparse`: the netloc is the bucket, the path (without its
//! leading `/`) plus any `?query` is the key, and the scheme is not checked (`http://ims/…` works).
//! We keep that and refuse anything that could leave its bucket: bucket names and keys must follow
//! the rules of [`ims_core::s3name`], and keys may not contain percent-escapes either.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("artifact link {0:?} is not of the form s3://<bucket>/<key>")]
    Malformed(String),
    #[error("invalid bucket name {0:?}")]
    Bucket(String),
    #[error("invalid object key {0:?}")]
    Key(String),
}

/// A validated bucket + key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub bucket: String,
    pub key: String,
    pub(crate) path: object_store::path::Path,
}

use ims_core::s3name::valid_bucket;

impl Location {
    pub fn new(bucket: &str, key: &str) -> Result<Self, LocationError> {
        if !valid_bucket(bucket) {
            return Err(LocationError::Bucket(bucket.to_string()));
        }
        let bad = ims_core::s3name::check_key(key, ims_core::s3name::MAX_KEY_LEN).is_err()
            // Percent-escapes could be decoded into `..` or `/` by a URL layer further down.
            || key.contains('%');
        if bad {
            return Err(LocationError::Key(key.to_string()));
        }
        let path = object_store::path::Path::parse(key)
            .map_err(|_| LocationError::Key(key.to_string()))?;
        if path.as_ref() != key {
            return Err(LocationError::Key(key.to_string()));
        }
        Ok(Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
            path,
        })
    }

    /// Parses a link path the way the original does (any scheme, netloc = bucket).
    pub fn parse(link_path: &str) -> Result<Self, LocationError> {
        let malformed = || LocationError::Malformed(link_path.to_string());
        let (_, rest) = link_path.split_once("://").ok_or_else(malformed)?;
        let (bucket, key) = rest.split_once('/').ok_or_else(malformed)?;
        Location::new(bucket, key)
    }

    /// The same key under `deleted/` (soft delete).
    pub fn deleted(&self) -> Location {
        Location::new(&self.bucket, &format!("deleted/{}", self.key))
            .expect("prefixing a valid key keeps it valid")
    }

    /// The key with its `deleted/` prefix removed, if it has one (undelete).
    pub fn undeleted(&self) -> Option<Location> {
        let rest = self.key.strip_prefix("deleted")?.trim_start_matches('/');
        Location::new(&self.bucket, rest).ok()
    }

    /// `s3://bucket/key`.
    pub fn s3_url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_urlparse() {
        let l = Location::parse("http://ims/recipes/1/recipe.tgz").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.key.as_str()),
            ("ims", "recipes/1/recipe.tgz")
        );
        let l = Location::parse("s3://boot-images/a/manifest.json").unwrap();
        assert_eq!(l.s3_url(), "s3://boot-images/a/manifest.json");
    }

    #[test]
    fn refuses_escapes() {
        for p in [
            "s3://ims/../etc/passwd",
            "s3://ims/a/../../b",
            "s3://ims//etc/passwd",
            "s3://ims/a/./b",
            "s3://ims/a\\b",
            "s3://../x",
            "s3://IMS/x",
            "s3://ims",
            "s3://ims/",
            "ims/x",
            "s3://a/x",
            "s3://ims/%2e%2e/%2E%2E/etc/passwd",
            "s3://ims/a%2fb",
            "s3://10.0.0.1/x",
        ] {
            assert!(Location::parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn undelete_strips_prefix() {
        let l = Location::parse("s3://ims/deleted/recipes/1/r.tgz").unwrap();
        assert_eq!(l.undeleted().unwrap().key, "recipes/1/r.tgz");
        assert!(
            Location::parse("s3://ims/recipes/1")
                .unwrap()
                .undeleted()
                .is_none()
        );
    }
}
