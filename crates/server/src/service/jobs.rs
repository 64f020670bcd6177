//! Jobs: creation with the original's validation order and defaults, PATCH by job agents, delete
//! (one, or filtered by status/type/age). Creation and deletion go through the executor seam.

use super::artifacts::{ManifestRead, read_manifest, require_object};
use super::{must_get, no_content, update};
use crate::error::{ApiError, ApiResult};
use crate::executor::ExecutorError;
use crate::{AppState, retrying};
use axum::response::Response;
use ims_core::input::{self, NewJob};
use ims_core::manifest::job_rootfs;
use ims_core::{
    Arch, ConnectionInfo, Image, Job, JobStatus, JobType, Problem, PublicKey, Recipe, SshContainer,
    SshStatus, Timestamp,
};
use ims_store::{Op, delete_op, list};
use serde_json::Value;
use std::collections::BTreeMap;

/// A job's external SSH host name, as the original publishes it (external-dns):
/// `<id>.ims.<subnet>.<domain>`.
pub fn customer_access_host(c: &crate::ServiceConfig, id: &str) -> String {
    format!(
        "{id}.ims.{}.{}",
        c.customer_access_subnet, c.customer_access_domain
    )
}

/// A job Service's DNS name inside the cluster.
pub fn cluster_host(c: &crate::ServiceConfig, service: &str) -> String {
    format!("{service}.{}.svc.cluster.local", c.job_namespace)
}

/// The connection info the original fills in at creation (external and in-cluster names, port 22).
fn connection_info(st: &AppState, id: &str, service: &str) -> BTreeMap<String, ConnectionInfo> {
    let c = &st.cfg;
    BTreeMap::from([
        (
            ims_core::CUSTOMER_ACCESS.to_string(),
            ConnectionInfo {
                host: customer_access_host(c, id),
                port: 22,
            },
        ),
        (
            ims_core::CLUSTER_LOCAL.to_string(),
            ConnectionInfo {
                host: cluster_host(c, service),
                port: 22,
            },
        ),
    ])
}

/// Builds the job record; every check of §3.4 in the original's order (the agent reads what it
/// needs through the API itself).
async fn prepare(st: &AppState, new: NewJob) -> ApiResult<Job> {
    let job_type = new.job_type;
    let is_create = job_type == JobType::Create;
    let containers = new.ssh_containers.clone().unwrap_or_default();
    if is_create && !containers.is_empty() {
        return Err(Problem::bad_request(
            "ssh_containers may not be specified for create jobs; use enable_debug for a debug shell.",
        )
        .into());
    }
    if containers.len() > input::MAX_SSH_CONTAINERS {
        return Err(Problem::bad_request("Only one ssh container is supported per job.").into());
    }
    let invalid_artifact = || {
        ApiError::Problem(Problem::bad_request(format!(
            "Invalid artifact_id: no {} with id {} exists.",
            if is_create { "recipe" } else { "image" },
            new.artifact_id
        )))
    };
    // The artifact: recipe (create) or image (customize), which must have a link that exists.
    let (arch, link, recipe_dkms) = if is_create {
        let r = ims_store::get::<Recipe>(&*st.store, &new.artifact_id)
            .await?
            .ok_or_else(invalid_artifact)?
            .record;
        (r.arch, r.link, Some(r.require_dkms))
    } else {
        let i = ims_store::get::<Image>(&*st.store, &new.artifact_id)
            .await?
            .ok_or_else(invalid_artifact)?
            .record;
        (i.arch, i.link, None)
    };
    let link = link.ok_or_else(|| {
        Problem::bad_request(format!(
            "The artifact {} has no link to an artifact in S3.",
            new.artifact_id
        ))
    })?;
    // The artifact to fetch must exist: the recipe tarball (create), or the manifest and the
    // rootfs it names (customize).
    let loc = require_object(st, &link).await?;
    if !is_create {
        let v = match read_manifest(st, &loc).await? {
            ManifestRead::Json(v) => v,
            ManifestRead::Missing => return Err(super::artifacts::cannot_validate(&link.path)),
            ManifestRead::Unreadable(why) => {
                return Err(Problem::bad_request(format!(
                    "The manifest {} cannot be read: {why}.",
                    link.path
                ))
                .into());
            }
        };
        let rootfs = job_rootfs(&v)?;
        require_object(st, &rootfs.link).await?;
    }
    let key = ims_store::get::<PublicKey>(&*st.store, &new.public_key_id)
        .await?
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "Invalid public_key_id: no public key with id {} exists.",
                new.public_key_id
            ))
        })?
        .record;
    // A key that is not one OpenSSH public key (stored before keys were checked, or migrated from
    // the original, which never checked them) would give a session nobody can log in to.
    if let Err(e) = ims_core::sshkey::check_public_key(&key.public_key) {
        return Err(Problem::bad_request(format!(
            "Invalid public_key_id: the public key {} is not an OpenSSH public key ({e}); register a valid one.",
            new.public_key_id
        ))
        .into());
    }

    // require_dkms: aarch64 always; else the client's value; else the recipe's (create) or the
    // service default (customize).
    let require_dkms = if arch == Arch::Aarch64 {
        true
    } else {
        new.require_dkms
            .or(recipe_dkms)
            .unwrap_or(st.cfg.job_enable_dkms)
    };
    let kernel_file_name = match new.kernel_file_name.as_deref() {
        None | Some("") => arch.default_kernel_file_name().to_string(),
        Some(k) => k.to_string(),
    };
    let id = ims_core::new_id();
    let suffix = job_type.as_str();
    let service = format!("cray-ims-{id}-service");
    let ssh_containers = if is_create {
        new.enable_debug.then(|| {
            vec![SshContainer {
                connection_info: connection_info(st, &id, &service),
                jail: false,
                name: "debug".into(),
                status: SshStatus::Pending,
            }]
        })
    } else {
        let c = containers.into_iter().next();
        Some(vec![SshContainer {
            connection_info: connection_info(st, &id, &service),
            jail: c.as_ref().is_some_and(|c| c.jail),
            name: c.and_then(|c| c.name).unwrap_or_else(|| "customize".into()),
            status: SshStatus::Pending,
        }])
    };
    let job = Job {
        arch,
        artifact_id: new.artifact_id,
        build_env_size: new.build_env_size.unwrap_or(st.cfg.default_image_size),
        created: Timestamp::now(),
        enable_debug: new.enable_debug,
        id: id.clone(),
        image_root_archive_name: new.image_root_archive_name,
        initrd_file_name: new.initrd_file_name,
        job_mem_size: new.job_mem_size.unwrap_or(st.cfg.default_job_mem_size),
        job_type,
        kernel_file_name,
        kernel_parameters_file_name: new.kernel_parameters_file_name,
        kubernetes_configmap: Some(format!("cray-ims-{id}-configmap")),
        kubernetes_job: Some(format!("cray-ims-{id}-{suffix}")),
        kubernetes_namespace: st.cfg.job_namespace.clone(),
        kubernetes_pvc: Some(format!("cray-ims-{id}-job-claim")),
        kubernetes_secret: None,
        kubernetes_service: Some(service),
        public_key_id: new.public_key_id,
        remote_build_node: String::new(),
        require_dkms,
        resultant_image_id: None,
        ssh_containers,
        status: JobStatus::Creating,
    };
    Ok(job)
}

