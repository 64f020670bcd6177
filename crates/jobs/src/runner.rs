//! The process frame every job pipeline runs in (`ims agent run <job-id>`).
//!
//! * **Heartbeat**: every few seconds `POST /v3/jobs/{id}/heartbeat` with the current phase. The
//!   answer carries the user's `complete`/`fail` request and a fresh job token (tokens expire; the
//!   new one replaces the old in every clone of the agent's client); a job that someone else ended
//!   (status `success`/`error`) or deleted (404, or 401 once its token is void) cancels the
//!   pipeline.
//! * **Log**: shipped continuously by a background task and flushed at the end
//!   ([`crate::context::Log`]).
//! * **Outcome**: a pipeline error is logged and the job set to `error`, unless the error is the
//!   stop ([`crate::error::Error::is_cancelled`]) of a job that has ended elsewhere; SIGTERM (the
//!   executor stopping the job) cancels the pipeline, whose clean-up runs on the way out, within
//!   [`STOP_GRACE`]. The orphan guard is a task of its own that lives as long as the process.

use crate::agent::Settings;
use crate::context::{
    FLUSH_RESERVE, JobContext, Log, REQUEST_TIMEOUT, STOP_GRACE, Stop, finish_log,
};
use crate::error::Error;
use ims_client::{Client, Resource};
use ims_core::job_wire::{Heartbeat, SshReport};
use ims_core::{Job, JobStatus, JobType, UserRequest};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Aborts a task when dropped (the heartbeat of a pipeline that is dropped on a stop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    let job = match api.describe_as::<Job>(Resource::Jobs, job_id).await {
        Ok(j) => j,
        Err(ims_client::Error::Decode { source, .. }) => {
            log.line(&format!("error: the job record cannot be read: {source}"));
            return 1;
        }
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
    let agent = JobContext {
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
    let job_type = agent.job.job_type;
    let session = job_type == JobType::Customize || agent.job.enable_debug;
    let path = std::env::var("PATH").unwrap_or_default();
    // Emulation of another architecture is the server's decision (it refuses such jobs unless
    // IMS_JOB_EMULATE_AARCH64 is on): here only whether this host can do it.
    let host = crate::prereq::check(
        job_type,
        Some(agent.job.arch),
        true,
        session,
        &path,
        &agent.settings.kiwi,
    );
    for w in &host.warnings {
        agent.say(&format!("warning: {w}"));
    }
    let outcome = match job_type {
        _ if !host.missing.is_empty() => {
            Err(Error::Failed(host.explain(job_type).unwrap_or_default()))
        }
        JobType::Customize => crate::customize::run(&agent).await,
        JobType::Create => crate::create::run(&agent).await,
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            agent.say(&format!("error: {e}"));
            // A stopped job that has ended elsewhere (deleted, or set to error by someone else)
            // keeps the status it has.
            if (!e.is_cancelled() || !ended_elsewhere(api, job_id).await)
                && let Err(e2) = agent.status(JobStatus::Error).await
            {
                agent.say(&e2.to_string());
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
    match api.describe_as::<Job>(Resource::Jobs, id).await {
        Err(e) => {
            e.status() == Some(404) || (e.status() == Some(401) && token_void(&e.to_string()))
        }
        Ok(job) => job.status.is_final(),
    }
}

/// Whether a 401 says the job's token is void because its job was deleted or has ended (the
/// server's words), rather than that the server does not know the token at all (a wiped or
/// replaced server, which may yet come back).
fn token_void(error: &str) -> bool {
    error.contains("its token is void")
}

async fn heartbeat(
    api: Client,
    id: String,
    phase: watch::Receiver<String>,
    ssh: watch::Receiver<Option<SshReport>>,
    requests: watch::Sender<Option<UserRequest>>,
    cancel: CancellationToken,
    log: Log,
) {
    let mut warned = false;
    loop {
        let body = Heartbeat {
            phase: Some(phase.borrow().clone()),
            ssh: ssh.borrow().clone(),
        };
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
            Ok(answer) => {
                warned = false;
                // Job tokens expire: every answer carries a fresh one while the job runs.
                if let Some(t) = answer.token {
                    api.set_token(t);
                }
                // Only this agent sets success, and only as its last step.
                if answer.status == JobStatus::Error && !cancel.is_cancelled() {
                    log.line("stopping: the job was set to error by someone else");
                    cancel.cancel();
                }
                let req = answer.request;
                requests.send_if_modified(|cur| {
                    if *cur != req {
                        *cur = req;
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
