//! Who is calling: an optional administrator token, and per-job agent tokens.
//!
//! * **Job tokens** are what a job agent holds (the original's job pods hold an admin OAuth client
//!   secret instead, §7.3). A token names its job and is an HMAC-SHA256 of the job id under the
//!   server's job-token key, so any replica that has the key can check it without a lookup, and it
//!   can act on its own job only: read records, `GET`/`PATCH` its job and the job's own
//!   sub-resources (heartbeat, log), register the resulting image (`POST /images`) and get S3
//!   credentials. Anything else is 403.
//! * **The administrator token** (`IMS_API_TOKEN`), when configured, is required for every other
//!   request (401 without it). When it is not configured the API is open, as the original's is
//!   behind the CSM API gateway; job tokens are restricted in either case.
//!
//! Health, version and the OpenAPI document are always open.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use ims_core::Problem;
use sha2::Sha256;
use std::io::Write;
use std::path::Path;

use crate::AppState;
use crate::error::problem_response;

const JOB_PREFIX: &str = "ims-job.";

/// Issues and checks job tokens.
#[derive(Clone)]
pub struct JobTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for JobTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobTokens(<key>)")
    }
}

impl JobTokens {
    pub fn new(key: Vec<u8>) -> JobTokens {
        JobTokens { key }
    }

    /// The key in `path` (hex), created with 32 random bytes and mode 0600 when missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<JobTokens> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = decode_hex(text.trim())
                    .filter(|k| k.len() >= 16)
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "{} does not hold a hex key of at least 16 bytes",
                            path.display()
                        ))
                    })?;
                Ok(JobTokens { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(hex(&key).as_bytes())?;
                f.sync_all()?;
                Ok(JobTokens { key })
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, job_id: &str) -> Vec<u8> {
        // HMAC takes keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        m.update(b"ims job token\0");
        m.update(job_id.as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// The token of one job.
    pub fn issue(&self, job_id: &str) -> String {
        format!("{JOB_PREFIX}{job_id}.{}", hex(&self.mac(job_id)))
    }

    /// The job a token belongs to, if it is one of ours.
    pub fn verify(&self, token: &str) -> Option<String> {
        let rest = token.strip_prefix(JOB_PREFIX)?;
        let (id, mac) = rest.rsplit_once('.')?;
        let given = decode_hex(mac)?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        m.update(b"ims job token\0");
        m.update(id.as_bytes());
        // Constant-time comparison.
        m.verify_slice(&given).ok()?;
        Some(id.to_string())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential (allowed only when no administrator token is configured).
    Anonymous,
    Admin,
    /// A job agent, for this job id.
    Job(String),
}

/// Whether a job's agent may send this request. `path` is the request path.
fn job_may(job: &str, method: &Method, path: &str) -> bool {
    let p = path.strip_prefix("/apis/ims").unwrap_or(path);
    let p = p
        .strip_prefix("/v3")
        .or_else(|| p.strip_prefix("/v2"))
        .unwrap_or(p);
    let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
    if path == "/apis/sts/token" {
        return *method == Method::PUT || *method == Method::POST;
    }
    match (method, segs.as_slice()) {
        (&Method::GET, ["images" | "recipes" | "public-keys", ..]) => true,
        (&Method::POST, ["images"]) => true,
        (&Method::GET | &Method::PATCH, ["jobs", id]) => *id == job,
        (_, ["jobs", id, _action]) => *id == job,
        _ => false,
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn always_open(path: &str) -> bool {
    let p = path.strip_prefix("/apis/ims").unwrap_or(path);
    matches!(
        p,
        "/healthz/ready" | "/healthz/live" | "/version" | "/openapi.json"
    )
}

/// Middleware: identifies the caller, refuses what it may not do, and passes [`Caller`] on as a
/// request extension.
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let caller = match bearer(&req) {
        Some(t) if st.admin_token.as_deref().is_some_and(|a| constant_eq(a, t)) => Caller::Admin,
        Some(t) => match st.job_tokens.verify(t) {
            Some(job) => Caller::Job(job),
            // A forged or foreign job token is refused, never downgraded to anonymous.
            None if t.starts_with(JOB_PREFIX) && !always_open(&path) => {
                return problem_response(Problem::new(401, "The job token is not valid."));
            }
            // Any other token (on an open API, the gateway's, e.g. the Keycloak token `cray`
            // always sends) identifies nobody here.
            None => Caller::Anonymous,
        },
        None => Caller::Anonymous,
    };
    if !always_open(&path) {
        match &caller {
            Caller::Anonymous if st.admin_token.is_some() => {
                return problem_response(Problem::new(
                    401,
                    "This server requires a bearer token (Authorization: Bearer …).",
                ));
            }
            Caller::Job(job) if !job_may(job, req.method(), &path) => {
                return problem_response(Problem::new(
                    403,
                    format!("A job token may only act on its own job ({job})."),
                ));
            }
            _ => {}
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Constant-time string comparison (for the administrator token).
fn constant_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_tokens_round_trip_and_refuse_forgeries() {
        let t = JobTokens::new(b"0123456789abcdef".to_vec());
        let id = "5b0a1d6e-3c9f-4f7e-9a41-0f2d8c3b7e11";
        let tok = t.issue(id);
        assert_eq!(t.verify(&tok).as_deref(), Some(id));
        let other = JobTokens::new(b"fedcba9876543210".to_vec());
        assert_eq!(other.verify(&tok), None);
        // Another job id with this job's MAC.
        let forged = tok.replace(id, "00000000-0000-4000-8000-000000000000");
        assert_eq!(t.verify(&forged), None);
        for bad in ["", "ims-job.", "ims-job.x", "ims-job.x.zz", "Bearer x"] {
            assert_eq!(t.verify(bad), None, "{bad}");
        }
    }

    #[test]
    fn job_permissions() {
        let j = "J";
        for (m, p, ok) in [
            (Method::GET, "/v3/images/x", true),
            (Method::GET, "/apis/ims/recipes/x", true),
            (Method::POST, "/v3/images", true),
            (Method::POST, "/apis/ims/images", true),
            (Method::PATCH, "/v3/jobs/J", true),
            (Method::GET, "/jobs/J", true),
            (Method::POST, "/v3/jobs/J/heartbeat", true),
            (Method::PUT, "/apis/sts/token", true),
            (Method::PATCH, "/v3/jobs/K", false),
            (Method::DELETE, "/v3/jobs/J", false),
            (Method::POST, "/v3/jobs/K/log", false),
            (Method::GET, "/v3/jobs", false),
            (Method::DELETE, "/v3/images/x", false),
            (Method::PATCH, "/v3/images/x", false),
            (Method::POST, "/v3/public-keys", false),
            (Method::POST, "/v3/jobs", false),
        ] {
            assert_eq!(job_may(j, &m, p), ok, "{m} {p}");
        }
    }
}
