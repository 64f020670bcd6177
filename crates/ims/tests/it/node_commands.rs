//! The node side of remote build nodes: `ims agent node-probe|node-run|node-stop` run as the
//! server's remote executor runs them over SSH (as root, a base directory of their own), with a
//! real agent: one whose API never answers, so it stays alive until it is stopped.

use crate::common::ims_bin;
use crate::common::jobs::is_root;
use ims_core::agent_env::AGENT_PATH;
use ims_core::node_wire::{AgentPid, NodeJob, NodeProbe, NodeStopReport, NodeStopped};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "ims-job.node-test-secret.4102444800.0123456789abcdef";

/// What a node command did.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `ims agent ARGS` with `stdin`, as the SSH session would (stdout and stderr are pipes that
/// must reach end of file for the command to count as done).
fn node(args: &[&str], stdin: &[u8]) -> Out {
    let t = Instant::now();
    let mut child = Command::new(ims_bin())
        .arg("agent")
        .args(args)
        .env("IMS_TOKEN", "not-for-the-agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses before reading may have closed stdin already.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    // Done means its stdout and stderr closed: a command whose agent keeps them open would never
    // let the SSH session end.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let o = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the command's stdout and stderr stay open")
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
        took: t.elapsed(),
    }
}

impl Out {
    /// The one JSON line of a success.
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        assert_eq!(self.stderr, "", "nothing on stderr");
        let line = self.stdout.strip_suffix('\n').expect("one line");
        assert!(!line.contains('\n'), "one line: {:?}", self.stdout);
        serde_json::from_str(line).unwrap()
    }

    /// A failure: its status, nothing on stdout, one `ims agent: ` line on stderr holding `want`.
    fn refused(&self, code: i32, want: &str) {
        assert_eq!(self.code, code, "{} / {}", self.stdout, self.stderr);
        assert_eq!(self.stdout, "", "nothing on stdout");
        let line = self.stderr.strip_suffix('\n').expect("one line");
        assert!(
            line.starts_with("ims agent: ") && !line.contains('\n') && line.contains(want),
            "{want}: {:?}",
            self.stderr
        );
    }
}

/// An API that accepts connections and never answers: an agent talking to it stays alive.
fn silent_api() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = vec![];
        for s in l.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
    url
}

fn run_input(url: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"env": {
        "IMS_URL": url,
        "IMS_TOKEN": TOKEN,
        "IMS_AGENT_ORPHAN_TIMEOUT": "600",
    }}))
    .unwrap()
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 first).
fn stat_fields(pid: u32) -> Vec<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..]
        .split(' ')
        .map(str::to_string)
        .collect()
}

/// Every regular file under `dir` (links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

