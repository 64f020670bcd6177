//! Jobs over HTTP (reference §3.4, §4.7, §5.5, §7.2 test_v2/v3_jobs): creation with every default
//! and resolution rule, the original's validation order and errors, PATCH by job agents, single and
//! filtered collection DELETE, and the API families (v2, v3, unversioned, `/apis/ims`).

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

/// The 24 keys of every job record (§4.7).
const JOB_KEYS: &[&str] = &[
    "arch",
    "artifact_id",
    "build_env_size",
    "created",
    "enable_debug",
    "id",
    "image_root_archive_name",
    "initrd_file_name",
    "job_mem_size",
    "job_type",
    "kernel_file_name",
    "kernel_parameters_file_name",
    "kubernetes_configmap",
    "kubernetes_job",
    "kubernetes_namespace",
    "kubernetes_pvc",
    "kubernetes_secret",
    "kubernetes_service",
    "public_key_id",
    "remote_build_node",
    "require_dkms",
    "resultant_image_id",
    "ssh_containers",
    "status",
];

const STATUSES: &[&str] = &[
    "creating",
    "fetching_image",
    "fetching_recipe",
    "waiting_for_repos",
    "building_image",
    "packaging_artifacts",
    "waiting_on_user",
    "error",
    "success",
];

const NS: &str = "testns";

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A server whose job namespace is known (the original reads `DEFAULT_IMS_JOB_NAMESPACE`).
async fn server(db: Db) -> Server {
    builder(db)
        .await
        .env("DEFAULT_IMS_JOB_NAMESPACE", NS)
        .start()
        .await
}

async fn public_key(s: &Server) -> String {
    s.post(
        "/v3/public-keys",
        &json!({"name": "k", "public_key": PUBLIC_KEY}),
    )
    .await
    .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A recipe whose tarball exists in the artifact store; returns (id, tarball key in bucket `ims`).
async fn recipe_with_key(s: &Server, arch: &str, require_dkms: bool) -> (String, String) {
    let key = format!("recipes/{}/recipe.tgz", new_uuid());
    s.put_artifact("ims", &key, b"not really a tarball");
    let r = s
        .post(
            "/v3/recipes",
            &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                "arch": arch, "require_dkms": require_dkms,
                "link": {"path": format!("s3://ims/{key}"), "etag": "", "type": "s3"}}),
        )
        .await
        .ok(201);
    (r["id"].as_str().unwrap().to_string(), key)
}

async fn recipe(s: &Server, arch: &str, require_dkms: bool) -> String {
    recipe_with_key(s, arch, require_dkms).await.0
}

/// An image with a valid manifest; returns (id, artifact directory in bucket `boot-images`).
async fn image_with_dir(s: &Server, arch: &str) -> (String, String) {
    let dir = new_uuid();
    let link = s.put_image_artifacts(&dir);
    let i = s
        .post(
            "/v3/images",
            &json!({"name": "img", "arch": arch, "link": link}),
        )
        .await
        .ok(201);
    (i["id"].as_str().unwrap().to_string(), dir)
}

async fn image(s: &Server, arch: &str) -> String {
    image_with_dir(s, arch).await.0
}

fn create_body(recipe: &str, key: &str) -> Value {
    json!({"job_type": "create", "artifact_id": recipe, "public_key_id": key,
        "image_root_archive_name": "my-image"})
}

fn customize_body(image: &str, key: &str) -> Value {
    json!({"job_type": "customize", "artifact_id": image, "public_key_id": key,
        "image_root_archive_name": "my-custom-image"})
}

fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn job_count(s: &Server) -> usize {
    s.get("/v3/jobs").await.ok(200).as_array().unwrap().len()
}

/// Checks the `ssh_containers` entry the original fills in at creation.
fn assert_container(job: &Value, name: &str, jail: bool) {
    let c = job["ssh_containers"]
        .as_array()
        .expect("ssh_containers list");
    assert_eq!(c.len(), 1, "{job}");
    let c = &c[0];
    assert_eq!(
        keys(c),
        sorted(&["connection_info", "jail", "name", "status"]),
        "{c}"
    );
    assert_eq!(c["name"], name);
    assert_eq!(c["jail"], jail);
    assert_eq!(c["status"], "pending");
    let id = job["id"].as_str().unwrap();
    let service = job["kubernetes_service"].as_str().unwrap();
    let ns = job["kubernetes_namespace"].as_str().unwrap();
    assert_eq!(
        c["connection_info"],
        json!({
            "customer_access": {"host": format!("{id}.ims.cmn.shasta.local"), "port": 22},
            "cluster.local": {"host": format!("{service}.{ns}.svc.cluster.local"), "port": 22},
        })
    );
}

