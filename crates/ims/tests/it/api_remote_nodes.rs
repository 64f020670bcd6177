//! Remote build nodes over HTTP (reference §3.6, §4.6, §7.2 test_v3_remote_build_nodes): v3 only,
//! keyed by the client's xname, upsert on POST, live status objects.
//!
//! The test servers have no SSH key for remote nodes, so the status probe cannot connect and says
//! why in `sshStatus`; every other field keeps its initial value.

use crate::common::*;
use serde_json::{Value, json};

/// The original's status fields and, after them, IMS-rs's (what placement uses).
const STATUS_KEYS: &[&str] = &[
    "ableToRunJobs",
    "nodeArch",
    "numCurrentJobs",
    "podmanStatus",
    "sshStatus",
    "xname",
    "capacity",
    "reservedSlots",
    "drained",
    "hostKeyPinned",
    "lastError",
];

async fn node_server(db: Db) -> Server {
    // Make sure no key reaches the server from the test environment.
    let mut b = builder(db).await;
    b.env
        .push(("IMS_REMOTE_BUILD_NODE_SSH_KEY".into(), String::new()));
    b.start().await
}

fn assert_unreachable_status(st: &Value, xname: &str) {
    assert_eq!(keys(st), sorted(STATUS_KEYS), "{st}");
    assert_eq!(st["xname"], xname);
    assert_eq!(st["nodeArch"], "Unknown");
    assert_eq!(st["podmanStatus"], "Unknown");
    assert_eq!(st["numCurrentJobs"], -1);
    assert_eq!(st["ableToRunJobs"], false);
    let ssh = st["sshStatus"].as_str().expect("sshStatus is a string");
    assert_ne!(ssh, "Unknown", "sshStatus explains why: {st}");
    assert!(ssh.contains("SSH key"), "{ssh}");
}

async fn create_get_list_delete(db: Db) {
    let s = node_server(db).await;
    for p in ["/v3", "/apis/ims/v3"] {
        let n = s
            .post(
                &format!("{p}/remote-build-nodes"),
                &json!({"xname": "x3000c0s1b0n0"}),
            )
            .await
            .ok(201);
        assert_eq!(n, json!({"xname": "x3000c0s1b0n0"}));
        // Re-POST is an upsert: 201 again, no duplicate.
        let again = s
            .post(
                &format!("{p}/remote-build-nodes"),
                &json!({"xname": "x3000c0s1b0n0"}),
            )
            .await
            .ok(201);
        assert_eq!(again, n);
        s.post(
            &format!("{p}/remote-build-nodes"),
            &json!({"xname": "x3000c0s2b0n0"}),
        )
        .await
        .ok(201);
        let all = s.get(&format!("{p}/remote-build-nodes")).await.ok(200);
        let mut names: Vec<&str> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                assert_eq!(keys(n), sorted(&["xname"]));
                n["xname"].as_str().unwrap()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["x3000c0s1b0n0", "x3000c0s2b0n0"]);
        assert_eq!(
            s.get(&format!("{p}/remote-build-nodes/x3000c0s1b0n0"))
                .await
                .ok(200),
            n
        );
        s.get(&format!("{p}/remote-build-nodes/x9999c0s1b0n0"))
            .await
            .problem(404, false);
        s.delete(&format!("{p}/remote-build-nodes/x3000c0s1b0n0"))
            .await
            .ok(204);
        s.get(&format!("{p}/remote-build-nodes/x3000c0s1b0n0"))
            .await
            .problem(404, false);
        s.delete(&format!("{p}/remote-build-nodes/x3000c0s1b0n0"))
            .await
            .problem(404, false);
        assert_eq!(
            s.get(&format!("{p}/remote-build-nodes")).await.ok(200),
            json!([{"xname": "x3000c0s2b0n0"}])
        );
        // DELETE all empties the table (and is fine when already empty).
        s.post(
            &format!("{p}/remote-build-nodes"),
            &json!({"xname": "x3000c0s3b0n0"}),
        )
        .await
        .ok(201);
        s.delete(&format!("{p}/remote-build-nodes")).await.ok(204);
        assert_eq!(
            s.get(&format!("{p}/remote-build-nodes")).await.ok(200),
            json!([])
        );
        s.delete(&format!("{p}/remote-build-nodes")).await.ok(204);
    }
    // Any host name is accepted (the original accepts any non-blank string; names that cannot be
    // SSH destinations are refused: `status_probe_failure`).
    s.post("/v3/remote-build-nodes", &json!({"xname": "ncn-w001"}))
        .await
        .ok(201);
    s.get("/v3/remote-build-nodes/ncn-w001").await.ok(200);
    // A node may be called "status": GET …/status is the status list (that route wins, as in the
    // original), but the node can still be changed and deleted through …/status.
    s.post("/v3/remote-build-nodes", &json!({"xname": "status"}))
        .await
        .ok(201);
    let n = s
        .patch("/v3/remote-build-nodes/status", &json!({"drained": true}))
        .await
        .ok(200);
    assert_eq!(n, json!({"xname": "status", "drained": true}));
    assert!(
        s.get("/v3/remote-build-nodes/status")
            .await
            .ok(200)
            .is_array()
    );
    s.delete("/v3/remote-build-nodes/status").await.ok(204);
    s.delete("/v3/remote-build-nodes/status")
        .await
        .problem(404, false);
    // Nodes persist.
    let s = s.restart().await;
    assert_eq!(
        s.get("/v3/remote-build-nodes").await.ok(200),
        json!([{"xname": "ncn-w001"}])
    );
}

