//! What a set of temporary credentials may touch: a [`Policy`] is a list of grants on objects, an
//! exact key or every key under a prefix, for reading or for writing. Credentials issued with a
//! policy ([`crate::CredentialStore::issue_with`]) are checked against it on every request; what no
//! grant covers is refused (`AccessDenied`). Credentials without one (the long-lived pair, the
//! administrator's STS keys) keep full access.
//!
//! * **Read** covers `GetObject` and `HeadObject`.
//! * **Write** covers `PutObject`, the multipart operations on the key (`CreateMultipartUpload`,
//!   `UploadPart`, `CompleteMultipartUpload`, `AbortMultipartUpload`, `ListParts`),
//!   `DeleteObject`, and the destination of `CopyObject`/`UploadPartCopy`, whose source must be
//!   readable too; a write grant implies read on the same objects.
//! * Nothing else is granted: no `ListBuckets`, no listing of a bucket, no batch `DeleteObjects`,
//!   no bucket operation, tagging, ACL or any other operation.
//!
//! Keys are matched as the endpoint decodes them (percent-escapes are undone before the check),
//! a prefix grant ends in `/` and matches only keys strictly below it (`a/b/` covers `a/b/c`, not
//! `a/bc` nor `a/b/` itself), and a key with an empty, `.` or `..` segment, a NUL or a backslash
//! matches no grant at all (the backend refuses such keys anyway).

/// Reading or writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    access: Access,
    bucket: String,
    /// An exact key, or a prefix ending in `/`.
    key: String,
    prefix: bool,
}

/// Grants on objects; everything else is refused. Built by its owner's id (who the credentials
/// were issued for, e.g. a job), for revoking them together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    owner: String,
    grants: Vec<Grant>,
}

/// A key that addresses one file below its bucket.
fn plain_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains(['\0', '\\'])
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

impl Policy {
    /// An empty policy (which allows nothing) for credentials issued to `owner`.
    pub fn new(owner: &str) -> Policy {
        Policy {
            owner: owner.to_string(),
            grants: vec![],
        }
    }

    /// Who the credentials were issued for.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Allows reading the object `bucket/key` (that key only). A key that could never be
    /// addressed is ignored.
    pub fn read_object(mut self, bucket: &str, key: &str) -> Policy {
        if plain_key(key) && !bucket.is_empty() {
            self.grants.push(Grant {
                access: Access::Read,
                bucket: bucket.to_string(),
                key: key.to_string(),
                prefix: false,
            });
        }
        self
    }

    /// Allows writing (and reading) every object strictly below `prefix` in `bucket`. `prefix`
    /// is one or more plain segments; a trailing `/` is added when missing. An empty or unusable
    /// prefix is ignored (it would grant the whole bucket).
    pub fn write_prefix(mut self, bucket: &str, prefix: &str) -> Policy {
        let p = prefix.trim_end_matches('/');
        if plain_key(p) && !bucket.is_empty() {
            self.grants.push(Grant {
                access: Access::Write,
                bucket: bucket.to_string(),
                key: format!("{p}/"),
                prefix: true,
            });
        }
        self
    }

    /// Whether the policy allows `access` to `bucket/key`.
    pub fn allows(&self, access: Access, bucket: &str, key: &str) -> bool {
        if !plain_key(key) {
            return false;
        }
        self.grants.iter().any(|g| {
            let covers = if g.prefix {
                key.len() > g.key.len() && key.starts_with(&g.key)
            } else {
                key == g.key
            };
            g.bucket == bucket && covers && (g.access == Access::Write || access == Access::Read)
        })
    }
}

