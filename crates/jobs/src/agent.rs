//! The frame every job pipeline runs in.
//!
//! * **Settings** come from the environment the executor sets ([`ims_core::agent_env`]): `IMS_URL`,
//!   `IMS_TOKEN` (the job token), `IMS_AGENT_DIR` (scratch space, removed by the executor
//!   afterwards), and the site's optional agent settings (`IMS_AGENT_*`).
//! * **Heartbeat**: every few seconds `POST /v3/jobs/{id}/heartbeat` with the current phase. The
//!   answer carries the user's `complete`/`fail` request and a fresh job token (tokens expire; the
//!   new one replaces the old in every clone of the agent's client); a job that someone else ended
//!   (status `success`/`error`) or deleted (404, or 401 once its token is void) cancels the
//!   pipeline.
//! * **Log**: every line goes to stderr (the executor keeps it beside the job) and, in order, to
//!   the server (`POST /v3/jobs/{id}/log?seq=N`, retried until accepted; at most [`LOG_BUFFER`]
//!   bytes wait in memory while the server is unreachable).
//! * **Outcome**: a pipeline error is logged and the job set to `error`; SIGTERM (the executor
//!   stopping the job) cancels the pipeline, whose clean-up runs on the way out.
//! * **Stopping is bounded**: from SIGTERM, or from the orphan guard (the server has not answered
//!   for [`Settings::orphan_timeout`]), the agent is gone within [`STOP_GRACE`] (inside the local
//!   executor's 10 s grace period) whatever it was doing: the pipeline gets the first part for its
//!   clean-up and is then dropped (which kills its sshd or kiwi and releases its mounts), the last
//!   log flush gets the rest; should even that hang, a watchdog thread kills the agent's process
//!   group. No wait is unbounded: one log sender at a time, but the lock is not held between
//!   attempts, waiting for it ends at the flush's deadline, and every request has a time limit.
//!   The orphan guard is a task of its own that lives as long as the process.

use ims_client::{Client, Resource};
use ims_core::Job;
use ims_core::agent_env::AgentEnv;
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
/// By default an agent that has not reached the server for this long stops (and cleans up): its
/// server is gone for good, or its job cannot be finished anyway (status, log and image all go
/// through the API). Long enough for a server upgrade or a node reboot; a restarted server takes
/// live agents over, or fails their jobs, on its own.
pub const DEFAULT_ORPHAN_TIMEOUT: Duration = Duration::from_secs(3600);
/// From a stop (SIGTERM, or the orphan guard) to the end of the process; the local executor sends
/// SIGKILL 10 s after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(8);
/// The end of [`STOP_GRACE`] kept for the last log flush (the pipeline's clean-up gets the rest).
const FLUSH_RESERVE: Duration = Duration::from_secs(2);
/// How long the last log flush tries when the agent is not being stopped.
const FINAL_FLUSH: Duration = Duration::from_secs(15);
/// The longest one heartbeat or log request may take (a server that stops answering without
/// closing its connections).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Ports sessions may listen on (`IMS_AGENT_SSH_PORTS`); `None`: any free port.
    pub ssh_ports: Option<crate::session::PortRange>,
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
    /// How long the agent runs on while the server does not answer.
    pub orphan_timeout: Duration,
}

impl Settings {
    /// The settings the executor put into the agent's environment ([`AgentEnv`]), with the
    /// agent's defaults for those it left out.
    pub fn from_env() -> Result<Settings, String> {
        let AgentEnv {
            api_url,
            token,
            dir,
            settings: s,
        } = AgentEnv::from_env().map_err(|e| e.to_string())?;
        Ok(Settings {
            api_url,
            token,
            dir,
            kiwi: s.kiwi_program(),
            ca_cert: s.ca_cert,
            compression: s.compression.unwrap_or_default(),
            compression_level: s.compression_level,
            boot_images_bucket: s
                .boot_images_bucket
                .unwrap_or_else(|| "boot-images".to_string()),
            private_mounts: false,
            ssh_host: s.ssh_host.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".to_string())
            }),
            kiwi_cache: s.kiwi_cache,
            signing_keys: s.signing_keys,
            repo_timeout: s.repo_timeout.unwrap_or(DEFAULT_REPO_TIMEOUT),
            orphan_timeout: s.orphan_timeout.unwrap_or(DEFAULT_ORPHAN_TIMEOUT),
            ssh_listen: s
                .ssh_listen
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
                .into(),
            ssh_ports: s.ssh_ports,
        })
    }
}