async fn input_errors(db: Db) {
    let s = node_server(db).await;
    for body in [json!({}), json!([])] {
        s.post("/v3/remote-build-nodes", &body)
            .await
            .problem(400, false);
    }
    s.send("POST", "/v3/remote-build-nodes", None, None)
        .await
        .problem(400, false);
    let cases = [
        (json!({"xname": 1234}), "xname"),
        (json!({"xname": ""}), "xname"),
        (json!({"xname": "   "}), "xname"),
        (json!({"xname": null}), "xname"),
        (json!({"xname": ["x1"]}), "xname"),
        (json!({"name": "x1"}), "xname"),
        (json!({"name": "x1"}), "name"),
        (json!({"xname": "x1", "arch": "x86_64"}), "arch"),
    ];
    for (body, field) in cases {
        let p = s
            .post("/v3/remote-build-nodes", &body)
            .await
            .problem(422, true);
        assert!(p["errors"].get(field).is_some(), "{body} → {p}");
    }
    assert_eq!(
        s.get("/v3/remote-build-nodes").await.ok(200),
        json!([]),
        "nothing created"
    );
}

async fn status(db: Db) {
    let s = node_server(db).await;
    assert_eq!(
        s.get("/v3/remote-build-nodes/status").await.ok(200),
        json!([]),
        "no nodes, no statuses"
    );
    for x in ["x3000c0s1b0n0", "x3000c0s2b0n0", "x3000c0s3b0n0"] {
        s.post("/v3/remote-build-nodes", &json!({"xname": x}))
            .await
            .ok(201);
    }
    for p in ["/v3", "/apis/ims/v3"] {
        let all = s
            .get(&format!("{p}/remote-build-nodes/status"))
            .await
            .ok(200);
        let all = all.as_array().expect("a list of status objects");
        assert_eq!(all.len(), 3, "one per node");
        let mut names: Vec<&str> = all
            .iter()
            .map(|st| {
                let x = st["xname"].as_str().unwrap();
                assert_unreachable_status(st, x);
                x
            })
            .collect();
        names.sort();
        assert_eq!(names, ["x3000c0s1b0n0", "x3000c0s2b0n0", "x3000c0s3b0n0"]);
        // One node: a single object (the spec says array; the code returns an object).
        let one = s
            .get(&format!("{p}/remote-build-nodes/status/x3000c0s2b0n0"))
            .await
            .ok(200);
        assert!(one.is_object(), "{one}");
        assert_unreachable_status(&one, "x3000c0s2b0n0");
        s.get(&format!("{p}/remote-build-nodes/status/x9999c9s9b9n9"))
            .await
            .problem(404, false);
    }
}

/// With a key configured the probe really runs `ssh`; a node that cannot be reached reports the
/// failure in `sshStatus` and keeps the initial values elsewhere. Option-like names are refused
/// before `ssh` runs.
async fn status_probe_failure(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ecdsa");
    std::fs::write(&key, "not a real key\n").unwrap();
    // A name that is not a host name is refused at registration; one that came from the
    // original's data files is never handed to ssh.
    let s = builder(db)
        .await
        .env("IMS_REMOTE_BUILD_NODE_SSH_KEY", key.to_str().unwrap())
        .seed(
            "v2.0_remote_build_nodes.json",
            json!([{"xname": "-oProxyCommand=touch_pwned"}]),
        )
        .start()
        .await;
    s.post(
        "/v3/remote-build-nodes",
        &json!({"xname": "-oProxyCommand=touch_pwned2"}),
    )
    .await
    .problem(400, false);
    s.post(
        "/v3/remote-build-nodes",
        &json!({"xname": "x9999c9s9b9n9.invalid"}),
    )
    .await
    .ok(201);
    let all = s.get("/v3/remote-build-nodes/status").await.ok(200);
    assert_eq!(all.as_array().unwrap().len(), 2);
    for st in all.as_array().unwrap() {
        assert_eq!(keys(st), sorted(STATUS_KEYS), "{st}");
        assert_eq!(st["nodeArch"], "Unknown");
        assert_eq!(st["podmanStatus"], "Unknown");
        assert_eq!(st["numCurrentJobs"], -1);
        assert_eq!(st["ableToRunJobs"], false);
        let ssh = st["sshStatus"].as_str().unwrap();
        assert!(!ssh.contains("SSH key"), "the key is configured: {ssh}");
        assert_ne!(ssh, "SSH connection established.", "{st}");
    }
    let one = s
        .get("/v3/remote-build-nodes/status/-oProxyCommand=touch_pwned")
        .await
        .ok(200);
    assert!(
        one["sshStatus"]
            .as_str()
            .unwrap()
            .contains("Invalid host name"),
        "{one}"
    );
    assert!(!std::path::Path::new("touch_pwned").exists());
}

/// Remote build nodes are v3 only: the spec's unversioned aliases were never routed (§1.1, §8).
async fn no_unversioned_or_v2_routes(db: Db) {
    let s = node_server(db).await;
    s.post("/v3/remote-build-nodes", &json!({"xname": "x1"}))
        .await
        .ok(201);
    for p in ["", "/v2", "/apis/ims", "/apis/ims/v2"] {
        for path in [
            "/remote-build-nodes",
            "/remote-build-nodes/x1",
            "/remote-build-nodes/status",
            "/remote-build-nodes/status/x1",
        ] {
            s.get(&format!("{p}{path}")).await.problem(404, false);
            s.delete(&format!("{p}{path}")).await.problem(404, false);
        }
        s.post(&format!("{p}/remote-build-nodes"), &json!({"xname": "x2"}))
            .await
            .problem(404, false);
    }
    assert_eq!(
        s.get("/v3/remote-build-nodes").await.ok(200),
        json!([{"xname": "x1"}]),
        "nothing deleted or created through the missing routes"
    );
}

both_backends!(
    create_get_list_delete,
    input_errors,
    status,
    status_probe_failure,
    no_unversioned_or_v2_routes,
);
