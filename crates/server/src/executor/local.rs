//! The `local` executor: each job's agent is `ims agent run <job-id>` (this very binary), a child
//! process of the server on the server's host.
//!
//! * The agent gets a clean environment: `PATH`, the API URL, its job token (which can act on its
//!   own job only) and its scratch directory `<jobs-dir>/<job-id>` (mode 0700), plus the agent
//!   settings of the server's configuration. Its stdout and stderr go to `agent.out` there (the
//!   agent ships its real log through the API).
//! * It runs in its own process group, so stopping a job signals the agent and everything it
//!   started (sshd, mksquashfs): SIGTERM, then SIGKILL after the grace period.
//! * A supervising task waits for it. An agent that exits while its job is unfinished ends the job
//!   in `error` with the reason in the job's log. The scratch directory is removed when the agent
//!   is gone.
//! * The agent's pid and start time are recorded (`JobRun`), so a restarted server recognises
//!   agents that still run (they are not its children any more: it polls them) and fails the jobs
//!   whose agents are gone.

use super::{ExecutorContext, ExecutorError, JobExecutor};
use async_trait::async_trait;
use ims_core::agent_env::{AGENT_PATH, AgentEnv, AgentSettings};
use ims_core::process::{Signal, failure_reason, same_process, signal_group, start_time};
use ims_core::{Arch, Job, JobRun, JobType};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the local executor needs to start agents.
#[derive(Clone)]
pub struct LocalSettings {
    /// The `ims` binary to run as `ims agent run <id>`.
    pub program: PathBuf,
    /// The API URL the agent talks to.
    pub api_url: String,
    /// Scratch space: one directory per job.
    pub jobs_dir: PathBuf,
    /// The site's agent settings (handed on in the agent's environment).
    pub agent: AgentSettings,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace: Duration,
    /// What this host lacks for a job (job type, its architecture if known, whether it opens an
    /// SSH session, the agent's `PATH`), in one line; `None` when nothing is missing. The agent's
    /// own declaration (`ims_jobs::prereq`), handed in by the binary.
    pub prerequisites: Option<Prerequisites>,
}

/// See [`LocalSettings::prerequisites`].
pub type Prerequisites =
    Arc<dyn Fn(JobType, Option<Arch>, bool, &str) -> Option<String> + Send + Sync>;

pub struct LocalExecutor {
    s: LocalSettings,
    host: String,
    /// Jobs being stopped on purpose: their agent's exit is not a failure.
    stopping: Mutex<HashSet<String>>,
    /// Agents started (or taken over) by this process: job id → pid.
    running: Mutex<HashMap<String, u32>>,
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

impl LocalExecutor {
    pub fn new(mut s: LocalSettings) -> std::io::Result<LocalExecutor> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // Agents run in their job directory: the paths they are given must not be relative.
        s.jobs_dir = std::path::absolute(&s.jobs_dir)?;
        s.program = std::path::absolute(&s.program)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&s.jobs_dir)?;
        std::fs::set_permissions(&s.jobs_dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(LocalExecutor {
            s,
            host: hostname(),
            stopping: Mutex::new(HashSet::new()),
            running: Mutex::new(HashMap::new()),
        })
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.s.jobs_dir.join(id)
    }

    fn remove_dir(&self, id: &str) {
        let dir = self.job_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(job = %id, dir = %dir.display(), error = %e, "could not remove the job directory")
            }
        }
    }

    /// The agent of `id` is gone (it exited, or a taken-over one vanished): fail the job if it
    /// did not finish, kill what the agent may have left in its group, remove its directory.
    async fn agent_gone(self: &Arc<Self>, cx: &ExecutorContext, id: &str, pid: u32, how: String) {
        self.running.lock().map(|mut r| r.remove(id)).ok();
        ims_core::process::kill_leftovers(pid);
        let stopping = self
            .stopping
            .lock()
            .map(|s| s.contains(id))
            .unwrap_or(false);
        if !stopping
            && let Ok(Some(job)) = cx.job(id).await
            && !job.status.is_final()
        {
            cx.fail(
                &job,
                &format!("the job agent {how} before the job finished"),
            )
            .await;
        }
        self.remove_dir(id);
    }

    /// Waits for a process that is not our child (taken over after a restart).
    fn watch(self: &Arc<Self>, cx: &ExecutorContext, id: String, pid: u32, started: Option<u64>) {
        let (me, cx) = (self.clone(), cx.clone());
        tokio::spawn(async move {
            while same_process(pid, started) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            me.agent_gone(&cx, &id, pid, "disappeared".to_string())
                .await;
        });
    }

    fn pid_of(&self, run: Option<&JobRun>, id: &str) -> Option<(u32, Option<u64>)> {
        if let Some(pid) = self.running.lock().ok().and_then(|r| r.get(id).copied()) {
            return Some((pid, run.and_then(|r| r.pid_start)));
        }
        let run = run?;
        (run.executor == "local" && run.host.as_deref() == Some(self.host.as_str()))
            .then_some(())
            .and(run.pid.map(|p| (p, run.pid_start)))
    }
}

/// The executor is shared by the supervising tasks, so it is used through an `Arc`.
pub struct Local(pub Arc<LocalExecutor>);

