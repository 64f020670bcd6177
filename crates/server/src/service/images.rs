//! Images: create with manifest validation, PATCH (link, arch, metadata), hard delete with cascade
//! (v2), soft delete moving every artifact under `deleted/` (v3); the artifact work of deletes goes
//! through the [`journal`].

use super::artifacts::{ManifestRead, location, read_manifest, validate_image_link};
use super::journal::{self, Batch, Step, image_key};
use super::recipes::would_overwrite;
use super::{must_get, no_content, set_link_once, update};
use crate::error::ApiResult;
use crate::{Api, AppState, retrying};
use axum::response::Response;
use ims_artifacts::Location;
use ims_core::input::{self, MetadataOp};
use ims_core::manifest::MIME_MANIFEST;
use ims_core::{ArtifactLink, Deleted, Image, Problem, Timestamp};
use ims_store::{Versioned, delete_op, insert_op, list};
use serde_json::{Value, json};
use std::collections::HashSet;

pub async fn create(st: &AppState, body: Option<&Value>) -> ApiResult<Image> {
    let new = input::image_create(body)?;
    // A concurrent request that takes the same link first makes the insert fail on the unique
    // link index; the re-run then answers 422 from the check.
    retrying!(create_once(st, &new).await)
}

async fn create_once(st: &AppState, new: &input::NewImage) -> ApiResult<Image> {
    // A client-chosen id must be new, also among the deleted images (which may come back).
    if let Some(id) = &new.id
        && (ims_store::get::<Image>(&*st.store, id).await?.is_some()
            || ims_store::get::<Deleted<Image>>(&*st.store, id)
                .await?
                .is_some())
    {
        return Err(Problem::new(409, format!("An image with id {id} already exists.")).into());
    }
    if let Some(link) = &new.link {
        validate_image_link(st, link, None).await?;
    }
    let new = new.clone();
    let rec = Image {
        arch: new.arch,
        created: Timestamp::now(),
        id: new.id.unwrap_or_else(ims_core::new_id),
        link: new.link,
        metadata: new.metadata,
        name: new.name,
    };
    ims_store::insert(&*st.store, &rec).await?;
    Ok(rec)
}

async fn patch_once(st: &AppState, id: &str, p: &input::ImagePatch) -> ApiResult<Image> {
    // A new link is checked against the artifact store first (when the image has none); the
    // update itself runs under the record's lock, so concurrent PATCHes queue and all apply.
    let mut checked = false;
    if let Some(link) = &p.link
        && must_get::<Image>(&*st.store, id)
            .await?
            .record
            .link
            .is_none()
    {
        validate_image_link(st, link, Some(id)).await?;
        checked = true;
    }
    update(&*st.store, id, |mut rec: Image| {
        if let Some(link) = &p.link {
            set_link_once(&mut rec.link, link, checked)?;
        }
        if let Some(arch) = p.arch {
            rec.arch = arch;
        }
        match &p.metadata {
            Some(MetadataOp::Set { key, value }) => {
                rec.metadata.insert(key.clone(), value.clone());
            }
            Some(MetadataOp::Remove { key }) => {
                rec.metadata.remove(key);
            }
            None => {}
        }
        Ok(rec)
    })
    .await
}

pub async fn patch(st: &AppState, id: &str, body: Option<&Value>) -> ApiResult<Image> {
    must_get::<Image>(&*st.store, id).await?;
    let p = input::image_patch(body)?;
    // Re-run only when a link check went stale or a link index refused the write.
    retrying!(patch_once(st, id, &p).await)
}

/// One artifact entry of a manifest with a usable link: the entry, its link and its location.
pub struct Entry<'a> {
    pub entry: &'a Value,
    pub link: ArtifactLink,
    pub loc: Location,
}

/// The artifact entries a manifest lists; entries without a usable link are skipped (logged).
pub fn manifest_entries(v: &Value) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    for entry in v
        .get("artifacts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(link) = entry
            .get("link")
            .and_then(|l| serde_json::from_value::<ArtifactLink>(l.clone()).ok())
        else {
            continue;
        };
        match location(&link) {
            Ok(loc) => out.push(Entry { entry, link, loc }),
            Err(_) => tracing::warn!(path = %link.path, "skipping invalid artifact link"),
        }
    }
    out
}

/// v2 cascade: the deletes of every artifact the manifest lists, then of the manifest. A missing
/// manifest means there is nothing to cascade; an unreadable one is deleted, but no artifacts.
async fn plan_cascade(st: &AppState, link: &Option<ArtifactLink>) -> ApiResult<Vec<Step>> {
    let Some(link) = link else { return Ok(vec![]) };
    let Ok(mloc) = location(link) else {
        tracing::warn!(path = %link.path, "image link is not a valid artifact location; nothing to delete");
        return Ok(vec![]);
    };
    let mut steps = Vec::new();
    match read_manifest(st, &mloc).await? {
        ManifestRead::Missing => {
            tracing::warn!(path = %link.path, "image manifest missing; deleting the record only");
            return Ok(steps);
        }
        ManifestRead::Unreadable(why) => {
            tracing::warn!(path = %link.path, %why, "image manifest unreadable; deleting it but no artifacts");
        }
        ManifestRead::Json(v) => {
            for e in manifest_entries(&v) {
                steps.push(Step::Delete {
                    path: e.loc.s3_url(),
                });
            }
        }
    }
    steps.push(Step::Delete {
        path: mloc.s3_url(),
    });
    Ok(steps)
}

