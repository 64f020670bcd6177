//! Public keys over HTTP (reference §3.1, §7.2 test_v2/v3_public_keys, deleted public keys).

use crate::common::*;
use serde_json::json;

const PREFIXES: &[&str] = &[
    "",
    "/v2",
    "/v3",
    "/apis/ims",
    "/apis/ims/v2",
    "/apis/ims/v3",
];

async fn create_get_list_delete(db: Db) {
    let s = start(db).await;
    for p in PREFIXES {
        let rec = s
            .post(
                &format!("{p}/public-keys"),
                &json!({"name": "k", "public_key": format!("{PUBLIC_KEY}\n")}),
            )
            .await
            .ok(201);
        assert_eq!(keys(&rec), sorted(&["created", "id", "name", "public_key"]));
        let id = rec["id"].as_str().unwrap();
        assert!(is_uuid4(id), "{id}");
        assert!(is_wire_time(rec["created"].as_str().unwrap()), "{rec}");
        assert_eq!(
            rec["public_key"],
            format!("{PUBLIC_KEY}\n"),
            "kept verbatim"
        );
        let got = s.get(&format!("{p}/public-keys/{id}")).await.ok(200);
        assert_eq!(got, rec);
        let all = s.get(&format!("{p}/public-keys")).await.ok(200);
        assert!(all.as_array().unwrap().contains(&rec));
        s.delete(&format!("{p}/public-keys/{id}")).await.ok(204);
        s.get(&format!("{p}/public-keys/{id}"))
            .await
            .problem(404, false);
        s.delete(&format!("{p}/public-keys/{id}"))
            .await
            .problem(404, false);
    }
    // Upper-case ids do not match (exact lookup).
    let rec = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let upper = rec["id"].as_str().unwrap().to_uppercase();
    s.get(&format!("/v3/public-keys/{upper}"))
        .await
        .problem(404, false);
}

async fn input_errors(db: Db) {
    let s = start(db).await;
    for body in [json!({}), json!([])] {
        s.post("/v3/public-keys", &body).await.problem(400, false);
    }
    s.send("POST", "/v3/public-keys", None, None)
        .await
        .problem(400, false);
    let cases = [
        (json!({"public_key": PUBLIC_KEY}), "name"),
        (json!({"name": "x"}), "public_key"),
        (json!({"name": 1, "public_key": PUBLIC_KEY}), "name"),
        (json!({"name": "x", "public_key": ["x"]}), "public_key"),
        (json!({"name": "", "public_key": PUBLIC_KEY}), "name"),
        (json!({"name": "x", "public_key": "  "}), "public_key"),
        (
            json!({"name": "x", "public_key": PUBLIC_KEY, "id": "z"}),
            "id",
        ),
        (
            json!({"name": "x", "public_key": PUBLIC_KEY, "created": "z"}),
            "created",
        ),
    ];
    for (body, field) in cases {
        let p = s.post("/v2/public-keys", &body).await.problem(422, true);
        assert!(p["errors"].get(field).is_some(), "{body} → {p}");
    }
    assert_eq!(
        s.get("/v2/public-keys").await.ok(200),
        json!([]),
        "nothing created"
    );
}

