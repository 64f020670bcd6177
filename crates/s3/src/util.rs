//! Small helpers: hex, random strings, key and bucket validation, URL encoding for listings.

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

/// S3 bucket naming rules: 3–63 characters of lower-case letters, digits, `.` and `-`, starting
/// and ending with a letter or digit, no `..`, not shaped like an IPv4 address.
pub(crate) fn valid_bucket(b: &str) -> bool {
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

/// Longest key S3 accepts.
pub(crate) const MAX_KEY_LEN: usize = 1024;
/// Longest file name most Linux file systems accept.
const MAX_SEGMENT_LEN: usize = 255;

/// Refuses every key that could leave its bucket or does not map onto a file path: empty, `.` or
/// `..` segments (which also covers a leading `/` and a trailing `/`), NUL, backslashes, keys over
/// 1024 bytes and segments over 255 bytes.
pub(crate) fn check_key(key: &str) -> S3Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(s3_error!(
            KeyTooLongError,
            "Your key is too long (the maximum is 1024 bytes)"
        ));
    }
    if key.is_empty() {
        return Err(s3_error!(InvalidArgument, "The object key is empty"));
    }
    if key.contains('\0') || key.contains('\\') {
        return Err(invalid_key(key, "it contains a NUL or a backslash"));
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(invalid_key(
                key,
                "it has an empty, '.' or '..' path segment (leading, trailing or double '/' included)",
            ));
        }
        if seg.len() > MAX_SEGMENT_LEN {
            return Err(s3_error!(
                KeyTooLongError,
                "A path segment of the key is longer than {MAX_SEGMENT_LEN} bytes"
            ));
        }
    }
    Ok(())
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
    fn keys() {
        for ok in ["a", "a/b", "a b+c%d", "ä/ö", "x.y", "..a", "a..", "a/.b"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "..", "/a", "a/", "a//b", "a/./b", "a/../b", "../x", "a/..", "a\\b", "a\0b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"a".repeat(1025)).is_err());
        assert!(check_key(&"a".repeat(256)).is_err());
        assert!(check_key(&format!("{}/{}", "a".repeat(255), "b".repeat(255))).is_ok());
    }

    #[test]
    fn buckets() {
        for ok in ["ims", "boot-images", "a.b-c", "abc123"] {
            assert!(valid_bucket(ok), "{ok}");
        }
        for bad in ["ab", "IMS", "-ab", "ab-", "a..b", "a_b", "192.168.1.1", ""] {
            assert!(!valid_bucket(bad), "{bad}");
        }
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
