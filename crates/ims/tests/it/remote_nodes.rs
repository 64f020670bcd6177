//! Jobs on remote build nodes, end to end: real hosts (network namespaces of the test rig, each
//! with its own `sshd` and scratch space, `common::nodes`), the server reaching them over SSH with
//! its key, host keys accepted through the API, the agent copied to the node and started there by
//! `ims agent node-run`, users logging in to the session at the node's address. Needs root.

use crate::common::jobs::*;
use crate::common::nodes::{Node, Rig};
use crate::common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// A server for the rig: listening (API and S3) on the rig's host address, which the nodes reach,
/// with the nodes' key and addresses.
async fn rig_builder(rig: &Rig, db: Db, extra: &[(&str, &str)]) -> Builder {
    let host = rig.host_addr();
    let mut b = builder(db)
        .await
        .env("IMS_JOB_EXECUTOR", "local")
        .env("IMS_LISTEN", &format!("{host}:{}", free_port_on(host)))
        .env("IMS_S3_LISTEN", &format!("{host}:{}", free_port_on(host)))
        .env("IMS_INSECURE_OPEN_API", "true")
        .env("IMS_JOB_ORPHAN_TIMEOUT", "300s")
        .env(
            "IMS_REMOTE_BUILD_NODE_SSH_KEY",
            rig.client_key().to_str().unwrap(),
        )
        .env("IMS_REMOTE_BUILD_NODE_ADDRESSES", &rig.addresses_setting())
        .env("IMS_REMOTE_BUILD_NODE_TIMEOUT", "10s");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b
}

async fn rig(n: usize) -> Option<Rig> {
    tokio::task::spawn_blocking(move || Rig::start(n))
        .await
        .unwrap()
}

async fn customize(s: &Server, image: &str, key: &str, name: &str) -> Value {
    let body = json!({"job_type": "customize", "artifact_id": image, "public_key_id": key,
        "image_root_archive_name": name,
        "ssh_containers": [{"name": "customize", "jail": false}]});
    s.post("/v3/jobs", &body).await.ok(201)
}

async fn log(s: &Server, id: &str) -> String {
    job_log(s, id).await
}

async fn wait_status(s: &Server, id: &str, want: &str, within: Duration) -> Value {
    wait_for_status(s, id, want, within).await
}

async fn status(s: &Server, node: &Node) -> Value {
    s.get(&format!("/v3/remote-build-nodes/status/{}", node.xname()))
        .await
        .ok(200)
}

/// The node's status says its host key is refused (and so it cannot run jobs); the status.
async fn assert_key_refused(s: &Server, node: &Node) -> Value {
    let st = status(s, node).await;
    assert_eq!(st["ableToRunJobs"], false, "{st}");
    assert!(
        st["sshStatus"]
            .as_str()
            .unwrap()
            .contains("host key is not accepted"),
        "{st}"
    );
    st
}

/// Registers `node`, accepts the host key it presents (checked against the rig's own record of
/// it) and waits until the node can run jobs (the node pass copies the agent there).
async fn register(s: &Server, node: &Node, extra: Value) {
    let mut body = json!({"xname": node.xname()});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    s.post("/v3/remote-build-nodes", &body).await.ok(201);
    accept_key(s, node).await;
    eventually(
        Duration::from_secs(90),
        "the node can run jobs",
        async || status(s, node).await["ableToRunJobs"] == true,
    )
    .await;
}

async fn accept_key(s: &Server, node: &Node) {
    let line = node.known_hosts_line().unwrap();
    let expected = fingerprint(&line);
    let shown = s
        .get(&format!("/v3/remote-build-nodes/{}/host-key", node.xname()))
        .await
        .ok(200);
    let presented = shown["presented"].as_array().unwrap();
    assert!(
        presented
            .iter()
            .any(|k| k["fingerprint"] == expected.as_str()),
        "{shown}"
    );
    s.post(
        &format!("/v3/remote-build-nodes/{}/host-key", node.xname()),
        &json!({"fingerprint": expected}),
    )
    .await
    .ok(200);
}

