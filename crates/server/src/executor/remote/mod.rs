//! Remote build nodes: jobs run on registered machines, reached over SSH.
//!
//! [`Remote`] wraps the executor of the API host (its "home", the local executor). For each job:
//! * **Placement.** The nodes of the job's architecture that can run it (reachable, host key
//!   accepted, the agent's prerequisites present for the job type, not drained, no failed start in
//!   the last minute) are tried, the one with the most free slots first. A slot is reserved in
//!   the records store in the transaction that assigns the job to the node
//!   (`service::node_slots`), so nothing overfills a node, whatever runs concurrently.
//! * **No node can run it at all** (none registered, all drained, unreachable or lacking tools):
//!   the job runs on the API host when the host can run it. **All suitable nodes are full**, or the
//!   host cannot run it: the job waits in `creating` (the reason in its log) and a placement pass
//!   retries every few seconds, in the replica that leads the background work
//!   (`service::leases`); after [`RemoteSettings::placement_timeout`] it ends in `error` saying
//!   why.
//! * **Start.** The agent is `ims agent run <id>` of this very build, started on the node by
//!   `ims agent node-run` (`ims_jobs::node`), which gets the agent's environment — job token
//!   included — on its standard input. The agent reaches the API and S3 over the network; users
//!   reach its session at the node's address.
//! * **Liveness** is the agent's heartbeat, as for local agents: a node that vanishes ends its
//!   jobs in `error` within the heartbeat timeout (the reconciler). A node pass (every
//!   [`NODE_PASS`], in the leading replica) probes the nodes, releases the slots of ended jobs
//!   and stops and removes on each node what belongs to no running job (an agent outliving its
//!   job, a directory left by a node that was cut off): a node that comes back cleans up at the
//!   next contact and resurrects nothing (its agents' tokens die with their jobs).
//! * **Stop.** Deleting a job runs `ims agent node-stop` on its node; an unreachable node is
//!   cleaned at the next contact.

pub mod fleet;
pub mod ssh;

use super::{ExecutorContext, ExecutorError, JobExecutor, Reserved};
use async_trait::async_trait;
use fleet::{FAILURE_BACKOFF, Fleet, PROBE_TTL, Probe, StartError};
use ims_core::agent_env::{AgentEnv, AgentSettings};
use ims_core::{Arch, Job, JobRun, JobType, RemoteBuildNode, Timestamp};
use std::sync::Arc;
use std::time::Duration;

/// The executor name recorded in [`JobRun::executor`] for jobs placed (or waiting) on nodes.
pub const EXECUTOR: &str = "remote";

/// How often the node pass runs (and waiting jobs are retried at the latest).
pub const NODE_PASS: Duration = Duration::from_secs(10);

/// A reservation older than this without a recorded start is undone (its placer crashed).
const STALE_RESERVATION_SECS: i64 = 120;

/// An agent whose job has ended gets this long to ship its last log lines and exit before the
/// node pass stops it.
const FINAL_GRACE_SECS: i64 = 20;

/// What the remote executor needs besides the fleet.
#[derive(Clone)]
pub struct RemoteSettings {
    /// The API URL agents on nodes use (`IMS_AGENT_API_URL`).
    pub api_url: String,
    /// The site's agent settings (as for local agents).
    pub agent: AgentSettings,
    /// How long a job may wait for a slot before it ends in `error`.
    pub placement_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace: Duration,
}

pub struct Remote {
    home: Arc<dyn JobExecutor>,
    fleet: Arc<Fleet>,
    s: RemoteSettings,
    /// Wakes the placement loop (a slot was released, a job waits).
    wake: tokio::sync::Notify,
    /// This process knows of jobs waiting for a slot.
    waiting: std::sync::atomic::AtomicBool,
}

/// Where a job goes.
enum Placement {
    Placed,
    /// Nobody can run it now: why.
    Wait(String),
    /// No node can run it at all and the host can.
    Home,
    /// The job ended or was deleted meanwhile.
    Gone,
    /// The job holds a slot already, of this node (or the API host's claim), reserved then.
    HeldBy(String, Timestamp),
}

/// A node with its probe, as placement weighs it.
struct Candidate {
    node: RemoteBuildNode,
    /// Its capacity as this read of its record and probe says (for ordering and messages).
    capacity: u32,
    /// Its capacity by its size, for a record that sets none (the reservation reads the record
    /// again in its transaction).
    probed_capacity: u32,
    reserved: u32,
}

