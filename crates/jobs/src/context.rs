//! What a job pipeline works with ([`JobContext`]): the job, the agent's settings, the API
//! client, the log, cancellation, and the calls that report to the server (status, result, SSH
//! endpoint).
//!
//! * **Log**: every line goes to stderr (the executor keeps it beside the job) and, in order, to
//!   the server (`POST /v3/jobs/{id}/log?seq=N`, retried until accepted; at most [`LOG_BUFFER`]
//!   bytes wait in memory while the server is unreachable).
//! * **Stopping is bounded** ([`Stop`]): from SIGTERM, or from the orphan guard (the server has
//!   not answered for [`Settings::orphan_timeout`]), the agent is gone within [`STOP_GRACE`]
//!   (inside the local executor's 10 s grace period) whatever it was doing: the pipeline gets the
//!   first part for its clean-up and is then dropped (which kills its sshd or kiwi and releases its
//!   mounts), the last log flush gets the rest; should even that hang, a watchdog thread kills the
//!   agent's process group. No wait is unbounded: one log sender at a time, but the lock is not
//!   held between attempts, waiting for it ends at the flush's deadline, and every request has a
//!   time limit.

use crate::agent::Settings;
use crate::error::{Context, Error, Result};
use ims_client::Client;
use ims_core::input::JobPatch;
use ims_core::job_wire::{Heartbeat, SshReport};
use ims_core::{Job, JobStatus, SshStatus, UserRequest};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Bytes of log kept in memory while the server does not take them.
pub const LOG_BUFFER: usize = 8 * 1024 * 1024;
/// Largest chunk sent at once.
const LOG_CHUNK: usize = 256 * 1024;
/// From a stop (SIGTERM, or the orphan guard) to the end of the process; the local executor sends
/// SIGKILL 10 s after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(8);
/// The end of [`STOP_GRACE`] kept for the last log flush (the pipeline's clean-up gets the rest).
pub(crate) const FLUSH_RESERVE: Duration = Duration::from_secs(2);
/// How long the last log flush tries when the agent is not being stopped.
const FINAL_FLUSH: Duration = Duration::from_secs(15);
/// The longest one heartbeat or log request may take (a server that stops answering without
/// closing its connections).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the server answers: since when it has not (the start of the first request that failed
/// after the last one answered), from the heartbeats and log requests.
#[derive(Clone, Default)]
pub(crate) struct Contact(Arc<Mutex<Option<tokio::time::Instant>>>);

impl Contact {
    pub(crate) fn answered(&self) {
        if let Ok(mut l) = self.0.lock() {
            *l = None;
        }
    }

    pub(crate) fn failed(&self, attempt: tokio::time::Instant) {
        if let Ok(mut l) = self.0.lock() {
            l.get_or_insert(attempt);
        }
    }

