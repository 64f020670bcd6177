//! Images and deleted images over HTTP (reference §3.3, §3.5, §4.1, §4.3, §4.5, §5.2–§5.4,
//! §7.2 test_v2/v3_images and test_v3_deleted_images, §8).
//!
//! Manifests and artifacts live in the server's local artifact store
//! (`<data>/artifacts/<bucket>/<key>`), so every S3 effect (HEAD, GET, delete, move under `deleted/`,
//! the written `deleted_manifest.json`) is checked on the files themselves.

use crate::common::*;
use serde_json::{Value, json};

const PREFIXES: &[&str] = &[
    "",
    "/v2",
    "/v3",
    "/apis/ims",
    "/apis/ims/v2",
    "/apis/ims/v3",
];
const V2_PREFIXES: &[&str] = &["", "/v2", "/apis/ims", "/apis/ims/v2"];
const V3_PREFIXES: &[&str] = &["/v3", "/apis/ims/v3"];

const IMAGE_KEYS: &[&str] = &["arch", "created", "id", "link", "metadata", "name"];

const ROOTFS: &str = "application/vnd.cray.image.rootfs.squashfs";
const KERNEL: &str = "application/vnd.cray.image.kernel";
const INITRD: &str = "application/vnd.cray.image.initrd";
const MANIFEST: &str = "application/vnd.cray.image.manifest";
const MD5: &str = "0123456789abcdef0123456789abcdef";
/// The three artifacts `put_image_artifacts` writes, in manifest order.
const STD_ARTIFACTS: &[(&str, &str)] =
    &[("rootfs", ROOTFS), ("kernel", KERNEL), ("initrd", INITRD)];

fn with(mut v: Value, k: &str, x: Value) -> Value {
    v[k] = x;
    v
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn link(bucket: &str, key: &str) -> Value {
    json!({"path": format!("s3://{bucket}/{key}"), "etag": "", "type": "s3"})
}

/// Stores an artifact and returns its manifest entry.
fn art(s: &Server, bucket: &str, key: &str, mime: &str) -> Value {
    s.put_artifact(bucket, key, format!("{mime} at {key}").as_bytes());
    json!({"link": link(bucket, key), "type": mime, "md5": MD5})
}

/// Stores a manifest document at `s3://<bucket>/<key>` and returns the link to it.
fn put_manifest(s: &Server, bucket: &str, key: &str, v: &Value) -> Value {
    s.put_artifact(bucket, key, &serde_json::to_vec(v).unwrap());
    link(bucket, key)
}

fn manifest_of(artifacts: Vec<Value>) -> Value {
    json!({"version": "1.0", "created": "2024-01-01 00:00:00", "artifacts": artifacts})
}

/// Asserts the "no input" 400 of §1.4.
fn no_input(r: &Resp) {
    let p = r.problem(400, false);
    assert_eq!(p["title"], "Bad Request");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("No input provided."),
        "{p}"
    );
}

/// Asserts a record 404 (not the unknown-route 404).
fn not_found(r: &Resp) {
    let p = r.problem(404, false);
    assert_eq!(p["title"], "Not Found");
    assert_eq!(
        p["detail"],
        "Requested resource does not exist. Re-run request with valid ID."
    );
}

/// Asserts the top-level keys of a response body appear in sorted order (Flask `jsonify`).
fn sorted_on_the_wire(r: &Resp, keys: &[&str]) {
    let text = String::from_utf8_lossy(&r.body);
    let pos: Vec<usize> = keys
        .iter()
        .map(|k| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
}

/// Unknown methods are 405 and trailing slashes 404, as problems.
async fn routing_errors(s: &Server, collection: &str) {
    for p in ["", "/v2", "/v3", "/apis/ims", "/apis/ims/v3"] {
        let c = format!("{p}/{collection}");
        for (m, url) in [
            ("PUT", format!("{c}/x")),
            ("POST", format!("{c}/x")),
            ("PATCH", c.clone()),
            ("PUT", c.clone()),
        ] {
            let r = s
                .send(m, &url, Some(b"{\"a\": 1}"), Some("application/json"))
                .await;
            assert_eq!(
                r.problem(405, false)["title"],
                "Method Not Allowed",
                "{m} {url}"
            );
        }
        let r = s.get(&format!("{c}/")).await;
        let pr = r.problem(404, false);
        assert!(
            pr["detail"]
                .as_str()
                .unwrap()
                .starts_with("The requested URL was not found"),
            "{pr}"
        );
    }
    for p in ["/v3", "/apis/ims/v3"] {
        let c = format!("{p}/deleted/{collection}");
        for (m, url) in [
            ("POST", c.clone()),
            ("PUT", format!("{c}/x")),
            ("POST", format!("{c}/x")),
        ] {
            s.send(m, &url, Some(b"{\"a\": 1}"), Some("application/json"))
                .await
                .problem(405, false);
        }
        s.get(&format!("{c}/")).await.problem(404, false);
    }
}

async fn count(s: &Server, path: &str) -> usize {
    s.get(path).await.ok(200).as_array().unwrap().len()
}

fn names_field(r: &Resp, field: &str, what: &Value) {
    let p = r.problem(422, true);
    assert_eq!(p["title"], "Unprocessable Entity");
    assert!(
        p["errors"].get(field).is_some(),
        "{what}: expected errors.{field}, got {p}"
    );
}

/// Asserts the standard image directory `dir` is where it was created (`present`) or not.
fn assert_std_files(s: &Server, dir: &str, present: bool) {
    for (name, _) in STD_ARTIFACTS {
        assert_eq!(
            s.has_artifact("boot-images", &format!("{dir}/{name}")),
            present,
            "{dir}/{name}"
        );
    }
    assert_eq!(
        s.has_artifact("boot-images", &format!("{dir}/manifest.json")),
        present,
        "{dir}/manifest.json"
    );
}

/// The deleted manifest of image `id`, checked for the original's shape: version "1.0", created
/// `%Y-%m-%d %H:%M:%S` (the record's `deleted`, to the second), every moved artifact with its
/// `type`, `md5` and a `{etag, path, type}` link under `deleted/`, then the moved manifest.
fn check_deleted_manifest(
    s: &Server,
    id: &str,
    deleted: &Value,
    manifest_bucket: &str,
    manifest_key: &str,
    moved: &[(&str, &str, &str)],
) -> Value {
    let dm: Value = serde_json::from_slice(&s.read_artifact(
        "boot-images",
        &format!("deleted/{id}/deleted_manifest.json"),
    ))
    .unwrap();
    assert_eq!(
        keys(&dm),
        sorted(&["artifacts", "created", "version"]),
        "{dm}"
    );
    assert_eq!(dm["version"], "1.0");
    let created = dm["created"].as_str().unwrap();
    let b = created.as_bytes();
    assert!(
        created.len() == 19 && b[4] == b'-' && b[7] == b'-' && b[10] == b' ' && b[13] == b':',
        "{created}"
    );
    assert_eq!(
        created,
        deleted.as_str().unwrap()[..19].replace('T', " "),
        "created = the deletion time"
    );
    let arts = dm["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), moved.len() + 1, "{dm}");
    for (a, (bucket, key, mime)) in arts.iter().zip(moved) {
        assert_eq!(a["type"], *mime, "{dm}");
        assert_eq!(keys(&a["link"]), sorted(&["etag", "path", "type"]));
        assert_eq!(a["link"]["path"], format!("s3://{bucket}/deleted/{key}"));
        assert_eq!(a["link"]["type"], "s3");
        assert!(a["link"]["etag"].is_string());
        assert!(s.has_artifact(bucket, &format!("deleted/{key}")), "{key}");
        assert!(!s.has_artifact(bucket, key), "{key} moved");
    }
    let last = arts.last().unwrap();
    assert_eq!(keys(last), sorted(&["link", "type"]), "{last}");
    assert_eq!(last["type"], MANIFEST);
    assert_eq!(keys(&last["link"]), sorted(&["etag", "path", "type"]));
    assert_eq!(
        last["link"]["path"],
        format!("s3://{manifest_bucket}/deleted/{manifest_key}")
    );
    assert_eq!(last["link"]["type"], "s3");
    assert!(s.has_artifact(manifest_bucket, &format!("deleted/{manifest_key}")));
    assert!(!s.has_artifact(manifest_bucket, manifest_key));
    dm
}

fn std_moved(dir: &str) -> Vec<(&'static str, String, &'static str)> {
    STD_ARTIFACTS
        .iter()
        .map(|(n, m)| ("boot-images", format!("{dir}/{n}"), *m))
        .collect()
}

type Moved<'a> = (&'static str, &'a str, &'static str);

fn as_refs<'a>(v: &'a [(&'static str, String, &'static str)]) -> Vec<Moved<'a>> {
    v.iter().map(|(b, k, m)| (*b, k.as_str(), *m)).collect()
}

