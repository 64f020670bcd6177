//! `ims artifacts …`, `ims recipes import` and `ims images verify`, over the S3 layer of
//! [`ims_client::s3`] (STS credentials, single-pass multipart uploads, ranged parallel downloads).

use super::args::{ArtifactsVerb, BucketsVerb, Format, Globals};
use super::print;
use super::s3_ctx;
use super::terminal::{interrupt_token, runtime};
use futures::StreamExt;
use ims_client::Resource;
use ims_client::s3::{
    Ctx, Hashing, IN_FLIGHT, bucket_exists, download, file_md5, hash_object, key_path,
    list_buckets, list_objects, remove, replace_metadata, s3_error, split_s3, upload,
};
use object_store::{Attribute, Attributes, GetOptions, ObjectStore};
use serde_json::{Map, Value, json};
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%:z").to_string()
}

/// Runs an `ims artifacts` command. As with `cray artifacts`, a failure of the STS request (or a
/// usage error found before it) exits 2 like every REST error, and an S3 error exits 1.
pub fn run(verb: ArtifactsVerb, g: &Globals, format: Format) -> Result<ExitCode, String> {
    // The file to upload is checked (and its size taken) before any request.
    let mut upload_size = 0;
    if let ArtifactsVerb::Create { file, .. } = &verb {
        let md =
            std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if !md.is_file() {
            return Err(format!("{} is not a regular file", file.display()));
        }
        upload_size = md.len();
    }
    let rt = runtime()?;
    let done = rt.block_on(async {
        let ctx = s3_ctx(g).await?;
        Ok::<_, String>(match verb {
            ArtifactsVerb::Buckets {
                verb: BucketsVerb::List,
            } => list_buckets(&ctx.creds)
                .await
                .map(Value::from)
                .map_err(String::from),
            ArtifactsVerb::List { bucket } => list(&ctx, &bucket).await,
            ArtifactsVerb::Describe { bucket, key } => describe(&ctx, &bucket, &key).await,
            ArtifactsVerb::Create { bucket, key, file } => {
                create(&ctx, &bucket, &key, &file, upload_size).await
            }
            ArtifactsVerb::Get { bucket, key, file } => get(&ctx, &bucket, &key, &file).await,
            ArtifactsVerb::Delete { bucket, key } => delete(&ctx, &bucket, &key).await,
        })
    })?;
    match done {
        Ok(v) => {
            print(&v, format)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(msg) => {
            eprintln!("Error: {msg}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `cray artifacts list`'s answer: ListObjects v1 (`encoding-type=url`), every page.
async fn list(ctx: &Ctx, bucket: &str) -> Result<Value, String> {
    let artifacts: Vec<Value> = list_objects(&ctx.creds, bucket)
        .await?
        .into_iter()
        .map(|o| {
            json!({
                "Key": o.key,
                "LastModified": time(&o.last_modified),
                "ETag": o.etag,
                "Size": o.size,
                "StorageClass": o.storage_class,
            })
        })
        .collect();
    Ok(json!({ "artifacts": artifacts }))
}

async fn describe(ctx: &Ctx, bucket: &str, key: &str) -> Result<Value, String> {
    let store = ctx.store(bucket)?;
    let r = store
        .get_opts(
            &key_path(key)?,
            GetOptions {
                head: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| s3_error(bucket, key, e))?;
    let mut o = Map::new();
    o.insert("LastModified".into(), time(&r.meta.last_modified).into());
    o.insert("ContentLength".into(), r.meta.size.into());
    if let Some(e) = &r.meta.e_tag {
        o.insert("ETag".into(), e.clone().into());
    }
    let mut meta = Map::new();
    for (k, v) in &r.attributes {
        match k {
            Attribute::ContentType => {
                o.insert("ContentType".into(), v.to_string().into());
            }
            Attribute::Metadata(name) => {
                meta.insert(name.to_string(), v.to_string().into());
            }
            _ => {}
        }
    }
    o.insert("Metadata".into(), Value::Object(meta));
    Ok(json!({ "artifact": o }))
}

/// Largest object S3 copies in one request: above it the md5 must be known before the upload.
const MAX_COPY: u64 = 5 * 1024 * 1024 * 1024;

/// Uploads `file` (`size` bytes, as checked before STS).
async fn create(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    file: &Path,
    size: u64,
) -> Result<Value, String> {
    let cancel = interrupt_token();
    if size > MAX_COPY {
        // As cray: the md5 goes into the metadata S3 takes when the upload starts, so it needs
        // its own (streaming) pass over the file first.
        let md5 = file_md5(file).await?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata("md5sum".into()), md5.into());
        upload(ctx, bucket, key, file, attributes, Hashing::None, &cancel).await?;
    } else {
        // One read: the md5 is computed while the file is sent, then set as `md5sum` by a
        // metadata-only copy of the object onto itself.
        let up = upload(
            ctx,
            bucket,
            key,
            file,
            Attributes::new(),
            Hashing::Md5,
            &cancel,
        )
        .await?;
        let md5 = up.md5.unwrap_or_default();
        if let Err(e) = replace_metadata(&ctx.creds, bucket, key, None, &[("md5sum", &md5)]).await {
            let _ = remove(ctx, bucket, key).await;
            return Err(format!("{e}; the object was removed"));
        }
    }
    Ok(json!({ "artifact": key, "Key": key }))
}

async fn get(ctx: &Ctx, bucket: &str, key: &str, file: &Path) -> Result<Value, String> {
    download(ctx, bucket, key, file, &interrupt_token()).await?;
    Ok(Value::Null)
}

/// As `cray artifacts delete`: HEAD first; if the object is missing, ListBuckets tells which of
/// the two is.
async fn delete(ctx: &Ctx, bucket: &str, key: &str) -> Result<Value, String> {
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    match store.head(&path).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => {
            return Err(if bucket_exists(&ctx.creds, bucket).await? {
                format!("Object was not found in bucket: s3://{bucket}/{key}")
            } else {
                format!("Bucket does not exist: {bucket}")
            });
        }
        Err(e) => return Err(s3_error(bucket, key, e).into()),
    }
    store
        .delete(&path)
        .await
        .map_err(|e| s3_error(bucket, key, e))?;
    Ok(Value::Null)
}

/// The recipe tarball to upload: a kiwi description directory packed with GNU tar, or a gzip
/// file used as is. Everything is checked here, before anything is created.
fn recipe_tarball(
    source: &Path,
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>), String> {
    let shown = source.display();
    let meta = std::fs::metadata(source).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.is_dir() {
        let entries: Vec<_> = std::fs::read_dir(source)
            .map_err(|e| format!("cannot read {shown}: {e}"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !entries
            .iter()
            .any(|n| n == "config.xml" || n.ends_with(".kiwi"))
        {
            return Err(format!(
                "{shown} is not a kiwi description: it has no config.xml or *.kiwi file"
            ));
        }
        // A private (0700) directory: no predictable name in the shared temp directory.
        let dir = tempfile::Builder::new()
            .prefix("ims-recipe-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let tarball = dir.path().join("recipe.tar.gz");
        let out = std::process::Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(source)
            .arg("-czf")
            .arg(&tarball)
            .arg(".")
            .output()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tar failed packing {shown} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok((tarball, Some(dir)))
    } else {
        let mut magic = [0u8; 2];
        std::fs::File::open(source)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|_| format!("{shown} is neither a directory nor a gzip tar file"))?;
        if magic != [0x1f, 0x8b] {
            return Err(format!(
                "{shown} is neither a directory nor a gzip tar file"
            ));
        }
        Ok((source.to_path_buf(), None))
    }
}

/// `ims recipes import`: POST the recipe (no link), upload `recipes/<id>/recipe.tar.gz` to `ims`,
/// PATCH the link. On any failure after the POST, the object and the record are removed.
pub fn import_recipe(
    body: Value,
    source: &Path,
    g: &Globals,
    format: Format,
) -> Result<ExitCode, String> {
    let (tarball, _tmp) = recipe_tarball(source)?;
    let rt = runtime()?;
    let v = rt.block_on(async {
        let ctx = s3_ctx(g).await?;
        let cancel = interrupt_token();
        let (_, id) = super::create_record(&ctx.client, Resource::Recipes, &body).await?;
        const BUCKET: &str = "ims";
        let key = format!("recipes/{id}/recipe.tar.gz");
        let mut uploaded = false;
        let done: Result<Value, String> = async {
            let mut attributes = Attributes::new();
            attributes.insert(
                Attribute::Metadata("md5sum".into()),
                file_md5(&tarball).await?.into(),
            );
            attributes.insert(
                Attribute::ContentType,
                "application/x-compressed-tar".into(),
            );
            let up = upload(
                &ctx,
                BUCKET,
                &key,
                &tarball,
                attributes,
                Hashing::None,
                &cancel,
            )
            .await?;
            uploaded = true;
            let link = json!({"link": {
                "path": format!("s3://{BUCKET}/{key}"),
                "etag": up.etag,
                "type": "s3",
            }});
            ctx.client
                .update(Resource::Recipes, &id, Some(&link))
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match done {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut msg = e;
                // The upload may have failed after creating the object: try in any case.
                let obj = remove(&ctx, BUCKET, &key).await;
                if let (true, Err(d)) = (uploaded, obj) {
                    msg.push_str(&format!(" (and removing s3://{BUCKET}/{key} failed: {d})"));
                }
                if let Err(d) = ctx.client.purge_recipe(&id).await {
                    msg.push_str(&format!(" (and removing recipe {id} failed: {d})"));
                }
                Err(msg)
            }
        }
    })?;
    print(&v, format)?;
    Ok(ExitCode::SUCCESS)
}

/// `ims images verify ID`: every artifact of the image's manifest re-read and checked; exit 1 on
/// any mismatch or unreadable artifact.
pub fn verify(id: &str, g: &Globals, format: Format) -> Result<ExitCode, String> {
    let rt = runtime()?;
    let results = rt.block_on(async {
        let ctx = s3_ctx(g).await?;
        let image = ctx
            .client
            .describe(Resource::Images, id)
            .await
            .map_err(|e| e.to_string())?;
        let link = image
            .pointer("/link/path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("image {id} has no link to a manifest"))?;
        let (bucket, key) = split_s3(link)?;
        let manifest = ctx
            .store(&bucket)?
            .get(&key_path(&key)?)
            .await
            .map_err(|e| s3_error(&bucket, &key, e))?
            .bytes()
            .await
            .map_err(|e| s3_error(&bucket, &key, e))?;
        let manifest: Value = serde_json::from_slice(&manifest)
            .map_err(|e| format!("manifest {link} is not valid JSON: {e}"))?;
        let artifacts = manifest
            .get("artifacts")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| format!("manifest {link} has no artifacts list"))?;
        let ctx = &ctx;
        let results: Vec<Value> = futures::stream::iter(artifacts)
            .map(|a| async move {
                let path = a
                    .pointer("/link/path")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let md5 = a.get("md5").and_then(Value::as_str).unwrap_or("");
                let sha = a.get("sha256").and_then(Value::as_str);
                let mut o = Map::new();
                o.insert("path".into(), path.clone().into());
                o.insert("expected".into(), md5.into());
                match hash_object(ctx, &path, sha.is_some()).await {
                    Ok((got_md5, got_sha)) => {
                        let mut ok = got_md5.eq_ignore_ascii_case(md5);
                        o.insert("actual".into(), got_md5.into());
                        if let (Some(want), Some(got)) = (sha, got_sha) {
                            ok &= got.eq_ignore_ascii_case(want);
                            o.insert("sha256_expected".into(), want.into());
                            o.insert("sha256_actual".into(), got.into());
                        }
                        o.insert("ok".into(), ok.into());
                    }
                    Err(e) => {
                        o.insert("ok".into(), false.into());
                        o.insert("error".into(), e.to_string().into());
                    }
                }
                Value::Object(o)
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        Ok::<_, String>(results)
    })?;
    let bad: Vec<&str> = results
        .iter()
        .filter(|r| r["ok"] != Value::Bool(true))
        .map(|r| r["path"].as_str().unwrap_or(""))
        .collect();
    let msg = (!bad.is_empty()).then(|| {
        format!(
            "Error: verification failed for {} of {} artifacts: {}",
            bad.len(),
            results.len(),
            bad.join(", ")
        )
    });
    print(&Value::Array(results), format)?;
    Ok(match msg {
        Some(m) => {
            eprintln!("{m}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    })
}
