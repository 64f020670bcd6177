//! The container image of IMS-rs (`scripts/build-image.sh`) run with podman (`common::podman`):
//! `ims serve` in a container answers its readiness probe; the image holds what the agent runs;
//! a customize job whose agent runs in a container of the image, started as the kubernetes
//! executor's pod spec says (command, environment, volume, capabilities), completes, with and
//! without a jail; an agent whose container lacks a capability it needs fails its job with the
//! reason. Needs root (podman's storage, network namespaces); skipped otherwise.
//!
//! To re-measure the agent's capabilities (`podman::AGENT_CAPS`): `IMS_TEST_AGENT_CAPS` (a
//! comma-separated list, possibly empty) replaces the list the job tests give the agent, and
//! `IMS_TEST_SECCOMP=default` keeps podman's default seccomp profile instead of the contract's
//! `Unconfined`.

use crate::common::jobs::{
    image_root, ims, is_root, job_keys, job_log, ssh_as_root_at, unsquash, wait_for_status,
};
use crate::common::pod::{ContainerLaunch, Mount};
use crate::common::podman::{self, AGENT_CAPS, PodNet, Removed};
use crate::common::{Db, builder, free_port_on, ims_bin, job_token};
use ims_core::agent_env::AGENT_PATH;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The TUN device slirp4netns opens.
const TUN: &str = "/dev/net/tun";

const KEY_HEX: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

fn skip() -> bool {
    if !is_root() {
        eprintln!("skipped: podman and network namespaces need root");
        return true;
    }
    false
}

/// The image (built or cached), without blocking the runtime.
async fn image() -> String {
    tokio::task::spawn_blocking(|| podman::image().to_string())
        .await
        .unwrap()
}