pub async fn create(st: &AppState, body: Option<&Value>) -> ApiResult<Job> {
    let new = input::job_create(body)?;
    // A host that cannot run the job refuses it before anything else is looked at or stored.
    let job_type = new.job_type;
    let session = job_type == JobType::Customize || new.enable_debug;
    let cx = super::job_runs::executor_context(st);
    if let Some(why) = st.executor.cannot_run(&cx, job_type, None, session).await {
        return Err(Problem::new(503, format!("{why}. Nothing was stored.")).into());
    }
    let job = prepare(st, new).await?;
    // Then what depends on the artifact's architecture.
    if let Some(why) = st
        .executor
        .cannot_run(&cx, job_type, Some(job.arch), session)
        .await
    {
        return Err(Problem::new(503, format!("{why}. Nothing was stored.")).into());
    }
    // Record first, then start: a job that runs always has a record; a start failure removes it.
    ims_store::insert(&*st.store, &job).await?;
    if let Err(e) = st.executor.start(&cx, &job).await {
        tracing::error!(job = %job.id, error = %e, "executor could not start job");
        let _ = st
            .store
            .apply(vec![Op::Delete {
                table: ims_core::Table::Jobs,
                id: job.id.clone(),
                version: None,
            }])
            .await;
        return Err(Problem::internal(format!(
            "The job could not be started by the {} executor (the reason is in the server's log).",
            st.executor.name()
        ))
        .into());
    }
    // As stored now: the executor may have placed it (`remote_build_node`).
    Ok(ims_store::get::<Job>(&*st.store, &job.id)
        .await?
        .map_or(job, |v| v.record))
}

/// A 500 for an executor that failed on job `id`: the executor's message (which may name the
/// server's paths) goes to the log, the answer says what happened and where to look.
fn executor_failed(id: &str, e: &ExecutorError, what: String) -> ApiError {
    tracing::error!(job = %id, error = %e, "{what}");
    Problem::internal(format!("{what} (the reason is in the server's log)."))
        .with_errors(serde_json::json!([format!("executor: {what}")]))
        .into()
}

