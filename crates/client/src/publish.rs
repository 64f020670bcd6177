//! Publishing an image the IMS way, shared by `ims images import` and the job agent:
//! **register last**. The caller picks the image id; every artifact is uploaded to
//! `s3://BUCKET/<id>/<name>` (read once: md5 and sha256 computed while it is sent), gets its
//! `md5sum` metadata (a metadata-only CopyObject), then `<id>/manifest.json` is written (v1.0 as the
//! original writes it, plus `sha256` per artifact) and only then `POST /images {id, name, arch,
//! link}` creates the record. Until that POST nothing is registered; [`remove_uploads`] undoes the
//! uploads after a failure.

use crate::s3::{
    Ctx, Hashing, Uploaded, hex, key_path, remove, replace_metadata, s3_error, upload,
};
use crate::{Error as ClientError, Resource};
use ims_core::input;
use ims_core::manifest::{MANIFEST_VERSION, Manifest, ManifestArtifact};
use ims_core::{Arch, ArtifactLink};
use md5::{Digest, Md5};
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// One artifact to upload: its key name under `<id>/`, its manifest MIME type, the file.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub name: &'static str,
    pub mime: &'static str,
    pub file: PathBuf,
}

/// The image to register.
#[derive(Debug, Clone, Copy)]
pub struct NewImage<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub arch: Arch,
    /// The job that made it (recorded as `x-shasta-ims-job-id` metadata, as the original does).
    pub job_id: Option<&'a str>,
}

/// Why publishing failed: before registration (clean up), or with the outcome unknown (keep the
/// objects: they may belong to a registered image).
#[derive(Debug)]
pub enum Failure {
    Before(String),
    Unknown(String),
}

/// One uploaded artifact's manifest entry (with our extra `sha256`, which readers of manifest
/// v1.0 — the original IMS, BOS — ignore).
fn manifest_entry(bucket: &str, key: &str, mime: &str, up: &Uploaded) -> ManifestArtifact {
    ManifestArtifact {
        link: ArtifactLink::s3(format!("s3://{bucket}/{key}"), up.etag.clone()),
        mime: mime.to_string(),
        md5: Some(up.md5.clone().unwrap_or_default()),
        sha256: Some(up.sha256.clone().unwrap_or_default()),
        extra: Map::new(),
    }
}

