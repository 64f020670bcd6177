//! Jobs through the `kubernetes` executor, end to end: a real `ims serve` talks to the fake
//! Kubernetes API server of `common::kube` (HTTPS, its kubeconfig) with kube-rs; the fake kubelet
//! runs each job pod's container — `ims agent run <id>` as the pod spec says it, with the Secret's
//! token and the PVC mounted — as a host of its own on the fake's bridge, or with `podman run` from
//! the image `scripts/build-image.sh` builds. Users log in at the address the job's Service
//! reports; `kubectl` is the second client. Needs root.

use crate::common::jobs::*;
use crate::common::kube::{FakeKube, Fault, Runtime};
use crate::common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// A server whose jobs run on `fake`, listening (API and S3) on the fake's gateway, which pods
/// reach.
async fn kube_server(fake: &FakeKube, extra: &[(&str, &str)]) -> Server {
    let gw = fake.gateway().expect("the fake has a pod network");
    let mut b = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_EXECUTOR", "kubernetes")
        .env(
            "IMS_KUBERNETES_KUBECONFIG",
            fake.kubeconfig().to_str().unwrap(),
        )
        .env("IMS_KUBERNETES_IMAGE", "registry.local/ims-rs:test")
        .env("IMS_LISTEN", &format!("{gw}:{}", free_port_on(gw)))
        .env("IMS_S3_LISTEN", &format!("{gw}:{}", free_port_on(gw)))
        .env("IMS_INSECURE_OPEN_API", "true")
        .env("IMS_JOB_ORPHAN_TIMEOUT", "300s");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b.start().await
}

fn fake(runtime: Runtime) -> Option<FakeKube> {
    if !is_root() {
        eprintln!("skipped: the fake kubelet's pods need root");
        return None;
    }
    FakeKube::builder().runtime(runtime).start()
}

async fn customize(s: &Server, image: &str, key: &str, name: &str, jail: bool) -> Value {
    let body = json!({"job_type": "customize", "artifact_id": image, "public_key_id": key,
        "image_root_archive_name": name,
        "ssh_containers": [{"name": "customize", "jail": jail}]});
    s.post("/v3/jobs", &body).await.ok(201)
}