/// Whether a job opens an SSH session.
fn session(job: &Job) -> bool {
    job.job_type == JobType::Customize || job.enable_debug
}

impl Remote {
    pub fn new(home: Arc<dyn JobExecutor>, fleet: Arc<Fleet>, s: RemoteSettings) -> Arc<Remote> {
        Arc::new(Remote {
            home,
            fleet,
            s,
            wake: tokio::sync::Notify::new(),
            waiting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs the node pass and the placement of waiting jobs until the process ends, while this
    /// replica is the `leader` (the passes of the others wait: one replica probes and cleans the
    /// nodes and retries waiting jobs; a job's first placement happens in the replica that
    /// received it).
    pub fn spawn_passes(
        self: &Arc<Self>,
        cx: ExecutorContext,
        leader: crate::service::leases::Leadership,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            if !me.fleet.enabled() {
                return;
            }
            // The node pass on a task of its own: a slow node (a binary copy, a stop) does not hold
            // up placement.
            let nodes = {
                let (me, cx, leader) = (me.clone(), cx.clone(), leader.clone());
                tokio::spawn(async move {
                    loop {
                        if leader.is_leader() {
                            me.node_pass(&cx).await;
                        }
                        tokio::time::sleep(NODE_PASS).await;
                    }
                })
            };
            struct AbortOnDrop(tokio::task::JoinHandle<()>);
            impl Drop for AbortOnDrop {
                fn drop(&mut self) {
                    self.0.abort();
                }
            }
            let _nodes = AbortOnDrop(nodes);
            let mut last_scan = tokio::time::Instant::now() - NODE_PASS;
            loop {
                // Waiting jobs are looked for every 2 s (or when woken) while this process knows
                // of some, and every NODE_PASS for those of other replicas; by the leader only
                // (a replica that becomes the leader scans at once).
                let due = last_scan.elapsed() >= NODE_PASS;
                if !leader.is_leader() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), me.wake.notified()).await;
                    continue;
                }
                if due || me.waiting.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    last_scan = tokio::time::Instant::now();
                    if me.place_waiting(&cx).await {
                        me.waiting.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), me.wake.notified()).await;
            }
        })
    }

    /// Why the API host cannot run `job` (`None`: it can).
    async fn home_cannot_run(&self, cx: &ExecutorContext, job: &Job) -> Option<String> {
        self.home
            .cannot_run(cx, job.job_type, Some(job.arch), session(job))
            .await
    }

    /// The nodes that could take `job`, with their load; and why each other node cannot.
    async fn candidates(
        &self,
        cx: &ExecutorContext,
        job: &Job,
    ) -> Result<(Vec<Candidate>, Vec<String>), ExecutorError> {
        let nodes = cx.nodes().await?;
        let slots = cx.slots().await?;
        let probes = futures::future::join_all(
            nodes
                .iter()
                .filter(|n| !n.drained)
                .map(|n| async move { (n, self.fleet.probe_cached(n, PROBE_TTL).await) }),
        )
        .await;
        let mut able = Vec::new();
        let mut why_not: Vec<String> = nodes
            .iter()
            .filter(|n| n.drained)
            .map(|n| format!("{}: drained", n.xname))
            .collect();
        for (node, probe) in probes {
            let p = match probe {
                Probe::Ok(p) => p,
                Probe::Failed(f) => {
                    why_not.push(format!("{}: {}", node.xname, f.describe()));
                    continue;
                }
            };
            if p.arch != job.arch.as_str() {
                continue;
            }
            let why = self
                .fleet
                .settings()
                .unreachable_server
                .clone()
                .or_else(|| {
                    p.cannot_run
                        .why(job.job_type, session(job))
                        .map(str::to_string)
                })
                .or_else(|| self.fleet.recent_failure(&node.xname, FAILURE_BACKOFF));
            if let Some(why) = why {
                why_not.push(format!("{}: {why}", node.xname));
                continue;
            }
            let reserved = slots.iter().filter(|s| s.xname == node.xname).count() as u32;
            able.push(Candidate {
                capacity: Fleet::capacity(node, &p),
                probed_capacity: Fleet::probed_capacity(&p),
                node: node.clone(),
                reserved,
            });
        }
        // The most free slots first; then the least loaded.
        able.sort_by_key(|c| {
            (
                std::cmp::Reverse(c.capacity.saturating_sub(c.reserved)),
                c.reserved,
            )
        });
        Ok((able, why_not))
    }

    /// Places `job` on a node and starts its agent there, if any node can take it now.
    async fn place(&self, cx: &ExecutorContext, job: &Job) -> Result<Placement, ExecutorError> {
        if !self.fleet.enabled() {
            return Ok(Placement::Home);
        }
        let (able, why_not) = self.candidates(cx, job).await?;
        if able.is_empty() {
            return Ok(match self.home_cannot_run(cx, job).await {
                None => Placement::Home,
                Some(host) => Placement::Wait(format!(
                    "no {} remote build node can run {} jobs now{}, and {host}",
                    job.arch,
                    job.job_type,
                    if why_not.is_empty() {
                        " (none is registered)".to_string()
                    } else {
                        format!(" ({})", why_not.join("; "))
                    }
                )),
            });
        }
        let mut full = Vec::new();
        for c in &able {
            match cx
                .reserve(&job.id, &c.node.xname, c.probed_capacity)
                .await?
            {
                Reserved::Slot(n) => match self.launch(cx, job, &c.node, n).await {
                    Ok(()) => return Ok(Placement::Placed),
                    Err(e) => {
                        tracing::warn!(job = %job.id, node = %c.node.xname, error = %e, "could not start the job on a remote build node");
                        cx.note(
                            job,
                            &format!("could not start the agent on {}: {e}", c.node.xname),
                        )
                        .await;
                        self.fleet.failed(&c.node.xname, &e.message);
                        if e.maybe_started {
                            // Recording failed and the agent may run: the slot stays with the
                            // job (the node pass releases it when the job ends).
                            return Err(ExecutorError(e.message));
                        }
                        cx.release(&job.id, true).await?;
                        full.push(format!("{}: could not start the agent: {e}", c.node.xname));
                    }
                },
                Reserved::Full => {
                    full.push(format!("{}: all {} slots taken", c.node.xname, c.capacity))
                }
                Reserved::Unavailable => full.push(format!("{}: drained or removed", c.node.xname)),
                Reserved::JobGone => return Ok(Placement::Gone),
                Reserved::Placed(x, at) => return Ok(Placement::HeldBy(x, at)),
            }
        }
        if self.home.takes_overflow() && self.home_cannot_run(cx, job).await.is_none() {
            return Ok(Placement::Home);
        }
        Ok(Placement::Wait(format!(
            "no {} remote build node that can run {} jobs has a free slot ({})",
            job.arch,
            job.job_type,
            full.join("; ")
        )))
    }

    /// Starts the agent of `job` on `node` (slot `slot` is reserved for it). A start whose
    /// outcome is unknown (the connection broke before the node answered) and that `node-stop`
    /// cannot undo now counts as started: the agent's heartbeats (or their absence, through the
    /// reconciler) decide, and the node pass removes it if the job ends meanwhile.
    async fn launch(
        &self,
        cx: &ExecutorContext,
        job: &Job,
        node: &RemoteBuildNode,
        slot: u32,
    ) -> Result<(), StartError> {
        let mut settings = self.s.agent.clone();
        // Users reach the session at the node's address; the host's own listen address means
        // nothing there.
        settings.ssh_host = Some(self.fleet.address(&node.xname));
        settings.ssh_listen = None;
        // The node's own package cache for create jobs, beside its job directories.
        settings.kiwi_cache =
            Some(std::path::Path::new(&self.fleet.settings().base).join("kiwi-cache"));
        let env: Vec<(&'static str, String)> = AgentEnv {
            api_url: self.s.api_url.clone(),
            token: Some(cx.job_token(&job.id)),
            dir: std::path::PathBuf::new(),
            settings,
        }
        .to_env()
        .into_iter()
        // The node chooses the scratch directory.
        .filter(|(k, _)| *k != ims_core::agent_env::DIR)
        .collect();
        let started = match self.fleet.run_agent(node, &job.id, env).await {
            Ok(a) => Some(a),
            Err(e) if e.maybe_started => {
                let undone = self
                    .fleet
                    .stop_agents(node, std::slice::from_ref(&job.id), self.s.stop_grace)
                    .await;
                if undone.is_ok() {
                    return Err(StartError {
                        maybe_started: false,
                        message: format!("{e} (stopped there again)"),
                    });
                }
                tracing::warn!(job = %job.id, node = %node.xname, error = %e, "the agent's start on the node is uncertain; its heartbeats decide");
                cx.note(
                    job,
                    &format!(
                        "{e}: the agent may run on {}; without its heartbeat the job ends in error",
                        node.xname
                    ),
                )
                .await;
                None
            }
            Err(e) => return Err(e),
        };
        let xname = node.xname.clone();
        let launched = Timestamp::now();
        let recorded = cx
            .update_run(job, |r| {
                r.executor = EXECUTOR.to_string();
                r.host = Some(xname.clone());
                r.pid = started.map(|a| a.pid);
                r.pid_start = started.map(|a| a.start);
                r.placement_wait = None;
                r.launched = Some(launched);
            })
            .await;
        if let Err(e) = recorded {
            let stopped = self
                .fleet
                .stop_agents(node, std::slice::from_ref(&job.id), self.s.stop_grace)
                .await;
            return Err(StartError {
                maybe_started: stopped.is_err(),
                message: format!("cannot record the agent: {e}"),
            });
        }
        let pid = started.map_or("unknown".to_string(), |a| a.pid.to_string());
        tracing::info!(job = %job.id, node = %node.xname, slot, pid, "job agent started on a remote build node");
        cx.note(
            job,
            &format!(
                "the job runs on remote build node {} (slot {slot}, agent pid {pid})",
                node.xname
            ),
        )
        .await;
        Ok(())
    }

    /// Marks `job` as waiting for a slot (the first time: with the reason in its log).
    async fn wait(&self, cx: &ExecutorContext, job: &Job, why: &str) -> Result<(), ExecutorError> {
        let before = cx.run(&job.id).await?;
        let first = before.as_ref().is_none_or(|r| r.placement_wait.is_none());
        let phase = format!("waiting for a remote build node: {why}");
        let run = cx
            .update_run(job, |r| {
                // Placed meanwhile (by another replica): nothing to change.
                if r.host.is_some() || r.launched.is_some() {
                    return;
                }
                r.executor = EXECUTOR.to_string();
                if r.placement_wait.is_none() {
                    r.placement_wait = Some(Timestamp::now());
                }
                r.phase = Some(phase.clone());
            })
            .await?;
        if run.host.is_some() || run.launched.is_some() {
            return Ok(());
        }
        let changed = before.and_then(|r| r.phase) != Some(phase);
        if first || changed {
            cx.note(
                job,
                &format!(
                    "{why}; the job waits for a slot (at most {} s)",
                    self.s.placement_timeout.as_secs()
                ),
            )
            .await;
        }
        self.waiting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// Tries again to place the jobs that wait for a slot (any replica's); ends those that waited
    /// too long. Whether jobs still wait.
    async fn place_waiting(&self, cx: &ExecutorContext) -> bool {
        let runs = match cx.runs().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "placement: cannot read the running jobs");
                return true;
            }
        };
        let mut left = false;
        for run in runs {
            let Some(since) = run.placement_wait else {
                continue;
            };
            if run.executor != EXECUTOR || run.host.is_some() {
                continue;
            }
            let job = match cx.job(&run.id).await {
                Ok(Some(j)) if !j.status.is_final() => j,
                _ => continue,
            };
            let waited = (Timestamp::now().0 - since.0).num_seconds().max(0) as u64;
            if waited > self.s.placement_timeout.as_secs() {
                let why = run
                    .phase
                    .as_deref()
                    .and_then(|p| p.strip_prefix("waiting for a remote build node: "))
                    .unwrap_or("no remote build node had a free slot")
                    .to_string();
                cx.fail(
                    &job,
                    &format!(
                        "the job waited {waited} s for a remote build node (limit {} s): {why}",
                        self.s.placement_timeout.as_secs()
                    ),
                )
                .await;
                continue;
            }
            match self.place(cx, &job).await {
                Ok(Placement::Placed) | Ok(Placement::Gone) => {}
                Ok(Placement::HeldBy(xname, at)) => {
                    // Reserved, but whoever reserved it never recorded a start (it crashed in
                    // between): undone and tried again.
                    let age = (Timestamp::now().0 - at.0).num_seconds();
                    if age > STALE_RESERVATION_SECS {
                        left = true;
                        self.undo_stale(cx, &job, &xname).await;
                    }
                }
                Ok(Placement::Wait(why)) => {
                    left = true;
                    if let Err(e) = self.wait(cx, &job, &why).await {
                        tracing::warn!(job = %job.id, error = %e, "placement: cannot record the wait");
                    }
                }
                Ok(Placement::Home) => {
                    match cx.claim_home(&job.id).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            left = true;
                            tracing::warn!(job = %job.id, error = %e, "placement: cannot claim the job for the API host");
                            continue;
                        }
                    }
                    cx.note(
                        &job,
                        "no remote build node can run the job; it runs on the API host",
                    )
                    .await;
                    let launched = Timestamp::now();
                    if let Err(e) = cx
                        .update_run(&job, |r| {
                            r.placement_wait = None;
                            r.launched = Some(launched);
                        })
                        .await
                    {
                        tracing::warn!(job = %job.id, error = %e, "placement: cannot record the start");
                        continue;
                    }
                    if let Err(e) = self.home.start(cx, &job).await {
                        cx.fail(
                            &job,
                            &format!("the job could not be started on the API host: {e}"),
                        )
                        .await;
                    }
                }
                Err(e) => {
                    left = true;
                    tracing::warn!(job = %job.id, error = %e, "placement failed")
                }
            }
        }
        left
    }

    /// Undoes a reservation whose start was never recorded: stops whatever may run for the job on
    /// the node, then releases the slot (and the job's assignment) so the job is placed again.
    async fn undo_stale(&self, cx: &ExecutorContext, job: &Job, xname: &str) {
        if let Ok(Some(run)) = cx.run(&job.id).await
            && (run.host.is_some() || run.launched.is_some())
        {
            return;
        }
        if xname != crate::service::node_slots::home_xname(&job.id) {
            let node = self.node(cx, xname).await;
            if let Err(e) = self
                .fleet
                .stop_agents(&node, std::slice::from_ref(&job.id), self.s.stop_grace)
                .await
            {
                tracing::warn!(job = %job.id, node = %xname, error = %e, "placement: cannot undo a stale reservation yet");
                return;
            }
        }
        tracing::warn!(job = %job.id, node = %xname, "placement: a reservation without a start is undone");
        if let Err(e) = cx.release(&job.id, true).await {
            tracing::warn!(job = %job.id, error = %e, "placement: cannot release a stale reservation");
        }
    }

    /// Probes every node, releases the slots of ended jobs and removes from each node what
    /// belongs to no running job there.
    async fn node_pass(&self, cx: &ExecutorContext) {
        if !self.fleet.enabled() {
            return;
        }
        if let Ok(slots) = cx.slots().await {
            for s in slots {
                // Released when the job is gone or ended (not when it cannot be read now).
                let ended = match cx.job(&s.job_id).await {
                    Ok(None) => true,
                    Ok(Some(j)) => j.status.is_final(),
                    Err(_) => false,
                };
                if ended {
                    if let Err(e) = cx.release(&s.job_id, false).await {
                        tracing::warn!(job = %s.job_id, error = %e, "cannot release a node slot");
                    } else {
                        self.wake.notify_one();
                    }
                }
            }
        }
        let nodes = match cx.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "node pass: cannot list the nodes");
                return;
            }
        };
        futures::future::join_all(nodes.iter().map(|n| self.clean_node(cx, n))).await;
    }

    /// Stops and removes on `node` the agents and directories of jobs that do not run there.
    async fn clean_node(&self, cx: &ExecutorContext, node: &RemoteBuildNode) {
        let Probe::Ok(p) = self.fleet.probe(node, true).await else {
            return;
        };
        let mut stale = Vec::new();
        for j in &p.jobs {
            let keep = match cx.job(&j.id).await {
                Err(_) => true,
                Ok(None) => false,
                Ok(Some(job)) if job.status.is_final() => {
                    // An agent that just ended its job gets a moment to ship its last words.
                    j.running
                        && cx
                            .run(&j.id)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|r| r.ended)
                            .is_some_and(|t| {
                                (Timestamp::now().0 - t.0).num_seconds() < FINAL_GRACE_SECS
                            })
                }
                Ok(Some(job)) => {
                    // Placed here (possibly still starting), or left by an earlier placement.
                    job.remote_build_node == node.xname
                }
            };
            if !keep {
                stale.push(j.id.clone());
            }
        }
        if stale.is_empty() {
            return;
        }
        match self
            .fleet
            .stop_agents(node, &stale, self.s.stop_grace)
            .await
        {
            Ok(a) => {
                for s in a.stopped {
                    tracing::info!(node = %node.xname, job = %s.id, was_running = s.was_running, "removed a job's leftovers from a remote build node");
                }
            }
            Err(e) => {
                tracing::warn!(node = %node.xname, error = %e, "cannot clean up a remote build node")
            }
        }
    }

    /// The node record of `xname` (a bare one if it was removed: then no key is accepted).
    async fn node(&self, cx: &ExecutorContext, xname: &str) -> RemoteBuildNode {
        cx.nodes()
            .await
            .ok()
            .and_then(|n| n.into_iter().find(|n| n.xname == xname))
            .unwrap_or_else(|| RemoteBuildNode::new(xname))
    }

    fn is_remote(run: Option<&JobRun>) -> bool {
        run.is_some_and(|r| r.executor == EXECUTOR)
    }
}