/// Moves the process into a mount namespace of its own whose mounts do not propagate back, so
/// every mount the agent makes vanishes with it. Must run before any thread is started.
pub fn enter_private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: rustix marks unshare unsafe for the flags that take file descriptors or memory
    // away (CLONE_FILES, CLONE_VM…); CLONE_NEWNS touches neither. Called while the process is
    // single-threaded, as unshare(CLONE_NEWNS) requires.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )?;
    Ok(())
}

/// Whether the server answers: since when it has not (the start of the first request that failed
/// after the last one answered), from the heartbeats and log requests.
#[derive(Clone, Default)]
struct Contact(Arc<Mutex<Option<tokio::time::Instant>>>);

impl Contact {
    fn answered(&self) {
        if let Ok(mut l) = self.0.lock() {
            *l = None;
        }
    }

    fn failed(&self, attempt: tokio::time::Instant) {
        if let Ok(mut l) = self.0.lock() {
            l.get_or_insert(attempt);
        }
    }

    fn lost_for(&self) -> Duration {
        self.0
            .lock()
            .ok()
            .and_then(|l| *l)
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}

/// Stopping the agent: [`Stop::begin`] cancels the pipeline and starts the clock of
/// [`STOP_GRACE`].
#[derive(Clone)]
struct Stop {
    cancel: CancellationToken,
    begun: Arc<watch::Sender<Option<tokio::time::Instant>>>,
}

impl Stop {
    fn new() -> Stop {
        Stop {
            cancel: CancellationToken::new(),
            begun: Arc::new(watch::channel(None).0),
        }
    }

    /// Starts stopping (once; later calls only cancel again): logs `why`, cancels the pipeline
    /// and arms the watchdog that ends the process should the orderly way not be done in time.
    fn begin(&self, log: &Log, why: &str) {
        let first = self.begun.send_if_modified(|b| {
            if b.is_none() {
                *b = Some(tokio::time::Instant::now());
                true
            } else {
                false
            }
        });
        if first {
            log.line(why);
            hard_stop_after(STOP_GRACE + Duration::from_secs(1));
        }
        self.cancel.cancel();
    }

    /// Resolves `after` the stop began (never if it does not).
    async fn passed(&self, after: Duration) {
        let mut rx = self.begun.subscribe();
        let at = match rx.wait_for(Option::is_some).await {
            Ok(v) => *v,
            Err(_) => None,
        };
        match at {
            Some(at) => tokio::time::sleep_until(at + after).await,
            None => std::future::pending().await,
        }
    }
}

/// The last resort of a stop: after `grace`, kill the agent's process group (the executor makes
/// the agent its leader; sshd, kiwi and mksquashfs go with it) or, run otherwise, the agent alone.
fn hard_stop_after(grace: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(grace);
        eprintln!(
            "[agent] still running {} s after being told to stop: killing it",
            grace.as_secs()
        );
        if rustix::process::getpgrp() == rustix::process::getpid() {
            let _ = rustix::process::kill_current_process_group(rustix::process::Signal::KILL);
        }
        // SAFETY: _exit has no memory preconditions; it ends the process without running
        // destructors or atexit handlers while other threads may hold locks.
        unsafe { libc::_exit(1) }
    });
}

/// Aborts a task when dropped (the heartbeat of a pipeline that is dropped on a stop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The agent's log: lines to stderr and, in order, to the server.
#[derive(Clone)]
pub struct Log {
    buf: Arc<Mutex<LogBuf>>,
    wake: Arc<Notify>,
    /// One sender at a time: the background shipper and the final flush would otherwise send the
    /// same chunk and both remove it from the buffer. Held for one request only, never while
    /// waiting to retry.
    sending: Arc<tokio::sync::Mutex<()>>,
    contact: Contact,
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
            contact: Contact::default(),
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

