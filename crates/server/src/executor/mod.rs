//! The job-execution seam. Creating a job hands it to an executor; deleting a job (or a job reaching
//! `success`/`error`) tells the executor to stop and clean up. Executors that run jobs (local child
//! processes, Kubernetes, remote nodes) implement [`JobExecutor`]; until one is configured,
//! [`RecordOnlyExecutor`] keeps jobs as records only.

use crate::AppState;
use async_trait::async_trait;
use ims_core::Job;

pub mod local;
pub use local::{LocalExecutor, LocalSettings};

/// What an executor gets at job creation, besides the record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLaunch {
    pub job: Job,
    /// The artifact to fetch: recipe tarball (create) or rootfs (customize), as `s3://bucket/key`.
    pub download: String,
    /// Its md5 as the manifest records it (customize), if any.
    pub download_md5: Option<String>,
    /// The public key text the job's SSH server must accept.
    pub public_key: String,
    /// create jobs: the recipe's template dictionary flattened to a JSON object.
    pub template_dictionary: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExecutorError(pub String);

#[async_trait]
pub trait JobExecutor: Send + Sync + 'static {
    /// Starts work for a freshly stored job. An error removes the job record again (500).
    async fn start(&self, st: &AppState, launch: &JobLaunch) -> Result<(), ExecutorError>;
    /// The job reached `success` or `error`: release what only runs during the job.
    async fn finished(&self, st: &AppState, job: &Job) -> Result<(), ExecutorError>;
    /// The job is being deleted (or ended by the server): stop everything and clean up. An error
    /// keeps the record (500).
    async fn stop(&self, st: &AppState, job: &Job) -> Result<(), ExecutorError>;
    /// After a server start: take over the agents of unfinished jobs that still run, and fail the
    /// jobs whose agents are gone.
    async fn recover(&self, _st: &AppState) {}
    /// Whether this executor runs agents that heartbeat (so silent jobs are failed by the
    /// reconciler).
    fn supervises(&self) -> bool {
        false
    }
    /// Why this executor cannot run jobs of `job_type` now (its host lacks a tool, root, a
    /// capability), in one line; `session`: the job opens an SSH session. `None` when it can.
    /// Checked before a job is stored: such a job is refused (503) rather than left to fail.
    fn cannot_run(&self, _job_type: &str, _session: bool) -> Option<String> {
        None
    }
    /// A short name for logs.
    fn name(&self) -> &'static str;
}

/// Keeps jobs as records; runs nothing.
pub struct RecordOnlyExecutor;

#[async_trait]
impl JobExecutor for RecordOnlyExecutor {
    async fn start(&self, _st: &AppState, launch: &JobLaunch) -> Result<(), ExecutorError> {
        tracing::info!(job = %launch.job.id, "job recorded (the record-only executor runs nothing)");
        Ok(())
    }
    async fn finished(&self, _st: &AppState, _job: &Job) -> Result<(), ExecutorError> {
        Ok(())
    }
    async fn stop(&self, _st: &AppState, _job: &Job) -> Result<(), ExecutorError> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "record-only"
    }
}
