//! OpenSSH public keys, as a public-key record must hold one: exactly one `TYPE BASE64 [COMMENT]`
//! line whose base64 blob decodes to a key of that type (RFC 4253 §6.6, RFC 5656, OpenSSH's
//! `PROTOCOL.u2f` and `PROTOCOL.certkeys`). Anything else — a private key sent by mistake, garbage,
//! several keys — is refused before it is stored, served or handed to a job's sshd.

use base64::Engine;

/// Why a text is not one OpenSSH public key. The messages never repeat the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "this is a private key, not a public key: send the public key (the .pub file) and treat this private key as exposed if it was sent anywhere"
    )]
    PrivateKey,
    #[error("no key: expected one OpenSSH public key line (TYPE BASE64 [COMMENT])")]
    Empty,
    #[error("more than one line: expected exactly one OpenSSH public key")]
    SeveralLines,
    #[error("unknown key type: expected one of {}", KEY_TYPES.join(", "))]
    UnknownType,
    #[error("the key data is not valid base64")]
    NotBase64,
    #[error("the key data does not hold a key of the type the line names")]
    Malformed,
}

/// The key types OpenSSH's sshd accepts (and their certificates).
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

/// Whether a text is (or holds) a private key: PEM/OpenSSH armour, PuTTY's format.
pub fn is_private_key(text: &str) -> bool {
    text.contains("PRIVATE KEY-----")
        || text.contains("BEGIN SSH2 ENCRYPTED PRIVATE KEY")
        || text.trim_start().starts_with("PuTTY-User-Key-File-")
}

/// Checks that `text` is exactly one OpenSSH public key line (surrounding blank lines and a
/// trailing newline allowed, as a `.pub` file has them).
pub fn check_public_key(text: &str) -> Result<(), KeyError> {
    if is_private_key(text) {
        return Err(KeyError::PrivateKey);
    }
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines.next().ok_or(KeyError::Empty)?;
    if lines.next().is_some() {
        return Err(KeyError::SeveralLines);
    }
    let mut fields = line.split_ascii_whitespace();
    let kind = fields.next().ok_or(KeyError::Empty)?;
    // A certificate names its key type with `-cert-v01@openssh.com` in place of the type's own
    // `@openssh.com` (security keys) or after it.
    let known = match kind.strip_suffix(CERT_SUFFIX) {
        Some(b) if b.starts_with("sk-") => KEY_TYPES.contains(&format!("{b}@openssh.com").as_str()),
        Some(b) => KEY_TYPES.contains(&b),
        None => KEY_TYPES.contains(&kind),
    };
    if !known {
        return Err(KeyError::UnknownType);
    }
    let blob = fields.next().ok_or(KeyError::Malformed)?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| KeyError::NotBase64)?;
    let mut r = Reader(&data);
    if r.string()? != kind.as_bytes() {
        return Err(KeyError::Malformed);
    }
    if kind.ends_with(CERT_SUFFIX) {
        // A certificate: a nonce, then the key's fields and the signed part; its type was checked.
        r.string()?;
        return Ok(());
    }
    match kind {
        "ssh-ed25519" => r.exact(32)?,
        "sk-ssh-ed25519@openssh.com" => {
            r.exact(32)?;
            r.string()?; // application
        }
        "ssh-rsa" => {
            r.nonempty()?; // e
            r.nonempty()?; // n
        }
        "ssh-dss" => {
            for _ in 0..4 {
                r.nonempty()?; // p, q, g, y
            }
        }
        _ => {
            // ecdsa-sha2-<curve>[@…]: the curve name again, then the point.
            let curve = kind
                .trim_end_matches("@openssh.com")
                .rsplit('-')
                .next()
                .unwrap_or_default();
            if r.string()? != curve.as_bytes() {
                return Err(KeyError::Malformed);
            }
            r.nonempty()?;
            if kind.starts_with("sk-") {
                r.string()?; // application
            }
        }
    }
    if r.0.is_empty() {
        Ok(())
    } else {
        Err(KeyError::Malformed)
    }
}

/// SSH wire-format reader (`uint32` length-prefixed strings).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Result<&'a [u8], KeyError> {
        let (len, rest) = self.0.split_at_checked(4).ok_or(KeyError::Malformed)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (s, rest) = rest.split_at_checked(len).ok_or(KeyError::Malformed)?;
        self.0 = rest;
        Ok(s)
    }

    fn nonempty(&mut self) -> Result<(), KeyError> {
        if self.string()?.is_empty() {
            Err(KeyError::Malformed)
        } else {
            Ok(())
        }
    }

    fn exact(&mut self, len: usize) -> Result<(), KeyError> {
        if self.string()?.len() == len {
            Ok(())
        } else {
            Err(KeyError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMHcrBAKqXIvSdnVXEGDk43qhGflqc1mzQUR37MsZKx5 test@ims";

    #[test]
    fn one_public_key_line() {
        assert_eq!(check_public_key(ED25519), Ok(()));
        assert_eq!(check_public_key(&format!("{ED25519}\n")), Ok(()));
        assert_eq!(check_public_key(&format!("\n  {ED25519}  \n\n")), Ok(()));
        let no_comment = ED25519.rsplit_once(' ').unwrap().0;
        assert_eq!(check_public_key(no_comment), Ok(()));
        assert_eq!(
            check_public_key(&format!("{ED25519} with spaces in the comment")),
            Ok(())
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        assert_eq!(check_public_key(private), Err(KeyError::PrivateKey));
        assert_eq!(
            check_public_key(
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"
            ),
            Err(KeyError::PrivateKey)
        );
        assert_eq!(
            check_public_key("PuTTY-User-Key-File-3: ssh-ed25519\n"),
            Err(KeyError::PrivateKey)
        );
        assert_eq!(check_public_key(" \n "), Err(KeyError::Empty));
        assert_eq!(
            check_public_key(&format!("{ED25519}\n{ED25519}\n")),
            Err(KeyError::SeveralLines)
        );
        assert_eq!(check_public_key("x"), Err(KeyError::UnknownType));
        assert_eq!(check_public_key("ssh-ed25519"), Err(KeyError::Malformed));
        assert_eq!(
            check_public_key("ssh-ed25519 AAAA"),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            check_public_key("ssh-ed25519 !!!"),
            Err(KeyError::NotBase64)
        );
        // The blob of an ed25519 key under another type name.
        let other = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert_eq!(check_public_key(&other), Err(KeyError::Malformed));
        // Cut short by one byte.
        let blob = ED25519.split(' ').nth(1).unwrap();
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .unwrap();
        data.pop();
        let cut = format!(
            "ssh-ed25519 {}",
            base64::engine::general_purpose::STANDARD.encode(&data)
        );
        assert_eq!(check_public_key(&cut), Err(KeyError::Malformed));
        // Options in front (an authorized_keys line) are not a public key file.
        assert_eq!(
            check_public_key(&format!("no-pty {ED25519}")),
            Err(KeyError::UnknownType)
        );
    }

    #[test]
    fn messages_do_not_repeat_the_input() {
        for e in [
            KeyError::PrivateKey,
            KeyError::Malformed,
            KeyError::UnknownType,
        ] {
            assert!(!e.to_string().contains("AAAA"), "{e}");
        }
    }
}
