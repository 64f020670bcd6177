//! `/v3/deleted/{public-keys,recipes,images}`: undelete (PATCH) and permanent delete (DELETE),
//! single or whole collection. Collection operations validate everything first and change the records
//! in one transaction: all or nothing.

use super::artifacts::{ManifestRead, location, read_manifest};
use super::images::{Entry, MoveLog, manifest_entries};
use super::{must_get, no_content};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, retrying};
use axum::response::Response;
use ims_artifacts::Location;
use ims_core::manifest::MIME_MANIFEST;
use ims_core::{
    ArtifactLink, Deleted, DeletedImage, DeletedPublicKey, DeletedRecipe, Image, Problem,
    PublicKey, Recipe, Record, input,
};
use ims_store::{Op, Versioned, delete_op, insert_op, list};
use serde_json::Value;
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PublicKeys,
    Recipes,
    Images,
}

impl Kind {
    pub fn table(self) -> ims_core::Table {
        match self {
            Kind::PublicKeys => ims_core::Table::DeletedPublicKeys,
            Kind::Recipes => ims_core::Table::DeletedRecipes,
            Kind::Images => ims_core::Table::DeletedImages,
        }
    }
}

/// Targets: one id, or the whole collection.
async fn targets<T: Record>(st: &AppState, id: Option<&str>) -> ApiResult<Vec<Versioned<T>>> {
    match id {
        Some(id) => Ok(vec![must_get::<T>(&*st.store, id).await?]),
        None => Ok(list::<T>(&*st.store).await?),
    }
}

/// Refuses to restore over an active record with the same id.
async fn not_active<T: Record>(st: &AppState, id: &str) -> ApiResult<()> {
    if st.store.get(T::TABLE, id).await?.is_some() {
        return Err(Problem::new(
            409,
            format!("An active record with id {id} already exists; it was not overwritten."),
        )
        .into());
    }
    Ok(())
}

/// The deleted manifest of a deleted image, if its link points at one.
fn deleted_manifest_loc(link: &Option<ArtifactLink>) -> Option<Location> {
    let loc = location(link.as_ref()?).ok()?;
    loc.key.starts_with("deleted/").then_some(loc)
}

/// Reads a deleted manifest for undelete: it must exist and list its artifacts (422 otherwise).
async fn require_deleted_manifest(st: &AppState, id: &str, loc: &Location) -> ApiResult<Value> {
    match read_manifest(st, loc).await? {
        ManifestRead::Json(v) if v.get("artifacts").is_some_and(Value::is_array) => Ok(v),
        ManifestRead::Json(_) => Err(Problem::unprocessable(format!(
            "The deleted manifest of image {id} ({loc}) has no artifacts list."
        ))
        .into()),
        ManifestRead::Missing => Err(Problem::unprocessable(format!(
            "The deleted manifest of image {id} ({loc}) does not exist."
        ))
        .into()),
        ManifestRead::Unreadable(why) => Err(Problem::unprocessable(format!(
            "The deleted manifest of image {id} ({loc}) cannot be read: {why}."
        ))
        .into()),
    }
}

/// A restore would overwrite an object that appeared where the artifact used to be.
fn would_overwrite(id: &str, to: &Location) -> ApiError {
    Problem::new(
        409,
        format!(
            "Record {id} was not restored: {to} exists, and restoring would overwrite it. Remove that object or permanently delete the record."
        ),
    )
    .into()
}

/// The link a restored record would take is now used by an active record.
fn link_taken(id: &str, path: &str) -> ApiError {
    Problem::new(
        409,
        format!(
            "Record {id} was not restored: its artifact {path} is now used by another active record (or by another record of this request)."
        ),
    )
    .into()
}

/// How one record would be restored: its id, the link path it would have, and the moves back.
type RestorePlan = (String, Option<String>, Vec<(Location, Location)>);

/// Checks that restoring records with these links (and these moves) changes nobody else's data:
/// no active record uses the link (nor does another record of the same batch), and no object sits
/// where a moved artifact would land. (A concurrent request taking the same link between this check
/// and the write loses at the database's unique index on link paths and is re-run.)
async fn check_restore(
    st: &AppState,
    table: ims_core::Table,
    plans: &[RestorePlan],
) -> ApiResult<()> {
    let mut seen = HashSet::new();
    for (id, path, moves) in plans {
        if let Some(path) = path
            && (!seen.insert(path.clone()) || st.store.link_in_use(table, path, None).await?)
        {
            return Err(link_taken(id, path));
        }
        for (_, to) in moves {
            if st.artifacts.head(to).await?.is_some() {
                return Err(would_overwrite(id, to));
            }
        }
    }
    Ok(())
}

