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
//! * Only the server that started an agent can signal it. With several replicas, the job may be
//!   ended or deleted through another one (the reconciler runs in the leading replica only), whose
//!   `stop` finds no agent of its own: so every server checks its own agents every
//!   [`TIDY_EVERY`] (from `recover` on) and stops those whose job is gone, or ended more than
//!   [`FINAL_GRACE_SECS`] ago (a live agent stops by itself on its next heartbeat; this catches a
//!   hung one).

use super::{ExecutorContext, ExecutorError, JobExecutor};
use async_trait::async_trait;
use ims_core::agent_env::{AGENT_PATH, AgentEnv, AgentSettings};
use ims_core::process::{Signal, failure_reason, same_process, signal_group, start_time};
use ims_core::{Arch, Job, JobRun, JobType, Timestamp};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a server checks that the agents it supervises still have a job to run.
pub const TIDY_EVERY: Duration = Duration::from_secs(10);
/// An agent whose job has ended gets this long to ship its last log lines and exit by itself.
pub const FINAL_GRACE_SECS: i64 = 20;

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
    /// The check of this process's agents ([`LocalExecutor::tidy`]) runs.
    tidying: AtomicBool,
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
            tidying: AtomicBool::new(false),
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

    /// Stops the agent of job `id` if this process runs it (SIGTERM to its group, SIGKILL after
    /// the grace period) and removes its directory.
    async fn stop_agent(&self, cx: &ExecutorContext, id: &str) -> Result<(), ExecutorError> {
        let run = cx.run(id).await?;
        let Some((pid, started)) = self.pid_of(run.as_ref(), id) else {
            self.remove_dir(id);
            return Ok(());
        };
        if let Ok(mut s) = self.stopping.lock() {
            s.insert(id.to_string());
        }
        let grace = self.s.stop_grace;
        let result = match tokio::task::spawn_blocking(move || {
            ims_core::process::stop_group(pid, started, grace)
        })
        .await
        {
            Ok(Ok(_)) => {
                self.remove_dir(id);
                Ok(())
            }
            Ok(Err(e)) => Err(ExecutorError(e.to_string())),
            Err(e) => Err(ExecutorError(format!("cannot stop the job agent: {e}"))),
        };
        if let Ok(mut s) = self.stopping.lock() {
            s.remove(id);
        }
        result
    }

    /// Stops this process's agents whose job is gone or ended more than [`FINAL_GRACE_SECS`] ago
    /// (ended or deleted through another replica, which cannot signal them).
    async fn tidy(&self, cx: &ExecutorContext) {
        let ids: Vec<String> = self
            .running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            let leftover = match cx.job(&id).await {
                Ok(None) => true,
                Ok(Some(job)) if job.status.is_final() => {
                    let ended = cx.run(&id).await.ok().flatten().and_then(|r| r.ended);
                    ended.is_none_or(|t| {
                        (Timestamp::now().0 - t.0).num_seconds() >= FINAL_GRACE_SECS
                    })
                }
                // Running, or unknown now (the store does not answer): left alone.
                _ => false,
            };
            if leftover {
                tracing::warn!(job = %id, "stopping a job agent whose job has ended or is gone");
                if let Err(e) = self.stop_agent(cx, &id).await {
                    tracing::warn!(job = %id, error = %e, "cannot stop the job agent");
                }
            }
        }
    }

    /// Runs [`LocalExecutor::tidy`] every [`TIDY_EVERY`] from now on (once per executor).
    fn spawn_tidy(self: &Arc<Self>, cx: &ExecutorContext) {
        if self.tidying.swap(true, Ordering::SeqCst) {
            return;
        }
        let (me, cx) = (self.clone(), cx.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TIDY_EVERY).await;
                me.tidy(&cx).await;
            }
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
        // Only an agent of this process can be signalled; one in another replica is stopped by
        // that replica's check of its own agents.
        self.0.stop_agent(cx, &job.id).await
    }

    async fn recover(&self, cx: &ExecutorContext) {
        let me = &self.0;
        me.spawn_tidy(cx);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceConfig;
    use crate::executor::{JobRuns, Reserved};
    use ims_core::{JobStatus, NodeSlot, RemoteBuildNode};

    /// The records as the executor sees them, in memory.
    #[derive(Default)]
    struct Fake {
        jobs: Mutex<HashMap<String, Job>>,
        runs: Mutex<HashMap<String, JobRun>>,
        failed: Mutex<Vec<String>>,
        cfg: ServiceConfig,
    }

    fn no(what: &str) -> ExecutorError {
        ExecutorError(format!("{what}: not in this test"))
    }

    #[async_trait]
    impl JobRuns for Fake {
        async fn job(&self, id: &str) -> Result<Option<Job>, ExecutorError> {
            Ok(self.jobs.lock().unwrap().get(id).cloned())
        }
        async fn run(&self, id: &str) -> Result<Option<JobRun>, ExecutorError> {
            Ok(self.runs.lock().unwrap().get(id).cloned())
        }
        async fn runs(&self) -> Result<Vec<JobRun>, ExecutorError> {
            Ok(self.runs.lock().unwrap().values().cloned().collect())
        }
        async fn update_run(
            &self,
            job: &Job,
            f: &(dyn for<'r> Fn(&'r mut JobRun) + Send + Sync),
        ) -> Result<JobRun, ExecutorError> {
            let mut runs = self.runs.lock().unwrap();
            let run = runs.entry(job.id.clone()).or_insert_with(|| {
                serde_json::from_value(serde_json::json!({
                    "id": job.id, "created": Timestamp::now(), "executor": "local",
                }))
                .unwrap()
            });
            f(run);
            Ok(run.clone())
        }
        async fn update_job(
            &self,
            id: &str,
            f: &(dyn for<'r> Fn(&'r mut Job) + Send + Sync),
        ) -> Result<Option<Job>, ExecutorError> {
            let mut jobs = self.jobs.lock().unwrap();
            Ok(jobs.get_mut(id).map(|j| {
                f(j);
                j.clone()
            }))
        }
        async fn fail(&self, job: &Job, _reason: &str) {
            self.failed.lock().unwrap().push(job.id.clone());
        }
        fn job_token(&self, id: &str) -> String {
            format!("token-{id}")
        }
        fn settings(&self) -> &ServiceConfig {
            &self.cfg
        }
        async fn nodes(&self) -> Result<Vec<RemoteBuildNode>, ExecutorError> {
            Ok(vec![])
        }
        async fn slots(&self) -> Result<Vec<NodeSlot>, ExecutorError> {
            Ok(vec![])
        }
        async fn reserve(&self, _: &str, _: &str, _: u32) -> Result<Reserved, ExecutorError> {
            Err(no("reserve"))
        }
        async fn release(&self, _: &str, _: bool) -> Result<(), ExecutorError> {
            Ok(())
        }
        async fn claim_home(&self, _: &str) -> Result<bool, ExecutorError> {
            Err(no("claim_home"))
        }
        async fn note(&self, _: &Job, _: &str) {}
    }

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({
            "id": ims_core::new_id(),
            "created": Timestamp::now(),
            "job_type": "customize",
            "image_root_archive_name": "tidy",
            "artifact_id": ims_core::new_id(),
            "public_key_id": ims_core::new_id(),
            "status": "waiting_on_user",
        }))
        .unwrap()
    }

    /// A job ended or deleted through another replica (which cannot signal this server's agents)
    /// gets its agent stopped by this server's check of its own agents: at once when the job is
    /// gone, after the final grace when it ended; agents of running jobs, and of jobs that ended
    /// just now, go on. Stopping them fails no job.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_server_stops_its_own_agents_of_ended_or_deleted_jobs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // An agent that runs until it is stopped.
        let program = dir.path().join("fake-ims");
        std::fs::write(&program, "#!/bin/sh\nexec sleep 300\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = Arc::new(
            LocalExecutor::new(LocalSettings {
                program,
                api_url: "http://127.0.0.1:9".into(),
                jobs_dir: dir.path().join("jobs"),
                agent: AgentSettings::default(),
                stop_grace: Duration::from_secs(1),
                prerequisites: None,
            })
            .unwrap(),
        );
        let local = Local(exec.clone());
        let fake = Arc::new(Fake::default());
        let cx = ExecutorContext::new(fake.clone());
        let [ended_long_ago, deleted, running, ended_now] = [job(), job(), job(), job()];
        let mut agents = HashMap::new();
        for j in [&ended_long_ago, &deleted, &running, &ended_now] {
            fake.jobs.lock().unwrap().insert(j.id.clone(), j.clone());
            local.start(&cx, j).await.unwrap();
            let run = fake.runs.lock().unwrap()[&j.id].clone();
            assert_eq!(run.host.as_deref(), Some(hostname().as_str()));
            agents.insert(j.id.clone(), (run.pid.unwrap(), run.pid_start));
        }
        let alive = |j: &Job| {
            let (pid, start) = agents[&j.id];
            same_process(pid, start)
        };
        // Another replica ended two jobs (one long enough ago) and deleted one.
        let long_ago =
            Timestamp(Timestamp::now().0 - chrono::Duration::seconds(FINAL_GRACE_SECS + 5));
        for (j, at) in [(&ended_long_ago, long_ago), (&ended_now, Timestamp::now())] {
            fake.jobs.lock().unwrap().get_mut(&j.id).unwrap().status = JobStatus::Error;
            fake.runs.lock().unwrap().get_mut(&j.id).unwrap().ended = Some(at);
        }
        fake.jobs.lock().unwrap().remove(&deleted.id);
        fake.runs.lock().unwrap().remove(&deleted.id);
        exec.tidy(&cx).await;
        assert!(
            !alive(&ended_long_ago),
            "the agent of a job ended long ago runs"
        );
        assert!(!alive(&deleted), "the agent of a deleted job runs");
        assert!(alive(&running), "the agent of a running job was stopped");
        assert!(
            alive(&ended_now),
            "an agent got no time to finish after its job ended"
        );
        for j in [&ended_long_ago, &deleted] {
            assert!(!dir.path().join("jobs").join(&j.id).exists());
        }
        // The supervising tasks saw the exits: no job failed for them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(fake.failed.lock().unwrap().is_empty());
        for j in [&running, &ended_now] {
            local.stop(&cx, j).await.unwrap();
            assert!(!alive(j));
        }
    }
}
