//! Image manifest v1.0 (`manifest.json`) and its validation rules.

use crate::problem::Problem;
use crate::records::ArtifactLink;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const MANIFEST_VERSION: &str = "1.0";
/// The original's `MAX_IMAGE_MANIFEST_SIZE_BYTES`.
pub const MAX_MANIFEST_SIZE: u64 = 1_048_576;
pub const MIME_ROOTFS: &str = "application/vnd.cray.image.rootfs.squashfs";
pub const MIME_KERNEL: &str = "application/vnd.cray.image.kernel";
pub const MIME_INITRD: &str = "application/vnd.cray.image.initrd";
pub const MIME_BOOT_PARAMETERS: &str = "application/vnd.cray.image.parameters.boot";
pub const MIME_DEBUG_KERNEL: &str = "application/vnd.cray.image.debug.kernel";
pub const MIME_MANIFEST: &str = "application/vnd.cray.image.manifest";

/// One artifact entry. `sha256` is this implementation's addition (readers of v1.0 ignore it);
/// other unknown keys are kept so old and new readers agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestArtifact {
    pub link: ArtifactLink,
    #[serde(rename = "type")]
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub artifacts: Vec<ManifestArtifact>,
    pub created: String,
    pub version: String,
}

fn unprocessable(msg: &str) -> Problem {
    Problem::unprocessable(msg)
}

/// Checks a manifest's content as image POST / PATCH-link do (§5.3 steps 4–6, without the S3 HEADs).
/// Returns the links of every artifact, which the caller must then HEAD.
pub fn validate_image_manifest(v: &Value) -> Result<Vec<ArtifactLink>, Problem> {
    let version = v
        .get("version")
        .ok_or_else(|| unprocessable("Manifest is missing a version field."))?;
    if version.as_str() != Some(MANIFEST_VERSION) {
        return Err(unprocessable(&format!(
            "Unsupported manifest version {version}; only {MANIFEST_VERSION} is supported."
        )));
    }
    let artifacts = v
        .get("artifacts")
        .ok_or_else(|| unprocessable("Manifest is missing the artifacts field."))?;
    let artifacts = artifacts
        .as_array()
        .ok_or_else(|| unprocessable("Manifest artifacts field is not a list."))?;
    let mut links = Vec::with_capacity(artifacts.len());
    for a in artifacts {
        let a = a
            .as_object()
            .ok_or_else(|| unprocessable("Manifest artifact is not an object."))?;
        let link = a
            .get("link")
            .and_then(Value::as_object)
            .ok_or_else(|| unprocessable("Manifest artifact is missing a link."))?;
        let kind = link
            .get("type")
            .ok_or_else(|| unprocessable("Manifest artifact link is missing a type."))?;
        if kind.as_str() != Some("s3") {
            return Err(unprocessable(&format!(
                "Manifest artifact link type {kind} is not supported."
            )));
        }
        let path = link
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| unprocessable("Manifest artifact link is missing a path."))?;
        let etag = link.get("etag").and_then(Value::as_str).unwrap_or("");
        links.push(ArtifactLink::s3(path, etag));
    }
    let mut rootfs = 0;
    for a in artifacts {
        let mime = a
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| unprocessable("Manifest artifact is missing a type."))?;
        if mime.starts_with(MIME_ROOTFS) {
            rootfs += 1;
        }
    }
    match rootfs {
        0 => Err(Problem::bad_request(
            "Manifest does not contain a rootfs artifact.",
        )),
        1 => Ok(links),
        _ => Err(Problem::bad_request(
            "Manifest contains more than one rootfs artifact.",
        )),
    }
}

/// What a customize job needs from the source image's manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct RootfsEntry {
    pub link: ArtifactLink,
    pub md5: Option<String>,
    /// Written by this implementation's publishers (an extra field the original ignores).
    pub sha256: Option<String>,
}

/// The job-creation reading of a manifest (all failures 400, as the original).
pub fn job_rootfs(v: &Value) -> Result<RootfsEntry, Problem> {
    match v.get("version").and_then(Value::as_str) {
        Some(MANIFEST_VERSION) => {}
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "Unknown manifest version {other}."
            )));
        }
        None => return Err(Problem::bad_request("Manifest is missing a version.")),
    }
    let artifacts = v
        .get("artifacts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rootfs: Vec<&Value> = artifacts
        .iter()
        .filter(|a| {
            a.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with(MIME_ROOTFS))
        })
        .collect();
    let entry = match rootfs.as_slice() {
        [] => {
            return Err(Problem::bad_request(
                "Manifest does not contain a rootfs artifact.",
            ));
        }
        [one] => *one,
        _ => {
            return Err(Problem::bad_request(
                "Manifest contains more than one rootfs artifact.",
            ));
        }
    };
    let link: ArtifactLink = entry
        .get("link")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .ok_or_else(|| Problem::bad_request("The rootfs artifact has no valid link."))?;
    let text = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(RootfsEntry {
        link,
        md5: text("md5"),
        sha256: text("sha256"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn art(t: &str) -> Value {
        json!({"link": {"path": "s3://boot-images/x/rootfs", "etag": "", "type": "s3"}, "type": t, "md5": "0"})
    }

    #[test]
    fn exactly_one_rootfs() {
        let m = json!({"version": "1.0", "artifacts": [art(MIME_ROOTFS), art(MIME_KERNEL)]});
        assert_eq!(validate_image_manifest(&m).unwrap().len(), 2);
        let m = json!({"version": "1.0", "artifacts": [art(MIME_KERNEL)]});
        assert_eq!(validate_image_manifest(&m).unwrap_err().status, 400);
        let m = json!({"version": "1.0", "artifacts": [art(MIME_ROOTFS), art(MIME_ROOTFS)]});
        assert_eq!(validate_image_manifest(&m).unwrap_err().status, 400);
        let m = json!({"version": "2.0", "artifacts": []});
        assert_eq!(validate_image_manifest(&m).unwrap_err().status, 422);
        let m = json!({"artifacts": []});
        assert_eq!(validate_image_manifest(&m).unwrap_err().status, 422);
        let m = json!({"version": "1.0", "artifacts": [{"type": MIME_ROOTFS, "link": {"type": "ftp", "path": "x"}}]});
        assert_eq!(validate_image_manifest(&m).unwrap_err().status, 422);
    }

    #[test]
    fn job_reading_is_400() {
        assert_eq!(
            job_rootfs(&json!({"artifacts": []})).unwrap_err().status,
            400
        );
        let m = json!({"version": "1.0", "artifacts": [art(MIME_ROOTFS)]});
        assert_eq!(job_rootfs(&m).unwrap().md5.as_deref(), Some("0"));
    }

    #[test]
    fn extra_fields_survive() {
        let m: Manifest = serde_json::from_value(json!({"version": "1.0", "created": "x",
            "artifacts": [{"link": {"path": "s3://a/b", "type": "s3"}, "type": MIME_ROOTFS, "md5": "m", "sha256": "s"}]})).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["artifacts"][0]["sha256"], "s");
    }
}
