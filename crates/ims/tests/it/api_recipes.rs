//! Recipes and deleted recipes over HTTP (reference §3.2, §3.5, §4.1, §4.2, §4.5, §5.2, §5.4,
//! §7.2 test_v2/v3_recipes and test_v3_deleted_recipes, §8).
//!
//! Recipe tarballs live in the server's local artifact store (`<data>/artifacts/<bucket>/<key>`), so
//! every S3 effect (HEAD, delete, move under `deleted/`) is checked on the files themselves.

use crate::common::*;
use serde_json::{Value, json};

/// Every family: unversioned and v2 (hard delete), v3 (soft delete), and the same under the gateway.
const PREFIXES: &[&str] = &[
    "",
    "/v2",
    "/v3",
    "/apis/ims",
    "/apis/ims/v2",
    "/apis/ims/v3",
];
/// The families with v2 semantics.
const V2_PREFIXES: &[&str] = &["", "/v2", "/apis/ims", "/apis/ims/v2"];
const V3_PREFIXES: &[&str] = &["/v3", "/apis/ims/v3"];

const RECIPE_KEYS: &[&str] = &[
    "arch",
    "created",
    "id",
    "link",
    "linux_distribution",
    "name",
    "recipe_type",
    "require_dkms",
    "template_dictionary",
];

const ORIGINAL_DISTRIBUTIONS: &[&str] = &["sles12", "sles15", "centos7"];
const NEW_DISTRIBUTIONS: &[&str] = &[
    "sles16",
    "opensuse15",
    "opensuse16",
    "rhel8",
    "rhel9",
    "rhel10",
    "rocky8",
    "rocky9",
    "rocky10",
    "almalinux8",
    "almalinux9",
    "almalinux10",
    "debian11",
    "debian12",
    "debian13",
    "ubuntu22",
    "ubuntu24",
];

fn body(name: &str) -> Value {
    json!({"name": name, "recipe_type": "kiwi-ng", "linux_distribution": "sles15"})
}

fn with(mut v: Value, k: &str, x: Value) -> Value {
    v[k] = x;
    v
}

