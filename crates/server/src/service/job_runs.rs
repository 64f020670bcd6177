//! What happens while a job runs (extensions of the API, documented in docs/compatibility.md):
//!
//! * `POST /v3/jobs/{id}/heartbeat` — the agent says it is alive (optionally what it is doing);
//!   the answer tells it what the user asked for (`complete` / `fail`).
//! * `POST /v3/jobs/{id}/complete`, `POST /v3/jobs/{id}/fail` — the user ends a `waiting_on_user`
//!   session without touching a flag file (`ims jobs complete|fail ID`).
//! * `POST /v3/jobs/{id}/log?seq=N` (agent) and `GET /v3/jobs/{id}/log?offset=N` (users,
//!   `ims jobs logs ID [--follow]`) — the agent's log, kept as numbered chunks in the artifact store
//!   (`s3://<ims bucket>/jobs/<id>/log/<seq>`), so every replica serves it, whatever executor ran
//!   the agent. At most [`MAX_LOG_BYTES`] per job are kept.

use super::must_get;
use crate::error::{ApiError, ApiResult, artifact_detail};
use crate::executor::{ExecutorContext, ExecutorError, JobRuns};
use crate::{AppState, ServiceConfig, retrying};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ims_artifacts::{Location, SmallRead};
use ims_core::job_wire::{Heartbeat, HeartbeatAnswer, JobSession};
use ims_core::{Job, JobRun, JobStatus, Problem, Timestamp, UserRequest};
use ims_store::{Versioned, insert_op, update_op};
use serde_json::Value;

/// Log bytes kept per job; later chunks are acknowledged and dropped (with one notice).
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Largest log chunk accepted in one request.
pub const MAX_LOG_CHUNK: usize = 512 * 1024;
/// Most log bytes returned by one GET (clients page with `offset`).
const MAX_LOG_READ: u64 = 4 * 1024 * 1024;
/// Header carrying the offset to ask for next.
pub const LOG_OFFSET_HEADER: &str = "x-ims-log-offset";
/// Header saying whether the job is over (no more log will come).
pub const LOG_DONE_HEADER: &str = "x-ims-log-complete";

/// Log writers of one job take turns within this server: a chunk is stored at the next index
/// before the count that publishes it is committed, so two writers at once (the agent's shipper
/// and a note of the server's) would write the same index and one could overwrite the other's
/// bytes. Striped by job id, so the set stays fixed. (Replicas of a scaled-out server still
/// serialise on the run's version; see docs/architecture.md.)
fn log_lock(id: &str) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash, Hasher};
    static LOCKS: std::sync::LazyLock<Vec<tokio::sync::Mutex<()>>> =
        std::sync::LazyLock::new(|| (0..64).map(|_| tokio::sync::Mutex::new(())).collect());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    &LOCKS[(h.finish() % LOCKS.len() as u64) as usize]
}

fn run_for(job: &Job, executor: &str) -> JobRun {
    JobRun {
        id: job.id.clone(),
        created: Timestamp::now(),
        executor: executor.to_string(),
        host: None,
        pid: None,
        pid_start: None,
        heartbeat: None,
        phase: None,
        request: None,
        waiting_since: None,
        log_chunks: 0,
        agent_log_seq: 0,
        log_bytes: 0,
        error: None,
        ssh_host_key: None,
        image_id: None,
        ended: None,
        placement_wait: None,
        launched: None,
    }
}

/// Changes a job's run state with `f` (creating it if the executor has not), retried on races.
pub async fn update_run(st: &AppState, job: &Job, f: impl Fn(&mut JobRun)) -> ApiResult<JobRun> {
    retrying!(
        async {
            let cur = ims_store::get::<JobRun>(&*st.store, &job.id).await?;
            let (mut run, op) = match &cur {
                Some(Versioned { record, version }) => (record.clone(), Some(*version)),
                None => (run_for(job, st.executor.name()), None),
            };
            f(&mut run);
            let op = match op {
                Some(v) => update_op(&run, v)?,
                None => insert_op(&run)?,
            };
            st.store.apply(vec![op]).await?;
            Ok::<_, ApiError>(run)
        }
        .await
    )
}

/// What executors see of the server: jobs (read only), their run state, job tokens, settings.
struct ForExecutors(AppState);

fn executor_error(e: impl Into<ApiError>) -> ExecutorError {
    let p = e.into().into_problem();
    ExecutorError(p.detail.unwrap_or(p.title))
}

#[async_trait::async_trait]
impl JobRuns for ForExecutors {
    async fn job(&self, id: &str) -> Result<Option<Job>, ExecutorError> {
        Ok(ims_store::get::<Job>(&*self.0.store, id)
            .await
            .map_err(executor_error)?
            .map(|v| v.record))
    }

