//! The job-execution seam. Creating a job hands it to an executor; deleting a job (or a job reaching
//! `success`/`error`) tells the executor to stop and clean up. Executors that run jobs (local child
//! processes, Kubernetes, remote nodes) implement [`JobExecutor`]; until one is configured,
//! [`RecordOnlyExecutor`] keeps jobs as records only.
//!
//! An executor sees the server only through its [`ExecutorContext`]: the jobs' records (read
//! only), their run state ([`JobRun`]: where the agent runs), job tokens for the agents it
//! starts, the service settings, and one way to report that a job cannot go on. It cannot reach
//! the records or artifact stores otherwise; the service layer provides the context
//! (`service::job_runs::executor_context`).

use crate::ServiceConfig;
use async_trait::async_trait;
use ims_core::{Arch, Job, JobRun, JobType, NodeSlot, RemoteBuildNode};
use std::sync::Arc;

pub mod local;
pub mod remote;
pub use crate::service::node_slots::Reserved;
pub use local::{LocalExecutor, LocalSettings};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExecutorError(pub String);

/// `JobRun::executor` of jobs whose agent runs in a Kubernetes pod (crate `ims-kubernetes`): their
/// `customer_access` address is the job Service's, which the executor fills in, not the agent.
pub const KUBERNETES: &str = "kubernetes";

/// What the server lets an executor do; implemented by the service layer.
#[async_trait]
pub trait JobRuns: Send + Sync + 'static {
    /// A job's record; `None` once it is gone.
    async fn job(&self, id: &str) -> Result<Option<Job>, ExecutorError>;
    /// A job's run state, if any was recorded.
    async fn run(&self, id: &str) -> Result<Option<JobRun>, ExecutorError>;
    /// Every job's run state.
    async fn runs(&self) -> Result<Vec<JobRun>, ExecutorError>;
    /// Changes a job's run state with `f` (creating it first if need be); the new state.
    async fn update_run(
        &self,
        job: &Job,
        f: &(dyn for<'r> Fn(&'r mut JobRun) + Send + Sync),
    ) -> Result<JobRun, ExecutorError>;
    /// Changes job `id`'s record with `f` (row locked from read to commit; nothing written when
    /// `f` changes nothing); `None` once the job is gone.
    async fn update_job(
        &self,
        id: &str,
        f: &(dyn for<'r> Fn(&'r mut Job) + Send + Sync),
    ) -> Result<Option<Job>, ExecutorError>;
    /// Ends an unfinished job in `error` because its agent cannot go on; `reason` goes to the
    /// job's log and run state.
    async fn fail(&self, job: &Job, reason: &str);
    /// A fresh token for the agent of job `id` (it can act on its own job only).
    fn job_token(&self, id: &str) -> String;
    fn settings(&self) -> &ServiceConfig;
    /// The registered remote build nodes.
    async fn nodes(&self) -> Result<Vec<RemoteBuildNode>, ExecutorError>;
    /// Every reserved slot of the remote build nodes.
    async fn slots(&self) -> Result<Vec<NodeSlot>, ExecutorError>;
    /// Reserves a slot of node `xname` for job `id` and assigns the job to it, in one transaction;
    /// `probed_capacity`: the node's capacity by its size, for a record that sets none.
    async fn reserve(
        &self,
        id: &str,
        xname: &str,
        probed_capacity: u32,
    ) -> Result<Reserved, ExecutorError>;
    /// Releases the slots job `id` holds; `unassign`: its agent never started there, so an
    /// unfinished job is no longer assigned to the node either.
    async fn release(&self, id: &str, unassign: bool) -> Result<(), ExecutorError>;
    /// Claims a waiting job for the API host (no node placement of it can commit after); `false`
    /// when it holds a slot already.
    async fn claim_home(&self, id: &str) -> Result<bool, ExecutorError>;
    /// Adds a line to a job's log (what the executor is doing about it).
    async fn note(&self, job: &Job, line: &str);
}

/// What every [`JobExecutor`] method gets: the server, as far as executors may see it.
#[derive(Clone)]
pub struct ExecutorContext(Arc<dyn JobRuns>);

impl ExecutorContext {
    pub fn new(runs: Arc<dyn JobRuns>) -> ExecutorContext {
        ExecutorContext(runs)
    }

    /// The service settings (bucket names, namespaces, time limits).
    pub fn settings(&self) -> &ServiceConfig {
        self.0.settings()
    }

    /// A job's record; `None` once it is gone.
    pub async fn job(&self, id: &str) -> Result<Option<Job>, ExecutorError> {
        self.0.job(id).await
    }

    /// A job's run state, if any was recorded.
    pub async fn run(&self, id: &str) -> Result<Option<JobRun>, ExecutorError> {
        self.0.run(id).await
    }

    /// Every job's run state (to re-attach to agents after a restart).
    pub async fn runs(&self) -> Result<Vec<JobRun>, ExecutorError> {
        self.0.runs().await
    }

