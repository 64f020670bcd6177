//! A small typed HTTP client for the IMS API, shaped after the requests `cray ims` sends
//! (`shared/reference/clients.md` §2 and §4).
//!
//! * Every route lives under `<base>/apis/ims`; the v3 resources under `<base>/apis/ims/v3/...`.
//!   A path in the base URL is kept as a prefix (`http://gw/prefix` → `http://gw/prefix/apis/ims/...`),
//!   with or without a trailing slash (cray drops it without one; we don't).
//! * Path arguments (ids, xnames) are percent-encoded as one path segment, so `a/b` or `x?y` can never
//!   turn into another route or a query string (cray inserts them raw).
//! * Bodies are returned as [`serde_json::Value`]: an empty body (204) is `Value::Null`, a body that is
//!   not JSON is a `Value::String` holding its text. The calls job agents make are typed with
//!   `ims-core`'s records and job wire types ([`ims_core::job_wire`]); an answer that is not the
//!   expected type is [`Error::Decode`].
//! * A non-2xx answer becomes [`Error::Api`], carrying the status, the reason phrase and the RFC 7807
//!   `title`/`detail` when the body has them. Its `Display` is what `cray` prints after `Error: `.
//!
//! Nothing here prints; callers decide how to show results and errors.

#![forbid(unsafe_code)]

pub mod publish;
pub mod s3;

use ims_core::input::JobPatch;
use ims_core::job_wire::{Heartbeat, HeartbeatAnswer};
use ims_core::{Job, UserRequest};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;
use url::Url;

/// The URL `ims serve` listens on by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9000";

/// The v3 resource collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Images,
    Recipes,
    PublicKeys,
    Jobs,
    RemoteBuildNodes,
    /// `remote-build-nodes/status`: read-only.
    RemoteBuildNodesStatus,
    DeletedImages,
    DeletedRecipes,
    DeletedPublicKeys,
}