/// The names of the objects of job `id` of kind `plural` in the fake.
fn objects_of(fake: &FakeKube, plural: &str, id: &str) -> Vec<String> {
    fake.list(plural)
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["ims.hpe.com/job-id"] == id)
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits for job `id` to reach `want`; on an `error` on the way, fails with its log and its pod's
/// output.
async fn wait_for(fake: &FakeKube, s: &Server, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = s.get(&format!("/v3/jobs/{id}")).await.ok(200);
        if j["status"] == want {
            return j;
        }
        if Instant::now() > deadline || j["status"] == "error" {
            let pods: Vec<String> = fake
                .list("pods")
                .iter()
                .filter(|p| p["metadata"]["labels"]["ims.hpe.com/job-id"] == id)
                .map(|p| {
                    let name = p["metadata"]["name"].as_str().unwrap();
                    format!("{name}:\n{}", fake.pod_log(name))
                })
                .collect();
            panic!(
                "job {id} is {} (waiting for {want}); log:\n{}\npods:\n{}",
                j["status"],
                job_log(s, id).await,
                pods.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The job's session as `ims` users get it, after a login: the job's `customer_access` address.
async fn log_in_and_change(
    fake: &FakeKube,
    s: &Server,
    id: &str,
    dir: &Path,
    jail: bool,
    text: &str,
) -> Value {
    let job = wait_for(fake, s, id, "waiting_on_user").await;
    let session = s.get(&format!("/v3/jobs/{id}/session")).await.ok(200);
    let host = session["host"].as_str().unwrap().to_string();
    assert_eq!(session["port"], 22, "{session}");
    let motd = if jail {
        "/etc/motd"
    } else {
        "/mnt/image/image-root/etc/motd"
    };
    let o = ssh_as_root_at(
        &host,
        "22",
        &dir.join("id_job"),
        &format!("echo {text} > {motd}"),
    );
    assert!(o.status.success(), "{o:?}");
    job
}

/// The new image of a successful job holds `text` in /etc/motd.
fn assert_motd(s: &Server, done: &Value, text: &str) {
    let new = done["resultant_image_id"].as_str().unwrap();
    let img = futures::executor::block_on(s.get(&format!("/v3/images/{new}"))).ok(200);
    let scratch = tempfile::tempdir().unwrap();
    unsquash(s, &img, &scratch.path().join("new"));
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("new/etc/motd")).unwrap(),
        format!("{text}\n")
    );
}

/// A customize job in a pod: the objects under the original's names (kubectl sees them), the
/// token only in the Secret, the SSH login at the Service's load-balancer address, a server
/// restart that re-attaches, success with the change in the new image and the Service, PVC and
/// Secret released (the Job kept for its logs), then deletion removing everything (foreground).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customize_job_runs_in_a_pod() {
    if !is_root() {
        eprintln!("skipped: the fake kubelet's pods need root");
        return;
    }
    let Some(fake) = FakeKube::builder().istio(true).start() else {
        return;
    };
    let s = kube_server(&fake, &[("IMS_KUBERNETES_DESTINATION_RULE", "true")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (image, key) = image_and_key(&s, dir.path()).await;
    let job = customize(&s, &image, &key, "in-pod", false).await;
    let id = job["id"].as_str().unwrap().to_string();
    let name = format!("cray-ims-{id}-customize");
    assert_eq!(job["kubernetes_job"], name, "{job}");
    assert_eq!(job["kubernetes_namespace"], "ims");
    assert_eq!(job["kubernetes_service"], format!("cray-ims-{id}-service"));
    assert_eq!(job["kubernetes_pvc"], format!("cray-ims-{id}-job-claim"));
    assert_eq!(job["kubernetes_secret"], format!("cray-ims-{id}-token"));
    assert_eq!(job["kubernetes_configmap"], Value::Null);
    assert_eq!(job["remote_build_node"], "");
    // The objects, as kubectl sees them.
    let jobs = fake.kubectl_json(&[
        "-n",
        "ims",
        "get",
        "jobs",
        "-l",
        &format!("ims.hpe.com/job-id={id}"),
    ]);
    assert_eq!(jobs["items"][0]["metadata"]["name"], name, "{jobs}");
    assert_eq!(jobs["items"].as_array().unwrap().len(), 1);
    for plural in [
        "secrets",
        "services",
        "persistentvolumeclaims",
        "destinationrules",
    ] {
        assert_eq!(objects_of(&fake, plural, &id).len(), 1, "{plural}");
    }
    let rule = fake
        .get("destinationrules", &format!("cray-ims-{id}-service"))
        .unwrap();
    assert_eq!(
        rule["spec"],
        json!({"host": format!("cray-ims-{id}-service.ims.svc.cluster.local"),
            "trafficPolicy": {"tls": {"mode": "DISABLE"}}})
    );
    // The token is in the Secret only: the pod spec names it.
    let kjob = fake.get("jobs", &name).unwrap();
    let spec = serde_json::to_string(&kjob["spec"]).unwrap();
    assert!(
        !spec.contains("ims-job."),
        "a token literal in the pod spec: {spec}"
    );
    let job = log_in_and_change(&fake, &s, &id, dir.path(), false, "by-pod").await;
    let info = &job["ssh_containers"][0]["connection_info"];
    assert_eq!(
        info["cluster.local"]["host"],
        format!("cray-ims-{id}-service.ims.svc.cluster.local"),
        "{job}"
    );
    // customer_access is the Service's load-balancer address: the pod's, in the fake.
    let svc = fake
        .get("services", &format!("cray-ims-{id}-service"))
        .unwrap();
    let lb = svc["status"]["loadBalancer"]["ingress"][0]["ip"].clone();
    assert!(lb.is_string(), "{svc}");
    assert_eq!(info["customer_access"]["host"], lb, "{job}");
    let pod = fake.pods_of(&name).pop().unwrap();
    assert_eq!(pod["metadata"]["labels"]["job-name"], name);
    assert_eq!(pod["status"]["podIP"], lb);
    // The server restarts: the pod goes on and is watched again.
    let s = s.restart().await;
    ims(&s, &["jobs", "complete", &id]);
    let done = wait_for(&fake, &s, &id, "success").await;
    assert_motd(&s, &done, "by-pod");
    // Released at the end: the Service, PVC and Secret; the Job stays for its logs.
    eventually(
        Duration::from_secs(30),
        "the job's objects are released",
        async || {
            [
                "secrets",
                "services",
                "persistentvolumeclaims",
                "destinationrules",
            ]
            .iter()
            .all(|p| objects_of(&fake, p, &id).is_empty())
        },
    )
    .await;
    assert!(fake.get("jobs", &name).is_some(), "the Job went at success");
    let logs = fake.kubectl_ok(&[
        "-n",
        "ims",
        "logs",
        "-l",
        &format!("job-name={name}"),
        "-c",
        "buildenv-sidecar",
    ]);
    // The seeds follow the upload there: the agent's log, as `ims jobs logs` has it.
    for line in [
        "Uploading /mnt/image/rootfs.squashfs to s3://boot-images/",
        "status: success",
    ] {
        assert!(
            logs.contains(line),
            "{line:?} not in kubectl's logs:\n{logs}"
        );
    }
    let text = job_log(&s, &id).await;
    assert!(
        text.contains(&format!("Kubernetes: Job {name} in namespace ims")),
        "{text}"
    );
    // Deleting the job deletes the Job, its pod with it first.
    fake.clear_requests();
    s.delete(&format!("/v3/jobs/{id}")).await;
    let deletes = fake.requests_to("DELETE", "jobs");
    assert!(
        deletes.iter().any(|r| r.path.ends_with(&name)
            && r.param("propagationPolicy").as_deref() == Some("Foreground")),
        "{deletes:?}"
    );
    eventually(
        Duration::from_secs(30),
        "every object of the job is gone",
        async || {
            [
                "jobs",
                "pods",
                "secrets",
                "services",
                "persistentvolumeclaims",
            ]
            .iter()
            .all(|p| objects_of(&fake, p, &id).is_empty())
        },
    )
    .await;
}

/// Waits for job `id` to end in `error` with `want` in its log (the reason may follow the status:
/// the agent, stopped by what happened to its pod, can end the job first).
async fn error_with(s: &Server, id: &str, want: &str) {
    wait_for_status(s, id, "error", Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = job_log(s, id).await;
        if text.contains(want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} not in the log of {id}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What the original never noticed ends the job with the reason: an image that cannot be pulled,
/// a pod no node takes in time, an eviction, the OOM killer, someone deleting the pod (its agent,
/// stopped by that, may end the job first: the reason is added); and a start the cluster refuses
/// leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_cannot_run_end_their_jobs() {
    let Some(fake) = fake(Runtime::Process) else {
        return;
    };
    // A DestinationRule is asked for, but Istio is not installed: jobs run without one.
    let s = kube_server(
        &fake,
        &[
            ("IMS_KUBERNETES_POD_TIMEOUT", "4s"),
            ("IMS_KUBERNETES_REQUEST_TIMEOUT", "3s"),
            ("IMS_KUBERNETES_DESTINATION_RULE", "true"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (image, key) = image_and_key(&s, dir.path()).await;

    // A start the cluster refuses (RBAC): 500, no record, nothing left.
    fake.fail("services", 403);
    let r = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "customize", "artifact_id": image, "public_key_id": key,
                "image_root_archive_name": "refused"}),
        )
        .await;
    assert_eq!(r.status, 500, "{:?}", r.json());
    fake.unfail("services");
    let nothing_left = || {
        for plural in ["jobs", "secrets", "services", "persistentvolumeclaims"] {
            assert!(
                fake.list(plural).is_empty(),
                "{plural} left: {:?}",
                fake.list(plural)
            );
        }
    };
    assert_eq!(s.get("/v3/jobs").await.ok(200), json!([]));
    nothing_left();
    // An API server that hangs (here on the PVC, after the Secret was made): 500 after the
    // request timeout, not a request held for as long as it hangs; the Secret is taken back.
    fake.stall("persistentvolumeclaims");
    let t = Instant::now();
    let r = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "customize", "artifact_id": image, "public_key_id": key,
                "image_root_archive_name": "hung"}),
        )
        .await;
    assert_eq!(r.status, 500, "{:?}", r.json());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    fake.unfail("persistentvolumeclaims");
    assert_eq!(s.get("/v3/jobs").await.ok(200), json!([]));
    nothing_left();

    // The image cannot be pulled: error at once, and the pending pod's Job goes too.
    fake.fault_next(Fault::ImagePull, 1);
    let pull = customize(&s, &image, &key, "pull", false).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    error_with(
        &s,
        &pull,
        "cannot pull its image registry.local/ims-rs:test",
    )
    .await;
    let text = job_log(&s, &pull).await;
    assert!(
        text.contains("Istio's DestinationRule kind is not installed in the cluster"),
        "{text}"
    );
    eventually(
        Duration::from_secs(20),
        "the unpullable job's objects go",
        async || {
            objects_of(&fake, "jobs", &pull).is_empty()
                && objects_of(&fake, "secrets", &pull).is_empty()
        },
    )
    .await;

    // No node takes it within the pod timeout.
    fake.fault_next(Fault::Unschedulable, 1);
    let unsched = customize(&s, &image, &key, "unsched", false).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Not before the timeout: a pod may take a while to be scheduled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.get(&format!("/v3/jobs/{unsched}")).await.ok(200)["status"],
        "creating"
    );
    error_with(
        &s,
        &unsched,
        "did not start within 4 s: it was not scheduled (Unschedulable)",
    )
    .await;

    // Running pods: evicted, OOM-killed, deleted by hand.
    let evicted = customize(&s, &image, &key, "evicted", false).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let oom = customize(&s, &image, &key, "oom", true).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = customize(&s, &image, &key, "gone", false).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [&evicted, &oom, &gone] {
        wait_for(&fake, &s, id, "waiting_on_user").await;
    }
    // A restarted server finds the pods again by their labels and watches them.
    let s = s.restart().await;
    let pod = |id: &str| {
        fake.pods_of(&format!("cray-ims-{id}-customize"))
            .pop()
            .unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    fake.evict(&pod(&evicted)).unwrap();
    fake.oom_kill(&pod(&oom)).unwrap();
    fake.kubectl_ok(&["-n", "ims", "delete", "pod", &pod(&gone), "--wait=false"]);
    error_with(&s, &evicted, "was evicted").await;
    error_with(
        &s,
        &oom,
        "killed for lack of memory (OOMKilled; memory limit",
    )
    .await;
    error_with(&s, &gone, "was deleted before the job finished").await;
    // Each one's Service, PVC and Secret are released.
    eventually(
        Duration::from_secs(30),
        "the failed jobs' objects are released",
        async || {
            [&evicted, &oom, &gone].iter().all(|id| {
                ["secrets", "services", "persistentvolumeclaims"]
                    .iter()
                    .all(|p| objects_of(&fake, p, id).is_empty())
            })
        },
    )
    .await;
}

