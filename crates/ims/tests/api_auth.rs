//! Who may call the API: the optional administrator token (`IMS_API_TOKEN`) and the job agents'
//! tokens (`ims-job.<job-id>.<hex HMAC-SHA256(key, "ims job token\0" + job-id)>`), which can act on
//! their own job only.

mod common;
use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const J: &str = "11111111-1111-4111-8111-111111111111";
const K: &str = "22222222-2222-4222-8222-222222222222";

/// A job token as the server issues it under the test key.
fn job_token(job: &str) -> String {
    common::job_token(KEY_HEX, job)
}

async fn call(
    s: &Server,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = s.client.request(m, format!("{}{path}", s.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Resp {
        status,
        content_type,
        body: r.bytes().await.unwrap().to_vec(),
    }
}

async fn server(admin: Option<&str>) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("job.key");
    std::fs::write(&key, KEY_HEX).unwrap();
    let mut b = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_TOKEN_KEY_FILE", key.to_str().unwrap());
    if let Some(t) = admin {
        b = b.env("IMS_API_TOKEN", t);
    }
    (b.start().await, dir)
}

/// What a job token may and may not do, on an open API (no administrator token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_tokens_act_on_their_own_job_only() {
    let (s, _d) = server(None).await;
    let j = job_token(J);
    // Allowed: reads, registering an image, its own job, STS.
    call(&s, Some(&j), "GET", "/v3/images", None).await.ok(200);
    call(&s, Some(&j), "GET", "/apis/ims/recipes", None)
        .await
        .ok(200);
    let img = call(
        &s,
        Some(&j),
        "POST",
        "/v3/images",
        Some(json!({"name": "result"})),
    )
    .await
    .ok(201);
    assert_eq!(img["name"], "result");
    // Its own job passes authorisation (and is then simply not found).
    for (m, p) in [
        ("GET", format!("/v3/jobs/{J}")),
        ("PATCH", format!("/jobs/{J}")),
    ] {
        let body = (m == "PATCH").then(|| json!({"status": "fetching_image"}));
        let r = call(&s, Some(&j), m, &p, body).await;
        assert_eq!(r.status, 404, "{m} {p}: {r:?}");
    }
    call(&s, Some(&j), "PUT", "/apis/sts/token", None)
        .await
        .ok(200);
    // Refused: other jobs, listing or deleting jobs, changing other records.
    for (m, p, body) in [
        (
            "PATCH",
            format!("/v3/jobs/{K}"),
            Some(json!({"status": "error"})),
        ),
        ("GET", format!("/v3/jobs/{K}"), None),
        ("DELETE", format!("/v3/jobs/{J}"), None),
        ("GET", "/v3/jobs".to_string(), None),
        ("DELETE", "/v3/jobs".to_string(), None),
        (
            "POST",
            "/v3/public-keys".to_string(),
            Some(json!({"name": "k", "public_key": PUBLIC_KEY})),
        ),
        (
            "DELETE",
            format!("/v3/images/{}", img["id"].as_str().unwrap()),
            None,
        ),
        (
            "PATCH",
            format!("/v3/images/{}", img["id"].as_str().unwrap()),
            Some(json!({"arch": "aarch64"})),
        ),
        ("DELETE", "/v3/deleted/images".to_string(), None),
    ] {
        let p = call(&s, Some(&j), m, &p, body).await.problem(403, false);
        assert!(p["detail"].as_str().unwrap().contains(J), "{m}: {p}");
    }
    // A forged token (J's MAC under K's id) or a token under another key: 401, never anonymous.
    let forged = j.replace(J, K);
    let p = call(&s, Some(&forged), "GET", "/v3/images", None)
        .await
        .problem(401, false);
    assert_eq!(p["title"], "Unauthorized");
    // Tokens that are not job tokens (the gateway's, e.g. Keycloak's) identify nobody on an open
    // API: the request goes through as before.
    call(
        &s,
        Some("eyJhbGciOiJSUzI1NiJ9.e30.sig"),
        "GET",
        "/v3/jobs",
        None,
    )
    .await
    .ok(200);
    call(&s, None, "DELETE", "/v3/images", None).await.ok(204);
}

/// With `IMS_API_TOKEN`, everything but health, version and the OpenAPI document needs a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrator_token_is_required_when_configured() {
    let (s, _d) = server(Some("s3cret-admin")).await;
    for p in [
        "/healthz/live",
        "/apis/ims/healthz/ready",
        "/version",
        "/openapi.json",
    ] {
        call(&s, None, "GET", p, None).await.ok(200);
    }
    for (tok, what) in [
        (None, "none"),
        (Some("wrong"), "wrong"),
        (Some("s3cret-admin2"), "longer"),
    ] {
        let p = call(&s, tok, "GET", "/v3/images", None)
            .await
            .problem(401, false);
        assert_eq!(p["title"], "Unauthorized", "{what}: {p}");
        call(&s, tok, "PUT", "/apis/sts/token", None)
            .await
            .problem(401, false);
    }
    call(&s, Some("s3cret-admin"), "GET", "/v3/images", None)
        .await
        .ok(200);
    call(
        &s,
        Some("s3cret-admin"),
        "POST",
        "/v3/public-keys",
        Some(json!({"name": "k", "public_key": PUBLIC_KEY})),
    )
    .await
    .ok(201);
    let j = job_token(J);
    call(&s, Some(&j), "GET", "/v3/public-keys", None)
        .await
        .ok(200);
    call(
        &s,
        Some(&j),
        "POST",
        "/v3/public-keys",
        Some(json!({"name": "k", "public_key": PUBLIC_KEY})),
    )
    .await
    .problem(403, false);
}

/// Without a configured key file, the key is created in the data directory with mode 0600 and
/// survives a restart (tokens issued before stay valid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_token_key_is_created_private_and_kept() {
    let s = start(Db::Sqlite).await;
    let key = s.data.path().join("job-token.key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    assert_eq!(first.trim().len(), 64, "{first}");
    let s = s.restart().await;
    assert_eq!(
        std::fs::read_to_string(s.data.path().join("job-token.key")).unwrap(),
        first
    );
}