async fn create_job_record(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let rec = recipe(&s, "x86_64", true).await;
    let job = s.post("/v3/jobs", &create_body(&rec, &key)).await.ok(201);
    assert_eq!(keys(&job), sorted(JOB_KEYS), "{job}");
    let id = job["id"].as_str().unwrap();
    assert!(is_uuid4(id), "{id}");
    assert!(is_wire_time(job["created"].as_str().unwrap()), "{job}");
    assert_eq!(job["job_type"], "create");
    assert_eq!(job["artifact_id"], rec);
    assert_eq!(job["public_key_id"], key);
    assert_eq!(job["image_root_archive_name"], "my-image");
    assert_eq!(job["enable_debug"], false);
    assert_eq!(job["ssh_containers"], Value::Null);
    assert_eq!(job["status"], "creating");
    assert_eq!(job["resultant_image_id"], Value::Null);
    assert_eq!(job["arch"], "x86_64");
    assert_eq!(job["build_env_size"], 60);
    assert_eq!(job["job_mem_size"], 8);
    assert_eq!(job["kernel_file_name"], "vmlinuz");
    assert_eq!(job["initrd_file_name"], "initrd");
    assert_eq!(job["kernel_parameters_file_name"], "kernel-parameters");
    assert_eq!(job["require_dkms"], true);
    assert_eq!(job["remote_build_node"], "");
    assert_eq!(job["kubernetes_namespace"], NS);
    assert_eq!(job["kubernetes_job"], format!("cray-ims-{id}-create"));
    assert_eq!(job["kubernetes_service"], format!("cray-ims-{id}-service"));
    assert_eq!(
        job["kubernetes_configmap"],
        format!("cray-ims-{id}-configmap")
    );
    assert_eq!(job["kubernetes_pvc"], format!("cray-ims-{id}-job-claim"));
    // GET one and the collection echo the stored record.
    assert_eq!(s.get(&format!("/v3/jobs/{id}")).await.ok(200), job);
    assert_eq!(s.get("/v2/jobs").await.ok(200), json!([job]));

    // enable_debug: one `debug` container, not jailed, pending, with both host names.
    let dbg = s
        .post(
            "/v2/jobs",
            &with(create_body(&rec, &key), json!({"enable_debug": true})),
        )
        .await
        .ok(201);
    assert_eq!(keys(&dbg), sorted(JOB_KEYS));
    assert_eq!(dbg["enable_debug"], true);
    assert_container(&dbg, "debug", false);
    assert_eq!(
        dbg["ssh_containers"][0]["connection_info"]["cluster.local"]["host"],
        format!(
            "{}.{NS}.svc.cluster.local",
            dbg["kubernetes_service"].as_str().unwrap()
        )
    );
    // Explicit empty list or null for a create job is the same as none.
    for sc in [json!([]), Value::Null] {
        let j = s
            .post(
                "/v3/jobs",
                &with(create_body(&rec, &key), json!({"ssh_containers": sc})),
            )
            .await
            .ok(201);
        assert_eq!(j["ssh_containers"], Value::Null);
    }
    assert_eq!(job_count(&s).await, 4);
}

async fn ssh_container_rules(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let rec = recipe(&s, "x86_64", true).await;
    let img = image(&s, "x86_64").await;
    // create jobs take no ssh_containers (use enable_debug).
    for sc in [
        json!([{"name": "c", "jail": false}]),
        json!([{"name": "a"}, {"name": "b"}]),
    ] {
        s.post(
            "/v3/jobs",
            &with(create_body(&rec, &key), json!({"ssh_containers": sc})),
        )
        .await
        .problem(400, false);
    }
    // More than one container → 400.
    for n in [2, 3] {
        let sc: Vec<Value> = (0..n).map(|i| json!({"name": format!("c{i}")})).collect();
        s.post(
            "/v3/jobs",
            &with(customize_body(&img, &key), json!({"ssh_containers": sc})),
        )
        .await
        .problem(400, false);
    }
    assert_eq!(job_count(&s).await, 0, "nothing created");
    // customize: default container `customize`, not jailed.
    let j = s
        .post("/v3/jobs", &customize_body(&img, &key))
        .await
        .ok(201);
    assert_eq!(keys(&j), sorted(JOB_KEYS));
    assert_eq!(j["job_type"], "customize");
    assert_eq!(
        j["kubernetes_job"],
        format!("cray-ims-{}-customize", j["id"].as_str().unwrap())
    );
    assert_container(&j, "customize", false);
    // customize with a named, jailed container.
    let j = s
        .post(
            "/v3/jobs",
            &with(
                customize_body(&img, &key),
                json!({"ssh_containers": [{"name": "my-ssh-jail", "jail": true}]}),
            ),
        )
        .await
        .ok(201);
    assert_container(&j, "my-ssh-jail", true);
    // jail defaults to false; an empty list gives the default container.
    let j = s
        .post(
            "/v2/jobs",
            &with(
                customize_body(&img, &key),
                json!({"ssh_containers": [{"name": "shell"}]}),
            ),
        )
        .await
        .ok(201);
    assert_container(&j, "shell", false);
    let j = s
        .post(
            "/v2/jobs",
            &with(customize_body(&img, &key), json!({"ssh_containers": []})),
        )
        .await
        .ok(201);
    assert_container(&j, "customize", false);
    // enable_debug on customize does not add a second container.
    let j = s
        .post(
            "/v2/jobs",
            &with(customize_body(&img, &key), json!({"enable_debug": true})),
        )
        .await
        .ok(201);
    assert_container(&j, "customize", false);
}