/// Stores a tarball at `s3://ims/<key>` and returns a link to it.
fn tarball(s: &Server, key: &str) -> Value {
    s.put_artifact("ims", key, format!("tarball {key}").as_bytes());
    json!({"path": format!("s3://ims/{key}"), "etag": "", "type": "s3"})
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

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Asserts a 422 whose `errors` names `field`.
fn names_field(r: &Resp, field: &str, what: &Value) {
    let p = r.problem(422, true);
    assert_eq!(p["title"], "Unprocessable Entity");
    assert!(
        p["errors"].get(field).is_some(),
        "{what}: expected errors.{field}, got {p}"
    );
}

/// POST 201 on every family with the exact 9 keys, the defaults, GET one and GET all.
async fn post_keys_defaults_get(db: Db) {
    let s = start(db).await;
    for p in PREFIXES {
        let r = s.post(&format!("{p}/recipes"), &body("r")).await;
        sorted_on_the_wire(&r, RECIPE_KEYS);
        let rec = r.ok(201);
        assert_eq!(keys(&rec), sorted(RECIPE_KEYS), "{p}: {rec}");
        assert!(is_uuid4(rec["id"].as_str().unwrap()), "{rec}");
        assert!(is_wire_time(rec["created"].as_str().unwrap()), "{rec}");
        assert_eq!(rec["name"], "r");
        assert_eq!(rec["recipe_type"], "kiwi-ng");
        assert_eq!(rec["linux_distribution"], "sles15");
        assert_eq!(rec["link"], Value::Null);
        assert_eq!(rec["require_dkms"], true, "DKMS on by default");
        assert_eq!(rec["arch"], "x86_64");
        assert_eq!(rec["template_dictionary"], json!([]));
        let id = id_of(&rec);
        let r = s.get(&format!("{p}/recipes/{id}")).await;
        sorted_on_the_wire(&r, RECIPE_KEYS);
        assert_eq!(r.ok(200), rec);
        let all = s.get(&format!("{p}/recipes")).await.ok(200);
        assert!(all.as_array().unwrap().contains(&rec), "{p}");
    }
    // Every family sees the same table.
    assert_eq!(count(&s, "/recipes").await, PREFIXES.len());
    assert_eq!(count(&s, "/apis/ims/v3/recipes").await, PREFIXES.len());

    // Explicit values are echoed.
    let td = json!([{"key": "a", "value": "b"}, {"key": "c", "value": ""}]);
    let rec = s
        .post(
            "/v2/recipes",
            &json!({"name": "full", "recipe_type": "packer", "linux_distribution": "centos7",
                "template_dictionary": td, "require_dkms": false, "arch": "aarch64", "link": null}),
        )
        .await
        .ok(201);
    assert_eq!(keys(&rec), sorted(RECIPE_KEYS));
    assert_eq!(rec["recipe_type"], "packer");
    assert_eq!(rec["linux_distribution"], "centos7");
    assert_eq!(rec["template_dictionary"], td);
    assert_eq!(rec["require_dkms"], false);
    assert_eq!(rec["arch"], "aarch64");
    assert_eq!(rec["link"], Value::Null);
    assert_eq!(
        s.get(&format!("/v3/recipes/{}", id_of(&rec))).await.ok(200),
        rec
    );

    // template_dictionary null stays null; require_dkms true explicit.
    let rec = s
        .post(
            "/v3/recipes",
            &with(
                with(body("n"), "template_dictionary", Value::Null),
                "require_dkms",
                json!(true),
            ),
        )
        .await
        .ok(201);
    assert_eq!(rec["template_dictionary"], Value::Null);
    assert_eq!(rec["require_dkms"], true);
    let got = s.get(&format!("/recipes/{}", id_of(&rec))).await.ok(200);
    assert_eq!(got["template_dictionary"], Value::Null);

    // marshmallow-style boolean strings are accepted.
    let rec = s
        .post(
            "/v2/recipes",
            &with(body("s"), "require_dkms", json!("false")),
        )
        .await
        .ok(201);
    assert_eq!(rec["require_dkms"], false);
}

/// Every recipe_type and linux_distribution value (the original's and the added ones); anything
/// else is a 422 naming the field.
async fn post_every_type_and_distribution(db: Db) {
    let s = start(db).await;
    let mut n = 0;
    for rt in ["kiwi-ng", "packer"] {
        for d in ORIGINAL_DISTRIBUTIONS.iter().chain(NEW_DISTRIBUTIONS) {
            let rec = s
                .post(
                    "/v2/recipes",
                    &json!({"name": format!("{rt}-{d}"), "recipe_type": rt, "linux_distribution": d}),
                )
                .await
                .ok(201);
            assert_eq!(keys(&rec), sorted(RECIPE_KEYS));
            assert_eq!(rec["recipe_type"], rt);
            assert_eq!(rec["linux_distribution"], *d);
            n += 1;
        }
    }
    // The original's three, with a link (as test_v2_recipes does).
    for d in ORIGINAL_DISTRIBUTIONS {
        let link = tarball(&s, &format!("recipes/{d}/recipe.tgz"));
        let rec = s
            .post(
                "/v3/recipes",
                &json!({"name": d, "recipe_type": "kiwi-ng", "linux_distribution": d, "link": link}),
            )
            .await
            .ok(201);
        assert_eq!(keys(&rec), sorted(RECIPE_KEYS));
        assert_eq!(rec["link"], link);
        n += 1;
    }
    for arch in ["x86_64", "aarch64"] {
        let rec = s
            .post("/v2/recipes", &with(body("a"), "arch", json!(arch)))
            .await
            .ok(201);
        assert_eq!(rec["arch"], arch);
        n += 1;
    }
    assert_eq!(count(&s, "/v2/recipes").await, n);

    for bad in [
        "sles11", "windows", "SLES15", "Debian12", "ubuntu", "", " sles15",
    ] {
        let b = with(body("x"), "linux_distribution", json!(bad));
        names_field(&s.post("/v2/recipes", &b).await, "linux_distribution", &b);
    }
    for bad in ["docker", "Kiwi-ng", "kiwi", "", "PACKER"] {
        let b = with(body("x"), "recipe_type", json!(bad));
        names_field(&s.post("/v3/recipes", &b).await, "recipe_type", &b);
    }
    for bad in ["ppc64le", "X86_64", "arm64", ""] {
        let b = with(body("x"), "arch", json!(bad));
        names_field(&s.post("/recipes", &b).await, "arch", &b);
    }
    assert_eq!(count(&s, "/v2/recipes").await, n, "nothing created");
}

/// No input → 400; missing, ill-typed, null, blank and unknown fields → 422 naming the field.
async fn post_input_errors(db: Db) {
    let s = start(db).await;
    for p in PREFIXES {
        let url = format!("{p}/recipes");
        for b in [json!({}), json!([]), Value::Null] {
            no_input(&s.post(&url, &b).await);
        }
        no_input(&s.send("POST", &url, None, None).await);
        no_input(&s.send("POST", &url, None, Some("application/json")).await);
    }
    // Not an object.
    for b in [json!("x"), json!([1]), json!(5)] {
        s.post("/v2/recipes", &b).await.problem(422, true);
    }
    // Malformed JSON and a wrong content type are problems too (design: every error is problem+json).
    s.send(
        "POST",
        "/v2/recipes",
        Some(b"{\"name\": "),
        Some("application/json"),
    )
    .await
    .problem(400, false);
    let raw = serde_json::to_vec(&body("x")).unwrap();
    s.send("POST", "/v2/recipes", Some(&raw), Some("text/plain"))
        .await
        .problem(415, false);

    let base = body("x");
    let mut cases: Vec<(Value, &str)> = vec![];
    for f in ["name", "recipe_type", "linux_distribution"] {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(f);
        cases.push((b, f));
        cases.push((with(base.clone(), f, json!(1)), f));
        cases.push((with(base.clone(), f, Value::Null), f));
        cases.push((with(base.clone(), f, json!(["x"])), f));
    }
    cases.extend([
        (with(base.clone(), "name", json!("")), "name"),
        (with(base.clone(), "name", json!("   ")), "name"),
        (
            with(base.clone(), "require_dkms", json!("maybe")),
            "require_dkms",
        ),
        (with(base.clone(), "require_dkms", json!(2)), "require_dkms"),
        (
            with(base.clone(), "require_dkms", Value::Null),
            "require_dkms",
        ),
        (with(base.clone(), "arch", json!(64)), "arch"),
        (with(base.clone(), "arch", Value::Null), "arch"),
        (
            with(base.clone(), "template_dictionary", json!("a=b")),
            "template_dictionary",
        ),
        (
            with(
                base.clone(),
                "template_dictionary",
                json!({"key": "a", "value": "b"}),
            ),
            "template_dictionary",
        ),
        (
            with(base.clone(), "template_dictionary", json!(["a"])),
            "template_dictionary",
        ),
        (
            with(base.clone(), "template_dictionary", json!([{"key": "a"}])),
            "template_dictionary",
        ),
        (
            with(base.clone(), "template_dictionary", json!([{"value": "a"}])),
            "template_dictionary",
        ),
        (
            with(
                base.clone(),
                "template_dictionary",
                json!([{"key": 1, "value": "a"}]),
            ),
            "template_dictionary",
        ),
        (
            with(
                base.clone(),
                "template_dictionary",
                json!([{"key": "a", "value": "b", "x": "c"}]),
            ),
            "template_dictionary",
        ),
        (with(base.clone(), "link", json!("s3://ims/r.tgz")), "link"),
        (with(base.clone(), "link", json!({"type": "s3"})), "link"),
        (
            with(base.clone(), "link", json!({"path": "", "type": "s3"})),
            "link",
        ),
        (
            with(base.clone(), "link", json!({"path": "s3://ims/r.tgz"})),
            "link",
        ),
        (
            with(
                base.clone(),
                "link",
                json!({"path": "s3://ims/r.tgz", "type": "ftp"}),
            ),
            "link",
        ),
        (
            with(
                base.clone(),
                "link",
                json!({"path": "s3://ims/r.tgz", "type": "s3", "md5": "x"}),
            ),
            "link",
        ),
        (
            with(base.clone(), "link", json!({"path": 1, "type": "s3"})),
            "link",
        ),
        (
            with(
                base.clone(),
                "id",
                json!("0b2f7c8a-7c9c-4a36-9f2b-8d5d1b4b8a8e"),
            ),
            "id",
        ),
        (
            with(base.clone(), "created", json!("2020-01-01T00:00:00")),
            "created",
        ),
        (with(base.clone(), "foo", json!("bar")), "foo"),
        (with(base.clone(), "metadata", json!({})), "metadata"),
    ]);
    for (b, field) in &cases {
        names_field(&s.post("/v2/recipes", b).await, field, b);
        names_field(&s.post("/v3/recipes", b).await, field, b);
    }
    // Nested link errors name the nested field.
    let p = s
        .post(
            "/v2/recipes",
            &with(base.clone(), "link", json!({"path": "", "type": "ftp"})),
        )
        .await
        .problem(422, true);
    assert!(p["errors"]["link"].get("path").is_some(), "{p}");
    assert!(p["errors"]["link"].get("type").is_some(), "{p}");
    // Several bad fields are all reported.
    let p = s
        .post(
            "/v2/recipes",
            &json!({"name": "", "recipe_type": "x", "bogus": 1}),
        )
        .await
        .problem(422, true);
    for f in ["name", "recipe_type", "linux_distribution", "bogus"] {
        assert!(p["errors"].get(f).is_some(), "{f}: {p}");
    }
    assert_eq!(
        s.get("/v2/recipes").await.ok(200),
        json!([]),
        "nothing created"
    );
}

/// Link validation on POST: the object must exist (422 without `errors`), the path must be unique
/// among active recipes (422), any scheme is accepted (bucket = netloc).
async fn post_link_validation(db: Db) {
    let s = start(db).await;
    // Missing object → 422, no `errors`.
    for p in PREFIXES {
        let b = with(
            body("x"),
            "link",
            json!({"path": "s3://ims/recipes/missing/recipe.tgz", "etag": "", "type": "s3"}),
        );
        let pr = s
            .post(&format!("{p}/recipes"), &b)
            .await
            .problem(422, false);
        assert!(
            pr["detail"]
                .as_str()
                .unwrap()
                .contains("s3://ims/recipes/missing/recipe.tgz"),
            "{pr}"
        );
    }
    // Missing bucket, and paths that would leave the bucket: 422, nothing read.
    for path in [
        "s3://no-such-bucket/recipe.tgz",
        "s3://ims/../etc/passwd",
        "s3://ims/a/../../b",
        "s3://ims//etc/passwd",
        "s3://ims",
        "recipe.tgz",
    ] {
        let b = with(body("x"), "link", json!({"path": path, "type": "s3"}));
        s.post("/v2/recipes", &b).await.problem(422, false);
    }
    assert_eq!(count(&s, "/v2/recipes").await, 0);

    // Existing object → 201, link echoed; an omitted etag is dumped as "" and a given one kept.
    s.put_artifact("ims", "recipes/a/recipe.tgz", b"a");
    let rec = s
        .post(
            "/v2/recipes",
            &with(
                body("a"),
                "link",
                json!({"path": "s3://ims/recipes/a/recipe.tgz", "type": "s3"}),
            ),
        )
        .await
        .ok(201);
    assert_eq!(
        rec["link"],
        json!({"path": "s3://ims/recipes/a/recipe.tgz", "etag": "", "type": "s3"})
    );
    let link_b = json!({"path": "s3://ims/recipes/b/recipe.tgz", "etag": "abc", "type": "s3"});
    s.put_artifact("ims", "recipes/b/recipe.tgz", b"b");
    let rec_b = s
        .post("/v3/recipes", &with(body("b"), "link", link_b.clone()))
        .await
        .ok(201);
    assert_eq!(rec_b["link"], link_b, "etag kept verbatim");
    // The scheme is not checked (the original's tests use http://ims/...).
    s.put_artifact("ims", "recipes/c/recipe.tgz", b"c");
    let link_c = json!({"path": "http://ims/recipes/c/recipe.tgz", "etag": "", "type": "s3"});
    let rec_c = s
        .post("/recipes", &with(body("c"), "link", link_c.clone()))
        .await
        .ok(201);
    assert_eq!(rec_c["link"], link_c);
    assert_eq!(
        s.get(&format!("/v2/recipes/{}", id_of(&rec_c)))
            .await
            .ok(200)["link"],
        link_c
    );

    // Duplicate link path → 422 (the original's helper crashed with a 500 here, §8; we answer 422 with
    // `errors.link`). Any etag, any family.
    for p in PREFIXES {
        for etag in ["", "other"] {
            let b = with(
                body("dup"),
                "link",
                json!({"path": "s3://ims/recipes/a/recipe.tgz", "etag": etag, "type": "s3"}),
            );
            names_field(&s.post(&format!("{p}/recipes"), &b).await, "link", &b);
        }
    }
    assert_eq!(count(&s, "/v2/recipes").await, 3);
    // Only active recipes count: after a v2 delete without cascade the object may be reused.
    s.delete(&format!("/v2/recipes/{}?cascade=false", id_of(&rec)))
        .await
        .ok(204);
    assert!(s.has_artifact("ims", "recipes/a/recipe.tgz"));
    s.post(
        "/v2/recipes",
        &with(
            body("again"),
            "link",
            json!({"path": "s3://ims/recipes/a/recipe.tgz", "type": "s3"}),
        ),
    )
    .await
    .ok(201);
    // Deleted recipes do not count either (their link moved, and is not checked).
    s.delete(&format!("/v3/recipes/{}", id_of(&rec_b)))
        .await
        .ok(204);
    s.put_artifact("ims", "recipes/b/recipe.tgz", b"b2");
    s.post("/v3/recipes", &with(body("b2"), "link", link_b.clone()))
        .await
        .ok(201);
}

/// PATCH link: link-less record → validated and set (200, echoed); identical link → 200;
/// different link (or same path, different etag) → 409; missing object / duplicate → 422.
async fn patch_link(db: Db) {
    let s = start(db).await;
    for p in PREFIXES {
        let rec = s.post(&format!("{p}/recipes"), &body("r")).await.ok(201);
        let url = format!("{p}/recipes/{}", id_of(&rec));
        let key = format!("recipes/{}/recipe.tgz", id_of(&rec));
        // Missing object → 422 without `errors`; nothing changes.
        let link = json!({"path": format!("s3://ims/{key}"), "etag": "", "type": "s3"});
        s.patch(&url, &json!({"link": link}))
            .await
            .problem(422, false);
        assert_eq!(s.get(&url).await.ok(200), rec);
        // Object present → 200, full record with the link.
        tarball(&s, &key);
        let got = s.patch(&url, &json!({"link": link})).await.ok(200);
        assert_eq!(keys(&got), sorted(RECIPE_KEYS));
        assert_eq!(got["link"], link);
        assert_eq!(
            with(got.clone(), "link", Value::Null),
            rec,
            "only the link changed"
        );
        assert_eq!(s.get(&url).await.ok(200), got);
        // Identical link → 200, unchanged (idempotent).
        assert_eq!(s.patch(&url, &json!({"link": link})).await.ok(200), got);
        // Same path with another etag is a different link → 409.
        let other_etag = with(link.clone(), "etag", json!("xyz"));
        s.patch(&url, &json!({"link": other_etag}))
            .await
            .problem(409, false);
        // A different link → 409, even if that object exists.
        let other = tarball(&s, &format!("recipes/{}/other.tgz", id_of(&rec)));
        let pr = s
            .patch(&url, &json!({"link": other}))
            .await
            .problem(409, false);
        assert_eq!(pr["title"], "Conflict");
        assert_eq!(s.get(&url).await.ok(200), got, "409 changes nothing");
    }
    // An omitted etag is stored as "" and echoed as such.
    let rec = s.post("/v2/recipes", &body("e")).await.ok(201);
    tarball(&s, "recipes/e/recipe.tgz");
    let got = s
        .patch(
            &format!("/v2/recipes/{}", id_of(&rec)),
            &json!({"link": {"path": "s3://ims/recipes/e/recipe.tgz", "type": "s3"}}),
        )
        .await
        .ok(200);
    assert_eq!(got["link"]["etag"], "");
    // Then the same link with etag "" is identical.
    s.patch(
        &format!("/v2/recipes/{}", id_of(&rec)),
        &json!({"link": {"path": "s3://ims/recipes/e/recipe.tgz", "etag": "", "type": "s3"}}),
    )
    .await
    .ok(200);

    // A link another active recipe uses → 422.
    let fresh = s.post("/v2/recipes", &body("f")).await.ok(201);
    let url = format!("/v2/recipes/{}", id_of(&fresh));
    let dup = json!({"link": {"path": "s3://ims/recipes/e/recipe.tgz", "etag": "", "type": "s3"}});
    names_field(&s.patch(&url, &dup).await, "link", &dup);
    assert_eq!(s.get(&url).await.ok(200), fresh);

    // link null and ill-formed links → 422 naming link.
    for l in [
        Value::Null,
        json!("s3://ims/x"),
        json!({"path": "s3://ims/x"}),
        json!({"path": "", "type": "s3"}),
        json!({"path": "s3://ims/x", "type": "ftp"}),
    ] {
        let b = json!({"link": l});
        names_field(&s.patch(&url, &b).await, "link", &b);
    }
    // A path that would leave its bucket → 422.
    s.patch(
        &url,
        &json!({"link": {"path": "s3://ims/../../etc/passwd", "type": "s3"}}),
    )
    .await
    .problem(422, false);

    // A failing link leaves the other fields of the same PATCH unapplied (the original left them
    // changed in memory, §8): arch stays.
    let linked = s.get(&format!("/v2/recipes/{}", id_of(&rec))).await.ok(200);
    let other = tarball(&s, "recipes/e/other.tgz");
    s.patch(
        &format!("/v2/recipes/{}", id_of(&rec)),
        &json!({"arch": "aarch64", "require_dkms": false, "link": other}),
    )
    .await
    .problem(409, false);
    assert_eq!(
        s.get(&format!("/v2/recipes/{}", id_of(&rec))).await.ok(200),
        linked
    );
    s.patch(
        &url,
        &json!({"arch": "aarch64", "link": {"path": "s3://ims/nope.tgz", "type": "s3"}}),
    )
    .await
    .problem(422, false);
    assert_eq!(s.get(&url).await.ok(200), fresh);
}

/// PATCH arch, require_dkms, template_dictionary (sequences as the original's tests), input errors
/// and 404s.
async fn patch_fields_and_errors(db: Db) {
    let s = start(db).await;
    let rec = s
        .post(
            "/v3/recipes",
            &with(body("r"), "require_dkms", json!(false)),
        )
        .await
        .ok(201);
    let id = id_of(&rec);
    for p in PREFIXES {
        let url = format!("{p}/recipes/{id}");
        for arch in ["aarch64", "x86_64", "aarch64", "x86_64"] {
            let got = s.patch(&url, &json!({"arch": arch})).await.ok(200);
            assert_eq!(keys(&got), sorted(RECIPE_KEYS));
            assert_eq!(got["arch"], arch);
            assert_eq!(s.get(&url).await.ok(200)["arch"], arch);
        }
        for dkms in [true, false, true, false] {
            let got = s.patch(&url, &json!({"require_dkms": dkms})).await.ok(200);
            assert_eq!(got["require_dkms"], dkms);
            assert_eq!(s.get(&url).await.ok(200)["require_dkms"], dkms);
        }
    }
    let url = format!("/v2/recipes/{id}");
    let td = json!([{"key": "repo", "value": "http://x"}, {"key": "k", "value": "v"}]);
    let got = s
        .patch(&url, &json!({"template_dictionary": td}))
        .await
        .ok(200);
    assert_eq!(got["template_dictionary"], td);
    let got = s
        .patch(&url, &json!({"template_dictionary": []}))
        .await
        .ok(200);
    assert_eq!(got["template_dictionary"], json!([]));
    // null: the original crashed (500, §8); we store null.
    let got = s
        .patch(&url, &json!({"template_dictionary": null}))
        .await
        .ok(200);
    assert_eq!(got["template_dictionary"], Value::Null);
    assert_eq!(
        s.get(&url).await.ok(200)["template_dictionary"],
        Value::Null
    );
    // Several fields at once.
    let got = s
        .patch(
            &url,
            &json!({"arch": "aarch64", "require_dkms": "yes", "template_dictionary": td}),
        )
        .await
        .ok(200);
    assert_eq!(got["arch"], "aarch64");
    assert_eq!(got["require_dkms"], true);
    assert_eq!(got["template_dictionary"], td);
    // Fields PATCH never touches.
    assert_eq!(got["id"], rec["id"]);
    assert_eq!(got["created"], rec["created"]);
    assert_eq!(got["name"], "r");
    assert_eq!(got["recipe_type"], "kiwi-ng");
    assert_eq!(got["linux_distribution"], "sles15");
    assert_eq!(got["link"], Value::Null);
    let before = s.get(&url).await.ok(200);

    // No input → 400.
    for p in PREFIXES {
        let url = format!("{p}/recipes/{id}");
        no_input(&s.patch(&url, &json!({})).await);
        no_input(&s.patch(&url, &json!([])).await);
        no_input(&s.send("PATCH", &url, None, None).await);
    }
    // Unknown (including non-patchable) and ill-typed fields → 422 naming the field.
    let cases = [
        (json!({"name": "new"}), "name"),
        (json!({"recipe_type": "packer"}), "recipe_type"),
        (
            json!({"linux_distribution": "sles12"}),
            "linux_distribution",
        ),
        (json!({"id": id}), "id"),
        (json!({"created": "2020-01-01T00:00:00"}), "created"),
        (json!({"foo": 1}), "foo"),
        (json!({"arch": "ppc64le"}), "arch"),
        (json!({"arch": null}), "arch"),
        (json!({"require_dkms": "maybe"}), "require_dkms"),
        (json!({"require_dkms": null}), "require_dkms"),
        (json!({"template_dictionary": "x"}), "template_dictionary"),
        (
            json!({"template_dictionary": [{"key": "a"}]}),
            "template_dictionary",
        ),
        (
            json!({"template_dictionary": [{"key": "a", "value": 1}]}),
            "template_dictionary",
        ),
        (json!({"arch": "aarch64", "name": "x"}), "name"),
    ];
    for (b, field) in &cases {
        names_field(&s.patch(&url, b).await, field, b);
        names_field(&s.patch(&format!("/v3/recipes/{id}"), b).await, field, b);
    }
    assert_eq!(
        s.get(&url).await.ok(200),
        before,
        "bad PATCHes change nothing"
    );

    // 404 for unknown ids (a valid body), on every family; an upper-cased id does not match.
    for p in PREFIXES {
        for bad in [
            "nope".to_string(),
            "0b2f7c8a-7c9c-4a36-9f2b-8d5d1b4b8a8e".to_string(),
            id.to_uppercase(),
        ] {
            let url = format!("{p}/recipes/{bad}");
            not_found(&s.get(&url).await);
            not_found(&s.patch(&url, &json!({"arch": "x86_64"})).await);
            not_found(&s.delete(&url).await);
        }
        s.delete(&format!("{p}/recipes/nope?cascade=false"))
            .await
            .problem(404, false);
    }
    assert_eq!(s.get(&url).await.ok(200), before);
}

/// v2 (and unversioned, and gateway) DELETE: hard delete; `cascade` (default true) deletes the tarball.
async fn v2_delete_cascade(db: Db) {
    let s = start(db).await;
    let mut n = 0;
    let mut new = |s: &Server| {
        n += 1;
        let key = format!("recipes/r{n}/recipe.tgz");
        (tarball(s, &key), key)
    };
    for p in V2_PREFIXES {
        // (query, expected "tarball deleted")
        let cases = [
            ("", true),
            ("?cascade=true", true),
            ("?cascade=True", true),
            ("?cascade=TRUE", true),
            ("?cascade=yes", true),
            ("?cascade=t", true),
            ("?cascade=1", true),
            ("?cascade=False", false),
            ("?cascade=false", false),
            ("?cascade=no", false),
            ("?cascade=0", false),
            ("?cascade=f", false),
            ("?cascade=", false),
            ("?cascade=whatever", false),
            ("?other=1", true),
        ];
        for (q, gone) in cases {
            let (link, key) = new(&s);
            let rec = s
                .post(&format!("{p}/recipes"), &with(body("r"), "link", link))
                .await
                .ok(201);
            let id = id_of(&rec);
            s.delete(&format!("{p}/recipes/{id}{q}")).await.ok(204);
            assert_eq!(
                !s.has_artifact("ims", &key),
                gone,
                "{p}/recipes/{{id}}{q}: tarball deleted?"
            );
            assert!(
                !s.has_artifact("ims", &format!("deleted/{key}")),
                "not moved"
            );
            s.get(&format!("{p}/recipes/{id}"))
                .await
                .problem(404, false);
            s.get(&format!("/v3/recipes/{id}"))
                .await
                .problem(404, false);
            s.get(&format!("/v3/deleted/recipes/{id}"))
                .await
                .problem(404, false);
            s.delete(&format!("{p}/recipes/{id}{q}"))
                .await
                .problem(404, false);
        }
        // Link-less recipe, and a recipe whose tarball is already gone: 204 either way.
        let rec = s
            .post(&format!("{p}/recipes"), &body("nolink"))
            .await
            .ok(201);
        s.delete(&format!("{p}/recipes/{}", id_of(&rec)))
            .await
            .ok(204);
        let (link, key) = new(&s);
        let rec = s
            .post(&format!("{p}/recipes"), &with(body("r"), "link", link))
            .await
            .ok(201);
        std::fs::remove_file(s.artifact_path("ims", &key)).unwrap();
        s.delete(&format!("{p}/recipes/{}", id_of(&rec)))
            .await
            .ok(204);
    }
    // The scheme of the link does not matter for cascade either.
    s.put_artifact("ims", "recipes/h/recipe.tgz", b"h");
    let rec = s
        .post(
            "/v2/recipes",
            &with(
                body("h"),
                "link",
                json!({"path": "http://ims/recipes/h/recipe.tgz", "type": "s3"}),
            ),
        )
        .await
        .ok(201);
    s.delete(&format!("/v2/recipes/{}", id_of(&rec)))
        .await
        .ok(204);
    assert!(!s.has_artifact("ims", "recipes/h/recipe.tgz"));
    // Other records are untouched.
    let (link, key) = new(&s);
    let keep = s
        .post("/v2/recipes", &with(body("keep"), "link", link))
        .await
        .ok(201);
    let (link, _) = new(&s);
    let gone = s
        .post("/v2/recipes", &with(body("gone"), "link", link))
        .await
        .ok(201);
    s.delete(&format!("/v2/recipes/{}", id_of(&gone)))
        .await
        .ok(204);
    assert_eq!(s.get("/v2/recipes").await.ok(200), json!([keep]));
    assert!(s.has_artifact("ims", &key));
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), json!([]));
}