    async fn run(&self, id: &str) -> Result<Option<JobRun>, ExecutorError> {
        Ok(ims_store::get::<JobRun>(&*self.0.store, id)
            .await
            .map_err(executor_error)?
            .map(|v| v.record))
    }

    async fn runs(&self) -> Result<Vec<JobRun>, ExecutorError> {
        Ok(ims_store::list::<JobRun>(&*self.0.store)
            .await
            .map_err(executor_error)?
            .into_iter()
            .map(|v| v.record)
            .collect())
    }

    async fn update_run(
        &self,
        job: &Job,
        f: &(dyn for<'r> Fn(&'r mut JobRun) + Send + Sync),
    ) -> Result<JobRun, ExecutorError> {
        update_run(&self.0, job, f).await.map_err(executor_error)
    }

    async fn update_job(
        &self,
        id: &str,
        f: &(dyn for<'r> Fn(&'r mut Job) + Send + Sync),
    ) -> Result<Option<Job>, ExecutorError> {
        ims_store::update_with(&*self.0.store, id, |mut j: Job| {
            f(&mut j);
            Ok::<_, ApiError>(j)
        })
        .await
        .map_err(executor_error)
    }

    async fn fail(&self, job: &Job, reason: &str) {
        fail(&self.0, job, reason).await
    }

    fn job_token(&self, id: &str) -> String {
        self.0.job_tokens.issue(id)
    }

    async fn nodes(&self) -> Result<Vec<ims_core::RemoteBuildNode>, ExecutorError> {
        Ok(ims_store::list::<ims_core::RemoteBuildNode>(&*self.0.store)
            .await
            .map_err(executor_error)?
            .into_iter()
            .map(|v| v.record)
            .collect())
    }

    async fn slots(&self) -> Result<Vec<ims_core::NodeSlot>, ExecutorError> {
        super::node_slots::all(&self.0)
            .await
            .map_err(executor_error)
    }

    async fn reserve(
        &self,
        id: &str,
        xname: &str,
        probed_capacity: u32,
    ) -> Result<super::node_slots::Reserved, ExecutorError> {
        super::node_slots::reserve(&self.0, id, xname, probed_capacity)
            .await
            .map_err(executor_error)
    }

    async fn release(&self, id: &str, unassign: bool) -> Result<(), ExecutorError> {
        super::node_slots::release(&self.0, id, unassign)
            .await
            .map_err(executor_error)
    }

    async fn claim_home(&self, id: &str) -> Result<bool, ExecutorError> {
        super::node_slots::claim_home(&self.0, id)
            .await
            .map_err(executor_error)
    }

    async fn note(&self, job: &Job, line: &str) {
        note(&self.0, job, line).await
    }

    fn settings(&self) -> &ServiceConfig {
        &self.0.cfg
    }
}

/// The context every call of the executor gets.
pub fn executor_context(st: &AppState) -> ExecutorContext {
    ExecutorContext::new(std::sync::Arc::new(ForExecutors(st.clone())))
}

/// `POST /v3/jobs/{id}/heartbeat` ([`Heartbeat`]; body and fields optional). `ssh` fills the
/// job's first SSH container: its status and both `connection_info` entries (the address users
/// and Ansible connect to).
pub async fn heartbeat(
    st: &AppState,
    id: &str,
    body: Option<&Value>,
) -> ApiResult<HeartbeatAnswer> {
    let job = must_get::<Job>(&*st.store, id).await?.record;
    let Heartbeat { phase, ssh } = Heartbeat::parse(body)?;
    // A pod's agent knows only its Service's name inside the cluster; the address users reach
    // from outside is the Service's load balancer, which the Kubernetes executor fills in.
    let agent_knows_outside = match ssh {
        Some(_) => ims_store::get::<JobRun>(&*st.store, id)
            .await?
            .is_none_or(|r| r.record.executor != crate::executor::KUBERNETES),
        None => true,
    };
    if let Some(r) = &ssh {
        retrying!(
            async {
                let cur = must_get::<Job>(&*st.store, id).await?;
                let mut j = cur.record.clone();
                if let Some(c) = j.ssh_containers.as_mut().and_then(|c| c.first_mut()) {
                    c.status = r.status;
                    for (key, info) in c.connection_info.iter_mut() {
                        if agent_knows_outside || key != ims_core::CUSTOMER_ACCESS {
                            info.host = r.host.clone();
                            info.port = r.port;
                        }
                    }
                }
                if j != cur.record {
                    st.store.apply(vec![update_op(&j, cur.version)?]).await?;
                }
                Ok::<_, ApiError>(())
            }
            .await
        )?;
    }
    let waiting = job.status == JobStatus::WaitingOnUser;
    let host_key = ssh.as_ref().and_then(|r| r.host_key.clone());
    let run = update_run(st, &job, |r| {
        r.heartbeat = Some(Timestamp::now());
        if host_key.is_some() {
            r.ssh_host_key = host_key.clone();
        }
        if phase.is_some() {
            r.phase = phase.clone();
        }
        match (waiting, r.waiting_since) {
            (true, None) => r.waiting_since = Some(Timestamp::now()),
            (false, Some(_)) => r.waiting_since = None,
            _ => {}
        }
    })
    .await?;
    Ok(HeartbeatAnswer {
        request: run.request,
        status: job.status,
        token: None,
    })
}