async fn kernel_file_name_defaults(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let x86 = recipe(&s, "x86_64", true).await;
    let arm = recipe(&s, "aarch64", true).await;
    let x86_img = image(&s, "x86_64").await;
    let arm_img = image(&s, "aarch64").await;
    let bodies = [
        (create_body(&x86, &key), "x86_64", "vmlinuz"),
        (create_body(&arm, &key), "aarch64", "Image"),
        (customize_body(&x86_img, &key), "x86_64", "vmlinuz"),
        (customize_body(&arm_img, &key), "aarch64", "Image"),
    ];
    for (body, arch, default) in bodies {
        let j = s.post("/v3/jobs", &body).await.ok(201);
        assert_eq!(j["arch"], arch, "arch is copied from the artifact");
        assert_eq!(j["kernel_file_name"], default);
        let j = s
            .post(
                "/v3/jobs",
                &with(body.clone(), json!({"kernel_file_name": ""})),
            )
            .await
            .ok(201);
        assert_eq!(j["kernel_file_name"], default, "\"\" → the arch default");
        let j = s
            .post(
                "/v3/jobs",
                &with(body.clone(), json!({"kernel_file_name": "vmlinux-6.4"})),
            )
            .await
            .ok(201);
        assert_eq!(j["kernel_file_name"], "vmlinux-6.4", "custom value kept");
        let p = s
            .post(
                "/v3/jobs",
                &with(body.clone(), json!({"kernel_file_name": null})),
            )
            .await
            .problem(422, true);
        assert!(p["errors"].get("kernel_file_name").is_some(), "{p}");
        // Names that cannot be under the image's /boot: refused at creation, not at packaging.
        for field in [
            "kernel_file_name",
            "initrd_file_name",
            "kernel_parameters_file_name",
        ] {
            for bad in ["../../etc/shadow", "/vmlinuz", "a/../../b", "x\0y"] {
                let p = s
                    .post("/v3/jobs", &with(body.clone(), json!({ field: bad })))
                    .await
                    .problem(422, true);
                assert!(p["errors"].get(field).is_some(), "{field}={bad:?}: {p}");
            }
        }
        let j = s
            .post(
                "/v3/jobs",
                &with(
                    body.clone(),
                    json!({"kernel_file_name": "6.4/vmlinux..old"}),
                ),
            )
            .await
            .ok(201);
        assert_eq!(
            j["kernel_file_name"], "6.4/vmlinux..old",
            "a name under /boot"
        );
    }
    // The other file names: defaults and custom values.
    let j = s
        .post(
            "/v3/jobs",
            &with(
                create_body(&x86, &key),
                json!({"initrd_file_name": "initrd.img", "kernel_parameters_file_name": "params"}),
            ),
        )
        .await
        .ok(201);
    assert_eq!(j["initrd_file_name"], "initrd.img");
    assert_eq!(j["kernel_parameters_file_name"], "params");
}

async fn require_dkms_resolution(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let x86_dkms = recipe(&s, "x86_64", true).await;
    let x86_nodkms = recipe(&s, "x86_64", false).await;
    let arm_nodkms = recipe(&s, "aarch64", false).await;
    let x86_img = image(&s, "x86_64").await;
    let arm_img = image(&s, "aarch64").await;
    let cases = [
        // create: the recipe's value unless sent
        (create_body(&x86_dkms, &key), true),
        (create_body(&x86_nodkms, &key), false),
        (
            with(create_body(&x86_dkms, &key), json!({"require_dkms": false})),
            false,
        ),
        (
            with(
                create_body(&x86_nodkms, &key),
                json!({"require_dkms": true}),
            ),
            true,
        ),
        // aarch64: always true
        (create_body(&arm_nodkms, &key), true),
        (
            with(
                create_body(&arm_nodkms, &key),
                json!({"require_dkms": false}),
            ),
            true,
        ),
        // customize: JOB_ENABLE_DKMS (default true) unless sent
        (customize_body(&x86_img, &key), true),
        (
            with(
                customize_body(&x86_img, &key),
                json!({"require_dkms": false}),
            ),
            false,
        ),
        (
            with(
                customize_body(&arm_img, &key),
                json!({"require_dkms": false}),
            ),
            true,
        ),
    ];
    for (body, want) in cases {
        let j = s.post("/v3/jobs", &body).await.ok(201);
        assert_eq!(j["require_dkms"], want, "{body}");
    }
    drop(s);

    // JOB_ENABLE_DKMS=false: customize jobs default to false; create jobs still take the recipe's.
    let s = builder(db)
        .await
        .env("JOB_ENABLE_DKMS", "False")
        .start()
        .await;
    let key = public_key(&s).await;
    let x86_dkms = recipe(&s, "x86_64", true).await;
    let x86_img = image(&s, "x86_64").await;
    let arm_img = image(&s, "aarch64").await;
    let cases = [
        (customize_body(&x86_img, &key), false),
        (
            with(
                customize_body(&x86_img, &key),
                json!({"require_dkms": true}),
            ),
            true,
        ),
        (customize_body(&arm_img, &key), true),
        (create_body(&x86_dkms, &key), true),
    ];
    for (body, want) in cases {
        let j = s.post("/v3/jobs", &body).await.ok(201);
        assert_eq!(j["require_dkms"], want, "{body}");
    }
}

async fn size_defaults_and_limits(db: Db) {
    let s = builder(db)
        .await
        .env("DEFAULT_IMS_IMAGE_SIZE", "33")
        .env("DEFAULT_IMS_JOB_MEM_SIZE", "5")
        .start()
        .await;
    let key = public_key(&s).await;
    let rec = recipe(&s, "x86_64", true).await;
    let j = s.post("/v3/jobs", &create_body(&rec, &key)).await.ok(201);
    assert_eq!(j["build_env_size"], 33);
    assert_eq!(j["job_mem_size"], 5);
    let j = s
        .post(
            "/v3/jobs",
            &with(
                create_body(&rec, &key),
                json!({"build_env_size": 100, "job_mem_size": 1}),
            ),
        )
        .await
        .ok(201);
    assert_eq!(j["build_env_size"], 100);
    assert_eq!(j["job_mem_size"], 1);
    // marshmallow's non-strict Integer also takes integral strings; the record holds a number.
    let j = s
        .post(
            "/v3/jobs",
            &with(create_body(&rec, &key), json!({"build_env_size": "7"})),
        )
        .await
        .ok(201);
    assert_eq!(j["build_env_size"], 7);
    for field in ["build_env_size", "job_mem_size"] {
        for bad in [
            json!(0),
            json!(-1),
            json!("abc"),
            json!(1.5),
            json!(null),
            json!([1]),
        ] {
            let p = s
                .post(
                    "/v3/jobs",
                    &with(create_body(&rec, &key), json!({field: bad})),
                )
                .await
                .problem(422, true);
            assert!(p["errors"].get(field).is_some(), "{field}={bad}: {p}");
        }
    }
    assert_eq!(job_count(&s).await, 3, "no invalid job was created");
}