#[async_trait]
impl JobExecutor for Local {
    async fn start(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let me = &self.0;
        let id = job.id.clone();
        let dir = me.job_dir(&id);
        let fail = |what: &str, e: std::io::Error| ExecutorError(format!("{what}: {e}"));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| fail(&format!("cannot create {}", dir.display()), e))?;
        }
        let out = std::fs::File::create(dir.join("agent.out"))
            .map_err(|e| fail("cannot create the agent's output file", e))?;
        let err = out
            .try_clone()
            .map_err(|e| fail("cannot create the agent's output file", e))?;
        let mut cmd = tokio::process::Command::new(&me.s.program);
        cmd.arg("agent")
            .arg("run")
            .arg(&id)
            .env_clear()
            .env("PATH", AGENT_PATH)
            .envs(
                AgentEnv {
                    api_url: me.s.api_url.clone(),
                    token: Some(cx.job_token(&id)),
                    dir: dir.clone(),
                    settings: me.s.agent.clone(),
                }
                .to_env(),
            )
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| {
            me.remove_dir(&id);
            fail(
                &format!("cannot run {} agent run", me.s.program.display()),
                e,
            )
        })?;
        let Some(pid) = child.id() else {
            me.remove_dir(&id);
            return Err(ExecutorError("the agent exited at once".into()));
        };
        let started = start_time(pid);
        if let Ok(mut r) = me.running.lock() {
            r.insert(id.clone(), pid);
        }
        let host = me.host.clone();
        if let Err(e) = cx
            .update_run(job, |r| {
                r.executor = "local".into();
                r.host = Some(host.clone());
                r.pid = Some(pid);
                r.pid_start = started;
            })
            .await
        {
            signal_group(pid, Signal::KILL);
            let _ = child.wait().await;
            me.remove_dir(&id);
            return Err(ExecutorError(format!("cannot record the agent: {e}")));
        }
        tracing::info!(job = %id, pid, "job agent started");
        let (me, cx) = (me.clone(), cx.clone());
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(c), _) => format!("exited with status {c}"),
                    (None, Some(sig)) => format!("was killed by signal {sig}"),
                    _ => "exited".to_string(),
                },
                Err(e) => format!("could not be waited for ({e})"),
            };
            if how == "exited with status 0" {
                tracing::info!(job = %id, pid, "job agent {how}");
            } else {
                // Why, from the agent's own output (its job directory goes with it).
                match failure_reason(&me.job_dir(&id).join("agent.out")) {
                    Some(reason) => tracing::warn!(job = %id, pid, "job agent {how}: {reason}"),
                    None => tracing::warn!(job = %id, pid, "job agent {how}"),
                }
            }
            me.agent_gone(&cx, &id, pid, how).await;
        });
        Ok(())
    }

    async fn finished(&self, _cx: &ExecutorContext, _job: &Job) -> Result<(), ExecutorError> {
        // The agent sets `success`/`error` itself and then exits; a status set by someone else
        // reaches it through its heartbeat, and it stops.
        Ok(())
    }

    async fn stop(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let me = &self.0;
        let run = cx.run(&job.id).await?;
        let Some((pid, started)) = me.pid_of(run.as_ref(), &job.id) else {
            me.remove_dir(&job.id);
            return Ok(());
        };
        if let Ok(mut s) = me.stopping.lock() {
            s.insert(job.id.clone());
        }
        let grace = me.s.stop_grace;
        let result = match tokio::task::spawn_blocking(move || {
            ims_core::process::stop_group(pid, started, grace)
        })
        .await
        {
            Ok(Ok(_)) => {
                me.remove_dir(&job.id);
                Ok(())
            }
            Ok(Err(e)) => Err(ExecutorError(e.to_string())),
            Err(e) => Err(ExecutorError(format!("cannot stop the job agent: {e}"))),
        };
        if let Ok(mut s) = me.stopping.lock() {
            s.remove(&job.id);
        }
        result
    }

    async fn recover(&self, cx: &ExecutorContext) {
        let me = &self.0;
        let runs = match cx.runs().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the running jobs");
                return;
            }
        };
        for run in runs {
            if run.executor != "local" || run.host.as_deref() != Some(me.host.as_str()) {
                continue;
            }
            let job = match cx.job(&run.id).await {
                Ok(Some(j)) => j,
                _ => continue,
            };
            if job.status.is_final() {
                continue;
            }
            match run.pid {
                Some(pid) if same_process(pid, run.pid_start) => {
                    tracing::info!(job = %run.id, pid, "taking over a running job agent");
                    if let Ok(mut r) = me.running.lock() {
                        r.insert(run.id.clone(), pid);
                    }
                    me.watch(cx, run.id.clone(), pid, run.pid_start);
                }
                _ => {
                    cx.fail(
                        &job,
                        "the job agent was not running any more when the server started",
                    )
                    .await;
                    me.remove_dir(&run.id);
                }
            }
        }
    }

    fn supervises(&self) -> bool {
        true
    }

    async fn cannot_run(
        &self,
        _cx: &ExecutorContext,
        job_type: JobType,
        arch: Option<Arch>,
        session: bool,
    ) -> Option<String> {
        let check = self.0.s.prerequisites.as_ref()?;
        check(job_type, arch, session, AGENT_PATH)
    }

    fn name(&self) -> &'static str {
        "local"
    }
}
