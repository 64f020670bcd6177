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