async fn patch_once(st: &AppState, id: &str, p: &input::JobPatch) -> ApiResult<Job> {
    update(&*st.store, id, |mut job: Job| {
        if let Some(s) = p.status {
            job.status = s;
        }
        if let Some(r) = &p.resultant_image_id {
            job.resultant_image_id = Some(r.clone());
        }
        Ok(job)
    })
    .await
}

pub async fn patch(st: &AppState, id: &str, body: Option<&Value>) -> ApiResult<Job> {
    must_get::<Job>(&*st.store, id).await?;
    let p = input::job_patch(body)?;
    let job = patch_once(st, id, &p).await?;
    if job.status.is_final() {
        super::job_creds::ended(st, &job).await;
    }
    if p.status.is_some_and(JobStatus::is_final)
        && let Err(e) = st
            .executor
            .finished(&super::job_runs::executor_context(st), &job)
            .await
    {
        return Err(executor_failed(
            id,
            &e,
            format!("Job {id} was updated but its resources could not be released"),
        ));
    }
    Ok(job)
}

pub async fn delete_one(st: &AppState, id: &str) -> ApiResult<Response> {
    let cur = must_get::<Job>(&*st.store, id).await?;
    super::job_creds::revoke(st, id);
    if let Err(e) = st
        .executor
        .stop(&super::job_runs::executor_context(st), &cur.record)
        .await
    {
        return Err(executor_failed(
            id,
            &e,
            format!("Job {id} could not be stopped; its record was kept"),
        ));
    }
    retrying!(
        async {
            match ims_store::get::<Job>(&*st.store, id).await? {
                Some(cur) => st
                    .store
                    .apply(vec![delete_op(&cur)])
                    .await
                    .map_err(ApiError::from),
                None => Ok(()),
            }
        }
        .await
    )?;
    // Again once the record is gone: credentials STS issued while the job was being stopped
    // (its re-check still found the record) die too.
    super::job_creds::revoke(st, id);
    super::job_runs::forget(st, id).await;
    Ok(no_content())
}

/// The filters of a job-collection DELETE.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JobFilter {
    pub statuses: Vec<JobStatus>,
    pub job_type: Option<JobType>,
    pub age_seconds: Option<i64>,
}

/// Parses `status` (repeatable), `job_type` and `age` from a raw query string (400 on bad values).
pub fn parse_filter(query: Option<&str>) -> ApiResult<JobFilter> {
    let mut f = JobFilter::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            k if k == input::JOB_STATUS.name => f.statuses.push(input::JOB_STATUS.choice(&v)?),
            k if k == input::JOB_TYPE.name => f.job_type = Some(input::JOB_TYPE.choice(&v)?),
            k if k == input::JOB_AGE.name => f.age_seconds = Some(input::JOB_AGE.age(&v)?),
            _ => {}
        }
    }
    Ok(f)
}

impl JobFilter {
    pub fn matches(&self, job: &Job, now: Timestamp) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&job.status))
            && self.job_type.is_none_or(|t| t == job.job_type)
            && self
                .age_seconds
                .is_none_or(|age| (now.0 - job.created.0).num_seconds() >= age)
    }
}

/// DELETE on the job collection: every matching job is stopped and removed; jobs whose executor
/// cleanup failed are kept and reported (500 with `errors`).
pub async fn delete_filtered(st: &AppState, query: Option<&str>) -> ApiResult<Response> {
    let filter = parse_filter(query)?;
    let now = Timestamp::now();
    let selected: Vec<_> = list::<Job>(&*st.store)
        .await?
        .into_iter()
        .filter(|j| filter.matches(&j.record, now))
        .collect();
    let mut errors = Vec::new();
    let mut ops = Vec::new();
    let cx = super::job_runs::executor_context(st);
    for j in &selected {
        super::job_creds::revoke(st, &j.record.id);
        match st.executor.stop(&cx, &j.record).await {
            Ok(()) => ops.push(Op::Delete {
                table: ims_core::Table::Jobs,
                id: j.record.id.clone(),
                version: None,
            }),
            Err(e) => {
                tracing::error!(job = %j.record.id, error = %e, "job could not be stopped; its record was kept");
                errors.push(Value::String(format!(
                    "{}: could not be stopped (the reason is in the server's log)",
                    j.record.id
                )))
            }
        }
    }
    // Delete what is still there (a concurrent delete of one job must not keep the others).
    for op in ops {
        let id = match &op {
            Op::Delete { id, .. } => id.clone(),
            _ => String::new(),
        };
        match st.store.apply(vec![op]).await {
            Ok(()) | Err(ims_store::StoreError::Conflict) => {
                // As in `delete_one`: what STS issued during the stop dies with the record.
                super::job_creds::revoke(st, &id);
                super::job_runs::forget(st, &id).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !errors.is_empty() {
        return Err(
            Problem::internal("Some jobs could not be stopped; their records were kept.")
                .with_errors(Value::Array(errors))
                .into(),
        );
    }
    Ok(no_content())
}
