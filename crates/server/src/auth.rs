//! Who is calling: an optional administrator token, and per-job agent tokens.
//!
//! * **Job tokens** are what a job agent holds (the original's job pods hold an admin OAuth client
//!   secret instead, §7.3): `ims-job.<job id>.<expiry>.<mac>`, the expiry in Unix seconds and the
//!   MAC an HMAC-SHA256 of both under the server's job-token key, so any replica that has the key
//!   can check it. A token is valid until its expiry ([`JOB_TOKEN_TTL`] after it was issued; the
//!   agent gets a fresh one with every heartbeat answer) and only while its job lives: the job
//!   record is read on every request (from the embedded store's memory, or one indexed read on
//!   PostgreSQL). Once the job is deleted the token is refused (401); once the job has ended
//!   (`success`/`error`) it may for [`JOB_TOKEN_GRACE`] only send the agent's last requests
//!   (its log, a heartbeat, read its job), then nothing.
//! * **What a live job may do**: read its own job, its source (the image of a customize job, the
//!   recipe of a create job), its public key and its new image; `GET`/`PATCH` its job and the
//!   job's own sub-resources (heartbeat, log); get S3 credentials (confined to the job, see
//!   [`crate::sts`]); register its one new image (`POST /images` with the id and the manifest the
//!   server chose for it, checked by the service). Anything else is 403.
//! * **The administrator token** (`IMS_API_TOKEN`), when configured, is required for every other
//!   request (401 without it). When it is not configured the API is open, as the original's is
//!   behind the CSM API gateway; job tokens are restricted in either case.
//!
//! Health, version and the OpenAPI document are always open.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use ims_core::Problem;
use sha2::Sha256;
use std::io::Write;
use std::path::Path;

use crate::AppState;
use crate::error::{ApiError, problem_response};
use ims_core::{Job, JobRun, Timestamp};

const JOB_PREFIX: &str = "ims-job.";
const MAC_CONTEXT: &[u8] = b"ims job token v2\0";

/// How long a job token is valid after it was issued. Longer than the agent's default orphan
/// timeout (1 h), so an agent that rides out a server outage still holds a valid token when the
/// server is back; the agent renews it with every heartbeat (every 5 s).
pub const JOB_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// How long after its job ended (`success`/`error`) a job token may still send the agent's last
/// requests (the rest of its log, a heartbeat, a read of its job).
pub const JOB_TOKEN_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// Why a job token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

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

    fn mac(&self, job_id: &str, expires: i64) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        m.update(MAC_CONTEXT);
        m.update(job_id.as_bytes());
        m.update(b"\0");
        m.update(expires.to_string().as_bytes());
        m
    }

    /// A token of one job, valid for [`JOB_TOKEN_TTL`] from now.
    pub fn issue(&self, job_id: &str) -> String {
        let ttl = i64::try_from(JOB_TOKEN_TTL.as_secs()).unwrap_or(i64::MAX);
        self.issue_until(job_id, unix_now().saturating_add(ttl))
    }

    /// A token of one job valid until `expires` (Unix seconds).
    pub fn issue_until(&self, job_id: &str, expires: i64) -> String {
        let mac = self.mac(job_id, expires).finalize().into_bytes();
        format!("{JOB_PREFIX}{job_id}.{expires}.{}", hex(&mac))
    }

    /// The job a token belongs to, if it is one of ours and has not expired.
    pub fn verify(&self, token: &str) -> Option<String> {
        self.check(token, unix_now()).ok()
    }

    /// The job a token belongs to, as of `now` (Unix seconds).
    pub fn check(&self, token: &str, now: i64) -> Result<String, TokenError> {
        let rest = token.strip_prefix(JOB_PREFIX).ok_or(TokenError::Invalid)?;
        let (head, mac) = rest.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let (id, expires) = head.rsplit_once('.').ok_or(TokenError::Invalid)?;
        if id.is_empty()
            || expires.is_empty()
            || expires.len() > 18
            || !expires.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(TokenError::Invalid);
        }
        let expires: i64 = expires.parse().map_err(|_| TokenError::Invalid)?;
        let given = decode_hex(mac).ok_or(TokenError::Invalid)?;
        // Constant-time comparison; the expiry is signed, so it is checked after the MAC.
        self.mac(id, expires)
            .verify_slice(&given)
            .map_err(|_| TokenError::Invalid)?;
        if expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(id.to_string())
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
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

/// Whether a job's agent may send a request.
#[derive(Debug, PartialEq, Eq)]
enum May {
    Yes,
    No,
    /// Only if the id is the job's new image.
    IfNewImage(String),
}

/// The request path inside the IMS tree, as segments (`/apis/ims`, `/v2`, `/v3` removed).
fn segments(path: &str) -> Vec<&str> {
    let p = path.strip_prefix("/apis/ims").unwrap_or(path);
    let p = p
        .strip_prefix("/v3")
        .or_else(|| p.strip_prefix("/v2"))
        .unwrap_or(p);
    p.trim_matches('/').split('/').collect()
}

