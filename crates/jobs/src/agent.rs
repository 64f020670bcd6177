//! The frame every job pipeline runs in.
//!
//! * **Settings** come from the environment the executor sets: `IMS_URL`, `IMS_TOKEN` (the job
//!   token), `IMS_AGENT_DIR` (scratch space, removed by the executor afterwards), and optional
//!   agent settings (`IMS_AGENT_CA_CERT`, `IMS_AGENT_COMPRESSION`, `IMS_AGENT_KIWI`,
//!   `IMS_AGENT_KIWI_CACHE`, `IMS_AGENT_SIGNING_KEYS`, `IMS_AGENT_REPO_TIMEOUT`, …).
//! * **Heartbeat**: every few seconds `POST /v3/jobs/{id}/heartbeat` with the current phase. The
//!   answer carries the user's `complete`/`fail` request; a job that someone else ended (status
//!   `success`/`error`) or deleted (404) cancels the pipeline.
//! * **Log**: every line goes to stderr (the executor keeps it beside the job) and, in order, to
//!   the server (`POST /v3/jobs/{id}/log?seq=N`, retried until accepted; at most [`LOG_BUFFER`]
//!   bytes wait in memory while the server is unreachable).
//! * **Outcome**: a pipeline error is logged and the job set to `error`; SIGTERM (the executor
//!   stopping the job) cancels the pipeline, whose clean-up runs on the way out.

use ims_client::{Client, Resource};
use ims_core::Job;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Bytes of log kept in memory while the server does not take them.
pub const LOG_BUFFER: usize = 8 * 1024 * 1024;
/// Largest chunk sent at once.
const LOG_CHUNK: usize = 256 * 1024;
/// How long a create job waits for its repositories by default (the original's default).
pub const DEFAULT_REPO_TIMEOUT: Duration = Duration::from_secs(500);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// An agent that has not reached the server for this long stops (and cleans up): its server is
/// gone for good, or its job cannot be finished anyway (status, log and image all go through the
/// API). Long enough for a server upgrade or a node reboot; a restarted server takes live agents
/// over, or fails their jobs, on its own.
const ORPHANED_AFTER: Duration = Duration::from_secs(3600);

/// What the executor tells the agent.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: String,
    pub token: Option<String>,
    /// The job's scratch directory.
    pub dir: PathBuf,
    /// The site CA certificate to put into image roots.
    pub ca_cert: Option<PathBuf>,
    /// squashfs compression of packaged images.
    pub compression: ims_rootfs::Compression,
    /// Its level (`None`: create jobs [`crate::package::CREATE_ZSTD_LEVEL`] for zstd, else
    /// mksquashfs's default).
    pub compression_level: Option<u32>,
    /// The bucket new images go to.
    pub boot_images_bucket: String,
    /// The host name users and Ansible reach job SSH sessions at (`connection_info`).
    pub ssh_host: String,
    /// The address job sshd listens on.
    pub ssh_listen: std::net::IpAddr,
    /// Whether the agent has a private mount namespace (mounts are allowed only then).
    pub private_mounts: bool,
    /// The kiwi-ng program of create jobs.
    pub kiwi: PathBuf,
    /// kiwi's package cache shared by the host's builds (a build finding it busy uses its own).
    pub kiwi_cache: Option<PathBuf>,
    /// Keys given to kiwi as `--signing-key` (files, or directories of them); `None`: the Debian
    /// archive keyring for apt recipes, where installed.
    pub signing_keys: Option<Vec<PathBuf>>,
    /// How long a create job waits for the recipe's repositories.
    pub repo_timeout: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Settings, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let api_url = var("IMS_URL").ok_or("IMS_URL is not set")?;
        let dir = var("IMS_AGENT_DIR")
            .map(PathBuf::from)
            .ok_or("IMS_AGENT_DIR is not set")?;
        let compression = match var("IMS_AGENT_COMPRESSION") {
            Some(c) => c
                .parse()
                .map_err(|e: ims_rootfs::RootfsError| format!("IMS_AGENT_COMPRESSION: {e}"))?,
            None => ims_rootfs::Compression::default(),
        };
        let compression_level = match var("IMS_AGENT_COMPRESSION_LEVEL") {
            Some(l) => {
                let l: u32 = l
                    .parse()
                    .map_err(|e| format!("IMS_AGENT_COMPRESSION_LEVEL {l:?}: {e}"))?;
                compression
                    .check_level(l)
                    .map_err(|e| format!("IMS_AGENT_COMPRESSION_LEVEL: {e}"))?;
                Some(l)
            }
            None => None,
        };
        Ok(Settings {
            api_url,
            compression_level,
            token: var("IMS_TOKEN"),
            dir,
            ca_cert: var("IMS_AGENT_CA_CERT").map(PathBuf::from),
            compression,
            boot_images_bucket: var("IMS_AGENT_BOOT_IMAGES_BUCKET")
                .unwrap_or_else(|| "boot-images".to_string()),
            private_mounts: false,
            ssh_host: var("IMS_AGENT_SSH_HOST").unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".to_string())
            }),
            kiwi: var("IMS_AGENT_KIWI")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("kiwi-ng")),
            kiwi_cache: var("IMS_AGENT_KIWI_CACHE").map(PathBuf::from),
            signing_keys: var("IMS_AGENT_SIGNING_KEYS").map(|v| {
                v.split(':')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }),
            repo_timeout: match var("IMS_AGENT_REPO_TIMEOUT") {
                Some(t) => Duration::from_secs(
                    t.parse()
                        .map_err(|e| format!("IMS_AGENT_REPO_TIMEOUT {t:?} (seconds): {e}"))?,
                ),
                None => DEFAULT_REPO_TIMEOUT,
            },
            ssh_listen: match var("IMS_AGENT_SSH_LISTEN") {
                Some(a) => a
                    .parse()
                    .map_err(|e| format!("IMS_AGENT_SSH_LISTEN {a:?}: {e}"))?,
                None => std::net::IpAddr::from([0, 0, 0, 0]),
            },
        })
    }
}