fn wait_gone(pid: u32, start: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ims_core::process::same_process(pid, Some(start)) {
        assert!(Instant::now() < deadline, "agent {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// node-run starts a real agent that outlives it in a session of its own, with only the
/// environment it was given (the token nowhere else); probe lists it; a second node-run of the
/// id refuses; node-stop stops it, unmounts a bind mount left in its directory, removes the
/// directory without following a link out of it, and is idempotent.
#[test]
fn an_agent_is_started_listed_and_stopped() {
    if !is_root() {
        eprintln!("skipped: the node commands run as root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("node");
    let b = base.to_str().unwrap();
    let id = "6f1c2a3b-0d4e-4f5a-8b6c-7d8e9fa0b1c2";
    // A missing base: nothing there.
    let p: NodeProbe = node(&["node-probe", "--base", b], b"").json();
    assert_eq!(p.jobs, []);
    assert_eq!(p.arch, std::env::consts::ARCH);
    assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
    assert!(p.cores >= 1 && p.memory_bytes > 1 << 20, "{p:?}");

    let url = silent_api();
    let o = node(&["node-run", "--base", b, id], &run_input(&url));
    let agent: AgentPid = o.json();
    assert!(
        o.took < Duration::from_secs(5),
        "node-run returned only after {:?}: the agent holds its stdout or stderr",
        o.took
    );
    let dir = std::fs::canonicalize(&base).unwrap().join("jobs").join(id);
    let _cleanup = StopOnDrop(b.to_string(), id.to_string());
    assert!(ims_core::process::same_process(
        agent.pid,
        Some(agent.start)
    ));
    // Its own session and process group, not the caller's.
    let f = stat_fields(agent.pid);
    let (pgrp, session): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    assert_eq!((pgrp, session), (agent.pid, agent.pid));
    // Read from /proc, not getsid(2): under a CI runner the caller's session can be 0 (its
    // leader lives outside this PID namespace), which rustix's getsid cannot represent.
    let mine: u32 = stat_fields(std::process::id())[3].parse().unwrap();
    assert_ne!(session, mine);
    assert_eq!(f[19].parse::<u64>().unwrap(), agent.start);
    // The pid file says the same.
    let recorded: AgentPid =
        serde_json::from_slice(&std::fs::read(dir.join("agent.pid")).unwrap()).unwrap();
    assert_eq!(recorded, agent);
    // The agent: this binary, `agent run ID`, in its directory, with only what it was given.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid)).unwrap();
    let args: Vec<&[u8]> = cmdline
        .split(|c| *c == 0)
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(&args[1..], [&b"agent"[..], b"run", id.as_bytes()]);
    assert_eq!(
        Path::new(std::ffi::OsStr::from_bytes(args[0])),
        std::fs::canonicalize(ims_bin()).unwrap(),
        "ps shows the binary's path"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", agent.pid)).unwrap(),
        dir
    );
    let environ = std::fs::read(format!("/proc/{}/environ", agent.pid)).unwrap();
    let mut env: Vec<String> = environ
        .split(|c| *c == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    env.sort();
    let mut want = vec![
        format!("IMS_AGENT_DIR={}", dir.display()),
        "IMS_AGENT_ORPHAN_TIMEOUT=600".to_string(),
        format!("IMS_TOKEN={TOKEN}"),
        format!("IMS_URL={url}"),
        format!("PATH={AGENT_PATH}"),
    ];
    want.sort();
    assert_eq!(env, want);
    // The token is in no argument and no file.
    assert!(!String::from_utf8_lossy(&cmdline).contains(TOKEN));
    let files = files_under(&base);
    assert!(files.iter().any(|f| f.ends_with("agent.out")), "{files:?}");
    for f in files {
        let data = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&data).contains("node-test-secret"),
            "{} holds the token",
            f.display()
        );
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Listed as running.
    let p: NodeProbe = node(&["node-probe", "--base", b], b"").json();
    assert_eq!(
        p.jobs,
        [NodeJob {
            id: id.into(),
            running: true
        }]
    );
    // The same id again is refused, and the agent keeps its directory.
    node(&["node-run", "--base", b, id], &run_input(&url)).refused(1, "job directory exists");
    assert!(ims_core::process::same_process(
        agent.pid,
        Some(agent.start)
    ));
    assert!(dir.join("agent.pid").exists());

    // Leftovers an agent killed mid-job could leave: a bind mount in its directory, and a link
    // pointing out of it.
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "x").unwrap();
    std::fs::create_dir(dir.join("mnt")).unwrap();
    let status = Command::new("mount")
        .args(["--bind"])
        .arg(&outside)
        .arg(dir.join("mnt"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(mounted_under(&dir).len(), 1);
    std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

    let o = node(&["node-stop", "--base", b, "--grace", "2", id], b"");
    let r: NodeStopReport = o.json();
    assert_eq!(
        r.stopped,
        [NodeStopped {
            id: id.into(),
            was_running: true,
            removed: true
        }]
    );
    wait_gone(agent.pid, agent.start);
    assert!(!dir.exists());
    assert_eq!(mounted_under(&dir), Vec::<String>::new());
    assert_eq!(std::fs::read_to_string(outside.join("keep")).unwrap(), "x");
    // Idempotent.
    let r: NodeStopReport = node(&["node-stop", "--base", b, id], b"").json();
    assert_eq!(
        r.stopped,
        [NodeStopped {
            id: id.into(),
            was_running: false,
            removed: false
        }]
    );
    let p: NodeProbe = node(&["node-probe", "--base", b], b"").json();
    assert_eq!(p.jobs, []);
}

/// Stops the test's agent if the test fails half-way.
struct StopOnDrop(String, String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = node(
            &["node-stop", "--base", &self.0, "--grace", "0", &self.1],
            b"",
        );
    }
}

/// Bad job ids and bad input are refused before anything is made; an agent that ends at once is
/// a failure with its reason, and leaves nothing; node-stop removes a leftover directory with no
/// agent, several ids at once.
#[test]
fn bad_input_and_failed_agents_leave_nothing() {
    if !is_root() {
        eprintln!("skipped: the node commands run as root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("node");
    let b = base.to_str().unwrap();
    let id = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let ok = run_input("http://127.0.0.1:1");
    for bad in ["../x", "-rf", "x/../../etc", ""] {
        node(&["node-run", "--base", b, bad], &ok).refused(2, "bad job id");
        node(&["node-stop", "--base", b, id, bad], b"").refused(2, "bad job id");
    }
    let env = |k: &str| {
        let mut env = serde_json::Map::new();
        env.insert("IMS_URL".into(), "http://x".into());
        env.insert(k.into(), "1".into());
        serde_json::to_vec(&serde_json::json!({ "env": env })).unwrap()
    };
    node(&["node-run", "--base", b, id], &env("LD_PRELOAD")).refused(2, "unknown variable");
    node(&["node-run", "--base", b, id], &env("IMS_AGENT_DIR")).refused(2, "set by node-run");
    node(&["node-run", "--base", b, id], b"IMS_URL=http://x").refused(2, "the input is not");
    assert!(!base.exists(), "nothing made");

    // The agent ends at once: its reason, and nothing left.
    let bad_url = serde_json::to_vec(&serde_json::json!({"env": {
        "IMS_URL": "not a url", "IMS_TOKEN": TOKEN,
    }}))
    .unwrap();
    node(&["node-run", "--base", b, id], &bad_url).refused(
        1,
        "the agent ended at once (exit status: 2): ims agent: invalid server URL",
    );
    assert_eq!(std::fs::read_dir(base.join("jobs")).unwrap().count(), 0);

    // Leftovers without an agent (a dead one's pid file; no pid file at all), and an absent id.
    let jobs = base.join("jobs");
    let other = "11111111-2222-4333-8444-555555555555";
    let absent = "99999999-2222-4333-8444-555555555555";
    std::fs::create_dir_all(jobs.join(id).join("a/b")).unwrap();
    // pid 1 with a start time that is not its own: a recycled pid, which must not be signalled.
    let init = ims_core::process::start_time(1).unwrap();
    std::fs::write(
        jobs.join(id).join("agent.pid"),
        format!(r#"{{"pid":1,"start":{}}}"#, init + 1),
    )
    .unwrap();
    std::fs::create_dir(jobs.join(other)).unwrap();
    // A job directory that is itself a mount point, and a job "directory" that is a link out.
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "x").unwrap();
    let mounted = "22222222-2222-4333-8444-555555555555";
    let linked = "33333333-2222-4333-8444-555555555555";
    std::fs::create_dir(jobs.join(mounted)).unwrap();
    let status = Command::new("mount")
        .arg("--bind")
        .arg(&outside)
        .arg(jobs.join(mounted))
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::fs::symlink(&outside, jobs.join(linked)).unwrap();
    let p: NodeProbe = node(&["node-probe", "--base", b], b"").json();
    let listed: Vec<&str> = p.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, [id, other, mounted], "the link is no job directory");
    let r: NodeStopReport = node(
        &["node-stop", "--base", b, id, other, absent, mounted, linked],
        b"",
    )
    .json();
    let entry = |id: &str, removed| NodeStopped {
        id: id.into(),
        was_running: false,
        removed,
    };
    assert_eq!(
        r.stopped,
        [
            entry(id, true),
            entry(other, true),
            entry(absent, false),
            entry(mounted, true),
            entry(linked, true)
        ]
    );
    assert_eq!(std::fs::read_dir(&jobs).unwrap().count(), 0);
    assert_eq!(mounted_under(&jobs), Vec::<String>::new());
    assert_eq!(std::fs::read_to_string(outside.join("keep")).unwrap(), "x");
    assert_eq!(ims_core::process::start_time(1), Some(init));
}

/// A whole customize job run through node-run against a real server: the agent, given only its
/// environment on stdin, reads its job with its token, fetches the image through STS, opens the
/// session (a login works), and node-stop ends it: the job is `error` with the stop in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_through_node_run_against_a_real_server() {
    use crate::common::jobs::{ims, job_keys, ssh_as_root};
    use crate::common::{Db, builder, job_token};
    use serde_json::json;
    if !is_root() {
        eprintln!("skipped: the node commands run as root");
        return;
    }
    const KEY_HEX: &str = "101112131415161718191a1b1c1d1e1f000102030405060708090a0b0c0d0e0f";
    let t = tempfile::tempdir().unwrap();
    let key_file = t.path().join("job.key");
    std::fs::write(&key_file, KEY_HEX).unwrap();
    // No executor of its own: the job's agent is the one node-run starts.
    let s = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_TOKEN_KEY_FILE", key_file.to_str().unwrap())
        .start()
        .await;
    let root = t.path().join("root");
    for d in ["boot", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), "kernel 9").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-9-amd64"), "initrd 9").unwrap();
    std::fs::write(root.join("etc/motd"), "original\n").unwrap();
    let image = ims(&s, &["images", "import", "base", root.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = job_keys(&s, t.path(), &["id_job"]).await;
    let job = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "customize", "artifact_id": image, "public_key_id": key,
                    "image_root_archive_name": "on-a-node",
                    "ssh_containers": [{"name": "customize", "jail": false}]}),
        )
        .await
        .ok(201);
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "creating");

    let base = t.path().join("node");
    let b = base.to_str().unwrap().to_string();
    let input = serde_json::to_vec(&json!({"env": {
        "IMS_URL": s.url,
        "IMS_TOKEN": job_token(KEY_HEX, &id),
        "IMS_AGENT_ORPHAN_TIMEOUT": "300",
    }}))
    .unwrap();
    let agent: AgentPid = node(&["node-run", "--base", &b, &id], &input).json();
    let _cleanup = StopOnDrop(b.clone(), id.clone());
    let j = wait(&s, &id, "waiting_on_user").await;
    let info = &j["ssh_containers"][0]["connection_info"]["cluster.local"];
    let port = info["port"].as_u64().unwrap().to_string();
    let o = ssh_as_root(&port, &t.path().join("id_job"), "echo logged-in");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "logged-in");
    let p: NodeProbe = node(&["node-probe", "--base", &b], b"").json();
    assert_eq!(
        p.jobs,
        [NodeJob {
            id: id.clone(),
            running: true
        }]
    );

    let b2 = b.clone();
    let id2 = id.clone();
    let r: NodeStopReport = tokio::task::spawn_blocking(move || {
        node(&["node-stop", "--base", &b2, "--grace", "20", &id2], b"")
    })
    .await
    .unwrap()
    .json();
    assert_eq!(
        r.stopped,
        [NodeStopped {
            id: id.clone(),
            was_running: true,
            removed: true
        }]
    );
    wait_gone(agent.pid, agent.start);
    wait(&s, &id, "error").await;
    let text = log(&s, &id).await;
    assert!(text.contains("the agent was told to stop"), "{text}");
    assert!(!base.join("jobs").join(&id).exists());
}

async fn log(s: &crate::common::Server, id: &str) -> String {
    crate::common::jobs::job_log(s, id).await
}

/// Waits for job `id` to reach status `want` (an `error` on the way fails, with the log).
async fn wait(s: &crate::common::Server, id: &str, want: &str) -> serde_json::Value {
    crate::common::jobs::wait_for_status(s, id, want, Duration::from_secs(90)).await
}