/// The moves that restoring a deleted artifact link implies: only objects that exist under
/// `deleted/` move back.
async fn restore_move(st: &AppState, from: Location) -> ApiResult<Option<(Location, Location)>> {
    let Some(to) = from.undeleted() else {
        return Ok(None);
    };
    Ok(st.artifacts.head(&from).await?.map(|_| (from, to)))
}

async fn undelete_once(st: &AppState, kind: Kind, id: Option<&str>) -> ApiResult<()> {
    let mut ops: Vec<Op> = Vec::new();
    let mut log = MoveLog::default();
    let mut cleanup: Vec<Location> = Vec::new();
    match kind {
        Kind::PublicKeys => {
            for d in targets::<DeletedPublicKey>(st, id).await? {
                not_active::<PublicKey>(st, &d.record.record.id).await?;
                ops.push(delete_op(&d));
                ops.push(insert_op(&d.record.record)?);
            }
        }
        Kind::Recipes => {
            let all = targets::<DeletedRecipe>(st, id).await?;
            // Plan and check every record first: nothing moves unless all can be restored.
            let mut plans = Vec::with_capacity(all.len());
            for d in &all {
                let rec = &d.record.record;
                not_active::<Recipe>(st, &rec.id).await?;
                let mv = match rec.link.as_ref().and_then(|l| location(l).ok()) {
                    Some(from) => restore_move(st, from).await?,
                    None => None,
                };
                let path = match &mv {
                    Some((_, to)) => Some(to.s3_url()),
                    None => rec.link.as_ref().map(|l| l.path.clone()),
                };
                plans.push((rec.id.clone(), path, mv.into_iter().collect::<Vec<_>>()));
            }
            check_restore(st, ims_core::Table::Recipes, &plans).await?;
            for (d, (_, _, moves)) in all.into_iter().zip(plans) {
                let mut rec = d.record.record.clone();
                for (from, to) in moves {
                    match st.artifacts.rename(&from, &to).await {
                        Ok(Some(info)) => {
                            rec.link = Some(ArtifactLink::s3(to.s3_url(), info.etag));
                            log.moves.push((to, from));
                        }
                        Ok(None) => {
                            tracing::warn!(path = %from, "deleted recipe artifact missing; link kept")
                        }
                        Err(e) => {
                            log.undo(st).await;
                            return Err(e.into());
                        }
                    }
                }
                ops.push(delete_op(&d));
                ops.push(insert_op(&rec)?);
            }
        }
        Kind::Images => {
            let all = targets::<DeletedImage>(st, id).await?;
            // Validate every record first: nothing moves unless all can be restored.
            let mut manifests = Vec::with_capacity(all.len());
            let mut plans = Vec::with_capacity(all.len());
            for d in &all {
                let rec = &d.record.record;
                not_active::<Image>(st, &rec.id).await?;
                let Some(loc) = deleted_manifest_loc(&rec.link) else {
                    manifests.push(None);
                    plans.push((
                        rec.id.clone(),
                        rec.link.as_ref().map(|l| l.path.clone()),
                        vec![],
                    ));
                    continue;
                };
                let v = require_deleted_manifest(st, &rec.id, &loc).await?;
                // Every listed artifact that still exists under deleted/ moves back; the restored
                // manifest becomes the record's link.
                let mut moves = Vec::new();
                let mut path = None;
                for Entry { entry, link, loc } in manifest_entries(&v) {
                    let Some((from, to)) = restore_move(st, loc).await? else {
                        tracing::warn!(path = %link.path, "deleted image artifact missing; skipped");
                        continue;
                    };
                    if entry.get("type").and_then(Value::as_str) == Some(MIME_MANIFEST) {
                        path = Some(to.s3_url());
                    }
                    moves.push((from, to));
                }
                manifests.push(Some((loc, v)));
                plans.push((rec.id.clone(), path, moves));
            }
            check_restore(st, ims_core::Table::Images, &plans).await?;
            for ((d, m), (_, path, moves)) in all.into_iter().zip(manifests).zip(plans) {
                let mut rec = d.record.record.clone();
                if let Some((dloc, _)) = m {
                    let mut new_link = None;
                    for (from, to) in moves {
                        match st.artifacts.rename(&from, &to).await {
                            Ok(Some(info)) => {
                                if path.as_deref() == Some(to.s3_url().as_str()) {
                                    new_link = Some(ArtifactLink::s3(to.s3_url(), info.etag));
                                }
                                log.moves.push((to, from));
                            }
                            Ok(None) => {
                                tracing::warn!(path = %from, "deleted image artifact missing; skipped")
                            }
                            Err(e) => {
                                tracing::error!(path = %from, error = %e, "could not restore image artifact")
                            }
                        }
                    }
                    rec.link = new_link;
                    cleanup.push(dloc);
                }
                ops.push(delete_op(&d));
                ops.push(insert_op(&rec)?);
            }
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    if let Err(e) = st.store.apply(ops).await {
        log.undo(st).await;
        return Err(e.into());
    }
    for loc in cleanup {
        if let Err(e) = st.artifacts.delete(&loc).await {
            tracing::error!(path = %loc, error = %e, "could not remove deleted manifest");
        }
    }
    Ok(())
}

/// PATCH `{"operation": "undelete"}` on one deleted record (`id`) or the whole collection.
pub async fn undelete(
    st: &AppState,
    kind: Kind,
    id: Option<&str>,
    body: Option<&Value>,
) -> ApiResult<Response> {
    if let Some(id) = id {
        st.store
            .get(kind.table(), id)
            .await?
            .ok_or_else(Problem::not_found)?;
    }
    input::undelete(body)?;
    retrying!(undelete_once(st, kind, id).await)?;
    Ok(no_content())
}

/// What a permanent delete of one deleted image removes.
enum Purge {
    Nothing,
    /// The objects to delete (artifacts, then the manifest itself).
    Objects(Vec<Location>),
}

async fn plan_image_purge(st: &AppState, d: &Deleted<Image>) -> ApiResult<Purge> {
    let Some(link) = &d.record.link else {
        return Ok(Purge::Nothing);
    };
    let Ok(mloc) = location(link) else {
        return Ok(Purge::Nothing);
    };
    match read_manifest(st, &mloc).await? {
        ManifestRead::Json(v) => {
            if !v.get("artifacts").is_some_and(Value::is_array) {
                return Err(Problem::unprocessable(format!(
                    "The manifest of deleted image {} ({mloc}) has no artifacts list; nothing was removed.",
                    d.record.id
                ))
                .into());
            }
            let mut objs: Vec<Location> = manifest_entries(&v).into_iter().map(|e| e.loc).collect();
            objs.push(mloc);
            Ok(Purge::Objects(objs))
        }
        ManifestRead::Unreadable(why) => {
            tracing::warn!(path = %mloc, %why, "deleted image manifest unreadable; removing it and the record");
            Ok(Purge::Objects(vec![mloc]))
        }
        ManifestRead::Missing => Ok(Purge::Nothing),
    }
}

async fn purge_once(st: &AppState, kind: Kind, id: Option<&str>) -> ApiResult<()> {
    let mut ops: Vec<Op> = Vec::new();
    let mut objects: Vec<Location> = Vec::new();
    match kind {
        Kind::PublicKeys => {
            for d in targets::<DeletedPublicKey>(st, id).await? {
                ops.push(delete_op(&d));
            }
        }
        Kind::Recipes => {
            for d in targets::<DeletedRecipe>(st, id).await? {
                if let Some(loc) = d.record.record.link.as_ref().and_then(|l| location(l).ok()) {
                    objects.push(loc);
                }
                ops.push(delete_op(&d));
            }
        }
        Kind::Images => {
            let all = targets::<DeletedImage>(st, id).await?;
            for d in &all {
                if let Purge::Objects(o) = plan_image_purge(st, &d.record).await? {
                    objects.extend(o);
                }
                ops.push(delete_op(d));
            }
        }
    }
    if !ops.is_empty() {
        st.store.apply(ops).await?;
    }
    // Records are gone; now their artifacts. A failure here leaves garbage, never a dangling record.
    for loc in objects {
        if let Err(e) = st.artifacts.delete(&loc).await {
            tracing::error!(path = %loc, error = %e, "could not delete artifact of a purged record");
        }
    }
    Ok(())
}

/// DELETE on one deleted record or the whole collection: permanent, artifacts included.
pub async fn purge(st: &AppState, kind: Kind, id: Option<&str>) -> ApiResult<Response> {
    retrying!(purge_once(st, kind, id).await)?;
    Ok(no_content())
}
