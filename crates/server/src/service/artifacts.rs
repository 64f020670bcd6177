//! Validation of links against the artifact store (§5.2, §5.3) and manifest reading.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use ims_artifacts::{Location, SmallRead};
use ims_core::manifest::validate_image_manifest;
use ims_core::{ArtifactLink, Problem, Table};
use serde_json::Value;
pub fn cannot_validate(path: &str) -> ApiError {
    Problem::unprocessable(format!(
        "The s3 artifact {path} cannot be validated. Please determine the specific information that is missing or invalid and then re-run the request with valid information."
    ))
    .into()
}

/// Parses a link into a location; an unusable link is a 422.
pub fn location(link: &ArtifactLink) -> ApiResult<Location> {
    if link.kind != "s3" {
        return Err(Problem::unprocessable(format!(
            "The artifact link type {:?} is not supported.",
            link.kind
        ))
        .into());
    }
    Location::parse(&link.path).map_err(|e| {
        ApiError::Problem(Problem::unprocessable(format!(
            "The s3 artifact {} cannot be validated: {e}.",
            link.path
        )))
    })
}

/// The link must point at an existing object (HEAD), else 422.
pub async fn require_object(st: &AppState, link: &ArtifactLink) -> ApiResult<Location> {
    let loc = location(link)?;
    match st.artifacts.head(&loc).await? {
        Some(_) => Ok(loc),
        None => Err(cannot_validate(&link.path)),
    }
}

/// A manifest read for the record operations.
pub enum ManifestRead {
    Missing,
    /// Present but not a JSON document (or too large, or not UTF-8).
    Unreadable(String),
    Json(Value),
}

pub async fn read_manifest(st: &AppState, loc: &Location) -> ApiResult<ManifestRead> {
    match st
        .artifacts
        .read_small(loc, st.cfg.max_manifest_size)
        .await?
    {
        SmallRead::NotFound => Ok(ManifestRead::Missing),
        SmallRead::TooLarge(n) => Ok(ManifestRead::Unreadable(format!(
            "the manifest is {n} bytes or more; the limit is {} bytes",
            st.cfg.max_manifest_size
        ))),
        SmallRead::Data(b) => match serde_json::from_slice::<Value>(&b) {
            Ok(v) => Ok(ManifestRead::Json(v)),
            Err(e) => Ok(ManifestRead::Unreadable(format!(
                "the manifest is not valid JSON: {e}"
            ))),
        },
    }
}

/// A link belongs to at most one active record of a table (422 naming `link.path` otherwise).
async fn ensure_link_free(
    st: &AppState,
    table: Table,
    link: &ArtifactLink,
    except_id: Option<&str>,
) -> ApiResult<()> {
    if st.store.link_in_use(table, &link.path, except_id).await? {
        let what = if table == Table::Images {
            "image"
        } else {
            "recipe"
        };
        return Err(Problem::validation(serde_json::json!({
            "link": {"path": [format!("The artifact {} is already used by another {what}.", link.path)]}
        }))
        .into());
    }
    Ok(())
}

/// Recipe link rules on POST and PATCH: unique among active recipes, object exists.
pub async fn validate_recipe_link(
    st: &AppState,
    link: &ArtifactLink,
    except_id: Option<&str>,
) -> ApiResult<()> {
    ensure_link_free(st, Table::Recipes, link, except_id).await?;
    require_object(st, link).await?;
    Ok(())
}

/// Image link rules on POST and PATCH (§5.3): unique among active images, manifest exists, is smaller
/// than the limit (400), is JSON, version 1.0, every artifact exists, exactly one rootfs (400).
pub async fn validate_image_link(
    st: &AppState,
    link: &ArtifactLink,
    except_id: Option<&str>,
) -> ApiResult<()> {
    ensure_link_free(st, Table::Images, link, except_id).await?;
    let loc = require_object(st, link).await?;
    let v = match st
        .artifacts
        .read_small(&loc, st.cfg.max_manifest_size)
        .await?
    {
        SmallRead::NotFound => return Err(cannot_validate(&link.path)),
        SmallRead::TooLarge(n) => {
            return Err(Problem::bad_request(format!(
                "The manifest {} is {n} bytes or more; the limit is {} bytes.",
                link.path, st.cfg.max_manifest_size
            ))
            .into());
        }
        SmallRead::Data(b) => serde_json::from_slice::<Value>(&b).map_err(|e| {
            ApiError::Problem(Problem::unprocessable(format!(
                "The manifest {} is not valid JSON: {e}",
                link.path
            )))
        })?,
    };
    let links = validate_image_manifest(&v)?;
    for l in &links {
        let loc = location(l)?;
        if st.artifacts.head(&loc).await?.is_none() {
            return Err(cannot_validate(&l.path));
        }
    }
    Ok(())
}
