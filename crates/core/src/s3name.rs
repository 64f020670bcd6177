//! S3 bucket and object-key naming rules, for every crate that checks a name: the built-in S3
//! endpoint (`crates/s3`), artifact links (`ims_artifacts::Location`) and the configured bucket
//! names (`ims serve`'s settings).
//!
//! Buckets follow AWS's rules for general purpose buckets, which Ceph RGW (without
//! `rgw_relaxed_s3_bucket_names`) and MinIO enforce too: 3–63 characters of lower-case letters,
//! digits, `.` and `-`, starting and ending with a letter or digit, no `..`, and not shaped like an
//! IPv4 address (no store creates such a bucket, so no link can name one). AWS's reserved
//! prefixes and suffixes (`xn--`, `-s3alias`, …) are not refused: other stores allow them, and
//! the original IMS's buckets (`ims`, `boot-images`) are far from them.
//!
//! Keys: any UTF-8 up to 1024 bytes, except what could leave its bucket or not map onto a file
//! path (empty, `.` or `..` segments — which also covers a leading, trailing or double `/` — a NUL
//! or a backslash).

/// Longest key S3 accepts, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Whether `b` is a valid bucket name.
pub fn valid_bucket(b: &str) -> bool {
    let bytes = b.as_bytes();
    (3..=63).contains(&b.len())
        && bytes
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..")
        && b.parse::<std::net::Ipv4Addr>().is_err()
}

/// Why a key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
    Empty,
    /// It contains a NUL or a backslash.
    NulOrBackslash,
    /// It has an empty, `.` or `..` path segment (leading, trailing or double `/` included).
    DotOrEmptySegment,
    /// A path segment is longer than the caller's limit.
    LongSegment,
}

/// Checks `key` against the rules above, and every path segment against `max_segment` bytes (a
/// file system's name limit where keys become files; [`MAX_KEY_LEN`] for none). The first problem
/// found is reported, in the order: length, emptiness, characters, then segment by segment.
pub fn check_key(key: &str, max_segment: usize) -> Result<(), KeyProblem> {
    if key.len() > MAX_KEY_LEN {
        return Err(KeyProblem::TooLong);
    }
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.contains('\0') || key.contains('\\') {
        return Err(KeyProblem::NulOrBackslash);
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(KeyProblem::DotOrEmptySegment);
        }
        if seg.len() > max_segment {
            return Err(KeyProblem::LongSegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        for ok in [
            "ims",
            "boot-images",
            "a.b-c",
            "abc123",
            "123",
            "1.2.3",
            "256.1.1.1",
            &"a".repeat(63),
        ] {
            assert!(valid_bucket(ok), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "IMS",
            "Boot-images",
            "-ab",
            "ab-",
            ".ab",
            "ab.",
            "a..b",
            "a_b",
            "a b",
            "a/b",
            "192.168.1.1",
            "10.0.0.1",
            "bücket",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket(bad), "{bad}");
        }
    }

    #[test]
    fn keys() {
        for ok in ["a", "a/b", "a b+c%d", "ä/ö", "x.y", "..a", "a..", "a/.b"] {
            assert_eq!(check_key(ok, 255), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", KeyProblem::Empty),
            (".", KeyProblem::DotOrEmptySegment),
            ("..", KeyProblem::DotOrEmptySegment),
            ("/a", KeyProblem::DotOrEmptySegment),
            ("a/", KeyProblem::DotOrEmptySegment),
            ("a//b", KeyProblem::DotOrEmptySegment),
            ("a/./b", KeyProblem::DotOrEmptySegment),
            ("a/../b", KeyProblem::DotOrEmptySegment),
            ("../x", KeyProblem::DotOrEmptySegment),
            ("a/..", KeyProblem::DotOrEmptySegment),
            ("a\\b", KeyProblem::NulOrBackslash),
            ("a\0b", KeyProblem::NulOrBackslash),
        ] {
            assert_eq!(check_key(bad, 255), Err(why), "{bad:?}");
        }
        assert_eq!(check_key(&"a".repeat(1025), 255), Err(KeyProblem::TooLong));
        assert_eq!(
            check_key(&"a".repeat(256), 255),
            Err(KeyProblem::LongSegment)
        );
        assert_eq!(check_key(&"a".repeat(256), MAX_KEY_LEN), Ok(()));
        assert_eq!(
            check_key(&format!("{}/{}", "a".repeat(255), "b".repeat(255)), 255),
            Ok(())
        );
    }
}
