//! HTTP protocol and process behaviour: routing, problem+json for every error (unknown routes,
//! wrong methods, wrong content types, malformed or oversized bodies), health and version endpoints,
//! the OpenAPI document, both path prefixes, start-up configuration errors, the data-directory lock
//! and clean shutdown.
//!
//! Where the original answered with Flask defaults (`{"message": …}`, not problem+json, for 415 /
//! malformed JSON, plain JSON for 405), we answer problem+json as the design's conventions require.

use crate::common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const ROOTS: &[&str] = &["", "/apis/ims"];
const DETAIL_NOT_FOUND: &str = "Requested resource does not exist. Re-run request with valid ID.";

async fn unknown_routes(db: Db) {
    let s = start(db).await;
    let key = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let id = key["id"].as_str().unwrap();
    for r in ROOTS {
        for path in [
            "/nope".to_string(),
            "/v4/public-keys".into(),
            "/v1/public-keys".into(),
            // No trailing-slash variants.
            "/v3/public-keys/".into(),
            format!("/v3/public-keys/{id}/"),
            format!("/v3/public-keys/{id}/extra"),
            // deleted/* is v3 only.
            "/deleted/public-keys".into(),
            "/v2/deleted/public-keys".into(),
            "/v3/deleted/nope".into(),
            // health and version are unversioned only.
            "/v3/healthz/ready".into(),
            "/v2/version".into(),
            "/healthz".into(),
            "/apis/ims/apis/ims/version".into(),
        ] {
            let p = s.get(&format!("{r}{path}")).await.problem(404, false);
            assert_eq!(p["title"], "Not Found");
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with("The requested URL was not found on the server."),
                "{path}: {p}"
            );
            s.delete(&format!("{r}{path}")).await.problem(404, false);
        }
    }
    for path in ["/apis", "/apis/", "/apis/imsx/version", "/ims/version", "/"] {
        s.get(path).await.problem(404, false);
    }
    // Ids that cannot be decoded (bad UTF-8, percent-encoded slashes) are unknown ids: 404
    // problem (axum's default would be a plain-text 400).
    for path in [
        "/v3/public-keys/%ff",
        "/v2/recipes/%c3%28",
        "/images/%ff%fe",
        "/v3/jobs/%ff",
        "/v3/deleted/images/%ff",
        "/v3/remote-build-nodes/%ff",
        "/v3/remote-build-nodes/status/%ff",
        "/v3/public-keys/a%2Fb",
    ] {
        for r in ROOTS {
            let p = s.get(&format!("{r}{path}")).await.problem(404, false);
            assert_eq!(p["detail"], DETAIL_NOT_FOUND, "{path}");
            if !path.contains("/status/") {
                s.delete(&format!("{r}{path}")).await.problem(404, false);
            }
        }
    }
    s.patch("/v3/jobs/%ff", &json!({"status": "error"}))
        .await
        .problem(404, false);
    // Unknown ids are the resource 404 (different detail), not the route 404.
    let p = s.get("/v3/public-keys/nope").await.problem(404, false);
    assert_eq!(p["detail"], DETAIL_NOT_FOUND);
    // A 404 never touches data.
    assert_eq!(s.get("/v3/public-keys").await.ok(200), json!([key]));
}

async fn wrong_methods(db: Db) {
    let s = start(db).await;
    let id = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = serde_json::to_vec(&json!({"name": "k", "public_key": PUBLIC_KEY})).unwrap();
    for r in ROOTS {
        for (method, path) in [
            ("PUT", "/v3/public-keys".to_string()),
            ("PATCH", "/v3/public-keys".into()),
            ("PATCH", format!("/v3/public-keys/{id}")),
            ("POST", format!("/v3/public-keys/{id}")),
            ("PUT", format!("/v2/public-keys/{id}")),
            ("PATCH", "/public-keys".into()),
            ("PUT", "/v3/images".into()),
            ("POST", "/v3/images/x".into()),
            ("PATCH", "/v2/jobs".into()),
            ("POST", "/v3/jobs/x".into()),
            ("POST", "/v3/deleted/recipes".into()),
            ("PUT", "/v3/remote-build-nodes".into()),
            ("PUT", "/v3/remote-build-nodes/x1".into()),
            ("DELETE", "/v3/remote-build-nodes/x1/host-key".into()),
            ("POST", "/v3/remote-build-nodes/status".into()),
            ("DELETE", "/healthz/live".into()),
            ("POST", "/healthz/ready".into()),
            ("POST", "/version".into()),
            ("DELETE", "/openapi.json".into()),
        ] {
            let p = s
                .send(
                    method,
                    &format!("{r}{path}"),
                    Some(&body),
                    Some("application/json"),
                )
                .await
                .problem(405, false);
            assert_eq!(p["title"], "Method Not Allowed", "{method} {path}");
            assert_eq!(
                p["detail"],
                "The method is not allowed for the requested URL."
            );
        }
    }
    assert_eq!(
        s.get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing changed"
    );
}

