//! Embedded mode end to end: `ims serve` runs the built-in S3 endpoint; STS hands out temporary
//! credentials for it; a real S3 client (boto3, as `cray artifacts` uses it: empty region, session
//! token, path-style) uploads an image's artifacts; the records API validates and manages them.
//!
//! Needs `IMS_TEST_PYTHON` (a Python with boto3; `scripts/test.sh` sets it) unless `IMS_TEST_SKIP_S3=1`.

use crate::common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;

const CLIENT: &str = r#"
import json, sys, boto3, botocore
c = json.loads(sys.argv[1])
op = sys.argv[2]
s3 = boto3.client("s3", aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                  aws_session_token=c.get("SessionToken") or None, endpoint_url=c["EndpointURL"], region_name="us-east-1",
                  config=botocore.config.Config(retries={"max_attempts": 1}))
try:
    if op == "buckets":
        print(json.dumps(sorted(b["Name"] for b in s3.list_buckets()["Buckets"])))
    elif op == "put":
        bucket, key, data, md5 = sys.argv[3:7]
        s3.put_object(Bucket=bucket, Key=key, Body=data.encode(), Metadata={"md5sum": md5})
        print(json.dumps({"ok": True}))
    elif op == "put_object":
        # `zeros:N` uploads N zero bytes.
        bucket, key, data, md5, ctype = sys.argv[3:8]
        body = bytes(int(data[6:])) if data.startswith("zeros:") else data.encode()
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"md5sum": md5}, ContentType=ctype)
        print(json.dumps({"ok": True}))
    elif op == "heads":
        bucket, keys = sys.argv[3], sys.argv[4:]
        out = {}
        for key in keys:
            try:
                r = s3.head_object(Bucket=bucket, Key=key)
                out[key] = {"etag": r["ETag"], "type": r.get("ContentType"), "meta": r["Metadata"],
                            "size": r["ContentLength"]}
            except botocore.exceptions.ClientError as e:
                out[key] = {"error": e.response["Error"]["Code"]}
        print(json.dumps(out))
    elif op == "get":
        bucket, key = sys.argv[3:5]
        r = s3.get_object(Bucket=bucket, Key=key)
        print(json.dumps({"body": r["Body"].read().decode(), "meta": r["Metadata"]}))
    elif op == "keys":
        bucket = sys.argv[3]
        r = s3.list_objects(Bucket=bucket, EncodingType="url")
        print(json.dumps(sorted(o["Key"] for o in r.get("Contents", []))))
except botocore.exceptions.ClientError as e:
    print(json.dumps({"error": e.response["Error"]["Code"]}))
"#;