/// The executor is shared with its passes, so it is used through an `Arc`.
pub struct RemoteExecutor(pub Arc<Remote>);

#[async_trait]
impl JobExecutor for RemoteExecutor {
    async fn start(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let me = &self.0;
        match me.place(cx, job).await? {
            Placement::Placed | Placement::Gone | Placement::HeldBy(..) => Ok(()),
            Placement::Home => me.home.start(cx, job).await,
            Placement::Wait(why) => me.wait(cx, job, &why).await,
        }
    }

    async fn finished(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let me = &self.0;
        let run = cx.run(&job.id).await?;
        if !Remote::is_remote(run.as_ref()) {
            return me.home.finished(cx, job).await;
        }
        cx.release(&job.id, false).await?;
        me.wake.notify_one();
        // The agent exits by itself after ending its job; its directory goes at the next pass.
        Ok(())
    }

    async fn stop(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let me = &self.0;
        let run = cx.run(&job.id).await?;
        if !Remote::is_remote(run.as_ref()) {
            return me.home.stop(cx, job).await;
        }
        if let Some(xname) = run.as_ref().and_then(|r| r.host.clone()) {
            let node = me.node(cx, &xname).await;
            if let Err(e) = me
                .fleet
                .stop_agents(&node, std::slice::from_ref(&job.id), me.s.stop_grace)
                .await
            {
                // The next contact with the node removes what is left (the job is gone or
                // ended by then).
                tracing::warn!(job = %job.id, node = %xname, error = %e, "cannot stop the job's agent on its node now; it is stopped at the next contact");
                cx.note(
                    job,
                    &format!("could not stop the agent on {xname} now ({e}); it is stopped when the node is reachable again"),
                )
                .await;
            }
        }
        cx.release(&job.id, false).await?;
        me.wake.notify_one();
        Ok(())
    }