/// What a live job's agent may do (`path` is the request path).
fn job_may(job: &Job, method: &Method, path: &str) -> May {
    if path == "/apis/sts/token" {
        return if *method == Method::PUT || *method == Method::POST {
            May::Yes
        } else {
            May::No
        };
    }
    let own = |id: &str| if id == job.id { May::Yes } else { May::No };
    let customize = job.job_type == ims_core::JobType::Customize;
    match (method, segments(path).as_slice()) {
        (&Method::GET, ["images", id]) if customize && *id == job.artifact_id => May::Yes,
        (&Method::GET, ["images", id]) => May::IfNewImage(id.to_string()),
        (&Method::GET, ["recipes", id]) if !customize && *id == job.artifact_id => May::Yes,
        (&Method::GET, ["public-keys", id]) if *id == job.public_key_id => May::Yes,
        // Which image it may register is the service's check (it needs the body).
        (&Method::POST, ["images"]) => May::Yes,
        (&Method::GET | &Method::PATCH, ["jobs", id]) => own(id),
        (_, ["jobs", id, _action]) => own(id),
        _ => May::No,
    }
}

/// What an ended job's agent may still send within the grace period: the rest of its log, a
/// heartbeat, a read of its job.
fn ended_job_may(job: &str, method: &Method, path: &str) -> bool {
    match (method, segments(path).as_slice()) {
        (&Method::GET, ["jobs", id]) => *id == job,
        (&Method::POST, ["jobs", id, "log" | "heartbeat"]) => *id == job,
        _ => false,
    }
}

