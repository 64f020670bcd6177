//! Customize jobs run for real by the local executor: `ims agent run` as a child of `ims serve`,
//! fetching the source image through STS and S3, an overlay image root in the agent's private
//! mount namespace, the user's `complete`/`fail`, packaging and register-last publishing. Needs
//! root (mounts), as jobs do; skipped otherwise.

use crate::common::jobs::*;
use crate::common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Setup {
    s: Server,
    dir: tempfile::TempDir,
    image: String,
    key: String,
}

async fn setup() -> Option<Setup> {
    setup_with(&[]).await
}

async fn setup_with(env: &[(&str, &str)]) -> Option<Setup> {
    if !is_root() {
        eprintln!("skipped: customize jobs need root");
        return None;
    }
    // Started as the README does: from another directory with a relative data directory.
    let mut b = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_EXECUTOR", "local")
        // The agents of a test that fails do not outlive it by the default hour.
        .env("IMS_JOB_ORPHAN_TIMEOUT", "300s")
        .relative_data_dir();
    for (k, v) in env {
        b = b.env(k, v);
    }
    let s = b.start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = image_root(dir.path());
    let image = ims(&s, &["images", "import", "base", root.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = job_keys(&s, dir.path(), &["id_job", "id_other"]).await;
    Some(Setup { s, dir, image, key })
}

impl Setup {
    async fn job(&self, name: &str, jail: bool) -> String {
        self.job_with(name, jail, json!({})).await
    }

    async fn job_with(&self, name: &str, jail: bool, extra: Value) -> String {
        let mut body = json!({"job_type": "customize", "artifact_id": self.image,
            "public_key_id": self.key, "image_root_archive_name": name,
            "ssh_containers": [{"name": "customize", "jail": jail}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let j = self.s.post("/v3/jobs", &body).await.ok(201);
        j["id"].as_str().unwrap().to_string()
    }

    async fn wait_status(&self, id: &str, want: &str) -> Value {
        wait_for_status(&self.s, id, want, Duration::from_secs(90)).await
    }

    async fn log(&self, id: &str) -> String {
        job_log(&self.s, id).await
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.s.data.path().join("jobs").join(id)
    }

    /// Unpacks the image a finished job `done` produced: the scratch directory and the root in it.
    async fn result_root(&self, done: &Value) -> (tempfile::TempDir, PathBuf) {
        let id = done["resultant_image_id"].as_str().unwrap();
        let img = self.s.get(&format!("/v3/images/{id}")).await.ok(200);
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("new");
        unsquash(&self.s, &img, &root);
        (scratch, root)
    }

    /// Runs `cmd` over SSH as root with the job's key (or another one) at the job's address.
    fn ssh(&self, job: &Value, key: &str, cmd: &str) -> std::process::Output {
        let info = &job["ssh_containers"][0]["connection_info"]["cluster.local"];
        let port = info["port"].as_u64().unwrap().to_string();
        ssh_as_root(&port, &self.dir.path().join(key), cmd)
    }
}

/// The pid of the agent of job `id`, from /proc.
/// Sends `sig` to the process `pid` (which must exist).
fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

fn agent_pid(id: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args
            .windows(3)
            .any(|w| w[0] == b"agent" && w[1] == b"run" && w[2] == id.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// The slirp4netns processes (the sessions' network) started by the agent `agent`.
fn network_helpers(agent: u32) -> Vec<u32> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        if status.starts_with("Name:\tslirp4netns\n")
            && status.contains(&format!("\nPPid:\t{agent}\n"))
        {
            found.push(pid);
        }
    }
    found
}

/// Runs a shell command inside the agent's mount namespace (where the image root is mounted).
fn in_agent(id: &str, script: &str) {
    let pid = agent_pid(id).expect("agent running");
    let o = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

/// No agent, job directory, mount or loop device of job `id` remains (within 20 s: the kernel
/// tears a dead agent's mount namespace down, and frees its loop device, asynchronously).
fn nothing_left(st: &Setup, id: &str) {
    nothing_remains(id, Some(&st.job_dir(id)));
}

/// Whether a process other than this one names `id` in its command line (the agent, its sshd).
fn process_of(id: &str) -> bool {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name != me
            && name.bytes().all(|b| b.is_ascii_digit())
            && std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(id))
    })
}

/// [`nothing_left`], without the job directory when `dir` is `None` (no server removes it), and
/// with any process naming the job.
fn nothing_remains(id: &str, dir: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let loops = Command::new("losetup").arg("-a").output().unwrap();
        let loops = String::from_utf8_lossy(&loops.stdout).into_owned();
        let left = [
            (agent_pid(id).is_some(), "the agent"),
            (dir.is_some_and(|d| d.exists()), "the job directory"),
            (mounts.contains(id), "a mount"),
            (loops.contains(id), "a loop device"),
            (dir.is_none() && process_of(id), "a process"),
        ];
        let Some((_, what)) = left.iter().find(|(there, _)| *there) else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{what} of job {id} is left behind:\n{mounts}\n{loops}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A change made in the image root ends up in the new image, not in the source; the job ends
/// in success with the new image as its result, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_customization_becomes_a_new_image() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("site-ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nsite CA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let Some(st) = setup_with(&[("IMS_JOB_CA_CERT", ca.to_str().unwrap())]).await else {
        return;
    };
    let id = st.job("custom-1", false).await;
    st.wait_status(&id, "waiting_on_user").await;
    let root = st.job_dir(&id).join("mnt/image-root");
    in_agent(
        &id,
        &format!(
            "echo customized > {0}/etc/motd && touch {0}/etc/added",
            root.display()
        ),
    );
    // Not visible outside the agent's namespace: the image root is a private mount.
    assert!(!root.join("etc/added").exists());
    // `ims jobs logs --follow` runs until the job ends; `ims jobs complete` ends the session.
    let follow = {
        let url = st.s.url.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            Command::new(ims_bin())
                .args(["jobs", "logs", &id, "--follow", "--url", &url])
                .env_remove("IMS_URL")
                .env_remove("IMS_TOKEN")
                .output()
                .unwrap()
        })
    };
    let j = ims(&st.s, &["jobs", "complete", &id]);
    assert_eq!(j["id"], json!(id));
    let job = st.wait_status(&id, "success").await;
    let followed = follow.join().unwrap();
    assert!(followed.status.success(), "{followed:?}");
    let text = String::from_utf8_lossy(&followed.stdout);
    assert!(text.contains("status: success"), "{text}");
    // Completing again is refused: the job is not waiting any more.
    let o = ims_raw(&st.s, &["jobs", "complete", &id]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not waiting on a user"),
        "{o:?}"
    );
    let new = job["resultant_image_id"].as_str().unwrap();
    let img = st.s.get(&format!("/v3/images/{new}")).await.ok(200);
    assert_eq!(img["name"], "custom-1");
    let src = st.s.get(&format!("/v3/images/{}", st.image)).await.ok(200);
    let scratch = tempfile::tempdir().unwrap();
    unsquash(&st.s, &img, &scratch.path().join("new"));
    unsquash(&st.s, &src, &scratch.path().join("old"));
    let new_root = scratch.path().join("new");
    assert_eq!(
        std::fs::read_to_string(new_root.join("etc/motd")).unwrap(),
        "customized\n"
    );
    assert!(new_root.join("etc/added").exists());
    assert_eq!(
        std::fs::read(new_root.join("etc/cray/ca/certificate_authority.crt")).unwrap(),
        std::fs::read(&ca).unwrap(),
        "the site CA certificate is in the image"
    );
    assert!(
        !new_root.join("etc/resolv.conf").exists(),
        "the session's resolv.conf was kept"
    );
    let caps = Command::new("getcap")
        .arg(new_root.join("bin/true"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw"),
        "{caps:?}"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("old/etc/motd")).unwrap(),
        "original\n"
    );
    let log = st.log(&id).await;
    for want in [
        "md5 matches the manifest",
        "overlay",
        "status: packaging_artifacts",
        "registered image",
        "packaged in",
    ] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }
    nothing_left(&st, &id);
}