    /// Records where a job's agent runs (and anything else of its run state).
    pub async fn update_run(
        &self,
        job: &Job,
        f: impl Fn(&mut JobRun) + Send + Sync,
    ) -> Result<JobRun, ExecutorError> {
        self.0.update_run(job, &f).await
    }

    /// Changes job `id`'s record with `f` (see [`JobRuns::update_job`]); `None` once the job is
    /// gone.
    pub async fn update_job(
        &self,
        id: &str,
        f: &(dyn for<'r> Fn(&'r mut Job) + Send + Sync),
    ) -> Result<Option<Job>, ExecutorError> {
        self.0.update_job(id, f).await
    }

    /// Reports that a job's agent is gone or cannot run: an unfinished job ends in `error`
    /// with `reason` in its log.
    pub async fn fail(&self, job: &Job, reason: &str) {
        self.0.fail(job, reason).await
    }

    /// A fresh token for the agent of job `id`.
    pub fn job_token(&self, id: &str) -> String {
        self.0.job_token(id)
    }

    /// The registered remote build nodes.
    pub async fn nodes(&self) -> Result<Vec<RemoteBuildNode>, ExecutorError> {
        self.0.nodes().await
    }

    /// Every reserved slot of the remote build nodes.
    pub async fn slots(&self) -> Result<Vec<NodeSlot>, ExecutorError> {
        self.0.slots().await
    }

    /// Reserves a slot of node `xname` for job `id` and assigns the job to the node, in one
    /// transaction: never more jobs than slots, whatever runs concurrently. The node's record's
    /// capacity counts, read in that transaction; `probed_capacity` (its size) where it sets none.
    pub async fn reserve(
        &self,
        id: &str,
        xname: &str,
        probed_capacity: u32,
    ) -> Result<Reserved, ExecutorError> {
        self.0.reserve(id, xname, probed_capacity).await
    }

    /// Releases the slots job `id` holds (none is fine); `unassign`: its agent never started on
    /// the node (an unfinished job is no longer assigned to it).
    pub async fn release(&self, id: &str, unassign: bool) -> Result<(), ExecutorError> {
        self.0.release(id, unassign).await
    }

    /// Claims a waiting job for the API host, atomically against node placements of it (other
    /// replicas'); `false`: it holds a slot already.
    pub async fn claim_home(&self, id: &str) -> Result<bool, ExecutorError> {
        self.0.claim_home(id).await
    }

    /// Adds a line to a job's log.
    pub async fn note(&self, job: &Job, line: &str) {
        self.0.note(job, line).await
    }
}

#[async_trait]
pub trait JobExecutor: Send + Sync + 'static {
    /// Starts the agent of a freshly stored job. An error removes the job record again (500).
    async fn start(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError>;
    /// The job reached `success` or `error`: release what only runs during the job.
    async fn finished(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError>;
    /// The job is being deleted (or ended by the server): stop everything and clean up. An error
    /// keeps the record (500).
    async fn stop(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError>;
    /// After a server start: re-attach to the agents of unfinished jobs that still run, and fail
    /// the jobs whose agents are gone.
    async fn recover(&self, _cx: &ExecutorContext) {}
    /// Whether this executor runs agents that heartbeat (so silent jobs are failed by the
    /// reconciler).
    fn supervises(&self) -> bool {
        false
    }
    /// Whether, under the remote executor, jobs come here when every remote build node that
    /// could run them is full, rather than wait for a slot (a cluster has room; the API host is
    /// kept for jobs no node can run).
    fn takes_overflow(&self) -> bool {
        false
    }
    /// Why this executor cannot run jobs of `job_type` now (its host lacks a tool, root, a
    /// capability, or is of another architecture than `arch`), in one line; `session`: the job
    /// opens an SSH session; `arch`: `None` before the job's artifact is read (then only what does
    /// not depend on it is checked). `None` when it can. Checked before a job is stored: such a
    /// job is refused (503) rather than left to fail.
    async fn cannot_run(
        &self,
        _cx: &ExecutorContext,
        _job_type: JobType,
        _arch: Option<Arch>,
        _session: bool,
    ) -> Option<String> {
        None
    }
    /// A short name for logs (and [`JobRun::executor`]).
    fn name(&self) -> &'static str;
}

/// Keeps jobs as records; runs nothing.
pub struct RecordOnlyExecutor;

#[async_trait]
impl JobExecutor for RecordOnlyExecutor {
    async fn start(&self, _cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        tracing::info!(job = %job.id, "job recorded (the record-only executor runs nothing)");
        Ok(())
    }
    async fn finished(&self, _cx: &ExecutorContext, _job: &Job) -> Result<(), ExecutorError> {
        Ok(())
    }
    async fn stop(&self, _cx: &ExecutorContext, _job: &Job) -> Result<(), ExecutorError> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "record-only"
    }
}