/// POST 201 with exactly 6 keys and the defaults, on every family; GET one and all.
async fn post_keys_defaults_get(db: Db) {
    let s = start(db).await;
    for (i, p) in PREFIXES.iter().enumerate() {
        let r = s
            .post(&format!("{p}/images"), &json!({"name": "img"}))
            .await;
        sorted_on_the_wire(&r, IMAGE_KEYS);
        let rec = r.ok(201);
        assert_eq!(keys(&rec), sorted(IMAGE_KEYS), "{p}: {rec}");
        assert!(is_uuid4(rec["id"].as_str().unwrap()));
        assert!(is_wire_time(rec["created"].as_str().unwrap()));
        assert_eq!(rec["name"], "img");
        assert_eq!(rec["link"], Value::Null);
        assert_eq!(rec["arch"], "x86_64");
        assert_eq!(rec["metadata"], json!({}));
        let id = id_of(&rec);
        let r = s.get(&format!("{p}/images/{id}")).await;
        sorted_on_the_wire(&r, IMAGE_KEYS);
        assert_eq!(r.ok(200), rec);
        assert!(
            s.get(&format!("{p}/images"))
                .await
                .ok(200)
                .as_array()
                .unwrap()
                .contains(&rec)
        );
        // With a valid manifest.
        let l = s.put_image_artifacts(&format!("dir{i}"));
        let rec = s
            .post(
                &format!("{p}/images"),
                &json!({"name": "linked", "link": l, "arch": "aarch64", "metadata": {"a": "b"}}),
            )
            .await
            .ok(201);
        assert_eq!(keys(&rec), sorted(IMAGE_KEYS));
        assert_eq!(rec["link"], l);
        assert_eq!(rec["arch"], "aarch64");
        assert_eq!(rec["metadata"], json!({"a": "b"}));
        assert_eq!(
            s.get(&format!("{p}/images/{}", id_of(&rec))).await.ok(200),
            rec
        );
    }
    assert_eq!(count(&s, "/images").await, 2 * PREFIXES.len());
    // link null → null; omitted etag → "".
    let rec = s
        .post("/v2/images", &json!({"name": "n", "link": null}))
        .await
        .ok(201);
    assert_eq!(rec["link"], Value::Null);
    s.put_image_artifacts("noetag");
    let rec = s
        .post(
            "/v3/images",
            &json!({"name": "n", "link": {"path": "s3://boot-images/noetag/manifest.json", "type": "s3"}}),
        )
        .await
        .ok(201);
    assert_eq!(rec["link"], link("boot-images", "noetag/manifest.json"));
    // The scheme is not checked; a given etag is kept.
    s.put_image_artifacts("http");
    let l = json!({"path": "http://boot-images/http/manifest.json", "etag": "abc", "type": "s3"});
    let rec = s
        .post("/images", &json!({"name": "n", "link": l}))
        .await
        .ok(201);
    assert_eq!(rec["link"], l);
}

/// Extension: POST may carry the new image's `id` (upper-case is normalised); an id already used by
/// an image or a soft-deleted image is a 409 that changes nothing; a malformed one is a 422.
async fn post_with_client_id(db: Db) {
    let s = start(db).await;
    let id = "5b0a1d6e-3c9f-4f7e-9a41-0f2d8c3b7e11";
    let l = s.put_image_artifacts(id);
    let rec = s
        .post(
            "/v3/images",
            &json!({"id": id.to_uppercase(), "name": "chosen", "link": l}),
        )
        .await
        .ok(201);
    assert_eq!(rec["id"], id);
    assert_eq!(rec["link"], l);
    assert_eq!(s.get(&format!("/v3/images/{id}")).await.ok(200), rec);
    // Taken by a live image.
    let p = s
        .post("/images", &json!({"id": id, "name": "again"}))
        .await
        .problem(409, false);
    assert!(p["detail"].as_str().unwrap().contains(id), "{p}");
    // Taken by a soft-deleted image: undelete must stay possible.
    s.delete(&format!("/v3/images/{id}")).await.ok(204);
    s.post("/v2/images", &json!({"id": id, "name": "again"}))
        .await
        .problem(409, false);
    assert_eq!(count(&s, "/images").await, 0);
    s.patch("/v3/deleted/images", &json!({"operation": "undelete"}))
        .await
        .ok(204);
    let back = s.get(&format!("/v3/images/{id}")).await.ok(200);
    assert_eq!(
        (&back["name"], &back["created"]),
        (&rec["name"], &rec["created"])
    );
    for bad in [json!("not-a-uuid"), json!(7), json!(null)] {
        let r = s.post("/v3/images", &json!({"id": bad, "name": "x"})).await;
        names_field(&r, "id", &bad);
    }
    assert_eq!(count(&s, "/images").await, 1);
}

/// `metadata` on POST: the `{key, value}` form becomes a one-entry map; a plain map is kept;
/// anything else is a 422 naming `metadata`.
async fn post_metadata_forms(db: Db) {
    let s = start(db).await;
    for (m, expect) in [
        (json!({"key": "k", "value": "v"}), json!({"k": "v"})),
        (json!({"key": "k"}), json!({"k": ""})),
        (json!({"key": "k", "value": null}), json!({"k": ""})),
        (json!({"key": "", "value": "v"}), json!({"": "v"})),
        (json!({"a": "1", "b": "2"}), json!({"a": "1", "b": "2"})),
        (json!({"value": "v"}), json!({"value": "v"})),
        (json!({}), json!({})),
    ] {
        for p in ["/v2", "/v3", ""] {
            let rec = s
                .post(&format!("{p}/images"), &json!({"name": "m", "metadata": m}))
                .await
                .ok(201);
            assert_eq!(rec["metadata"], expect, "{m}");
            assert_eq!(
                s.get(&format!("/v2/images/{}", id_of(&rec))).await.ok(200)["metadata"],
                expect
            );
        }
    }
    let n = count(&s, "/v2/images").await;
    for m in [
        json!({"key": 1, "value": "v"}),
        json!({"key": null}),
        json!({"key": "k", "value": 1}),
        json!({"key": "k", "value": ["v"]}),
        json!({"a": 1}),
        json!({"a": null}),
        json!({"a": {"b": "c"}}),
        Value::Null,
        json!([]),
        json!([{"key": "k", "value": "v"}]),
        json!("k=v"),
        json!(1),
    ] {
        let b = json!({"name": "m", "metadata": m});
        names_field(&s.post("/v2/images", &b).await, "metadata", &b);
        names_field(&s.post("/v3/images", &b).await, "metadata", &b);
    }
    assert_eq!(count(&s, "/v2/images").await, n, "nothing created");
}