/// v2 collection DELETE: hard, cascade default true, persists (the original's bug lost later changes).
async fn v2_delete_all(db: Db) {
    let s = start(db).await;
    for (round, (p, q, gone)) in [
        ("/v2", "?cascade=false", false),
        ("", "?cascade=False", false),
        ("/apis/ims", "", true),
        ("/apis/ims/v2", "?cascade=true", true),
        ("/v2", "", true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut keys_ = vec![];
        for i in 0..3 {
            let key = format!("recipes/all{round}-{i}/recipe.tgz");
            let link = tarball(&s, &key);
            s.post("/v2/recipes", &with(body("r"), "link", link))
                .await
                .ok(201);
            keys_.push(key);
        }
        s.post("/v2/recipes", &body("nolink")).await.ok(201);
        s.delete(&format!("{p}/recipes{q}")).await.ok(204);
        assert_eq!(s.get("/v2/recipes").await.ok(200), json!([]), "{p}{q}");
        for k in &keys_ {
            assert_eq!(!s.has_artifact("ims", k), gone, "{p}{q}: {k}");
        }
        assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), json!([]));
    }
    // Deleting an empty collection is fine.
    s.delete("/v2/recipes").await.ok(204);
    // Changes after a collection delete persist across a restart.
    let after = s.post("/v2/recipes", &body("after")).await.ok(201);
    let s = s.restart().await;
    assert_eq!(s.get("/v2/recipes").await.ok(200), json!([after]));
}