async fn input_errors(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let rec = recipe(&s, "x86_64", true).await;
    for body in [json!({}), json!([])] {
        s.post("/v3/jobs", &body).await.problem(400, false);
        s.post("/v2/jobs", &body).await.problem(400, false);
    }
    s.send("POST", "/v3/jobs", None, None)
        .await
        .problem(400, false);
    let good = create_body(&rec, &key);
    let mut cases: Vec<(Value, &str)> = vec![];
    for field in [
        "job_type",
        "artifact_id",
        "public_key_id",
        "image_root_archive_name",
    ] {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(field);
        cases.push((b, field));
        cases.push((with(good.clone(), json!({field: null})), field));
        cases.push((with(good.clone(), json!({field: 17})), field));
    }
    let typed = [
        (json!({"job_type": "bake"}), "job_type"),
        (json!({"job_type": "CREATE"}), "job_type"),
        (json!({"artifact_id": "not-a-uuid"}), "artifact_id"),
        (json!({"public_key_id": "1234"}), "public_key_id"),
        (
            json!({"image_root_archive_name": ""}),
            "image_root_archive_name",
        ),
        (
            json!({"image_root_archive_name": "   "}),
            "image_root_archive_name",
        ),
        (json!({"enable_debug": "maybe"}), "enable_debug"),
        (json!({"enable_debug": null}), "enable_debug"),
        (json!({"require_dkms": "perhaps"}), "require_dkms"),
        (json!({"initrd_file_name": ""}), "initrd_file_name"),
        (json!({"initrd_file_name": 3}), "initrd_file_name"),
        (
            json!({"kernel_parameters_file_name": " "}),
            "kernel_parameters_file_name",
        ),
        (json!({"kernel_file_name": 3}), "kernel_file_name"),
        (json!({"ssh_containers": "debug"}), "ssh_containers"),
        (
            json!({"ssh_containers": [{"jail": "maybe"}]}),
            "ssh_containers",
        ),
        (json!({"ssh_containers": [{"name": 5}]}), "ssh_containers"),
        (
            json!({"ssh_containers": [{"name": "a", "shell": "bash"}]}),
            "ssh_containers",
        ),
        (json!({"ssh_containers": ["a"]}), "ssh_containers"),
        // Unknown fields, including every server-owned field of the record.
        (json!({"colour": "blue"}), "colour"),
        (json!({"status": "success"}), "status"),
        (json!({"arch": "x86_64"}), "arch"),
        (json!({"id": new_uuid()}), "id"),
        (json!({"created": "2020-01-01T00:00:00"}), "created"),
        (
            json!({"resultant_image_id": new_uuid()}),
            "resultant_image_id",
        ),
        (json!({"kubernetes_job": "x"}), "kubernetes_job"),
        (json!({"kubernetes_namespace": "x"}), "kubernetes_namespace"),
        (json!({"remote_build_node": "x1"}), "remote_build_node"),
    ];
    for (extra, field) in typed {
        cases.push((with(good.clone(), extra), field));
    }
    for (body, field) in cases {
        for p in ["/v2/jobs", "/v3/jobs"] {
            let pr = s.post(p, &body).await.problem(422, true);
            assert!(pr["errors"].get(field).is_some(), "{body} → {pr}");
        }
    }
    // A JSON value that is not an object.
    s.post("/v3/jobs", &json!([1])).await.problem(422, true);
    s.post("/v3/jobs", &json!("create"))
        .await
        .problem(422, true);
    // Validation (422) comes before the artifact lookups (400): an unknown recipe with a bad field.
    let p = s
        .post(
            "/v3/jobs",
            &with(create_body(&new_uuid(), &key), json!({"job_type": "bake"})),
        )
        .await
        .problem(422, true);
    assert!(p["errors"].get("job_type").is_some());
    assert_eq!(job_count(&s).await, 0, "nothing created");
    // The same body, valid, works (the cases above failed for the reason given).
    s.post("/v3/jobs", &good).await.ok(201);
}