/// Where an image's deleted manifest lives.
pub fn deleted_manifest_location(st: &AppState, image_id: &str) -> ApiResult<Location> {
    Location::new(
        &st.cfg.boot_images_bucket,
        &format!("deleted/{image_id}/deleted_manifest.json"),
    )
    .map_err(|e| Problem::internal(format!("invalid boot-images bucket: {e}")).into())
}

/// The link of a moved artifact in a deleted manifest (its ETag is filled in once it has moved).
fn moved_link(to: &Location) -> Value {
    json!(ArtifactLink::s3(to.s3_url(), ""))
}

/// v3 soft delete of the artifacts, planned: each listed artifact and the manifest move under
/// `deleted/`, and a `deleted_manifest.json` records where they went. Returns the deleted record's
/// link and the steps; 409 (nothing planned) if a move would overwrite an object under `deleted/`.
async fn plan_soft_delete(
    st: &AppState,
    rec: &Image,
    deleted: Timestamp,
) -> ApiResult<(Option<ArtifactLink>, Vec<Step>)> {
    let Some(link) = &rec.link else {
        return Ok((None, vec![]));
    };
    let Ok(mloc) = location(link) else {
        return Ok((rec.link.clone(), vec![]));
    };
    let manifest = match read_manifest(st, &mloc).await? {
        ManifestRead::Json(v) if v.get("artifacts").is_some_and(Value::is_array) => v,
        _ => {
            tracing::warn!(path = %link.path, "image manifest missing or unreadable; soft delete keeps the link");
            return Ok((rec.link.clone(), vec![]));
        }
    };
    // Check first that no move would overwrite an object already under deleted/ (left by another
    // deleted image when keys were reused): nothing changes if one would.
    let listed = manifest_entries(&manifest);
    for from in listed.iter().map(|e| &e.loc).chain([&mloc]) {
        let to = from.deleted();
        if st.artifacts.head(&to).await?.is_some() && st.artifacts.head(from).await?.is_some() {
            return Err(would_overwrite(&rec.id, &to));
        }
    }
    let mut steps = Vec::with_capacity(listed.len() + 2);
    let mut entries = Vec::with_capacity(listed.len() + 1);
    for Entry { entry, loc, .. } in listed {
        let to = loc.deleted();
        let mut e = entry.clone();
        e["link"] = moved_link(&to);
        entries.push(e);
        steps.push(Step::Move {
            from: loc.s3_url(),
            to: to.s3_url(),
        });
    }
    let to = mloc.deleted();
    entries.push(json!({"type": MIME_MANIFEST, "link": moved_link(&to)}));
    steps.push(Step::Move {
        from: mloc.s3_url(),
        to: to.s3_url(),
    });
    let dloc = deleted_manifest_location(st, &rec.id)?;
    steps.push(Step::DeletedManifest {
        path: dloc.s3_url(),
        created: deleted.to_manifest_form(),
        entries,
    });
    Ok((Some(ArtifactLink::s3(dloc.s3_url(), "")), steps))
}

/// Deletes (v2, optionally with the artifacts) or soft-deletes (v3) the images: the record changes
/// and the artifact work they imply are committed together, then the work is done (see
/// [`journal`]).
async fn delete_many_once(
    st: &AppState,
    api: Api,
    targets: Vec<Versioned<Image>>,
    cascade: bool,
) -> ApiResult<()> {
    let keys: HashSet<String> = targets.iter().map(|t| image_key(&t.record.id)).collect();
    journal::settle(st, &keys).await?;
    let mut ops = Vec::with_capacity(targets.len() * 3);
    let mut batch = Batch::default();
    let now = Timestamp::now();
    for cur in &targets {
        let id = &cur.record.id;
        match api {
            Api::V2 => {
                let steps = if cascade {
                    plan_cascade(st, &cur.record.link).await?
                } else {
                    vec![]
                };
                batch.add(st, image_key(id), format!("delete of image {id}"), steps)?;
                ops.push(delete_op(cur));
            }
            Api::V3 => {
                let (link, steps) = plan_soft_delete(st, &cur.record, now).await?;
                batch.add(
                    st,
                    image_key(id),
                    format!("soft delete of image {id}"),
                    steps,
                )?;
                let mut record = cur.record.clone();
                record.link = link;
                ops.push(delete_op(cur));
                ops.push(insert_op(&Deleted {
                    record,
                    deleted: now,
                })?);
            }
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    ops.extend(batch.ops());
    st.store.apply(ops).await?;
    batch.complete(st).await
}

pub async fn delete_one(st: &AppState, api: Api, id: &str, cascade: bool) -> ApiResult<Response> {
    retrying!(
        async {
            let cur = must_get::<Image>(&*st.store, id).await?;
            delete_many_once(st, api, vec![cur], cascade).await
        }
        .await
    )?;
    Ok(no_content())
}

pub async fn delete_all(st: &AppState, api: Api, cascade: bool) -> ApiResult<Response> {
    retrying!(
        async {
            let all = list::<Image>(&*st.store).await?;
            delete_many_once(st, api, all, cascade).await
        }
        .await
    )?;
    Ok(no_content())
}
