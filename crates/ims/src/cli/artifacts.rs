//! `ims artifacts …` and `ims images verify`: S3 through STS, as `cray artifacts` does
//! (`clients.md` §5): `PUT /apis/sts/token` (with the configured bearer token), then path-style
//! SigV4 requests to the returned `EndpointURL` with the returned key, secret and session token.
//!
//! Uploads are multipart (8 MiB parts, several in flight) with the file's md5 stored as
//! `x-amz-meta-md5sum`; downloads are ranged and parallel, each range written at its offset.
//! Memory stays bounded by `PART * IN_FLIGHT` whatever the object's size.

use super::args::{ArtifactsVerb, BucketsVerb, Format, Globals};
use super::{connection, print};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use ims_client::{Client, Resource};
use md5::Md5;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    WriteMultipart,
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Part and range size (what boto3 uses).
const PART: usize = 8 * 1024 * 1024;
/// Parts or ranges in flight at once.
const IN_FLIGHT: usize = 4;
const REGION: &str = "us-east-1";

/// Credentials from STS.
struct Creds {
    access_key: String,
    secret_key: String,
    token: String,
    endpoint: String,
}

/// The server connection plus S3 credentials from STS.
struct Ctx {
    client: Client,
    creds: Creds,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

impl Ctx {
    /// Connects as the other client commands do and asks STS for credentials.
    async fn new(g: &Globals) -> Result<Ctx, String> {
        let (url, token) = connection(g)?;
        let client = Client::new(&url, token).map_err(|e| e.to_string())?;
        let mut u = reqwest::Url::parse(&url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        u.set_query(None);
        u.set_fragment(None);
        u.path_segments_mut()
            .map_err(|()| format!("invalid URL {url:?}: not a base URL"))?
            .pop_if_empty()
            .extend(["apis", "sts", "token"]);
        let v = client
            .send(reqwest::Method::PUT, u, &[], None)
            .await
            .map_err(|e| e.to_string())?;
        let c = &v["Credentials"];
        let field = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        let missing = |k: &str| format!("STS: the response has no Credentials.{k}");
        let creds = Creds {
            access_key: field("AccessKeyId").ok_or_else(|| missing("AccessKeyId"))?,
            secret_key: field("SecretAccessKey").ok_or_else(|| missing("SecretAccessKey"))?,
            token: field("SessionToken").unwrap_or_default(),
            endpoint: field("EndpointURL").ok_or_else(|| missing("EndpointURL"))?,
        };
        Ok(Ctx { client, creds })
    }

    fn store(&self, bucket: &str) -> Result<Arc<AmazonS3>, String> {
        let c = &self.creds;
        let mut b = AmazonS3Builder::new()
            .with_endpoint(&c.endpoint)
            .with_bucket_name(bucket)
            .with_access_key_id(&c.access_key)
            .with_secret_access_key(&c.secret_key)
            .with_region(REGION)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false);
        if !c.token.is_empty() {
            b = b.with_token(&c.token);
        }
        b.build()
            .map(Arc::new)
            .map_err(|e| format!("S3 client for {}: {e}", c.endpoint))
    }
}

fn key_path(key: &str) -> Result<ObjPath, String> {
    ObjPath::parse(key).map_err(|e| format!("invalid key {key:?}: {e}"))
}

/// An S3 error as a one-line message, naming the object.
fn s3_error(bucket: &str, key: &str, e: object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { .. } => {
            format!("Object was not found in bucket: s3://{bucket}/{key}")
        }
        e => format!("s3://{bucket}/{key}: {e}"),
    }
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%:z").to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs an `ims artifacts` command.
pub fn run(verb: ArtifactsVerb, g: &Globals, format: Format) -> Result<ExitCode, String> {
    let rt = runtime()?;
    let v = rt.block_on(async {
        let ctx = Ctx::new(g).await?;
        match verb {
            ArtifactsVerb::Buckets {
                verb: BucketsVerb::List,
            } => list_buckets(&ctx.creds).await,
            ArtifactsVerb::List { bucket } => list(&ctx, &bucket).await,
            ArtifactsVerb::Describe { bucket, key } => describe(&ctx, &bucket, &key).await,
            ArtifactsVerb::Create { bucket, key, file } => create(&ctx, &bucket, &key, &file).await,
            ArtifactsVerb::Get { bucket, key, file } => get(&ctx, &bucket, &key, &file).await,
            ArtifactsVerb::Delete { bucket, key } => delete(&ctx, &bucket, &key).await,
        }
    })?;
    print(&v, format)?;
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx, bucket: &str) -> Result<Value, String> {
    let store = ctx.store(bucket)?;
    let objs: Vec<_> = store
        .list(None)
        .try_collect()
        .await
        .map_err(|e| format!("s3://{bucket}: {e}"))?;
    let artifacts: Vec<Value> = objs
        .iter()
        .map(|m| {
            let mut o = Map::new();
            o.insert("Key".into(), m.location.to_string().into());
            o.insert("LastModified".into(), time(&m.last_modified).into());
            if let Some(e) = &m.e_tag {
                o.insert("ETag".into(), e.clone().into());
            }
            o.insert("Size".into(), m.size.into());
            Value::Object(o)
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

/// md5 of a file, read in one streaming pass on a blocking thread.
async fn file_md5(file: &Path) -> Result<String, String> {
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut h = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex(&h.finalize()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Reads up to `PART` bytes (less only at the end of the file).
async fn read_part(f: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; PART];
    let mut n = 0;
    while n < PART {
        let r = f.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    Ok(buf)
}

async fn create(ctx: &Ctx, bucket: &str, key: &str, file: &Path) -> Result<Value, String> {
    upload(ctx, bucket, key, file).await?;
    Ok(json!({ "artifact": key, "Key": key }))
}

/// Uploads a file with its md5 as `x-amz-meta-md5sum`; returns the object's etag, if any.
async fn upload(ctx: &Ctx, bucket: &str, key: &str, file: &Path) -> Result<Option<String>, String> {
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", file.display());
    let size = tokio::fs::metadata(file).await.map_err(unreadable)?.len();
    // The md5 goes into the metadata, which S3 takes when the upload starts: it needs its own
    // (streaming) pass over the file before the upload.
    let md5 = file_md5(file).await?;
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::Metadata("md5sum".into()), md5.into());
    let put = if size <= PART as u64 {
        let data = tokio::fs::read(file).await.map_err(unreadable)?;
        store
            .put_opts(
                &path,
                PutPayload::from(data),
                PutOptions {
                    attributes,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| s3_error(bucket, key, e))?
    } else {
        let mut f = tokio::fs::File::open(file).await.map_err(unreadable)?;
        let upload = store
            .put_multipart_opts(
                &path,
                PutMultipartOptions {
                    attributes,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| s3_error(bucket, key, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let sent: Result<(), String> = async {
            loop {
                let part = read_part(&mut f).await.map_err(unreadable)?;
                if part.is_empty() {
                    return Ok(());
                }
                w.wait_for_capacity(IN_FLIGHT)
                    .await
                    .map_err(|e| s3_error(bucket, key, e))?;
                w.put(Bytes::from(part));
            }
        }
        .await;
        match sent {
            Ok(()) => w.finish().await.map_err(|e| s3_error(bucket, key, e))?,
            Err(e) => {
                let _ = w.abort().await;
                return Err(e);
            }
        }
    };
    Ok(put.e_tag)
}

async fn get(ctx: &Ctx, bucket: &str, key: &str, file: &Path) -> Result<Value, String> {
    use std::os::unix::fs::FileExt;
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let size = store
        .head(&path)
        .await
        .map_err(|e| s3_error(bucket, key, e))?
        .size;
    let unwritable = |e: std::io::Error| format!("cannot write {}: {e}", file.display());
    let out = std::fs::File::create(file).map_err(unwritable)?;
    out.set_len(size).map_err(unwritable)?;
    let out = Arc::new(out);
    let starts: Vec<u64> = (0..size).step_by(PART).collect();
    futures::stream::iter(starts)
        .map(|start| {
            let (store, path, out) = (store.clone(), path.clone(), out.clone());
            async move {
                let end = (start + PART as u64).min(size);
                let data = store
                    .get_range(&path, start..end)
                    .await
                    .map_err(|e| s3_error(bucket, key, e))?;
                if data.len() as u64 != end - start {
                    return Err(format!(
                        "s3://{bucket}/{key}: short read at offset {start} ({} of {} bytes)",
                        data.len(),
                        end - start
                    ));
                }
                tokio::task::spawn_blocking(move || out.write_all_at(&data, start))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(unwritable)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    out.sync_all().map_err(unwritable)?;
    Ok(Value::Null)
}

async fn delete(ctx: &Ctx, bucket: &str, key: &str) -> Result<Value, String> {
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    store
        .head(&path)
        .await
        .map_err(|e| s3_error(bucket, key, e))?;
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
        let ctx = Ctx::new(g).await?;
        let rec = ctx
            .client
            .create(Resource::Recipes, &body)
            .await
            .map_err(|e| e.to_string())?;
        let id = rec
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the server's answer has no recipe id: {rec}"))?
            .to_string();
        const BUCKET: &str = "ims";
        let key = format!("recipes/{id}/recipe.tar.gz");
        let mut uploaded = false;
        let done: Result<Value, String> = async {
            let etag = upload(&ctx, BUCKET, &key, &tarball).await?;
            uploaded = true;
            let link = json!({"link": {
                "path": format!("s3://{BUCKET}/{key}"),
                "etag": etag.unwrap_or_default(),
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
                let obj = async {
                    ctx.store(BUCKET)?
                        .delete(&key_path(&key)?)
                        .await
                        .map_err(|e| s3_error(BUCKET, &key, e))
                }
                .await;
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

/// HMAC-SHA256.
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    hmac::Mac::update(&mut m, msg);
    hmac::Mac::finalize(m).into_bytes().into()
}

/// ListBuckets (`GET /`), which object_store does not offer: one SigV4-signed request.
async fn list_buckets(c: &Creds) -> Result<Value, String> {
    let url = reqwest::Url::parse(&c.endpoint)
        .map_err(|e| format!("invalid EndpointURL {:?}: {e}", c.endpoint))?
        .join("/")
        .map_err(|e| e.to_string())?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return Err(format!("invalid EndpointURL {:?}", c.endpoint)),
    };
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let payload = hex(&Sha256::digest(b""));
    let mut headers = vec![
        ("host", host),
        ("x-amz-content-sha256", payload.clone()),
        ("x-amz-date", amz_date.clone()),
    ];
    if !c.token.is_empty() {
        headers.push(("x-amz-security-token", c.token.clone()));
    }
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let canonical = format!("GET\n/\n\n{canonical_headers}\n{signed}\n{payload}");
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut k = hmac(format!("AWS4{}", c.secret_key).as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let sig = hex(&hmac(&k, to_sign.as_bytes()));
    let mut req = reqwest::Client::new().get(url.clone()).header(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
            c.access_key
        ),
    );
    for (k, v) in &headers[1..] {
        req = req.header(*k, v);
    }
    let resp = req.send().await.map_err(|e| format!("S3 {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("S3 {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("S3 ListBuckets: {status}: {}", text.trim()));
    }
    let mut names = vec![];
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<Name>") {
        rest = &rest[i + 6..];
        let Some(j) = rest.find("</Name>") else { break };
        let name = rest[..j]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        names.push(Value::String(name));
        rest = &rest[j..];
    }
    Ok(Value::Array(names))
}

/// `s3://bucket/key` → (bucket, key).
fn split_s3(path: &str) -> Result<(String, String), String> {
    path.strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .map(|(b, k)| (b.to_string(), k.to_string()))
        .ok_or_else(|| format!("not an s3://BUCKET/KEY path: {path:?}"))
}

/// md5 and sha256 (when asked for) of an object, read as one stream.
async fn hash_object(
    ctx: &Ctx,
    path: &str,
    want_sha: bool,
) -> Result<(String, Option<String>), String> {
    let (bucket, key) = split_s3(path)?;
    let store = ctx.store(&bucket)?;
    let mut stream = store
        .get(&key_path(&key)?)
        .await
        .map_err(|e| s3_error(&bucket, &key, e))?
        .into_stream();
    let mut md5 = Md5::new();
    let mut sha = want_sha.then(Sha256::new);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| s3_error(&bucket, &key, e))?;
        md5.update(&chunk);
        if let Some(s) = sha.as_mut() {
            s.update(&chunk);
        }
    }
    Ok((hex(&md5.finalize()), sha.map(|s| hex(&s.finalize()))))
}

/// `ims images verify ID`: every artifact of the image's manifest re-read and checked; exit 1 on
/// any mismatch or unreadable artifact.
pub fn verify(id: &str, g: &Globals, format: Format) -> Result<ExitCode, String> {
    let rt = runtime()?;
    let results = rt.block_on(async {
        let ctx = Ctx::new(g).await?;
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
                        o.insert("error".into(), e.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn s3_paths() {
        assert_eq!(
            split_s3("s3://boot-images/a/b").unwrap(),
            ("boot-images".into(), "a/b".into())
        );
        assert!(split_s3("s3://b").is_err());
        assert!(split_s3("http://b/k").is_err());
    }
}
