//! Credentials: the long-lived key pair (a 0600 JSON file) and the temporary STS credentials IMS
//! issues (in memory), plus the s3s hooks that enforce them.

use crate::policy::{Access, Policy, op_access};
use crate::util::{ALNUM, UPPER_ALNUM, random_string};
use chrono::{DateTime, Utc};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{CopyObjectInput, CopySource, UploadPartCopyInput};
use s3s::{S3Request, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// An access key, its secret and, for temporary credentials, the session token and expiry.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    pub expires: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires", &self.expires)
            .finish()
    }
}

/// The file format of the long-lived pair.
#[derive(Serialize, Deserialize)]
struct RootFile {
    access_key_id: String,
    secret_access_key: String,
}

struct Temporary {
    secret_key: String,
    session_token: String,
    expires: DateTime<Utc>,
    /// What the credentials may touch; `None`: everything.
    policy: Option<Arc<Policy>>,
}

/// Issued temporary credentials are forgotten this long after they expire (until then a request
/// with them gets `ExpiredToken` rather than `InvalidAccessKeyId`).
const FORGET_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The most temporary credentials kept at once; past it the ones that expire first are forgotten
/// early (a caller issuing credentials in a loop cannot grow the server without bound).
const MAX_TEMPORARY: usize = 200_000;

/// Issued temporary credentials by access key, with an index by expiry so that forgetting the
/// old ones costs O(log n) per issue instead of a scan of all of them.
#[derive(Default)]
struct Temporaries {
    by_key: HashMap<String, Temporary>,
    by_expiry: BinaryHeap<Reverse<(DateTime<Utc>, String)>>,
}

