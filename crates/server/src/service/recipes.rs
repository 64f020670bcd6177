//! Recipes: create with link validation, PATCH rules, hard delete with cascade (v2), soft delete (v3).

use super::artifacts::{location, validate_recipe_link};
use super::journal::{self, Batch, Linked, Step, recipe_key};
use super::{must_get, no_content, set_link_once, update};
use crate::error::ApiResult;
use crate::{Api, AppState, retrying};
use axum::response::Response;
use ims_artifacts::Location;
use ims_core::{ArtifactLink, Deleted, Problem, Recipe, Timestamp, input};
use ims_store::{Versioned, delete_op, insert_op, list};
use serde_json::Value;
use std::collections::HashSet;

pub async fn create(st: &AppState, body: Option<&Value>) -> ApiResult<Recipe> {
    let new = input::recipe_create(body)?;
    // A concurrent request that takes the same link first makes the insert fail on the unique
    // link index; the re-run then answers 422 from the check.
    retrying!(create_once(st, &new).await)
}

async fn create_once(st: &AppState, new: &input::NewRecipe) -> ApiResult<Recipe> {
    if let Some(link) = &new.link {
        validate_recipe_link(st, link, None).await?;
    }
    let new = new.clone();
    let rec = Recipe {
        arch: new.arch,
        created: Timestamp::now(),
        id: ims_core::new_id(),
        link: new.link,
        linux_distribution: new.linux_distribution,
        name: new.name,
        recipe_type: new.recipe_type,
        require_dkms: new.require_dkms,
        template_dictionary: new.template_dictionary,
    };
    ims_store::insert(&*st.store, &rec).await?;
    Ok(rec)
}

async fn patch_once(st: &AppState, id: &str, p: &input::RecipePatch) -> ApiResult<Recipe> {
    // As images: the link check first, then the update under the record's lock.
    let mut checked = false;
    if let Some(link) = &p.link
        && must_get::<Recipe>(&*st.store, id)
            .await?
            .record
            .link
            .is_none()
    {
        validate_recipe_link(st, link, Some(id)).await?;
        checked = true;
    }
    update(&*st.store, id, |mut rec: Recipe| {
        if let Some(link) = &p.link {
            set_link_once(&mut rec.link, link, checked)?;
        }
        if let Some(arch) = p.arch {
            rec.arch = arch;
        }
        if let Some(b) = p.require_dkms {
            rec.require_dkms = b;
        }
        if let Some(td) = &p.template_dictionary {
            rec.template_dictionary = td.clone();
        }
        Ok(rec)
    })
    .await
}

pub async fn patch(st: &AppState, id: &str, body: Option<&Value>) -> ApiResult<Recipe> {
    // Unknown ids are 404 even when the body is bad.
    must_get::<Recipe>(&*st.store, id).await?;
    let p = input::recipe_patch(body)?;
    retrying!(patch_once(st, id, &p).await)
}

/// v2 cascade, planned: the delete of the recipe's tarball (a missing object is fine).
fn plan_cascade(link: &Option<ArtifactLink>) -> Vec<Step> {
    let Some(link) = link else { return vec![] };
    match location(link) {
        Ok(loc) => vec![Step::Delete { path: loc.s3_url() }],
        Err(_) => {
            tracing::warn!(path = %link.path, "recipe link is not a valid artifact location; nothing to delete");
            vec![]
        }
    }
}

/// v3 soft delete, planned: the tarball moves under `deleted/`. Returns the deleted record's link and
/// the steps; 409 (nothing planned) if the move would overwrite an object under `deleted/`.
async fn plan_soft_delete(
    st: &AppState,
    rec: &Recipe,
) -> ApiResult<(Option<ArtifactLink>, Vec<Step>)> {
    let Some(link) = &rec.link else {
        return Ok((None, vec![]));
    };
    let Ok(from) = location(link) else {
        return Ok((rec.link.clone(), vec![]));
    };
    let to = from.deleted();
    let Some(info) = st.artifacts.head(&from).await? else {
        tracing::warn!(path = %link.path, "recipe artifact missing; soft delete keeps the link");
        return Ok((rec.link.clone(), vec![]));
    };
    // Never overwrite what is already under deleted/ (another deleted record's tarball, when a key
    // was reused): that record could no longer be restored, and purging either would remove both.
    if st.artifacts.head(&to).await?.is_some() {
        return Err(would_overwrite(&rec.id, &to));
    }
    Ok((
        Some(ArtifactLink::s3(to.s3_url(), info.etag)),
        moved(Linked::DeletedRecipe, &rec.id, &from, &to),
    ))
}

/// The steps of moving a record's artifact from `from` to `to`, the record's link following it.
pub fn moved(record: Linked, id: &str, from: &Location, to: &Location) -> Vec<Step> {
    vec![
        Step::Move {
            from: from.s3_url(),
            to: to.s3_url(),
        },
        Step::LinkEtag {
            record,
            id: id.to_string(),
            path: to.s3_url(),
        },
    ]
}

/// A soft delete would overwrite an object already under `deleted/`.
pub fn would_overwrite(id: &str, to: &Location) -> crate::error::ApiError {
    Problem::new(
        409,
        format!(
            "Record {id} was not deleted: {to} already exists (left by another deleted record?) and moving the artifact there would overwrite it. Permanently delete or restore that record, or remove the object, first."
        ),
    )
    .into()
}

/// Deletes (v2, optionally with the tarball) or soft-deletes (v3) the recipes: the record changes
/// and the artifact work they imply are committed together, then the work is done (see
/// [`journal`]).
async fn delete_many_once(
    st: &AppState,
    api: Api,
    targets: Vec<Versioned<Recipe>>,
    cascade: bool,
) -> ApiResult<()> {
    let keys: HashSet<String> = targets.iter().map(|t| recipe_key(&t.record.id)).collect();
    journal::settle(st, &keys).await?;
    let mut ops = Vec::with_capacity(targets.len() * 3);
    let mut batch = Batch::default();
    let now = Timestamp::now();
    for cur in &targets {
        let id = &cur.record.id;
        match api {
            Api::V2 => {
                let steps = if cascade {
                    plan_cascade(&cur.record.link)
                } else {
                    vec![]
                };
                batch.add(st, recipe_key(id), format!("delete of recipe {id}"), steps)?;
                ops.push(delete_op(cur));
            }
            Api::V3 => {
                let (link, steps) = plan_soft_delete(st, &cur.record).await?;
                batch.add(
                    st,
                    recipe_key(id),
                    format!("soft delete of recipe {id}"),
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
            let cur = must_get::<Recipe>(&*st.store, id).await?;
            delete_many_once(st, api, vec![cur], cascade).await
        }
        .await
    )?;
    Ok(no_content())
}

pub async fn delete_all(st: &AppState, api: Api, cascade: bool) -> ApiResult<Response> {
    retrying!(
        async {
            let all = list::<Recipe>(&*st.store).await?;
            delete_many_once(st, api, all, cascade).await
        }
        .await
    )?;
    Ok(no_content())
}