/// Serialises like Python's `json.dump(sort_keys=True, indent=4)`, as the original writes
/// manifests.
pub fn python_json(v: &impl Serialize) -> Result<Vec<u8>, String> {
    let v = serde_json::to_value(v).map_err(|e| e.to_string())?;
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            v => v.clone(),
        }
    }
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    Serialize::serialize(&sorted(&v), &mut ser).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Uploads the artifacts and the manifest, then registers the image; returns the record.
/// `sent` collects every key whose upload was started, for [`remove_uploads`]; `say` receives
/// progress lines.
pub async fn publish(
    ctx: &Ctx,
    bucket: &str,
    img: NewImage<'_>,
    artifacts: &[Artifact],
    sent: &mut Vec<String>,
    cancel: &CancellationToken,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Value, Failure> {
    let id = img.id;
    let mut meta: Vec<(&str, &str)> = vec![
        ("x-shasta-ims-image-name", img.name),
        ("x-shasta-ims-image-id", id),
    ];
    if let Some(j) = img.job_id {
        meta.push(("x-shasta-ims-job-id", j));
    }
    let mut entries = vec![];
    let mut metadata_warned = false;
    for art in artifacts {
        let key = format!("{id}/{}", art.name);
        let mut attributes = Attributes::new();
        for (k, v) in &meta {
            attributes.insert(
                Attribute::Metadata(k.to_string().into()),
                v.to_string().into(),
            );
        }
        sent.push(key.clone());
        say(&format!(
            "Uploading {} to s3://{bucket}/{key} ...",
            art.file.display()
        ));
        let mut up = upload(
            ctx,
            bucket,
            &key,
            &art.file,
            attributes,
            Hashing::Md5Sha256,
            cancel,
        )
        .await
        .map_err(|e| Failure::Before(e.into()))?;
        // The md5 is known only now: set it as the `md5sum` metadata that IMS (the original
        // too) trusts for later downloads. The manifest carries it in any case.
        let md5 = up.md5.clone().unwrap_or_default();
        let mut with_md5 = vec![("md5sum", md5.as_str())];
        with_md5.extend(meta.iter().copied());
        match replace_metadata(&ctx.creds, bucket, &key, None, &with_md5).await {
            Ok(etag) if !etag.is_empty() => up.etag = etag,
            Ok(_) => {}
            Err(e) if !metadata_warned => {
                metadata_warned = true;
                say(&format!(
                    "warning: {e}; the manifest still records every md5"
                ));
            }
            Err(_) => {}
        }
        entries.push(manifest_entry(bucket, &key, art.mime, &up));
    }
    let manifest = Manifest {
        artifacts: entries,
        created: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        version: MANIFEST_VERSION.to_string(),
    };
    let body = python_json(&manifest).map_err(Failure::Before)?;
    let key = format!("{id}/manifest.json");
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, "application/json".into());
    attributes.insert(
        Attribute::Metadata("md5sum".into()),
        hex(&Md5::digest(&body)).into(),
    );
    sent.push(key.clone());
    let put = ctx
        .store(bucket)
        .map_err(|e| Failure::Before(e.into()))?
        .put_opts(
            &key_path(&key).map_err(|e| Failure::Before(e.into()))?,
            PutPayload::from(body),
            PutOptions {
                attributes,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Failure::Before(s3_error(bucket, &key, e).into()))?;
    if cancel.is_cancelled() {
        return Err(Failure::Before("interrupted".to_string()));
    }
    let record = input::NewImage {
        arch: img.arch,
        id: Some(id.to_string()),
        link: Some(ArtifactLink::s3(
            format!("s3://{bucket}/{key}"),
            put.e_tag.unwrap_or_default().trim_matches('"'),
        )),
        metadata: BTreeMap::new(),
        name: img.name.to_string(),
    };
    let record = serde_json::to_value(&record).map_err(|e| Failure::Before(e.to_string()))?;
    match ctx.client.create(Resource::Images, &record).await {
        Ok(v) => Ok(v),
        // A definite answer (or no connection at all): the image was not created.
        Err(e @ (ClientError::Api { .. } | ClientError::Connect { .. })) => {
            Err(Failure::Before(format!("registering image {id}: {e}")))
        }
        // The answer was lost: the image may exist. Ask.
        Err(e) => match ctx.client.describe(Resource::Images, id).await {
            Ok(v) => Ok(v),
            Err(ClientError::Api { status: 404, .. }) => {
                Err(Failure::Before(format!("registering image {id}: {e}")))
            }
            Err(_) => Err(Failure::Unknown(format!(
                "registering image {id}: {e}; the server could not say whether the image was registered, so its artifacts were kept under s3://{bucket}/{id}/ (check with `ims images describe {id}`)"
            ))),
        },
    }
}

/// Removes the objects a failed [`publish`] started; returns the errors of those it could not.
pub async fn remove_uploads(ctx: &Ctx, bucket: &str, sent: &[String]) -> Vec<String> {
    let mut left = vec![];
    for key in sent {
        if let Err(e) = remove(ctx, bucket, key).await {
            left.push(e.to_string());
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_written_like_the_original() {
        let v = serde_json::json!({"version": "1.0", "artifacts": [{"type": "t", "md5": "m", "link": {"type": "s3", "path": "p", "etag": "e"}}], "created": "c"});
        let text = String::from_utf8(python_json(&v).unwrap()).unwrap();
        let expect = r#"{
    "artifacts": [
        {
            "link": {
                "etag": "e",
                "path": "p",
                "type": "s3"
            },
            "md5": "m",
            "type": "t"
        }
    ],
    "created": "c",
    "version": "1.0"
}"#;
        assert_eq!(text, expect);
    }

    /// The typed manifest writes the bytes the map-building writer wrote (keys sorted at every
    /// level, `md5` and `sha256` always present).
    #[test]
    fn the_typed_manifest_writes_the_same_bytes() {
        let up = Uploaded {
            etag: "e1".into(),
            md5: Some("m1".into()),
            sha256: None,
        };
        let m = Manifest {
            artifacts: vec![manifest_entry("b", "i/rootfs", "application/r", &up)],
            created: "2026-01-01 00:00:00".into(),
            version: MANIFEST_VERSION.into(),
        };
        let text = String::from_utf8(python_json(&m).unwrap()).unwrap();
        let expect = r#"{
    "artifacts": [
        {
            "link": {
                "etag": "e1",
                "path": "s3://b/i/rootfs",
                "type": "s3"
            },
            "md5": "m1",
            "sha256": "",
            "type": "application/r"
        }
    ],
    "created": "2026-01-01 00:00:00",
    "version": "1.0"
}"#;
        assert_eq!(text, expect);
    }

    /// The registration body is the one the `json!` literal made (keys sorted).
    #[test]
    fn registrations_serialise_as_before() {
        let r = input::NewImage {
            arch: Arch::Aarch64,
            id: Some("i".into()),
            link: Some(ArtifactLink::s3("s3://b/i/manifest.json", "e")),
            metadata: BTreeMap::new(),
            name: "n".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"arch":"aarch64","id":"i","link":{"etag":"e","path":"s3://b/i/manifest.json","type":"s3"},"name":"n"}"#
        );
    }
}