/// v3 DELETE = soft delete: record moved to /v3/deleted/recipes with every field and `deleted`;
/// tarball moved to `deleted/<key>` in the same bucket; the deleted link points there.
async fn v3_soft_delete(db: Db) {
    let s = start(db).await;
    let td = json!([{"key": "a", "value": "b"}]);
    for p in V3_PREFIXES {
        let key = format!("recipes{p}/recipe.tgz").replace("//", "/");
        let link = tarball(&s, &key);
        let rec = s
            .post(
                &format!("{p}/recipes"),
                &json!({"name": "full", "recipe_type": "packer", "linux_distribution": "rocky9",
                    "link": link, "arch": "aarch64", "require_dkms": false, "template_dictionary": td}),
            )
            .await
            .ok(201);
        let id = id_of(&rec);
        s.delete(&format!("{p}/recipes/{id}")).await.ok(204);
        s.get(&format!("{p}/recipes/{id}"))
            .await
            .problem(404, false);
        s.get(&format!("/v2/recipes/{id}"))
            .await
            .problem(404, false);
        s.delete(&format!("{p}/recipes/{id}"))
            .await
            .problem(404, false);
        let d = s.get(&format!("{p}/deleted/recipes/{id}")).await.ok(200);
        let mut k: Vec<&str> = RECIPE_KEYS.to_vec();
        k.push("deleted");
        assert_eq!(keys(&d), sorted(&k), "{d}");
        for f in [
            "id",
            "created",
            "name",
            "recipe_type",
            "linux_distribution",
            "arch",
            "require_dkms",
            "template_dictionary",
        ] {
            assert_eq!(d[f], rec[f], "{f} preserved");
        }
        assert!(is_wire_time(d["deleted"].as_str().unwrap()), "{d}");
        assert!(
            d["deleted"].as_str().unwrap() >= rec["created"].as_str().unwrap(),
            "{d}"
        );
        // Tarball moved, same bytes; the link follows it.
        assert_eq!(d["link"]["path"], format!("s3://ims/deleted/{key}"));
        assert_eq!(d["link"]["type"], "s3");
        assert!(d["link"]["etag"].is_string());
        assert!(!s.has_artifact("ims", &key));
        assert_eq!(
            s.read_artifact("ims", &format!("deleted/{key}")),
            format!("tarball {key}").as_bytes()
        );
        assert!(
            s.get(&format!("{p}/deleted/recipes"))
                .await
                .ok(200)
                .as_array()
                .unwrap()
                .contains(&d)
        );
    }
    // v3 has no cascade: the parameter is ignored and the tarball still moves.
    let link = tarball(&s, "recipes/nocascade/recipe.tgz");
    let rec = s
        .post("/v3/recipes", &with(body("nc"), "link", link))
        .await
        .ok(201);
    s.delete(&format!("/v3/recipes/{}?cascade=true", id_of(&rec)))
        .await
        .ok(204);
    assert!(s.has_artifact("ims", "deleted/recipes/nocascade/recipe.tgz"));
    assert!(!s.has_artifact("ims", "recipes/nocascade/recipe.tgz"));
    s.get(&format!("/v3/deleted/recipes/{}", id_of(&rec)))
        .await
        .ok(200);
    // Link-less recipe: link stays null. Tarball already gone: link kept unchanged.
    let nolink = s.post("/v3/recipes", &body("nolink")).await.ok(201);
    s.delete(&format!("/v3/recipes/{}", id_of(&nolink)))
        .await
        .ok(204);
    let d = s
        .get(&format!("/v3/deleted/recipes/{}", id_of(&nolink)))
        .await
        .ok(200);
    assert_eq!(d["link"], Value::Null);
    let link = tarball(&s, "recipes/gone/recipe.tgz");
    let gone = s
        .post("/v3/recipes", &with(body("gone"), "link", link.clone()))
        .await
        .ok(201);
    std::fs::remove_file(s.artifact_path("ims", "recipes/gone/recipe.tgz")).unwrap();
    s.delete(&format!("/v3/recipes/{}", id_of(&gone)))
        .await
        .ok(204);
    let d = s
        .get(&format!("/v3/deleted/recipes/{}", id_of(&gone)))
        .await
        .ok(200);
    assert_eq!(d["link"], link);

    // 404 leaves both lists untouched.
    let active = s.get("/v3/recipes").await.ok(200);
    let deleted = s.get("/v3/deleted/recipes").await.ok(200);
    s.delete("/v3/recipes/nope").await.problem(404, false);
    assert_eq!(s.get("/v3/recipes").await.ok(200), active);
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), deleted);

    // Collection soft delete: every record and tarball moves.
    let mut ids = vec![];
    for i in 0..3 {
        let link = tarball(&s, &format!("recipes/all{i}/recipe.tgz"));
        let r = s
            .post("/v3/recipes", &with(body("all"), "link", link))
            .await
            .ok(201);
        ids.push(id_of(&r));
    }
    s.post("/v3/recipes", &body("nolink2")).await.ok(201);
    let before = count(&s, "/v3/deleted/recipes").await;
    s.delete("/v3/recipes").await.ok(204);
    assert_eq!(s.get("/v3/recipes").await.ok(200), json!([]));
    assert_eq!(count(&s, "/v3/deleted/recipes").await, before + 4);
    for (i, id) in ids.iter().enumerate() {
        let key = format!("recipes/all{i}/recipe.tgz");
        assert!(!s.has_artifact("ims", &key));
        assert!(s.has_artifact("ims", &format!("deleted/{key}")));
        let d = s.get(&format!("/v3/deleted/recipes/{id}")).await.ok(200);
        assert_eq!(d["link"]["path"], format!("s3://ims/deleted/{key}"));
    }
    // Empty collection: fine.
    s.delete("/apis/ims/v3/recipes").await.ok(204);
    // Everything persists.
    let deleted = s.get("/v3/deleted/recipes").await.ok(200);
    let s = s.restart().await;
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), deleted);
    assert_eq!(s.get("/v3/recipes").await.ok(200), json!([]));
}

