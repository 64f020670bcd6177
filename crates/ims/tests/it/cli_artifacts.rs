//! `ims artifacts …` and `ims images verify` (issue 3 items 4 and 7), driven as a subprocess
//! against a real `ims serve` (SQLite) and its built-in S3 endpoint, through STS.

use crate::common::*;
use md5::{Digest, Md5};
use serde_json::{Value, json};
use std::process::Command;

fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", Md5::digest(data))
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

/// Deterministic, non-repeating-ish content.
fn content(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn keys(list: &Value) -> Vec<String> {
    list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["Key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_round_trip_through_sts_and_s3() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);

    assert_eq!(
        cli.json(&["artifacts", "buckets", "list"]),
        json!(["boot-images", "ims"])
    );
    // Default toml output wraps the list.
    let o = cli.run(&["artifacts", "buckets", "list"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.trim(), r#"results = ["boot-images", "ims"]"#);

    let big = content(8 * 1024 * 1024 * 2 + 12345, 1); // three parts: multipart
    let small = content(5000, 2);
    for (name, data) in [("big.bin", &big), ("small.bin", &small)] {
        std::fs::write(cli.file(name), data).unwrap();
        let key = format!("t/{name}");
        let f = cli.file(name);
        assert_eq!(
            cli.json(&["artifacts", "create", "ims", &key, f.to_str().unwrap()]),
            json!({"artifact": key, "Key": key})
        );
        // What the server stored is the file.
        assert_eq!(&s.read_artifact("ims", &key), data);

        let d = cli.json(&["artifacts", "describe", "ims", &key]);
        let a = &d["artifact"];
        assert_eq!(a["ContentLength"], json!(data.len()), "{d}");
        assert_eq!(a["Metadata"]["md5sum"], json!(md5_hex(data)), "{d}");
        assert!(a["ETag"].is_string(), "{d}");
        assert!(a["LastModified"].is_string(), "{d}");

        let out = cli.file(&format!("{name}.out"));
        assert_eq!(
            cli.json(&["artifacts", "get", "ims", &key, out.to_str().unwrap()]),
            Value::Null
        );
        assert!(std::fs::read(&out).unwrap() == *data, "{name} differs");
    }

    let list = cli.json(&["artifacts", "list", "ims"]);
    let k = keys(&list);
    assert!(k.contains(&"t/big.bin".to_string()), "{list}");
    assert!(k.contains(&"t/small.bin".to_string()), "{list}");
    let big_entry = list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["Key"] == "t/big.bin")
        .unwrap();
    assert_eq!(big_entry["Size"], json!(big.len()));
    // cray's fields; LastModified as Python prints the datetime boto3 parses.
    assert_eq!(big_entry["StorageClass"], json!("STANDARD"), "{list}");
    assert!(
        big_entry["ETag"].as_str().unwrap().starts_with('"'),
        "{list}"
    );
    let lm = big_entry["LastModified"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_str(lm, "%Y-%m-%d %H:%M:%S%:z").is_ok(),
        "{lm}"
    );

    assert_eq!(
        cli.json(&["artifacts", "delete", "ims", "t/small.bin"]),
        Value::Null
    );
    assert!(!s.has_artifact("ims", "t/small.bin"));
    let k = keys(&cli.json(&["artifacts", "list", "ims"]));
    assert!(!k.contains(&"t/small.bin".to_string()), "{k:?}");
    assert!(k.contains(&"t/big.bin".to_string()), "{k:?}");

    // A missing object or bucket: `Error: …` on stderr (cray's words for delete), exit 1 as
    // cray's S3 errors, nothing on stdout.
    let o = cli.run(&["artifacts", "delete", "ims", "t/small.bin"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(o.stdout, "");
    assert!(
        o.stderr
            .starts_with("Error: Object was not found in bucket"),
        "{o:?}"
    );
    let o = cli.run(&["artifacts", "delete", "no-such-bucket", "k"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.starts_with("Error: Bucket does not exist"),
        "{o:?}"
    );
    let o = cli.run(&["artifacts", "describe", "ims", "nope"]);
    assert_eq!(o.code, 1, "{o:?}");
    let o = cli.run(&["artifacts", "list", "no-such-bucket"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("NoSuchBucket"), "{o:?}");
    // A usage error (no such file to upload) is found before any request: exit 2.
    let o = cli.run(&["artifacts", "create", "ims", "k", "/nonexistent/file"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("/nonexistent/file"), "{o:?}");
    // STS failing is a REST error: exit 2.
    let o = Cli::new(Some("http://127.0.0.1:9")).run(&["artifacts", "list", "ims"]);
    assert_eq!(o.code, 2, "{o:?}");

    // `get` replaces a file only once the download is complete: a failed one leaves it as it was,
    // a replaced file keeps its mode, a new one is 0644, and no temporary file stays behind.
    use std::os::unix::fs::PermissionsExt;
    let kept = cli.file("kept");
    std::fs::write(&kept, b"precious").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = cli.run(&["artifacts", "get", "ims", "nope", kept.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(std::fs::read(&kept).unwrap(), b"precious");
    cli.json(&[
        "artifacts",
        "get",
        "ims",
        "t/big.bin",
        kept.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&kept).unwrap() == big);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&kept), 0o600);
    let fresh = cli.file("fresh");
    cli.json(&[
        "artifacts",
        "get",
        "ims",
        "t/big.bin",
        fresh.to_str().unwrap(),
    ]);
    assert_eq!(mode(&fresh), 0o644);
    let leftovers: Vec<_> = std::fs::read_dir(cli.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ims-get-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `list` follows the markers of ListObjects v1 past the endpoint's 1000-key pages and decodes
/// `encoding-type=url` keys (space, `+`, `%`, non-ASCII) as botocore does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_list_pages_and_decodes_keys() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let mut want: Vec<String> = (0..1203).map(|i| format!("many/{i:05}")).collect();
    want.push("odd/a b+c%41ä&<x>.txt".into());
    for k in &want {
        let p = s.artifact_path("ims", k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, k.as_bytes()).unwrap();
    }
    want.sort();
    let list = cli.json(&["artifacts", "list", "ims"]);
    assert_eq!(keys(&list), want);
    let odd = list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["Key"] == "odd/a b+c%41ä&<x>.txt")
        .unwrap();
    assert_eq!(odd["Size"], json!("odd/a b+c%41ä&<x>.txt".len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_verify_checks_every_artifact() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);

    let mut artifacts = vec![];
    for (i, (name, mime)) in [
        ("rootfs", "application/vnd.cray.image.rootfs.squashfs"),
        ("kernel", "application/vnd.cray.image.kernel"),
        ("initrd", "application/vnd.cray.image.initrd"),
    ]
    .into_iter()
    .enumerate()
    {
        let data = content(if name == "rootfs" { 9 << 20 } else { 4000 }, 10 + i as u32);
        let f = cli.file(name);
        std::fs::write(&f, &data).unwrap();
        let key = format!("v1/{name}");
        cli.json(&[
            "artifacts",
            "create",
            "boot-images",
            &key,
            f.to_str().unwrap(),
        ]);
        let mut a = json!({"link": {"path": format!("s3://boot-images/{key}"), "etag": "", "type": "s3"},
                           "type": mime, "md5": md5_hex(&data)});
        if name == "rootfs" {
            a["sha256"] = json!(sha256_hex(&data));
        }
        artifacts.push(a);
    }
    let manifest =
        json!({"version": "1.0", "created": "2026-01-01 00:00:00", "artifacts": artifacts});
    let mf = cli.file("manifest.json");
    std::fs::write(&mf, serde_json::to_vec(&manifest).unwrap()).unwrap();
    cli.json(&[
        "artifacts",
        "create",
        "boot-images",
        "v1/manifest.json",
        mf.to_str().unwrap(),
    ]);
    let link = json!({"path": "s3://boot-images/v1/manifest.json", "etag": "", "type": "s3"});
    let img = s
        .post("/v3/images", &json!({"name": "verified", "link": link}))
        .await
        .ok(201);
    let id = img["id"].as_str().unwrap();

    let r = cli.json(&["images", "verify", id]);
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 3, "{r:?}");
    for x in r {
        assert_eq!(x["ok"], json!(true), "{x}");
        assert_eq!(x["expected"], x["actual"], "{x}");
    }
    let rootfs = r
        .iter()
        .find(|x| x["path"] == "s3://boot-images/v1/rootfs")
        .unwrap();
    assert_eq!(rootfs["sha256_expected"], rootfs["sha256_actual"]);
    assert!(rootfs["sha256_actual"].is_string(), "{rootfs}");

    // Corrupt the kernel on disk (same size): verify names it and exits 1.
    let p = s.artifact_path("boot-images", "v1/kernel");
    let mut data = std::fs::read(&p).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&p, &data).unwrap();
    let o = cli.run(&["images", "verify", id, "--format", "json"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("s3://boot-images/v1/kernel"), "{o:?}");
    let r: Value = serde_json::from_str(&o.stdout).unwrap();
    let bad: Vec<&Value> = r
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["ok"] != json!(true))
        .collect();
    assert_eq!(bad.len(), 1, "{r}");
    assert_eq!(bad[0]["path"], "s3://boot-images/v1/kernel");
    assert_ne!(bad[0]["expected"], bad[0]["actual"]);

    // A missing artifact is a failure too; the sha256 is checked where the manifest has one.
    std::fs::remove_file(s.artifact_path("boot-images", "v1/initrd")).unwrap();
    let rp = s.artifact_path("boot-images", "v1/rootfs");
    let mut data = std::fs::read(&rp).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&rp, &data).unwrap();
    let o = cli.run(&["images", "verify", id, "--format", "json"]);
    assert_eq!(o.code, 1, "{o:?}");
    for name in ["kernel", "initrd", "rootfs"] {
        assert!(
            o.stderr.contains(&format!("s3://boot-images/v1/{name}")),
            "{o:?}"
        );
    }

    // An unknown image: the usual client error.
    let o = cli.run(&["images", "verify", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.starts_with("Error: "), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_import_uploads_and_links_all_or_nothing() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);

    // A kiwi description directory: packed, uploaded, linked.
    let desc = cli.file("desc");
    std::fs::create_dir_all(desc.join("root/etc")).unwrap();
    std::fs::write(desc.join("config.xml"), "<image schemaversion=\"7.4\"/>").unwrap();
    std::fs::write(desc.join("root/etc/motd"), "hi").unwrap();
    let r = cli.json(&[
        "recipes",
        "import",
        "my-recipe",
        desc.to_str().unwrap(),
        "--linux-distribution",
        "sles15",
        "--template-dictionary-key",
        "A,B",
        "--template-dictionary-value",
        "1,2",
    ]);
    let id = r["id"].as_str().unwrap();
    let key = format!("recipes/{id}/recipe.tar.gz");
    assert_eq!(r["name"], "my-recipe", "{r}");
    assert_eq!(r["recipe_type"], "kiwi-ng", "{r}");
    assert_eq!(r["linux_distribution"], "sles15", "{r}");
    assert_eq!(
        r["template_dictionary"],
        json!([{"key": "A", "value": "1"}, {"key": "B", "value": "2"}]),
        "{r}"
    );
    assert_eq!(r["link"]["path"], json!(format!("s3://ims/{key}")), "{r}");
    assert_eq!(r["link"]["type"], "s3", "{r}");
    assert!(r["link"]["etag"].is_string(), "{r}");
    let obj = s.artifact_path("ims", &key);
    assert!(obj.is_file(), "{}", obj.display());
    let data = std::fs::read(&obj).unwrap();
    assert_eq!(&data[..2], &[0x1f, 0x8b]);
    let t = Command::new("tar").arg("-tzf").arg(&obj).output().unwrap();
    assert!(t.status.success(), "{t:?}");
    let names = String::from_utf8(t.stdout).unwrap();
    assert!(names.lines().any(|l| l == "./config.xml"), "{names}");
    assert!(names.lines().any(|l| l == "./root/etc/motd"), "{names}");
    let d = cli.json(&["artifacts", "describe", "ims", &key]);
    assert_eq!(
        d["artifact"]["Metadata"]["md5sum"],
        json!(md5_hex(&data)),
        "{d}"
    );

    // A gzip file is uploaded as is.
    let tgz = cli.file("r.tgz");
    std::fs::copy(&obj, &tgz).unwrap();
    let r2 = cli.json(&[
        "recipes",
        "import",
        "from-tgz",
        tgz.to_str().unwrap(),
        "--linux-distribution",
        "sles15",
    ]);
    let id2 = r2["id"].as_str().unwrap();
    assert_eq!(
        s.read_artifact("ims", &format!("recipes/{id2}/recipe.tar.gz")),
        data
    );
    for i in [id, id2] {
        s.delete(&format!("/v2/recipes/{i}?cascade=true"))
            .await
            .ok(204);
    }

    // Not a kiwi description, or not gzip: exit 2, nothing created.
    let empty = cli.file("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("README"), "no config").unwrap();
    let junk = cli.file("junk.tgz");
    std::fs::write(&junk, "not gzip at all").unwrap();
    for (src, what) in [(&empty, "config.xml"), (&junk, "gzip")] {
        let o = cli.run(&[
            "recipes",
            "import",
            "bad",
            src.to_str().unwrap(),
            "--linux-distribution",
            "sles15",
        ]);
        assert_eq!(o.code, 2, "{o:?}");
        assert_eq!(o.stdout, "");
        assert!(o.stderr.starts_with("Error: "), "{o:?}");
        assert!(o.stderr.contains(what), "{o:?}");
        assert_eq!(s.get("/v3/recipes").await.ok(200), json!([]));
        assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), json!([]));
    }
    let left = cli.json(&["artifacts", "list", "ims"]);
    assert_eq!(keys(&left), Vec::<String>::new(), "{left}");

    // A failure after the record exists (the upload is refused: the bucket is gone and a file
    // stands in its place): the recipe is removed again, not soft-deleted.
    let bucket = s.artifact_path("ims", "x");
    let bucket = bucket.parent().unwrap();
    std::fs::remove_dir_all(bucket).unwrap();
    std::fs::write(bucket, "not a bucket").unwrap();
    let o = cli.run(&[
        "recipes",
        "import",
        "doomed",
        desc.to_str().unwrap(),
        "--linux-distribution",
        "sles15",
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(o.stdout, "");
    assert!(o.stderr.starts_with("Error: "), "{o:?}");
    assert!(o.stderr.contains("s3://ims/recipes/"), "{o:?}");
    assert_eq!(s.get("/v3/recipes").await.ok(200), json!([]));
    assert_eq!(s.get("/v3/deleted/recipes").await.ok(200), json!([]));
}

/// `ims s3-credentials` shows the key pair `ims serve` generated; a plain S3 client (the AWS CLI,
/// no STS, no session token) works with it. It never generates a pair itself, and says so with an
/// external S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_credentials_work_with_a_plain_s3_client() {
    let s = start(Db::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let creds = |data: &std::path::Path, env: &[(&str, &str)]| {
        let mut c = Command::new(ims_bin());
        c.args(["s3-credentials", "--format", "json", "--data-dir"])
            .arg(data)
            .env("HOME", home.path());
        for k in [
            "IMS_CONFIG",
            "IMS_S3_PUBLIC_URL",
            "S3_ENDPOINT",
            "IMS_S3_ENDPOINT",
        ] {
            c.env_remove(k);
        }
        c.envs(env.iter().copied());
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8(o.stderr).unwrap(),
        )
    };
    let (code, out, err) = creds(s.data.path(), &[]);
    assert_eq!(code, Some(0), "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    let file: Value =
        serde_json::from_slice(&std::fs::read(s.data.path().join("s3-credentials.json")).unwrap())
            .unwrap();
    assert_eq!(shown["Credentials"]["AccessKeyId"], file["access_key_id"]);
    assert_eq!(
        shown["Credentials"]["SecretAccessKey"],
        file["secret_access_key"]
    );
    // The endpoint URL is the one the server advertises (it listens on a port chosen at start),
    // as STS names it.
    let sts = s.send("PUT", "/apis/sts/token", None, None).await.ok(200);
    let endpoint = sts["Credentials"]["EndpointURL"].as_str().unwrap();
    assert_eq!(
        shown["Credentials"]["EndpointURL"],
        json!(endpoint),
        "{err}"
    );

    // No pair yet: refused, and nothing generated.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = creds(empty.path(), &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no S3 credentials yet"), "{err}");
    assert!(!empty.path().join("s3-credentials.json").exists());
    // External S3: no built-in endpoint, no credentials of its own.
    let (code, _, err) = creds(
        empty.path(),
        &[
            ("S3_ENDPOINT", "https://rgw.site:8080"),
            ("S3_ACCESS_KEY", "a"),
            ("S3_SECRET_KEY", "b"),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("external S3 endpoint https://rgw.site:8080"),
        "{err}"
    );

    // The AWS CLI with the long-lived pair and the endpoint shown.
    if std::env::var("IMS_TEST_SKIP_S3").is_ok_and(|v| v == "1") {
        return;
    }
    let aws = std::env::var("IMS_TEST_AWS").expect(
        "IMS_TEST_AWS is not set: run the tests with scripts/test.sh (or IMS_TEST_SKIP_S3=1)",
    );
    s.put_artifact("boot-images", "direct/rootfs", b"squashfs bytes");
    let o = Command::new(aws)
        .args([
            "--endpoint-url",
            endpoint,
            "s3",
            "ls",
            "s3://boot-images/direct/",
        ])
        .env("HOME", home.path())
        .env("AWS_ACCESS_KEY_ID", file["access_key_id"].as_str().unwrap())
        .env(
            "AWS_SECRET_ACCESS_KEY",
            file["secret_access_key"].as_str().unwrap(),
        )
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(listing.contains(" 14 rootfs"), "{listing}");
}