/// The `SHA256:…` fingerprint of a known-hosts line, as `ssh-keygen -l` prints it.
fn fingerprint(line: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k");
    std::fs::write(&f, format!("{line}\n")).unwrap();
    let o = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn job_dir_on(node: &Node, id: &str) -> std::path::PathBuf {
    node.state_dir().join("jobs").join(id)
}

/// A customize job placed on a node runs there end to end: the unknown host key is refused first
/// (nothing is copied), then accepted through the API; the job records the node, its session is at
/// the node's address, a server restart keeps it, the user's change is in the new image, and the
/// node is clean afterwards. A changed host key is refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customize_job_runs_on_a_node() {
    let Some(rig) = rig(1).await else { return };
    let node = rig.node(0);
    let s = rig_builder(&rig, Db::Sqlite, &[]).await.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (image, key) = image_and_key(&s, dir.path()).await;

    // Registered, but its host key is not accepted: refused, and nothing reaches the node.
    s.post("/v3/remote-build-nodes", &json!({"xname": node.xname()}))
        .await
        .ok(201);
    let st = assert_key_refused(&s, node).await;
    assert_eq!(st["hostKeyPinned"], false, "{st}");
    // A job meanwhile runs on the API host (no node can run it; the host can).
    let local = customize(&s, &image, &key, "local").await;
    let local_id = local["id"].as_str().unwrap();
    assert_eq!(local["remote_build_node"], "");
    wait_status(&s, local_id, "waiting_on_user", Duration::from_secs(90)).await;
    assert!(s.data.path().join("jobs").join(local_id).exists());
    s.delete(&format!("/v3/jobs/{local_id}")).await.ok(204);
    assert!(
        !node.state_dir().join("bin").exists(),
        "something was copied to a node whose key is not accepted"
    );
    // A wrong fingerprint is refused; the node's own is accepted.
    s.post(
        &format!("/v3/remote-build-nodes/{}/host-key", node.xname()),
        &json!({"fingerprint": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    )
    .await
    .problem(409, false);
    let before = Instant::now();
    accept_key(&s, node).await;
    eventually(
        Duration::from_secs(90),
        "the node can run jobs",
        async || status(&s, node).await["ableToRunJobs"] == true,
    )
    .await;
    eprintln!(
        "node ready {:?} after the key was accepted",
        before.elapsed()
    );
    let st = status(&s, node).await;
    assert_eq!(st["nodeArch"], "x86_64", "{st}");
    assert_eq!(st["hostKeyPinned"], true, "{st}");
    assert!(st["capacity"].as_u64().unwrap() >= 1, "{st}");

    let job = customize(&s, &image, &key, "on-node").await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["remote_build_node"], node.xname(), "{job}");
    let job = wait_status(&s, &id, "waiting_on_user", Duration::from_secs(120)).await;
    let info = &job["ssh_containers"][0]["connection_info"]["cluster.local"];
    assert_eq!(info["host"], node.addr().to_string(), "{job}");
    assert!(
        job_dir_on(node, &id).exists(),
        "no scratch directory on the node"
    );
    assert!(
        !s.data.path().join("jobs").join(&id).exists(),
        "the agent ran on the API host"
    );
    assert_eq!(status(&s, node).await["reservedSlots"], 1);
    let port = info["port"].as_u64().unwrap().to_string();
    let o = ssh_as_root_at(
        &node.addr().to_string(),
        &port,
        &dir.path().join("id_job"),
        "echo by-node > /mnt/image/image-root/etc/motd && cat /etc/hostname 2>/dev/null; hostname",
    );
    assert!(o.status.success(), "{o:?}");
    // The server restarts: the agent on the node goes on with the new server.
    let s = s.restart().await;
    let j = ims(&s, &["jobs", "complete", &id]);
    assert_eq!(j["id"], json!(id));
    let done = wait_status(&s, &id, "success", Duration::from_secs(120)).await;
    assert_eq!(done["remote_build_node"], node.xname());
    let new = done["resultant_image_id"].as_str().unwrap();
    let img = s.get(&format!("/v3/images/{new}")).await.ok(200);
    assert_eq!(img["arch"], "x86_64");
    let scratch = tempfile::tempdir().unwrap();
    unsquash(&s, &img, &scratch.path().join("new"));
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("new/etc/motd")).unwrap(),
        "by-node\n"
    );
    let text = log(&s, &id).await;
    assert!(
        text.contains(&format!("runs on remote build node {}", node.xname())),
        "{text}"
    );
    // The node is clean: its slot released, its scratch directory and agent gone.
    eventually(Duration::from_secs(60), "the node is clean", async || {
        !job_dir_on(node, &id).exists() && status(&s, node).await["reservedSlots"] == 0
    })
    .await;

    // The node's host key changes: refused until accepted again.
    node.regenerate_host_key().unwrap();
    assert_key_refused(&s, node).await;
}