async fn bodies(db: Db) {
    let s = start(db).await;
    let valid = serde_json::to_vec(&json!({"name": "k", "public_key": PUBLIC_KEY})).unwrap();
    let targets = [
        ("POST", "/v3/public-keys"),
        ("POST", "/apis/ims/v2/public-keys"),
        ("POST", "/public-keys"),
        ("POST", "/v3/recipes"),
        ("POST", "/v3/images"),
        ("POST", "/v3/jobs"),
        ("POST", "/v3/remote-build-nodes"),
        ("PATCH", "/v3/deleted/public-keys"),
    ];
    for (m, path) in targets {
        // A body with a non-JSON content type → 415.
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/xml"),
            None,
        ] {
            s.send(m, path, Some(&valid), ct).await.problem(415, false);
        }
        // Malformed JSON → 400.
        for bad in [
            &b"{"[..],
            b"{\"name\": }",
            b"not json",
            b"{\"a\":1}}",
            b"\xff\xfe",
        ] {
            s.send(m, path, Some(bad), Some("application/json"))
                .await
                .problem(400, false);
        }
    }
    // JSON content types with parameters or a +json suffix are JSON.
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/problem+json",
    ] {
        s.send("POST", "/v3/public-keys", Some(&valid), Some(ct))
            .await
            .ok(201);
    }
    // Bodies over 1 MiB → 413; just under is accepted.
    let big = json!({"name": "k", "public_key": "x".repeat(1024 * 1024 + 1)});
    for (m, path) in targets {
        let r = s
            .send(
                m,
                path,
                Some(&serde_json::to_vec(&big).unwrap()),
                Some("application/json"),
            )
            .await;
        r.problem(413, false);
    }
    // (A valid key with a long comment.)
    let comment = "c".repeat(1024 * 1024 - 100 - PUBLIC_KEY.len() - 1);
    let almost = json!({"name": "k", "public_key": format!("{PUBLIC_KEY} {comment}")});
    let rec = s.post("/v3/public-keys", &almost).await.ok(201);
    assert_eq!(rec["public_key"].as_str().unwrap().len(), 1024 * 1024 - 100);
    assert_eq!(
        s.get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        4,
        "only the good requests created records"
    );
    // No body at all (any content type) is "no input" (400), as the original.
    s.send("POST", "/v3/public-keys", None, Some("application/json"))
        .await
        .problem(400, false);
    s.send("POST", "/v3/public-keys", Some(b"  \n"), Some("text/plain"))
        .await
        .problem(400, false);
    s.send(
        "POST",
        "/v3/public-keys",
        Some(b"null"),
        Some("application/json"),
    )
    .await
    .problem(400, false);
}