/// A `failed` flag ends the job in error without a new image; killing the agent ends its job
/// in error with the reason; deleting a waiting job leaves no process, mount or directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_killed_and_deleted_jobs_leave_nothing() {
    let Some(st) = setup().await else { return };
    let images =
        st.s.get("/v3/images")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len();

    let failed = st.job("never", false).await;
    st.wait_status(&failed, "waiting_on_user").await;
    in_agent(
        &failed,
        &format!("touch {}/mnt/failed", st.job_dir(&failed).display()),
    );
    let j = st.wait_status(&failed, "error").await;
    assert_eq!(j["resultant_image_id"], Value::Null);
    assert!(st.log(&failed).await.contains("marked as failed"));
    nothing_left(&st, &failed);

    let killed = st.job("killed", true).await;
    st.wait_status(&killed, "waiting_on_user").await;
    let pid = agent_pid(&killed).unwrap();
    // The session's network helper is the agent's child, and goes with it.
    let net = network_helpers(pid);
    assert_eq!(net.len(), 1, "the agent runs no slirp4netns");
    signal(pid, rustix::process::Signal::KILL);
    st.wait_status(&killed, "error").await;
    let log = st.log(&killed).await;
    assert!(
        log.contains("[ims] error: the job agent was killed by signal 9"),
        "{log}"
    );
    nothing_left(&st, &killed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "slirp4netns\n")
    }) {
        assert!(Instant::now() < deadline, "slirp4netns outlived its agent");
        std::thread::sleep(Duration::from_millis(50));
    }

    let deleted = st.job("deleted", false).await;
    st.wait_status(&deleted, "waiting_on_user").await;
    st.s.delete(&format!("/v3/jobs/{deleted}")).await.ok(204);
    nothing_left(&st, &deleted);

    assert_eq!(
        st.s.get("/v3/images")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        images,
        "a failed job registered an image"
    );

    // An executor that cannot start a job: a 500 that names no server path (the reason goes to
    // the server's log), and no job record is left.
    let jobs_dir = st.s.data.path().join("jobs");
    std::fs::remove_dir_all(&jobs_dir).unwrap();
    std::fs::write(&jobs_dir, "not a directory").unwrap();
    let body = json!({"job_type": "customize", "artifact_id": st.image,
        "public_key_id": st.key, "image_root_archive_name": "unstartable",
        "ssh_containers": [{"name": "customize", "jail": false}]});
    let r = st.s.post("/v3/jobs", &body).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 500, "{text}");
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("could not be started") && detail.contains("server's log"),
        "{detail}"
    );
    let data = st.s.data.path().canonicalize().unwrap();
    assert!(
        !text.contains("/jobs") && !text.contains(data.to_str().unwrap()),
        "a server path in the answer: {text}"
    );
    assert!(
        st.s.get("/v3/jobs")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["image_root_archive_name"] != "unstartable"),
        "the job's record was kept"
    );
}