fn seeded_deleted(id: &str, link: Value) -> Value {
    json!({"id": id, "created": "2025-04-28T14:03:11", "deleted": "2025-05-01T10:00:00.250000",
        "name": "seeded", "recipe_type": "kiwi-ng", "linux_distribution": "sles15", "link": link,
        "template_dictionary": [{"key": "k", "value": "v"}], "require_dkms": false, "arch": "aarch64"})
}

const ID_A: &str = "1c5d1b4e-5f7a-4c39-9b3e-0a1b2c3d4e5f";
const ID_B: &str = "2d6e2c5f-6a8b-4d4a-8c4f-1b2c3d4e5f60";
const ID_C: &str = "3e7f3d6a-7b9c-4e5b-9d5a-2c3d4e5f6071";

/// GET of seeded deleted (and active) recipes: chosen ids and timestamps echoed in the wire format,
/// legacy records gain the defaults; 404s on every deleted route; no deleted routes in v2.
async fn deleted_get_and_404(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v3.2_deleted_recipes.json",
            json!([
                seeded_deleted(ID_A, json!({"path": "s3://ims/deleted/recipes/a/recipe.tgz", "etag": "e", "type": "s3"})),
                {"id": ID_B, "created": "2019-01-01T00:00:00", "deleted": "2019-02-01T00:00:00",
                 "name": "legacy", "recipe_type": "kiwi-ng", "linux_distribution": "sles12", "link": null},
            ]),
        )
        .seed(
            "v2.2_recipes.json",
            json!([{"id": ID_C, "created": "2024-02-29T23:59:59", "name": "active",
                "recipe_type": "packer", "linux_distribution": "centos7", "link": null}]),
        )
        .start()
        .await;
    for p in ["/v3", "/apis/ims/v3"] {
        let a = s.get(&format!("{p}/deleted/recipes/{ID_A}")).await.ok(200);
        let mut k: Vec<&str> = RECIPE_KEYS.to_vec();
        k.push("deleted");
        assert_eq!(keys(&a), sorted(&k));
        assert_eq!(a["created"], "2025-04-28T14:03:11.000000+00:00");
        assert_eq!(a["deleted"], "2025-05-01T10:00:00.250000+00:00");
        assert_eq!(a["arch"], "aarch64");
        assert_eq!(a["require_dkms"], false);
        assert_eq!(
            a["template_dictionary"],
            json!([{"key": "k", "value": "v"}])
        );
        assert_eq!(
            a["link"],
            json!({"path": "s3://ims/deleted/recipes/a/recipe.tgz", "etag": "e", "type": "s3"})
        );
        let b = s.get(&format!("{p}/deleted/recipes/{ID_B}")).await.ok(200);
        assert_eq!(keys(&b), sorted(&k));
        assert_eq!(b["arch"], "x86_64", "legacy default");
        assert_eq!(b["require_dkms"], true, "legacy default");
        assert_eq!(b["link"], Value::Null);
        // Collection, oldest first.
        assert_eq!(
            s.get(&format!("{p}/deleted/recipes")).await.ok(200),
            json!([b, a])
        );
        for bad in ["nope", ID_C] {
            let url = format!("{p}/deleted/recipes/{bad}");
            not_found(&s.get(&url).await);
            not_found(&s.delete(&url).await);
            not_found(&s.patch(&url, &json!({"operation": "undelete"})).await);
            // Unknown ids are 404 whatever the body.
            not_found(&s.patch(&url, &json!({})).await);
        }
        s.get(&format!("{p}/deleted/recipes/{}", ID_A.to_uppercase()))
            .await
            .problem(404, false);
    }
    let c = s.get(&format!("/recipes/{ID_C}")).await.ok(200);
    assert_eq!(keys(&c), sorted(RECIPE_KEYS));
    assert_eq!(c["created"], "2024-02-29T23:59:59.000000+00:00");
    assert_eq!(c["arch"], "x86_64");
    assert_eq!(c["require_dkms"], true);
    s.get(&format!("/v3/recipes/{ID_A}"))
        .await
        .problem(404, false);
    routing_errors(&s, "recipes").await;
    // Deleted records exist only in v3.
    for p in ["", "/v2", "/apis/ims", "/apis/ims/v2"] {
        s.get(&format!("{p}/deleted/recipes"))
            .await
            .problem(404, false);
        s.get(&format!("{p}/deleted/recipes/{ID_A}"))
            .await
            .problem(404, false);
    }
}

