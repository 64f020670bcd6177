//! What a job's agent may touch, beyond its own job record (docs/architecture.md, "Job
//! credentials"):
//!
//! * **Its new image's id** is chosen by the server, once, the first time the agent asks STS for
//!   credentials, and kept in the job's run state ([`JobRun::image_id`]), so a restarted server or
//!   another replica answers the same. The agent writes the image under `<boot-images>/<id>/` and
//!   registers it with that id.
//! * **Its S3 scope** ([`scope`]): read the source (a customize job: the image's manifest and every
//!   artifact it lists; a create job: the recipe's archive), write below its new image's prefix.
//! * **Its registration** ([`check_registration`]): `POST /images` with a job token must carry that
//!   id and a manifest link below that prefix, and only while the job has no result yet.
//! * **Its end** ([`ended`]): when the job reaches `success`/`error` the time is recorded (its token's
//!   grace period counts from it) and every S3 credential issued to it is revoked; deleting the job
//!   revokes them too ([`revoke`]).

use super::artifacts::{ManifestRead, location, read_manifest};
use super::images::manifest_entries;
use super::job_runs::update_run;
use crate::AppState;
use crate::error::ApiResult;
use crate::sts::JobScope;
use ims_core::{Image, Job, JobRun, Problem, Recipe, Timestamp};
use serde_json::Value;

/// The id chosen for job `job_id`'s new image, if one was.
pub async fn chosen_image_id(st: &AppState, job_id: &str) -> ApiResult<Option<String>> {
    Ok(ims_store::get::<JobRun>(&*st.store, job_id)
        .await?
        .and_then(|r| r.record.image_id))
}

/// The id of the job's new image: the one already chosen, or a new one (kept in its run state).
pub async fn image_id(st: &AppState, job: &Job) -> ApiResult<String> {
    if let Some(id) = chosen_image_id(st, &job.id).await? {
        return Ok(id);
    }
    let fresh = ims_core::new_id();
    let run = update_run(st, job, |r| {
        if r.image_id.is_none() {
            r.image_id = Some(fresh.clone());
        }
    })
    .await?;
    run.image_id
        .ok_or_else(|| Problem::internal("The job's image id was not recorded.").into())
}

/// What the job may touch in S3. A source that is gone by now (deleted while a customize session
/// ran: packaging needs only the write grant) grants nothing to read.
pub async fn scope(st: &AppState, job: &Job, image_id: &str) -> ApiResult<JobScope> {
    let mut read = vec![];
    if job.job_type == ims_core::JobType::Create {
        let recipe = ims_store::get::<Recipe>(&*st.store, &job.artifact_id).await?;
        if let Some(link) = recipe.and_then(|r| r.record.link)
            && let Ok(loc) = location(&link)
        {
            read.push((loc.bucket, loc.key));
        }
    } else {
        let image = ims_store::get::<Image>(&*st.store, &job.artifact_id).await?;
        if let Some(link) = image.and_then(|i| i.record.link)
            && let Ok(loc) = location(&link)
        {
            if let ManifestRead::Json(v) = read_manifest(st, &loc).await? {
                for e in manifest_entries(&v) {
                    read.push((e.loc.bucket, e.loc.key));
                }
            }
            read.push((loc.bucket, loc.key));
        }
    }
    Ok(JobScope {
        job_id: job.id.clone(),
        read,
        write_bucket: st.cfg.boot_images_bucket.clone(),
        write_prefix: format!("{image_id}/"),
    })
}

/// `POST /images` from a job's agent: only its one new image, with the id the server chose and a
/// manifest below that image's prefix, while the job has no result yet. 403 otherwise.
pub async fn check_registration(
    st: &AppState,
    job_id: &str,
    body: Option<&Value>,
) -> ApiResult<()> {
    let refuse = |why: String| -> crate::error::ApiError {
        Problem::new(
            403,
            format!("Job {job_id} may not register this image: {why}."),
        )
        .into()
    };
    let Some(job) = ims_store::get::<Job>(&*st.store, job_id).await? else {
        return Err(refuse("the job no longer exists".into()));
    };
    if job.record.resultant_image_id.is_some() {
        return Err(refuse("the job already has its resultant image".into()));
    }
    let Some(want) = chosen_image_id(st, job_id).await? else {
        return Err(refuse(
            "no image id was chosen for it (it asks STS for credentials first)".into(),
        ));
    };
    let id = body.and_then(|b| b.get("id")).and_then(Value::as_str);
    if id != Some(want.as_str()) {
        return Err(refuse(format!("its image's id is {want}")));
    }
    let prefix = format!("s3://{}/{want}/", st.cfg.boot_images_bucket);
    let link = body
        .and_then(|b| b.pointer("/link/path"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !link.starts_with(&prefix)
        || link[prefix.len()..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(refuse(format!("its manifest must be below {prefix}")));
    }
    // What the manifest lists must be the job's own objects too: an image's artifacts are read by
    // later jobs (their read grants) and moved or deleted with it (soft delete, v2 cascade).
    let link: ims_core::ArtifactLink = body
        .and_then(|b| b.get("link"))
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .ok_or_else(|| refuse("its link is not an artifact link".into()))?;
    let mloc = location(&link)?;
    if let ManifestRead::Json(v) = read_manifest(st, &mloc).await? {
        let listed = v
            .get("artifacts")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let entries = manifest_entries(&v);
        let own = |e: &super::images::Entry| {
            e.loc.bucket == st.cfg.boot_images_bucket && e.loc.key.starts_with(&format!("{want}/"))
        };
        if entries.len() != listed || !entries.iter().all(own) {
            return Err(refuse(format!(
                "every artifact its manifest lists must be below {prefix}"
            )));
        }
    }
    Ok(())
}

/// `PATCH /jobs/{id}` from the job's own agent: a `resultant_image_id` must be the image the server
/// chose for it (403 otherwise).
pub async fn check_result(st: &AppState, job_id: &str, body: Option<&Value>) -> ApiResult<()> {
    let Some(given) = body.and_then(|b| b.get("resultant_image_id")) else {
        return Ok(());
    };
    let want = chosen_image_id(st, job_id).await?;
    if want.is_some() && given.as_str() == want.as_deref() {
        return Ok(());
    }
    Err(Problem::new(
        403,
        format!("Job {job_id} may record only its own new image as its result."),
    )
    .into())
}

/// The job reached `success` or `error`: records when (once) and revokes its S3 credentials.
pub async fn ended(st: &AppState, job: &Job) {
    revoke(st, &job.id);
    let now = Timestamp::now();
    if let Err(e) = update_run(st, job, |r| {
        if r.ended.is_none() {
            r.ended = Some(now);
        }
    })
    .await
    {
        tracing::warn!(job = %job.id, error = ?e, "could not record when the job ended");
    }
}

/// Voids the S3 credentials issued to a job (it ended or was deleted).
pub fn revoke(st: &AppState, job_id: &str) {
    if let Some(sts) = &st.sts {
        sts.revoke_job(job_id);
    }
}