/// The real OpenSSH client logs in with the job's key (and only with it), changes the image and
/// finishes with the flag file; jailed and not jailed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_sessions_customize_the_image() {
    let Some(st) = setup().await else { return };
    for jail in [true, false] {
        let id = st.job(&format!("ssh-{jail}"), jail).await;
        let job = st.wait_status(&id, "waiting_on_user").await;
        let c = &job["ssh_containers"][0];
        assert_eq!(c["status"], "running", "{job}");
        for net in ["customer_access", "cluster.local"] {
            assert!(
                c["connection_info"][net]["port"].as_u64().unwrap() > 0,
                "{job}"
            );
            assert!(
                !c["connection_info"][net]["host"]
                    .as_str()
                    .unwrap()
                    .is_empty()
            );
        }
        let o = st.ssh(&job, "id_other", "true");
        assert_eq!(o.status.code(), Some(255), "another key got in: {o:?}");
        // sshd's refusal reaches the job's log while the session waits, not only at its end.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = st.log(&id).await;
            if log.contains("sshd: Connection closed by authenticating user root") {
                break;
            }
            assert!(Instant::now() < deadline, "no live sshd refusal in:\n{log}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (edit, flag) = if jail {
            ("echo by-ssh > /etc/motd && ls /", "touch /tmp/complete")
        } else {
            (
                "echo by-ssh > /mnt/image/image-root/etc/motd && ls /mnt/image",
                "touch /mnt/image/complete",
            )
        };
        if !jail {
            // Outside the chroot the session is a host-like shell: the alternatives links
            // (awk, which), os-release and CA certificates are there; host secrets are not.
            let o = st.ssh(
                &job,
                "id_job",
                "awk 'BEGIN { print 6 * 7 }' && which ls && . /etc/os-release && echo \"os=$ID\" \
                 && ls /etc/ssl/certs | head -1 && ! ls /etc/ssl/private 2>/dev/null \
                 && ! test -e /etc/shadow",
            );
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{o:?}");
            assert!(
                out.contains("42\n") && out.contains("/ls\n") && out.contains("os="),
                "{out}"
            );
        }
        let o = st.ssh(&job, "id_job", edit);
        assert!(o.status.success(), "{o:?}");
        let listing = String::from_utf8_lossy(&o.stdout);
        assert!(
            listing.contains(if jail { "boot" } else { "image-root" }),
            "{listing}"
        );
        let o = st.ssh(&job, "id_job", flag);
        assert!(o.status.success(), "{o:?}");
        let done = st.wait_status(&id, "success").await;
        assert_eq!(done["ssh_containers"][0]["status"], "stopped");
        let new = done["resultant_image_id"].as_str().unwrap();
        let img = st.s.get(&format!("/v3/images/{new}")).await.ok(200);
        let scratch = tempfile::tempdir().unwrap();
        unsquash(&st.s, &img, &scratch.path().join("new"));
        let root = scratch.path().join("new");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            "by-ssh\n"
        );
        assert!(!root.join("tmp/complete").exists(), "the flag was packaged");
        // The sandbox's /dev and /proc never reach the image.
        assert!(
            std::fs::read_dir(root.join("dev"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true)
        );
        let caps = Command::new("getcap")
            .arg(root.join("bin/true"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw"),
            "{caps:?}"
        );
        // sshd's own log reaches the job's log when the session ends: who logged in, how.
        let log = st.log(&id).await;
        assert!(
            log.matches("sshd: Accepted publickey for root").count() >= 2,
            "the login check's and the user's: {log}"
        );
        nothing_left(&st, &id);
    }
}

/// A network namespace of the test's own with a veth pair on a private subnet (198.18.0.0/15,
/// for benchmarks) and a TCP server in it that greets every connection: an address that is not
/// the host's loopback, with all traffic on this machine. Removed (with the server) on drop.
struct TestNet {
    name: String,
    server: std::process::Child,
    ip: String,
    port: u16,
}

const GREETING: &str = "reached-the-test-network";

