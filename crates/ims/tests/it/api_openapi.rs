//! The OpenAPI document matches the router: every documented operation is routed (no "unknown URL"
//! 404, no 405), at the root and under /apis/ims, and the document is served under both.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let s = start(Db::Sqlite).await;
    let doc = s.get("/openapi.json").await.ok(200);
    assert_eq!(s.get("/apis/ims/openapi.json").await.ok(200), doc);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 38, "only {} paths documented", paths.len());
    let mut checked = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "no-such-id").replace("{xname}", "x0");
            for prefix in ["", "/apis/ims"] {
                let url = format!("{prefix}{concrete}");
                let body = matches!(method.as_str(), "post" | "patch").then_some(&b"{}"[..]);
                let r = s
                    .send(
                        &method.to_uppercase(),
                        &url,
                        body,
                        body.map(|_| "application/json"),
                    )
                    .await;
                assert_ne!(r.status, 405, "{method} {url} not routed");
                if r.status == 404 {
                    let p = r.json();
                    assert!(
                        !p["detail"]
                            .as_str()
                            .unwrap_or("")
                            .contains("requested URL was not found"),
                        "{method} {url} not routed"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 2 * 80, "{checked}");
}

/// schemathesis (`IMS_TEST_SCHEMATHESIS`, set by scripts/test.sh) against a real server with our own
/// document: every check (the defaults, `not_a_server_error`, `positive_data_acceptance`,
/// `negative_data_rejection`, and tests/it/schemathesis/hooks.py's), no stateful phase, a bounded
/// number of examples per operation. Any finding fails the test with schemathesis' report. One
/// worker: hypothesis' generation in several threads trips a CPython 3.11 `ast` race ("AST
/// constructor recursion depth mismatch").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let st = std::env::var("IMS_TEST_SCHEMATHESIS").expect(
        "IMS_TEST_SCHEMATHESIS is not set: run the tests with scripts/test.sh (it installs schemathesis)",
    );
    let s = start(Db::Sqlite).await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/schemathesis");
    let work = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(&st)
        .current_dir(work.path())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", dir)
        .args([
            "--no-color",
            "--config-file",
            &format!("{dir}/schemathesis.toml"),
        ])
        .arg("run")
        .arg(format!("{}/openapi.json", s.url))
        .args(["--url", &s.url])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args([
            "--max-examples",
            "20",
            "--seed",
            "20261204",
            "--workers",
            "1",
        ])
        .args(["--request-timeout", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run schemathesis");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = async {
        use tokio::io::AsyncReadExt;
        let (mut o, mut e) = (String::new(), String::new());
        let _ = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
        (o, e, child.wait().await.unwrap())
    };
    let (stdout, stderr, status) = tokio::time::timeout(std::time::Duration::from_secs(300), read)
        .await
        .expect("schemathesis ran for more than 5 minutes");
    assert!(
        status.success(),
        "schemathesis found problems ({status}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed"), "{stdout}\n{stderr}");
}