async fn artifact_errors(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    // Unknown recipe / image ids → 400.
    s.post("/v3/jobs", &create_body(&new_uuid(), &key))
        .await
        .problem(400, false);
    s.post("/v3/jobs", &customize_body(&new_uuid(), &key))
        .await
        .problem(400, false);
    // An image id given for a create job (and vice versa) is unknown in that table.
    let img = image(&s, "x86_64").await;
    let rec = recipe(&s, "x86_64", true).await;
    s.post("/v3/jobs", &create_body(&img, &key))
        .await
        .problem(400, false);
    s.post("/v3/jobs", &customize_body(&rec, &key))
        .await
        .problem(400, false);
    // Artifacts without a link → 400.
    let bare_recipe = s
        .post(
            "/v3/recipes",
            &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.post("/v3/jobs", &create_body(&bare_recipe, &key))
        .await
        .problem(400, false);
    let bare_image = s.post("/v3/images", &json!({"name": "i"})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.post("/v3/jobs", &customize_body(&bare_image, &key))
        .await
        .problem(400, false);
    // Recipe tarball missing from S3 → 422.
    let (gone_recipe, tgz) = recipe_with_key(&s, "x86_64", true).await;
    std::fs::remove_file(s.artifact_path("ims", &tgz)).unwrap();
    s.post("/v3/jobs", &create_body(&gone_recipe, &key))
        .await
        .problem(422, false);
    // Unknown public key → 400 (artifact fine).
    s.post("/v3/jobs", &create_body(&rec, &new_uuid()))
        .await
        .problem(400, false);
    s.post("/v3/jobs", &customize_body(&img, &new_uuid()))
        .await
        .problem(400, false);
    assert_eq!(job_count(&s).await, 0, "nothing created");
}

/// Replaces an image's manifest in the store behind the server's back (image POST/PATCH validate
/// it, so a broken manifest can only appear this way — as in S3 when someone overwrites it).
fn put_manifest(s: &Server, dir: &str, manifest: &Value) {
    s.put_artifact(
        "boot-images",
        &format!("{dir}/manifest.json"),
        &serde_json::to_vec(manifest).unwrap(),
    );
}

fn manifest_entry(dir: &str, name: &str, mime: &str) -> Value {
    json!({"link": {"path": format!("s3://boot-images/{dir}/{name}"), "etag": "", "type": "s3"},
        "type": mime, "md5": "0123456789abcdef0123456789abcdef"})
}

async fn customize_manifest_errors(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    const ROOTFS: &str = "application/vnd.cray.image.rootfs.squashfs";
    const KERNEL: &str = "application/vnd.cray.image.kernel";
    // Manifest missing from S3 → 422.
    let (img, dir) = image_with_dir(&s, "x86_64").await;
    std::fs::remove_file(s.artifact_path("boot-images", &format!("{dir}/manifest.json"))).unwrap();
    s.post("/v3/jobs", &customize_body(&img, &key))
        .await
        .problem(422, false);
    // Bad manifest contents → 400 (the job-creation reading of the manifest).
    type Manifest = fn(&str) -> Value;
    let bad: Vec<(&str, Manifest)> = vec![
        (
            "no rootfs",
            |d| json!({"version": "1.0", "created": "x", "artifacts": [manifest_entry(d, "kernel", KERNEL)]}),
        ),
        ("two rootfs", |d| {
            json!({"version": "1.0", "created": "x", "artifacts": [
                manifest_entry(d, "rootfs", ROOTFS), manifest_entry(d, "kernel", ROOTFS)]})
        }),
        (
            "bad version",
            |d| json!({"version": "2.0", "created": "x", "artifacts": [manifest_entry(d, "rootfs", ROOTFS)]}),
        ),
        (
            "no version",
            |d| json!({"created": "x", "artifacts": [manifest_entry(d, "rootfs", ROOTFS)]}),
        ),
        (
            "rootfs without link",
            |_| json!({"version": "1.0", "artifacts": [{"type": ROOTFS, "md5": "0"}]}),
        ),
    ];
    for (what, manifest) in bad {
        let (img, dir) = image_with_dir(&s, "x86_64").await;
        put_manifest(&s, &dir, &manifest(&dir));
        let p = s
            .post("/v3/jobs", &customize_body(&img, &key))
            .await
            .problem(400, false);
        assert!(p["detail"].is_string(), "{what}: {p}");
    }
    // A manifest that is not JSON: 400 (the original let the exception escape → 500, §8).
    let (img, dir) = image_with_dir(&s, "x86_64").await;
    s.put_artifact("boot-images", &format!("{dir}/manifest.json"), b"{not json");
    s.post("/v3/jobs", &customize_body(&img, &key))
        .await
        .problem(400, false);
    // rootfs missing from S3 → 422.
    let (img, dir) = image_with_dir(&s, "x86_64").await;
    std::fs::remove_file(s.artifact_path("boot-images", &format!("{dir}/rootfs"))).unwrap();
    s.post("/v3/jobs", &customize_body(&img, &key))
        .await
        .problem(422, false);
    // Only the rootfs matters for a job: a missing kernel does not stop a customize job.
    let (img, dir) = image_with_dir(&s, "x86_64").await;
    std::fs::remove_file(s.artifact_path("boot-images", &format!("{dir}/kernel"))).unwrap();
    assert_eq!(job_count(&s).await, 0, "nothing created");
    s.post("/v3/jobs", &customize_body(&img, &key))
        .await
        .ok(201);
}

async fn patch_job(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let rec = recipe(&s, "x86_64", true).await;
    let job = s.post("/v3/jobs", &create_body(&rec, &key)).await.ok(201);
    let id = job["id"].as_str().unwrap();
    for p in ["/v2", "/v3", ""] {
        for status in STATUSES {
            let got = s
                .patch(&format!("{p}/jobs/{id}"), &json!({"status": status}))
                .await
                .ok(200);
            assert_eq!(keys(&got), sorted(JOB_KEYS));
            assert_eq!(got["status"], *status);
            let mut expected = job.clone();
            expected["status"] = json!(status);
            assert_eq!(got, expected, "only status changes");
            assert_eq!(s.get(&format!("/v3/jobs/{id}")).await.ok(200), got);
        }
    }
    // resultant_image_id: any UUID (it is not looked up), stored lower-case.
    let rid = new_uuid();
    let got = s
        .patch(
            &format!("/v3/jobs/{id}"),
            &json!({"resultant_image_id": rid.to_uppercase()}),
        )
        .await
        .ok(200);
    assert_eq!(got["resultant_image_id"], rid);
    assert_eq!(got["status"], "success", "status untouched");
    // Both at once; any transition is allowed (no state machine in the original).
    let rid2 = new_uuid();
    let got = s
        .patch(
            &format!("/v2/jobs/{id}"),
            &json!({"status": "creating", "resultant_image_id": rid2}),
        )
        .await
        .ok(200);
    assert_eq!(got["status"], "creating");
    assert_eq!(got["resultant_image_id"], rid2);
    assert_eq!(s.get(&format!("/v2/jobs/{id}")).await.ok(200), got);
    // Errors.
    let cases = [
        (json!({"status": "done"}), "status"),
        (json!({"status": "SUCCESS"}), "status"),
        (json!({"status": null}), "status"),
        (json!({"status": 1}), "status"),
        (
            json!({"resultant_image_id": "not-a-uuid"}),
            "resultant_image_id",
        ),
        (json!({"resultant_image_id": 5}), "resultant_image_id"),
        (
            json!({"status": "error", "kernel_file_name": "x"}),
            "kernel_file_name",
        ),
        (json!({"id": new_uuid()}), "id"),
        (json!({"arch": "aarch64"}), "arch"),
    ];
    for (body, field) in cases {
        let p = s
            .patch(&format!("/v3/jobs/{id}"), &body)
            .await
            .problem(422, true);
        assert!(p["errors"].get(field).is_some(), "{body} → {p}");
    }
    s.patch(&format!("/v3/jobs/{id}"), &json!({}))
        .await
        .problem(400, false);
    assert_eq!(
        s.get(&format!("/v3/jobs/{id}")).await.ok(200),
        got,
        "failed PATCHes change nothing (not even the valid keys of a bad body)"
    );
    // Unknown job.
    for p in ["/v2", "/v3", ""] {
        s.patch(
            &format!("{p}/jobs/{}", new_uuid()),
            &json!({"status": "error"}),
        )
        .await
        .problem(404, false);
        s.get(&format!("{p}/jobs/{}", new_uuid()))
            .await
            .problem(404, false);
    }
    s.patch("/v3/jobs/not-an-id", &json!({"status": "error"}))
        .await
        .problem(404, false);
}

async fn delete_one(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let rec = recipe(&s, "x86_64", true).await;
    for p in ["/v2", "/v3", ""] {
        let job = s.post("/v3/jobs", &create_body(&rec, &key)).await.ok(201);
        let id = job["id"].as_str().unwrap();
        s.delete(&format!("{p}/jobs/{id}")).await.ok(204);
        s.get(&format!("{p}/jobs/{id}")).await.problem(404, false);
        s.delete(&format!("{p}/jobs/{id}"))
            .await
            .problem(404, false);
        s.delete(&format!("{p}/jobs/{}", new_uuid()))
            .await
            .problem(404, false);
    }
    assert_eq!(job_count(&s).await, 0);
    // Deleting one job leaves the others (and their artifact) alone.
    let a = s.post("/v3/jobs", &create_body(&rec, &key)).await.ok(201);
    let b = s.post("/v3/jobs", &create_body(&rec, &key)).await.ok(201);
    s.delete(&format!("/v3/jobs/{}", a["id"].as_str().unwrap()))
        .await
        .ok(204);
    assert_eq!(s.get("/v3/jobs").await.ok(200), json!([b]));
    s.get(&format!("/v3/recipes/{rec}")).await.ok(200);
}

/// The job lifecycle as job pods drive it, through every API family (pods use the unversioned
/// paths behind the gateway's `/apis/ims`).
async fn lifecycle_under_every_prefix(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let img = image(&s, "x86_64").await;
    for p in PREFIXES {
        let job = s
            .post(&format!("{p}/jobs"), &customize_body(&img, &key))
            .await
            .ok(201);
        let id = job["id"].as_str().unwrap();
        assert_eq!(keys(&job), sorted(JOB_KEYS));
        assert_eq!(s.get(&format!("{p}/jobs/{id}")).await.ok(200), job);
        assert!(
            s.get(&format!("{p}/jobs"))
                .await
                .ok(200)
                .as_array()
                .unwrap()
                .contains(&job)
        );
        for status in ["fetching_image", "waiting_on_user", "packaging_artifacts"] {
            s.patch(&format!("{p}/jobs/{id}"), &json!({"status": status}))
                .await
                .ok(200);
        }
        let rid = new_uuid();
        s.patch(
            &format!("{p}/jobs/{id}"),
            &json!({"resultant_image_id": rid}),
        )
        .await
        .ok(200);
        let done = s
            .patch(&format!("{p}/jobs/{id}"), &json!({"status": "success"}))
            .await
            .ok(200);
        assert_eq!(done["status"], "success");
        assert_eq!(done["resultant_image_id"], rid);
        // Every family sees the same record.
        for q in PREFIXES {
            assert_eq!(s.get(&format!("{q}/jobs/{id}")).await.ok(200), done);
        }
        s.delete(&format!("{p}/jobs/{id}")).await.ok(204);
        s.get(&format!("{p}/jobs/{id}")).await.problem(404, false);
    }
}

// ----- collection DELETE (status / job_type / age filters) -----

/// `YYYY-MM-DDTHH:MM:SS` (the original's naive timestamp form) for a Unix time, UTC.
fn naive_utc(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Days since 1970-01-01 → civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A job record as the original's `v2.4_jobs.json` holds it.
fn seeded_job(id: &str, age_secs: i64, job_type: &str, status: &str) -> Value {
    json!({
        "id": id,
        "created": naive_utc(unix_now() - age_secs),
        "job_type": job_type,
        "image_root_archive_name": "old-image",
        "artifact_id": new_uuid(),
        "public_key_id": new_uuid(),
        "status": status,
        "enable_debug": false,
        "build_env_size": 15,
        "job_mem_size": 8,
        "kernel_file_name": "vmlinuz",
        "initrd_file_name": "initrd",
        "kernel_parameters_file_name": "kernel-parameters",
        "kubernetes_job": format!("cray-ims-{id}-{job_type}"),
        "kubernetes_service": format!("cray-ims-{id}-service"),
        "kubernetes_configmap": format!("cray-ims-{id}-configmap"),
        "kubernetes_pvc": format!("cray-ims-{id}-job-claim"),
        "kubernetes_secret": null,
        "kubernetes_namespace": "ims",
        "ssh_containers": null,
        "resultant_image_id": null,
        "require_dkms": true,
        "arch": "x86_64",
        "remote_build_node": "",
    })
}

const WEEK: i64 = 7 * 86400;

/// A server holding one week-old successful create job (the original tests' fixture).
async fn week_old_job_server(db: Db) -> (Server, String) {
    let id = new_uuid();
    let s = builder(db)
        .await
        .seed(
            "v2.4_jobs.json",
            json!([seeded_job(&id, WEEK, "create", "success")]),
        )
        .start()
        .await;
    (s, id)
}

async fn delete_collection_filters(db: Db) {
    // (query, jobs left). The query goes to /v2, /v3, unversioned and /apis/ims in turn.
    let cases: &[(&str, usize)] = &[
        ("", 0),
        ("?age=2w", 1),
        ("?age=3d", 0),
        ("?age=8d", 1),
        ("?age=6d23h", 0),
        ("?age=167h", 0),
        ("?status=error", 1),
        ("?status=success", 0),
        ("?status=SUCCESS", 0),
        ("?status=Success", 0),
        ("?job_type=customize", 1),
        ("?job_type=create", 0),
        ("?status=error&status=creating", 1),
        // Repeated `status` values are OR-ed.
        ("?status=error&status=success", 0),
        // Filters are AND-ed.
        ("?status=success&job_type=customize", 1),
        ("?status=success&job_type=create&age=1d", 0),
        ("?status=success&job_type=create&age=2w", 1),
        // Unknown query parameters are ignored, as in the original.
        ("?colour=blue", 0),
    ];
    let prefixes = ["/v2", "/v3", "", "/apis/ims", "/apis/ims/v3"];
    for (i, (query, left)) in cases.iter().enumerate() {
        let (s, id) = week_old_job_server(db).await;
        // The seeded record is served as imported.
        let job = s.get(&format!("/v3/jobs/{id}")).await.ok(200);
        assert_eq!(keys(&job), sorted(JOB_KEYS));
        let p = prefixes[i % prefixes.len()];
        s.delete(&format!("{p}/jobs{query}")).await.ok(204);
        assert_eq!(job_count(&s).await, *left, "DELETE {p}/jobs{query}");
    }
}

async fn delete_collection_bad_filters(db: Db) {
    let (s, _) = week_old_job_server(db).await;
    // Bad values → 400 and nothing is deleted. (The original put the message in `title` with no
    // `detail`; our problems always have status, title and detail.)
    for query in [
        "?status=invalid",
        "?status=success&status=invalid",
        "?job_type=invalid",
        "?job_type=",
        // The original read unparseable ages as 0 and deleted everything that matched the other
        // filters (§8); we reject them.
        "?age=garbage",
        "?age=",
        "?age=12",
        "?age=-1d",
        "?age=1y",
        "?status=success&age=garbage",
    ] {
        for p in ["/v2", "/v3", ""] {
            s.delete(&format!("{p}/jobs{query}"))
                .await
                .problem(400, false);
        }
        assert_eq!(job_count(&s).await, 1, "{query} deleted something");
    }
}

async fn delete_collection_mixed(db: Db) {
    let old_create = new_uuid();
    let old_customize = new_uuid();
    let new_create = new_uuid();
    let running = new_uuid();
    let s = builder(db)
        .await
        .seed(
            "v2.4_jobs.json",
            json!([
                seeded_job(&old_create, 30 * 86400, "create", "success"),
                seeded_job(&old_customize, 10 * 86400, "customize", "error"),
                seeded_job(&new_create, 3600, "create", "success"),
                seeded_job(&running, 2 * 86400, "customize", "waiting_on_user"),
            ]),
        )
        .start()
        .await;
    let ids = |v: Value| -> Vec<String> {
        let mut v: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let expect = |mut v: Vec<&String>| -> Vec<String> {
        v.sort();
        v.into_iter().cloned().collect()
    };
    // Finished jobs older than a week.
    s.delete("/v3/jobs?status=success&status=error&age=1w")
        .await
        .ok(204);
    assert_eq!(
        ids(s.get("/v3/jobs").await.ok(200)),
        expect(vec![&new_create, &running])
    );
    // Everything older than a day.
    s.delete("/apis/ims/jobs?age=1d").await.ok(204);
    assert_eq!(
        ids(s.get("/v3/jobs").await.ok(200)),
        expect(vec![&new_create])
    );
    s.delete("/v2/jobs?job_type=create").await.ok(204);
    assert_eq!(s.get("/v3/jobs").await.ok(200), json!([]));
    // An empty collection deletes fine.
    s.delete("/v3/jobs").await.ok(204);
}

/// The running-job extensions: heartbeat, user complete/fail, the agent's log.
async fn job_run_extensions(db: Db) {
    let s = server(db).await;
    let key = public_key(&s).await;
    let img = image(&s, "x86_64").await;
    let job = s
        .post("/v3/jobs", &customize_body(&img, &key))
        .await
        .ok(201);
    let id = job["id"].as_str().unwrap().to_string();

    // Heartbeat: the job's status and what the user asked for.
    let hb = format!("/v3/jobs/{id}/heartbeat");
    assert_eq!(
        s.post(&hb, &json!({"phase": "fetching"})).await.ok(200),
        json!({"status": "creating", "request": null})
    );
    s.send("POST", &hb, None, None).await.ok(200);
    let r = s.post(&hb, &json!({"phase": 7})).await;
    assert!(r.problem(422, true)["errors"].get("phase").is_some());
    s.post(&format!("/v3/jobs/{}/heartbeat", new_uuid()), &json!({}))
        .await
        .problem(404, false);

    // complete / fail only while waiting on a user; the latest request wins.
    let p = s
        .send("POST", &format!("/v3/jobs/{id}/complete"), None, None)
        .await
        .problem(409, false);
    assert!(p["detail"].as_str().unwrap().contains("creating"), "{p}");
    s.patch(
        &format!("/jobs/{id}"),
        &json!({"status": "waiting_on_user"}),
    )
    .await
    .ok(200);
    let j = s
        .send(
            "POST",
            &format!("/apis/ims/v3/jobs/{id}/complete"),
            None,
            None,
        )
        .await
        .ok(200);
    assert_eq!(j["id"], json!(id));
    assert_eq!(s.post(&hb, &json!({})).await.ok(200)["request"], "complete");
    s.send("POST", &format!("/v3/jobs/{id}/fail"), None, None)
        .await
        .ok(200);
    assert_eq!(s.post(&hb, &json!({})).await.ok(200)["request"], "fail");

    // The log: chunks in order, retries ignored, gaps refused, read from any offset.
    let log = format!("/v3/jobs/{id}/log");
    let put = |seq: u64, data: &'static [u8]| {
        let path = format!("{log}?seq={seq}");
        let s = &s;
        async move { s.send("POST", &path, Some(data), Some("text/plain")).await }
    };
    assert_eq!(put(0, b"hello\n").await.ok(200), json!({"next": 1}));
    assert_eq!(put(0, b"hello\n").await.ok(200), json!({"next": 1}));
    put(2, b"gap\n").await.problem(409, false);
    assert_eq!(put(1, b"world\n").await.ok(200), json!({"next": 2}));
    let r = s.get(&log).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/plain"), "{r:?}");
    assert_eq!(r.body, b"hello\nworld\n");
    let r = s.get(&format!("{log}?offset=6")).await;
    assert_eq!(r.body, b"world\n");
    let r = s.get(&format!("{log}?offset=99")).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    s.get(&format!("{log}?offset=x")).await.problem(400, false);
    let big = vec![b'x'; 512 * 1024 + 1];
    s.send(
        "POST",
        &format!("{log}?seq=2"),
        Some(&big),
        Some("text/plain"),
    )
    .await
    .problem(413, false);
    assert!(s.has_artifact("ims", &format!("jobs/{id}/log/0000000000")));

    // Deleting the job removes its log.
    s.delete(&format!("/v3/jobs/{id}")).await.ok(204);
    assert!(!s.has_artifact("ims", &format!("jobs/{id}/log/0000000000")));
    s.get(&log).await.problem(404, false);
}

both_backends!(
    create_job_record,
    job_run_extensions,
    ssh_container_rules,
    kernel_file_name_defaults,
    require_dkms_resolution,
    size_defaults_and_limits,
    input_errors,
    artifact_errors,
    customize_manifest_errors,
    patch_job,
    delete_one,
    lifecycle_under_every_prefix,
    delete_collection_filters,
    delete_collection_bad_filters,
    delete_collection_mixed,
);

/// The local executor checks its host at start-up and before it accepts a job: a server that is
/// not root says at start-up that jobs cannot run here and why, and refuses them (503, nothing
/// stored) instead of starting a session nobody can log in to; a create job whose kiwi-ng is
/// missing is refused the same way.
#[tokio::test]
async fn jobs_the_host_cannot_run_are_refused() {
    if !crate::common::jobs::is_root() {
        eprintln!("skipped: needs root to start a server as another user");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(data.path(), Some(65534), Some(65534)).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(ims_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data.path().join("d"))
            .env_remove("IMS_CONFIG")
            .env("IMS_JOB_EXECUTOR", "local")
            .env("IMS_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = vec![];
    let mut stderr =
        std::io::BufRead::lines(std::io::BufReader::new(child.0.stderr.take().unwrap()));
    for line in stderr.by_ref().map_while(Result::ok) {
        let last = line.contains("listening on");
        lines.push(line);
        if last {
            break;
        }
    }
    std::thread::spawn(move || stderr.for_each(drop));
    let url = lines
        .iter()
        .find_map(|l| l.split("listening on ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {lines:?}"))
        .to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("customize jobs cannot run on this host") && l.contains("root")),
        "{lines:#?}"
    );
    let http = reqwest::Client::new();
    let key = http
        .post(format!("{url}/v3/public-keys"))
        .json(&json!({"name": "k", "public_key": PUBLIC_KEY}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let r = http
        .post(format!("{url}/v3/jobs"))
        .json(
            &json!({"job_type": "customize", "artifact_id": "5b0a1d6e-3c9f-4f7e-9a41-0f2d8c3b7e11",
            "public_key_id": key["id"], "image_root_archive_name": "x"}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    // Refused before the artifact is even looked up (it does not exist).
    assert_eq!(status, 503, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("root"), "{body}");
    let jobs: Value = http
        .get(format!("{url}/v3/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs, json!([]), "a refused job was stored");
    drop(child);

    // As root, a create job whose kiwi-ng is not there.
    let s = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_EXECUTOR", "local")
        .env("IMS_JOB_KIWI", "/nonexistent/kiwi-ng")
        .start()
        .await;
    let key = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let recipe = s
        .post(
            "/v3/recipes",
            &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}),
        )
        .await
        .ok(201);
    let p = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "create", "artifact_id": recipe["id"],
                "public_key_id": key["id"], "image_root_archive_name": "x"}),
        )
        .await
        .problem(503, false);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/kiwi-ng"),
        "{p}"
    );
}