/// Moves the process into a mount namespace of its own whose mounts do not propagate back, so
/// every mount the agent makes vanishes with it. Must run before any thread is started.
pub fn enter_private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: plain system calls with valid, NUL-terminated constant strings; called while the
    // process is single-threaded, as unshare(CLONE_NEWNS) requires.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The agent's log: lines to stderr and, in order, to the server.
#[derive(Clone)]
pub struct Log {
    buf: Arc<Mutex<LogBuf>>,
    wake: Arc<Notify>,
    /// One sender at a time: the background shipper and the final flush would otherwise send the
    /// same chunk and both remove it from the buffer.
    sending: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct LogBuf {
    pending: Vec<u8>,
    dropped: usize,
    /// Chunks sent (the next `seq`).
    seq: u64,
}

impl Log {
    fn new() -> Log {
        Log {
            buf: Arc::new(Mutex::new(LogBuf::default())),
            wake: Arc::new(Notify::new()),
            sending: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Logs one line (a trailing newline is added).
    pub fn line(&self, line: &str) {
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let text = format!("{stamp} {line}\n");
        eprint!("{text}");
        if let Ok(mut b) = self.buf.lock() {
            if b.pending.len() + text.len() > LOG_BUFFER {
                b.dropped += text.len();
            } else {
                b.pending.extend_from_slice(text.as_bytes());
            }
        }
        self.wake.notify_one();
    }

    /// Sends what is pending, in chunks, until all is accepted or `until` passes.
    async fn ship(&self, api: &Client, job: &str, until: Option<tokio::time::Instant>) {
        let _turn = self.sending.lock().await;
        loop {
            let (seq, chunk) = {
                let Ok(mut b) = self.buf.lock() else { return };
                if b.dropped > 0 {
                    let note = format!(
                        "[agent] {} bytes of log were dropped while the server did not take them\n",
                        b.dropped
                    );
                    b.dropped = 0;
                    let mut v = note.into_bytes();
                    v.append(&mut b.pending);
                    b.pending = v;
                }
                if b.pending.is_empty() {
                    return;
                }
                let n = b.pending.len().min(LOG_CHUNK);
                (b.seq, b.pending[..n].to_vec())
            };
            let n = chunk.len();
            match api.job_log_append(job, seq, chunk).await {
                Ok(_) => {
                    if let Ok(mut b) = self.buf.lock()
                        && b.seq == seq
                    {
                        let n = n.min(b.pending.len());
                        b.pending.drain(..n);
                        b.seq += 1;
                    }
                }
                Err(e) => {
                    eprintln!("[agent] cannot send the log ({e}); retrying");
                    if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                return;
            }
        }
    }
}

/// What a pipeline works with.
pub struct Agent {
    pub api: Client,
    pub settings: Settings,
    pub job: Job,
    pub log: Log,
    /// Cancelled when the job is deleted, ended by someone else, or the agent is told to stop.
    pub cancel: CancellationToken,
    /// The user's latest request (`complete` / `fail`), from the heartbeat.
    pub requests: watch::Receiver<Option<String>>,
    phase: watch::Sender<String>,
    ssh: watch::Sender<Option<serde_json::Value>>,
}

impl Agent {
    /// Logs a line.
    pub fn say(&self, line: &str) {
        self.log.line(line);
    }

    /// Sets the job's status (and the phase the heartbeat reports). Before a final status the
    /// log is sent, so whoever sees the job end finds the whole log.
    pub async fn status(&self, status: &str) -> Result<(), String> {
        self.say(&format!("status: {status}"));
        let _ = self.phase.send(status.to_string());
        if matches!(status, "success" | "error") {
            finish_log(&self.log, &self.api, &self.job.id).await;
        }
        self.api
            .update(
                Resource::Jobs,
                &self.job.id,
                Some(&serde_json::json!({ "status": status })),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot set the job's status to {status}: {e}"))
    }

    /// Records the image the job produced.
    pub async fn result(&self, image_id: &str) -> Result<(), String> {
        self.api
            .update(
                Resource::Jobs,
                &self.job.id,
                Some(&serde_json::json!({ "resultant_image_id": image_id })),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot record the resultant image: {e}"))
    }

    /// Describes what the pipeline is doing, for the heartbeat (without a status change).
    pub fn phase(&self, phase: &str) {
        let _ = self.phase.send(phase.to_string());
    }

    /// Reports the job's SSH endpoint (now, and with every later heartbeat): the server fills
    /// the job's `ssh_containers[0]` status and `connection_info` with it.
    pub async fn report_ssh(&self, host: &str, port: u16, status: &str) -> Result<(), String> {
        let ssh = serde_json::json!({"host": host, "port": port, "status": status});
        let _ = self.ssh.send(Some(ssh.clone()));
        let phase = self.phase.borrow().clone();
        self.api
            .job_heartbeat(
                &self.job.id,
                &serde_json::json!({"phase": phase, "ssh": ssh}),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot report the SSH endpoint: {e}"))
    }
}

/// Runs the job's pipeline; returns the process exit code.
pub async fn run(job_id: &str, settings: Settings) -> i32 {
    let api = match Client::new(&settings.api_url, settings.token.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ims agent: {e}");
            return 2;
        }
    };
    let log = Log::new();
    let cancel = CancellationToken::new();
    // The log goes out continuously.
    let shipper = {
        let (log, api, id, cancel) = (log.clone(), api.clone(), job_id.to_string(), cancel.clone());
        tokio::spawn(async move {
            loop {
                log.ship(&api, &id, None).await;
                tokio::select! {
                    _ = log.wake.notified() => {}
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                // Batch lines written together.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let job = match api.describe(Resource::Jobs, job_id).await {
        Ok(v) => match serde_json::from_value::<Job>(v) {
            Ok(j) => j,
            Err(e) => {
                log.line(&format!("error: the job record cannot be read: {e}"));
                finish_log(&log, &api, job_id).await;
                return 1;
            }
        },
        Err(e) => {
            eprintln!("ims agent: cannot read job {job_id}: {e}");
            return 1;
        }
    };
    let (phase_tx, phase_rx) = watch::channel("starting".to_string());
    let (req_tx, req_rx) = watch::channel(None);
    let (ssh_tx, ssh_rx) = watch::channel(None);
    let heartbeat = tokio::spawn(heartbeat(
        api.clone(),
        job_id.to_string(),
        phase_rx,
        ssh_rx,
        req_tx,
        cancel.clone(),
        log.clone(),
    ));
    // The executor stops a job with SIGTERM (then SIGKILL).
    {
        let cancel = cancel.clone();
        let log = log.clone();
        tokio::spawn(async move {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
                log.line("stopping: the agent was told to stop");
                cancel.cancel();
            }
        });
    }
    let agent = Agent {
        api: api.clone(),
        settings,
        job,
        log: log.clone(),
        cancel: cancel.clone(),
        requests: req_rx,
        phase: phase_tx,
        ssh: ssh_tx,
    };
    agent.say(&format!(
        "ims agent {} for {} job {} (image root archive name {:?})",
        env!("CARGO_PKG_VERSION"),
        agent.job.job_type,
        agent.job.id,
        agent.job.image_root_archive_name
    ));
    let outcome = match agent.job.job_type.as_str() {
        "customize" => crate::customize::run(&agent).await,
        "create" => crate::create::run(&agent).await,
        other => Err(format!("{other} jobs are not run by this agent version")),
    };
    let code = match outcome {
        Ok(()) => 0,
        Err(e) => {
            agent.say(&format!("error: {e}"));
            if (!cancel.is_cancelled() || !ended_elsewhere(&api, job_id).await)
                && let Err(e2) = agent.status("error").await
            {
                agent.say(&e2);
            }
            1
        }
    };
    heartbeat.abort();
    finish_log(&log, &api, job_id).await;
    shipper.abort();
    code
}

/// Whether the job was deleted or already ended by someone else.
async fn ended_elsewhere(api: &Client, id: &str) -> bool {
    match api.describe(Resource::Jobs, id).await {
        Err(e) => e.status() == Some(404),
        Ok(v) => matches!(
            v.get("status").and_then(|s| s.as_str()),
            Some("success" | "error")
        ),
    }
}

async fn finish_log(log: &Log, api: &Client, id: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    log.ship(api, id, Some(until)).await;
}

async fn heartbeat(
    api: Client,
    id: String,
    phase: watch::Receiver<String>,
    ssh: watch::Receiver<Option<serde_json::Value>>,
    requests: watch::Sender<Option<String>>,
    cancel: CancellationToken,
    log: Log,
) {
    let mut warned = false;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        let body =
            serde_json::json!({"phase": phase.borrow().clone(), "ssh": ssh.borrow().clone()});
        match api.job_heartbeat(&id, &body).await {
            Ok(v) => {
                warned = false;
                last_ok = tokio::time::Instant::now();
                let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("");
                if matches!(status, "success" | "error") && !cancel.is_cancelled() {
                    // Only this agent sets success, and only as its last step.
                    if status == "error" {
                        log.line("stopping: the job was set to error by someone else");
                        cancel.cancel();
                    }
                }
                let req = v
                    .get("request")
                    .and_then(|r| r.as_str())
                    .map(str::to_string);
                requests.send_if_modified(|cur| {
                    if *cur != req {
                        *cur = req.clone();
                        true
                    } else {
                        false
                    }
                });
            }
            Err(e) if e.status() == Some(404) => {
                log.line("stopping: the job was deleted");
                cancel.cancel();
                return;
            }
            Err(e) => {
                if !warned {
                    log.line(&format!("warning: heartbeat failed: {e}"));
                    warned = true;
                }
                if last_ok.elapsed() >= ORPHANED_AFTER && !cancel.is_cancelled() {
                    log.line(&format!(
                        "stopping: the server has not answered for {} s",
                        last_ok.elapsed().as_secs()
                    ));
                    cancel.cancel();
                }
            }
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// A server that takes log chunks (`POST …/log?seq=N`) slowly, keeping the first body of each
    /// `seq` (repeats are acknowledged, as the real server does).
    async fn log_server() -> (String, Arc<Mutex<BTreeMap<u64, Vec<u8>>>>) {
        let got = Arc::new(Mutex::new(BTreeMap::new()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let g = got.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let g = g.clone();
                tokio::spawn(async move {
                    let mut r = BufReader::new(s);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let seq: u64 = line
                            .split("seq=")
                            .nth(1)
                            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|v| v.parse().ok())
                            .unwrap();
                        let mut len = 0;
                        loop {
                            let mut h = String::new();
                            r.read_line(&mut h).await.unwrap();
                            if h == "\r\n" {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        g.lock().unwrap().entry(seq).or_insert(body);
                        let answer = format!("{{\"next\": {}}}", seq + 1);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        r.get_mut().write_all(resp.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (url, got)
    }

    /// The background shipper and the final flush run at once: every byte arrives once, in
    /// order, and nothing panics (two senders used to drain the same chunk twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_ship_each_chunk_once() {
        let (url, got) = log_server().await;
        let api = Client::new(&url, None).unwrap();
        let log = Log::new();
        let mut want = Vec::new();
        for i in 0..20_000 {
            log.line(&format!("line {i} {}", "x".repeat(40)));
        }
        {
            let b = log.buf.lock().unwrap();
            want.extend_from_slice(&b.pending);
        }
        let until = Some(tokio::time::Instant::now() + Duration::from_secs(60));
        let (a, b) = (log.clone(), log.clone());
        let (api2, api3) = (api.clone(), api.clone());
        let t1 = tokio::spawn(async move { a.ship(&api2, "j", until).await });
        let t2 = tokio::spawn(async move { b.ship(&api3, "j", until).await });
        t1.await.unwrap();
        t2.await.unwrap();
        let got = got.lock().unwrap();
        let seqs: Vec<u64> = got.keys().copied().collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        assert!(seqs.len() > 1, "the test needs several chunks");
        let all: Vec<u8> = got.values().flatten().copied().collect();
        assert_eq!(all.len(), want.len());
        assert!(all == want, "the log arrived altered");
        assert!(log.buf.lock().unwrap().pending.is_empty());
    }
}
