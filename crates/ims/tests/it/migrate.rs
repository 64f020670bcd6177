//! `ims migrate import DIR` / `ims migrate export DIR` through the binary (reference §5.1): the
//! original's eight data files (and their legacy names), its load defaults, all-or-nothing imports,
//! idempotence, round trips, and the imported records served over HTTP.

use crate::common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;

const PK: &str = "0b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a01";
const PK_OLD: &str = "0b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a02";
const DPK: &str = "0b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a03";
const RECIPE: &str = "1b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a01";
const RECIPE_OLD: &str = "1b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a02";
const DRECIPE: &str = "1b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a03";
const IMAGE: &str = "2b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a01";
const IMAGE_OLD: &str = "2b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a02";
const DIMAGE: &str = "2b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a03";
const JOB: &str = "3b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a01";
const JOB_OLD: &str = "3b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1a02";

const FILES: [&str; 8] = [
    "v2_public_keys.json",
    "v3_deleted_public_keys.json",
    "v2.2_recipes.json",
    "v3.2_deleted_recipes.json",
    "v2.1_images.json",
    "v3.1_deleted_images.json",
    "v2.4_jobs.json",
    "v2.0_remote_build_nodes.json",
];

/// A full set of data files as the original writes them (naive timestamps, older records lacking
/// newer fields).
fn original_files() -> Vec<(&'static str, Value)> {
    vec![
        (
            "v2_public_keys.json",
            json!([
                {"id": PK, "created": "2025-04-28T14:03:11", "name": "admin", "public_key": "ssh-rsa AAAA admin@ncn"},
                {"id": PK_OLD, "created": "2019-01-02T03:04:05.123456", "name": "old", "public_key": "ssh-ed25519 BBBB"},
            ]),
        ),
        (
            "v3_deleted_public_keys.json",
            json!([{"id": DPK, "created": "2024-01-02T03:04:05", "deleted": "2024-02-03T04:05:06.5",
                "name": "gone", "public_key": "ssh-rsa CCCC"}]),
        ),
        (
            "v2.2_recipes.json",
            json!([
                {"id": RECIPE, "created": "2025-04-28T14:03:11.000001", "name": "cos",
                 "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                 "link": {"path": format!("s3://ims/recipes/{RECIPE}/recipe.tgz"), "etag": "abc", "type": "s3"},
                 "template_dictionary": [{"key": "CSM_RELEASE_VERSION", "value": "1.6.0"}],
                 "require_dkms": false, "arch": "aarch64"},
                // An old record: no require_dkms, arch or template_dictionary; link without etag.
                {"id": RECIPE_OLD, "created": "2020-05-06T07:08:09", "name": "old-recipe",
                 "recipe_type": "kiwi-ng", "linux_distribution": "sles12",
                 "link": {"path": "s3://ims/recipes/old/recipe.tgz", "type": "s3"}},
            ]),
        ),
        (
            "v3.2_deleted_recipes.json",
            json!([{"id": DRECIPE, "created": "2023-01-01T00:00:00", "deleted": "2023-06-01T12:00:00",
                "name": "deleted-recipe", "recipe_type": "packer", "linux_distribution": "centos7",
                "link": null, "template_dictionary": null, "require_dkms": true, "arch": "x86_64"}]),
        ),
        (
            "v2.1_images.json",
            json!([
                {"id": IMAGE, "created": "2025-04-28T16:03:11+02:00", "name": "compute",
                 "link": {"path": format!("s3://boot-images/{IMAGE}/manifest.json"), "etag": "e1", "type": "s3"},
                 "arch": "aarch64", "metadata": {"owner": "cfs", "note": ""}},
                // An old record: no arch, no metadata, no link at all.
                {"id": IMAGE_OLD, "created": "2018-12-04T17:25:52.482514", "name": "ancient"},
            ]),
        ),
        (
            "v3.1_deleted_images.json",
            json!([{"id": DIMAGE, "created": "2024-03-03T03:03:03", "deleted": "2024-04-04T04:04:04",
                "name": "deleted-image", "arch": "x86_64", "metadata": {"k": "v"},
                "link": {"path": format!("s3://boot-images/deleted/{DIMAGE}/deleted_manifest.json"), "etag": "", "type": "s3"}}]),
        ),
        (
            "v2.4_jobs.json",
            json!([
                {"id": JOB, "created": "2025-04-28T14:03:11", "job_type": "customize",
                 "artifact_id": IMAGE, "public_key_id": PK, "image_root_archive_name": "custom",
                 "enable_debug": false, "build_env_size": 15, "job_mem_size": 4,
                 "kernel_file_name": "Image", "initrd_file_name": "initrd",
                 "kernel_parameters_file_name": "kernel-parameters", "status": "waiting_on_user",
                 "resultant_image_id": null, "kubernetes_job": format!("cray-ims-{JOB}-customize"),
                 "kubernetes_service": format!("cray-ims-{JOB}-service"),
                 "kubernetes_configmap": format!("cray-ims-{JOB}-configmap"),
                 "kubernetes_pvc": format!("cray-ims-{JOB}-job-claim"),
                 "kubernetes_secret": format!("cray-ims-{JOB}-signing-keys"),
                 "kubernetes_namespace": "ims", "require_dkms": true, "arch": "aarch64",
                 "remote_build_node": "x3000c0s1b0n0",
                 "ssh_containers": [{"name": "customize", "jail": false, "status": "pending",
                    "connection_info": {"customer_access": {"host": format!("{JOB}.ims.cmn.shasta.local"), "port": 22},
                                        "cluster.local": {"host": format!("cray-ims-{JOB}-service.ims.svc.cluster.local"), "port": 22}}}]},
                // An old record (IMS 2.x era): no arch, kubernetes_namespace, remote_build_node,
                // kubernetes_pvc/secret, job_mem_size, require_dkms; a container with the
                // load-only legacy host/port keys.
                {"id": JOB_OLD, "created": "2020-01-01T00:00:00", "job_type": "create",
                 "artifact_id": RECIPE_OLD, "public_key_id": PK_OLD, "image_root_archive_name": "old",
                 "enable_debug": true, "build_env_size": 10, "kernel_file_name": "vmlinuz",
                 "initrd_file_name": "initrd", "kernel_parameters_file_name": "kernel-parameters",
                 "status": "success", "resultant_image_id": IMAGE_OLD,
                 "kubernetes_job": "cray-ims-old-create", "kubernetes_service": "cray-ims-old-service",
                 "kubernetes_configmap": "cray-ims-old-configmap",
                 "ssh_containers": [{"name": "debug", "jail": false, "status": "pending",
                    "host": "old.ims.shasta.local", "port": 22,
                    "connection_info": {"customer_access": {"host": "old.ims.cmn.shasta.local", "port": 22}}}]},
            ]),
        ),
        (
            "v2.0_remote_build_nodes.json",
            json!([{"xname": "x3000c0s1b0n0"}, {"xname": "x3000c0s2b0n0"}]),
        ),
    ]
}