/// No input → 400; missing, ill-typed, null, blank and unknown fields → 422 naming the field.
async fn post_input_errors(db: Db) {
    let s = start(db).await;
    for p in PREFIXES {
        let url = format!("{p}/images");
        for b in [json!({}), json!([]), Value::Null] {
            no_input(&s.post(&url, &b).await);
        }
        no_input(&s.send("POST", &url, None, None).await);
    }
    for b in [json!("x"), json!([{"name": "x"}])] {
        s.post("/v2/images", &b).await.problem(422, true);
    }
    s.send(
        "POST",
        "/v2/images",
        Some(b"{\"name\""),
        Some("application/json"),
    )
    .await
    .problem(400, false);
    s.send(
        "POST",
        "/v2/images",
        Some(b"{\"name\": \"x\"}"),
        Some("text/plain"),
    )
    .await
    .problem(415, false);
    let cases = [
        (json!({"arch": "x86_64"}), "name"),
        (json!({"name": 1}), "name"),
        (json!({"name": null}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": " \t"}), "name"),
        (json!({"name": ["x"]}), "name"),
        (json!({"name": "x", "arch": "ppc64le"}), "arch"),
        (json!({"name": "x", "arch": "AARCH64"}), "arch"),
        (json!({"name": "x", "arch": null}), "arch"),
        (json!({"name": "x", "arch": 1}), "arch"),
        (
            json!({"name": "x", "link": "s3://boot-images/m.json"}),
            "link",
        ),
        (json!({"name": "x", "link": {"type": "s3"}}), "link"),
        (
            json!({"name": "x", "link": {"path": "", "type": "s3"}}),
            "link",
        ),
        (
            json!({"name": "x", "link": {"path": "s3://boot-images/m.json"}}),
            "link",
        ),
        (
            json!({"name": "x", "link": {"path": "s3://boot-images/m.json", "type": "http"}}),
            "link",
        ),
        (
            json!({"name": "x", "link": {"path": "s3://boot-images/m.json", "type": "s3", "x": 1}}),
            "link",
        ),
        // (`id` is accepted: an extension, see post_with_client_id.)
        (
            json!({"name": "x", "created": "2020-01-01T00:00:00"}),
            "created",
        ),
        (json!({"name": "x", "foo": "bar"}), "foo"),
        (json!({"name": "x", "require_dkms": true}), "require_dkms"),
    ];
    for (b, f) in &cases {
        for p in PREFIXES {
            names_field(&s.post(&format!("{p}/images"), b).await, f, b);
        }
    }
    let p = s
        .post("/v2/images", &json!({"name": "", "arch": "x", "zzz": 1}))
        .await
        .problem(422, true);
    for f in ["name", "arch", "zzz"] {
        assert!(p["errors"].get(f).is_some(), "{f}: {p}");
    }
    assert_eq!(
        s.get("/v2/images").await.ok(200),
        json!([]),
        "nothing created"
    );
}

/// Builds every bad-manifest case of §5.3 in the store: (link, expected status, description).
fn bad_manifests(s: &Server) -> Vec<(Value, u16, &'static str)> {
    let mut out = vec![];
    let mut n = 0;
    let mut next = |s: &Server, v: Option<&Value>, raw: Option<&[u8]>| {
        n += 1;
        let key = format!("bad{n}/manifest.json");
        if let Some(v) = v {
            put_manifest(s, "boot-images", &key, v)
        } else {
            if let Some(raw) = raw {
                s.put_artifact("boot-images", &key, raw);
            }
            link("boot-images", &key)
        }
    };
    let rootfs = art(s, "boot-images", "good/rootfs", ROOTFS);
    let kernel = art(s, "boot-images", "good/kernel", KERNEL);
    let good = |extra: Vec<Value>| {
        let mut a = vec![rootfs.clone(), kernel.clone()];
        a.extend(extra);
        a
    };
    // Manifest object missing.
    out.push((next(s, None, None), 422, "manifest missing"));
    // Too large: ≥ 1 MiB → 400 (exactly 1 MiB is too large).
    let mut big = serde_json::to_vec(&manifest_of(good(vec![]))).unwrap();
    big.resize(1_048_576, b' ');
    out.push((next(s, None, Some(&big)), 400, "manifest of exactly 1 MiB"));
    big.resize(3_000_000, b' ');
    out.push((next(s, None, Some(&big)), 400, "manifest of 3 MB"));
    // Not JSON / not UTF-8 / not an object.
    out.push((next(s, None, Some(b"not json")), 422, "not JSON"));
    out.push((
        next(s, None, Some(b"{\"version\": \"1.0\", ")),
        422,
        "truncated JSON",
    ));
    out.push((next(s, None, Some(b"\xff\xfe{}")), 422, "not UTF-8"));
    out.push((next(s, None, Some(b"")), 422, "empty file"));
    out.push((next(s, Some(&json!([])), None), 422, "a JSON list"));
    // Version.
    let mut m = manifest_of(good(vec![]));
    m.as_object_mut().unwrap().remove("version");
    out.push((next(s, Some(&m), None), 422, "no version"));
    for v in [json!("2.0"), json!("1"), json!(1.0), Value::Null, json!("")] {
        let m = with(manifest_of(good(vec![])), "version", v);
        out.push((next(s, Some(&m), None), 422, "bad version"));
    }
    // Artifacts.
    let mut m = manifest_of(vec![]);
    m.as_object_mut().unwrap().remove("artifacts");
    out.push((next(s, Some(&m), None), 422, "no artifacts"));
    for a in [json!({}), json!("rootfs"), Value::Null, json!(1)] {
        let m = with(manifest_of(vec![]), "artifacts", a);
        out.push((next(s, Some(&m), None), 422, "artifacts not a list"));
    }
    let bad_items = [
        (json!("rootfs"), "item not an object"),
        (json!({"type": KERNEL, "md5": MD5}), "item without link"),
        (
            json!({"type": KERNEL, "link": "s3://boot-images/good/kernel"}),
            "link not an object",
        ),
        (
            json!({"type": KERNEL, "link": {"path": "s3://boot-images/good/kernel"}}),
            "link without type",
        ),
        (
            json!({"type": KERNEL, "link": {"path": "s3://boot-images/good/kernel", "type": "http"}}),
            "link type not s3",
        ),
        (
            json!({"type": KERNEL, "link": {"type": "s3"}}),
            "link without path",
        ),
        (
            json!({"type": KERNEL, "link": {"path": "", "type": "s3"}}),
            "blank link path",
        ),
        (
            json!({"type": KERNEL, "link": {"path": "s3://boot-images/good/missing", "type": "s3"}}),
            "artifact object missing",
        ),
        (
            json!({"type": KERNEL, "link": {"path": "s3://boot-images/../etc/passwd", "type": "s3"}}),
            "artifact path escapes its bucket",
        ),
        (
            json!({"type": KERNEL, "link": {"path": "s3://nobucket/x", "type": "s3"}}),
            "artifact bucket missing",
        ),
        (
            json!({"link": link("boot-images", "good/kernel")}),
            "artifact without type",
        ),
    ];
    for (item, what) in bad_items {
        let m = manifest_of(good(vec![item]));
        out.push((next(s, Some(&m), None), 422, what));
    }
    // The rootfs object itself missing.
    let m = manifest_of(vec![
        json!({"link": link("boot-images", "gone/rootfs"), "type": ROOTFS, "md5": MD5}),
        kernel.clone(),
    ]);
    out.push((next(s, Some(&m), None), 422, "rootfs object missing"));
    // Rootfs count.
    let m = manifest_of(vec![kernel.clone()]);
    out.push((next(s, Some(&m), None), 400, "no rootfs"));
    let m = manifest_of(vec![]);
    out.push((next(s, Some(&m), None), 400, "empty artifacts list"));
    let m = manifest_of(good(vec![art(s, "boot-images", "good/rootfs2", ROOTFS)]));
    out.push((next(s, Some(&m), None), 400, "two rootfs"));
    out
}

/// Image manifest validation on POST (§5.3): 400 for size and rootfs count, 422 for everything
/// else, never an `errors` key; nothing is created.
async fn post_manifest_validation(db: Db) {
    let s = start(db).await;
    let cases = bad_manifests(&s);
    for (l, status, what) in &cases {
        for p in PREFIXES {
            let r = s
                .post(&format!("{p}/images"), &json!({"name": "bad", "link": l}))
                .await;
            assert_eq!(
                r.status,
                *status,
                "{p} {what}: {}",
                String::from_utf8_lossy(&r.body)
            );
            r.problem(*status, false);
        }
    }
    assert_eq!(
        s.get("/v2/images").await.ok(200),
        json!([]),
        "nothing created"
    );

    // Just under 1 MiB is fine; a rootfs type with a suffix counts (prefix match); extra artifact
    // types and extra keys are accepted; artifacts may live in other buckets.
    let mut doc = serde_json::to_vec(&manifest_of(vec![
        art(&s, "boot-images", "ok/rootfs", ROOTFS),
        art(&s, "ims", "ok/kernel", KERNEL),
    ]))
    .unwrap();
    doc.resize(1_048_575, b' ');
    s.put_artifact("boot-images", "ok/manifest.json", &doc);
    s.post(
        "/v2/images",
        &json!({"name": "ok", "link": link("boot-images", "ok/manifest.json")}),
    )
    .await
    .ok(201);
    let m = manifest_of(vec![
        art(
            &s,
            "boot-images",
            "ok2/rootfs",
            &format!("{ROOTFS}; compression=xz"),
        ),
        art(
            &s,
            "boot-images",
            "ok2/params",
            "application/vnd.cray.image.parameters.boot",
        ),
        with(
            art(&s, "boot-images", "ok2/other", "application/x-something"),
            "sha256",
            json!("abc"),
        ),
    ]);
    let l = put_manifest(
        &s,
        "boot-images",
        "ok2/manifest.json",
        &with(m, "extra", json!(1)),
    );
    s.post("/v3/images", &json!({"name": "ok2", "link": l}))
        .await
        .ok(201);
    // A manifest stored in another bucket.
    let m = manifest_of(vec![art(&s, "ims", "ok3/rootfs", ROOTFS)]);
    let l = put_manifest(&s, "ims", "ok3/manifest.json", &m);
    s.post("/v2/images", &json!({"name": "ok3", "link": l}))
        .await
        .ok(201);
}

/// The manifest size limit follows `MAX_IMAGE_MANIFEST_SIZE_BYTES`.
async fn manifest_size_limit_is_configurable(db: Db) {
    let s = builder(db)
        .await
        .env("MAX_IMAGE_MANIFEST_SIZE_BYTES", "400")
        .start()
        .await;
    let l = s.put_image_artifacts("big");
    assert!(s.read_artifact("boot-images", "big/manifest.json").len() >= 400);
    s.post("/v2/images", &json!({"name": "b", "link": l}))
        .await
        .problem(400, false);
    let m = manifest_of(vec![art(&s, "boot-images", "small/r", ROOTFS)]);
    let l = put_manifest(&s, "boot-images", "small/m.json", &m);
    s.post("/v2/images", &json!({"name": "s", "link": l}))
        .await
        .ok(201);
}

/// The manifest path must be unique among active images (422); deleted or removed images do not
/// count.
async fn duplicate_manifest_path(db: Db) {
    let s = start(db).await;
    let l = s.put_image_artifacts("dup");
    let first = s
        .post("/v2/images", &json!({"name": "a", "link": l}))
        .await
        .ok(201);
    for p in PREFIXES {
        for etag in ["", "x"] {
            let b = json!({"name": "b", "link": with(l.clone(), "etag", json!(etag))});
            names_field(&s.post(&format!("{p}/images"), &b).await, "link", &b);
        }
    }
    // PATCH of a link-less image to the same manifest: 422 too.
    let other = s.post("/v2/images", &json!({"name": "c"})).await.ok(201);
    let b = json!({"link": l});
    names_field(
        &s.patch(&format!("/v2/images/{}", id_of(&other)), &b).await,
        "link",
        &b,
    );
    assert_eq!(
        s.get(&format!("/v2/images/{}", id_of(&other)))
            .await
            .ok(200)["link"],
        Value::Null
    );
    assert_eq!(count(&s, "/v2/images").await, 2);
    // After a v2 delete without cascade the manifest is free again.
    s.delete(&format!("/v2/images/{}?cascade=false", id_of(&first)))
        .await
        .ok(204);
    assert_std_files(&s, "dup", true);
    s.patch(&format!("/v2/images/{}", id_of(&other)), &b)
        .await
        .ok(200);
}

const ID_A: &str = "1c5d1b4e-5f7a-4c39-9b3e-0a1b2c3d4e5f";
const ID_B: &str = "2d6e2c5f-6a8b-4d4a-8c4f-1b2c3d4e5f60";
const ID_C: &str = "3e7f3d6a-7b9c-4e5b-9d5a-2c3d4e5f6071";
const ID_D: &str = "4f8a4e7b-8cad-4f6c-ae6b-3d4e5f607182";

/// GET of seeded images (link, link null, link absent → null; legacy records gain the defaults;
/// chosen ids and timestamps echoed) and 404s on every single-record route.
async fn seeded_get_and_404(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v2.1_images.json",
            json!([
                {"id": ID_A, "created": "2025-04-28T14:03:11", "name": "linked", "arch": "aarch64",
                 "metadata": {"k": "v"},
                 "link": {"path": "s3://boot-images/a/manifest.json", "etag": "e", "type": "s3"}},
                {"id": ID_B, "created": "2025-04-28T14:03:12.5", "name": "null", "link": null},
                {"id": ID_C, "created": "2025-04-28T14:03:13+00:00", "name": "absent", "metadata": null},
            ]),
        )
        .seed(
            "v3.1_deleted_images.json",
            json!([{"id": ID_D, "created": "2020-01-01T00:00:00", "deleted": "2020-01-02T00:00:00",
                "name": "gone", "link": null}]),
        )
        .start()
        .await;
    for p in PREFIXES {
        let a = s.get(&format!("{p}/images/{ID_A}")).await.ok(200);
        assert_eq!(keys(&a), sorted(IMAGE_KEYS));
        assert_eq!(a["created"], "2025-04-28T14:03:11.000000+00:00");
        assert_eq!(a["arch"], "aarch64");
        assert_eq!(a["metadata"], json!({"k": "v"}));
        assert_eq!(
            a["link"],
            json!({"path": "s3://boot-images/a/manifest.json", "etag": "e", "type": "s3"})
        );
        let b = s.get(&format!("{p}/images/{ID_B}")).await.ok(200);
        assert_eq!(keys(&b), sorted(IMAGE_KEYS));
        assert_eq!(b["created"], "2025-04-28T14:03:12.500000+00:00");
        assert_eq!(b["link"], Value::Null);
        assert_eq!(b["arch"], "x86_64");
        assert_eq!(b["metadata"], json!({}));
        let c = s.get(&format!("{p}/images/{ID_C}")).await.ok(200);
        assert_eq!(keys(&c), sorted(IMAGE_KEYS));
        assert_eq!(c["link"], Value::Null);
        assert_eq!(c["metadata"], json!({}));
        assert_eq!(
            s.get(&format!("{p}/images")).await.ok(200),
            json!([a, b, c]),
            "oldest first"
        );
        // 404s: unknown, upper-case, and a deleted record's id.
        for bad in ["nope".to_string(), ID_A.to_uppercase(), ID_D.to_string()] {
            let url = format!("{p}/images/{bad}");
            not_found(&s.get(&url).await);
            not_found(&s.patch(&url, &json!({"arch": "x86_64"})).await);
            not_found(&s.delete(&url).await);
            not_found(&s.delete(&format!("{url}?cascade=false")).await);
        }
    }
    for p in V3_PREFIXES {
        let d = s.get(&format!("{p}/deleted/images/{ID_D}")).await.ok(200);
        let mut k = IMAGE_KEYS.to_vec();
        k.push("deleted");
        assert_eq!(keys(&d), sorted(&k));
        assert_eq!(d["deleted"], "2020-01-02T00:00:00.000000+00:00");
        assert_eq!(d["arch"], "x86_64");
        assert_eq!(d["metadata"], json!({}));
        assert_eq!(
            s.get(&format!("{p}/deleted/images")).await.ok(200),
            json!([d])
        );
        for bad in ["nope", ID_A] {
            let url = format!("{p}/deleted/images/{bad}");
            not_found(&s.get(&url).await);
            not_found(&s.delete(&url).await);
            not_found(&s.patch(&url, &json!({"operation": "undelete"})).await);
            not_found(&s.patch(&url, &json!({})).await);
        }
    }
    for p in V2_PREFIXES {
        s.get(&format!("{p}/deleted/images"))
            .await
            .problem(404, false);
        s.get(&format!("{p}/deleted/images/{ID_D}"))
            .await
            .problem(404, false);
    }
    routing_errors(&s, "images").await;
    assert_eq!(count(&s, "/v3/images").await, 3, "404s changed nothing");
    assert_eq!(count(&s, "/v3/deleted/images").await, 1);
}

/// PATCH link (§3.3): link-less → full validation then set; same → 200; different → 409; every
/// manifest error of POST applies.
async fn patch_link(db: Db) {
    let s = start(db).await;
    for (i, p) in PREFIXES.iter().enumerate() {
        let rec = s
            .post(
                &format!("{p}/images"),
                &json!({"name": "i", "metadata": {"a": "b"}}),
            )
            .await
            .ok(201);
        let url = format!("{p}/images/{}", id_of(&rec));
        let dir = format!("p{i}");
        let l = link("boot-images", &format!("{dir}/manifest.json"));
        s.patch(&url, &json!({"link": l})).await.problem(422, false);
        assert_eq!(s.get(&url).await.ok(200), rec);
        assert_eq!(s.put_image_artifacts(&dir), l);
        let got = s.patch(&url, &json!({"link": l})).await.ok(200);
        assert_eq!(keys(&got), sorted(IMAGE_KEYS));
        assert_eq!(got["link"], l);
        assert_eq!(
            with(got.clone(), "link", Value::Null),
            rec,
            "only the link changed"
        );
        assert_eq!(s.get(&url).await.ok(200), got);
        assert_eq!(
            s.patch(&url, &json!({"link": l})).await.ok(200),
            got,
            "same link"
        );
        s.patch(&url, &json!({"link": with(l.clone(), "etag", json!("x"))}))
            .await
            .problem(409, false);
        let other = s.put_image_artifacts(&format!("{dir}-other"));
        s.patch(&url, &json!({"link": other}))
            .await
            .problem(409, false);
        assert_eq!(s.get(&url).await.ok(200), got);
    }
    // Every bad manifest is refused by PATCH as by POST (v2 and v3 alike: the original's v3 set a link
    // whose manifest could not be read or parsed, and its v2 answered 500 — §3.3, §8; we validate).
    let cases = bad_manifests(&s);
    let rec = s.post("/v2/images", &json!({"name": "x"})).await.ok(201);
    for (l, status, what) in &cases {
        for p in ["/v2", "/v3", ""] {
            let r = s
                .patch(&format!("{p}/images/{}", id_of(&rec)), &json!({"link": l}))
                .await;
            assert_eq!(
                r.status,
                *status,
                "{p} {what}: {}",
                String::from_utf8_lossy(&r.body)
            );
            r.problem(*status, false);
        }
    }
    assert_eq!(
        s.get(&format!("/v2/images/{}", id_of(&rec))).await.ok(200),
        rec
    );
    // link null and ill-formed links → 422 naming link.
    for l in [
        Value::Null,
        json!("s3://boot-images/x"),
        json!({"path": "s3://boot-images/x"}),
        json!({"path": "", "type": "s3"}),
        json!({"path": "s3://boot-images/x", "type": "ftp"}),
    ] {
        let b = json!({"link": l});
        names_field(
            &s.patch(&format!("/v3/images/{}", id_of(&rec)), &b).await,
            "link",
            &b,
        );
    }
    // A failing link leaves the other fields of the same PATCH unapplied (the original left them
    // changed in memory, §8).
    let l = s.put_image_artifacts("atomic");
    s.patch(
        &format!("/v2/images/{}", id_of(&rec)),
        &json!({"arch": "aarch64", "metadata": {"operation": "set", "key": "k"},
            "link": with(l.clone(), "path", json!("s3://boot-images/atomic/none.json"))}),
    )
    .await
    .problem(422, false);
    assert_eq!(
        s.get(&format!("/v2/images/{}", id_of(&rec))).await.ok(200),
        rec
    );
    // All three at once succeed together.
    let got = s
        .patch(
            &format!("/v2/images/{}", id_of(&rec)),
            &json!({"arch": "aarch64", "metadata": {"operation": "set", "key": "k"}, "link": l}),
        )
        .await
        .ok(200);
    assert_eq!(got["arch"], "aarch64");
    assert_eq!(got["metadata"], json!({"k": ""}));
    assert_eq!(got["link"], l);
    let linked = got;
    s.patch(
        &format!("/v2/images/{}", id_of(&rec)),
        &json!({"arch": "x86_64", "link": s.put_image_artifacts("atomic2")}),
    )
    .await
    .problem(409, false);
    assert_eq!(
        s.get(&format!("/v2/images/{}", id_of(&rec))).await.ok(200),
        linked
    );
}

/// PATCH arch and metadata (set/remove), input errors.
async fn patch_arch_metadata_and_errors(db: Db) {
    let s = start(db).await;
    let rec = s
        .post(
            "/v3/images",
            &json!({"name": "i", "metadata": {"keep": "me"}}),
        )
        .await
        .ok(201);
    let id = id_of(&rec);
    for p in PREFIXES {
        let url = format!("{p}/images/{id}");
        for arch in ["aarch64", "x86_64", "aarch64", "x86_64"] {
            let got = s.patch(&url, &json!({"arch": arch})).await.ok(200);
            assert_eq!(keys(&got), sorted(IMAGE_KEYS));
            assert_eq!(got["arch"], arch);
            assert_eq!(s.get(&url).await.ok(200)["arch"], arch);
        }
        // set two keys, overwrite one, set without value, remove existing and missing.
        let set =
            |k: &str, v: &str| json!({"metadata": {"operation": "set", "key": k, "value": v}});
        let got = s.patch(&url, &set("k1", "v1")).await.ok(200);
        assert_eq!(got["metadata"], json!({"keep": "me", "k1": "v1"}));
        let got = s.patch(&url, &set("k2", "v2")).await.ok(200);
        assert_eq!(
            got["metadata"],
            json!({"keep": "me", "k1": "v1", "k2": "v2"})
        );
        let got = s.patch(&url, &set("k1", "v3")).await.ok(200);
        assert_eq!(
            got["metadata"],
            json!({"keep": "me", "k1": "v3", "k2": "v2"})
        );
        let got = s
            .patch(
                &url,
                &json!({"metadata": {"operation": "set", "key": "k3"}}),
            )
            .await
            .ok(200);
        assert_eq!(got["metadata"]["k3"], "");
        let remove = |k: &str| json!({"metadata": {"operation": "remove", "key": k}});
        for k in ["k1", "k2", "k3"] {
            let got = s.patch(&url, &remove(k)).await.ok(200);
            assert!(got["metadata"].get(k).is_none());
        }
        let got = s.patch(&url, &remove("never-there")).await.ok(200);
        assert_eq!(
            got["metadata"],
            json!({"keep": "me"}),
            "remove of a missing key is a no-op"
        );
        // remove ignores a value.
        s.patch(
            &url,
            &json!({"metadata": {"operation": "remove", "key": "nothing", "value": "x"}}),
        )
        .await
        .ok(200);
        assert_eq!(s.get(&url).await.ok(200)["metadata"], json!({"keep": "me"}));
    }
    let url = format!("/v2/images/{id}");
    let before = s.get(&url).await.ok(200);
    assert_eq!(before["created"], rec["created"]);
    assert_eq!(before["name"], "i");
    for p in PREFIXES {
        let url = format!("{p}/images/{id}");
        no_input(&s.patch(&url, &json!({})).await);
        no_input(&s.patch(&url, &json!([])).await);
        no_input(&s.send("PATCH", &url, None, None).await);
    }
    let cases = [
        (json!({"name": "new"}), "name"),
        (json!({"id": id}), "id"),
        (json!({"created": "2020-01-01T00:00:00"}), "created"),
        (json!({"foo": 1}), "foo"),
        (json!({"arch": "ppc64le"}), "arch"),
        (json!({"arch": null}), "arch"),
        (json!({"metadata": {"a": "b"}}), "metadata"),
        (
            json!({"metadata": {"operation": "explode", "key": "k"}}),
            "metadata",
        ),
        (
            json!({"metadata": {"operation": "SET", "key": "k"}}),
            "metadata",
        ),
        (json!({"metadata": {"key": "k", "value": "v"}}), "metadata"),
        (json!({"metadata": {"operation": "set"}}), "metadata"),
        (
            json!({"metadata": {"operation": "set", "key": null}}),
            "metadata",
        ),
        (
            json!({"metadata": {"operation": "set", "key": 1}}),
            "metadata",
        ),
        (
            json!({"metadata": {"operation": "set", "key": "k", "value": 1}}),
            "metadata",
        ),
        (
            json!({"metadata": {"operation": "set", "key": "k", "x": 1}}),
            "metadata",
        ),
        (
            json!({"metadata": [{"operation": "set", "key": "k"}]}),
            "metadata",
        ),
        (json!({"metadata": null}), "metadata"),
        (json!({"metadata": "k=v"}), "metadata"),
        (json!({"arch": "aarch64", "name": "x"}), "name"),
    ];
    for (b, f) in &cases {
        for p in PREFIXES {
            names_field(&s.patch(&format!("{p}/images/{id}"), b).await, f, b);
        }
    }
    // Nested metadata errors name the nested field.
    let p = s
        .patch(&url, &json!({"metadata": {"operation": "explode"}}))
        .await
        .problem(422, true);
    assert!(p["errors"]["metadata"].get("operation").is_some(), "{p}");
    assert!(p["errors"]["metadata"].get("key").is_some(), "{p}");
    assert_eq!(
        s.get(&url).await.ok(200),
        before,
        "bad PATCHes change nothing"
    );
}

/// v2 (unversioned, gateway) DELETE: hard delete; cascade (default true) removes every artifact
/// the manifest lists and the manifest; `cascade=False` keeps them.
async fn v2_delete_cascade(db: Db) {
    let s = start(db).await;
    let mut n = 0;
    for p in V2_PREFIXES {
        for (q, gone) in [
            ("", true),
            ("?cascade=true", true),
            ("?cascade=True", true),
            ("?cascade=yes", true),
            ("?cascade=1", true),
            ("?cascade=False", false),
            ("?cascade=false", false),
            ("?cascade=no", false),
            ("?cascade=0", false),
        ] {
            n += 1;
            let dir = format!("c{n}");
            let l = s.put_image_artifacts(&dir);
            let rec = s
                .post(&format!("{p}/images"), &json!({"name": "c", "link": l}))
                .await
                .ok(201);
            let id = id_of(&rec);
            let r = s.delete(&format!("{p}/images/{id}{q}")).await;
            assert_eq!(r.status, 204, "{p}{q}");
            assert!(r.body.is_empty());
            assert_std_files(&s, &dir, !gone);
            assert!(!s.has_artifact("boot-images", &format!("deleted/{dir}/manifest.json")));
            s.get(&format!("{p}/images/{id}")).await.problem(404, false);
            s.get(&format!("/v3/deleted/images/{id}"))
                .await
                .problem(404, false);
            s.delete(&format!("{p}/images/{id}{q}"))
                .await
                .problem(404, false);
        }
        // A link-less image.
        let rec = s
            .post(&format!("{p}/images"), &json!({"name": "nolink"}))
            .await
            .ok(201);
        s.delete(&format!("{p}/images/{}", id_of(&rec)))
            .await
            .ok(204);
    }
    // Artifacts in several buckets, with one of them already gone: the others still go.
    let m = manifest_of(vec![
        art(&s, "boot-images", "multi/rootfs", ROOTFS),
        art(&s, "ims", "multi/kernel", KERNEL),
        art(&s, "boot-images", "multi/initrd", INITRD),
    ]);
    let l = put_manifest(&s, "boot-images", "multi/manifest.json", &m);
    let rec = s
        .post("/v2/images", &json!({"name": "m", "link": l}))
        .await
        .ok(201);
    std::fs::remove_file(s.artifact_path("boot-images", "multi/initrd")).unwrap();
    s.delete(&format!("/v2/images/{}", id_of(&rec)))
        .await
        .ok(204);
    for (b, k) in [
        ("boot-images", "multi/rootfs"),
        ("ims", "multi/kernel"),
        ("boot-images", "multi/manifest.json"),
    ] {
        assert!(!s.has_artifact(b, k), "{b}/{k}");
    }
    // Manifest missing: the original answered 500 and kept the record (§8); we delete the record.
    let l = s.put_image_artifacts("nomanifest");
    let rec = s
        .post("/v2/images", &json!({"name": "m", "link": l}))
        .await
        .ok(201);
    std::fs::remove_file(s.artifact_path("boot-images", "nomanifest/manifest.json")).unwrap();
    s.delete(&format!("/v2/images/{}", id_of(&rec)))
        .await
        .ok(204);
    s.get(&format!("/v2/images/{}", id_of(&rec)))
        .await
        .problem(404, false);
    // Manifest no longer JSON: the record and the manifest go, nothing else can be known.
    let l = s.put_image_artifacts("garbled");
    let rec = s
        .post("/v2/images", &json!({"name": "m", "link": l}))
        .await
        .ok(201);
    s.put_artifact("boot-images", "garbled/manifest.json", b"garbage");
    s.delete(&format!("/v2/images/{}", id_of(&rec)))
        .await
        .ok(204);
    assert!(!s.has_artifact("boot-images", "garbled/manifest.json"));
    assert!(s.has_artifact("boot-images", "garbled/rootfs"));
    // Other images and their files are untouched.
    let keep_l = s.put_image_artifacts("keep");
    let keep = s
        .post("/v2/images", &json!({"name": "keep", "link": keep_l}))
        .await
        .ok(201);
    let gone_l = s.put_image_artifacts("gone");
    let gone = s
        .post("/v2/images", &json!({"name": "gone", "link": gone_l}))
        .await
        .ok(201);
    s.delete(&format!("/v2/images/{}", id_of(&gone)))
        .await
        .ok(204);
    assert_eq!(s.get("/v2/images").await.ok(200), json!([keep]));
    assert_std_files(&s, "keep", true);
    assert_std_files(&s, "gone", false);
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), json!([]));
}