/// Sends a raw HTTP/1.1 request and returns (status, content type, body).
async fn raw_request(url: &str, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{head}Host: {addr}\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend_from_slice(body);
    // The server may answer (and close) before reading everything; that is fine.
    let _ = c.write_all(&req).await;
    let mut out = vec![];
    let _ = c.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (headers, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {headers:?}"));
    let ct = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ct, rest.as_bytes().to_vec())
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    for c in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Bodies without a Content-Length (chunked) are limited too; deeply nested JSON is a 400, not a
/// crash.
async fn raw_bodies(db: Db) {
    let s = start(db).await;
    let big = serde_json::to_vec(&json!({"name": "k", "public_key": "x".repeat(2 * 1024 * 1024)}))
        .unwrap();
    let (status, ct, body) = raw_request(
        &s.url,
        "POST /v3/public-keys HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        &chunked(&big),
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ct, "application/problem+json");
    // A small chunked body is fine.
    let small = serde_json::to_vec(&json!({"name": "k", "public_key": PUBLIC_KEY})).unwrap();
    let (status, _, body) = raw_request(
        &s.url,
        "POST /v3/public-keys HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        &chunked(&small),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    // Very deep nesting.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    s.send(
        "POST",
        "/v3/public-keys",
        Some(deep.as_bytes()),
        Some("application/json"),
    )
    .await
    .problem(400, false);
    let deep = format!(
        "{{\"name\": {}1{}}}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    s.send(
        "POST",
        "/v3/jobs",
        Some(deep.as_bytes()),
        Some("application/json"),
    )
    .await
    .problem(400, false);
    // The server is still fine.
    s.get("/healthz/live").await.ok(200);
    assert_eq!(
        s.get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn health_version_openapi(db: Db) {
    let s = start(db).await;
    for r in ROOTS {
        for h in ["/healthz/ready", "/healthz/live"] {
            assert_eq!(s.get(&format!("{r}{h}")).await.ok(200), json!({}));
        }
        let v = s.get(&format!("{r}/version")).await.ok(200);
        assert_eq!(keys(&v), sorted(&["version"]), "{v}");
        let version = v["version"].as_str().expect("version is a string");
        assert!(!version.is_empty());
        let doc = s.get(&format!("{r}/openapi.json")).await;
        let doc = doc.ok(200);
        assert!(doc["openapi"].is_string(), "openapi key: {doc}");
        assert!(doc["paths"].is_object(), "paths key: {doc}");
    }
}

// ----- process behaviour -----

/// Waits up to `limit` for the child to exit; kills it and returns `None` if it does not.
fn wait_for(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command that must fail fast; returns its stderr.
fn must_fail(mut c: Command, what: &str) -> String {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_for(&mut child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{what}: still running after 10 s"));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !st.success(),
        "{what}: exited successfully; stderr: {stderr}"
    );
    stderr
}

fn serve_cmd(data: &std::path::Path) -> Command {
    let mut c = Command::new(ims_bin());
    c.arg("serve")
        // Tests run in parallel: never the fixed default S3 port.
        .args(["--s3-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .env_remove("IMS_CONFIG")
        .env("IMS_LOG", "info");
    c
}

/// Starts `ims serve` and reads its log up to the `listening on` line (or its end, if it stops
/// first); the server is stopped again. The log lines read.
fn log_until_listening(mut c: Command) -> String {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[test]
fn bad_settings_stop_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let toml_unknown = dir.path().join("unknown.toml");
    std::fs::write(&toml_unknown, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let toml_bad_type = dir.path().join("badtype.toml");
    std::fs::write(&toml_bad_type, "[jobs]\ndefault_image_size = \"big\"\n").unwrap();
    let toml_bad_section = dir.path().join("badsection.toml");
    std::fs::write(&toml_bad_section, "[jobs]\nnamespac = \"x\"\n").unwrap();
    let missing = dir.path().join("missing.toml");
    // (extra args, env, text the one line must contain)
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![],
            vec![("DEFAULT_IMS_IMAGE_SIZE", "abc")],
            vec!["DEFAULT_IMS_IMAGE_SIZE", "abc"],
        ),
        (
            vec![],
            vec![("DEFAULT_IMS_JOB_MEM_SIZE", "0")],
            vec!["DEFAULT_IMS_JOB_MEM_SIZE"],
        ),
        (
            vec![],
            vec![("JOB_ENABLE_DKMS", "maybe")],
            vec!["JOB_ENABLE_DKMS"],
        ),
        (
            vec![],
            vec![("MAX_IMAGE_MANIFEST_SIZE_BYTES", "-5")],
            vec!["MAX_IMAGE_MANIFEST_SIZE_BYTES"],
        ),
        (
            vec![],
            vec![("S3_BOOT_IMAGES_BUCKET", "../escape")],
            vec!["S3_BOOT_IMAGES_BUCKET"],
        ),
        (
            vec![],
            vec![("S3_ENDPOINT", "http://127.0.0.1:1")],
            vec!["S3_ACCESS_KEY"],
        ),
        (
            vec![],
            vec![("S3_ENDPOINT", "ftp://x")],
            vec!["S3_ENDPOINT"],
        ),
        (
            vec!["--listen".into(), "nope".into()],
            vec![],
            vec!["--listen", "nope"],
        ),
        (
            vec!["--listen".into(), "127.0.0.1:99999".into()],
            vec![],
            vec!["--listen"],
        ),
        (vec![], vec![("IMS_LISTEN", "nope")], vec!["IMS_LISTEN"]),
        (
            vec!["--database-url".into(), "mysql://x".into()],
            vec![],
            vec!["database_url"],
        ),
        (
            vec!["--log-format".into(), "xml".into()],
            vec![],
            vec!["log_format"],
        ),
        (
            vec!["--config".into(), toml_unknown.display().to_string()],
            vec![],
            vec!["config", "lisen"],
        ),
        (
            vec!["--config".into(), toml_bad_type.display().to_string()],
            vec![],
            vec!["config", "default_image_size"],
        ),
        (
            vec!["--config".into(), toml_bad_section.display().to_string()],
            vec![],
            vec!["config", "namespac"],
        ),
        (
            vec!["--config".into(), missing.display().to_string()],
            vec![],
            vec!["config", "missing.toml"],
        ),
        (
            vec![],
            vec![("IMS_CONFIG", missing.to_str().unwrap())],
            vec!["config", "missing.toml"],
        ),
        // An API open to the network without authentication is refused, saying what to do.
        (
            vec!["--listen".to_string(), "0.0.0.0:0".to_string()],
            vec![],
            vec![
                "0.0.0.0:0",
                "without authentication",
                "IMS_API_TOKEN_FILE",
                "--insecure-open-api",
            ],
        ),
        (
            vec![],
            vec![("IMS_LISTEN", "[::]:0")],
            vec!["[::]:0", "without authentication"],
        ),
        (
            vec!["--listen".to_string(), "0.0.0.0:0".to_string()],
            vec![("IMS_INSECURE_OPEN_API", "perhaps")],
            vec!["IMS_INSECURE_OPEN_API", "perhaps"],
        ),
    ];
    for (args, env, needles) in cases {
        let data = tempfile::tempdir().unwrap();
        let mut c = serve_cmd(data.path());
        if !args.iter().any(|a| a == "--listen") && !env.iter().any(|(k, _)| *k == "IMS_LISTEN") {
            c.args(["--listen", "127.0.0.1:0"]);
        }
        c.args(&args);
        for (k, v) in &env {
            c.env(k, v);
        }
        let what = format!("{args:?} {env:?}");
        let t = Instant::now();
        let stderr = must_fail(c, &what);
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: slow");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: expected one line, got {stderr:?}");
        for n in needles {
            assert!(lines[0].contains(n), "{what}: {n:?} not in {:?}", lines[0]);
        }
        // Nothing was started: no database was created.
        assert!(
            !data.path().join("ims.db").exists(),
            "{what}: created a database"
        );
    }
}

/// `<data-dir>/ims.toml` is read when no file is named, and checked as strictly.
#[test]
fn bad_data_dir_config_file() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("ims.toml"),
        "[jobs]\nnamespace = \"x\"\nenable_dkms = \"maybe\"\n",
    )
    .unwrap();
    let mut c = serve_cmd(data.path());
    c.args(["--listen", "127.0.0.1:0"]);
    let stderr = must_fail(c, "bad ims.toml");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ims.toml") && stderr.contains("enable_dkms"),
        "{stderr}"
    );
}

/// A data directory that is a file, and a listen address already taken: clear one-line errors.
#[test]
fn unusable_data_dir_or_port() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut c = serve_cmd(&file);
    c.args(["--listen", "127.0.0.1:0"]);
    let stderr = must_fail(c, "data dir is a file");
    assert!(stderr.contains("not-a-dir"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let mut c = serve_cmd(data.path());
    c.args(["--listen", &addr]);
    let stderr = must_fail(c, "port in use");
    let last = stderr.trim().lines().last().unwrap_or("");
    assert!(
        last.contains(&addr) && last.contains("listen"),
        "the error names the address: {stderr}"
    );
}

/// SQLite allows one server per data directory: a second `ims serve` (or `ims migrate`) refuses
/// with a clear message while the first runs, and starts once the first has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_sqlite_data_dir_refused() {
    let s = start(Db::Sqlite).await;
    s.post(
        "/v3/public-keys",
        &json!({"name": "k", "public_key": PUBLIC_KEY}),
    )
    .await
    .ok(201);
    let mut c = serve_cmd(s.data.path());
    c.args(["--listen", "127.0.0.1:0"]);
    let stderr = must_fail(c, "second ims serve");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        stderr.contains(&s.data.path().display().to_string()),
        "names the directory: {stderr}"
    );
    let export = tempfile::tempdir().unwrap();
    let mut c = Command::new(ims_bin());
    c.args(["migrate", "export"])
        .arg(export.path())
        .arg("--data-dir")
        .arg(s.data.path())
        .env_remove("IMS_CONFIG");
    let stderr = must_fail(c, "ims migrate while serving");
    assert!(stderr.contains("in use"), "{stderr}");
    // The first server is unaffected.
    assert_eq!(
        s.get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // After it stops, the directory can be used again.
    let s = s.restart().await;
    assert_eq!(
        s.get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The lock belongs to the SQLite database, not to the data directory: a second server with its
/// own data directory but the same `--database-url sqlite://…` is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_same_sqlite_file_refused() {
    let db_dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", db_dir.path().join("shared.db").display());
    let first = builder(Db::Sqlite).await;
    let mut first = first;
    first.db_url = Some(url.clone());
    let s = first.start().await;
    s.get("/healthz/ready").await.ok(200);
    let other = tempfile::tempdir().unwrap();
    let mut c = serve_cmd(other.path());
    c.args(["--listen", "127.0.0.1:0", "--database-url", &url]);
    let stderr = must_fail(c, "second ims serve on the same SQLite file");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(stderr.contains("shared.db"), "names the database: {stderr}");
    // An `ims.db` that is a symbolic link to the shared database: the lock follows the real file.
    let linked = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        db_dir.path().join("shared.db"),
        linked.path().join("ims.db"),
    )
    .unwrap();
    let mut c = serve_cmd(linked.path());
    c.args(["--listen", "127.0.0.1:0"]);
    let stderr = must_fail(c, "a second ims serve through a symlinked ims.db");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        stderr.contains("shared.db"),
        "names the real database: {stderr}"
    );
}