/// What `ims s3-credentials` says for server `s`: endpoint, access key, secret.
fn s3_credentials(s: &Server) -> (String, String, String) {
    let o = std::process::Command::new(ims_bin())
        .args(["s3-credentials", "--format", "json", "--data-dir"])
        .arg(s.data.path())
        .env_remove("IMS_CONFIG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["Credentials"];
    (
        c["EndpointURL"].as_str().unwrap().to_string(),
        c["AccessKeyId"].as_str().unwrap().to_string(),
        c["SecretAccessKey"].as_str().unwrap().to_string(),
    )
}

/// Two `ims serve` replicas on one PostgreSQL database (the second uses the first's S3 endpoint as
/// its external S3) place 4 concurrent jobs on 2 nodes of 1 slot each: exactly 2 run, on different
/// nodes; the other 2 wait in `creating` with the reason in their log. A drained node takes no new
/// job and cannot be removed while its job runs; once its job is gone it can be. A released slot
/// goes to a waiting job; a job that waits longer than the placement timeout ends in error saying
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_overfill_a_node() {
    if ims_store::testing::skip_postgres() {
        return;
    }
    let Some(rig) = rig(2).await else { return };
    let timeout = [("IMS_JOB_PLACEMENT_TIMEOUT", "45s")];
    let a = rig_builder(&rig, Db::Postgres, &timeout)
        .await
        .start()
        .await;
    let (endpoint, access, secret) = s3_credentials(&a);
    let mut b = rig_builder(
        &rig,
        Db::Postgres,
        &[
            timeout[0],
            ("IMS_S3_ENDPOINT", &endpoint),
            ("IMS_S3_ACCESS_KEY", &access),
            ("IMS_S3_SECRET_KEY", &secret),
        ],
    )
    .await;
    b.db_url = a.db_url.clone();
    let b = b.start().await;
    for node in rig.nodes() {
        register(&a, node, json!({"capacity": 1})).await;
    }
    for node in rig.nodes() {
        eventually(
            Duration::from_secs(60),
            "replica b sees the node able",
            async || status(&b, node).await["ableToRunJobs"] == true,
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, key) = image_and_key(&a, dir.path()).await;
    let jobs: Vec<Value> = futures::future::join_all((0..4).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        let (image, key) = (image.clone(), key.clone());
        async move { customize(s, &image, &key, &format!("c{i}")).await }
    }))
    .await;
    let ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let mut placed: Vec<(String, String)> = vec![];
    let mut waiting: Vec<String> = vec![];
    for id in &ids {
        let j = a.get(&format!("/v3/jobs/{id}")).await.ok(200);
        match j["remote_build_node"].as_str().unwrap() {
            "" => waiting.push(id.clone()),
            node => placed.push((id.clone(), node.to_string())),
        }
    }
    assert_eq!(placed.len(), 2, "placed: {placed:?}");
    assert_ne!(placed[0].1, placed[1].1, "two jobs on one node: {placed:?}");
    for node in rig.nodes() {
        assert_eq!(status(&a, node).await["reservedSlots"], 1);
    }
    for id in &waiting {
        let j = b.get(&format!("/v3/jobs/{id}")).await.ok(200);
        assert_eq!(j["status"], "creating", "{j}");
        let text = log(&a, id).await;
        assert!(
            text.contains("has a free slot") && text.contains("waits for a slot"),
            "{text}"
        );
        assert!(
            !s_has_job_dir(&a, id) && !s_has_job_dir(&b, id),
            "a waiting job runs on the API host"
        );
    }
    // Drain the node of the first placed job: it keeps its job, cannot be removed, takes no new job.
    let (first, drained) = placed[0].clone();
    let (second, other) = placed[1].clone();
    let n = b
        .patch(
            &format!("/v3/remote-build-nodes/{drained}"),
            &json!({"drained": true}),
        )
        .await
        .ok(200);
    assert_eq!(n["drained"], true);
    let refused = a
        .delete(&format!("/v3/remote-build-nodes/{drained}"))
        .await
        .problem(409, false);
    assert!(
        refused["detail"].as_str().unwrap().contains(&first),
        "{refused}"
    );
    a.delete(&format!("/v3/jobs/{first}")).await.ok(204);
    // Its slot is free, but the node is drained: nothing moves in.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in &waiting {
        let j = a.get(&format!("/v3/jobs/{id}")).await.ok(200);
        assert_eq!(j["remote_build_node"], "", "placed on a drained node: {j}");
    }
    a.delete(&format!("/v3/remote-build-nodes/{drained}"))
        .await
        .ok(204);
    // The other node's slot frees: one waiting job (of either replica) gets it.
    b.delete(&format!("/v3/jobs/{second}")).await.ok(204);
    let mut moved = None;
    eventually(
        Duration::from_secs(30),
        "a waiting job is placed",
        async || {
            for id in &waiting {
                let j = a.get(&format!("/v3/jobs/{id}")).await.ok(200);
                if j["remote_build_node"] == other.as_str() {
                    moved = Some(id.clone());
                    return true;
                }
            }
            false
        },
    )
    .await;
    let moved = moved.unwrap();
    let last = waiting.iter().find(|id| **id != moved).unwrap().clone();
    assert_eq!(
        a.get(&format!("/v3/jobs/{last}")).await.ok(200)["remote_build_node"],
        ""
    );
    // The last one waits out the placement timeout and ends in error, saying why.
    let j = wait_status(&b, &last, "error", Duration::from_secs(90)).await;
    assert_eq!(j["remote_build_node"], "");
    let text = log(&a, &last).await;
    assert!(
        text.contains("waited") && text.contains("for a remote build node (limit 45 s)"),
        "{text}"
    );
    a.delete(&format!("/v3/jobs/{moved}")).await.ok(204);
    for node in rig.nodes() {
        eventually(Duration::from_secs(60), "the node is clean", async || {
            std::fs::read_dir(node.state_dir().join("jobs"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true)
        })
        .await;
    }
}