/// v2 collection DELETE: hard, cascade default true, persists across a restart.
async fn v2_delete_all(db: Db) {
    let s = start(db).await;
    for (round, (p, q, gone)) in [
        ("/v2", "?cascade=False", false),
        ("", "?cascade=false", false),
        ("/apis/ims", "", true),
        ("/apis/ims/v2", "?cascade=true", true),
        ("", "", true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut dirs = vec![];
        for i in 0..3 {
            let dir = format!("all{round}-{i}");
            let l = s.put_image_artifacts(&dir);
            s.post("/v2/images", &json!({"name": "a", "link": l}))
                .await
                .ok(201);
            dirs.push(dir);
        }
        s.post("/v2/images", &json!({"name": "nolink"}))
            .await
            .ok(201);
        s.delete(&format!("{p}/images{q}")).await.ok(204);
        assert_eq!(s.get("/v2/images").await.ok(200), json!([]), "{p}{q}");
        for d in &dirs {
            assert_std_files(&s, d, !gone);
        }
        assert_eq!(s.get("/v3/deleted/images").await.ok(200), json!([]));
    }
    s.delete("/v2/images").await.ok(204);
    let after = s
        .post("/v2/images", &json!({"name": "after"}))
        .await
        .ok(201);
    let s = s.restart().await;
    assert_eq!(s.get("/v2/images").await.ok(200), json!([after]));
}

/// v3 DELETE = soft delete: every listed artifact and the manifest move to `deleted/<key>` in their
/// bucket; `s3://boot-images/deleted/<id>/deleted_manifest.json` records them; the deleted record
/// keeps every field and points at it.
async fn v3_soft_delete(db: Db) {
    let s = start(db).await;
    for (i, p) in V3_PREFIXES.iter().enumerate() {
        let dir = format!("soft{i}");
        let l = s.put_image_artifacts(&dir);
        let rec = s
            .post(
                &format!("{p}/images"),
                &json!({"name": "soft", "link": l, "arch": "aarch64", "metadata": {"a": "1", "b": "2"}}),
            )
            .await
            .ok(201);
        let id = id_of(&rec);
        let r = s.delete(&format!("{p}/images/{id}")).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        s.get(&format!("{p}/images/{id}")).await.problem(404, false);
        s.get(&format!("/v2/images/{id}")).await.problem(404, false);
        s.delete(&format!("{p}/images/{id}"))
            .await
            .problem(404, false);
        let d = s.get(&format!("{p}/deleted/images/{id}")).await.ok(200);
        let mut k = IMAGE_KEYS.to_vec();
        k.push("deleted");
        assert_eq!(keys(&d), sorted(&k), "{d}");
        for f in ["id", "created", "name", "arch", "metadata"] {
            assert_eq!(d[f], rec[f], "{f} preserved");
        }
        assert!(is_wire_time(d["deleted"].as_str().unwrap()));
        assert_eq!(
            d["link"],
            json!({"path": format!("s3://boot-images/deleted/{id}/deleted_manifest.json"), "etag": "", "type": "s3"})
        );
        let moved = std_moved(&dir);
        let dm = check_deleted_manifest(
            &s,
            &id,
            &d["deleted"],
            "boot-images",
            &format!("{dir}/manifest.json"),
            &as_refs(&moved),
        );
        for a in &dm["artifacts"].as_array().unwrap()[..3] {
            assert_eq!(a["md5"], MD5, "md5 kept");
        }
        // Same bytes after the move.
        assert_eq!(
            s.read_artifact("boot-images", &format!("deleted/{dir}/rootfs")),
            format!("rootfs of {dir}").as_bytes()
        );
        assert!(
            s.get(&format!("{p}/deleted/images"))
                .await
                .ok(200)
                .as_array()
                .unwrap()
                .contains(&d)
        );
    }
    // 404 leaves both lists untouched.
    let active = s.get("/v3/images").await.ok(200);
    let deleted = s.get("/v3/deleted/images").await.ok(200);
    s.delete("/v3/images/nope").await.problem(404, false);
    assert_eq!(s.get("/v3/images").await.ok(200), active);
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), deleted);

    // Collection soft delete.
    let mut ids = vec![];
    for i in 0..3 {
        let l = s.put_image_artifacts(&format!("col{i}"));
        let r = s
            .post("/v3/images", &json!({"name": "c", "link": l}))
            .await
            .ok(201);
        ids.push(id_of(&r));
    }
    let nolink = s
        .post("/v3/images", &json!({"name": "nolink"}))
        .await
        .ok(201);
    s.delete("/v3/images").await.ok(204);
    assert_eq!(s.get("/v3/images").await.ok(200), json!([]));
    assert_eq!(count(&s, "/v3/deleted/images").await, 2 + 4);
    for (i, id) in ids.iter().enumerate() {
        let d = s.get(&format!("/v3/deleted/images/{id}")).await.ok(200);
        let dir = format!("col{i}");
        let moved = std_moved(&dir);
        check_deleted_manifest(
            &s,
            id,
            &d["deleted"],
            "boot-images",
            &format!("{dir}/manifest.json"),
            &as_refs(&moved),
        );
    }
    let d = s
        .get(&format!("/v3/deleted/images/{}", id_of(&nolink)))
        .await
        .ok(200);
    assert_eq!(d["link"], Value::Null);
    assert!(!s.has_artifact(
        "boot-images",
        &format!("deleted/{}/deleted_manifest.json", id_of(&nolink))
    ));
    s.delete("/apis/ims/v3/images").await.ok(204);
    // v3 has no cascade: the parameter is ignored and the artifacts still move.
    let l = s.put_image_artifacts("nocascade");
    let rec = s
        .post("/v3/images", &json!({"name": "nc", "link": l}))
        .await
        .ok(201);
    s.delete(&format!("/v3/images/{}?cascade=false", id_of(&rec)))
        .await
        .ok(204);
    assert_std_files(&s, "nocascade", false);
    assert!(s.has_artifact(
        "boot-images",
        &format!("deleted/{}/deleted_manifest.json", id_of(&rec))
    ));
    // Everything persists.
    let deleted = s.get("/v3/deleted/images").await.ok(200);
    let s = s.restart().await;
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), deleted);
    assert_eq!(s.get("/v3/images").await.ok(200), json!([]));
}