async fn clean_shutdown(db: Db) {
    for sig in ["TERM", "INT"] {
        let mut s = start(db).await;
        s.post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
        unsafe_kill(s.child.id(), sig);
        let st = wait_for(&mut s.child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("SIG{sig}: did not stop within 10 s"));
        assert!(st.success(), "SIG{sig}: exit status {st:?}");
        // Stopped: nothing answers any more.
        let r = reqwest::Client::new()
            .get(format!("{}/healthz/live", s.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        assert!(r.is_err(), "still answering after SIG{sig}");
        // The data is intact.
        let s2 = reopen(&mut s).await;
        let keys: Value = s2.get("/v3/public-keys").await.ok(200);
        assert_eq!(keys.as_array().unwrap().len(), 1);
    }
}

/// A client that stalls mid-request does not keep a stopping server alive: in-flight requests get
/// a bounded grace period after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_does_not_block_shutdown() {
    use tokio::io::AsyncWriteExt;
    let mut s = start(Db::Sqlite).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(
        format!(
            "POST /v3/public-keys HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"name\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    unsafe_kill(s.child.id(), "TERM");
    let st = wait_for(&mut s.child, Duration::from_secs(30))
        .expect("still running 30 s after SIGTERM with a stalled client");
    assert!(st.success(), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    drop(c);
    // Nothing half-written: the data directory opens and the partial request created nothing.
    let s2 = reopen(&mut s).await;
    assert_eq!(s2.get("/v3/public-keys").await.ok(200), json!([]));
}

both_backends!(
    unknown_routes,
    wrong_methods,
    bodies,
    raw_bodies,
    health_version_openapi,
    clean_shutdown,
);

/// An unreachable PostgreSQL is reported with its real cause, quickly (not a 30 s pool time-out).
#[test]
fn unreachable_postgres_fails_fast_with_the_cause() {
    // A port on loopback that nothing listens on.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut c = serve_cmd(dir.path());
    c.args([
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &format!("postgres://ims:secret@127.0.0.1:{port}/ims"),
    ]);
    let stderr = must_fail(c, "ims serve with an unreachable PostgreSQL");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "the password is not shown: {stderr}"
    );
}

/// A non-loopback API starts with a token, or with `--insecure-open-api` and a loud warning.
#[test]
fn open_api_needs_a_token_or_the_insecure_flag() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "s3cr3t-admin-token\n").unwrap();
    for (args, env, warned) in [
        (vec!["--insecure-open-api"], vec![], true),
        (vec![], vec![("IMS_INSECURE_OPEN_API", "true")], true),
        (
            vec![],
            vec![("IMS_API_TOKEN_FILE", token.path().to_str().unwrap())],
            false,
        ),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut c = serve_cmd(data.path());
        c.args(["--listen", "0.0.0.0:0"]).args(&args);
        for (k, v) in &env {
            c.env(k, v);
        }
        let seen = log_until_listening(c);
        assert!(
            seen.contains("listening on http://0.0.0.0:"),
            "{args:?} {env:?}: {seen}"
        );
        assert_eq!(
            seen.contains("INSECURE"),
            warned,
            "{args:?} {env:?}: {seen}"
        );
    }
}

/// The built-in S3 endpoint on every address: STS advertises the host the client used for the API
/// (never 0.0.0.0), and `ims s3-credentials` the loopback address of this host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_advertises_a_reachable_endpoint() {
    let data = tempfile::tempdir().unwrap();
    let mut c = Command::new(ims_bin());
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--s3-listen",
        "0.0.0.0:0",
        "--data-dir",
    ])
    .arg(data.path())
    .env_remove("IMS_CONFIG");
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut url = None;
    let mut s3_port = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(i) = line.find("S3 endpoint at http://") {
            let rest = &line[i + "S3 endpoint at ".len()..];
            let u = rest.split_whitespace().next().unwrap();
            assert!(u.starts_with("http://127.0.0.1:"), "{line}");
            s3_port = Some(u.rsplit(':').next().unwrap().to_string());
        }
        if let Some(i) = line.find("listening on http://") {
            url = Some(
                line[i + "listening on ".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string(),
            );
            break;
        }
    }
    let (url, port) = (url.unwrap(), s3_port.unwrap());
    let client = reqwest::Client::new();
    for (host, want) in [
        (
            "ims.example.org:9000",
            format!("http://ims.example.org:{port}"),
        ),
        ("[fd00::5]:9000", format!("http://[fd00::5]:{port}")),
    ] {
        let v: Value = client
            .put(format!("{url}/apis/sts/token"))
            .header("host", host)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["Credentials"]["EndpointURL"], json!(want), "{v}");
    }
    let o = Command::new(ims_bin())
        .args(["s3-credentials", "--format", "json", "--data-dir"])
        .arg(data.path())
        .env_remove("IMS_CONFIG")
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        shown["Credentials"]["EndpointURL"],
        json!(format!("http://127.0.0.1:{port}")),
        "{shown}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// An external S3 store that refuses the configured keys stops start-up with one line naming it