fn s_has_job_dir(s: &Server, id: &str) -> bool {
    s.data.path().join("jobs").join(id).exists()
}

/// Whether any process on `node` runs `ims agent run` (the node's own /proc).
fn agent_runs_on(node: &Node) -> bool {
    let o =
        node.exec("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .any(|l| l.contains("agent run "))
}

/// A node cut off mid-session (its link down, its processes running) ends its job in `error`
/// within the heartbeat timeout, saying which node; when the link is back, the node pass stops the
/// agent and removes its directory: the job stays in `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_fails_its_job_and_is_cleaned_when_back() {
    let Some(rig) = rig(1).await else { return };
    let node = rig.node(0);
    let s = rig_builder(&rig, Db::Sqlite, &[("IMS_JOB_HEARTBEAT_TIMEOUT", "10s")])
        .await
        .start()
        .await;
    register(&s, node, json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let (image, key) = image_and_key(&s, dir.path()).await;
    let job = customize(&s, &image, &key, "cut").await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["remote_build_node"], node.xname());
    wait_status(&s, &id, "waiting_on_user", Duration::from_secs(120)).await;
    assert!(agent_runs_on(node));
    node.cut().unwrap();
    let cut = Instant::now();
    wait_status(&s, &id, "error", Duration::from_secs(40)).await;
    let took = cut.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
    let text = log(&s, &id).await;
    assert!(
        text.contains(&format!(
            "no heartbeat from the job agent on remote build node {}",
            node.xname()
        )),
        "{text}"
    );
    let st = status(&s, node).await;
    assert_eq!(st["ableToRunJobs"], false, "{st}");
    assert!(
        job_dir_on(node, &id).exists(),
        "the node was reached while cut"
    );
    assert!(agent_runs_on(node), "the node's processes keep running");
    node.restore().unwrap();
    eventually(Duration::from_secs(90), "the node is cleaned", async || {
        !job_dir_on(node, &id).exists() && !agent_runs_on(node)
    })
    .await;
    assert_eq!(
        s.get(&format!("/v3/jobs/{id}")).await.ok(200)["status"],
        "error"
    );
    assert_eq!(status(&s, node).await["reservedSlots"], 0);
}

