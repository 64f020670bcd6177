//! The `ims` client CLI (issue 3 item 3), driven as a subprocess against a real `ims serve`
//! (SQLite) and, where the exact request matters, against a tiny recording HTTP listener.

use crate::common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

impl Cli {
    /// Runs, expects success, parses stdout in `format`.
    fn ok(&self, format: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", format]);
        let o = self.run(&a);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
        parse(format, &o.stdout)
    }
}

fn parse(format: &str, text: &str) -> Value {
    match format {
        "json" => serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")),
        "yaml" => yaml_serde::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")),
        "toml" => {
            let t: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            serde_json::to_value(t).unwrap()
        }
        f => panic!("format {f}"),
    }
}

/// What the toml output can carry: the JSON without nulls, lists under `results`.
fn as_toml(v: &Value) -> Value {
    fn strip(v: &Value) -> Option<Value> {
        Some(match v {
            Value::Null => return None,
            Value::Array(a) => Value::Array(a.iter().filter_map(strip).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k.clone(), v)))
                    .collect(),
            ),
            v => v.clone(),
        })
    }
    let v = strip(v).unwrap_or(Value::Null);
    if v.is_array() {
        json!({ "results": v })
    } else {
        v
    }
}

/// Checks one read command in all three formats against the API's JSON.
fn check_formats(cli: &Cli, args: &[&str], api: &Value) {
    assert_eq!(&cli.ok("json", args), api, "json {args:?}");
    assert_eq!(&cli.ok("yaml", args), api, "yaml {args:?}");
    assert_eq!(cli.ok("toml", args), as_toml(api), "toml {args:?}");
    // toml is the default
    let o = cli.run(args);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(parse("toml", &o.stdout), as_toml(api));
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn count(v: &Value) -> usize {
    v.as_array().unwrap().len()
}

/// A deletion: exit 0 and an empty line on stdout (the 204 has no body).
fn deleted(cli: &Cli, args: &[&str]) {
    let o = cli.run(args);
    assert_eq!(o.code, 0, "{args:?}: {o:?}");
    assert_eq!(o.stdout.trim(), "", "{args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_and_deleted_public_keys() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::new(Some(&s.url));
    let key_file = cli.dir.path().join("id.pub");
    std::fs::write(&key_file, format!("{PUBLIC_KEY}\n")).unwrap();
    let k = cli.json(&[
        "public-keys",
        "create",
        "--name",
        "mykey",
        "--public-key",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(k["name"], "mykey");
    assert_eq!(k["public_key"], format!("{PUBLIC_KEY}\n"), "verbatim");
    let kid = id(&k);
    assert_eq!(s.get(&format!("/v3/public-keys/{kid}")).await.ok(200), k);
    let k2 = cli.json(&[
        "public-keys",
        "create",
        "--name",
        "other",
        "--public-key",
        key_file.to_str().unwrap(),
    ]);
    check_formats(
        &cli,
        &["public-keys", "list"],
        &s.get("/v3/public-keys").await.ok(200),
    );
    check_formats(&cli, &["public-keys", "describe", &kid], &k);
    // a missing key file: client-side error, nothing sent
    let e = cli.fails(&[
        "public-keys",
        "create",
        "--name",
        "x",
        "--public-key",
        "/nonexistent/k",
    ]);
    assert!(e.starts_with("Error: cannot read /nonexistent/k"), "{e}");
    // The private key instead of the .pub file, and a file that is no key: refused before
    // anything is sent, without printing the file.
    let private = cli.dir.path().join("id_ed25519");
    let o = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&private)
        .status()
        .unwrap();
    assert!(o.success());
    let secret = std::fs::read_to_string(&private).unwrap();
    for (file, says) in [
        (
            private.clone(),
            "is a private key; use the .pub file (nothing was sent)",
        ),
        (
            cli.dir.path().join("id.pub.bak"),
            "is not an OpenSSH public key",
        ),
    ] {
        if !file.exists() {
            std::fs::write(&file, "not a key\n").unwrap();
        }
        let e = cli.fails(&[
            "public-keys",
            "create",
            "--name",
            "x",
            "--public-key",
            file.to_str().unwrap(),
        ]);
        assert!(e.contains(says), "{e}");
        for line in secret.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!e.contains(line), "the private key was printed: {e}");
        }
    }
    assert_eq!(count(&cli.json(&["public-keys", "list"])), 2);

    deleted(&cli, &["public-keys", "delete", &kid]);
    let dl = s.get("/v3/deleted/public-keys").await.ok(200);
    assert_eq!(count(&dl), 1);
    check_formats(&cli, &["deleted", "public-keys", "list"], &dl);
    check_formats(&cli, &["deleted", "public-keys", "describe", &kid], &dl[0]);
    deleted(
        &cli,
        &[
            "deleted",
            "public-keys",
            "update",
            &kid,
            "--operation",
            "undelete",
        ],
    );
    assert_eq!(s.get(&format!("/v3/public-keys/{kid}")).await.ok(200), k);
    assert_eq!(s.get("/v3/deleted/public-keys").await.ok(200), json!([]));
    // bad --operation is refused client-side
    cli.fails(&[
        "deleted",
        "public-keys",
        "update",
        &kid,
        "--operation",
        "delete",
    ]);

    deleted(&cli, &["public-keys", "deleteall"]);
    assert_eq!(cli.json(&["public-keys", "list"]), json!([]));
    assert_eq!(count(&cli.json(&["deleted", "public-keys", "list"])), 2);
    deleted(&cli, &["deleted", "public-keys", "delete", &id(&k2)]);
    assert_eq!(count(&cli.json(&["deleted", "public-keys", "list"])), 1);
    deleted(&cli, &["deleted", "public-keys", "deleteall"]);
    assert_eq!(cli.json(&["deleted", "public-keys", "list"]), json!([]));
    assert_eq!(
        cli.run(&["public-keys", "list"]).stdout.trim(),
        "results = []"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_deleted_images() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::new(Some(&s.url));
    let link = s.put_image_artifacts("img1");
    let path = link["path"].as_str().unwrap();
    let i = cli.json(&[
        "images",
        "create",
        "--name",
        "img1",
        "--link-type",
        "s3",
        "--link-path",
        path,
        "--link-etag",
        "E1",
        "--arch",
        "aarch64",
        "--metadata-key",
        "k",
        "--metadata-value",
        "v",
    ]);
    assert_eq!(i["name"], "img1");
    assert_eq!(i["arch"], "aarch64");
    assert_eq!(i["link"], json!({"path": path, "etag": "E1", "type": "s3"}));
    assert_eq!(i["metadata"], json!({"k": "v"}));
    let iid = id(&i);
    let min = cli.json(&["images", "create", "--name", "img-min"]);
    assert_eq!(min["arch"], "x86_64");
    assert_eq!(min["link"], Value::Null);

    check_formats(
        &cli,
        &["images", "list"],
        &s.get("/v3/images").await.ok(200),
    );
    check_formats(&cli, &["images", "describe", &iid], &i);

    let u = cli.json(&[
        "images",
        "update",
        &iid,
        "--metadata-operation",
        "set",
        "--metadata-key",
        "foo",
        "--metadata-value",
        "bar",
    ]);
    assert_eq!(u["metadata"], json!({"k": "v", "foo": "bar"}));
    let u = cli.json(&[
        "images",
        "update",
        &iid,
        "--metadata-operation",
        "remove",
        "--metadata-key",
        "k",
    ]);
    assert_eq!(u["metadata"], json!({"foo": "bar"}));
    let u = cli.json(&["images", "update", &id(&min), "--arch", "aarch64"]);
    assert_eq!(u["arch"], "aarch64");
    // bad values never reach the server
    cli.fails(&["images", "update", &iid, "--arch", "sparc"]);
    cli.fails(&["images", "update", &iid, "--metadata-operation", "frob"]);
    cli.fails(&["images", "create", "--name", "bad", "--arch", "sparc"]);
    cli.fails(&["images", "create", "--arch", "x86_64"]); // --name is required
    assert_eq!(
        count(&s.get("/v3/images").await.ok(200)),
        2,
        "nothing created"
    );

    deleted(&cli, &["images", "delete", &iid]);
    let dl = s.get("/v3/deleted/images").await.ok(200);
    check_formats(&cli, &["deleted", "images", "list"], &dl);
    check_formats(&cli, &["deleted", "images", "describe", &iid], &dl[0]);
    deleted(
        &cli,
        &[
            "deleted",
            "images",
            "update",
            &iid,
            "--operation",
            "undelete",
        ],
    );
    assert_eq!(
        s.get(&format!("/v3/images/{iid}")).await.ok(200)["name"],
        "img1"
    );
    deleted(&cli, &["images", "deleteall"]);
    assert_eq!(cli.json(&["images", "list"]), json!([]));
    assert_eq!(count(&cli.json(&["deleted", "images", "list"])), 2);
    deleted(&cli, &["deleted", "images", "delete", &iid]);
    deleted(&cli, &["deleted", "images", "deleteall"]);
    assert_eq!(cli.json(&["deleted", "images", "list"]), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_and_deleted_recipes() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::new(Some(&s.url));
    s.put_artifact("ims", "recipes/r1/recipe.tgz", b"tgz");
    let r = cli.json(&[
        "recipes",
        "create",
        "--name",
        "r1",
        "--recipe-type",
        "kiwi-ng",
        "--linux-distribution",
        "sles15",
        "--link-type",
        "s3",
        "--link-path",
        "s3://ims/recipes/r1/recipe.tgz",
        "--arch",
        "x86_64",
        "--require-dkms",
        "yes",
        "--template-dictionary-key",
        "A,B",
        "--template-dictionary-value",
        "1,2",
    ]);
    assert_eq!(r["name"], "r1");
    assert_eq!(r["recipe_type"], "kiwi-ng");
    assert_eq!(r["linux_distribution"], "sles15");
    assert_eq!(r["require_dkms"], true);
    assert_eq!(
        r["template_dictionary"],
        json!([{"key": "A", "value": "1"}, {"key": "B", "value": "2"}])
    );
    assert_eq!(r["link"]["path"], "s3://ims/recipes/r1/recipe.tgz");
    let rid = id(&r);
    check_formats(
        &cli,
        &["recipes", "list"],
        &s.get("/v3/recipes").await.ok(200),
    );
    check_formats(&cli, &["recipes", "describe", &rid], &r);

    for b in ["false", "0", "no", "NO"] {
        let u = cli.json(&["recipes", "update", &rid, "--require-dkms", b]);
        assert_eq!(u["require_dkms"], false, "{b}");
        cli.json(&["recipes", "update", &rid, "--require-dkms", "1"]);
    }
    let u = cli.json(&[
        "recipes",
        "update",
        &rid,
        "--require-dkms",
        "false",
        "--template-dictionary-key",
        "X",
        "--template-dictionary-value",
        "Y",
    ]);
    assert_eq!(u["require_dkms"], false);
    assert_eq!(
        u["template_dictionary"],
        json!([{"key": "X", "value": "Y"}])
    );

    // client-side validation: nothing is created or changed
    let e = cli.fails(&[
        "recipes",
        "create",
        "--name",
        "bad",
        "--recipe-type",
        "kiwi-ng",
        "--linux-distribution",
        "sles15",
        "--template-dictionary-key",
        "A,B",
        "--template-dictionary-value",
        "1",
    ]);
    assert!(
        e.starts_with("Error: ") && e.contains("same number of values"),
        "{e}"
    );
    for bad in [
        &["--arch", "sparc"][..],
        &["--require-dkms", "maybe"],
        &["--recipe-type", "docker"],
        &["--linux-distribution", "windows"],
    ] {
        let mut a = vec![
            "recipes",
            "create",
            "--name",
            "bad",
            "--recipe-type",
            "kiwi-ng",
            "--linux-distribution",
            "sles15",
        ];
        a.extend_from_slice(bad);
        cli.fails(&a);
    }
    cli.fails(&["recipes", "update", &rid, "--template-dictionary-key", "A"]);
    assert_eq!(count(&s.get("/v3/recipes").await.ok(200)), 1);
    assert_eq!(s.get(&format!("/v3/recipes/{rid}")).await.ok(200), u);

    deleted(&cli, &["recipes", "delete", &rid]);
    let dl = s.get("/v3/deleted/recipes").await.ok(200);
    check_formats(&cli, &["deleted", "recipes", "list"], &dl);
    check_formats(&cli, &["deleted", "recipes", "describe", &rid], &dl[0]);
    deleted(
        &cli,
        &[
            "deleted",
            "recipes",
            "update",
            &rid,
            "--operation",
            "undelete",
        ],
    );
    // undelete moves the tarball back (a new etag); everything else is as before
    let mut back = s.get(&format!("/v3/recipes/{rid}")).await.ok(200);
    back["link"]["etag"] = u["link"]["etag"].clone();
    assert_eq!(back, u);
    deleted(&cli, &["recipes", "deleteall"]);
    assert_eq!(cli.json(&["recipes", "list"]), json!([]));
    deleted(&cli, &["deleted", "recipes", "delete", &rid]);
    assert_eq!(cli.json(&["deleted", "recipes", "list"]), json!([]));
    cli.json(&[
        "recipes",
        "create",
        "--name",
        "r2",
        "--recipe-type",
        "packer",
        "--linux-distribution",
        "centos7",
    ]);
    deleted(&cli, &["recipes", "deleteall"]);
    deleted(&cli, &["deleted", "recipes", "deleteall"]);
    assert_eq!(cli.json(&["deleted", "recipes", "list"]), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::new(Some(&s.url));
    let key = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    s.put_artifact("ims", "recipes/r/recipe.tgz", b"tgz");
    let rec = s
        .post(
            "/v3/recipes",
            &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                "link": {"path": "s3://ims/recipes/r/recipe.tgz", "etag": "", "type": "s3"}}),
        )
        .await
        .ok(201);
    let link = s.put_image_artifacts("base");
    let img = s
        .post("/v3/images", &json!({"name": "base", "link": link}))
        .await
        .ok(201);
    let (kid, rid, iid) = (id(&key), id(&rec), id(&img));

    let j = cli.json(&[
        "jobs",
        "create",
        "--job-type",
        "create",
        "--artifact-id",
        &rid,
        "--public-key-id",
        &kid,
        "--image-root-archive-name",
        "myimg",
    ]);
    assert_eq!(j["job_type"], "create");
    assert_eq!(j["artifact_id"], rid.as_str());
    assert_eq!(j["public_key_id"], kid.as_str());
    assert_eq!(j["image_root_archive_name"], "myimg");
    assert_eq!(j["initrd_file_name"], "initrd");
    assert_eq!(j["kernel_parameters_file_name"], "kernel-parameters");
    assert_eq!(j["enable_debug"], false);
    let jid = id(&j);

    let c = cli.json(&[
        "jobs",
        "create",
        "--job-type",
        "customize",
        "--artifact-id",
        &iid,
        "--public-key-id",
        &kid,
        "--image-root-archive-name",
        "custom",
        "--kernel-file-name",
        "vmlinux",
        "--initrd-file-name",
        "initrd.img",
        "--kernel-parameters-file-name",
        "kp",
        "--enable-debug",
        "yes",
        "--build-env-size",
        "20",
        "--job-mem-size",
        "4",
        "--require-dkms",
        "true",
        "--ssh-containers-name",
        "c1",
        "--ssh-containers-jail",
        "true",
    ]);
    assert_eq!(c["kernel_file_name"], "vmlinux");
    assert_eq!(c["initrd_file_name"], "initrd.img");
    assert_eq!(c["kernel_parameters_file_name"], "kp");
    assert_eq!(c["enable_debug"], true);
    assert_eq!(c["build_env_size"], 20);
    assert_eq!(c["job_mem_size"], 4);
    assert_eq!(c["require_dkms"], true);
    assert_eq!(c["ssh_containers"][0]["name"], "c1");
    assert_eq!(c["ssh_containers"][0]["jail"], true);
    // The seeds' `--ssh-containers-jail True` without a name: the server's default name.
    let j = cli.json(&[
        "jobs",
        "create",
        "--job-type",
        "customize",
        "--artifact-id",
        &iid,
        "--public-key-id",
        &kid,
        "--image-root-archive-name",
        "jailed",
        "--ssh-containers-jail",
        "True",
    ]);
    assert_eq!(j["ssh_containers"][0]["name"], "customize", "{j}");
    assert_eq!(j["ssh_containers"][0]["jail"], true, "{j}");
    deleted(&cli, &["jobs", "delete", &id(&j)]);
    // In the human formats the placeholder address (port 22 of a Kubernetes service name) of a
    // session that is not listening yet is left out, and stderr says where the real one will be.
    let o = cli.run(&[
        "jobs",
        "create",
        "--job-type",
        "customize",
        "--artifact-id",
        &iid,
        "--public-key-id",
        &kid,
        "--image-root-archive-name",
        "human",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.contains("image_root_archive_name = \"human\""),
        "{}",
        o.stdout
    );
    assert!(!o.stdout.contains("port = 22"), "{}", o.stdout);
    assert!(!o.stdout.contains("svc.cluster.local"), "{}", o.stdout);
    assert!(o.stderr.contains("--wait"), "{}", o.stderr);
    let human = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    deleted(&cli, &["jobs", "delete", &human]);

    check_formats(&cli, &["jobs", "list"], &s.get("/v3/jobs").await.ok(200));
    let now = s.get(&format!("/v3/jobs/{jid}")).await.ok(200);
    check_formats(&cli, &["jobs", "describe", &jid], &now);

    // client-side validation
    let base = [
        "jobs",
        "create",
        "--job-type",
        "customize",
        "--artifact-id",
        &iid,
        "--public-key-id",
        &kid,
        "--image-root-archive-name",
        "x",
    ];
    for bad in [
        &["--build-env-size", "big"][..],
        &["--enable-debug", "perhaps"],
        &[
            "--ssh-containers-name",
            "a,b",
            "--ssh-containers-jail",
            "true",
        ],
    ] {
        let mut a = base.to_vec();
        a.extend_from_slice(bad);
        cli.fails(&a);
    }
    cli.fails(&[
        "jobs",
        "create",
        "--job-type",
        "build",
        "--artifact-id",
        &iid,
        "--public-key-id",
        &kid,
        "--image-root-archive-name",
        "x",
    ]);
    cli.fails(&["jobs", "create", "--job-type", "create"]);
    cli.fails(&["jobs", "deleteall", "--status", "bogus"]);
    assert_eq!(
        count(&s.get("/v3/jobs").await.ok(200)),
        2,
        "nothing created"
    );

    // deleteall with filters only removes matching jobs (none are old enough)
    deleted(
        &cli,
        &["jobs", "deleteall", "--job-type", "create", "--age", "1d"],
    );
    assert_eq!(count(&cli.json(&["jobs", "list"])), 2);
    deleted(&cli, &["jobs", "delete", &jid]);
    let left = cli.json(&["jobs", "list"]);
    assert_eq!(count(&left), 1);
    assert_eq!(left[0]["job_type"], "customize");
    deleted(&cli, &["jobs", "deleteall"]);
    assert_eq!(cli.json(&["jobs", "list"]), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_build_nodes_and_status() {
    let s = builder(Db::Sqlite)
        .await
        .env("IMS_REMOTE_BUILD_NODE_SSH_KEY", "")
        .start()
        .await;
    let cli = Cli::new(Some(&s.url));
    let n = cli.json(&["remote-build-nodes", "create", "--xname", "x3000c0s1b0n0"]);
    assert_eq!(n, json!({"xname": "x3000c0s1b0n0"}));
    cli.json(&["remote-build-nodes", "create", "--xname", "x3000c0s2b0n0"]);
    check_formats(
        &cli,
        &["remote-build-nodes", "list"],
        &s.get("/v3/remote-build-nodes").await.ok(200),
    );
    check_formats(
        &cli,
        &["remote-build-nodes", "describe", "x3000c0s1b0n0"],
        &n,
    );
    let st = cli.json(&["remote-build-nodes", "status", "describe", "x3000c0s1b0n0"]);
    assert_eq!(st["xname"], "x3000c0s1b0n0");
    assert_eq!(st["ableToRunJobs"], false);
    let all = cli.json(&["remote-build-nodes", "status", "list"]);
    assert_eq!(count(&all), 2);
    let t = cli.ok("toml", &["remote-build-nodes", "status", "list"]);
    assert_eq!(count(&t["results"]), 2);
    deleted(&cli, &["remote-build-nodes", "delete", "x3000c0s1b0n0"]);
    assert_eq!(
        cli.json(&["remote-build-nodes", "list"]),
        json!([{"xname": "x3000c0s2b0n0"}])
    );
    deleted(&cli, &["remote-build-nodes", "deleteall"]);
    assert_eq!(cli.json(&["remote-build-nodes", "list"]), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_version() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::new(Some(&s.url));
    // a problem+json error: `Error: <title>: <detail>`, exit 2, stdout empty
    let p = s.get("/v3/images/nope").await.problem(404, false);
    for args in [
        &["images", "describe", "nope"][..],
        &["images", "describe", "nope", "--format", "json"],
        &["deleted", "recipes", "delete", "nope"],
    ] {
        let e = cli.fails(args);
        let title = p["title"].as_str().unwrap();
        assert!(e.starts_with(&format!("Error: {title}: ")), "{e}");
    }
    let e = cli.fails(&["images", "describe", "nope"]);
    assert_eq!(
        e,
        format!(
            "Error: {}: {}\n",
            p["title"].as_str().unwrap(),
            p["detail"].as_str().unwrap()
        )
    );
    // PATCH with no options: no body; the server refuses it
    let img = cli.json(&["images", "create", "--name", "i"]);
    let e = cli.fails(&["images", "update", &id(&img)]);
    assert!(e.starts_with("Error: "), "{e}");
    // A validation problem: cray's line, then the server's per-field messages.
    let p = s
        .post("/v3/images", &json!({"name": " ", "arch": "x86_64"}))
        .await
        .problem(422, true);
    let e = cli.fails(&["images", "create", "--name", " "]);
    let first = format!(
        "Error: {}: {}",
        p["title"].as_str().unwrap(),
        p["detail"].as_str().unwrap()
    );
    let msg = p["errors"]["name"][0].as_str().unwrap();
    assert_eq!(e, format!("{first}\n  name: {msg}\n"), "{p}");
    // The common mistakes are explained: no scheme, the S3 endpoint's URL, https to plain http.
    for url in ["127.0.0.1:9000", "ims-host:9000"] {
        let e = Cli::new(Some(url)).fails(&["images", "list"]);
        assert!(
            e.contains(&format!("give the scheme, e.g. http://{url}")),
            "{e}"
        );
    }
    let s3_url = std::fs::read_to_string(s.data.path().join("s3-endpoint")).unwrap();
    let e = Cli::new(Some(s3_url.trim())).fails(&["images", "list"]);
    assert!(
        e.contains("this URL is an S3 endpoint, not the IMS API"),
        "{e}"
    );
    let https = s.url.replacen("http://", "https://", 1);
    let e = Cli::new(Some(&https)).fails(&["images", "list"]);
    assert!(e.contains("use an http:// URL"), "{e}");
    // version (and cray's `version list`)
    let v = s.get("/apis/ims/version").await.ok(200);
    assert_eq!(cli.json(&["version"]), v);
    assert_eq!(cli.json(&["version", "list"]), v);
    // --format anywhere
    let list = s.get("/v3/images").await.ok(200);
    for args in [
        &["--format", "json", "images", "list"][..],
        &["images", "--format", "json", "list"],
        &["images", "list", "--format", "json"],
    ] {
        let o = cli.run(args);
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(parse("json", &o.stdout), list);
    }
    // json output is `json.dumps(indent=2)`-like
    let o = cli.run(&["images", "describe", &id(&img), "--format", "json"]);
    assert!(o.stdout.starts_with("{\n  \""), "{}", o.stdout);
    cli.fails(&["images", "list", "--format", "xml"]);
    // nothing listening: a clear error and exit 2
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let e = Cli::new(Some(&dead)).fails(&["images", "list"]);
    assert!(
        e.starts_with("Error: cannot connect to the IMS server at "),
        "{e}"
    );
    assert!(e.contains("/apis/ims/v3/images"), "{e}");
    let e = Cli::new(Some("not a url")).fails(&["images", "list"]);
    assert!(e.starts_with("Error: invalid server URL"), "{e}");
}

/// A recorded request.
#[derive(Debug)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A one-request-per-connection HTTP listener answering `status`/`body` and recording requests.
fn recorder(
    status: &'static str,
    ctype: &'static str,
    body: &'static str,
) -> (String, std::sync::mpsc::Receiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut headers = vec![];
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().unwrap())
                .unwrap_or(0);
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes());
            let _ = tx.send(Seen {
                line: line.trim_end().to_string(),
                headers,
                body: b,
            });
        }
    });
    (url, rx)
}

#[test]
fn exact_requests_and_bearer_token() {
    let (url, rx) = recorder("200 OK", "application/json", "{}");
    let cli = Cli::new(Some(&url));
    let next = || rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();

    // no token: no Authorization header
    assert_eq!(cli.run(&["images", "list"]).code, 0);
    let r = next();
    assert_eq!(r.line, "GET /apis/ims/v3/images HTTP/1.1");
    assert_eq!(r.header("authorization"), None);
    // --token, then IMS_TOKEN
    assert_eq!(cli.run(&["images", "list", "--token", "tok-flag"]).code, 0);
    assert_eq!(next().header("authorization"), Some("Bearer tok-flag"));
    let mut env_cli = Cli::new(Some(&url));
    env_cli.env.push(("IMS_TOKEN".into(), "tok-env".into()));
    assert_eq!(env_cli.run(&["recipes", "list"]).code, 0);
    let r = next();
    assert_eq!(r.line, "GET /apis/ims/v3/recipes HTTP/1.1");
    assert_eq!(r.header("authorization"), Some("Bearer tok-env"));
    // --token FILE, as cray's: the JSON `cray auth login` writes, or the token alone.
    let json_file = cli.file("token.json");
    std::fs::write(
        &json_file,
        r#"{"access_token": "tok-json", "token_type": "bearer"}"#,
    )
    .unwrap();
    let plain_file = cli.file("token.txt");
    std::fs::write(&plain_file, "tok-plain\n").unwrap();
    for (f, want) in [
        (&json_file, "Bearer tok-json"),
        (&plain_file, "Bearer tok-plain"),
    ] {
        let o = cli.run(&["images", "list", "--token", f.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(next().header("authorization"), Some(want));
    }
    // A JSON file without a token, or an empty file: refused before any request.
    std::fs::write(&json_file, r#"{"token_type": "bearer"}"#).unwrap();
    std::fs::write(&plain_file, "").unwrap();
    for f in [&json_file, &plain_file] {
        let o = cli.run(&["images", "list", "--token", f.to_str().unwrap()]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains(f.to_str().unwrap()), "{o:?}");
    }
    // -v traces each request on stderr (cray prints it on stdout, into the results).
    let o = cli.run(&["-v", "images", "list", "--format", "json"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.trim(), "{}");
    assert_eq!(
        o.stderr.trim(),
        format!("REQUEST: GET to {url}/apis/ims/v3/images")
    );
    next();
    let o = cli.run(&[
        "jobs",
        "deleteall",
        "--status",
        "error",
        "--verbose",
        "--quiet",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stderr.contains(&format!(
            "REQUEST: DELETE to {url}/apis/ims/v3/jobs?status=error"
        )),
        "{o:?}"
    );
    assert_eq!(
        next().line,
        "DELETE /apis/ims/v3/jobs?status=error HTTP/1.1"
    );
    assert!(rx.try_recv().is_err(), "no other request was sent");

    // exact bodies (clients.md §4)
    assert_eq!(
        cli.run(&[
            "images",
            "create",
            "--name",
            "img1",
            "--link-type",
            "s3",
            "--link-path",
            "s3://boot-images/x/manifest.json",
            "--link-etag",
            "E1",
            "--arch",
            "x86_64",
            "--metadata-key",
            "k",
            "--metadata-value",
            "v",
        ])
        .code,
        0
    );
    let r = next();
    assert_eq!(r.line, "POST /apis/ims/v3/images HTTP/1.1");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"name":"img1","link":{"path":"s3://boot-images/x/manifest.json","etag":"E1","type":"s3"},"arch":"x86_64","metadata":{"key":"k","value":"v"}})
    );
    cli.run(&["images", "create", "--name", "img-min"]);
    assert_eq!(next().json(), json!({"name": "img-min"}));
    cli.run(&["images", "update", "ID1"]);
    let r = next();
    assert_eq!(r.line, "PATCH /apis/ims/v3/images/ID1 HTTP/1.1");
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-type"), None);
    cli.run(&[
        "jobs",
        "create",
        "--job-type",
        "create",
        "--artifact-id",
        "A",
        "--public-key-id",
        "P",
        "--image-root-archive-name",
        "myimg",
    ]);
    assert_eq!(
        next().json(),
        json!({"job_type":"create","image_root_archive_name":"myimg","initrd_file_name":"initrd","kernel_parameters_file_name":"kernel-parameters","artifact_id":"A","public_key_id":"P"})
    );
    cli.run(&[
        "jobs",
        "create",
        "--job-type",
        "customize",
        "--artifact-id",
        "A",
        "--public-key-id",
        "P",
        "--image-root-archive-name",
        "n",
        "--ssh-containers-name",
        "c1,c2",
        "--ssh-containers-jail",
        "true,false",
        "--build-env-size",
        "20",
        "--enable-debug",
        "1",
    ]);
    let b = next().json();
    assert_eq!(
        b["ssh_containers"],
        json!([{"name":"c1","jail":true},{"name":"c2","jail":false}])
    );
    assert_eq!(b["build_env_size"], 20);
    assert_eq!(b["enable_debug"], true);
    // `--ssh-containers-jail True` alone, as the CSM procedures write it: the server names the
    // container (its default, as for `cray`).
    cli.run(&[
        "jobs",
        "create",
        "--job-type",
        "customize",
        "--artifact-id",
        "A",
        "--public-key-id",
        "P",
        "--image-root-archive-name",
        "n",
        "--ssh-containers-jail",
        "True",
    ]);
    assert_eq!(next().json()["ssh_containers"], json!([{"jail": true}]));
    cli.run(&[
        "recipes",
        "create",
        "--name",
        "r1",
        "--recipe-type",
        "kiwi-ng",
        "--linux-distribution",
        "sles15",
        "--require-dkms",
        "yes",
        "--template-dictionary-key",
        "A,B",
        "--template-dictionary-value",
        "1,2",
    ]);
    assert_eq!(
        next().json(),
        json!({"recipe_type":"kiwi-ng","linux_distribution":"sles15","name":"r1","require_dkms":true,"template_dictionary":[{"key":"A","value":"1"},{"key":"B","value":"2"}]})
    );
    cli.run(&[
        "jobs",
        "deleteall",
        "--status",
        "success",
        "--job-type",
        "create",
        "--age",
        "1d",
    ]);
    assert_eq!(
        next().line,
        "DELETE /apis/ims/v3/jobs?status=success&job_type=create&age=1d HTTP/1.1"
    );
    cli.run(&[
        "deleted",
        "public-keys",
        "update",
        "K",
        "--operation",
        "undelete",
    ]);
    let r = next();
    assert_eq!(r.line, "PATCH /apis/ims/v3/deleted/public-keys/K HTTP/1.1");
    assert_eq!(r.json(), json!({"operation": "undelete"}));
    cli.run(&["remote-build-nodes", "status", "describe", "x1"]);
    assert_eq!(
        next().line,
        "GET /apis/ims/v3/remote-build-nodes/status/x1 HTTP/1.1"
    );
    // ids are one path segment, never a route or a query
    cli.run(&["images", "describe", "a/b?c"]);
    assert_eq!(next().line, "GET /apis/ims/v3/images/a%2Fb%3Fc HTTP/1.1");
    // a base URL with a path keeps it as a prefix
    Cli::new(Some(&format!("{url}/gw"))).run(&["version"]);
    assert_eq!(next().line, "GET /gw/apis/ims/version HTTP/1.1");
}

#[test]
fn non_problem_errors() {
    let (url, _rx) = recorder("502 Bad Gateway", "text/html", "<html>oops</html>");
    let e = Cli::new(Some(&url)).fails(&["images", "list"]);
    assert_eq!(e, "Error: Error received from server: 502 Bad Gateway\n");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_round_trip() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::new(None); // no --url: the config file decides
    let token = "secret-token-0123456789";
    let o = cli.run(&[
        "config",
        "set",
        &format!("url={}", s.url),
        &format!("token={token}"),
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "");
    assert_eq!(mode(&cli.config_path()), 0o600);
    let file: toml::Table =
        toml::from_str(&std::fs::read_to_string(cli.config_path()).unwrap()).unwrap();
    assert_eq!(file["url"].as_str(), Some(s.url.as_str()));
    assert_eq!(file["token"].as_str(), Some(token));

    for f in ["toml", "json", "yaml"] {
        let shown = cli.ok(f, &["config", "get"]);
        assert_eq!(shown["url"], s.url.as_str());
        assert_eq!(shown["token"], "****6789");
    }
    assert!(!cli.run(&["config", "get"]).stdout.contains(token));
    assert_eq!(cli.run(&["config", "get", "url"]).stdout.trim(), s.url);

    // the configured server is used
    let img = cli.json(&["images", "create", "--name", "via-config"]);
    assert_eq!(
        s.get(&format!("/v3/images/{}", id(&img))).await.ok(200),
        img
    );
    // IMS_URL beats the file, --url beats both
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut env_cli = Cli::new(None);
    env_cli.dir = cli.dir; // same config file
    env_cli.env.push(("IMS_URL".into(), dead.clone()));
    env_cli.fails(&["images", "list"]);
    assert_eq!(
        count(&env_cli.json(&["images", "list", "--url", &s.url])),
        1
    );

    // removing the token; bad settings refused
    assert_eq!(env_cli.run(&["config", "set", "token="]).code, 0);
    assert_eq!(env_cli.json(&["config", "get"]), json!({"url": s.url}));
    env_cli.fails(&["config", "set", "colour=blue"]);
    env_cli.fails(&["config", "set", "url"]);
    env_cli.fails(&["config", "set", "url=ftp://x"]);
    env_cli.fails(&["config", "get", "token"]);
    assert_eq!(env_cli.json(&["config", "get"]), json!({"url": s.url}));
}

/// Runs `ims ARGS` under a pseudo-terminal (util-linux `script`), typing `answer`; exit code and
/// everything the terminal showed.
fn on_a_terminal(cli: &Cli, args: &[&str], answer: &str) -> (i32, String) {
    use std::io::{Read, Write};
    let c = cli.command(args);
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = quote(c.get_program().to_str().unwrap());
    for a in c.get_args() {
        line.push(' ');
        line.push_str(&quote(a.to_str().unwrap()));
    }
    let mut script = std::process::Command::new("script");
    script.args(["-q", "-e", "-c", &line, "/dev/null"]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        script.current_dir(d);
    }
    let mut child = script
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script");
    // The terminal keeps what is typed until the command reads it; stdin stays open until the
    // command is done (`script` would end it at end of input).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    let mut shown = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    (status.code().unwrap_or(-1), shown)
}

/// Records by name where the name is unique, `--format table`, and `deleteall` asking on a
/// terminal unless `--yes` (and never when stdin is not a terminal, as in scripts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_tables_and_confirmation() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let uniq = cli.json(&[
        "images",
        "create",
        "--name",
        "debian12-minbase",
        "--arch",
        "aarch64",
    ]);
    let dup1 = cli.json(&["images", "create", "--name", "dup"]);
    let dup2 = cli.json(&["images", "create", "--name", "dup"]);

    // By name: describe, update, delete; the deleted record by name too.
    assert_eq!(cli.json(&["images", "describe", "debian12-minbase"]), uniq);
    let u = cli.json(&[
        "images",
        "update",
        "debian12-minbase",
        "--metadata-operation",
        "set",
        "--metadata-key",
        "site",
        "--metadata-value",
        "x",
    ]);
    assert_eq!(u["id"], uniq["id"]);
    // An ambiguous name: the candidates, exit 2, nothing changed.
    let e = cli.fails(&["images", "delete", "dup"]);
    assert!(e.contains("2 images are named \"dup\""), "{e}");
    assert!(e.contains(&id(&dup1)) && e.contains(&id(&dup2)), "{e}");
    // An unknown name: the server's 404 for it as an id.
    let e = cli.fails(&["images", "describe", "no-such-image"]);
    assert!(e.starts_with("Error: Not Found: "), "{e}");
    assert_eq!(count(&cli.json(&["images", "list"])), 3);
    deleted(&cli, &["images", "delete", "debian12-minbase"]);
    assert_eq!(
        cli.json(&["deleted", "images", "describe", "debian12-minbase"])["id"],
        uniq["id"]
    );
    // An id is used as given, never looked up as a name.
    let e = cli.fails(&["images", "describe", &uuid::Uuid::new_v4().to_string()]);
    assert!(e.starts_with("Error: Not Found: "), "{e}");

    // A table: a header and one row a record, columns aligned.
    let o = cli.run(&["images", "list", "--format", "table"]);
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "ARCH", "CREATED"], "{}", o.stdout);
    let col = lines[0].find("NAME").unwrap();
    for l in &lines[1..] {
        assert_eq!(&l[col..col + 3], "dup", "{}", o.stdout);
    }
    let o = cli.run(&["images", "describe", &id(&dup1), "--format", "table"]);
    assert!(
        o.stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["name", "dup"]),
        "{o:?}"
    );

    // deleteall on a terminal asks; "n" deletes nothing (exit 2), "y" deletes.
    let (code, shown) = on_a_terminal(&cli, &["images", "deleteall"], "n");
    assert_eq!(code, 2, "{shown}");
    assert!(
        shown.contains("Delete all 2 image records? [y/N]"),
        "{shown}"
    );
    assert!(shown.contains("nothing was deleted"), "{shown}");
    assert_eq!(count(&cli.json(&["images", "list"])), 2);
    let (code, shown) = on_a_terminal(&cli, &["images", "deleteall"], "y");
    assert_eq!(code, 0, "{shown}");
    assert_eq!(count(&cli.json(&["images", "list"])), 0);
    // --yes on a terminal, and no terminal at all: no question.
    cli.json(&["images", "create", "--name", "again"]);
    let (code, shown) = on_a_terminal(&cli, &["deleted", "images", "deleteall", "--yes"], "n");
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("[y/N]"), "{shown}");
    assert_eq!(count(&cli.json(&["deleted", "images", "list"])), 0);
    deleted(&cli, &["images", "deleteall"]);
    assert_eq!(count(&cli.json(&["images", "list"])), 0);
}