impl Resource {
    /// The collection's path segments below `/apis/ims/v3`.
    pub fn segments(self) -> &'static [&'static str] {
        match self {
            Resource::Images => &["images"],
            Resource::Recipes => &["recipes"],
            Resource::PublicKeys => &["public-keys"],
            Resource::Jobs => &["jobs"],
            Resource::RemoteBuildNodes => &["remote-build-nodes"],
            Resource::RemoteBuildNodesStatus => &["remote-build-nodes", "status"],
            Resource::DeletedImages => &["deleted", "images"],
            Resource::DeletedRecipes => &["deleted", "recipes"],
            Resource::DeletedPublicKeys => &["deleted", "public-keys"],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL cannot be used (not http/https, or not a URL at all).
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The server answered with a non-2xx status.
    #[error("{}", api_message(*.status, .reason, .title.as_deref(), .detail.as_deref(), .body))]
    Api {
        status: u16,
        /// The HTTP reason phrase (`Not Found`).
        reason: String,
        /// RFC 7807 `title`, when the body is a problem document.
        title: Option<String>,
        /// RFC 7807 `detail`, when the body is a problem document.
        detail: Option<String>,
        /// The whole body, parsed when it is JSON (`Null` when empty).
        body: Value,
    },
    /// No connection could be made to the server.
    #[error("cannot connect to the IMS server at {url}: {}{}", root_cause(.source), tls_hint(.url, .source))]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer that is not the JSON the call expects.
    #[error("unexpected answer from {url}: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// Any other transport failure (timeout, broken connection, unreadable body).
    #[error("request to {url} failed: {}{}", root_cause(.source), tls_hint(.url, .source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The innermost cause (e.g. `Connection refused (os error 111)`), without reqwest's wrappers
/// that repeat the URL.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `title: detail` as cray prints it, then one line per field of a validation problem's `errors`
/// map (`  field: message; message`, nested fields dotted: `ssh_containers.0.jail`), which cray
/// leaves out ("the fields indicated in the response").
/// `https://` to a server that speaks plain HTTP fails in the TLS handshake with a message that does
/// not say so.
fn tls_hint(url: &str, e: &reqwest::Error) -> &'static str {
    let cause = root_cause(e);
    if url.starts_with("https://")
        && (cause.contains("InvalidContentType") || cause.contains("corrupt message"))
    {
        " (the server answered in plain HTTP, not TLS: use an http:// URL)"
    } else {
        ""
    }
}

fn api_message(
    status: u16,
    reason: &str,
    title: Option<&str>,
    detail: Option<&str>,
    body: &Value,
) -> String {
    let mut msg = match (title, detail) {
        (Some(t), Some(d)) => format!("{t}: {d}"),
        _ => format!("Error received from server: {status} {reason}"),
    };
    // An S3 error document: the URL is the S3 endpoint's, not the API's.
    if let Value::String(text) = body
        && text.contains("<Error>")
        && text.contains("<Code>")
    {
        msg.push_str(
            " (the answer is an S3 error: this URL is an S3 endpoint, not the IMS API; the API \
             listens on port 9000 by default, the built-in S3 endpoint on 9001)",
        );
    }
    if let Some(errors) = body.get("errors") {
        let mut lines = vec![];
        field_errors("", errors, &mut lines);
        for l in lines {
            msg.push_str("\n  ");
            msg.push_str(&l);
        }
    }
    msg
}

/// Flattens an `errors` map into `path: messages` lines.
fn field_errors(path: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                field_errors(&p, v, out);
            }
        }
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            out.push(format!("{path}: {}", texts.join("; ")));
        }
        Value::String(s) => out.push(format!("{path}: {s}")),
        other => out.push(format!("{path}: {other}")),
    }
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client for one IMS server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `<base>/apis/ims`, without a trailing slash.
    root: Url,
    /// Shared by the clones of this client, so that a renewed token (a job agent's) reaches
    /// every one of them.
    token: std::sync::Arc<std::sync::RwLock<Option<String>>>,
    /// Called with every request about to be sent (the CLI's `-v`).
    trace: Option<fn(&Method, &Url)>,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:9000`), sending
    /// `Authorization: Bearer <token>` when a token is given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self> {
        // The common slip: `127.0.0.1:9000` or `ims-host:9000` without `http://`.
        let no_scheme = !base_url.contains("://");
        let invalid = |reason: String| Error::InvalidUrl {
            url: base_url.to_string(),
            reason: if no_scheme {
                format!("{reason}; give the scheme, e.g. http://{base_url}")
            } else {
                reason
            },
        };
        let mut root = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(root.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if root.cannot_be_a_base() {
            return Err(invalid("not a base URL".into()));
        }
        root.set_query(None);
        root.set_fragment(None);
        {
            let mut segs = root
                .path_segments_mut()
                .map_err(|()| invalid("not a base URL".into()))?;
            segs.pop_if_empty().push("apis").push("ims");
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("ims-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            root,
            token: std::sync::Arc::new(std::sync::RwLock::new(token.filter(|t| !t.is_empty()))),
            trace: None,
        })
    }

    /// Calls `f` with the method and URL of every request before it is sent.
    pub fn traced(mut self, f: fn(&Method, &Url)) -> Self {
        self.trace = Some(f);
        self
    }

    /// A request to `url` with the bearer token, traced; and the URL as errors show it.
    fn request(&self, method: Method, url: Url) -> (String, reqwest::RequestBuilder) {
        if let Some(f) = self.trace {
            f(&method, &url);
        }
        let shown = url.to_string();
        let mut req = self.http.request(method, url);
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        (shown, req)
    }

    /// The bearer token sent.
    pub fn token(&self) -> Option<String> {
        self.token.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Sends `token` from now on, from this client and all its clones (a job agent's renewed
    /// token).
    pub fn set_token(&self, token: String) {
        if let Ok(mut t) = self.token.write() {
            *t = Some(token).filter(|t| !t.is_empty());
        }
    }

    /// The URL of `/apis/ims/<segments...>`; each segment is percent-encoded on its own.
    pub fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        let mut u = self.root.clone();
        if let Ok(mut s) = u.path_segments_mut() {
            s.extend(segments);
        }
        u
    }

    fn v3_url(&self, res: Resource, id: Option<&str>) -> Url {
        let mut segs = vec!["v3"];
        segs.extend_from_slice(res.segments());
        segs.extend(id);
        self.url(segs)
    }

    /// Sends one request and returns the body of a 2xx answer (see the crate docs).
    /// `body: None` sends no body and no `Content-Type`.
    pub async fn send(
        &self,
        method: Method,
        mut url: Url,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value> {
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let (shown, mut req) = self.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.finish(shown, req).await.map(|(v, _)| v)
    }

    /// `GET /apis/ims/v3/<resource>`.
    pub async fn list(&self, res: Resource) -> Result<Value> {
        self.send(Method::GET, self.v3_url(res, None), &[], None)
            .await
    }

    /// `GET /apis/ims/v3/<resource>/<id>`.
    pub async fn describe(&self, res: Resource, id: &str) -> Result<Value> {
        self.send(Method::GET, self.v3_url(res, Some(id)), &[], None)
            .await
    }

    /// `POST /apis/ims/v3/<resource>` with a JSON body.
    pub async fn create(&self, res: Resource, body: &Value) -> Result<Value> {
        self.send(Method::POST, self.v3_url(res, None), &[], Some(body))
            .await
    }

    /// `PATCH /apis/ims/v3/<resource>/<id>`; `None` sends no body at all (as cray does when no
    /// option is given).
    pub async fn update(&self, res: Resource, id: &str, body: Option<&Value>) -> Result<Value> {
        self.send(Method::PATCH, self.v3_url(res, Some(id)), &[], body)
            .await
    }

    /// `DELETE /apis/ims/v3/<resource>/<id>`.
    pub async fn delete(&self, res: Resource, id: &str) -> Result<Value> {
        self.send(Method::DELETE, self.v3_url(res, Some(id)), &[], None)
            .await
    }

    /// `DELETE /apis/ims/v2/recipes/<id>?cascade=false`: a hard delete (v3 would soft-delete),
    /// leaving the recipe's artifacts alone.
    pub async fn purge_recipe(&self, id: &str) -> Result<Value> {
        self.send(
            Method::DELETE,
            self.url(["v2", "recipes", id]),
            &[("cascade", "false")],
            None,
        )
        .await
    }

    /// `DELETE /apis/ims/v3/<resource>` with optional query filters (jobs: `status`, `job_type`,
    /// `age`).
    pub async fn delete_all(&self, res: Resource, query: &[(&str, &str)]) -> Result<Value> {
        self.send(Method::DELETE, self.v3_url(res, None), query, None)
            .await
    }

    /// Sends one request with a typed body and reads the typed answer.
    async fn send_typed<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T> {
        let (shown, mut req) = self.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (v, _) = self.finish(shown.clone(), req).await?;
        serde_json::from_value(v).map_err(|source| Error::Decode { url: shown, source })
    }

    /// `GET /apis/ims/v3/<resource>/<id>` read as the record type `T`.
    pub async fn describe_as<T: DeserializeOwned>(&self, res: Resource, id: &str) -> Result<T> {
        self.send_typed(Method::GET, self.v3_url(res, Some(id)), None::<&()>)
            .await
    }

    /// `PATCH /apis/ims/v3/jobs/<id>` (job agents): a new status or the resultant image.
    pub async fn job_update(&self, id: &str, update: &JobPatch) -> Result<Job> {
        self.send_typed(
            Method::PATCH,
            self.v3_url(Resource::Jobs, Some(id)),
            Some(update),
        )
        .await
    }

    /// `POST /apis/ims/v3/jobs/<id>/heartbeat` (job agents): answers the job's status, the
    /// user's request (`complete`/`fail`) and, for the job's own agent, a fresh token.
    pub async fn job_heartbeat(&self, id: &str, body: &Heartbeat) -> Result<HeartbeatAnswer> {
        self.send_typed(
            Method::POST,
            self.url(["v3", "jobs", id, "heartbeat"]),
            Some(body),
        )
        .await
    }

    /// `POST /apis/ims/v3/jobs/<id>/complete` or `/fail`: ends a `waiting_on_user` session.
    pub async fn job_request(&self, id: &str, what: UserRequest) -> Result<Value> {
        self.send(
            Method::POST,
            self.url(["v3", "jobs", id, what.as_str()]),
            &[],
            None,
        )
        .await
    }

    /// `GET /apis/ims/v3/jobs/<id>/session` (extension): where the job's SSH session listens
    /// and sshd's public host key.
    pub async fn job_session(&self, id: &str) -> Result<Value> {
        self.send(
            Method::GET,
            self.url(["v3", "jobs", id, "session"]),
            &[],
            None,
        )
        .await
    }

    /// `GET /apis/ims/v3/remote-build-nodes/<xname>/host-key` (extension): the SSH host keys the
    /// node presents now (`presented`, with `error` when it could not be reached) and the ones
    /// accepted for it (`accepted`).
    pub async fn node_host_keys(&self, xname: &str) -> Result<Value> {
        self.send(Method::GET, self.node_host_key_url(xname), &[], None)
            .await
    }

    /// `POST /apis/ims/v3/remote-build-nodes/<xname>/host-key` (extension): accepts the key the
    /// node presents now with this fingerprint (`SHA256:…`); answers as [`Client::node_host_keys`].
    pub async fn node_accept_host_key(&self, xname: &str, fingerprint: &str) -> Result<Value> {
        let body = serde_json::json!({ "fingerprint": fingerprint });
        self.send(
            Method::POST,
            self.node_host_key_url(xname),
            &[],
            Some(&body),
        )
        .await
    }

    fn node_host_key_url(&self, xname: &str) -> Url {
        self.url(["v3", "remote-build-nodes", xname, "host-key"])
    }

    /// `POST /apis/ims/v3/jobs/<id>/log?seq=N` (job agents): one log chunk.
    pub async fn job_log_append(&self, id: &str, seq: u64, chunk: Vec<u8>) -> Result<Value> {
        let mut url = self.url(["v3", "jobs", id, "log"]);
        url.query_pairs_mut().append_pair("seq", &seq.to_string());
        let (shown, req) = self.request(Method::POST, url);
        let req = req
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(chunk);
        self.finish(shown, req).await.map(|(v, _)| v)
    }

    /// `GET /apis/ims/v3/jobs/<id>/log?offset=N`: (text, next offset, job over and fully read).
    pub async fn job_log(&self, id: &str, offset: u64) -> Result<(Vec<u8>, u64, bool)> {
        let mut url = self.url(["v3", "jobs", id, "log"]);
        url.query_pairs_mut()
            .append_pair("offset", &offset.to_string());
        let (shown, req) = self.request(Method::GET, url);
        let resp = req.send().await.map_err(|e| transport(&shown, e))?;
        let status = resp.status();
        let next = resp
            .headers()
            .get("x-ims-log-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let done = resp
            .headers()
            .get("x-ims-log-complete")
            .is_some_and(|v| v.as_bytes() == b"true");
        let bytes = resp.bytes().await.map_err(|e| Error::Transport {
            url: shown.clone(),
            source: e,
        })?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok((bytes.to_vec(), next, done))
    }

    /// Sends a prepared request; the parsed body of a 2xx answer.
    async fn finish(&self, shown: String, req: reqwest::RequestBuilder) -> Result<(Value, u16)> {
        let resp = req.send().await.map_err(|e| transport(&shown, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Transport {
            url: shown.clone(),
            source: e,
        })?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok((parse_body(&bytes), status.as_u16()))
    }

    /// `GET /apis/ims/version`.
    pub async fn version(&self) -> Result<Value> {
        self.send(Method::GET, self.url(["version"]), &[], None)
            .await
    }
}

fn transport(url: &str, e: reqwest::Error) -> Error {
    if e.is_connect() {
        Error::Connect {
            url: url.to_string(),
            source: e,
        }
    } else {
        Error::Transport {
            url: url.to_string(),
            source: e,
        }
    }
}

fn api_error(status: reqwest::StatusCode, bytes: &[u8]) -> Error {
    let body = parse_body(bytes);
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    Error::Api {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_string(),
        title: field("title"),
        detail: field("detail"),
        body,
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_base_path_and_encode_ids() {
        let c = Client::new("http://127.0.0.1:9000", None).unwrap();
        assert_eq!(
            c.v3_url(Resource::Images, None).as_str(),
            "http://127.0.0.1:9000/apis/ims/v3/images"
        );
        assert_eq!(
            c.v3_url(Resource::DeletedPublicKeys, Some("a/b?c"))
                .as_str(),
            "http://127.0.0.1:9000/apis/ims/v3/deleted/public-keys/a%2Fb%3Fc"
        );
        for base in ["http://h/gw", "http://h/gw/"] {
            let c = Client::new(base, None).unwrap();
            assert_eq!(
                c.v3_url(Resource::RemoteBuildNodesStatus, Some("x1"))
                    .as_str(),
                "http://h/gw/apis/ims/v3/remote-build-nodes/status/x1"
            );
        }
        assert_eq!(
            c.url(["version"]).as_str(),
            "http://127.0.0.1:9000/apis/ims/version"
        );
        assert_eq!(
            c.node_host_key_url("x1/../status").as_str(),
            "http://127.0.0.1:9000/apis/ims/v3/remote-build-nodes/x1%2F..%2Fstatus/host-key"
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for u in ["", "127.0.0.1:9000", "ftp://h/", "mailto:x@y"] {
            assert!(
                matches!(Client::new(u, None), Err(Error::InvalidUrl { .. })),
                "{u}"
            );
        }
    }

    #[test]
    fn api_errors_display_like_cray() {
        let e = Error::Api {
            status: 404,
            reason: "Not Found".into(),
            title: Some("Not Found".into()),
            detail: Some("Requested resource does not exist.".into()),
            body: Value::Null,
        };
        assert_eq!(
            e.to_string(),
            "Not Found: Requested resource does not exist."
        );
        let e = Error::Api {
            status: 502,
            reason: "Bad Gateway".into(),
            title: None,
            detail: None,
            body: Value::Null,
        };
        assert_eq!(e.to_string(), "Error received from server: 502 Bad Gateway");
    }

    #[test]
    fn bodies() {
        assert_eq!(parse_body(b""), Value::Null);
        assert_eq!(parse_body(b"\n"), Value::Null);
        assert_eq!(parse_body(b"{\"a\":1}"), serde_json::json!({"a":1}));
        assert_eq!(parse_body(b"plain"), Value::String("plain".into()));
    }
}