/// The job pod's container runs from the image `scripts/build-image.sh` builds, under `podman run`
/// with what the pod spec gives it (command, environment with the Secret's token, the PVC at
/// /mnt/image, the TUN device, every capability dropped but the executor's list), and a jailed
/// customize job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_customize_job_runs_in_a_container_of_the_image() {
    if !is_root() || !crate::common::podman::available() {
        eprintln!("skipped: needs root and podman");
        return;
    }
    let image = tokio::task::spawn_blocking(crate::common::podman::image)
        .await
        .unwrap()
        .to_string();
    let launcher: crate::common::kube::Launcher =
        std::sync::Arc::new(|c: &crate::common::pod::ContainerLaunch| {
            crate::common::podman::run(c)
        });
    let Some(fake) = fake(Runtime::Custom(launcher)) else {
        return;
    };
    let s = kube_server(&fake, &[("IMS_KUBERNETES_IMAGE", &image)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (base, key) = image_and_key(&s, dir.path()).await;
    let id = customize(&s, &base, &key, "in-container", true).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    log_in_and_change(&fake, &s, &id, dir.path(), true, "by-container").await;
    ims(&s, &["jobs", "complete", &id]);
    let done = wait_for(&fake, &s, &id, "success").await;
    assert_motd(&s, &done, "by-container");
}

/// Seconds from `POST /v3/jobs` to the first successful SSH login at the session's address
/// (`GET …/session`: the Service's load-balancer address on Kubernetes), and the job.
async fn post_to_login(s: &Server, image: &str, key: &str, keys: &Path) -> (f64, Value) {
    let t0 = Instant::now();
    let job = customize(s, image, key, "bench", false).await;
    let j = wait_for_login(s, job["id"].as_str().unwrap(), keys).await;
    (t0.elapsed().as_secs_f64(), j)
}

/// The Kubernetes benchmark of docs/benchmarks.md (issue 15), not a test: run by hand with a
/// release build (`IMS_BENCH_BIN`), `IMS_BENCH_RUNS` rounds (default 5). Each round: POST → SSH
/// login of a customize job through the `kubernetes` executor (the fake cluster's kubelet starts
/// the pod as a process in its own namespaces), then the same job through the `local` executor
/// of a second server on the same machine; both jobs deleted. Prints every figure and the medians.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand (docs/benchmarks.md)"]
async fn benchmark_kubernetes_jobs() {
    let runs: usize = std::env::var("IMS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let Some(fake) = fake(Runtime::Process) else {
        return;
    };
    let kube = kube_server(&fake, &[]).await;
    let local = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_EXECUTOR", "local")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (kimage, kkey) = image_and_key(&kube, dir.path()).await;
    let ldir = tempfile::tempdir().unwrap();
    let (limage, lkey) = image_and_key(&local, ldir.path()).await;
    let (mut on_kube, mut on_host) = (vec![], vec![]);
    for round in 0..runs {
        let (t, j) = post_to_login(&kube, &kimage, &kkey, dir.path()).await;
        on_kube.push(t);
        kube.delete(&format!("/v3/jobs/{}", j["id"].as_str().unwrap()))
            .await
            .ok(204);
        let (t, j) = post_to_login(&local, &limage, &lkey, ldir.path()).await;
        on_host.push(t);
        local
            .delete(&format!("/v3/jobs/{}", j["id"].as_str().unwrap()))
            .await
            .ok(204);
        eprintln!(
            "round {round}: POST -> SSH login in a pod {:.2} s, local executor {:.2} s",
            on_kube[round], on_host[round]
        );
    }
    eprintln!(
        "medians of {runs}: POST -> SSH login, kubernetes executor (fake cluster) {:.2} s, local executor {:.2} s",
        median(&mut on_kube),
        median(&mut on_host)
    );
}