/// A create job on a node: the recipe is fetched there, kiwi-ng runs there (and fails for real,
/// with its reason in the job's log), the debug shell opens at the node's address, and the job
/// ends in error with the node clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_job_runs_kiwi_on_a_node() {
    let Some(rig) = rig(1).await else { return };
    let node = rig.node(0);
    let s = rig_builder(&rig, Db::Sqlite, &[]).await.start().await;
    register(&s, node, json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let key = job_keys(&s, dir.path(), &["id_job"]).await;
    let recipe_dir = dir.path().join("recipe");
    std::fs::create_dir(&recipe_dir).unwrap();
    // A build that fails at once, for real: the rig's nodes reach nothing but the API host, so a
    // full build cannot run there (the Debian example is built on the API host by `jobs_create`).
    std::fs::write(
        recipe_dir.join("config.xml"),
        crate::jobs_create::BROKEN_CONFIG,
    )
    .unwrap();
    let recipe = ims(
        &s,
        &[
            "recipes",
            "import",
            "broken",
            recipe_dir.to_str().unwrap(),
            "--linux-distribution",
            "debian12",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The agent binary vanished from the node since it was copied: copied again at the start.
    std::fs::remove_dir_all(node.state_dir().join("bin")).unwrap();
    let job = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "create", "artifact_id": recipe, "public_key_id": key,
                "image_root_archive_name": "broken", "enable_debug": true}),
        )
        .await
        .ok(201);
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["remote_build_node"], node.xname());
    let job = wait_status(&s, &id, "waiting_on_user", Duration::from_secs(240)).await;
    let info = &job["ssh_containers"][0]["connection_info"]["cluster.local"];
    assert_eq!(info["host"], node.addr().to_string());
    let o = ssh_as_root_at(
        &node.addr().to_string(),
        &info["port"].as_u64().unwrap().to_string(),
        &dir.path().join("id_job"),
        "grep -c 'No main distribution repository' /mnt/image/kiwi.log && touch /mnt/image/complete",
    );
    assert!(o.status.success(), "{o:?}");
    wait_status(&s, &id, "error", Duration::from_secs(60)).await;
    let text = log(&s, &id).await;
    assert!(
        text.contains("KiwiDebootstrapError: No main distribution repository is configured"),
        "{text}"
    );
    assert!(!s_has_job_dir(&s, &id));
    eventually(Duration::from_secs(60), "the node is clean", async || {
        !job_dir_on(node, &id).exists()
    })
    .await;
}