/// Undelete one: the record comes back with every field (same id, created, arch, require_dkms,
/// template_dictionary, original link path) and the tarball moves back; input errors and 404.
async fn undelete_one(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v3.2_deleted_recipes.json",
            json!([
                // A link that is not under deleted/ is kept (single undelete tolerates it).
                seeded_deleted(ID_A, json!({"path": "s3://ims/recipes/a/recipe.tgz", "etag": "", "type": "s3"})),
                // Deleted tarball missing: the link is kept as it is.
                seeded_deleted(ID_B, json!({"path": "s3://ims/deleted/recipes/b/recipe.tgz", "etag": "", "type": "s3"})),
            ]),
        )
        .start()
        .await;
    let td = json!([{"key": "a", "value": "b"}]);
    for p in V3_PREFIXES {
        let key = format!("recipes{p}/recipe.tgz").replace("//", "/");
        let link = tarball(&s, &key);
        let rec = s
            .post(
                "/v3/recipes",
                &json!({"name": "full", "recipe_type": "packer", "linux_distribution": "ubuntu24",
                    "link": link, "arch": "aarch64", "require_dkms": false, "template_dictionary": td}),
            )
            .await
            .ok(201);
        let id = id_of(&rec);
        s.delete(&format!("/v3/recipes/{id}")).await.ok(204);
        assert!(s.has_artifact("ims", &format!("deleted/{key}")));
        let url = format!("{p}/deleted/recipes/{id}");

        // Input errors first: nothing changes.
        no_input(&s.patch(&url, &json!({})).await);
        no_input(&s.send("PATCH", &url, None, None).await);
        for (b, f) in [
            (json!({"operation": "explode"}), "operation"),
            (json!({"operation": "UNDELETE"}), "operation"),
            (json!({"operation": 1}), "operation"),
            (json!({"operation": null}), "operation"),
            (json!({"op": "undelete"}), "op"),
            (json!({"operation": "undelete", "x": 1}), "x"),
        ] {
            names_field(&s.patch(&url, &b).await, f, &b);
        }
        s.get(&url).await.ok(200);
        assert!(s.has_artifact("ims", &format!("deleted/{key}")));

        let r = s.patch(&url, &json!({"operation": "undelete"})).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        s.get(&url).await.problem(404, false);
        s.patch(&url, &json!({"operation": "undelete"}))
            .await
            .problem(404, false);
        let back = s.get(&format!("/v3/recipes/{id}")).await.ok(200);
        assert_eq!(keys(&back), sorted(RECIPE_KEYS));
        assert_eq!(back["link"]["path"], link["path"]);
        assert_eq!(back["link"]["type"], "s3");
        let mut expect = rec.clone();
        expect["link"] = back["link"].clone();
        assert_eq!(back, expect, "every field restored");
        assert!(s.has_artifact("ims", &key));
        assert!(!s.has_artifact("ims", &format!("deleted/{key}")));
        assert_eq!(
            s.read_artifact("ims", &key),
            format!("tarball {key}").as_bytes()
        );
        // It can be soft-deleted and restored again.
        s.delete(&format!("/v3/recipes/{id}")).await.ok(204);
        s.patch(&url, &json!({"operation": "undelete"}))
            .await
            .ok(204);
        assert!(s.has_artifact("ims", &key));
        assert_eq!(
            s.get(&format!("/v3/recipes/{id}")).await.ok(200)["link"]["path"],
            link["path"]
        );
    }
    // Seeded: link not under deleted/ → kept; missing tarball → link kept.
    s.put_artifact("ims", "recipes/a/recipe.tgz", b"a");
    s.patch(
        &format!("/v3/deleted/recipes/{ID_A}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    let a = s.get(&format!("/v3/recipes/{ID_A}")).await.ok(200);
    assert_eq!(a["link"]["path"], "s3://ims/recipes/a/recipe.tgz");
    assert_eq!(a["created"], "2025-04-28T14:03:11.000000+00:00");
    assert_eq!(a["arch"], "aarch64");
    assert_eq!(a["require_dkms"], false);
    assert_eq!(
        a["template_dictionary"],
        json!([{"key": "k", "value": "v"}])
    );
    assert!(s.has_artifact("ims", "recipes/a/recipe.tgz"));
    s.patch(
        &format!("/v3/deleted/recipes/{ID_B}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    let b = s.get(&format!("/v3/recipes/{ID_B}")).await.ok(200);
    assert_eq!(b["link"]["path"], "s3://ims/deleted/recipes/b/recipe.tgz");
    // Link-less.
    let nolink = s.post("/v3/recipes", &body("nolink")).await.ok(201);
    s.delete(&format!("/v3/recipes/{}", id_of(&nolink)))
        .await
        .ok(204);
    s.patch(
        &format!("/v3/deleted/recipes/{}", id_of(&nolink)),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert_eq!(
        s.get(&format!("/v3/recipes/{}", id_of(&nolink)))
            .await
            .ok(200),
        nolink
    );
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), json!([]));
}

/// Undelete the collection: all or nothing.
async fn undelete_all(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v3.2_deleted_recipes.json",
            // The original's collection undelete crashed (500) on a link not under deleted/ (§8);
            // we keep such a link, as the single undelete does.
            json!([seeded_deleted(
                ID_A,
                json!({"path": "s3://ims/recipes/a/recipe.tgz", "etag": "", "type": "s3"})
            )]),
        )
        .start()
        .await;
    s.put_artifact("ims", "recipes/a/recipe.tgz", b"a");
    let mut recs = vec![];
    for i in 0..3 {
        let link = tarball(&s, &format!("recipes/u{i}/recipe.tgz"));
        recs.push(
            s.post(
                "/v3/recipes",
                &with(with(body("u"), "link", link), "arch", json!("aarch64")),
            )
            .await
            .ok(201),
        );
    }
    recs.push(s.post("/v3/recipes", &body("nolink")).await.ok(201));
    s.delete("/v3/recipes").await.ok(204);
    assert_eq!(count(&s, "/v3/deleted/recipes").await, 5);
    for i in 0..3 {
        assert!(s.has_artifact("ims", &format!("deleted/recipes/u{i}/recipe.tgz")));
    }
    // Input errors on the collection.
    no_input(&s.patch("/v3/deleted/recipes", &json!({})).await);
    no_input(&s.send("PATCH", "/v3/deleted/recipes", None, None).await);
    names_field(
        &s.patch("/v3/deleted/recipes", &json!({"operation": "delete"}))
            .await,
        "operation",
        &json!("delete"),
    );
    names_field(
        &s.patch(
            "/v3/deleted/recipes",
            &json!({"operation": "undelete", "id": ID_A}),
        )
        .await,
        "id",
        &json!("id"),
    );
    assert_eq!(count(&s, "/v3/deleted/recipes").await, 5);

    s.patch(
        "/apis/ims/v3/deleted/recipes",
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), json!([]));
    assert_eq!(count(&s, "/v3/recipes").await, 5);
    for (i, rec) in recs.iter().enumerate() {
        let back = s.get(&format!("/v3/recipes/{}", id_of(rec))).await.ok(200);
        let mut expect = rec.clone();
        expect["link"] = back["link"].clone();
        assert_eq!(back, expect);
        if i < 3 {
            assert_eq!(back["link"]["path"], rec["link"]["path"]);
            assert!(s.has_artifact("ims", &format!("recipes/u{i}/recipe.tgz")));
            assert!(!s.has_artifact("ims", &format!("deleted/recipes/u{i}/recipe.tgz")));
        }
    }
    assert_eq!(
        s.get(&format!("/v3/recipes/{ID_A}")).await.ok(200)["link"]["path"],
        "s3://ims/recipes/a/recipe.tgz"
    );
    // Empty collection: fine.
    s.patch("/v3/deleted/recipes", &json!({"operation": "undelete"}))
        .await
        .ok(204);
}