/// `GET /v3/jobs/{id}/session`: the job's SSH session as a client connects to it — the address
/// users reach (`customer_access`, else `cluster.local`), its state, and sshd's public host key
/// once the agent reported it (`null` before), for a `known_hosts` line that pins it.
pub async fn session(st: &AppState, id: &str) -> ApiResult<JobSession> {
    let job = must_get::<Job>(&*st.store, id).await?.record;
    let Some(c) = job.ssh_containers.as_ref().and_then(|c| c.first()) else {
        return Err(Problem::new(404, format!("Job {id} has no SSH session.")).into());
    };
    let info = c
        .connection_info
        .get(ims_core::CUSTOMER_ACCESS)
        .or_else(|| c.connection_info.get(ims_core::CLUSTER_LOCAL));
    let host_key = match ims_store::get::<JobRun>(&*st.store, id).await? {
        Some(run) => run.record.ssh_host_key,
        None => None,
    };
    Ok(JobSession {
        host: info.map(|i| i.host.clone()),
        host_key,
        jail: c.jail,
        job_status: job.status,
        port: info.map(|i| i.port),
        status: c.status,
    })
}

/// `POST /v3/jobs/{id}/complete` and `/fail`: the user ends the session.
pub async fn request(st: &AppState, id: &str, what: UserRequest) -> ApiResult<Job> {
    let job = must_get::<Job>(&*st.store, id).await?.record;
    if job.status != JobStatus::WaitingOnUser {
        return Err(Problem::new(
            409,
            format!(
                "Job {id} is not waiting on a user (its status is {}); there is nothing to {what}.",
                job.status
            ),
        )
        .into());
    }
    update_run(st, &job, |r| r.request = Some(what)).await?;
    Ok(job)
}

fn log_location(st: &AppState, id: &str, seq: u64) -> ApiResult<Location> {
    Location::new(&st.cfg.ims_bucket, &format!("jobs/{id}/log/{seq:010}"))
        .map_err(|e| Problem::internal(e.to_string()).into())
}

/// `POST /v3/jobs/{id}/log?seq=N` with the chunk as the body (any bytes; text expected). `seq`
/// is the agent's own chunk count: chunks must come in order, and a repeated chunk (a retry) is
/// acknowledged and ignored.
pub async fn append_log(
    st: &AppState,
    id: &str,
    seq: u64,
    chunk: Bytes,
) -> ApiResult<ims_core::job_wire::LogAck> {
    let job = must_get::<Job>(&*st.store, id).await?.record;
    if chunk.len() > MAX_LOG_CHUNK {
        return Err(Problem::new(
            413,
            format!("A log chunk is at most {MAX_LOG_CHUNK} bytes."),
        )
        .into());
    }
    let run = ims_store::get::<JobRun>(&*st.store, id)
        .await?
        .map(|v| v.record)
        .unwrap_or_else(|| run_for(&job, st.executor.name()));
    if seq < run.agent_log_seq {
        return Ok(ims_core::job_wire::LogAck {
            next: run.agent_log_seq,
        });
    }
    if seq > run.agent_log_seq {
        return Err(Problem::new(
            409,
            format!(
                "Log chunk {seq} is out of order: the next expected is {}.",
                run.agent_log_seq
            ),
        )
        .into());
    }
    let run = store_chunk(st, &job, chunk, Some(seq)).await?;
    Ok(ims_core::job_wire::LogAck {
        next: run.agent_log_seq,
    })
}

/// Appends a line of the server's own to a job's log (why it ended the job, …).
pub async fn note(st: &AppState, job: &Job, line: &str) {
    let text = Bytes::from(format!("[ims] {line}\n"));
    if let Err(e) = store_chunk(st, job, text, None).await {
        tracing::warn!(job = %job.id, error = ?e, "could not add a note to the job's log");
    }
}