/// The access an object operation needs (by its S3 name); `None`: not granted to a policy at all.
pub(crate) fn op_access(op: &str) -> Option<Access> {
    match op {
        "GetObject" | "HeadObject" => Some(Access::Read),
        "PutObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "ListParts"
        | "DeleteObject"
        | "CopyObject"
        | "UploadPartCopy" => Some(Access::Write),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::{Read, Write};

    fn job() -> Policy {
        Policy::new("job-a")
            .read_object("boot-images", "src/manifest.json")
            .read_object("boot-images", "src/rootfs")
            .write_prefix("boot-images", "abc")
    }

    #[test]
    fn grants_what_is_listed_and_nothing_else() {
        let p = job();
        assert_eq!(p.owner(), "job-a");
        assert!(p.allows(Read, "boot-images", "src/manifest.json"));
        assert!(p.allows(Read, "boot-images", "src/rootfs"));
        assert!(!p.allows(Write, "boot-images", "src/rootfs"), "read only");
        assert!(!p.allows(Read, "boot-images", "src/kernel"), "not listed");
        assert!(!p.allows(Read, "ims", "src/rootfs"), "other bucket");
        assert!(p.allows(Write, "boot-images", "abc/rootfs"));
        assert!(
            p.allows(Read, "boot-images", "abc/rootfs"),
            "write implies read"
        );
        assert!(p.allows(Write, "boot-images", "abc/d/e"));
        assert!(!p.allows(Write, "ims", "abc/rootfs"), "other bucket");
        // Prefix tricks.
        for k in [
            "abc",
            "abc/",
            "abcd/rootfs",
            "abcd",
            "ab",
            "xabc/rootfs",
            "deleted/abc/rootfs",
            "jobs/other/log/0000000000",
        ] {
            assert!(!p.allows(Write, "boot-images", k), "{k}");
            assert!(!p.allows(Read, "boot-images", k), "{k}");
        }
        // Keys that leave the prefix or are not plain.
        for k in [
            "abc/../other/rootfs",
            "abc/./rootfs",
            "abc//rootfs",
            "abc/x\\..\\..\\y",
            "abc/x\0",
            "/abc/rootfs",
            "src/manifest.json/",
            "src/../src/manifest.json",
        ] {
            assert!(!p.allows(Write, "boot-images", k), "{k}");
            assert!(!p.allows(Read, "boot-images", k), "{k}");
        }
        // Percent-escapes are not decoded here: the endpoint decodes before checking, so an
        // escaped name is a different (literal) key.
        assert!(!p.allows(Read, "boot-images", "src%2Fmanifest.json"));
    }

    #[test]
    fn unusable_grants_grant_nothing() {
        let p = Policy::new("x")
            .write_prefix("b", "")
            .write_prefix("b", "/")
            .write_prefix("b", "..")
            .write_prefix("b", "a/../..")
            .read_object("b", "")
            .read_object("", "k")
            .write_prefix("", "p");
        for k in ["a", "a/b", "k", "p/x", "../x"] {
            assert!(!p.allows(Read, "b", k), "{k}");
            assert!(!p.allows(Write, "b", k), "{k}");
            assert!(!p.allows(Read, "", k), "{k}");
        }
        // A trailing slash is optional on a prefix.
        let p = Policy::new("x").write_prefix("b", "id/");
        assert!(p.allows(Write, "b", "id/k") && !p.allows(Write, "b", "id"));
    }

    #[test]
    fn operations_map_to_access() {
        assert_eq!(op_access("GetObject"), Some(Read));
        assert_eq!(op_access("HeadObject"), Some(Read));
        for w in [
            "PutObject",
            "CreateMultipartUpload",
            "UploadPart",
            "CompleteMultipartUpload",
            "AbortMultipartUpload",
            "DeleteObject",
            "CopyObject",
            "UploadPartCopy",
        ] {
            assert_eq!(op_access(w), Some(Write), "{w}");
        }
        for none in [
            "ListBuckets",
            "ListObjects",
            "ListObjectsV2",
            "DeleteObjects",
            "ListMultipartUploads",
            "CreateBucket",
            "DeleteBucket",
            "PutObjectTagging",
            "PutObjectAcl",
            "GetObjectAttributes",
            "",
        ] {
            assert_eq!(op_access(none), None, "{none}");
        }
    }
}