impl TestNet {
    fn new() -> TestNet {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = (std::process::id() ^ nanos) % 100_000;
        let idx = (std::process::id().wrapping_mul(7919) ^ nanos) % 32768;
        let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + idx * 4;
        let host = std::net::Ipv4Addr::from(base + 1).to_string();
        let ip = std::net::Ipv4Addr::from(base + 2).to_string();
        let name = format!("ims-test-{tag}");
        let (a, b) = (format!("imsv{tag}a"), format!("imsv{tag}b"));
        let run = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(o.status.success(), "ip {args:?}: {o:?}");
        };
        run(&["netns", "add", &name]);
        let net = TestNet {
            server: Command::new("true").spawn().unwrap(),
            name: name.clone(),
            ip: ip.clone(),
            port: 8080,
        };
        run(&[
            "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &name,
        ]);
        run(&["addr", "add", &format!("{host}/30"), "dev", &a]);
        run(&["link", "set", &a, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            run(&all);
        };
        in_ns(&["addr", "add", &format!("{ip}/30"), "dev", &b]);
        in_ns(&["link", "set", &b, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        let mut net = net;
        net.server = Command::new("ip")
            .args(["netns", "exec", &name, "python3", "-c"])
            .arg(format!(
                "import socket\ns = socket.create_server(('0.0.0.0', 8080))\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'{GREETING}\\n')\n    c.close()\n"
            ))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((ip.as_str(), net.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test network's server does not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        net
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // Its veth pair goes with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Neither mode reaches anything of the host outside the job: planted files in the data
/// directory, another job's directory and elsewhere on the host are invisible; mounting and
/// reading the agent's environment (its token) fail. Sessions have a network namespace of their
/// own: the API and the S3 endpoint on the host's loopback cannot be reached (directly, nor
/// through slirp4netns's host alias 10.0.2.2), while an address beyond the host's loopback (a test
/// network namespace) is reachable. No process of the session shows a host path in its command
/// line. Jailed, root cannot chroot(2) out of the image root, nor enter another process's root
/// through /proc (where sshd's private host key is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cannot_reach_the_host() {
    let Some(st) = setup().await else { return };
    let api_port = st.s.url.rsplit(':').next().unwrap().to_string();
    let sts =
        st.s.send("PUT", "/apis/sts/token", None, None)
            .await
            .ok(200);
    let s3_port = sts["Credentials"]["EndpointURL"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let net = TestNet::new();
    let planted = [
        st.s.data.path().join("planted-secret"),
        st.dir.path().join("planted-secret"),
    ];
    for p in &planted {
        std::fs::write(p, "host secret").unwrap();
    }
    let other = st.job("other", false).await;
    st.wait_status(&other, "waiting_on_user").await;
    let other_dir = st.job_dir(&other);
    for jail in [true, false] {
        let id = st.job(&format!("probe-{jail}"), jail).await;
        let job = st.wait_status(&id, "waiting_on_user").await;
        let mut probes: Vec<String> = planted
            .iter()
            .map(|p| format!("cat {}", p.display()))
            .collect();
        probes.push(format!("ls {}", other_dir.display()));
        probes.push(format!("ls {}", st.s.data.path().display()));
        probes.push("mount -t tmpfs none /tmp".to_string());
        for p in &probes {
            let o = st.ssh(&job, "id_job", p);
            assert!(
                o.status.code() != Some(0),
                "jail={jail}: {p} succeeded: {o:?}"
            );
            assert!(
                !String::from_utf8_lossy(&o.stdout).contains("host secret"),
                "{o:?}"
            );
        }
        let o = st.ssh(
            &job,
            "id_job",
            "cat /proc/1/environ; cat /proc/self/environ",
        );
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("ims-job."),
            "token leaked: {o:?}"
        );
        // The network: the host's loopback services are out of reach, the test network answers.
        for (host, port) in [
            ("127.0.0.1", &api_port),
            ("127.0.0.1", &s3_port),
            ("10.0.2.2", &api_port),
        ] {
            let o = st.ssh(
                &job,
                "id_job",
                &format!("busybox timeout 5 busybox nc {host} {port} </dev/null"),
            );
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                text.contains("can't connect") && o.status.code() != Some(0),
                "jail={jail}: {host}:{port} of the host is reachable from the session: {o:?}"
            );
        }
        let o = st.ssh(
            &job,
            "id_job",
            &format!(
                "busybox timeout 10 busybox nc {} {} </dev/null",
                net.ip, net.port
            ),
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(GREETING),
            "jail={jail}: the session cannot reach {}:{}: {o:?}",
            net.ip,
            net.port
        );
        // No process of the session shows where the job lives on the host (bwrap's arguments).
        let o = st.ssh(
            &job,
            "id_job",
            "cat /proc/[0-9]*/cmdline | busybox tr '\\0' ' '",
        );
        let cmdlines = String::from_utf8_lossy(&o.stdout);
        assert!(
            !cmdlines.contains("/jobs/") && cmdlines.contains("sshd"),
            "jail={jail}: {o:?}"
        );
        if jail {
            // No chroot(2) out of the image root.
            let o = st.ssh(&job, "id_job", "chroot / /bin/true");
            assert!(
                o.status.code() != Some(0)
                    && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
                "chroot works in a jailed session: {o:?}"
            );
            let o = st.ssh(
                &job,
                "id_job",
                "busybox grep -E '^Cap(Prm|Eff|Inh)' /proc/self/status",
            );
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let caps =
                    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
                // CAP_SETPCAP 8, CAP_SYS_CHROOT 18; CAP_CHOWN 0 (root's customization) stays.
                assert_eq!(caps & (1 << 8 | 1 << 18), 0, "{line}");
                assert!(line.starts_with("CapInh") || caps & 1 == 1, "{line}");
            }
            // Nor into any other process's root: every process outside the jail (sshd, pid 1 of
            // the sandbox) holds a capability the session lacks.
            let o = st.ssh(&job, "id_job", "cd /proc/1/root");
            assert_ne!(o.status.code(), Some(0), "/proc/1/root entered: {o:?}");
            let o = st.ssh(
                &job,
                "id_job",
                "for p in /proc/[0-9]*; do cat $p/root/etc/ssh/ssh_host_ed25519_key; \
                 ls $p/root/usr/sbin/sshd; done 2>&1; true",
            );
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                !text.contains("PRIVATE KEY") && !text.contains("/usr/sbin/sshd\n"),
                "the sandbox's root is reachable from a jailed session:\n{text}"
            );
        }
        st.s.send("POST", &format!("/v3/jobs/{id}/fail"), None, None)
            .await
            .ok(200);
        st.wait_status(&id, "error").await;
        nothing_left(&st, &id);
    }
    st.s.delete(&format!("/v3/jobs/{other}")).await.ok(204);
    nothing_left(&st, &other);
}

/// A user who never finishes: the job ends in error at the deadline, with the reason in its log,
/// and its session, mounts and directory are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_deadline_ends_the_job() {
    let Some(st) = setup_with(&[("IMS_JOB_USER_DEADLINE", "3s")]).await else {
        return;
    };
    let id = st.job("slow-user", true).await;
    st.wait_status(&id, "waiting_on_user").await;
    let job = st.wait_status(&id, "error").await;
    assert_eq!(job["resultant_image_id"], Value::Null);
    let log = st.log(&id).await;
    assert!(
        log.contains("did not finish the session within the deadline of 3 s"),
        "{log}"
    );
    nothing_left(&st, &id);
}

/// An image root with the host's Python 3 (binary, standard library, the libraries they load)
/// and busybox, so Ansible can run its modules with the image's own interpreter in a jail.
fn python_root(dir: &Path) -> PathBuf {
    let root = dir.join("pyroot");
    for d in [
        "usr/bin",
        "usr/lib",
        "usr/lib64",
        "boot",
        "etc",
        "tmp",
        "root",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (l, t) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/bin"),
    ] {
        std::os::unix::fs::symlink(t, root.join(l)).unwrap();
    }
    std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), "kernel").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-9-amd64"), "initrd").unwrap();
    std::fs::write(root.join("etc/motd"), "original\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let cp = |args: &[&str]| {
        let o = Command::new("cp").args(args).output().unwrap();
        assert!(o.status.success(), "cp {args:?}: {o:?}");
    };
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let version = python.file_name().unwrap().to_str().unwrap().to_string();
    let r = |p: &str| root.join(p).to_str().unwrap().to_string();
    cp(&[python.to_str().unwrap(), &r("usr/bin/python3")]);
    cp(&["-a", &format!("/usr/lib/{version}"), &r("usr/lib/")]);
    cp(&["/bin/busybox", &r("usr/bin/busybox")]);
    for applet in [
        "sh", "env", "cat", "ls", "touch", "echo", "rm", "mkdir", "chmod", "id",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("usr/bin").join(applet)).unwrap();
    }
    // Every shared library Python and its extension modules load, at the same paths.
    let mut objects = vec![python.clone()];
    for e in std::fs::read_dir(format!("/usr/lib/{version}/lib-dynload"))
        .unwrap()
        .flatten()
    {
        objects.push(e.path());
    }
    let mut libs = std::collections::BTreeSet::new();
    for o in &objects {
        let out = Command::new("ldd").arg(o).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split("=>").nth(1) {
                Some(rest) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                libs.insert(p.to_string());
            }
        }
    }
    for lib in libs {
        let real = std::fs::canonicalize(&lib).unwrap();
        let rel = lib.trim_start_matches('/');
        // /lib/... and /lib64/... are usr/lib and usr/lib64 in the image (merged /usr).
        let dest = root.join(rel.strip_prefix("usr/").unwrap_or(rel));
        let dest = if rel.starts_with("lib") {
            root.join("usr").join(rel)
        } else {
            dest
        };
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if !dest.exists() {
            std::fs::copy(&real, &dest).unwrap();
        }
    }
    root
}