/// Soft delete corner cases: artifacts in another bucket, an artifact without `md5` (the original
/// dropped it from the deleted manifest, §8 — we keep it), a missing artifact (left out), a missing
/// or unreadable manifest (link kept).
async fn v3_soft_delete_corner_cases(db: Db) {
    let s = start(db).await;
    // Manifest in the ims bucket, artifacts in two buckets, one without md5, extra keys kept.
    let mut no_md5 = art(&s, "ims", "x/kernel", KERNEL);
    no_md5.as_object_mut().unwrap().remove("md5");
    let m = manifest_of(vec![
        with(
            art(&s, "boot-images", "x/rootfs", ROOTFS),
            "sha256",
            json!("s"),
        ),
        no_md5,
        art(&s, "boot-images", "x/initrd", INITRD),
    ]);
    let l = put_manifest(&s, "ims", "x/manifest.json", &m);
    let rec = s
        .post("/v3/images", &json!({"name": "x", "link": l}))
        .await
        .ok(201);
    let id = id_of(&rec);
    // The initrd disappears before the delete: it is left out.
    std::fs::remove_file(s.artifact_path("boot-images", "x/initrd")).unwrap();
    s.delete(&format!("/v3/images/{id}")).await.ok(204);
    let d = s.get(&format!("/v3/deleted/images/{id}")).await.ok(200);
    let dm = check_deleted_manifest(
        &s,
        &id,
        &d["deleted"],
        "ims",
        "x/manifest.json",
        &[
            ("boot-images", "x/rootfs", ROOTFS),
            ("ims", "x/kernel", KERNEL),
        ],
    );
    assert_eq!(dm["artifacts"][0]["md5"], MD5);
    assert_eq!(dm["artifacts"][0]["sha256"], "s");
    assert!(dm["artifacts"][1].get("md5").is_none());
    // Undelete restores both buckets, and the link is the restored manifest.
    s.patch(
        &format!("/v3/deleted/images/{id}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    let back = s.get(&format!("/v3/images/{id}")).await.ok(200);
    assert_eq!(back["link"]["path"], "s3://ims/x/manifest.json");
    assert!(s.has_artifact("boot-images", "x/rootfs"));
    assert!(s.has_artifact("ims", "x/kernel"));
    assert!(s.has_artifact("ims", "x/manifest.json"));
    assert!(!s.has_artifact(
        "boot-images",
        &format!("deleted/{id}/deleted_manifest.json")
    ));

    // Manifest missing at delete time: the record moves, its link is kept.
    let l = s.put_image_artifacts("nom");
    let rec = s
        .post("/v3/images", &json!({"name": "nom", "link": l}))
        .await
        .ok(201);
    std::fs::remove_file(s.artifact_path("boot-images", "nom/manifest.json")).unwrap();
    s.delete(&format!("/v3/images/{}", id_of(&rec)))
        .await
        .ok(204);
    let d = s
        .get(&format!("/v3/deleted/images/{}", id_of(&rec)))
        .await
        .ok(200);
    assert_eq!(d["link"], l);
    assert!(s.has_artifact("boot-images", "nom/rootfs"), "nothing moved");
    // Manifest unreadable: same.
    let l = s.put_image_artifacts("unr");
    let rec = s
        .post("/v3/images", &json!({"name": "unr", "link": l}))
        .await
        .ok(201);
    s.put_artifact("boot-images", "unr/manifest.json", b"not json");
    s.delete(&format!("/v3/images/{}", id_of(&rec)))
        .await
        .ok(204);
    let d = s
        .get(&format!("/v3/deleted/images/{}", id_of(&rec)))
        .await
        .ok(200);
    assert_eq!(d["link"], l);
    assert!(s.has_artifact("boot-images", "unr/manifest.json"));
    assert!(s.has_artifact("boot-images", "unr/rootfs"));
    // Such records (link not under deleted/) undelete as they are.
    s.patch(
        &format!("/v3/deleted/images/{}", id_of(&rec)),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert_eq!(
        s.get(&format!("/v3/images/{}", id_of(&rec))).await.ok(200)["link"],
        l
    );
}

/// Undelete one (§5.4): artifacts move back, every field is restored, the new link is the restored
/// manifest, `deleted_manifest.json` is removed; input errors and 404.
async fn undelete_one(db: Db) {
    let s = start(db).await;
    for (i, p) in V3_PREFIXES.iter().enumerate() {
        let dir = format!("u{i}");
        let l = s.put_image_artifacts(&dir);
        let rec = s
            .post(
                "/v3/images",
                &json!({"name": "u", "link": l, "arch": "aarch64", "metadata": {"k": "v"}}),
            )
            .await
            .ok(201);
        let id = id_of(&rec);
        s.delete(&format!("/v3/images/{id}")).await.ok(204);
        let url = format!("{p}/deleted/images/{id}");
        let dm_key = format!("deleted/{id}/deleted_manifest.json");
        no_input(&s.patch(&url, &json!({})).await);
        no_input(&s.send("PATCH", &url, None, None).await);
        for (b, f) in [
            (json!({"operation": "explode"}), "operation"),
            (json!({"operation": "Undelete"}), "operation"),
            (json!({"operation": null}), "operation"),
            (json!({"op": "undelete"}), "op"),
            (json!({"operation": "undelete", "link": l}), "link"),
        ] {
            names_field(&s.patch(&url, &b).await, f, &b);
        }
        assert!(s.has_artifact("boot-images", &dm_key));
        assert_std_files(&s, &dir, false);

        let r = s.patch(&url, &json!({"operation": "undelete"})).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        s.get(&url).await.problem(404, false);
        let back = s.get(&format!("/v3/images/{id}")).await.ok(200);
        assert_eq!(keys(&back), sorted(IMAGE_KEYS));
        assert_eq!(back["link"]["path"], l["path"], "link = restored manifest");
        assert_eq!(back["link"]["type"], "s3");
        assert!(back["link"]["etag"].is_string());
        let mut expect = rec.clone();
        expect["link"] = back["link"].clone();
        assert_eq!(back, expect, "every field restored");
        assert_std_files(&s, &dir, true);
        for (n, _) in STD_ARTIFACTS {
            assert!(!s.has_artifact("boot-images", &format!("deleted/{dir}/{n}")));
        }
        assert!(!s.has_artifact("boot-images", &format!("deleted/{dir}/manifest.json")));
        assert!(
            !s.has_artifact("boot-images", &dm_key),
            "deleted manifest removed"
        );
        assert_eq!(
            s.read_artifact("boot-images", &format!("{dir}/kernel")),
            format!("kernel of {dir}").as_bytes()
        );
        // Round trip again, then a v2 cascade finds every artifact through the restored manifest.
        s.delete(&format!("/v3/images/{id}")).await.ok(204);
        s.patch(&url, &json!({"operation": "undelete"}))
            .await
            .ok(204);
        assert_std_files(&s, &dir, true);
        s.delete(&format!("/v2/images/{id}")).await.ok(204);
        assert_std_files(&s, &dir, false);
    }
    // Link-less.
    let rec = s
        .post(
            "/v3/images",
            &json!({"name": "nolink", "metadata": {"a": "b"}}),
        )
        .await
        .ok(201);
    s.delete(&format!("/v3/images/{}", id_of(&rec)))
        .await
        .ok(204);
    s.patch(
        &format!("/v3/deleted/images/{}", id_of(&rec)),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert_eq!(
        s.get(&format!("/v3/images/{}", id_of(&rec))).await.ok(200),
        rec
    );
    // A deleted artifact that vanished is skipped; the rest comes back.
    let l = s.put_image_artifacts("partial");
    let rec = s
        .post("/v3/images", &json!({"name": "p", "link": l}))
        .await
        .ok(201);
    s.delete(&format!("/v3/images/{}", id_of(&rec)))
        .await
        .ok(204);
    std::fs::remove_file(s.artifact_path("boot-images", "deleted/partial/initrd")).unwrap();
    s.patch(
        &format!("/v3/deleted/images/{}", id_of(&rec)),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert!(s.has_artifact("boot-images", "partial/rootfs"));
    assert!(s.has_artifact("boot-images", "partial/manifest.json"));
    assert_eq!(
        s.get(&format!("/v3/images/{}", id_of(&rec))).await.ok(200)["link"]["path"],
        l["path"]
    );
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), json!([]));
}

fn seeded_deleted_image(id: &str) -> Value {
    json!({"id": id, "created": "2024-01-01T00:00:00", "deleted": "2024-06-01T00:00:00",
        "name": "seeded", "arch": "aarch64", "metadata": {"m": "n"},
        "link": link("boot-images", &format!("deleted/{id}/deleted_manifest.json"))})
}

/// Stores a well-formed deleted manifest (and the deleted artifacts it lists) for a seeded record.
fn put_deleted_manifest(s: &Server, id: &str, dir: &str) {
    let mut arts = vec![];
    for (n, mime) in STD_ARTIFACTS {
        arts.push(art(s, "boot-images", &format!("deleted/{dir}/{n}"), mime));
    }
    s.put_artifact(
        "boot-images",
        &format!("deleted/{dir}/manifest.json"),
        b"{}",
    );
    arts.push(json!({"type": MANIFEST, "link": link("boot-images", &format!("deleted/{dir}/manifest.json"))}));
    put_manifest(
        s,
        "boot-images",
        &format!("deleted/{id}/deleted_manifest.json"),
        &json!({"version": "1.0", "created": "2024-06-01 00:00:00", "artifacts": arts}),
    );
}

fn deleted_files(s: &Server, dir: &str) -> Vec<bool> {
    let mut v = vec![];
    for n in ["rootfs", "kernel", "initrd", "manifest.json"] {
        v.push(s.has_artifact("boot-images", &format!("deleted/{dir}/{n}")));
        v.push(s.has_artifact("boot-images", &format!("{dir}/{n}")));
    }
    v
}

/// A malformed deleted manifest (no artifacts list), a missing one or an unreadable one → 422 on
/// undelete, and nothing changes. The collection undelete is all or nothing.
async fn undelete_malformed_and_all_or_nothing(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v3.1_deleted_images.json",
            json!([
                seeded_deleted_image(ID_A),
                seeded_deleted_image(ID_B),
                seeded_deleted_image(ID_C),
                seeded_deleted_image(ID_D),
            ]),
        )
        .start()
        .await;
    put_deleted_manifest(&s, ID_A, "a");
    put_deleted_manifest(&s, ID_B, "b");
    put_deleted_manifest(&s, ID_C, "c");
    // D's deleted manifest: malformed, missing, unreadable, artifacts not a list.
    let dm_d = format!("deleted/{ID_D}/deleted_manifest.json");
    let before = s.get("/v3/deleted/images").await.ok(200);
    let files = |s: &Server| {
        [
            deleted_files(s, "a"),
            deleted_files(s, "b"),
            deleted_files(s, "c"),
        ]
        .concat()
    };
    let files_before = files(&s);
    for bad in [
        Some(json!({"version": "1.0", "created": "2024-06-01 00:00:00"})),
        Some(json!({"version": "1.0", "artifacts": {"a": 1}})),
        None,
    ] {
        match &bad {
            Some(v) => {
                put_manifest(&s, "boot-images", &dm_d, v);
            }
            None => {
                s.put_artifact("boot-images", &dm_d, b"not json");
            }
        }
        s.patch(
            &format!("/v3/deleted/images/{ID_D}"),
            &json!({"operation": "undelete"}),
        )
        .await
        .problem(422, false);
        // Bulk: one bad record → 422, no record moved, no artifact moved.
        s.patch("/v3/deleted/images", &json!({"operation": "undelete"}))
            .await
            .problem(422, false);
        assert_eq!(s.get("/v3/deleted/images").await.ok(200), before);
        assert_eq!(s.get("/v3/images").await.ok(200), json!([]));
        assert_eq!(files(&s), files_before);
        assert!(s.has_artifact("boot-images", &dm_d));
        for id in [ID_A, ID_B, ID_C] {
            assert!(s.has_artifact(
                "boot-images",
                &format!("deleted/{id}/deleted_manifest.json")
            ));
        }
    }
    std::fs::remove_file(s.artifact_path("boot-images", &dm_d)).unwrap();
    s.patch(
        &format!("/v3/deleted/images/{ID_D}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .problem(422, false);
    s.patch("/v3/deleted/images", &json!({"operation": "undelete"}))
        .await
        .problem(422, false);
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), before);
    assert_eq!(files(&s), files_before);

    // A single good record can still be restored while D is bad.
    s.patch(
        &format!("/v3/deleted/images/{ID_A}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    let a = s.get(&format!("/v3/images/{ID_A}")).await.ok(200);
    assert_eq!(a["link"]["path"], "s3://boot-images/a/manifest.json");
    assert_eq!(a["created"], "2024-01-01T00:00:00.000000+00:00");
    assert_eq!(a["arch"], "aarch64");
    assert_eq!(a["metadata"], json!({"m": "n"}));
    assert!(s.has_artifact("boot-images", "a/rootfs"));

    // Purge D, then the bulk undelete restores the rest.
    s.delete(&format!("/v3/deleted/images/{ID_D}"))
        .await
        .ok(204);
    s.patch("/v3/deleted/images", &json!({"operation": "undelete"}))
        .await
        .ok(204);
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), json!([]));
    assert_eq!(count(&s, "/v3/images").await, 3);
    for (id, dir) in [(ID_B, "b"), (ID_C, "c")] {
        let r = s.get(&format!("/v3/images/{id}")).await.ok(200);
        assert_eq!(
            r["link"]["path"],
            format!("s3://boot-images/{dir}/manifest.json")
        );
        assert_eq!(r["metadata"], json!({"m": "n"}));
        assert_std_files(&s, dir, true);
        assert!(!s.has_artifact(
            "boot-images",
            &format!("deleted/{id}/deleted_manifest.json")
        ));
    }
}

/// An active image with the same id blocks the undelete: 409, nothing overwritten or moved (the
/// original silently overwrote the active record, §3.5).
async fn undelete_conflict_changes_nothing(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v2.1_images.json",
            json!([{"id": ID_A, "created": "2025-01-01T00:00:00", "name": "active", "link": null}]),
        )
        .seed(
            "v3.1_deleted_images.json",
            json!([seeded_deleted_image(ID_A), seeded_deleted_image(ID_B)]),
        )
        .start()
        .await;
    put_deleted_manifest(&s, ID_A, "a");
    put_deleted_manifest(&s, ID_B, "b");
    let active = s.get("/v3/images").await.ok(200);
    let deleted = s.get("/v3/deleted/images").await.ok(200);
    let files = [deleted_files(&s, "a"), deleted_files(&s, "b")].concat();
    s.patch(
        &format!("/v3/deleted/images/{ID_A}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .problem(409, false);
    s.patch("/v3/deleted/images", &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    assert_eq!(s.get("/v3/images").await.ok(200), active);
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), deleted);
    assert_eq!(
        [deleted_files(&s, "a"), deleted_files(&s, "b")].concat(),
        files
    );
    s.patch(
        &format!("/v3/deleted/images/{ID_B}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert_std_files(&s, "b", true);
}

/// Permanent delete of deleted images: every artifact the deleted manifest lists (including the
/// moved manifest) and the deleted manifest go, then the record. Malformed deleted manifest → 422
/// and nothing removed; unreadable or missing → the record goes.
async fn purge(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v3.1_deleted_images.json",
            json!([
                seeded_deleted_image(ID_A),
                seeded_deleted_image(ID_B),
                seeded_deleted_image(ID_C),
                seeded_deleted_image(ID_D),
            ]),
        )
        .start()
        .await;
    // Soft-deleted through the API.
    let mut ids = vec![];
    for i in 0..3 {
        let l = s.put_image_artifacts(&format!("pg{i}"));
        let r = s
            .post("/v3/images", &json!({"name": "p", "link": l}))
            .await
            .ok(201);
        s.delete(&format!("/v3/images/{}", id_of(&r))).await.ok(204);
        ids.push(id_of(&r));
    }
    let keep_l = s.put_image_artifacts("keep");
    let keep = s
        .post("/v3/images", &json!({"name": "keep", "link": keep_l}))
        .await
        .ok(201);
    for (i, p) in V3_PREFIXES.iter().enumerate() {
        let id = &ids[i];
        let dir = format!("pg{i}");
        let url = format!("{p}/deleted/images/{id}");
        let r = s.delete(&url).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        s.get(&url).await.problem(404, false);
        s.delete(&url).await.problem(404, false);
        s.get(&format!("/v3/images/{id}")).await.problem(404, false);
        assert_eq!(deleted_files(&s, &dir), vec![false; 8], "{dir}");
        assert!(!s.has_artifact(
            "boot-images",
            &format!("deleted/{id}/deleted_manifest.json")
        ));
    }
    // Malformed deleted manifest (no artifacts list) → 422, nothing removed; also in bulk.
    put_deleted_manifest(&s, ID_A, "a");
    put_deleted_manifest(&s, ID_B, "b");
    put_deleted_manifest(&s, ID_C, "c");
    let dm_d = format!("deleted/{ID_D}/deleted_manifest.json");
    put_manifest(&s, "boot-images", &dm_d, &json!({"version": "1.0"}));
    let deleted = s.get("/v3/deleted/images").await.ok(200);
    let files = |s: &Server| {
        [
            deleted_files(s, "a"),
            deleted_files(s, "b"),
            deleted_files(s, "c"),
            deleted_files(s, "pg2"),
        ]
        .concat()
    };
    let files_before = files(&s);
    s.delete(&format!("/v3/deleted/images/{ID_D}"))
        .await
        .problem(422, false);
    s.delete("/v3/deleted/images").await.problem(422, false);
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), deleted);
    assert_eq!(files(&s), files_before);
    assert!(s.has_artifact("boot-images", &dm_d));
    for id in [ID_A, ID_B, ID_C, ids[2].as_str()] {
        assert!(s.has_artifact(
            "boot-images",
            &format!("deleted/{id}/deleted_manifest.json")
        ));
    }
    // Unreadable deleted manifest: the record and that file go.
    s.put_artifact("boot-images", &dm_d, b"not json");
    s.delete(&format!("/v3/deleted/images/{ID_D}"))
        .await
        .ok(204);
    assert!(!s.has_artifact("boot-images", &dm_d));
    s.get(&format!("/v3/deleted/images/{ID_D}"))
        .await
        .problem(404, false);
    // Missing deleted manifest: the record goes.
    std::fs::remove_file(s.artifact_path(
        "boot-images",
        &format!("deleted/{ID_C}/deleted_manifest.json"),
    ))
    .unwrap();
    s.delete(&format!("/v3/deleted/images/{ID_C}"))
        .await
        .ok(204);
    s.get(&format!("/v3/deleted/images/{ID_C}"))
        .await
        .problem(404, false);
    // All the rest.
    s.delete("/apis/ims/v3/deleted/images").await.ok(204);
    assert_eq!(s.get("/v3/deleted/images").await.ok(200), json!([]));
    for d in ["a", "b", "pg2"] {
        for n in ["rootfs", "kernel", "initrd", "manifest.json"] {
            assert!(
                !s.has_artifact("boot-images", &format!("deleted/{d}/{n}")),
                "{d}/{n}"
            );
        }
    }
    for id in [ID_A, ID_B, ids[2].as_str()] {
        assert!(!s.has_artifact(
            "boot-images",
            &format!("deleted/{id}/deleted_manifest.json")
        ));
    }
    // Active images and their files are untouched.
    assert_eq!(s.get("/v3/images").await.ok(200), json!([keep]));
    assert_std_files(&s, "keep", true);
    s.delete("/v3/deleted/images").await.ok(204);
    s.delete("/v3/deleted/images/nope")
        .await
        .problem(404, false);
}

/// The manifest check and the write are one step: of many concurrent POSTs (or PATCHes of
/// link-less images) with one manifest, exactly one wins and the others get the duplicate 422.
async fn concurrent_same_manifest(db: Db) {
    let s = start(db).await;
    let l = s.put_image_artifacts("race");
    let b = json!({"name": "race", "link": l});
    let rs = futures::future::join_all((0..16).map(|_| s.post("/v2/images", &b))).await;
    assert_eq!(rs.iter().filter(|r| r.status == 201).count(), 1);
    for r in rs.iter().filter(|r| r.status != 201) {
        let p = r.problem(422, true);
        assert!(p["errors"].get("link").is_some(), "{p}");
    }
    assert_eq!(count(&s, "/v2/images").await, 1);
    let mut urls = vec![];
    for _ in 0..8 {
        let r = s.post("/v2/images", &json!({"name": "free"})).await.ok(201);
        urls.push(format!("/v3/images/{}", id_of(&r)));
    }
    let other = s.put_image_artifacts("race2");
    let pb = json!({"link": other});
    let rs = futures::future::join_all(urls.iter().map(|u| s.patch(u, &pb))).await;
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 1);
    for r in rs.iter().filter(|r| r.status != 200) {
        r.problem(422, true);
    }
    let all = s.get("/v2/images").await.ok(200);
    assert_eq!(
        all.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["link"] == other)
            .count(),
        1
    );
}