    async fn recover(&self, cx: &ExecutorContext) {
        // Agents on nodes need no taking over: they heartbeat to whichever replica answers, and
        // waiting jobs are found in the store by the placement pass.
        self.0.home.recover(cx).await
    }

    fn supervises(&self) -> bool {
        true
    }

    async fn cannot_run(
        &self,
        cx: &ExecutorContext,
        job_type: JobType,
        arch: Option<Arch>,
        session: bool,
    ) -> Option<String> {
        let me = &self.0;
        let host = me.home.cannot_run(cx, job_type, arch, session).await?;
        if !me.fleet.enabled() {
            return Some(host);
        }
        // A node that may run it (its architecture known to match, or not known yet) takes the
        // job, or the job waits for it.
        let nodes = cx.nodes().await.ok()?;
        let live: Vec<&RemoteBuildNode> = nodes.iter().filter(|n| !n.drained).collect();
        if arch.is_none() {
            // Before the artifact is read: any node may be of its architecture.
            return live.is_empty().then_some(host);
        }
        let arch = arch?;
        // Probed together (from the cache when fresh): a node of its architecture that lacks nothing
        // for the job, or one whose architecture is not known (it does not answer), may take it.
        let probes =
            futures::future::join_all(live.iter().map(|n| me.fleet.probe_cached(n, PROBE_TTL)))
                .await;
        let maybe = probes.into_iter().any(|p| match p {
            Probe::Ok(p) => {
                p.arch == arch.as_str() && p.cannot_run.why(job_type, session).is_none()
            }
            Probe::Failed(fleet::ProbeFailure::Agent { arch: Some(na), .. }) => arch.as_str() == na,
            Probe::Failed(_) => true,
        });
        (!maybe).then_some(host)
    }

    fn name(&self) -> &'static str {
        self.0.home.name()
    }
}