/// `ims jobs logs --follow` rides out a server restart (the log goes on where it was, nothing
/// twice) and exits 1 when the job ends in `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_across_a_restart_and_report_error() {
    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let port = free_port();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("job.key");
    std::fs::write(&key, KEY_HEX).unwrap();
    let s = builder(Db::Sqlite)
        .await
        .env("IMS_LISTEN", &format!("127.0.0.1:{port}"))
        .env("IMS_JOB_TOKEN_KEY_FILE", key.to_str().unwrap())
        .start()
        .await;
    let link = s.put_image_artifacts("img");
    let img = s
        .post("/v3/images", &json!({"name": "i", "link": link}))
        .await
        .ok(201);
    let pk = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let job = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "customize", "artifact_id": img["id"], "public_key_id": pk["id"],
                    "image_root_archive_name": "x"}),
        )
        .await
        .ok(201);
    let jid = id(&job);
    let token = job_token(KEY_HEX, &jid);
    let append = |s: &Server, seq: u64, text: &'static str| {
        let (url, token, client) = (s.url.clone(), token.clone(), s.client.clone());
        let jid = jid.clone();
        async move {
            let r = client
                .post(format!("{url}/v3/jobs/{jid}/log?seq={seq}"))
                .bearer_auth(token)
                .header("content-type", "text/plain")
                .body(text)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
        }
    };
    append(&s, 0, "first line\n").await;
    let cli = Cli::of(&s);
    let follow = cli
        .command(&["jobs", "logs", &jid, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Down for a few seconds, then back on the same address.
    let mut s = s;
    s.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = s.restart().await;
    append(&s, 1, "second line\n").await;
    s.patch(&format!("/v3/jobs/{jid}"), &json!({"status": "error"}))
        .await
        .ok(200);
    let out = tokio::task::spawn_blocking(move || follow.wait_with_output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("first line").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("second line").count(), 1, "{stdout}");
    assert!(stderr.contains("still following, retrying"), "{stderr}");
    assert!(
        stderr.contains(&format!("job {jid} ended in error")),
        "{stderr}"
    );
}

/// `ims --version` names the commit the binary was built from.
#[test]
fn version_names_the_commit() {
    let o = std::process::Command::new(ims_bin())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(
        text.starts_with(&format!("ims {} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(c) => assert!(
            text.contains(&format!("(commit {c})")),
            "{text} vs HEAD {c}"
        ),
        None => assert!(text.contains("(unknown commit)"), "{text}"),
    }
}