/// Stores one chunk at the next storage index and counts it (`agent_seq`: the agent's number,
/// advanced when the chunk is the one expected). Concurrent writers retry on the run's version.
async fn store_chunk(
    st: &AppState,
    job: &Job,
    chunk: Bytes,
    agent_seq: Option<u64>,
) -> ApiResult<JobRun> {
    let _turn = log_lock(&job.id).lock().await;
    retrying!(
        async {
            let cur = ims_store::get::<JobRun>(&*st.store, &job.id).await?;
            let (mut run, version) = match &cur {
                Some(Versioned { record, version }) => (record.clone(), Some(*version)),
                None => (run_for(job, st.executor.name()), None),
            };
            if let Some(s) = agent_seq
                && s != run.agent_log_seq
            {
                // A retry raced with the original: already stored.
                return Ok(run);
            }
            let data = if run.log_bytes >= MAX_LOG_BYTES {
                Bytes::new()
            } else if run.log_bytes + chunk.len() as u64 > MAX_LOG_BYTES {
                Bytes::from(format!(
                    "\n[ims] the log reached {MAX_LOG_BYTES} bytes; the rest is not kept\n"
                ))
            } else {
                chunk.clone()
            };
            let index = run.log_chunks;
            if !data.is_empty() {
                // Written before the count: a lost race rewrites the same index, never skips one.
                st.artifacts
                    .put_small(&log_location(st, &job.id, index)?, data.clone())
                    .await
                    .map_err(|e| {
                        Problem::internal(format!(
                            "The log could not be stored: {}",
                            artifact_detail(&e)
                        ))
                    })?;
                run.log_chunks += 1;
                run.log_bytes += data.len() as u64;
            }
            if agent_seq.is_some() {
                run.agent_log_seq += 1;
            }
            let op = match version {
                Some(v) => update_op(&run, v)?,
                None => insert_op(&run)?,
            };
            st.store.apply(vec![op]).await?;
            Ok::<_, ApiError>(run)
        }
        .await
    )
}

/// `GET /v3/jobs/{id}/log?offset=N`: the log from byte `offset` (at most 4 MiB per answer), as
/// text; the next offset and whether the job is over are in headers.
pub async fn read_log(st: &AppState, id: &str, offset: u64) -> ApiResult<Response> {
    let job = must_get::<Job>(&*st.store, id).await?.record;
    let run = ims_store::get::<JobRun>(&*st.store, id)
        .await?
        .map(|v| v.record);
    let chunks = run.as_ref().map_or(0, |r| r.log_chunks);
    let mut out = Vec::new();
    let mut pos = 0u64;
    for seq in 0..chunks {
        if out.len() as u64 >= MAX_LOG_READ {
            break;
        }
        let data = match st
            .artifacts
            .read_small(&log_location(st, id, seq)?, MAX_LOG_CHUNK as u64 + 1)
            .await
            .map_err(|e| {
                Problem::internal(format!(
                    "The log could not be read: {}",
                    artifact_detail(&e)
                ))
            })? {
            SmallRead::Data(d) => d,
            // Empty (dropped) chunks were never stored.
            SmallRead::NotFound | SmallRead::TooLarge(_) => continue,
        };
        let end = pos + data.len() as u64;
        if end > offset {
            let from = offset.saturating_sub(pos) as usize;
            let room = (MAX_LOG_READ - out.len() as u64) as usize;
            let part = &data[from..];
            out.extend_from_slice(&part[..part.len().min(room)]);
        }
        pos = end;
    }
    let next = offset.max(offset + out.len() as u64);
    let done = job.status.is_final() && next >= run.as_ref().map_or(0, |r| r.log_bytes);
    let mut resp = (StatusCode::OK, out).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(LOG_OFFSET_HEADER, HeaderValue::from(next));
    h.insert(
        LOG_DONE_HEADER,
        HeaderValue::from_static(if done { "true" } else { "false" }),
    );
    Ok(resp)
}

/// Removes a job's run state and log (with the job).
pub async fn forget(st: &AppState, id: &str) {
    let run = match ims_store::get::<JobRun>(&*st.store, id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "could not read the job's run state");
            return;
        }
    };
    if let Some(v) = run {
        for seq in 0..v.record.log_chunks {
            if let Ok(loc) = log_location(st, id, seq)
                && let Err(e) = st.artifacts.delete(&loc).await
            {
                tracing::warn!(job = %id, error = %e, "could not delete a log chunk");
            }
        }
        if let Err(e) = st.store.apply(vec![ims_store::delete_op(&v)]).await {
            tracing::warn!(job = %id, error = %e, "could not delete the job's run state");
        }
    }
}

