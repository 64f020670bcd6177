//! Who may call the API: the optional administrator token (`IMS_API_TOKEN`) and the job agents'
//! tokens (`ims-job.<job-id>.<expiry>.<hex HMAC-SHA256(key, "ims job token v2\0" + job-id + "\0" +
//! expiry)>`), which can act on their own live job only.

use crate::common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A job token as the server issues it under the test key.
fn job_token(job: &str) -> String {
    crate::common::job_token(KEY_HEX, job)
}

async fn call(
    s: &Server,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let body = body.map(|b| b.to_string().into_bytes());
    let content_type = body.as_ref().map(|_| "application/json");
    s.send_as(token, method, path, body.as_deref(), content_type)
        .await
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

/// A customize job on a new image (records only: the API tests run no agents), created with
/// `admin`'s token; returns (job id, image id, public key id).
async fn job_of(s: &Server, admin: Option<&str>, dir: &str) -> (String, String, String) {
    let link = s.put_image_artifacts(dir);
    let img = call(
        s,
        admin,
        "POST",
        "/v3/images",
        Some(json!({"name": dir, "link": link})),
    )
    .await
    .ok(201);
    let pk = call(
        s,
        admin,
        "POST",
        "/v3/public-keys",
        Some(json!({"name": dir, "public_key": PUBLIC_KEY})),
    )
    .await
    .ok(201);
    let job = call(
        s,
        admin,
        "POST",
        "/v3/jobs",
        Some(json!({"job_type": "customize", "artifact_id": img["id"],
                    "public_key_id": pk["id"], "image_root_archive_name": "new"})),
    )
    .await
    .ok(201);
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    (id(&job), id(&img), id(&pk))
}

/// What a job token may and may not do, on an open API (no administrator token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_tokens_act_on_their_own_job_only() {
    let (s, _d) = server(None).await;
    let (jid, img, pk) = job_of(&s, None, "a").await;
    let (kid, other_img, _) = job_of(&s, None, "b").await;
    let j = job_token(&jid);
    // Allowed: its source image, its public key, its own job, STS.
    call(&s, Some(&j), "GET", &format!("/v3/images/{img}"), None)
        .await
        .ok(200);
    call(
        &s,
        Some(&j),
        "GET",
        &format!("/apis/ims/public-keys/{pk}"),
        None,
    )
    .await
    .ok(200);
    call(&s, Some(&j), "GET", &format!("/v3/jobs/{jid}"), None)
        .await
        .ok(200);
    call(
        &s,
        Some(&j),
        "PATCH",
        &format!("/jobs/{jid}"),
        Some(json!({"status": "fetching_image"})),
    )
    .await
    .ok(200);
    call(&s, Some(&j), "PUT", "/apis/sts/token", None)
        .await
        .ok(200);
    // Refused: other records, other jobs, listing or deleting jobs, changing other records,
    // registering an image that is not the job's.
    for (m, p, body) in [
        ("GET", "/v3/images".to_string(), None),
        ("GET", format!("/v3/images/{other_img}"), None),
        ("GET", "/apis/ims/recipes".to_string(), None),
        ("GET", "/v3/public-keys".to_string(), None),
        (
            "POST",
            "/v3/images".to_string(),
            Some(json!({"name": "result"})),
        ),
        (
            "PATCH",
            format!("/v3/jobs/{kid}"),
            Some(json!({"status": "error"})),
        ),
        ("GET", format!("/v3/jobs/{kid}"), None),
        ("GET", format!("/v3/jobs/{kid}/log"), None),
        ("DELETE", format!("/v3/jobs/{jid}"), None),
        ("GET", "/v3/jobs".to_string(), None),
        ("DELETE", "/v3/jobs".to_string(), None),
        (
            "POST",
            "/v3/public-keys".to_string(),
            Some(json!({"name": "k", "public_key": PUBLIC_KEY})),
        ),
        ("DELETE", format!("/v3/images/{img}"), None),
        (
            "PATCH",
            format!("/v3/images/{img}"),
            Some(json!({"arch": "aarch64"})),
        ),
        ("DELETE", "/v3/deleted/images".to_string(), None),
    ] {
        let p = call(&s, Some(&j), m, &p, body).await.problem(403, false);
        assert!(p["detail"].as_str().unwrap().contains(&jid), "{m}: {p}");
    }
    // A forged token (J's MAC under K's id) or a token under another key: 401, never anonymous.
    let forged = j.replace(&jid, &kid);
    let p = call(&s, Some(&forged), "GET", &format!("/v3/jobs/{kid}"), None)
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
    call(&s, None, "DELETE", "/v3/jobs", None).await.ok(204);
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
    let (jid, _, pk) = job_of(&s, Some("s3cret-admin"), "a").await;
    let j = job_token(&jid);
    call(&s, Some(&j), "GET", &format!("/v3/public-keys/{pk}"), None)
        .await
        .ok(200);
    call(&s, Some(&j), "GET", "/v3/public-keys", None)
        .await
        .problem(403, false);
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
