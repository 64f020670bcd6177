//! Small helpers: hex, random strings, key and bucket validation (the rules of
//! [`ims_core::s3name`] as S3 errors), URL encoding for listings.

use s3s::{S3Error, S3Result, s3_error};

/// Lower-case hex of some bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes lower- or upper-case hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// `len` characters drawn uniformly from `alphabet` with the operating system's CSPRNG.
pub(crate) fn random_string(alphabet: &[u8], len: usize) -> std::io::Result<String> {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    // Rejection sampling: only bytes below the largest multiple of the alphabet size are used.
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
        for &b in &buf {
            if usize::from(b) < limit && out.len() < len {
                out.push(alphabet[usize::from(b) % alphabet.len()] as char);
            }
        }
    }
    Ok(out)
}

pub(crate) const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub(crate) const LOWER_HEX: &[u8] = b"0123456789abcdef";

use ims_core::s3name::{KeyProblem, MAX_KEY_LEN};

/// Longest file name most Linux file systems accept (keys become file paths here).
const MAX_SEGMENT_LEN: usize = 255;

/// Refuses every key that could leave its bucket or does not map onto a file path
/// ([`ims_core::s3name::check_key`], with segments of at most 255 bytes), as S3 errors.
pub(crate) fn check_key(key: &str) -> S3Result<()> {
    ims_core::s3name::check_key(key, MAX_SEGMENT_LEN).map_err(|problem| match problem {
        KeyProblem::TooLong => s3_error!(
            KeyTooLongError,
            "Your key is too long (the maximum is {MAX_KEY_LEN} bytes)"
        ),
        KeyProblem::Empty => s3_error!(InvalidArgument, "The object key is empty"),
        KeyProblem::NulOrBackslash => invalid_key(key, "it contains a NUL or a backslash"),
        KeyProblem::DotOrEmptySegment => invalid_key(
            key,
            "it has an empty, '.' or '..' path segment (leading, trailing or double '/' included)",
        ),
        KeyProblem::LongSegment => s3_error!(
            KeyTooLongError,
            "A path segment of the key is longer than {MAX_SEGMENT_LEN} bytes"
        ),
    })
}

fn invalid_key(key: &str, why: &str) -> S3Error {
    let shown: String = key.chars().take(128).flat_map(char::escape_debug).collect();
    s3_error!(InvalidArgument, "Invalid object key \"{shown}\": {why}")
}

/// The `encoding-type=url` form of a listing value, as S3 writes it: unreserved characters and `/`
/// stay, a space becomes `+`, everything else (UTF-8 bytes) is percent-encoded. Clients decode it
/// with `unquote_plus`.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_s3_errors() {
        for ok in ["a", "a/b", "a b+c%d", "ä/ö"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        let code = |k: &str| check_key(k).unwrap_err().code().as_str().to_string();
        assert_eq!(code(""), "InvalidArgument");
        assert_eq!(code("a/../b"), "InvalidArgument");
        assert_eq!(code("a\\b"), "InvalidArgument");
        assert_eq!(code(&"a".repeat(1025)), "KeyTooLongError");
        assert_eq!(code(&"a".repeat(256)), "KeyTooLongError");
        assert!(check_key(&format!("{}/{}", "a".repeat(255), "b".repeat(255))).is_ok());
    }

    #[test]
    fn encoding() {
        assert_eq!(
            url_encode("dir one/ä ö+x%.txt"),
            "dir+one/%C3%A4+%C3%B6%2Bx%25.txt"
        );
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abFF").unwrap(), vec![0, 0xab, 0xff]);
        assert!(unhex("0").is_none() && unhex("zz").is_none());
    }

    #[test]
    fn random() {
        let a = random_string(ALNUM, 40).unwrap();
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| ALNUM.contains(&c)));
        assert_ne!(a, random_string(ALNUM, 40).unwrap());
    }
}