/// Ends a job in `error` for a reason the server found (its agent is gone, its deadline passed):
/// the reason goes to the job's log and its run state. A job that already ended is left alone.
pub async fn fail(st: &AppState, job: &Job, reason: &str) {
    explain(st, job, reason).await;
    end_in_error(st, job).await;
}

/// Records why the server ends a job (log note and run state), before anything stops it, so the
/// reason is there by the time anyone sees the job in `error`.
async fn explain(st: &AppState, job: &Job, reason: &str) {
    tracing::warn!(job = %job.id, reason, "failing the job");
    note(st, job, &format!("error: {reason}")).await;
    if let Err(e) = update_run(st, job, |r| r.error = Some(reason.to_string())).await {
        tracing::warn!(job = %job.id, error = ?e, "could not record why the job failed");
    }
}

/// Sets a job's status to `error` unless it already ended.
async fn end_in_error(st: &AppState, job: &Job) {
    let r = retrying!(
        async {
            let Some(cur) = ims_store::get::<Job>(&*st.store, &job.id).await? else {
                return Ok(());
            };
            if cur.record.status.is_final() {
                return Ok(());
            }
            let mut j = cur.record.clone();
            j.status = JobStatus::Error;
            st.store.apply(vec![update_op(&j, cur.version)?]).await?;
            Ok::<_, ApiError>(())
        }
        .await
    );
    match r {
        Ok(()) => super::job_creds::ended(st, job).await,
        Err(e) => {
            tracing::error!(job = %job.id, error = ?e, "could not set the job's status to error")
        }
    }
}

/// One pass of the reconciler: jobs whose agent stopped heartbeating, or whose user did not finish
/// within the deadline, are stopped and end in `error`. Only for executors that supervise agents.
pub async fn reconcile(st: &AppState) {
    if !st.executor.supervises() {
        return;
    }
    let jobs = match ims_store::list::<Job>(&*st.store).await {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "reconciler: cannot list jobs");
            return;
        }
    };
    let now = Timestamp::now().0;
    let secs = |t: Timestamp| (now - t.0).num_seconds().max(0) as u64;
    for v in jobs {
        let job = v.record;
        if job.status.is_final() {
            continue;
        }
        let run = match ims_store::get::<JobRun>(&*st.store, &job.id).await {
            Ok(r) => r.map(|r| r.record),
            Err(_) => continue,
        };
        // A job waiting for a remote build node has no agent yet: the placement pass ends it
        // when it waited too long.
        if run
            .as_ref()
            .is_some_and(|r| r.placement_wait.is_some() && r.host.is_none())
        {
            continue;
        }
        // Silence counts from the agent's last heartbeat or its launch, whichever is later, and
        // from this server's start at the earliest: an agent that outlived a previous server
        // needs one heartbeat interval to reach this one.
        let last = run
            .as_ref()
            .and_then(|r| r.heartbeat.max(r.launched).or(Some(r.created)))
            .unwrap_or(job.created)
            .max(st.started);
        let silent = secs(last);
        let timeout = st.cfg.job_heartbeat_timeout.as_secs();
        let reason = if silent > timeout {
            let on = match run.as_ref() {
                Some(r) if r.executor == crate::executor::remote::EXECUTOR => r
                    .host
                    .as_deref()
                    .map(|x| format!(" on remote build node {x} (unreachable or stopped?)"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            Some(format!(
                "no heartbeat from the job agent{on} for {silent} s (limit {timeout} s)"
            ))
        } else {
            match run.as_ref().and_then(|r| r.waiting_since) {
                Some(since)
                    if job.status == JobStatus::WaitingOnUser
                        && secs(since) > st.cfg.job_user_deadline.as_secs() =>
                {
                    Some(format!(
                        "the user did not finish the session within the deadline of {} s",
                        st.cfg.job_user_deadline.as_secs()
                    ))
                }
                _ => None,
            }
        };
        if let Some(reason) = reason {
            // The reason first, then the status: the job ends now, whatever stopping its agent
            // takes (a node that vanished is found unreachable only after a connection time-out).
            // Its token dies with it, so the agent can change nothing after.
            explain(st, &job, &reason).await;
            end_in_error(st, &job).await;
            let (st, job) = (st.clone(), job.clone());
            tokio::spawn(async move {
                if let Err(e) = st.executor.stop(&executor_context(&st), &job).await {
                    tracing::error!(job = %job.id, error = %e, "reconciler: cannot stop the job");
                }
            });
        }
    }
}