    pub(crate) fn lost_for(&self) -> Duration {
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
pub(crate) struct Stop {
    pub(crate) cancel: CancellationToken,
    begun: Arc<watch::Sender<Option<tokio::time::Instant>>>,
}

impl Stop {
    pub(crate) fn new() -> Stop {
        Stop {
            cancel: CancellationToken::new(),
            begun: Arc::new(watch::channel(None).0),
        }
    }

    /// Starts stopping (once; later calls only cancel again): logs `why`, cancels the pipeline
    /// and arms the watchdog that ends the process should the orderly way not be done in time.
    pub(crate) fn begin(&self, log: &Log, why: &str) {
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
    pub(crate) async fn passed(&self, after: Duration) {
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
        // libc, not rustix: a group led from outside this PID namespace reads as 0 here, which
        // rustix's Pid cannot hold.
        // SAFETY: getpgrp and getpid take no arguments and cannot fail.
        if unsafe { libc::getpgrp() == libc::getpid() } {
            let _ = rustix::process::kill_current_process_group(rustix::process::Signal::KILL);
        }
        // SAFETY: _exit has no memory preconditions; it ends the process without running
        // destructors or atexit handlers while other threads may hold locks.
        unsafe { libc::_exit(1) }
    });
}

/// The agent's log: lines to stderr and, in order, to the server.
#[derive(Clone)]
pub struct Log {
    buf: Arc<Mutex<LogBuf>>,
    pub(crate) wake: Arc<Notify>,
    /// One sender at a time: the background shipper and the final flush would otherwise send the
    /// same chunk and both remove it from the buffer. Held for one request only, never while
    /// waiting to retry.
    sending: Arc<tokio::sync::Mutex<()>>,
    pub(crate) contact: Contact,
}

#[derive(Default)]
struct LogBuf {
    pending: Vec<u8>,
    dropped: usize,
    /// Chunks sent (the next `seq`).
    seq: u64,
}

impl Log {
    pub(crate) fn new() -> Log {
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
    pub(crate) async fn ship(&self, api: &Client, job: &str, until: Option<tokio::time::Instant>) {
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

/// What a pipeline works with (made by [`crate::runner`], which also runs the heartbeat that
/// reports `phase` and the SSH endpoint and brings the user's requests).
pub struct JobContext {
    pub api: Client,
    pub settings: Settings,
    pub job: Job,
    pub log: Log,
    /// Cancelled when the job is deleted, ended by someone else, or the agent is told to stop.
    pub cancel: CancellationToken,
    pub(crate) stop: Stop,
    /// The user's latest request (`complete` / `fail`), from the heartbeat.
    pub requests: watch::Receiver<Option<UserRequest>>,
    pub(crate) phase: watch::Sender<String>,
    pub(crate) ssh: watch::Sender<Option<SshReport>>,
}

impl JobContext {
    /// Logs a line.
    pub fn say(&self, line: &str) {
        self.log.line(line);
    }

    /// An S3 context with fresh STS credentials for this job (confined to its source and new
    /// image).
    pub async fn s3(&self) -> Result<ims_client::s3::Ctx> {
        ims_client::s3::Ctx::with_client(&self.settings.api_url, self.api.clone())
            .await
            .map_err(Error::s3)
    }

    /// Downloads `bucket/key` to `dest`, hashing it in the same pass and saying how far it got in
    /// the job's log; its md5 and sha256. Stopping the job interrupts it.
    pub async fn download(
        &self,
        ctx: &ims_client::s3::Ctx,
        bucket: &str,
        key: &str,
        dest: &std::path::Path,
    ) -> Result<(String, String)> {
        let mut lines = ProgressLines::new(self.log.clone(), "downloading");
        ims_client::s3::download_hashed(ctx, bucket, key, dest, &self.cancel, &mut |d, t| {
            lines.report(d, t)
        })
        .await
        .map_err(|e| self.stopped_or(Error::s3(e)))
    }

    /// `e` as the stop ([`Error::stopped`]) when the job was stopped meanwhile: the error of a
    /// step that was given [`JobContext::cancel`] and tells being interrupted in its own words (an
    /// S3 transfer), or of a request about the job (refused once it has ended elsewhere).
    pub fn stopped_or(&self, e: Error) -> Error {
        if self.cancel.is_cancelled() {
            e.stopped()
        } else {
            e
        }
    }

    /// Sets the job's status (and the phase the heartbeat reports). Before a final status the
    /// log is sent, so whoever sees the job end finds the whole log.
    pub async fn status(&self, status: JobStatus) -> Result<()> {
        self.say(&format!("status: {status}"));
        let _ = self.phase.send(status.to_string());
        if status.is_final() {
            finish_log(&self.log, &self.api, &self.job.id, &self.stop).await;
        }
        let update = JobPatch {
            status: Some(status),
            ..JobPatch::default()
        };
        self.api
            .job_update(&self.job.id, &update)
            .await
            .map(|_| ())
            .with_context(|| format!("cannot set the job's status to {status}"))
            .map_err(|e| self.stopped_or(e))
    }

    /// Records the image the job produced.
    pub async fn result(&self, image_id: &str) -> Result<()> {
        let update = JobPatch {
            resultant_image_id: Some(image_id.to_string()),
            ..JobPatch::default()
        };
        self.api
            .job_update(&self.job.id, &update)
            .await
            .map(|_| ())
            .context("cannot record the resultant image")
            .map_err(|e| self.stopped_or(e))
    }

    /// Reports the session's endpoint (now, and with every later heartbeat): where it listens,
    /// its state and sshd's public host key (which clients pin instead of trusting on first
    /// use). The server fills the job's `ssh_containers[0]` status and `connection_info` with it.
    pub async fn report_ssh(
        &self,
        host: &str,
        port: u16,
        status: SshStatus,
        host_key: Option<&str>,
    ) -> Result<()> {
        let ssh = SshReport::new(host, port, status, host_key);
        let _ = self.ssh.send(Some(ssh.clone()));
        let beat = Heartbeat {
            phase: Some(self.phase.borrow().clone()),
            ssh: Some(ssh),
        };
        self.api
            .job_heartbeat(&self.job.id, &beat)
            .await
            .map(|_| ())
            .context("cannot report the SSH endpoint")
            .map_err(|e| self.stopped_or(e))
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

/// Sends the rest of the log: for [`FINAL_FLUSH`] at most, [`FLUSH_RESERVE`] while stopping, and
/// not past the end of a stop.
pub(crate) async fn finish_log(log: &Log, api: &Client, id: &str, stop: &Stop) {
    let stopping = stop.begun.borrow().is_some();
    let until = tokio::time::Instant::now() + if stopping { FLUSH_RESERVE } else { FINAL_FLUSH };
    tokio::select! {
        _ = log.ship(api, id, Some(until)) => {}
        _ = stop.passed(STOP_GRACE) => {}
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