impl Temporaries {
    /// Forgets what expired more than [`FORGET_AFTER`] before `now`, and the earliest to expire
    /// while more than `keep` remain.
    fn forget_old(&mut self, now: DateTime<Utc>, keep: usize) {
        while let Some(Reverse((expires, _))) = self.by_expiry.peek() {
            if *expires + FORGET_AFTER > now && self.by_key.len() <= keep {
                break;
            }
            if let Some(Reverse((_, key))) = self.by_expiry.pop() {
                self.by_key.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: String, t: Temporary) {
        self.by_expiry.push(Reverse((t.expires, key.clone())));
        self.by_key.insert(key, t);
    }
}

/// Long-lived key pair generated on first start and stored in a file with mode 0600 (JSON), plus
/// temporary STS credentials issued in memory.
pub struct CredentialStore {
    root: Credentials,
    temporary: Mutex<Temporaries>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// What an access key is.
pub(crate) enum KeyKind {
    Root,
    Temporary {
        session_token: String,
        expired: bool,
        policy: Option<Arc<Policy>>,
    },
    Unknown,
}

impl CredentialStore {
    /// Loads the key pair from `path`, or generates one and writes it there (mode 0600, parent
    /// directories created). A file with group or other permissions is tightened to 0600.
    pub fn open(path: &Path) -> io::Result<CredentialStore> {
        let root = match fs::read(path) {
            Ok(data) => Self::parse(path, &data)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::generate(path)?,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        Ok(CredentialStore {
            root,
            temporary: Mutex::new(Temporaries::default()),
        })
    }

    /// Reads the key pair from `path` without generating one: for showing it to an
    /// administrator (`ims s3-credentials`).
    pub fn read_root(path: &Path) -> io::Result<Credentials> {
        let data = fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Self::parse(path, &data)
    }

    fn parse(path: &Path, data: &[u8]) -> io::Result<Credentials> {
        let f: RootFile = serde_json::from_slice(data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a credentials file: {e}", path.display()),
            )
        })?;
        let valid =
            |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_graphic());
        if !valid(&f.access_key_id) || !valid(&f.secret_access_key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: empty or malformed access key or secret",
                    path.display()
                ),
            ));
        }
        let mode = fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "S3 credentials file was readable by others; setting mode 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        }
        Ok(Credentials {
            access_key: f.access_key_id,
            secret_key: f.secret_access_key,
            session_token: None,
            expires: None,
        })
    }

    fn generate(path: &Path) -> io::Result<Credentials> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let file = RootFile {
            access_key_id: format!("IMS{}", random_string(UPPER_ALNUM, 17)?),
            secret_access_key: random_string(ALNUM, 40)?,
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        json.push(b'\n');
        // Written under a temporary name and linked into place: the file appears complete or not
        // at all, and a concurrent first start keeps whichever pair was linked first.
        let tmp = dir.join(format!(".{}.tmp", random_string(ALNUM, 12)?));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                tracing::info!(path = %path.display(), "generated S3 credentials");
                Ok(Credentials {
                    access_key: file.access_key_id,
                    secret_key: file.secret_access_key,
                    session_token: None,
                    expires: None,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let data = fs::read(path)?;
                Self::parse(path, &data)
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    /// The long-lived pair (no token).
    pub fn root(&self) -> Credentials {
        self.root.clone()
    }

    /// New temporary credentials (key, secret and session token), valid for `ttl`, with full
    /// access.
    pub fn issue(&self, ttl: Duration) -> Credentials {
        self.issue_with(ttl, None)
    }

    /// New temporary credentials valid for `ttl` that may do only what `policy` grants (full
    /// access when `None`).
    pub fn issue_with(&self, ttl: Duration, policy: Option<Policy>) -> Credentials {
        let now = Utc::now();
        let ttl = chrono::TimeDelta::from_std(ttl).unwrap_or(chrono::TimeDelta::days(365));
        let expires = now
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        // The OS random source does not fail on Linux once booted; fall back to a panic-free
        // but still unique value rather than unwrap.
        let rnd = |alphabet: &[u8], n: usize| {
            random_string(alphabet, n).unwrap_or_else(|e| {
                tracing::error!(error = %e, "random source failed");
                format!("{:x}", now.timestamp_nanos_opt().unwrap_or_default())
            })
        };
        let creds = Credentials {
            access_key: format!("IMT{}", rnd(UPPER_ALNUM, 17)),
            secret_key: rnd(ALNUM, 40),
            session_token: Some(rnd(ALNUM, 96)),
            expires: Some(expires),
        };
        let mut map = self.temporary.lock().unwrap_or_else(|p| p.into_inner());
        map.forget_old(now, MAX_TEMPORARY - 1);
        map.insert(
            creds.access_key.clone(),
            Temporary {
                secret_key: creds.secret_key.clone(),
                session_token: creds.session_token.clone().unwrap_or_default(),
                expires,
                policy: policy.map(Arc::new),
            },
        );
        creds
    }

    /// Forgets every temporary credential issued with a policy for `owner` (its job ended or
    /// was deleted): requests with them fail from now on. Returns how many were revoked.
    pub fn revoke_owner(&self, owner: &str) -> usize {
        let mut map = self.temporary.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.by_key.len();
        map.by_key
            .retain(|_, t| t.policy.as_ref().is_none_or(|p| p.owner() != owner));
        before - map.by_key.len()
    }

    /// The policy of a temporary key (`None`: full access, or not a temporary key).
    fn policy_of(&self, access_key: &str) -> Option<Arc<Policy>> {
        let map = self.temporary.lock().unwrap_or_else(|p| p.into_inner());
        map.by_key.get(access_key).and_then(|t| t.policy.clone())
    }

    fn secret(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.root.access_key {
            return Ok(SecretKey::from(self.root.secret_key.as_str()));
        }
        let map = self.temporary.lock().unwrap_or_else(|p| p.into_inner());
        match map.by_key.get(access_key) {
            Some(t) if t.expires <= Utc::now() => {
                Err(s3_error!(ExpiredToken, "The provided token has expired."))
            }
            Some(t) => Ok(SecretKey::from(t.secret_key.as_str())),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }

    pub(crate) fn kind(&self, access_key: &str) -> KeyKind {
        if access_key == self.root.access_key {
            return KeyKind::Root;
        }
        let map = self.temporary.lock().unwrap_or_else(|p| p.into_inner());
        match map.by_key.get(access_key) {
            Some(t) => KeyKind::Temporary {
                session_token: t.session_token.clone(),
                expired: t.expires <= Utc::now(),
                policy: t.policy.clone(),
            },
            None => KeyKind::Unknown,
        }
    }
}

/// s3s authentication: the secret of the root key or of an issued, unexpired temporary key.
pub(crate) struct KeyAuth(pub(crate) Arc<CredentialStore>);

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0.secret(access_key)
    }
}

/// s3s access check, run after the signature (SigV4, or SigV2 which boto3 still uses for presigned
/// URLs) was verified: anonymous requests are refused, and temporary keys must present exactly the
/// session token they were issued with.
pub(crate) struct TokenAccess(pub(crate) Arc<CredentialStore>);

#[async_trait::async_trait]
impl S3Access for TokenAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        match self.0.kind(&creds.access_key) {
            KeyKind::Root => Ok(()),
            KeyKind::Unknown => Err(s3_error!(InvalidAccessKeyId)),
            KeyKind::Temporary { expired: true, .. } => {
                Err(s3_error!(ExpiredToken, "The provided token has expired."))
            }
            KeyKind::Temporary {
                session_token,
                policy,
                ..
            } => {
                let Some(given) = session_token_of(cx.headers(), cx.uri()) else {
                    return Err(s3_error!(
                        AccessDenied,
                        "Temporary credentials require the session token (x-amz-security-token)"
                    ));
                };
                if !bool::from(given.as_bytes().ct_eq(session_token.as_bytes())) {
                    return Err(s3_error!(
                        InvalidToken,
                        "The provided token is malformed or otherwise invalid."
                    ));
                }
                match policy {
                    None => Ok(()),
                    Some(p) => {
                        let allowed = match (cx.s3_path(), op_access(cx.s3_op().name())) {
                            (s3s::path::S3Path::Object { bucket, key }, Some(a)) => {
                                p.allows(a, bucket, key)
                            }
                            _ => false,
                        };
                        if allowed { Ok(()) } else { Err(denied()) }
                    }
                }
            }
        }
    }

    // The source of a copy must be readable by the same credentials.
    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        self.may_read_source(req.credentials.as_ref(), &req.input.copy_source)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        self.may_read_source(req.credentials.as_ref(), &req.input.copy_source)
    }
}