/// An active record with the same id blocks the undelete: we answer 409 and overwrite nothing (the
/// original silently overwrote the active record, §3.5). The collection undelete is all or nothing.
async fn undelete_conflict_changes_nothing(db: Db) {
    let s = builder(db)
        .await
        .seed(
            "v2.2_recipes.json",
            json!([{"id": ID_A, "created": "2024-01-01T00:00:00", "name": "active",
                "recipe_type": "packer", "linux_distribution": "centos7", "link": null}]),
        )
        .seed(
            "v3.2_deleted_recipes.json",
            json!([
                seeded_deleted(ID_A, json!({"path": "s3://ims/deleted/recipes/a/recipe.tgz", "etag": "", "type": "s3"})),
                seeded_deleted(ID_B, json!({"path": "s3://ims/deleted/recipes/b/recipe.tgz", "etag": "", "type": "s3"})),
            ]),
        )
        .start()
        .await;
    s.put_artifact("ims", "deleted/recipes/a/recipe.tgz", b"a");
    s.put_artifact("ims", "deleted/recipes/b/recipe.tgz", b"b");
    let active = s.get("/v3/recipes").await.ok(200);
    let deleted = s.get("/v3/deleted/recipes").await.ok(200);
    s.patch(
        &format!("/v3/deleted/recipes/{ID_A}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .problem(409, false);
    s.patch("/v3/deleted/recipes", &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    assert_eq!(s.get("/v3/recipes").await.ok(200), active);
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), deleted);
    for k in ["a", "b"] {
        assert!(s.has_artifact("ims", &format!("deleted/recipes/{k}/recipe.tgz")));
        assert!(!s.has_artifact("ims", &format!("recipes/{k}/recipe.tgz")));
    }
    // The other one can still be restored alone.
    s.patch(
        &format!("/v3/deleted/recipes/{ID_B}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert!(s.has_artifact("ims", "recipes/b/recipe.tgz"));
}

/// Permanent delete of deleted recipes: the tarball goes (a missing one is ignored), then the record.
async fn purge(db: Db) {
    let s = start(db).await;
    let mut ids = vec![];
    for i in 0..4 {
        let link = tarball(&s, &format!("recipes/p{i}/recipe.tgz"));
        let r = s
            .post("/v3/recipes", &with(body("p"), "link", link))
            .await
            .ok(201);
        ids.push(id_of(&r));
    }
    let nolink = s.post("/v3/recipes", &body("nolink")).await.ok(201);
    let keep = s.post("/v3/recipes", &body("keep")).await.ok(201);
    s.put_artifact("ims", "recipes/keep/recipe.tgz", b"k");
    for id in ids.iter().chain([&id_of(&nolink)]) {
        s.delete(&format!("/v3/recipes/{id}")).await.ok(204);
    }
    // One.
    for (i, p) in V3_PREFIXES.iter().enumerate() {
        let url = format!("{p}/deleted/recipes/{}", ids[i]);
        let r = s.delete(&url).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        s.get(&url).await.problem(404, false);
        s.delete(&url).await.problem(404, false);
        s.get(&format!("/v3/recipes/{}", ids[i]))
            .await
            .problem(404, false);
        assert!(!s.has_artifact("ims", &format!("deleted/recipes/p{i}/recipe.tgz")));
        assert!(!s.has_artifact("ims", &format!("recipes/p{i}/recipe.tgz")));
    }
    // A missing tarball is ignored.
    std::fs::remove_file(s.artifact_path("ims", "deleted/recipes/p2/recipe.tgz")).unwrap();
    s.delete(&format!("/v3/deleted/recipes/{}", ids[2]))
        .await
        .ok(204);
    assert_eq!(count(&s, "/v3/deleted/recipes").await, 2);
    // All.
    s.delete("/v3/deleted/recipes").await.ok(204);
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), json!([]));
    assert!(!s.has_artifact("ims", "deleted/recipes/p3/recipe.tgz"));
    assert!(!s.has_artifact("ims", "recipes/p3/recipe.tgz"));
    // Active records and their artifacts are untouched.
    assert_eq!(s.get("/v3/recipes").await.ok(200), json!([keep]));
    assert!(s.has_artifact("ims", "recipes/keep/recipe.tgz"));
    s.delete("/v3/deleted/recipes").await.ok(204);
    s.delete("/v3/deleted/recipes/nope")
        .await
        .problem(404, false);
}

/// The link check and the write are one step: of many concurrent POSTs (or PATCHes of link-less
/// recipes) with one link, exactly one wins and the others get the duplicate-link 422.
async fn concurrent_same_link(db: Db) {
    let s = start(db).await;
    let link = tarball(&s, "recipes/race/recipe.tgz");
    let b = with(body("race"), "link", link.clone());
    let rs = futures::future::join_all((0..16).map(|_| s.post("/v2/recipes", &b))).await;
    assert_eq!(rs.iter().filter(|r| r.status == 201).count(), 1);
    for r in rs.iter().filter(|r| r.status != 201) {
        let p = r.problem(422, true);
        assert!(p["errors"].get("link").is_some(), "{p}");
    }
    assert_eq!(count(&s, "/v2/recipes").await, 1);

    let mut urls = vec![];
    for _ in 0..8 {
        let r = s.post("/v2/recipes", &body("free")).await.ok(201);
        urls.push(format!("/v3/recipes/{}", id_of(&r)));
    }
    let other = tarball(&s, "recipes/race2/recipe.tgz");
    let pb = json!({"link": other});
    let rs = futures::future::join_all(urls.iter().map(|u| s.patch(u, &pb))).await;
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 1);
    for r in rs.iter().filter(|r| r.status != 200) {
        r.problem(422, true);
    }
    let all = s.get("/v2/recipes").await.ok(200);
    let with_other = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["link"] == other)
        .count();
    assert_eq!(with_other, 1);
}