async fn v2_delete_all_is_hard_and_persists(db: Db) {
    let s = start(db).await;
    for i in 0..3 {
        s.post(
            "/v2/public-keys",
            &json!({"name": format!("k{i}"), "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    }
    s.delete("/v2/public-keys").await.ok(204);
    assert_eq!(s.get("/v2/public-keys").await.ok(200), json!([]));
    assert_eq!(
        s.get("/v3/deleted/public-keys").await.ok(200),
        json!([]),
        "v2 is a hard delete"
    );
    // Later changes persist too (the original's bug lost them).
    s.post(
        "/v2/public-keys",
        &json!({"name": "after", "public_key": PUBLIC_KEY}),
    )
    .await
    .ok(201);
    let s2 = s.restart().await;
    let all = s2.get("/v2/public-keys").await.ok(200);
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["name"], "after");
}

async fn v3_soft_delete_and_undelete(db: Db) {
    let s = start(db).await;
    let a = s
        .post(
            "/v3/public-keys",
            &json!({"name": "a", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let b = s
        .post(
            "/v3/public-keys",
            &json!({"name": "b", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let (ida, idb) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    s.delete(&format!("/v3/public-keys/{ida}")).await.ok(204);
    let d = s
        .get(&format!("/v3/deleted/public-keys/{ida}"))
        .await
        .ok(200);
    assert_eq!(
        keys(&d),
        sorted(&["created", "deleted", "id", "name", "public_key"])
    );
    assert_eq!(d["created"], a["created"]);
    assert!(is_wire_time(d["deleted"].as_str().unwrap()));
    assert_eq!(
        s.get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // delete all (soft)
    s.delete("/v3/public-keys").await.ok(204);
    assert_eq!(s.get("/v3/public-keys").await.ok(200), json!([]));
    assert_eq!(
        s.get("/v3/deleted/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // undelete one
    s.patch(
        &format!("/v3/deleted/public-keys/{ida}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert_eq!(
        s.get(&format!("/v3/public-keys/{ida}")).await.ok(200),
        a,
        "restored unchanged"
    );
    // undelete errors
    s.patch(
        &format!("/v3/deleted/public-keys/{idb}"),
        &json!({"operation": "explode"}),
    )
    .await
    .problem(422, true);
    s.patch(
        &format!("/v3/deleted/public-keys/{idb}"),
        &json!({"operation": "undelete", "x": 1}),
    )
    .await
    .problem(422, true);
    s.patch(&format!("/v3/deleted/public-keys/{idb}"), &json!({}))
        .await
        .problem(400, false);
    s.patch(
        "/v3/deleted/public-keys/nope",
        &json!({"operation": "undelete"}),
    )
    .await
    .problem(404, false);
    s.get("/v3/deleted/public-keys/nope")
        .await
        .problem(404, false);
    s.delete("/v3/deleted/public-keys/nope")
        .await
        .problem(404, false);
    // undelete all
    s.patch("/v3/deleted/public-keys", &json!({"operation": "undelete"}))
        .await
        .ok(204);
    assert_eq!(
        s.get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(s.get("/v3/deleted/public-keys").await.ok(200), json!([]));
    // permanent delete one and all
    s.delete("/v3/public-keys").await.ok(204);
    s.delete(&format!("/v3/deleted/public-keys/{ida}"))
        .await
        .ok(204);
    assert_eq!(
        s.get("/v3/deleted/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.delete("/v3/deleted/public-keys").await.ok(204);
    assert_eq!(s.get("/v3/deleted/public-keys").await.ok(200), json!([]));
    assert_eq!(s.get("/v3/public-keys").await.ok(200), json!([]));
}

/// `ssh-keygen` into `dir/name` with `args`; the (private, public) texts.
fn keygen(dir: &std::path::Path, name: &str, args: &[&str]) -> (String, String) {
    let f = dir.join(name);
    let o = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "someone@site", "-f"])
        .arg(&f)
        .args(args)
        .output()
        .expect("ssh-keygen");
    assert!(o.status.success(), "ssh-keygen {args:?}: {o:?}");
    let private = std::fs::read_to_string(&f).unwrap();
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (private, public)
}

/// Only one well-formed OpenSSH public key is stored: every key type `ssh-keygen` makes (and a
/// certificate) is accepted verbatim; a private key (the forgotten `.pub`), garbage or two keys
/// get a 422 that does not repeat the input, and nothing is stored.
async fn only_openssh_public_keys(db: Db) {
    let s = start(db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut privates = vec![];
    for (name, args) in [
        ("ed25519", &["-t", "ed25519"][..]),
        ("rsa", &["-t", "rsa", "-b", "2048"]),
        ("ecdsa256", &["-t", "ecdsa", "-b", "256"]),
        ("ecdsa384", &["-t", "ecdsa", "-b", "384"]),
        ("ecdsa521", &["-t", "ecdsa", "-b", "521"]),
        ("rsa-pem", &["-t", "rsa", "-b", "2048", "-m", "PEM"]),
    ] {
        let (private, public) = keygen(dir.path(), name, args);
        let rec = s
            .post(
                "/v3/public-keys",
                &json!({"name": name, "public_key": public}),
            )
            .await
            .ok(201);
        assert_eq!(rec["public_key"], json!(public), "{name}: kept verbatim");
        privates.push((name, private));
    }
    // A certificate signed by a site CA.
    keygen(dir.path(), "ca", &["-t", "ed25519"]);
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(dir.path().join("ca"))
        .args(["-I", "admin", "-n", "root"])
        .arg(dir.path().join("ed25519.pub"))
        .status()
        .unwrap();
    assert!(st.success());
    let cert = std::fs::read_to_string(dir.path().join("ed25519-cert.pub")).unwrap();
    assert!(
        cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert}"
    );
    s.post(
        "/v3/public-keys",
        &json!({"name": "cert", "public_key": cert}),
    )
    .await
    .ok(201);
    let stored = s.get("/v3/public-keys").await.ok(200);

    let mut bad: Vec<(String, String)> = privates
        .into_iter()
        .map(|(n, p)| (format!("private {n}"), p))
        .collect();
    let (_, one) = keygen(dir.path(), "one", &["-t", "ed25519"]);
    let (_, two) = keygen(dir.path(), "two", &["-t", "ed25519"]);
    for (what, text) in [
        ("garbage", "x".to_string()),
        ("no blob", "ssh-ed25519".to_string()),
        ("short blob", "ssh-ed25519 AAAA someone@site".to_string()),
        ("not base64", "ssh-ed25519 !!!! someone@site".to_string()),
        ("wrong type", one.replacen("ssh-ed25519", "ssh-rsa", 1)),
        ("two keys", format!("{one}{two}")),
        ("options", format!("no-pty {one}")),
    ] {
        bad.push((what.to_string(), text));
    }
    for (what, text) in &bad {
        let r = s
            .send(
                "POST",
                "/v3/public-keys",
                Some(&serde_json::to_vec(&json!({"name": "k", "public_key": text})).unwrap()),
                Some("application/json"),
            )
            .await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let p = r.problem(422, true);
        assert!(p["errors"]["public_key"].is_array(), "{what}: {p}");
        for line in text.lines().filter(|l| l.len() > 8) {
            assert!(
                !body.contains(line),
                "{what}: the answer repeats the input: {body}"
            );
        }
        for piece in text.split_whitespace().filter(|w| w.len() > 16) {
            assert!(
                !body.contains(piece),
                "{what}: the answer repeats the input: {body}"
            );
        }
        if what.starts_with("private") {
            assert!(body.contains("private key"), "{what}: {body}");
        }
    }
    assert_eq!(
        s.get("/v3/public-keys").await.ok(200),
        stored,
        "nothing stored"
    );
}

both_backends!(
    create_get_list_delete,
    input_errors,
    v2_delete_all_is_hard_and_persists,
    v3_soft_delete_and_undelete,
    only_openssh_public_keys,
);

/// A purged record cannot be read back from the SQLite database file (`secure_delete`): after a
/// soft delete, a purge and a clean stop, no byte of it is left in `ims.db` (or its WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_records_leave_no_trace_in_the_database_file() {
    let mut s = start(Db::Sqlite).await;
    let marker = "purge-me-7f3a9c1e5b2d4068";
    let rec = s
        .post(
            "/v3/public-keys",
            &json!({"name": marker, "public_key": format!("{PUBLIC_KEY} {marker}")}),
        )
        .await
        .ok(201);
    let id = rec["id"].as_str().unwrap();
    s.delete(&format!("/v3/public-keys/{id}")).await.ok(204);
    s.delete(&format!("/v3/deleted/public-keys/{id}"))
        .await
        .ok(204);
    s.stop();
    for f in ["ims.db", "ims.db-wal"] {
        let Ok(bytes) = std::fs::read(s.data.path().join(f)) else {
            continue;
        };
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{f} still holds the purged record"
        );
    }
}
