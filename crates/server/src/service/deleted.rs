//! `/v3/deleted/{public-keys,recipes,images}`: undelete (PATCH) and permanent delete (DELETE),
//! single or whole collection. Collection operations validate everything first and change the records
//! in one transaction: all or nothing.

use super::artifacts::{ManifestRead, location, read_manifest};
use super::images::{Entry, manifest_entries};
use super::journal::{self, Batch, Linked, Step, image_key, recipe_key};
use super::recipes::moved;
use super::{must_get, no_content};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, retrying};
use axum::response::Response;
use ims_artifacts::{Location, ObjectInfo};
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

/// The move that restoring a deleted artifact link implies: only an object that exists under
/// `deleted/` moves back. Its current info too (the restored link's ETag).
async fn restore_move(
    st: &AppState,
    from: Location,
) -> ApiResult<Option<(Location, Location, ObjectInfo)>> {
    let Some(to) = from.undeleted() else {
        return Ok(None);
    };
    Ok(st.artifacts.head(&from).await?.map(|i| (from, to, i)))
}

/// The journal keys of the deleted records of a kind (`id` or all).
fn keys_of<T>(
    all: &[Versioned<T>],
    key: fn(&str) -> String,
    id: fn(&T) -> &str,
) -> HashSet<String> {
    all.iter().map(|v| key(id(&v.record))).collect()
}

async fn undelete_once(st: &AppState, kind: Kind, id: Option<&str>) -> ApiResult<()> {
    let mut ops: Vec<Op> = Vec::new();
    let mut batch = Batch::default();
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
            journal::settle(st, &keys_of(&all, recipe_key, |d| &d.record.id)).await?;
            // Plan and check every record first: nothing changes unless all can be restored.
            let mut plans = Vec::with_capacity(all.len());
            let mut links = Vec::with_capacity(all.len());
            for d in &all {
                let rec = &d.record.record;
                not_active::<Recipe>(st, &rec.id).await?;
                let mv = match rec.link.as_ref().and_then(|l| location(l).ok()) {
                    Some(from) => restore_move(st, from).await?,
                    None => None,
                };
                let link = match &mv {
                    Some((_, to, info)) => Some(ArtifactLink::s3(to.s3_url(), info.etag.clone())),
                    None => rec.link.clone(),
                };
                plans.push((
                    rec.id.clone(),
                    link.as_ref().map(|l| l.path.clone()),
                    mv.into_iter().map(|(f, t, _)| (f, t)).collect::<Vec<_>>(),
                ));
                links.push(link);
            }
            check_restore(st, ims_core::Table::Recipes, &plans).await?;
            for ((d, (rid, _, moves)), link) in all.into_iter().zip(plans).zip(links) {
                let mut rec = d.record.record.clone();
                rec.link = link;
                let steps = moves
                    .iter()
                    .flat_map(|(from, to)| moved(Linked::Recipe, &rid, from, to))
                    .collect();
                batch.add(
                    st,
                    recipe_key(&rid),
                    format!("undelete of recipe {rid}"),
                    steps,
                )?;
                ops.push(delete_op(&d));
                ops.push(insert_op(&rec)?);
            }
        }
        Kind::Images => {
            let all = targets::<DeletedImage>(st, id).await?;
            journal::settle(st, &keys_of(&all, image_key, |d| &d.record.id)).await?;
            // Validate every record first: nothing changes unless all can be restored.
            let mut links = Vec::with_capacity(all.len());
            let mut cleanup = Vec::with_capacity(all.len());
            let mut plans = Vec::with_capacity(all.len());
            for d in &all {
                let rec = &d.record.record;
                not_active::<Image>(st, &rec.id).await?;
                let Some(loc) = deleted_manifest_loc(&rec.link) else {
                    links.push(rec.link.clone());
                    cleanup.push(None);
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
                let mut link = None;
                for Entry {
                    entry,
                    link: l,
                    loc,
                } in manifest_entries(&v)
                {
                    let Some((from, to, info)) = restore_move(st, loc).await? else {
                        tracing::warn!(path = %l.path, "deleted image artifact missing; skipped");
                        continue;
                    };
                    if entry.get("type").and_then(Value::as_str) == Some(MIME_MANIFEST) {
                        link = Some(ArtifactLink::s3(to.s3_url(), info.etag));
                    }
                    moves.push((from, to));
                }
                plans.push((rec.id.clone(), link.as_ref().map(|l| l.path.clone()), moves));
                links.push(link);
                cleanup.push(Some(loc));
            }
            check_restore(st, ims_core::Table::Images, &plans).await?;
            for (((d, (rid, path, moves)), link), dloc) in
                all.into_iter().zip(plans).zip(links).zip(cleanup)
            {
                let mut rec = d.record.record.clone();
                rec.link = link;
                let mut steps: Vec<Step> = moves
                    .iter()
                    .map(|(from, to)| Step::Move {
                        from: from.s3_url(),
                        to: to.s3_url(),
                    })
                    .collect();
                if let Some(dloc) = dloc {
                    // The deleted manifest goes once everything is back.
                    steps.push(Step::Delete {
                        path: dloc.s3_url(),
                    });
                    if let Some(path) = path {
                        steps.push(Step::LinkEtag {
                            record: Linked::Image,
                            id: rid.clone(),
                            path,
                        });
                    }
                }
                batch.add(
                    st,
                    image_key(&rid),
                    format!("undelete of image {rid}"),
                    steps,
                )?;
                ops.push(delete_op(&d));
                ops.push(insert_op(&rec)?);
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
    let mut batch = Batch::default();
    let deletes = |objs: Vec<Location>| {
        objs.into_iter()
            .map(|l| Step::Delete { path: l.s3_url() })
            .collect::<Vec<_>>()
    };
    match kind {
        Kind::PublicKeys => {
            for d in targets::<DeletedPublicKey>(st, id).await? {
                ops.push(delete_op(&d));
            }
        }
        Kind::Recipes => {
            let all = targets::<DeletedRecipe>(st, id).await?;
            journal::settle(st, &keys_of(&all, recipe_key, |d| &d.record.id)).await?;
            for d in all {
                let rid = &d.record.record.id;
                let objs = d.record.record.link.as_ref().and_then(|l| location(l).ok());
                batch.add(
                    st,
                    recipe_key(rid),
                    format!("permanent delete of recipe {rid}"),
                    deletes(objs.into_iter().collect()),
                )?;
                ops.push(delete_op(&d));
            }
        }
        Kind::Images => {
            let all = targets::<DeletedImage>(st, id).await?;
            journal::settle(st, &keys_of(&all, image_key, |d| &d.record.id)).await?;
            for d in &all {
                let rid = &d.record.record.id;
                let objs = match plan_image_purge(st, &d.record).await? {
                    Purge::Objects(o) => o,
                    Purge::Nothing => vec![],
                };
                batch.add(
                    st,
                    image_key(rid),
                    format!("permanent delete of image {rid}"),
                    deletes(objs),
                )?;
                ops.push(delete_op(d));
            }
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    // The records go with the journal of their artifacts' deletes; then the artifacts go.
    ops.extend(batch.ops());
    st.store.apply(ops).await?;
    batch.complete(st).await
}

/// DELETE on one deleted record or the whole collection: permanent, artifacts included.
pub async fn purge(st: &AppState, kind: Kind, id: Option<&str>) -> ApiResult<Response> {
    retrying!(purge_once(st, kind, id).await)?;
    Ok(no_content())
}