/// Seconds from `POST /v3/jobs` to the first successful SSH login into the job's session (the
/// job's address and port as the API reports them); the job.
async fn post_to_login(
    s: &Server,
    image: &str,
    key: &str,
    keys: &Path,
    name: &str,
) -> (f64, Value) {
    let t0 = Instant::now();
    let job = customize(s, image, key, name).await;
    let j = wait_for_login(s, job["id"].as_str().unwrap(), keys).await;
    (t0.elapsed().as_secs_f64(), j)
}

/// Completes job `id` and waits for `success`; the agent's own packaging time (`packaged in X s`
/// in the job's log).
async fn complete_and_package(s: &Server, id: &str) -> f64 {
    ims(s, &["jobs", "complete", id]);
    wait_status(s, id, "success", Duration::from_secs(900)).await;
    let text = log(s, id).await;
    let at = text
        .rfind("packaged in ")
        .expect("a packaging time in the log");
    text[at + "packaged in ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap()
}

async fn set_drained(s: &Server, node: &Node, drained: bool) {
    s.patch(
        &format!("/v3/remote-build-nodes/{}", node.xname()),
        &json!({"drained": drained}),
    )
    .await
    .ok(200);
}

/// The remote-node benchmark of docs/benchmarks.md (issue 14), not a test: run by hand with a
/// release build as the server and agent (`IMS_BENCH_BIN=target/release/ims`), `IMS_BENCH_RUNS`
/// rounds (default 3). Each round, on a rig node: POST → SSH login with the agent binary missing on
/// the node (the first job copies it), then with it there; the packaging of that job; then the same
/// on the API host (the node drained). Prints every figure and the medians.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand (docs/benchmarks.md)"]
async fn benchmark_remote_jobs() {
    let runs: usize = std::env::var("IMS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let Some(rig) = rig(1).await else { return };
    let node = rig.node(0);
    let s = rig_builder(&rig, Db::Sqlite, &[]).await.start().await;
    register(&s, node, json!({"capacity": 2})).await;
    let dir = tempfile::tempdir().unwrap();
    // The test image root plus real files: /usr/share/doc and /usr/share/locale of this machine.
    let root = image_root(dir.path());
    let o = std::process::Command::new("cp")
        .args(["-a", "/usr/share/doc", "/usr/share/locale"])
        .arg(root.join("etc"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let image = ims(&s, &["images", "import", "bench", root.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = job_keys(&s, dir.path(), &["id_job"]).await;
    let (mut first, mut later, mut local) = (vec![], vec![], vec![]);
    let (mut pack_node, mut pack_local) = (vec![], vec![]);
    for round in 0..runs {
        std::fs::remove_dir_all(node.state_dir().join("bin")).unwrap();
        let (t, j) = post_to_login(&s, &image, &key, dir.path(), "first").await;
        assert_eq!(j["remote_build_node"], node.xname());
        first.push(t);
        s.delete(&format!("/v3/jobs/{}", j["id"].as_str().unwrap()))
            .await
            .ok(204);
        let (t, j) = post_to_login(&s, &image, &key, dir.path(), "later").await;
        assert_eq!(j["remote_build_node"], node.xname());
        later.push(t);
        pack_node.push(complete_and_package(&s, j["id"].as_str().unwrap()).await);
        set_drained(&s, node, true).await;
        let (t, j) = post_to_login(&s, &image, &key, dir.path(), "local").await;
        assert_eq!(j["remote_build_node"], "");
        local.push(t);
        pack_local.push(complete_and_package(&s, j["id"].as_str().unwrap()).await);
        set_drained(&s, node, false).await;
        eprintln!(
            "round {round}: login first {:.2} s, later {:.2} s, local {:.2} s; packaging node {:.2} s, local {:.2} s",
            first[round], later[round], local[round], pack_node[round], pack_local[round]
        );
    }
    eprintln!(
        "medians of {runs}: POST -> SSH login on the node, first job (copies the agent) {:.2} s, later jobs {:.2} s, on the API host {:.2} s; packaging on the node {:.2} s, on the API host {:.2} s",
        median(&mut first),
        median(&mut later),
        median(&mut local),
        median(&mut pack_node),
        median(&mut pack_local)
    );
}