/// (here the store is another `ims serve`'s built-in endpoint, which checks SigV4 signatures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_s3_keys_stop_start_up() {
    let store = start(Db::Sqlite).await;
    let o = Command::new(ims_bin())
        .args(["s3-credentials", "--format", "json", "--data-dir"])
        .arg(store.data.path())
        .env_remove("IMS_CONFIG")
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &shown["Credentials"];
    let (endpoint, key, secret) = (
        c["EndpointURL"].as_str().unwrap(),
        c["AccessKeyId"].as_str().unwrap(),
        c["SecretAccessKey"].as_str().unwrap(),
    );
    let serve = |secret: &str| {
        let data = tempfile::tempdir().unwrap();
        let mut c = serve_cmd(data.path());
        c.args(["--listen", "127.0.0.1:0"])
            .env("S3_ENDPOINT", endpoint)
            .env("S3_ACCESS_KEY", key)
            .env("S3_SECRET_KEY", secret)
            .env("S3_REGION", "us-east-1");
        (c, data)
    };
    let (c, _d) = serve("not-the-secret");
    let stderr = must_fail(c, "ims serve with a bogus S3 secret");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ims:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!(
            "the S3 store at {endpoint} refuses the configured keys"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-secret"),
        "the secret was printed: {stderr}"
    );
    // The right secret: it starts.
    let (c, _d) = serve(secret);
    let seen = log_until_listening(c);
    assert!(
        seen.contains("listening on http://"),
        "did not start with the right keys: {seen}"
    );
}