fn denied() -> s3s::S3Error {
    s3_error!(
        AccessDenied,
        "These credentials do not allow this operation on this object."
    )
}

impl TokenAccess {
    fn may_read_source(
        &self,
        creds: Option<&s3s::auth::Credentials>,
        source: &CopySource,
    ) -> S3Result<()> {
        let Some(policy) = creds.and_then(|c| self.0.policy_of(&c.access_key)) else {
            return Ok(());
        };
        match source {
            CopySource::Bucket { bucket, key, .. } if policy.allows(Access::Read, bucket, key) => {
                Ok(())
            }
            _ => Err(denied()),
        }
    }
}

/// The session token from the `x-amz-security-token` header or, for presigned URLs, the
/// `X-Amz-Security-Token` query parameter (`x-amz-security-token` in SigV2 presigned URLs).
fn session_token_of(headers: &http::HeaderMap, uri: &http::Uri) -> Option<String> {
    if let Some(v) = headers.get("x-amz-security-token") {
        return v.to_str().ok().map(str::to_owned);
    }
    query_param(uri, "X-Amz-Security-Token")
}

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8().ok()?;
        k.eq_ignore_ascii_case(name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_0600_and_reloads() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/s3-credentials.json");
        let a = CredentialStore::open(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = CredentialStore::open(&path).unwrap();
        assert_eq!(a.root().access_key, b.root().access_key);
        assert_eq!(a.root().secret_key, b.root().secret_key);
        assert!(a.root().session_token.is_none() && a.root().expires.is_none());
        assert_eq!(a.root().access_key.len(), 20);
        assert_eq!(a.root().secret_key.len(), 40);
        // Only the file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        // Loose permissions are tightened.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        CredentialStore::open(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn refuses_corrupt_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.json");
        fs::write(&path, b"{not json").unwrap();
        let e = CredentialStore::open(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        fs::write(&path, br#"{"access_key_id":"","secret_access_key":"x"}"#).unwrap();
        assert!(CredentialStore::open(&path).is_err());
    }

    #[test]
    fn old_credentials_are_forgotten_by_expiry() {
        let now = Utc::now();
        let mut t = Temporaries::default();
        let put = |t: &mut Temporaries, key: &str, expires: DateTime<Utc>| {
            t.insert(
                key.to_string(),
                Temporary {
                    secret_key: String::new(),
                    session_token: String::new(),
                    expires,
                    policy: None,
                },
            )
        };
        put(
            &mut t,
            "long-gone",
            now - FORGET_AFTER - chrono::TimeDelta::seconds(1),
        );
        put(&mut t, "expired", now - chrono::TimeDelta::seconds(1));
        put(&mut t, "soon", now + chrono::TimeDelta::seconds(10));
        put(&mut t, "later", now + chrono::TimeDelta::seconds(20));
        t.forget_old(now, 100);
        let mut keys: Vec<&str> = t.by_key.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["expired", "later", "soon"],
            "only what expired an hour ago"
        );
        // Over the bound: those that expire first go first.
        t.forget_old(now, 1);
        assert_eq!(t.by_key.keys().collect::<Vec<_>>(), ["later"]);
        assert_eq!(t.by_expiry.len(), 1);
    }

    #[test]
    fn issues_and_expires() {
        let d = tempfile::tempdir().unwrap();
        let s = CredentialStore::open(&d.path().join("c.json")).unwrap();
        let t = s.issue(Duration::from_secs(60));
        assert!(t.session_token.as_ref().is_some_and(|x| x.len() == 96));
        assert!(s.secret(&t.access_key).is_ok());
        assert!(matches!(
            s.kind(&t.access_key),
            KeyKind::Temporary { expired: false, .. }
        ));
        let old = s.issue(Duration::ZERO);
        let e = s.secret(&old.access_key).unwrap_err();
        assert_eq!(e.code(), &s3s::S3ErrorCode::ExpiredToken);
        let e = s.secret("NOPE").unwrap_err();
        assert_eq!(e.code(), &s3s::S3ErrorCode::InvalidAccessKeyId);
        assert!(s.secret(&s.root().access_key).is_ok());
    }

    #[test]
    fn revoking_an_owner_voids_its_credentials_only() {
        let d = tempfile::tempdir().unwrap();
        let s = CredentialStore::open(&d.path().join("c.json")).unwrap();
        let hour = Duration::from_secs(3600);
        let a1 = s.issue_with(hour, Some(Policy::new("job-a").write_prefix("b", "x")));
        let a2 = s.issue_with(hour, Some(Policy::new("job-a")));
        let b = s.issue_with(hour, Some(Policy::new("job-b")));
        let admin = s.issue(hour);
        assert!(s.policy_of(&a1.access_key).is_some());
        assert!(s.policy_of(&admin.access_key).is_none());
        assert_eq!(s.revoke_owner("job-a"), 2);
        for gone in [&a1, &a2] {
            assert_eq!(
                s.secret(&gone.access_key).unwrap_err().code(),
                &s3s::S3ErrorCode::InvalidAccessKeyId
            );
        }
        assert!(s.secret(&b.access_key).is_ok());
        assert!(s.secret(&admin.access_key).is_ok());
        assert_eq!(s.revoke_owner("job-a"), 0);
    }

    #[test]
    fn token_from_query() {
        let uri: http::Uri = "/b/k?X-Amz-Algorithm=x&X-Amz-Security-Token=ab%2Bc&x=1"
            .parse()
            .unwrap();
        assert_eq!(
            session_token_of(&http::HeaderMap::new(), &uri).as_deref(),
            Some("ab+c")
        );
        let mut h = http::HeaderMap::new();
        h.insert("x-amz-security-token", "hdr".parse().unwrap());
        assert_eq!(session_token_of(&h, &uri).as_deref(), Some("hdr"));
        let uri: http::Uri = "/b/k?AWSAccessKeyId=x&Signature=y&x-amz-security-token=v2"
            .parse()
            .unwrap();
        assert_eq!(
            session_token_of(&http::HeaderMap::new(), &uri).as_deref(),
            Some("v2")
        );
    }
}