    /// Sends what is pending, in chunks, until all is accepted or `until` passes (no wait, for
    /// the other sender either, goes beyond it).
    async fn ship(&self, api: &Client, job: &str, until: Option<tokio::time::Instant>) {
        use tokio::time::{Instant, sleep_until, timeout_at};
        loop {
            let turn = match until {
                Some(u) => match timeout_at(u, self.sending.lock()).await {
                    Ok(t) => t,
                    Err(_) => return,
                },
                None => self.sending.lock().await,
            };
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
            let started = Instant::now();
            let limit = until.map_or(started + REQUEST_TIMEOUT, |u| {
                u.min(started + REQUEST_TIMEOUT)
            });
            let failed = match timeout_at(limit, api.job_log_append(job, seq, chunk)).await {
                Ok(Ok(_)) => {
                    self.contact.answered();
                    if let Ok(mut b) = self.buf.lock()
                        && b.seq == seq
                    {
                        let n = n.min(b.pending.len());
                        b.pending.drain(..n);
                        b.seq += 1;
                    }
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "no answer within {} s",
                    (limit - started).as_secs()
                )),
            };
            drop(turn);
            if let Some(e) = failed {
                self.contact.failed(started);
                eprintln!("[agent] cannot send the log ({e}); retrying");
                let retry = Instant::now() + Duration::from_secs(2);
                match until {
                    Some(u) if u <= retry => return,
                    _ => sleep_until(retry).await,
                }
            }
            if until.is_some_and(|u| Instant::now() >= u) {
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
    stop: Stop,
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
            finish_log(&self.log, &self.api, &self.job.id, &self.stop).await;
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
    /// Reports the session's endpoint: where it listens, its state and sshd's public host key
    /// (which clients pin instead of trusting on first use).
    pub async fn report_ssh(
        &self,
        host: &str,
        port: u16,
        status: &str,
        host_key: Option<&str>,
    ) -> Result<(), String> {
        let mut ssh = serde_json::json!({"host": host, "port": port, "status": status});
        if let Some(k) = host_key {
            ssh["host_key"] = k.trim().into();
        }
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

/// How far a long step (download, mksquashfs) got, in the job's log: after 2 s, then every 10 s.
pub struct ProgressLines {
    log: Log,
    what: &'static str,
    started: std::time::Instant,
    next: Duration,
}

impl ProgressLines {
    /// Lines `what: …` in `log`.
    pub fn new(log: Log, what: &'static str) -> ProgressLines {
        ProgressLines {
            log,
            what,
            started: std::time::Instant::now(),
            next: Duration::from_secs(2),
        }
    }

    /// Says `done` of `total` bytes (0: unknown) when a line is due.
    pub fn report(&mut self, done: u64, total: u64) {
        if let Some(t) = self.due() {
            self.log
                .line(&ProgressLines::line(self.what, done, total, t));
        }
    }

    /// The time since the start when a line is due now, else `None`.
    fn due(&mut self) -> Option<Duration> {
        let t = self.started.elapsed();
        (t >= self.next).then(|| {
            self.next = t + Duration::from_secs(10);
            t
        })
    }

    /// A line for `done` of `total` bytes (0: unknown) of `what` at `t`.
    fn line(what: &str, done: u64, total: u64, t: Duration) -> String {
        let mib = |b: u64| b as f64 / 1_048_576.0;
        if total > 0 {
            format!(
                "{what}: {:.1} of {:.1} MiB ({:.0} %, {:.0} s)",
                mib(done),
                mib(total),
                done as f64 * 100.0 / total as f64,
                t.as_secs_f64()
            )
        } else {
            format!("{what}: {:.1} MiB ({:.0} s)", mib(done), t.as_secs_f64())
        }
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
    let stop = Stop::new();
    // The executor stops a job with SIGTERM (then SIGKILL); so may an administrator.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            let (stop, log) = (stop.clone(), log.clone());
            tokio::spawn(async move {
                term.recv().await;
                stop.begin(&log, "stopping: the agent was told to stop");
            });
        }
        // SIGTERM keeps its default action: it ends the agent at once.
        Err(e) => eprintln!("ims agent: cannot handle SIGTERM: {e}"),
    }
    // The orphan guard runs until the process exits.
    tokio::spawn(orphan_guard(
        stop.clone(),
        log.clone(),
        settings.orphan_timeout,
    ));
    // The log goes out continuously.
    let shipper = {
        let (log, api, id, cancel) = (
            log.clone(),
            api.clone(),
            job_id.to_string(),
            stop.cancel.clone(),
        );
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
    let code = tokio::select! {
        code = pipeline(job_id, settings, &api, &log, &stop) => code,
        _ = stop.passed(STOP_GRACE - FLUSH_RESERVE) => {
            log.line(&format!(
                "stopping: the clean-up did not end within {} s; the agent ends without it",
                (STOP_GRACE - FLUSH_RESERVE).as_secs()
            ));
            1
        }
    };
    finish_log(&log, &api, job_id, &stop).await;
    shipper.abort();
    code
}

/// Reads the job and runs its pipeline; the exit code.
async fn pipeline(job_id: &str, settings: Settings, api: &Client, log: &Log, stop: &Stop) -> i32 {
    let job = match api.describe(Resource::Jobs, job_id).await {
        Ok(v) => match serde_json::from_value::<Job>(v) {
            Ok(j) => j,
            Err(e) => {
                log.line(&format!("error: the job record cannot be read: {e}"));
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
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
        api.clone(),
        job_id.to_string(),
        phase_rx,
        ssh_rx,
        req_tx,
        stop.cancel.clone(),
        log.clone(),
    )));
    let agent = Agent {
        api: api.clone(),
        settings,
        job,
        log: log.clone(),
        cancel: stop.cancel.clone(),
        stop: stop.clone(),
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
    let session = agent.job.job_type == "customize" || agent.job.enable_debug;
    let path = std::env::var("PATH").unwrap_or_default();
    let host = crate::prereq::check(&agent.job.job_type, session, &path, &agent.settings.kiwi);
    for w in &host.warnings {
        agent.say(&format!("warning: {w}"));
    }
    let outcome = match agent.job.job_type.as_str() {
        _ if !host.missing.is_empty() => Err(host.explain(&agent.job.job_type).unwrap_or_default()),
        "customize" => crate::customize::run(&agent).await,
        "create" => crate::create::run(&agent).await,
        other => Err(format!("{other} jobs are not run by this agent version")),
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            agent.say(&format!("error: {e}"));
            if (!agent.cancel.is_cancelled() || !ended_elsewhere(api, job_id).await)
                && let Err(e2) = agent.status("error").await
            {
                agent.say(&e2);
            }
            1
        }
    }
}

/// Stops the agent once the server has not answered for `after`.
async fn orphan_guard(stop: Stop, log: Log, after: Duration) {
    let every = (after / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::time::sleep(every).await;
        let lost = log.contact.lost_for();
        if lost >= after {
            stop.begin(
                &log,
                &format!(
                    "stopping: the server has not answered for {} s",
                    lost.as_secs()
                ),
            );
            return;
        }
    }
}

/// Whether the job was deleted or already ended by someone else.
async fn ended_elsewhere(api: &Client, id: &str) -> bool {
    match api.describe(Resource::Jobs, id).await {
        Err(e) => {
            e.status() == Some(404) || (e.status() == Some(401) && token_void(&e.to_string()))
        }
        Ok(v) => matches!(
            v.get("status").and_then(|s| s.as_str()),
            Some("success" | "error")
        ),
    }
}

/// Whether a 401 says the job's token is void because its job was deleted or has ended (the
/// server's words), rather than that the server does not know the token at all (a wiped or
/// replaced server, which may yet come back).
fn token_void(error: &str) -> bool {
    error.contains("its token is void")
}

/// Sends the rest of the log: for [`FINAL_FLUSH`] at most, [`FLUSH_RESERVE`] while stopping, and
/// not past the end of a stop.
async fn finish_log(log: &Log, api: &Client, id: &str, stop: &Stop) {
    let stopping = stop.begun.borrow().is_some();
    let until = tokio::time::Instant::now() + if stopping { FLUSH_RESERVE } else { FINAL_FLUSH };
    tokio::select! {
        _ = log.ship(api, id, Some(until)) => {}
        _ = stop.passed(STOP_GRACE) => {}
    }
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
    loop {
        let body =
            serde_json::json!({"phase": phase.borrow().clone(), "ssh": ssh.borrow().clone()});
        let started = tokio::time::Instant::now();
        let answer =
            match tokio::time::timeout(REQUEST_TIMEOUT, api.job_heartbeat(&id, &body)).await {
                Ok(a) => a.map_err(|e| (e.status(), e.to_string())),
                Err(_) => Err((
                    None,
                    format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                )),
            };
        // Any error counts: a wiped or replaced server refuses the job's token (401) too.
        match &answer {
            Ok(_) => log.contact.answered(),
            Err(_) => log.contact.failed(started),
        }
        match answer {
            Ok(v) => {
                warned = false;
                // Job tokens expire: every answer carries a fresh one while the job runs.
                if let Some(t) = v.get("token").and_then(|t| t.as_str()) {
                    api.set_token(t.to_string());
                }
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
            Err((Some(404), _)) => {
                log.line("stopping: the job was deleted");
                cancel.cancel();
                return;
            }
            Err((Some(401), e)) if token_void(&e) => {
                log.line(&format!("stopping: {e}"));
                cancel.cancel();
                return;
            }
            Err((_, e)) => {
                if !warned {
                    log.line(&format!("warning: heartbeat failed: {e}"));
                    warned = true;
                }
            }
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::ProgressLines;

    #[test]
    fn progress_lines_after_2_s_then_every_10_s() {
        let mut p = ProgressLines::new(super::Log::new(), "downloading");
        assert_eq!(p.due(), None, "not at once");
        p.started -= std::time::Duration::from_secs(3);
        let t = p.due().expect("after 2 s");
        assert!(t.as_secs() >= 3);
        assert_eq!(p.due(), None, "not again before 10 s more");
        p.started -= std::time::Duration::from_secs(10);
        assert!(p.due().is_some());
        assert_eq!(
            ProgressLines::line(
                "downloading",
                3 << 20,
                12 << 20,
                std::time::Duration::from_secs(4)
            ),
            "downloading: 3.0 of 12.0 MiB (25 %, 4 s)"
        );
        assert_eq!(
            ProgressLines::line(
                "mksquashfs: written",
                5 << 19,
                0,
                std::time::Duration::from_secs(12)
            ),
            "mksquashfs: written: 2.5 MiB (12 s)"
        );
    }

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

    /// A server that takes connections and never answers: a flush with a deadline returns at it,
    /// although the background sender holds the sending lock with its request in flight (the
    /// flush used to wait for the lock first, for as long as the other sender kept retrying).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_does_not_wait_past_its_deadline() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let mut open = vec![];
            while let Ok((s, _)) = l.accept().await {
                open.push(s);
            }
        });
        let api = Client::new(&url, None).unwrap();
        let log = Log::new();
        log.line("a line the server never takes");
        let background = {
            let (log, api) = (log.clone(), api.clone());
            tokio::spawn(async move { log.ship(&api, "j", None).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            log.sending.try_lock().is_err(),
            "the background sender is not sending"
        );
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        tokio::time::timeout(Duration::from_secs(10), log.ship(&api, "j", Some(until)))
            .await
            .expect("the flush waited past its deadline");
        assert!(!log.buf.lock().unwrap().pending.is_empty());
        background.abort();
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