/// When a tarball key is reused after a soft delete, nothing is ever overwritten: restoring the
/// deleted recipe over the new object or link is a 409, and so is soft-deleting the new recipe onto
/// the deleted one's `deleted/<key>` (the original silently overwrote in both cases). Nothing
/// changes on a 409.
async fn reused_key_is_never_overwritten(db: Db) {
    let s = start(db).await;
    let key = "recipes/reused/recipe.tgz";
    let link = tarball(&s, key);
    let a = s
        .post("/v3/recipes", &with(body("a"), "link", link.clone()))
        .await
        .ok(201);
    let ida = id_of(&a);
    s.delete(&format!("/v3/recipes/{ida}")).await.ok(204);
    let c_link = tarball(&s, "recipes/c/recipe.tgz");
    let c = s
        .post("/v3/recipes", &with(body("c"), "link", c_link))
        .await
        .ok(201);
    // The key is uploaded again and used by a new recipe.
    s.put_artifact("ims", key, b"B");
    let b = s
        .post("/v3/recipes", &with(body("b"), "link", link.clone()))
        .await
        .ok(201);
    let idb = id_of(&b);
    let deleted_a = s.get(&format!("/v3/deleted/recipes/{ida}")).await.ok(200);
    let check_unchanged = |s: &Server| {
        assert_eq!(s.read_artifact("ims", key), b"B");
        assert_eq!(
            s.read_artifact("ims", &format!("deleted/{key}")),
            format!("tarball {key}").as_bytes()
        );
    };
    // Restoring A would take B's link and overwrite B's tarball.
    let url_a = format!("/v3/deleted/recipes/{ida}");
    let p = s
        .patch(&url_a, &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    assert!(p["detail"].as_str().unwrap().contains(&ida), "{p}");
    s.patch("/v3/deleted/recipes", &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    check_unchanged(&s);
    assert_eq!(s.get(&url_a).await.ok(200), deleted_a);
    assert_eq!(
        s.get("/v3/recipes").await.ok(200),
        json!([c.clone(), b.clone()])
    );
    // Soft-deleting B would overwrite A's deleted tarball.
    for url in [format!("/v3/recipes/{idb}"), "/v3/recipes".to_string()] {
        s.delete(&url).await.problem(409, false);
        check_unchanged(&s);
        assert_eq!(
            s.get("/v3/recipes").await.ok(200),
            json!([c.clone(), b.clone()])
        );
        assert_eq!(
            s.get("/v3/deleted/recipes").await.ok(200),
            json!([deleted_a.clone()])
        );
    }
    // The collection soft delete is all or nothing: C, older than B, was moved first and is put
    // back.
    s.delete("/v3/recipes").await.problem(409, false);
    assert!(s.has_artifact("ims", "recipes/c/recipe.tgz"));
    assert!(!s.has_artifact("ims", "deleted/recipes/c/recipe.tgz"));
    s.get(&format!("/v3/recipes/{}", id_of(&c))).await.ok(200);
    s.delete(&format!("/v3/recipes/{}", id_of(&c)))
        .await
        .ok(204);
    // B's record goes (v2, tarball kept): the object alone still blocks the restore.
    s.delete(&format!("/v2/recipes/{idb}?cascade=false"))
        .await
        .ok(204);
    s.patch(&url_a, &json!({"operation": "undelete"}))
        .await
        .problem(409, false);
    check_unchanged(&s);
    // Once the object is gone, A comes back with its own tarball.
    std::fs::remove_file(s.artifact_path("ims", key)).unwrap();
    s.patch(&url_a, &json!({"operation": "undelete"}))
        .await
        .ok(204);
    assert_eq!(
        s.read_artifact("ims", key),
        format!("tarball {key}").as_bytes()
    );
    assert_eq!(
        s.get(&format!("/v3/recipes/{ida}")).await.ok(200)["link"]["path"],
        link["path"]
    );
}

both_backends!(
    post_keys_defaults_get,
    post_every_type_and_distribution,
    post_input_errors,
    post_link_validation,
    patch_link,
    patch_fields_and_errors,
    v2_delete_cascade,
    v2_delete_all,
    v3_soft_delete,
    deleted_get_and_404,
    undelete_one,
    undelete_all,
    undelete_conflict_changes_nothing,
    purge,
    concurrent_same_link,
    reused_key_is_never_overwritten,
);