/// Checks a job token's request against its job's record: `Err` is the refusal to send.
async fn job_request_allowed(
    st: &AppState,
    id: &str,
    method: &Method,
    path: &str,
) -> Result<(), Response> {
    let store_error = |e: ims_store::StoreError| ApiError::from(e).into_response();
    let Some(job) = ims_store::get::<Job>(&*st.store, id)
        .await
        .map_err(store_error)?
        .map(|v| v.record)
    else {
        // The agent recognises "its token is void" (it stops instead of waiting for a server that
        // may come back): keep the words.
        return Err(problem_response(Problem::new(
            401,
            format!("Job {id} no longer exists: its token is void."),
        )));
    };
    let run = || async {
        ims_store::get::<JobRun>(&*st.store, id)
            .await
            .map(|r| r.map(|v| v.record))
            .map_err(store_error)
    };
    if job.status.is_final() {
        let grace = chrono::Duration::from_std(JOB_TOKEN_GRACE).unwrap_or_default();
        let since = run().await?.and_then(|r| r.ended);
        let within = since.is_some_and(|t| Timestamp::now().0 - t.0 < grace);
        if within && ended_job_may(id, method, path) {
            return Ok(());
        }
        return Err(problem_response(Problem::new(
            401,
            format!(
                "Job {id} has ended ({}): its token is void{}.",
                job.status,
                if within {
                    " except for the agent's last log and status reads"
                } else {
                    ""
                }
            ),
        )));
    }
    let refused = || {
        problem_response(Problem::new(
            403,
            format!("A job token may only act on its own job ({id})."),
        ))
    };
    match job_may(&job, method, path) {
        May::Yes => Ok(()),
        May::No => Err(refused()),
        May::IfNewImage(image) => {
            let new = job.resultant_image_id.as_deref() == Some(image.as_str())
                || run().await?.and_then(|r| r.image_id).as_deref() == Some(image.as_str());
            if new { Ok(()) } else { Err(refused()) }
        }
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
        Some(t) => match st.job_tokens.check(t, unix_now()) {
            Ok(job) => Caller::Job(job),
            // A forged, foreign or expired job token is refused, never downgraded to anonymous.
            Err(e) if t.starts_with(JOB_PREFIX) && !always_open(&path) => {
                return problem_response(Problem::new(
                    401,
                    match e {
                        TokenError::Expired => "The job token has expired.",
                        TokenError::Invalid => "The job token is not valid.",
                    },
                ));
            }
            // Any other token (on an open API, the gateway's, e.g. the Keycloak token `cray`
            // always sends) identifies nobody here.
            Err(_) => Caller::Anonymous,
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
            Caller::Job(job) => {
                if let Err(refusal) = job_request_allowed(&st, job, req.method(), &path).await {
                    return refusal;
                }
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
        // A later expiry with this token's MAC.
        let (head, mac) = tok.rsplit_once('.').unwrap();
        let (start, exp) = head.rsplit_once('.').unwrap();
        let later = format!("{start}.{}.{mac}", exp.parse::<i64>().unwrap() + 3600);
        assert_eq!(t.check(&later, 0), Err(TokenError::Invalid));
        // The unexpiring format of earlier versions (`ims-job.<id>.<mac>`) is not accepted.
        let old = format!("{JOB_PREFIX}{id}.{mac}");
        assert_eq!(t.check(&old, 0), Err(TokenError::Invalid));
        for bad in [
            "",
            "ims-job.",
            "ims-job.x",
            "ims-job.x.zz",
            "ims-job.x.1.zz",
            "ims-job..1.00",
            "ims-job.x.-1.00",
            "ims-job.x.+5.00",
            "Bearer x",
        ] {
            assert_eq!(t.verify(bad), None, "{bad}");
        }
    }

    #[test]
    fn job_tokens_expire() {
        let t = JobTokens::new(b"0123456789abcdef".to_vec());
        let id = "5b0a1d6e-3c9f-4f7e-9a41-0f2d8c3b7e11";
        let tok = t.issue_until(id, 1_000);
        assert_eq!(t.check(&tok, 999).as_deref(), Ok(id));
        assert_eq!(t.check(&tok, 1_000), Err(TokenError::Expired));
        assert_eq!(t.check(&tok, 5_000), Err(TokenError::Expired));
        // Issued now: valid for the TTL, not beyond.
        let now = unix_now();
        let tok = t.issue(id);
        let ttl = JOB_TOKEN_TTL.as_secs() as i64;
        assert!(t.check(&tok, now + ttl - 60).is_ok());
        assert_eq!(t.check(&tok, now + ttl + 60), Err(TokenError::Expired));
        assert_eq!(t.verify(&t.issue_until(id, now - 1)), None);
    }

    fn job(id: &str, job_type: &str, artifact: &str) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": id, "job_type": job_type, "artifact_id": artifact, "public_key_id": "PK",
            "image_root_archive_name": "n", "status": "creating",
            "created": "2024-01-01T00:00:00.000000+00:00",
        }))
        .unwrap()
    }

    #[test]
    fn job_permissions() {
        let j = job("J", "customize", "SRC");
        for (m, p, want) in [
            (Method::GET, "/v3/images/SRC", May::Yes),
            (Method::GET, "/apis/ims/images/SRC", May::Yes),
            (Method::GET, "/v3/images/x", May::IfNewImage("x".into())),
            (Method::GET, "/v3/images", May::No),
            (Method::GET, "/v3/recipes/SRC", May::No),
            (Method::GET, "/apis/ims/recipes", May::No),
            (Method::GET, "/v3/public-keys/PK", May::Yes),
            (Method::GET, "/v3/public-keys/other", May::No),
            (Method::GET, "/v3/public-keys", May::No),
            (Method::POST, "/v3/images", May::Yes),
            (Method::POST, "/apis/ims/images", May::Yes),
            (Method::PATCH, "/v3/jobs/J", May::Yes),
            (Method::GET, "/jobs/J", May::Yes),
            (Method::POST, "/v3/jobs/J/heartbeat", May::Yes),
            (Method::POST, "/v3/jobs/J/log", May::Yes),
            (Method::PUT, "/apis/sts/token", May::Yes),
            (Method::GET, "/apis/sts/token", May::No),
            (Method::PATCH, "/v3/jobs/K", May::No),
            (Method::DELETE, "/v3/jobs/J", May::No),
            (Method::POST, "/v3/jobs/K/log", May::No),
            (Method::GET, "/v3/jobs/K/log", May::No),
            (Method::GET, "/v3/jobs", May::No),
            (Method::DELETE, "/v3/images/x", May::No),
            (Method::PATCH, "/v3/images/x", May::No),
            (Method::POST, "/v3/public-keys", May::No),
            (Method::POST, "/v3/jobs", May::No),
            (Method::GET, "/v3/deleted/images", May::No),
        ] {
            assert_eq!(job_may(&j, &m, p), want, "{m} {p}");
        }
        // A create job reads its recipe, not an image of that id.
        let c = job("J", "create", "REC");
        assert_eq!(job_may(&c, &Method::GET, "/v3/recipes/REC"), May::Yes);
        assert_eq!(job_may(&c, &Method::GET, "/v3/recipes/other"), May::No);
        assert_eq!(
            job_may(&c, &Method::GET, "/v3/images/REC"),
            May::IfNewImage("REC".into())
        );
    }

    #[test]
    fn ended_jobs_may_only_finish() {
        for (m, p, ok) in [
            (Method::POST, "/v3/jobs/J/log", true),
            (Method::POST, "/apis/ims/v3/jobs/J/heartbeat", true),
            (Method::GET, "/v3/jobs/J", true),
            (Method::POST, "/v3/jobs/K/log", false),
            (Method::PATCH, "/v3/jobs/J", false),
            (Method::PUT, "/apis/sts/token", false),
            (Method::POST, "/v3/images", false),
            (Method::GET, "/v3/images/x", false),
            (Method::POST, "/v3/jobs/J/complete", false),
        ] {
            assert_eq!(ended_job_may("J", &m, p), ok, "{m} {p}");
        }
    }
}