/// Runs `sh -c script` in a container of `image` (default capabilities, no network).
fn sh_in(image: &str, script: &str) -> std::process::Output {
    Command::new("podman")
        .args(podman::base_args())
        .args([
            "--rm",
            "--network=none",
            "--entrypoint=sh",
            image,
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_the_api_and_holds_what_the_agent_runs() {
    if skip() {
        return;
    }
    let image = image().await;

    // `ims --version` in the container is the binary under test's.
    let host = Command::new(ims_bin()).arg("--version").output().unwrap();
    let o = Command::new("podman")
        .args(podman::base_args())
        .args(["--rm", "--network=none", &image, "--version"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&host.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ims "),
        "{o:?}"
    );

    // The programs the agent runs (crates/jobs/src/prereq.rs), at the paths it runs them from.
    let o = sh_in(
        &image,
        "for p in ims sshd unsquashfs mksquashfs bwrap kiwi-ng slirp4netns setpriv ssh-keygen ssh \
         mount umount debootstrap rsync gpg; do command -v $p || echo missing $p; done; \
         ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l; ls /var/lib/apt/lists | wc -l; id -u",
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{o:?}");
    assert!(!out.contains("missing"), "{out}");
    for p in [
        "/usr/bin/ims",
        "/usr/sbin/sshd",
        "/usr/bin/unsquashfs",
        "/usr/bin/mksquashfs",
        "/usr/bin/bwrap",
        "/usr/bin/kiwi-ng",
    ] {
        assert!(out.lines().any(|l| l == p), "{p} in {out}");
    }
    // No host keys baked in (every container would share them), no apt lists; root by default
    // (the agent's user; `ims serve` runs as whoever its Deployment says).
    assert!(out.ends_with("0\n0\n0\n"), "{out}");

    // `ims serve` with its defaults in the image (listening on every address of the container,
    // data in /var/lib/ims) and an administrator token; its ports published on loopback only.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("api-token"),
        "container-test-token-0123456789abcdef",
    )
    .unwrap();
    let (api, s3) = (
        free_port_on([127, 0, 0, 1].into()),
        free_port_on([127, 0, 0, 1].into()),
    );
    let name = format!("ims-test-serve-{}", std::process::id());
    let _removed = Removed(name.clone());
    let mut serve = Command::new("podman")
        .args(podman::base_args())
        .args(["--rm", "--name", &name])
        .arg(format!("--publish=127.0.0.1:{api}:9000"))
        .arg(format!("--publish=127.0.0.1:{s3}:9001"))
        .arg(format!("--volume={}:/var/lib/ims", data.path().display()))
        .args(["--env=IMS_API_TOKEN_FILE=/var/lib/ims/api-token", &image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{api}/healthz/ready"))
            .send()
            .await
        {
            break r;
        }
        if let Some(status) = serve.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("ims serve in the container ended ({status}):\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "ims serve did not answer within 60s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(ready.status(), 200);
    // The API needs the token the volume provided.
    let r = client
        .get(format!("http://127.0.0.1:{api}/v3/images"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("http://127.0.0.1:{api}/v3/images"))
        .bearer_auth("container-test-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Its records are in the volume.
    assert!(data.path().join("ims.db").is_file());
    // Stopped as a kubelet stops it (SIGTERM to the container's PID 1, `ims serve`), it shuts
    // down cleanly well within the grace period.
    let t = Instant::now();
    podman::stop(&name, Duration::from_secs(20)).unwrap();
    let status = serve.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

/// A server the pod reaches (API and S3 on the pod network's host address), with a job-token key.
async fn server(net: &PodNet, dir: &Path) -> crate::common::Server {
    let key_file = dir.join("job.key");
    std::fs::write(&key_file, KEY_HEX).unwrap();
    let host = net.host_addr();
    builder(Db::Sqlite)
        .await
        .env("IMS_JOB_TOKEN_KEY_FILE", key_file.to_str().unwrap())
        .env("IMS_LISTEN", &format!("{host}:{}", free_port_on(host)))
        .env("IMS_S3_LISTEN", &format!("{host}:{}", free_port_on(host)))
        .env("IMS_INSECURE_OPEN_API", "true")
        .start()
        .await
}

/// The capabilities the job tests give the agent (see the module's documentation).
fn agent_caps() -> Vec<String> {
    match std::env::var("IMS_TEST_AGENT_CAPS") {
        Ok(list) => list
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        Err(_) => AGENT_CAPS.iter().map(|c| c.to_string()).collect(),
    }
}

/// The agent's container for job `id`, as the kubernetes executor's pod spec makes it.
fn agent_launch(
    image: &str,
    s: &crate::common::Server,
    net: &PodNet,
    id: &str,
    agent_dir: &Path,
    caps: Vec<String>,
) -> ContainerLaunch {
    ContainerLaunch {
        pod: format!("cray-ims-{id}-customize"),
        name: "buildenv-sidecar".into(),
        image: image.into(),
        argv: ["ims", "agent", "run", id].map(String::from).to_vec(),
        env: vec![
            ("PATH".into(), AGENT_PATH.into()),
            ("IMS_URL".into(), s.url.clone()),
            ("IMS_TOKEN".into(), job_token(KEY_HEX, id)),
            ("IMS_AGENT_DIR".into(), "/mnt/image".into()),
            ("IMS_AGENT_SSH_HOST".into(), net.pod_addr().to_string()),
            ("IMS_AGENT_SSH_PORTS".into(), "22".into()),
        ],
        mounts: vec![
            Mount {
                host_dir: agent_dir.to_path_buf(),
                container_path: "/mnt/image".into(),
                read_only: false,
            },
            // The session's network (slirp4netns) needs the TUN device, which a container's /dev
            // lacks: the pod mounts the node's (a hostPath volume of type CharDevice; the
            // runtime's default device rules allow c 10:200).
            Mount {
                host_dir: TUN.into(),
                container_path: TUN.into(),
                read_only: false,
            },
        ],
        working_dir: None,
        cap_add: caps,
        cap_drop: vec!["ALL".into()],
        privileged: false,
        netns: net.path(),
        log_file: agent_dir.with_extension("log"),
    }
}

/// A customize job registered on `s` (image made by `image_root`); its id.
async fn customize_job(s: &crate::common::Server, dir: &Path, jail: bool) -> String {
    let root = image_root(dir);
    // A set-user-ID program, as real images have (passwd, su): it keeps its mode through the job.
    let suid = root.join("bin/setuid-true");
    std::fs::copy("/bin/true", &suid).unwrap();
    std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let image = ims(s, &["images", "import", "base", root.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = job_keys(s, dir, &["id_job"]).await;
    let job = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "customize", "artifact_id": image, "public_key_id": key,
                    "image_root_archive_name": "in-a-container",
                    "ssh_containers": [{"name": "customize", "jail": jail}]}),
        )
        .await
        .ok(201);
    job["id"].as_str().unwrap().to_string()
}

/// Starts the agent's container, with podman's default seccomp profile when measuring.
fn start_agent(c: &ContainerLaunch) -> std::process::Child {
    let profile = match std::env::var("IMS_TEST_SECCOMP").as_deref() {
        Ok("default") => podman::PODMAN_DEFAULT_SECCOMP,
        _ => "unconfined",
    };
    podman::command_with_seccomp(c, profile)
        .unwrap()
        .spawn()
        .unwrap()
}

async fn customize_in_a_container(jail: bool) {
    if skip() {
        return;
    }
    let image = image().await;
    let net = PodNet::new().unwrap();
    let t = tempfile::tempdir().unwrap();
    let s = server(&net, t.path()).await;
    let id = customize_job(&s, t.path(), jail).await;
    let agent_dir = t.path().join("pod-image-vol");
    std::fs::create_dir(&agent_dir).unwrap();
    let c = agent_launch(&image, &s, &net, &id, &agent_dir, agent_caps());
    let _removed = Removed(podman::container_name(&c));
    let mut agent = start_agent(&c);

    let j = wait_for_status(&s, &id, "waiting_on_user", Duration::from_secs(180)).await;
    let info = &j["ssh_containers"][0]["connection_info"]["cluster.local"];
    let (host, port) = (
        info["host"].as_str().unwrap().to_string(),
        info["port"].as_u64().unwrap().to_string(),
    );
    assert_eq!(
        (host.as_str(), port.as_str()),
        (net.pod_addr().to_string().as_str(), "22")
    );
    let key = t.path().join("id_job");
    let edit = if jail {
        "echo in-a-container > /etc/motd && touch /tmp/complete"
    } else {
        "echo in-a-container > /mnt/image/image-root/etc/motd && touch /mnt/image/complete"
    };
    let o = tokio::task::spawn_blocking(move || ssh_as_root_at(&host, &port, &key, edit))
        .await
        .unwrap();
    assert!(
        o.status.success(),
        "{o:?}\nlog:\n{}",
        job_log(&s, &id).await
    );
    let done = wait_for_status(&s, &id, "success", Duration::from_secs(120)).await;
    let new = done["resultant_image_id"].as_str().unwrap();
    let img = s.get(&format!("/v3/images/{new}")).await.ok(200);
    let out = t.path().join("new");
    unsquash(&s, &img, &out);
    assert_eq!(
        std::fs::read_to_string(out.join("etc/motd")).unwrap(),
        "in-a-container\n"
    );
    // The file capability of the image's /bin/true survived the container.
    let o = Command::new("getcap")
        .arg(out.join("bin/true"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cap_net_raw=ep"),
        "{o:?}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("bin/setuid-true"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o7777, 0o4755);
    // The agent ends with its job, and so does its container.
    let status = tokio::task::spawn_blocking(move || agent.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "{status}\nlog:\n{}",
        job_log(&s, &id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customize_job_completes_with_its_agent_in_a_container() {
    customize_in_a_container(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_customize_job_completes_with_its_agent_in_a_container() {
    customize_in_a_container(true).await;
}

/// An agent whose container lacks CAP_SYS_ADMIN (it could not mount the image root or make the
/// session's sandbox) fails its job at once, saying which capability a container removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_capability_it_needs_fails_its_job_with_the_reason() {
    if skip() {
        return;
    }
    let image = image().await;
    let net = PodNet::new().unwrap();
    let t = tempfile::tempdir().unwrap();
    let s = server(&net, t.path()).await;
    let id = customize_job(&s, t.path(), false).await;
    let agent_dir = t.path().join("pod-image-vol");
    std::fs::create_dir(&agent_dir).unwrap();
    let caps = AGENT_CAPS
        .iter()
        .filter(|c| **c != "SYS_ADMIN")
        .map(|c| c.to_string())
        .collect();
    let c = agent_launch(&image, &s, &net, &id, &agent_dir, caps);
    let _removed = Removed(podman::container_name(&c));
    let mut agent = podman::run(&c).unwrap();
    wait_for_status(&s, &id, "error", Duration::from_secs(60)).await;
    let log = job_log(&s, &id).await;
    assert!(
        log.contains("CAP_SYS_ADMIN") && log.contains("a container or unit file removed them"),
        "{log}"
    );
    let status = tokio::task::spawn_blocking(move || agent.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success(), "{status}");
}

/// What `ims agent node-probe` (the prerequisites of each kind of job, `ims_jobs::prereq`) says
/// in a container with the agent's capabilities: create jobs (kiwi-ng) and customize jobs can run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_prerequisites_hold_in_its_container() {
    if skip() {
        return;
    }
    let image = image().await;
    let mut cmd = Command::new("podman");
    cmd.args(podman::base_args())
        .args(["--rm", "--network=none", "--user=0", "--cap-drop=ALL"])
        // As the pod spec mounts it (the session's network needs it).
        .arg(format!("--volume={TUN}:{TUN}"));
    for c in agent_caps() {
        cmd.arg(format!("--cap-add={c}"));
    }
    let o = cmd
        .args([
            "--security-opt=seccomp=unconfined",
            "--entrypoint=ims",
            &image,
        ])
        .args(["agent", "node-probe", "--base", "/tmp/ims-node"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let p: ims_core::node_wire::NodeProbe = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p.cannot_run, Default::default(), "{p:?}");
}

/// `scripts/build-image.sh` fails loudly and leaves nothing behind: an unknown argument, a binary
/// that is not there, a mirror debootstrap cannot reach (no root cached, no work directory left).
#[test]
fn the_build_script_refuses_what_it_cannot_build() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-image.sh");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let o = Command::new("bash")
            .arg(&script)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--frobnicate"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown argument --frobnicate"), "{err}");
    if skip() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-ims");
    let (code, err) = run(&["--binary", missing.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not an executable"), "{err}");

    // Nothing listens on port 9 of loopback: debootstrap cannot fetch anything.
    let cache = t.path().join("cache");
    let tmp = t.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (code, err) = run(
        &[
            "--binary",
            ims_bin(),
            "--output",
            t.path().join("out.oci.tar").to_str().unwrap(),
        ],
        &[
            ("IMS_IMAGE_MIRROR", "http://127.0.0.1:9/debian"),
            ("IMS_IMAGE_CACHE", cache.to_str().unwrap()),
            ("TMPDIR", tmp.to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("debootstrap failed"), "{err}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    assert!(!t.path().join("out.oci.tar").exists());
    // The work directory (the half-made root) is gone.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}