fn write_files(dir: &Path, files: &[(&str, Value)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (f, v) in files {
        std::fs::write(dir.join(f), serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }
}

fn run(b: &Builder, op: &str, dir: &Path) -> Output {
    b.command(&["migrate", op])
        .arg(dir)
        .output()
        .expect("run ims migrate")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ims migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "ims migrate succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// GET of every collection, keyed by path.
async fn everything(s: &Server) -> Vec<(String, Value)> {
    let mut out = vec![];
    for path in [
        "/v3/public-keys",
        "/v3/deleted/public-keys",
        "/v3/recipes",
        "/v3/deleted/recipes",
        "/v3/images",
        "/v3/deleted/images",
        "/v3/jobs",
        "/v3/remote-build-nodes",
    ] {
        out.push((path.to_string(), s.get(path).await.ok(200)));
    }
    out
}

fn by_id(list: &Value, id: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
        .clone()
}

async fn import_all_files(db: Db) {
    let b = builder(db).await;
    let src = tempfile::tempdir().unwrap();
    write_files(src.path(), &original_files());
    let stdout = ok(&run(&b, "import", src.path()));
    for f in FILES {
        assert!(stdout.contains(f), "report names {f}: {stdout}");
    }
    assert!(
        stdout.contains("v2_public_keys.json: 2 added, 0 updated, 0 unchanged"),
        "{stdout}"
    );
    assert!(stdout.contains("v2.4_jobs.json: 2 added"), "{stdout}");
    let s = b.start().await;

    // Public keys: ids kept, naive timestamps read as UTC with microseconds and an offset.
    let pks = s.get("/v2/public-keys").await.ok(200);
    assert_eq!(
        by_id(&pks, PK),
        json!({"id": PK, "created": "2025-04-28T14:03:11.000000+00:00", "name": "admin",
            "public_key": "ssh-rsa AAAA admin@ncn"})
    );
    assert_eq!(
        by_id(&pks, PK_OLD)["created"],
        "2019-01-02T03:04:05.123456+00:00"
    );
    assert_eq!(
        s.get(&format!("/v3/deleted/public-keys/{DPK}"))
            .await
            .ok(200),
        json!({"id": DPK, "created": "2024-01-02T03:04:05.000000+00:00",
            "deleted": "2024-02-03T04:05:06.500000+00:00", "name": "gone", "public_key": "ssh-rsa CCCC"})
    );

    // Recipes: all fields kept; the old record gets require_dkms=true, arch=x86_64, [] and etag "".
    assert_eq!(
        s.get(&format!("/v3/recipes/{RECIPE}")).await.ok(200),
        json!({"id": RECIPE, "created": "2025-04-28T14:03:11.000001+00:00", "name": "cos",
            "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
            "link": {"path": format!("s3://ims/recipes/{RECIPE}/recipe.tgz"), "etag": "abc", "type": "s3"},
            "template_dictionary": [{"key": "CSM_RELEASE_VERSION", "value": "1.6.0"}],
            "require_dkms": false, "arch": "aarch64"})
    );
    assert_eq!(
        s.get(&format!("/v2/recipes/{RECIPE_OLD}")).await.ok(200),
        json!({"id": RECIPE_OLD, "created": "2020-05-06T07:08:09.000000+00:00", "name": "old-recipe",
            "recipe_type": "kiwi-ng", "linux_distribution": "sles12",
            "link": {"path": "s3://ims/recipes/old/recipe.tgz", "etag": "", "type": "s3"},
            "template_dictionary": [], "require_dkms": true, "arch": "x86_64"})
    );
    let dr = s
        .get(&format!("/v3/deleted/recipes/{DRECIPE}"))
        .await
        .ok(200);
    assert_eq!(dr["deleted"], "2023-06-01T12:00:00.000000+00:00");
    assert_eq!(dr["template_dictionary"], Value::Null, "null stays null");
    assert_eq!(dr["recipe_type"], "packer");

    // Images: an offset is normalised to UTC; the old record gets arch and {} metadata.
    assert_eq!(
        s.get(&format!("/v3/images/{IMAGE}")).await.ok(200),
        json!({"id": IMAGE, "created": "2025-04-28T14:03:11.000000+00:00", "name": "compute",
            "link": {"path": format!("s3://boot-images/{IMAGE}/manifest.json"), "etag": "e1", "type": "s3"},
            "arch": "aarch64", "metadata": {"owner": "cfs", "note": ""}})
    );
    assert_eq!(
        s.get(&format!("/v3/images/{IMAGE_OLD}")).await.ok(200),
        json!({"id": IMAGE_OLD, "created": "2018-12-04T17:25:52.482514+00:00", "name": "ancient",
            "link": null, "arch": "x86_64", "metadata": {}})
    );
    let di = s.get(&format!("/v3/deleted/images/{DIMAGE}")).await.ok(200);
    assert_eq!(di["metadata"], json!({"k": "v"}));
    assert_eq!(di["deleted"], "2024-04-04T04:04:04.000000+00:00");

    // Jobs: 24 keys; the old record gets x86_64, "default", "" and the other load defaults;
    // legacy container host/port are dropped.
    let job = s.get(&format!("/v3/jobs/{JOB}")).await.ok(200);
    assert_eq!(job.as_object().unwrap().len(), 24, "{job}");
    assert_eq!(job["created"], "2025-04-28T14:03:11.000000+00:00");
    assert_eq!(job["arch"], "aarch64");
    assert_eq!(job["remote_build_node"], "x3000c0s1b0n0");
    assert_eq!(job["kubernetes_namespace"], "ims");
    assert_eq!(job["job_mem_size"], 4);
    assert_eq!(job["status"], "waiting_on_user");
    assert_eq!(
        job["kubernetes_secret"],
        format!("cray-ims-{JOB}-signing-keys")
    );
    assert_eq!(
        job["ssh_containers"][0]["connection_info"]["cluster.local"]["port"],
        22
    );
    let old = s.get(&format!("/v2/jobs/{JOB_OLD}")).await.ok(200);
    assert_eq!(old.as_object().unwrap().len(), 24, "{old}");
    assert_eq!(old["arch"], "x86_64");
    assert_eq!(old["kubernetes_namespace"], "default");
    assert_eq!(old["remote_build_node"], "");
    assert_eq!(old["kubernetes_pvc"], Value::Null);
    assert_eq!(old["kubernetes_secret"], Value::Null);
    assert_eq!(old["job_mem_size"], 8);
    assert_eq!(old["require_dkms"], true);
    assert_eq!(old["resultant_image_id"], IMAGE_OLD);
    assert_eq!(old["build_env_size"], 10);
    assert_eq!(
        old["ssh_containers"],
        json!([{"name": "debug", "jail": false, "status": "pending",
            "connection_info": {"customer_access": {"host": "old.ims.cmn.shasta.local", "port": 22}}}])
    );

    // Remote build nodes.
    let nodes = s.get("/v3/remote-build-nodes").await.ok(200);
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    s.get("/v3/remote-build-nodes/x3000c0s2b0n0").await.ok(200);

    // Imported records behave like any other: served by every family, patched, deleted, undeleted.
    for p in ["", "/v2", "/apis/ims", "/apis/ims/v3"] {
        assert_eq!(s.get(&format!("{p}/jobs/{JOB}")).await.ok(200), job);
    }
    let patched = s
        .patch(
            &format!("/jobs/{JOB}"),
            &json!({"status": "packaging_artifacts"}),
        )
        .await
        .ok(200);
    assert_eq!(patched["created"], job["created"]);
    s.patch(
        &format!("/v3/deleted/public-keys/{DPK}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert_eq!(
        s.get(&format!("/v3/public-keys/{DPK}")).await.ok(200)["created"],
        "2024-01-02T03:04:05.000000+00:00"
    );
    s.delete(&format!("/v2/jobs/{JOB_OLD}")).await.ok(204);
    s.get(&format!("/v2/jobs/{JOB_OLD}"))
        .await
        .problem(404, false);
    // Collections are listed oldest first.
    let created: Vec<String> = s
        .get("/v3/public-keys")
        .await
        .ok(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["created"].as_str().unwrap().to_string())
        .collect();
    let mut sorted_created = created.clone();
    sorted_created.sort();
    assert_eq!(created, sorted_created);
}

async fn legacy_file_names(db: Db) {
    let b = builder(db).await;
    let src = tempfile::tempdir().unwrap();
    let files = original_files();
    let get = |name: &str| files.iter().find(|(f, _)| *f == name).unwrap().1.clone();
    write_files(
        src.path(),
        &[
            ("v2_recipes.json", get("v2.2_recipes.json")),
            ("v2.2_jobs.json", get("v2.4_jobs.json")),
            ("v2_images.json", get("v2.1_images.json")),
            ("v3_deleted_recipes.json", get("v3.2_deleted_recipes.json")),
            ("v3_deleted_images.json", get("v3.1_deleted_images.json")),
            // A newer and an older file of the same table: only the newest is read.
            ("v2.1_jobs.json", json!([{"bad": "never read"}])),
            ("v2_jobs.json", json!("never read")),
        ],
    );
    let stdout = ok(&run(&b, "import", src.path()));
    for f in [
        "v2_recipes.json: 2 added",
        "v2.2_jobs.json: 2 added",
        "v2_images.json: 2 added",
        "v3_deleted_recipes.json: 1 added",
        "v3_deleted_images.json: 1 added",
    ] {
        assert!(stdout.contains(f), "{f}: {stdout}");
    }
    assert!(!stdout.contains("v2.1_jobs.json"), "{stdout}");
    let s = b.start().await;
    s.get(&format!("/v3/recipes/{RECIPE_OLD}")).await.ok(200);
    s.get(&format!("/v3/jobs/{JOB}")).await.ok(200);
    s.get(&format!("/v3/images/{IMAGE}")).await.ok(200);
    s.get(&format!("/v3/deleted/recipes/{DRECIPE}"))
        .await
        .ok(200);
    s.get(&format!("/v3/deleted/images/{DIMAGE}")).await.ok(200);
    assert_eq!(s.get("/v3/public-keys").await.ok(200), json!([]));

    // With both names present the current one wins.
    let b = builder(db).await;
    let src = tempfile::tempdir().unwrap();
    write_files(
        src.path(),
        &[
            ("v2.2_recipes.json", get("v2.2_recipes.json")),
            (
                "v2_recipes.json",
                json!([{"id": "ffffffff-4a0d-4c4e-9a0b-8f6f2f0c1a01", "created": "2020-01-01T00:00:00",
                    "name": "legacy", "recipe_type": "kiwi-ng", "linux_distribution": "sles12"}]),
            ),
        ],
    );
    let stdout = ok(&run(&b, "import", src.path()));
    assert!(stdout.contains("v2.2_recipes.json: 2 added"), "{stdout}");
    let s = b.start().await;
    assert_eq!(
        s.get("/v3/recipes").await.ok(200).as_array().unwrap().len(),
        2
    );
}

async fn import_is_idempotent(db: Db) {
    let b = builder(db).await;
    let src = tempfile::tempdir().unwrap();
    write_files(src.path(), &original_files());
    ok(&run(&b, "import", src.path()));
    let before = tempfile::tempdir().unwrap();
    ok(&run(&b, "export", before.path()));
    let stdout = ok(&run(&b, "import", src.path()));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    for l in &lines {
        assert!(l.contains(": 0 added, 0 updated,"), "{l}");
        assert!(!l.contains(" 0 unchanged"), "{l}");
    }
    let after = tempfile::tempdir().unwrap();
    ok(&run(&b, "export", after.path()));
    for f in FILES {
        assert_eq!(
            std::fs::read(before.path().join(f)).unwrap(),
            std::fs::read(after.path().join(f)).unwrap(),
            "{f} changed"
        );
    }
    // A changed record is reported as updated; the others stay unchanged.
    let mut files = original_files();
    files[0].1[0]["name"] = json!("renamed");
    let src2 = tempfile::tempdir().unwrap();
    write_files(src2.path(), &files);
    let stdout = ok(&run(&b, "import", src2.path()));
    assert!(
        stdout.contains("v2_public_keys.json: 0 added, 1 updated, 1 unchanged"),
        "{stdout}"
    );
    let s = b.start().await;
    assert_eq!(
        s.get(&format!("/v3/public-keys/{PK}")).await.ok(200)["name"],
        "renamed"
    );
}

async fn malformed_files_import_nothing(db: Db) {
    let good = original_files();
    let bad_job = |f: &dyn Fn(&mut Value)| -> Value {
        let mut jobs = good
            .iter()
            .find(|(n, _)| *n == "v2.4_jobs.json")
            .unwrap()
            .1
            .clone();
        f(&mut jobs[1]);
        jobs
    };
    // (file, content, texts stderr must contain)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "v2.4_jobs.json",
            bad_job(&|j| j["created"] = json!("yesterday")),
            vec!["v2.4_jobs.json", JOB_OLD, "yesterday"],
        ),
        (
            "v2.4_jobs.json",
            bad_job(&|j| {
                j.as_object_mut().unwrap().remove("image_root_archive_name");
            }),
            vec!["v2.4_jobs.json", JOB_OLD, "image_root_archive_name"],
        ),
        (
            "v2.4_jobs.json",
            bad_job(&|j| j["build_env_size"] = json!("big")),
            vec!["v2.4_jobs.json", JOB_OLD],
        ),
        (
            "v2.4_jobs.json",
            bad_job(&|j| j["id"] = json!(JOB)),
            vec!["v2.4_jobs.json", JOB, "twice"],
        ),
        (
            "v2_public_keys.json",
            json!([{"id": PK, "created": "2025-04-28T14:03:11", "public_key": "x"}]),
            vec!["v2_public_keys.json", PK, "name"],
        ),
        (
            "v2_public_keys.json",
            json!([{"id": "", "created": "2025-04-28T14:03:11", "name": "n", "public_key": "x"}]),
            vec!["v2_public_keys.json", "not a lower-case hyphenated UUID"],
        ),
        // Values the API could never have produced are refused too.
        (
            "v2.4_jobs.json",
            bad_job(&|j| j["status"] = json!("running")),
            vec!["v2.4_jobs.json", JOB_OLD, "status", "running"],
        ),
        (
            "v2.4_jobs.json",
            bad_job(&|j| j["arch"] = json!("sparc")),
            vec!["v2.4_jobs.json", JOB_OLD, "arch", "sparc"],
        ),
        (
            "v2_public_keys.json",
            json!([{"id": "KEY-1", "created": "2025-04-28T14:03:11", "name": "n", "public_key": "x"}]),
            vec!["v2_public_keys.json", "KEY-1", "UUID"],
        ),
        (
            "v2_public_keys.json",
            json!([{"id": PK.to_uppercase(), "created": "2025-04-28T14:03:11", "name": "n", "public_key": "x"}]),
            vec!["v2_public_keys.json", "lower-case"],
        ),
        (
            "v3.1_deleted_images.json",
            json!([{"id": DIMAGE, "created": "2024-03-03T03:03:03", "name": "no deleted time"}]),
            vec!["v3.1_deleted_images.json", DIMAGE, "deleted"],
        ),
        (
            "v2.0_remote_build_nodes.json",
            json!([{"name": "x1"}]),
            vec!["v2.0_remote_build_nodes.json"],
        ),
        (
            "v2.2_recipes.json",
            json!({"not": "a list"}),
            vec!["v2.2_recipes.json", "array"],
        ),
    ];
    for (file, content, needles) in cases {
        let b = builder(db).await;
        let src = tempfile::tempdir().unwrap();
        let mut files = good.clone();
        for f in files.iter_mut() {
            if f.0 == file {
                f.1 = content.clone();
            }
        }
        write_files(src.path(), &files);
        let stderr = failed(&run(&b, "import", src.path()));
        for n in &needles {
            assert!(stderr.contains(n), "{file}: {n:?} not in {stderr}");
        }
        let s = b.start().await;
        for (path, v) in everything(&s).await {
            assert_eq!(v, json!([]), "{file}: something was imported into {path}");
        }
    }
    // Not JSON at all.
    let b = builder(db).await;
    let src = tempfile::tempdir().unwrap();
    write_files(src.path(), &good);
    std::fs::write(src.path().join("v2.1_images.json"), b"[{\"id\": ").unwrap();
    let stderr = failed(&run(&b, "import", src.path()));
    assert!(stderr.contains("v2.1_images.json"), "{stderr}");
    assert!(stderr.contains("JSON"), "{stderr}");
    // A later bad import leaves an earlier good one untouched, including the good files of the
    // bad import.
    let src = tempfile::tempdir().unwrap();
    write_files(src.path(), &[("v2_public_keys.json", good[0].1.clone())]);
    ok(&run(&b, "import", src.path()));
    let src = tempfile::tempdir().unwrap();
    let mut files = good.clone();
    files[0].1[0]["name"] = json!("changed");
    files[0].1.as_array_mut().unwrap().push(
        json!({"id": "0b6c1f5e-4a0d-4c4e-9a0b-8f6f2f0c1aff", "created": "2025-01-01T00:00:00",
            "name": "new", "public_key": "x"}),
    );
    write_files(src.path(), &files);
    std::fs::write(src.path().join("v2.0_remote_build_nodes.json"), b"nope").unwrap();
    failed(&run(&b, "import", src.path()));
    let s = b.start().await;
    let pks = s.get("/v3/public-keys").await.ok(200);
    assert_eq!(pks.as_array().unwrap().len(), 2);
    assert_eq!(by_id(&pks, PK)["name"], "admin");
    assert_eq!(s.get("/v3/jobs").await.ok(200), json!([]));
}

async fn import_dir_errors(db: Db) {
    let b = builder(db).await;
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("unrelated.json"), b"[]").unwrap();
    let stderr = failed(&run(&b, "import", empty.path()));
    assert!(stderr.contains("no IMS data files"), "{stderr}");
    let stderr = failed(&run(&b, "import", &empty.path().join("missing")));
    assert!(stderr.contains("missing"), "{stderr}");
    // Empty files are fine (the original creates them as `[]`).
    let src = tempfile::tempdir().unwrap();
    write_files(src.path(), &[("v2_public_keys.json", json!([]))]);
    let stdout = ok(&run(&b, "import", src.path()));
    assert!(stdout.contains("v2_public_keys.json: 0 added"), "{stdout}");
}

async fn export_round_trip(db: Db) {
    // Export of an empty store: the eight files, each an empty list.
    let b0 = builder(db).await;
    let out0 = tempfile::tempdir().unwrap();
    let stdout = ok(&run(&b0, "export", out0.path()));
    for f in FILES {
        assert!(stdout.contains(&format!("{f}: 0 records")), "{stdout}");
        let v: Value =
            serde_json::from_slice(&std::fs::read(out0.path().join(f)).unwrap()).unwrap();
        assert_eq!(v, json!([]), "{f}");
    }

    let a = builder(db).await;
    let src = tempfile::tempdir().unwrap();
    write_files(src.path(), &original_files());
    ok(&run(&a, "import", src.path()));
    let e1 = tempfile::tempdir().unwrap();
    let stdout = ok(&run(&a, "export", e1.path()));
    assert!(stdout.contains("v2.4_jobs.json: 2 records"), "{stdout}");
    let mut names: Vec<String> = std::fs::read_dir(e1.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "exactly the eight files, no temporaries");
    for f in FILES {
        let v: Value = serde_json::from_slice(&std::fs::read(e1.path().join(f)).unwrap())
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(v.is_array(), "{f}");
    }
    // Re-import into a fresh store: identical export and identical API view.
    let b = builder(db).await;
    let stdout = ok(&run(&b, "import", e1.path()));
    assert!(!stdout.contains("no data file"), "{stdout}");
    let e2 = tempfile::tempdir().unwrap();
    ok(&run(&b, "export", e2.path()));
    for f in FILES {
        assert_eq!(
            std::fs::read_to_string(e1.path().join(f)).unwrap(),
            std::fs::read_to_string(e2.path().join(f)).unwrap(),
            "{f} differs after a round trip"
        );
    }
    // Exporting over an existing export replaces the files.
    ok(&run(&b, "export", e1.path()));
    let sa = a.start().await;
    let sb = b.start().await;
    let (va, vb) = (everything(&sa).await, everything(&sb).await);
    assert_eq!(va, vb);
    assert_eq!(va[6].1.as_array().unwrap().len(), 2, "jobs");
    // The exported records are what the API serves.
    let jobs: Value =
        serde_json::from_slice(&std::fs::read(e2.path().join("v2.4_jobs.json")).unwrap()).unwrap();
    assert_eq!(jobs, va[6].1);
}

both_backends!(
    import_all_files,
    legacy_file_names,
    import_is_idempotent,
    malformed_files_import_nothing,
    import_dir_errors,
    export_round_trip,
);

/// `ims migrate import|export … | head -0`: the work is done and the command succeeds; a closed
/// stdout ends the report, it is not a panic (exit 101, "failed printing to stdout").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdout_is_the_end_of_the_output() {
    let b = builder(Db::Sqlite).await;
    let src = tempfile::tempdir().unwrap();
    write_files(src.path(), &original_files());
    let out = tempfile::tempdir().unwrap();
    for (op, dir) in [("import", src.path()), ("export", out.path())] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let res = b
            .command(&["migrate", op])
            .arg(dir)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(res.status.success(), "{op}: {:?} {stderr}", res.status);
        assert!(!stderr.contains("panicked"), "{op}: {stderr}");
    }
    // The work was done all the same.
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("v2.4_jobs.json")).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}