/// Ansible from PyPI runs a playbook against the job's `connection_info` with a CFS-style
/// inventory (jailed: the image's own Python), then finishes the session as CFS does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_customizes_a_jailed_image() {
    let Some(playbook) = std::env::var_os("IMS_TEST_ANSIBLE_PLAYBOOK") else {
        panic!("IMS_TEST_ANSIBLE_PLAYBOOK is not set: run the tests with scripts/test.sh");
    };
    let Some(mut st) = setup().await else { return };
    let root = python_root(st.dir.path());
    st.image = ims(
        &st.s,
        &["images", "import", "with-python", root.to_str().unwrap()],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = st.job("ansible", true).await;
    let job = st.wait_status(&id, "waiting_on_user").await;
    let info = &job["ssh_containers"][0]["connection_info"]["cluster.local"];
    let probe = st.ssh(
        &job,
        "id_job",
        "/usr/bin/python3 -c 'import sys, json, zipfile, hashlib, tempfile, selectors; print(sys.version)'",
    );
    assert!(
        probe.status.success(),
        "the image's Python does not run: {probe:?}"
    );
    let dir = st.dir.path();
    // The inventory CFS writes for an image customization.
    std::fs::write(
        dir.join("inventory.yml"),
        format!(
            "all:\n  hosts:\n    image:\n      ansible_host: 127.0.0.1\n      ansible_port: {}\n      ansible_user: root\n      ansible_ssh_private_key_file: {}\n      ansible_python_interpreter: /usr/bin/python3\n      ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null\n",
            info["port"],
            dir.join("id_job").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("site.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: set the message of the day\n      ansible.builtin.copy:\n        dest: /etc/motd\n        content: \"configured by ansible\\n\"\n        mode: \"0644\"\n    - name: add a line\n      ansible.builtin.lineinfile:\n        path: /etc/ansible-was-here\n        line: yes\n        create: true\n",
    )
    .unwrap();
    let out = Command::new(&playbook)
        .arg("-i")
        .arg(dir.join("inventory.yml"))
        .arg(dir.join("site.yml"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ansible-playbook failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // CFS's teardown: touch the flag over SSH.
    let o = st.ssh(&job, "id_job", "touch /tmp/complete");
    assert!(o.status.success(), "{o:?}");
    let done = st.wait_status(&id, "success").await;
    let (_scratch, new_root) = st.result_root(&done).await;
    assert_eq!(
        std::fs::read_to_string(new_root.join("etc/motd")).unwrap(),
        "configured by ansible\n"
    );
    assert!(new_root.join("etc/ansible-was-here").exists());
    nothing_left(&st, &id);
}

/// `require_dkms`: proc, sys and dev are there in the image root during the session (not
/// jailed here: the session sees them under /mnt/image/image-root) and gone before packaging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkms_mounts_exist_only_during_the_session() {
    let Some(st) = setup().await else { return };
    let id = st
        .job_with("dkms", false, json!({"require_dkms": true}))
        .await;
    let job = st.wait_status(&id, "waiting_on_user").await;
    assert_eq!(job["require_dkms"], true);
    let r = "/mnt/image/image-root";
    let o = st.ssh(
        &job,
        "id_job",
        &format!("test -e {r}/proc/self/status && test -d {r}/sys/kernel && test -c {r}/dev/null && touch /mnt/image/complete"),
    );
    assert!(o.status.success(), "{o:?}");
    let done = st.wait_status(&id, "success").await;
    let (_scratch, new_root) = st.result_root(&done).await;
    for d in ["proc", "sys", "dev"] {
        let p = new_root.join(d);
        let empty = std::fs::read_dir(&p)
            .map(|mut e| e.next().is_none())
            .unwrap_or(true);
        assert!(empty, "/{d} of the packaged image is not empty");
    }
    nothing_left(&st, &id);
}

/// `ims serve` restarting while a job waits on its user takes the running agent over: the
/// session keeps working and the job completes, even when the server was down for longer than
/// the heartbeat timeout; a job whose agent died while the server was down ends in error at the
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_takes_running_agents_over() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let Some(mut st) =
        setup_with(&[("IMS_LISTEN", &listen), ("IMS_JOB_HEARTBEAT_TIMEOUT", "8s")]).await
    else {
        return;
    };
    assert_eq!(st.s.url, format!("http://{listen}"));
    let alive = st.job("survivor", true).await;
    let dead = st.job("casualty", false).await;
    st.wait_status(&alive, "waiting_on_user").await;
    st.wait_status(&dead, "waiting_on_user").await;
    let dead_pid = agent_pid(&dead).unwrap();
    st.s.stop();
    // While the server is down, one agent dies (as on a host restart).
    signal(dead_pid, rustix::process::Signal::KILL);
    while agent_pid(&dead).is_some() {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent_pid(&alive).is_some(),
        "the agent died with the server"
    );
    // Down for longer than the heartbeat timeout: the survivor's last heartbeat is older than
    // that when the server comes back, and it must still get the chance to send the next one.
    std::thread::sleep(Duration::from_secs(10));
    st.s = st.s.restart().await;
    let job = st.wait_status(&dead, "error").await;
    assert_eq!(job["resultant_image_id"], Value::Null);
    let log = st.log(&dead).await;
    assert!(
        log.contains("not running any more when the server started"),
        "{log}"
    );
    nothing_left(&st, &dead);
    // Several reconciler passes later, the survivor is still waiting on its user.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let job = st.s.get(&format!("/v3/jobs/{alive}")).await.ok(200);
    assert_eq!(job["status"], "waiting_on_user", "{}", st.log(&alive).await);
    let o = st.ssh(
        &job,
        "id_job",
        "echo after-restart > /etc/motd && touch /tmp/complete",
    );
    assert!(o.status.success(), "{o:?}");
    let done = st.wait_status(&alive, "success").await;
    assert!(done["resultant_image_id"].is_string());
    nothing_left(&st, &alive);
}

/// The server is gone for good (SIGKILL) under jobs waiting on their users. An agent told to stop
/// (SIGTERM) ends within the executor's grace period (10 s) although its log cannot be delivered
/// any more; one left alone ends by itself once the server has not answered for the orphan
/// timeout. Neither leaves a process (sshd), mount or loop device behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_a_vanished_server_end() {
    let Some(mut st) = setup_with(&[("IMS_JOB_ORPHAN_TIMEOUT", "5s")]).await else {
        return;
    };
    let told = st.job("told", true).await;
    let alone = st.job("alone", false).await;
    st.wait_status(&told, "waiting_on_user").await;
    st.wait_status(&alone, "waiting_on_user").await;
    let told_pid = agent_pid(&told).unwrap();
    st.s.child.kill().unwrap();
    st.s.child.wait().unwrap();
    signal(told_pid, rustix::process::Signal::TERM);
    let told_at = Instant::now();
    while agent_pid(&told).is_some() {
        // The grace period, and slack for a loaded machine.
        assert!(
            told_at.elapsed() < Duration::from_secs(12),
            "the agent told to stop still runs after {:?}",
            told_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the agent told to stop ended in {:?}", told_at.elapsed());
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent_pid(&alone).is_some() {
        assert!(
            Instant::now() < deadline,
            "the agent whose server is gone still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (id, why) in [
        (&told, "stopping: the agent was told to stop"),
        (&alone, "stopping: the server has not answered for"),
    ] {
        let out = std::fs::read_to_string(st.job_dir(id).join("agent.out")).unwrap();
        assert!(
            out.contains(why),
            "{why:?} not in the agent's output:\n{out}"
        );
        nothing_remains(id, None);
    }
}

/// Hard links come out of a customization as from an unpacked tree: `/etc/a` and `/etc/b` are one
/// file (`old`), a session writes `new` through `/etc/a`, and the new image has a = b = `new`, one
/// inode with two links, while the untouched pair `/etc/c`, `/etc/d` stays one file too. Jailed and
/// not jailed over the overlay fast path (its inode index keeps the links), and from an image whose
/// squashfs has no export table (the overlay cannot keep links: the job unpacks it, and says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_are_kept() {
    use std::os::unix::fs::MetadataExt;
    let Some(mut st) = setup().await else { return };
    let root = st.dir.path().join("root");
    std::fs::write(root.join("etc/a"), "old\n").unwrap();
    std::fs::hard_link(root.join("etc/a"), root.join("etc/b")).unwrap();
    std::fs::write(root.join("etc/c"), "pair\n").unwrap();
    std::fs::hard_link(root.join("etc/c"), root.join("etc/d")).unwrap();
    let linked = ims(
        &st.s,
        &["images", "import", "linked", root.to_str().unwrap()],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sqsh = st.dir.path().join("no-exports.sqsh");
    let o = Command::new("mksquashfs")
        .arg(&root)
        .arg(&sqsh)
        .args(["-quiet", "-noappend", "-no-exports"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let no_exports = ims(
        &st.s,
        &["images", "import", "no-exports", sqsh.to_str().unwrap()],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (image, jail, path_taken) in [
        (&linked, true, "the overlay's inode index keeps hard links"),
        (&linked, false, "the overlay's inode index keeps hard links"),
        (&no_exports, true, "unsquashed into"),
    ] {
        st.image = image.clone();
        let id = st.job(&format!("links-{jail}"), jail).await;
        let job = st.wait_status(&id, "waiting_on_user").await;
        let script = if jail {
            "echo new > /etc/a; touch /tmp/complete"
        } else {
            "echo new > /mnt/image/image-root/etc/a; touch /mnt/image/complete"
        };
        let o = st.ssh(&job, "id_job", script);
        assert!(o.status.success(), "{o:?}");
        let done = st.wait_status(&id, "success").await;
        let (_scratch, new) = st.result_root(&done).await;
        let meta = |n: &str| std::fs::symlink_metadata(new.join("etc").join(n)).unwrap();
        let read = |n: &str| std::fs::read_to_string(new.join("etc").join(n)).unwrap();
        let what = format!("jail={jail}, image {image}");
        assert_eq!(
            (read("a"), read("b")),
            ("new\n".into(), "new\n".into()),
            "{what}"
        );
        assert_eq!(meta("a").ino(), meta("b").ino(), "{what}: a and b split");
        assert_eq!(meta("a").nlink(), 2, "{what}");
        assert_eq!(
            (read("c"), read("d")),
            ("pair\n".into(), "pair\n".into()),
            "{what}"
        );
        assert_eq!(meta("c").ino(), meta("d").ino(), "{what}: c and d split");
        assert_eq!(meta("c").nlink(), 2, "{what}");
        let log = st.log(&id).await;
        assert!(
            log.contains(path_taken),
            "{path_taken:?} not in the log:\n{log}"
        );
        nothing_left(&st, &id);
    }
}

/// `IMS_JOB_SSH_LISTEN` and `IMS_JOB_SSH_PORTS` (firewalls): sessions listen on that address only,
/// on ports of the range; two sessions take two ports of it, and a session with no free port left
/// ends in error saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_address_and_port_range() {
    let free = |n: u16| -> u16 {
        // `n` consecutive free ports.
        'outer: for first in (42000..60000).step_by(97) {
            for p in first..first + n {
                if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                    continue 'outer;
                }
            }
            return first;
        }
        panic!("no {n} free consecutive ports");
    };
    let first = free(2);
    let range = format!("{first}-{}", first + 1);
    let Some(st) = setup_with(&[
        ("IMS_JOB_SSH_LISTEN", "127.0.0.1"),
        ("IMS_JOB_SSH_PORTS", &range),
    ])
    .await
    else {
        return;
    };
    let mut ports = vec![];
    let mut ids = vec![];
    for name in ["a", "b"] {
        let (id, job) = if name == "a" {
            let id = st.job(name, true).await;
            let job = st.wait_status(&id, "waiting_on_user").await;
            (id, job)
        } else {
            // `ims jobs create --wait` returns when the session's real port is known.
            let job = ims(
                &st.s,
                &[
                    "jobs",
                    "create",
                    "--job-type",
                    "customize",
                    "--artifact-id",
                    &st.image,
                    "--public-key-id",
                    &st.key,
                    "--image-root-archive-name",
                    name,
                    "--ssh-containers-jail",
                    "True",
                    "--wait",
                ],
            );
            assert_eq!(job["status"], "waiting_on_user", "{job}");
            (job["id"].as_str().unwrap().to_string(), job)
        };
        let port = job["ssh_containers"][0]["connection_info"]["cluster.local"]["port"]
            .as_u64()
            .unwrap() as u16;
        assert!((first..=first + 1).contains(&port), "{port} not in {range}");
        let o = st.ssh(&job, "id_job", "true");
        assert!(o.status.success(), "{o:?}");
        // Another loopback address of this host: not listened on.
        assert!(
            std::net::TcpStream::connect(("127.0.0.2", port)).is_err(),
            "sshd listens beyond 127.0.0.1"
        );
        ports.push(port);
        ids.push(id);
    }
    assert_ne!(ports[0], ports[1]);
    // The range is used up: the third session cannot start, and says why.
    let id = st.job("c", true).await;
    st.wait_status(&id, "error").await;
    let log = st.log(&id).await;
    assert!(
        log.contains(&format!("no free port in the session port range {range}")),
        "{log}"
    );
    for id in ids.iter().chain([&id]) {
        st.s.delete(&format!("/v3/jobs/{id}")).await.ok(204);
        nothing_left(&st, id);
    }
}

/// `ims images shell` under a real terminal, with the real OpenSSH client: one command from the
/// image to a new image (jailed; sshd's host key pinned from the API, so no question about it
/// in an empty HOME); Ctrl-C while waiting leaves the job; `--job` connects to it again, and with
/// `--fail-on-error` a shell that exits non-zero fails the job and the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_shell_from_command_to_new_image() {
    let Some(st) = setup_with(&[("IMS_JOB_SSH_HOST", "127.0.0.1")]).await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let key = st.dir.path().join("id_job");
    let shell = |args: &[&str]| {
        let mut c = Command::new(ims_bin());
        c.args(["images", "shell"])
            .args(args)
            .args(["--url", &st.s.url, "--format", "json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", home.path())
            .env("TERM", "xterm")
            .env("IMS_CLIENT_CONFIG", home.path().join("client.toml"));
        Pty::spawn(c)
    };
    let minute = Duration::from_secs(60);
    // 1. Jailed, by name, from command to new image.
    let mut t = shell(&["base", "--name", "shelled", "-i", key.to_str().unwrap()]);
    t.wait_for("connecting to 127.0.0.1:", minute);
    t.send("echo from-the-shell > /etc/shelltest; echo MARK-$((6*7))\n");
    t.wait_for("MARK-42", minute);
    t.send("exit\n");
    let status = t.finish(Duration::from_secs(120));
    let out = t.output();
    assert!(status.success(), "{status}: {out}");
    assert!(!out.contains("authenticity of host"), "{out}");
    assert!(out.contains("packag"), "packaging is followed: {out}");
    let jobs = st.s.get("/v3/jobs").await.ok(200);
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["image_root_archive_name"] == "shelled")
        .unwrap()
        .clone();
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["ssh_containers"][0]["jail"], true);
    let new = job["resultant_image_id"].as_str().unwrap();
    assert!(out.contains(new), "the new image is printed: {out}");
    let (_scratch, root) = st.result_root(&job).await;
    assert_eq!(
        std::fs::read_to_string(root.join("etc/shelltest")).unwrap(),
        "from-the-shell\n"
    );
    // The user's key was registered once and is found again below.
    let keys = st.s.get("/v3/public-keys").await.ok(200);
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");

    // 2. Ctrl-C while the job starts leaves it.
    let mut t = shell(&["base", "--no-jail", "-i", key.to_str().unwrap()]);
    t.wait_for("Ctrl-C leaves the job", minute);
    t.send("\x03");
    let status = t.finish(minute);
    let out = t.output();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("is left as it is"), "{out}");
    let id = out
        .split("ims images shell --job ")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .unwrap()
        .to_string();
    let waiting = st.wait_status(&id, "waiting_on_user").await;
    assert_eq!(waiting["ssh_containers"][0]["jail"], false);
    let session = st.s.get(&format!("/v3/jobs/{id}/session")).await.ok(200);
    assert!(
        session["host_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 "),
        "{session}"
    );

    // 3. Connect again; a failing shell with --fail-on-error fails the job.
    let mut t = shell(&["--job", &id, "--fail-on-error", "-i", key.to_str().unwrap()]);
    t.wait_for("connecting to", minute);
    t.send("echo MARK-$((6*7)); exit 3\n");
    let status = t.finish(Duration::from_secs(120));
    let out = t.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("MARK-42"), "{out}");
    assert!(out.contains("--fail-on-error"), "{out}");
    let failed = st.wait_status(&id, "error").await;
    assert!(failed["resultant_image_id"].is_null(), "{failed}");
}

/// A session that accepts connections but where no login can work does not claim to wait for
/// its user: a jailed image without a shell ends in error saying a login fails, with sshd's
/// reason in the job's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_nobody_can_log_in_to_is_an_error() {
    let Some(st) = setup().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["boot", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), "kernel").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-9-amd64"), "initrd").unwrap();
    let image = ims(
        &st.s,
        &["images", "import", "shell-less", root.to_str().unwrap()],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"job_type": "customize", "artifact_id": image,
        "public_key_id": st.key, "image_root_archive_name": "never",
        "ssh_containers": [{"name": "customize", "jail": true}]});
    let id = st.s.post("/v3/jobs", &body).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    st.wait_status(&id, "error").await;
    let log = st.log(&id).await;
    assert!(
        log.contains("sshd accepts connections but a login fails"),
        "{log}"
    );
    assert!(!log.contains("status: waiting_on_user"), "{log}");
}