/// When image keys are reused after a soft delete, nothing is ever overwritten: restoring the
/// deleted image over the new objects or manifest link is a 409, and so is soft-deleting the new
/// image onto the deleted one's `deleted/<key>` objects (the original silently overwrote in both
/// cases). Nothing changes on a 409.
async fn reused_keys_are_never_overwritten(db: Db) {
    let s = start(db).await;
    let l = s.put_image_artifacts("reused");
    let a = s
        .post("/v3/images", &json!({"name": "a", "link": l}))
        .await
        .ok(201);
    let ida = id_of(&a);
    s.delete(&format!("/v3/images/{ida}")).await.ok(204);
    // C, older than B, is moved first by a collection delete and must be put back.
    let lc = s.put_image_artifacts("c");
    let c = s
        .post("/v3/images", &json!({"name": "c", "link": lc}))
        .await
        .ok(201);
    // The same keys are uploaded again and used by a new image.
    assert_eq!(s.put_image_artifacts("reused"), l);
    s.put_artifact("boot-images", "reused/rootfs", b"B");
    let b = s
        .post("/v3/images", &json!({"name": "b", "link": l}))
        .await
        .ok(201);
    let idb = id_of(&b);
    let deleted_a = s.get(&format!("/v3/deleted/images/{ida}")).await.ok(200);
    let dm_a = s.read_artifact(
        "boot-images",
        &format!("deleted/{ida}/deleted_manifest.json"),
    );
    let unchanged = |s: &Server| {
        assert_eq!(s.read_artifact("boot-images", "reused/rootfs"), b"B");
        assert_eq!(
            s.read_artifact("boot-images", "deleted/reused/rootfs"),
            b"rootfs of reused"
        );
        assert_std_files(s, "reused", true);
        assert_std_files(s, "c", true);
        assert_eq!(
            s.read_artifact(
                "boot-images",
                &format!("deleted/{ida}/deleted_manifest.json")
            ),
            dm_a
        );
        assert!(!s.has_artifact(
            "boot-images",
            &format!("deleted/{idb}/deleted_manifest.json")
        ));
    };
    unchanged(&s);
    // Restoring A would take B's manifest link and overwrite B's files.
    let url_a = format!("/v3/deleted/images/{ida}");
    let p = s
        .patch(&url_a, &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    assert!(p["detail"].as_str().unwrap().contains(&ida), "{p}");
    s.patch("/v3/deleted/images", &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    unchanged(&s);
    assert_eq!(s.get(&url_a).await.ok(200), deleted_a);
    // Soft-deleting B (alone or with C) would overwrite A's deleted files.
    for url in [format!("/v3/images/{idb}"), "/v3/images".to_string()] {
        s.delete(&url).await.problem(409, false);
        unchanged(&s);
        assert_eq!(
            s.get("/v3/images").await.ok(200),
            json!([c.clone(), b.clone()])
        );
        assert_eq!(
            s.get("/v3/deleted/images").await.ok(200),
            json!([deleted_a.clone()])
        );
    }
    // B's record goes (v2, files kept): the objects alone still block the restore.
    s.delete(&format!("/v2/images/{idb}?cascade=false"))
        .await
        .ok(204);
    s.patch(&url_a, &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    assert_std_files(&s, "reused", true);
    // Once they are gone, A comes back with its own files.
    for n in ["rootfs", "kernel", "initrd", "manifest.json"] {
        std::fs::remove_file(s.artifact_path("boot-images", &format!("reused/{n}"))).unwrap();
    }
    s.patch(&url_a, &json!({"operation": "undelete"}))
        .await
        .ok(204);
    assert_eq!(
        s.read_artifact("boot-images", "reused/rootfs"),
        b"rootfs of reused"
    );
    assert_eq!(
        s.get(&format!("/v3/images/{ida}")).await.ok(200)["link"]["path"],
        l["path"]
    );
}

both_backends!(
    post_keys_defaults_get,
    post_with_client_id,
    post_metadata_forms,
    post_input_errors,
    post_manifest_validation,
    manifest_size_limit_is_configurable,
    duplicate_manifest_path,
    seeded_get_and_404,
    patch_link,
    patch_arch_metadata_and_errors,
    v2_delete_cascade,
    v2_delete_all,
    v3_soft_delete,
    v3_soft_delete_corner_cases,
    undelete_one,
    undelete_malformed_and_all_or_nothing,
    undelete_conflict_changes_nothing,
    purge,
    concurrent_same_manifest,
    reused_keys_are_never_overwritten,
);