/// One call of this file's boto3 client with `creds`; its JSON answer.
fn s3(py: &str, creds: &Value, args: &[&str]) -> Value {
    boto3(py, CLIENT, creds, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_and_builtin_s3_serve_the_artifact_store() {
    let Some(py) = test_python() else { return };
    let s = start(Db::Sqlite).await;

    // Credentials are generated on first start, private to the owner.
    let cred_file = s.data.path().join("s3-credentials.json");
    let mode = std::fs::metadata(&cred_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "credentials file mode");

    let sts = s.send("PUT", "/apis/sts/token", None, None).await.ok(200);
    let c = sts["Credentials"].clone();
    assert!(
        c["EndpointURL"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert!(!c["SessionToken"].as_str().unwrap().is_empty());
    assert!(is_wire_time(c["Expiration"].as_str().unwrap()));
    let buckets = s3(&py, &c, &["buckets"]);
    assert_eq!(buckets, json!(["boot-images", "ims"]));

    // Upload an image the way `cray artifacts create` does, then register it.
    let mut artifacts = vec![];
    for (name, mime) in [
        ("rootfs", "application/vnd.cray.image.rootfs.squashfs"),
        ("kernel", "application/vnd.cray.image.kernel"),
        ("initrd", "application/vnd.cray.image.initrd"),
    ] {
        let key = format!("up1/{name}");
        assert_eq!(
            s3(&py, &c, &["put", "boot-images", &key, name, "abc123"]),
            json!({"ok": true})
        );
        artifacts.push(json!({"link": {"path": format!("s3://boot-images/{key}"), "etag": "", "type": "s3"}, "type": mime, "md5": "abc123"}));
    }
    let manifest =
        json!({"version": "1.0", "created": "2026-01-01 00:00:00", "artifacts": artifacts})
            .to_string();
    s3(
        &py,
        &c,
        &["put", "boot-images", "up1/manifest.json", &manifest, "m"],
    );
    let link = json!({"path": "s3://boot-images/up1/manifest.json", "etag": "", "type": "s3"});
    let img = s
        .post("/v3/images", &json!({"name": "uploaded", "link": link}))
        .await
        .ok(201);
    let id = img["id"].as_str().unwrap();

    // What the records service wrote is visible through S3, and the other way round.
    let got = s3(&py, &c, &["get", "boot-images", "up1/rootfs"]);
    assert_eq!(got["body"], "rootfs");
    assert_eq!(got["meta"]["md5sum"], "abc123");
    s.delete(&format!("/v3/images/{id}")).await.ok(204);
    let keys = s3(&py, &c, &["keys", "boot-images"]);
    let keys: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(keys.contains(&"deleted/up1/rootfs"), "{keys:?}");
    assert!(
        keys.contains(&format!("deleted/{id}/deleted_manifest.json").as_str()),
        "{keys:?}"
    );
    assert!(!keys.contains(&"up1/rootfs"));

    // The endpoint honours only what it issued.
    let mut forged = c.clone();
    forged["SessionToken"] = json!("forged-token");
    assert_eq!(s3(&py, &forged, &["buckets"])["error"], "InvalidToken");
    let mut no_token = c.clone();
    no_token["SessionToken"] = json!("");
    assert_eq!(
        s3(
            &py,
            &no_token,
            &["get", "boot-images", "deleted/up1/rootfs"]
        )["error"],
        "AccessDenied"
    );
    let anon = reqwest::get(format!(
        "{}/boot-images/deleted/up1/rootfs",
        c["EndpointURL"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(anon.status().as_u16(), 403);

    // Credentials survive a restart (same long-lived key), and the restarted STS works.
    let before = std::fs::read(&cred_file).unwrap();
    let s = s.restart().await;
    assert_eq!(std::fs::read(&cred_file).unwrap(), before);
    let c2 = s.send("PUT", "/apis/sts/token", None, None).await.ok(200)["Credentials"].clone();
    assert_eq!(s3(&py, &c2, &["buckets"]), json!(["boot-images", "ims"]));
}

/// The endpoint's metadata file for an object (layout in `crates/s3/src/store.rs`).
fn meta_file(s: &Server, bucket: &str, key: &str) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let h = format!("{:x}", Sha256::digest(key.as_bytes()));
    s.data
        .path()
        .join("s3-state/meta")
        .join(bucket)
        .join(&h[..2])
        .join(format!("{h}.json"))
}

/// Every metadata file the endpoint keeps for a bucket.
fn meta_files(s: &Server, bucket: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.map(Result::unwrap) {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = vec![];
    walk(&s.data.path().join("s3-state/meta").join(bucket), &mut out);
    out
}

/// HEAD of each key: ETag, content type, user metadata and size, or the error code.
fn heads(py: &str, creds: &Value, bucket: &str, keys: &[String]) -> Value {
    let mut args = vec!["heads", bucket];
    args.extend(keys.iter().map(String::as_str));
    s3(py, creds, &args)
}

/// Uploads an image's artifacts `(name, content type, body, md5sum)` under `dir/` with boto3, and
/// a v1.0 manifest listing them; returns every key written, the manifest's last.
fn upload_image(py: &str, c: &Value, dir: &str, parts: &[(&str, &str, &str, &str)]) -> Vec<String> {
    let mut keys = vec![];
    let mut artifacts = vec![];
    for (name, mime, body, md5) in parts {
        let key = format!("{dir}/{name}");
        assert_eq!(
            s3(py, c, &["put_object", "boot-images", &key, body, md5, mime]),
            json!({"ok": true})
        );
        artifacts.push(json!({"link": {"path": format!("s3://boot-images/{key}"), "etag": "", "type": "s3"}, "type": mime, "md5": md5}));
        keys.push(key);
    }
    let manifest =
        json!({"version": "1.0", "created": "2026-01-01 00:00:00", "artifacts": artifacts})
            .to_string();
    let key = format!("{dir}/manifest.json");
    assert_eq!(
        s3(
            py,
            c,
            &[
                "put_object",
                "boot-images",
                &key,
                &manifest,
                "m",
                "application/json"
            ]
        ),
        json!({"ok": true})
    );
    keys.push(key);
    keys
}

/// Soft delete, undelete and permanent delete move and delete artifacts behind the endpoint's back
/// (renames and unlinks in the artifact root): the ETag, content type and user metadata (`md5sum`)
/// uploaded through S3 follow the moves, as they do with the original's S3 copies, and go with the
/// deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_metadata_follows_soft_delete_undelete_and_purge() {
    let Some(py) = test_python() else { return };
    let s = start(Db::Sqlite).await;
    let c = s.send("PUT", "/apis/sts/token", None, None).await.ok(200)["Credentials"].clone();

    // The rootfs is above the endpoint's 64 MiB lazy-MD5 limit: without its recorded ETag it
    // would get a different (non-MD5) one.
    let big = format!("zeros:{}", (64 << 20) + 1);
    let keys = upload_image(
        &py,
        &c,
        "up2",
        &[
            (
                "rootfs",
                "application/vnd.cray.image.rootfs.squashfs",
                &big,
                "md5-of-rootfs",
            ),
            (
                "kernel",
                "application/vnd.cray.image.kernel",
                "kernel",
                "md5-of-kernel",
            ),
            (
                "initrd",
                "application/vnd.cray.image.initrd",
                "initrd",
                "md5-of-initrd",
            ),
        ],
    );
    let link = json!({"path": "s3://boot-images/up2/manifest.json", "etag": "", "type": "s3"});
    let img = s
        .post("/v3/images", &json!({"name": "moved", "link": link}))
        .await
        .ok(201);
    let id = img["id"].as_str().unwrap();

    let before = heads(&py, &c, "boot-images", &keys);
    let rootfs = &before["up2/rootfs"];
    assert_eq!(rootfs["meta"], json!({"md5sum": "md5-of-rootfs"}));
    assert_eq!(rootfs["type"], "application/vnd.cray.image.rootfs.squashfs");
    let etag = rootfs["etag"].as_str().unwrap();
    assert!(etag.len() == 34 && !etag.contains('-'), "an MD5: {etag}");
    for k in &keys {
        assert!(before[k]["meta"]["md5sum"].is_string(), "{k}: {before}");
        assert!(meta_file(&s, "boot-images", k).is_file(), "{k}");
    }
    let deleted: Vec<String> = keys.iter().map(|k| format!("deleted/{k}")).collect();

    // Soft delete: the objects move under deleted/ with their metadata.
    s.delete(&format!("/v3/images/{id}")).await.ok(204);
    let after = heads(&py, &c, "boot-images", &deleted);
    let gone = heads(&py, &c, "boot-images", &keys);
    for (k, d) in keys.iter().zip(&deleted) {
        assert_eq!(after[d], before[k], "{d}");
        assert_eq!(gone[k], json!({"error": "404"}), "{k}");
        assert!(!meta_file(&s, "boot-images", k).exists(), "{k}");
    }

    // Undelete: back at the original keys, still the same.
    s.patch(
        &format!("/v3/deleted/images/{id}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    let back = heads(&py, &c, "boot-images", &keys);
    for (k, d) in keys.iter().zip(&deleted) {
        assert_eq!(back[k], before[k], "{k}");
        assert!(!meta_file(&s, "boot-images", d).exists(), "{d}");
    }

    // Permanent delete: the objects and their metadata are gone.
    s.delete(&format!("/v3/images/{id}")).await.ok(204);
    s.delete(&format!("/v3/deleted/images/{id}")).await.ok(204);
    let purged = heads(&py, &c, "boot-images", &deleted);
    for d in &deleted {
        assert_eq!(purged[d], json!({"error": "404"}), "{d}");
    }
    assert_eq!(
        meta_files(&s, "boot-images"),
        Vec::<std::path::PathBuf>::new()
    );

    // v2 cascade delete too.
    upload_image(
        &py,
        &c,
        "up3",
        &[
            (
                "rootfs",
                "application/vnd.cray.image.rootfs.squashfs",
                "rootfs",
                "m5",
            ),
            (
                "kernel",
                "application/vnd.cray.image.kernel",
                "kernel",
                "m5",
            ),
        ],
    );
    let link = json!({"path": "s3://boot-images/up3/manifest.json", "etag": "", "type": "s3"});
    let img = s
        .post("/v2/images", &json!({"name": "cascade", "link": link}))
        .await
        .ok(201);
    assert_eq!(meta_files(&s, "boot-images").len(), 3);
    s.delete(&format!("/v2/images/{}", img["id"].as_str().unwrap()))
        .await
        .ok(204);
    assert_eq!(
        meta_files(&s, "boot-images"),
        Vec::<std::path::PathBuf>::new()
    );
}
