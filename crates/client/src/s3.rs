//! S3 through STS, as `cray artifacts` does (`clients.md` §5): `PUT /apis/sts/token` (with the
//! configured bearer token), then path-style SigV4 requests to the returned `EndpointURL` with the
//! returned key, secret and session token.
//!
//! Uploads are multipart (8 MiB parts, several in flight); a reader thread reads the file once and
//! hashes each part (md5 and sha256) while earlier parts are on the wire. Downloads are ranged and
//! parallel, each range written at its offset. Memory stays bounded by `PART * (IN_FLIGHT + 2)`
//! whatever the object's size. Progress bars are drawn on stderr when it is a terminal, never
//! otherwise.

use crate::Client;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
pub use ims_artifacts::sigv4::hex;
use ims_artifacts::sigv4::{self, uri_encode, xml_blocks, xml_texts};
use ims_core::sts::{StsCredentials, StsJob, StsResponse};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::Md5;
use object_store::WriteMultipart;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Part and range size (what boto3 uses).
pub const PART: usize = 8 * 1024 * 1024;
/// Parts or ranges in flight at once.
pub const IN_FLIGHT: usize = 8;
const REGION: &str = "us-east-1";

/// Credentials from STS, with an endpoint URL (checked when they are received).
pub struct Creds {
    sts: StsCredentials,
}

impl Creds {
    fn access_key(&self) -> &str {
        &self.sts.access_key_id
    }
    fn secret_key(&self) -> &str {
        &self.sts.secret_access_key
    }
    fn token(&self) -> &str {
        self.sts.token()
    }
    fn endpoint(&self) -> &str {
        self.sts.endpoint_url.as_deref().unwrap_or_default()
    }
}

/// The server connection plus S3 credentials from STS.
pub struct Ctx {
    pub client: Client,
    pub creds: Creds,
    /// For a job's agent: the image the credentials are for (STS's `ImsJob`): the id its new
    /// image is to have and the bucket it goes to (the credentials may write only below
    /// `<bucket>/<image_id>/`).
    pub job: Option<StsJob>,
}

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

impl Ctx {
    /// Connects to the IMS server at `url` (with an optional bearer token) and asks its STS
    /// endpoint for S3 credentials.
    pub async fn new(url: &str, token: Option<String>) -> Result<Ctx, String> {
        let client = Client::new(url, token).map_err(|e| e.to_string())?;
        Self::with_client(url, client).await
    }

    /// As [`Ctx::new`], with a client made by the caller for the server at `url`.
    pub async fn with_client(url: &str, client: Client) -> Result<Ctx, String> {
        let mut u = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
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
        let answer: StsResponse =
            serde_json::from_value(v).map_err(|e| format!("STS: unexpected response: {e}"))?;
        if answer.credentials.endpoint_url.is_none() {
            return Err("STS: the response has no Credentials.EndpointURL".to_string());
        }
        let (creds, job) = (
            Creds {
                sts: answer.credentials,
            },
            answer.job,
        );
        Ok(Ctx { client, creds, job })
    }

    pub fn store(&self, bucket: &str) -> Result<Arc<AmazonS3>, String> {
        let c = &self.creds;
        let mut b = AmazonS3Builder::new()
            .with_endpoint(c.endpoint())
            .with_bucket_name(bucket)
            .with_access_key_id(c.access_key())
            .with_secret_access_key(c.secret_key())
            .with_region(REGION)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false);
        if !c.token().is_empty() {
            b = b.with_token(c.token());
        }
        b.build()
            .map(Arc::new)
            .map_err(|e| format!("S3 client for {}: {e}", c.endpoint()))
    }
}

pub fn key_path(key: &str) -> Result<ObjPath, String> {
    ObjPath::parse(key).map_err(|e| format!("invalid key {key:?}: {e}"))
}

/// An S3 error as a one-line message, naming the object.
pub fn s3_error(bucket: &str, key: &str, e: object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { .. } => {
            format!("Object was not found in bucket: s3://{bucket}/{key}")
        }
        e => format!("s3://{bucket}/{key}: {e}"),
    }
}

/// A token cancelled by the first Ctrl-C (SIGINT) from now on. Commands that take it handle the
/// interruption themselves — abort uploads, remove partial files, undo records — and exit with an
/// error instead of dying half-way. Call inside the runtime.
pub fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            t.cancel();
        }
    });
    token
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// No progress bars from now on in this process (the CLI's `--quiet`).
pub fn set_quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A byte-count progress bar on stderr, drawn only when stderr is a terminal (and not quiet).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if quiet() || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A progress line on stderr for work of unknown total size (`what`: the bytes so far and what
/// happened to them, e.g. "written"; elapsed time), drawn only when stderr is a terminal (and not
/// quiet).
pub fn bytes_progress(what: &str, done: &str) -> ProgressBar {
    if quiet() || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{msg}}: {{bytes}} {done}, {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Sends one SigV4-signed request with an empty body to the endpoint (path-style): for the
/// operations object_store does not offer (ListBuckets, ListObjects v1, CopyObject with new
/// metadata). `path` is unencoded (`/bucket/key`), so are the `query` pairs; `headers` are
/// lower-case names. Returns the status and the body.
async fn signed(
    c: &Creds,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, String)],
) -> Result<(reqwest::StatusCode, String), String> {
    let signer = sigv4::Signer {
        endpoint: c.endpoint(),
        region: REGION,
        access_key: c.access_key(),
        secret_key: c.secret_key(),
        token: c.token(),
    };
    let a = sigv4::send(
        &reqwest::Client::new(),
        &signer,
        method,
        path,
        query,
        extra,
        Bytes::new(),
    )
    .await?;
    Ok((a.status, a.body))
}

/// ListBuckets (`GET /`), which object_store does not offer.
pub async fn list_buckets(c: &Creds) -> Result<Value, String> {
    let (status, text) = signed(c, reqwest::Method::GET, "/", &[], &[]).await?;
    if !status.is_success() {
        return Err(format!("S3 ListBuckets: {status}: {}", text.trim()));
    }
    Ok(Value::Array(
        xml_texts(&text, "Name")
            .into_iter()
            .map(Value::String)
            .collect(),
    ))
}

/// One object of a bucket listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub key: String,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    /// As the endpoint sent it (with its quotes).
    pub etag: String,
    pub size: u64,
    pub storage_class: String,
}

/// Every object of `bucket`, as `cray artifacts list` gets them: ListObjects v1 with
/// `encoding-type=url` (keys come back URL-encoded, so any key survives the XML), paginated by
/// marker.
pub async fn list_objects(c: &Creds, bucket: &str) -> Result<Vec<Listed>, String> {
    let mut out: Vec<Listed> = vec![];
    let mut marker: Option<String> = None;
    loop {
        let mut query = vec![("encoding-type", "url")];
        if let Some(m) = &marker {
            query.push(("marker", m.as_str()));
        }
        let (status, text) =
            signed(c, reqwest::Method::GET, &format!("/{bucket}"), &query, &[]).await?;
        if !status.is_success() {
            return Err(format!(
                "s3://{bucket}: {}",
                sigv4::error_text(status, &text)
            ));
        }
        let before = out.len();
        for block in xml_blocks(&text, "Contents") {
            let field = |tag: &str| xml_texts(block, tag).into_iter().next();
            let raw_key = field("Key").ok_or("S3 ListObjects: an entry without a Key")?;
            let key = url_decode(&raw_key).ok_or_else(|| {
                format!("S3 ListObjects: a key that is not URL-encoded: {raw_key:?}")
            })?;
            let modified = field("LastModified").unwrap_or_default();
            let last_modified = chrono::DateTime::parse_from_rfc3339(&modified)
                .map_err(|e| format!("S3 ListObjects: {key}: LastModified {modified:?}: {e}"))?
                .with_timezone(&chrono::Utc);
            let size = field("Size")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("S3 ListObjects: {key}: no valid Size"))?;
            out.push(Listed {
                key,
                last_modified,
                etag: field("ETag").unwrap_or_default(),
                size,
                storage_class: field("StorageClass").unwrap_or_default(),
            });
        }
        let truncated = xml_texts(&text, "IsTruncated").first().map(String::as_str) == Some("true");
        if !truncated {
            return Ok(out);
        }
        // NextMarker is sent only with a delimiter; otherwise the last key is the marker.
        let next = match xml_texts(&text, "NextMarker").into_iter().next() {
            Some(m) => url_decode(&m),
            None => out.last().map(|l| l.key.clone()),
        };
        if out.len() == before || next.is_none() || next == marker {
            return Err(format!(
                "s3://{bucket}: the endpoint's listing is truncated but does not advance"
            ));
        }
        marker = next;
    }
}

/// Whether `bucket` exists (ListBuckets).
pub async fn bucket_exists(c: &Creds, bucket: &str) -> Result<bool, String> {
    let names = list_buckets(c).await?;
    Ok(names
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n.as_str() == Some(bucket))))
}

/// Decodes `encoding-type=url` text as botocore does (`unquote_plus`): `%XX` escapes and `+`
/// for a space. `None` for a bad escape or bytes that are not UTF-8.
fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                // from_str_radix alone would take a sign ("%+1").
                if !h.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Replaces an object's user metadata (and content type) in place: CopyObject onto itself with
/// `x-amz-metadata-directive: REPLACE`. Returns the object's new ETag (without quotes).
///
/// This is how a metadata value known only after a single-pass multipart upload (the md5) gets
/// onto the object. The built-in endpoint does it without copying bytes; AWS S3 refuses copies of
/// objects over 5 GiB in one request, which the caller must tolerate.
pub async fn replace_metadata(
    c: &Creds,
    bucket: &str,
    key: &str,
    content_type: Option<&str>,
    metadata: &[(&str, &str)],
) -> Result<String, String> {
    let mut headers: Vec<(String, String)> = vec![
        (
            "x-amz-copy-source".into(),
            uri_encode(&format!("/{bucket}/{key}"), true),
        ),
        ("x-amz-metadata-directive".into(), "REPLACE".into()),
    ];
    if let Some(t) = content_type {
        headers.push(("content-type".into(), t.into()));
    }
    for (k, v) in metadata {
        headers.push((
            format!("x-amz-meta-{}", k.to_ascii_lowercase()),
            v.to_string(),
        ));
    }
    let extra: Vec<(&str, String)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let (status, text) = signed(
        c,
        reqwest::Method::PUT,
        &format!("/{bucket}/{key}"),
        &[],
        &extra,
    )
    .await?;
    // S3 may answer 200 with an error document for a copy that failed midway.
    if !status.is_success() || text.contains("<Error>") {
        let detail = xml_texts(&text, "Message")
            .pop()
            .unwrap_or_else(|| text.trim().to_string());
        return Err(format!(
            "setting the metadata of s3://{bucket}/{key} failed: {status}: {detail}"
        ));
    }
    Ok(xml_texts(&text, "ETag")
        .pop()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string())
}

/// What one upload did.
pub struct Uploaded {
    /// The object's ETag, without quotes ("" if the endpoint gave none).
    pub etag: String,
    /// Hex md5 and sha256 of the bytes sent (when asked for).
    pub md5: Option<String>,
    pub sha256: Option<String>,
}

/// Which digests an upload computes while it reads the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashing {
    None,
    Md5,
    Md5Sha256,
}

/// Reads `file` in `PART`-sized chunks on a blocking thread, hashing each (as asked) before
/// handing it over: one read of the file for both the hashes and the upload.
fn spawn_reader(
    file: std::fs::File,
    hash: Hashing,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> tokio::task::JoinHandle<(Option<String>, Option<String>, u64)> {
    tokio::task::spawn_blocking(move || {
        let mut f = file;
        let mut md5 = (hash != Hashing::None).then(Md5::new);
        let mut sha = (hash == Hashing::Md5Sha256).then(Sha256::new);
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; PART];
            let mut n = 0;
            let r = loop {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break Ok(()),
                    Ok(k) => {
                        n += k;
                        if n == PART {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e));
                break;
            }
            buf.truncate(n);
            if let Some(m) = md5.as_mut() {
                m.update(&buf);
            }
            if let Some(s) = sha.as_mut() {
                s.update(&buf);
            }
            total += n as u64;
            let last = n < PART;
            // An empty last chunk still tells the receiver that the file ended.
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() || last {
                break;
            }
        }
        (
            md5.map(|m| hex(&m.finalize())),
            sha.map(|s| hex(&s.finalize())),
            total,
        )
    })
}

/// Uploads a file with the given attributes (content type, user metadata), multipart above one
/// part, reading the file exactly once; the digests `hash` asks for are computed in that pass.
///
/// When `cancel` fires, the upload stops and a multipart upload is aborted (its parts removed on
/// the S3 side) before this returns an error.
pub async fn upload(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    file: &Path,
    attributes: Attributes,
    hash: Hashing,
    cancel: &CancellationToken,
) -> Result<Uploaded, String> {
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let shown = file.display().to_string();
    let unreadable = |e: std::io::Error| format!("cannot read {shown}: {e}");
    let f = std::fs::File::open(file).map_err(unreadable)?;
    let size = f.metadata().map_err(unreadable)?.len();
    let bar = progress(size, key);
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = spawn_reader(f, hash, tx);
    let first = match rx.recv().await {
        Some(r) => r.map_err(unreadable)?,
        None => Bytes::new(),
    };
    let interrupted = || format!("interrupted while uploading s3://{bucket}/{key}");
    let put = if first.len() < PART {
        bar.inc(first.len() as u64);
        let put = store.put_opts(
            &path,
            PutPayload::from(first),
            PutOptions {
                attributes,
                ..Default::default()
            },
        );
        // A cut single PUT leaves no object.
        tokio::select! {
            r = put => r.map_err(|e| s3_error(bucket, key, e))?,
            _ = cancel.cancelled() => return Err(interrupted()),
        }
    } else {
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
        let sent = async {
            let mut next = Some(first);
            while let Some(part) = next.take() {
                if part.is_empty() {
                    break;
                }
                w.wait_for_capacity(IN_FLIGHT)
                    .await
                    .map_err(|e| s3_error(bucket, key, e))?;
                bar.inc(part.len() as u64);
                w.put(part);
                next = match rx.recv().await {
                    Some(r) => Some(r.map_err(unreadable)?),
                    None => None,
                };
            }
            Ok::<(), String>(())
        };
        let sent = tokio::select! {
            r = sent => r,
            _ = cancel.cancelled() => Err(interrupted()),
        };
        match sent {
            Ok(()) => w.finish().await.map_err(|e| s3_error(bucket, key, e))?,
            Err(e) => {
                drop(rx);
                let _ = w.abort().await;
                return Err(e);
            }
        }
    };
    drop(rx);
    let (md5, sha256, total) = reader.await.map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    if total != size {
        return Err(format!(
            "{shown} changed while it was uploaded ({size} bytes before, {total} read)"
        ));
    }
    Ok(Uploaded {
        etag: put.e_tag.unwrap_or_default().trim_matches('"').to_string(),
        md5,
        sha256,
    })
}

/// md5 of a file, read in one streaming pass on a blocking thread.
pub async fn file_md5(file: &Path) -> Result<String, String> {
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

/// Downloads an object to a file with parallel ranged GETs, each range written at its offset.
/// The data goes to a temporary file beside `file`, renamed over it only once complete: a failed
/// download leaves an existing `file` untouched and no partial file behind.
pub async fn download(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    file: &Path,
    cancel: &CancellationToken,
) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let size = store
        .head(&path)
        .await
        .map_err(|e| s3_error(bucket, key, e))?
        .size;
    let unwritable = |e: std::io::Error| format!("cannot write {}: {e}", file.display());
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".ims-get-")
        .tempfile_in(dir)
        .map_err(unwritable)?;
    tmp.as_file().set_len(size).map_err(unwritable)?;
    let out = Arc::new(tmp.as_file().try_clone().map_err(unwritable)?);
    let bar = progress(size, key);
    let starts: Vec<u64> = (0..size).step_by(PART).collect();
    let fetched = futures::stream::iter(starts)
        .map(|start| {
            let (store, path, out, bar) = (store.clone(), path.clone(), out.clone(), bar.clone());
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
                let n = data.len() as u64;
                tokio::task::spawn_blocking(move || out.write_all_at(&data, start))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(unwritable)?;
                bar.inc(n);
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>();
    // On an interruption the temporary file is dropped, hence removed.
    tokio::select! {
        r = fetched => r?,
        _ = cancel.cancelled() => {
            return Err(format!("interrupted while downloading s3://{bucket}/{key}"))
        }
    };
    out.sync_all().map_err(unwritable)?;
    // A replaced file keeps its mode; a new one gets the usual 0644 (not the temporary 0600).
    let mode = std::fs::metadata(file)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(unwritable)?;
    tmp.persist(file).map_err(|e| unwritable(e.error))?;
    bar.finish_and_clear();
    Ok(())
}

/// Downloads an object to `file` (created new, mode 0600) with parallel ranged GETs written in
/// order, computing its md5 and sha256 in the same pass. Returns (md5, sha256) in hex.
/// `progress` is called with (bytes written, object size) after every part.
pub async fn download_hashed(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    file: &Path,
    cancel: &CancellationToken,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(String, String), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let size = store
        .head(&path)
        .await
        .map_err(|e| s3_error(bucket, key, e))?
        .size;
    let unwritable = |e: std::io::Error| format!("cannot write {}: {e}", file.display());
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(unwritable)?;
    let starts: Vec<u64> = (0..size).step_by(PART).collect();
    let mut ranges = futures::stream::iter(starts)
        .map(|start| {
            let (store, path) = (store.clone(), path.clone());
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
                Ok(data)
            }
        })
        .buffered(IN_FLIGHT);
    let mut state = Some((out, Md5::new(), Sha256::new()));
    let mut done = 0u64;
    loop {
        let next = tokio::select! {
            n = ranges.next() => n,
            _ = cancel.cancelled() => {
                return Err(format!("interrupted while downloading s3://{bucket}/{key}"))
            }
        };
        let Some(data) = next else { break };
        let data = data?;
        done += data.len() as u64;
        let (mut f, mut m, mut s) = state.take().ok_or("internal error: lost state")?;
        let r = tokio::task::spawn_blocking(move || {
            f.write_all(&data)?;
            m.update(&data);
            s.update(&data);
            Ok::<_, std::io::Error>((f, m, s))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(unwritable)?;
        state = Some(r);
        progress(done, size);
    }
    let (f, m, s) = state.ok_or("internal error: lost state")?;
    f.sync_all().map_err(unwritable)?;
    Ok((hex(&m.finalize()), hex(&s.finalize())))
}

/// `s3://bucket/key` → (bucket, key).
pub fn split_s3(path: &str) -> Result<(String, String), String> {
    path.strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .map(|(b, k)| (b.to_string(), k.to_string()))
        .ok_or_else(|| format!("not an s3://BUCKET/KEY path: {path:?}"))
}

/// md5 and sha256 (when asked for) of an object, read as one stream.
pub async fn hash_object(
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

/// Deletes an object; a missing one is not an error (for clean-ups).
pub async fn remove(ctx: &Ctx, bucket: &str, key: &str) -> Result<(), String> {
    match ctx.store(bucket)?.delete(&key_path(key)?).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(s3_error(bucket, key, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_paths() {
        assert_eq!(
            split_s3("s3://boot-images/a/b").unwrap(),
            ("boot-images".into(), "a/b".into())
        );
        assert!(split_s3("s3://b").is_err());
        assert!(split_s3("http://b/k").is_err());
    }

    #[test]
    fn url_decoding_as_botocore() {
        assert_eq!(
            url_decode("a%2Bb+c%20d%C3%A4/").as_deref(),
            Some("a+b c dä/")
        );
        assert_eq!(url_decode("plain").as_deref(), Some("plain"));
        for bad in ["%", "%4", "%zz", "%+1", "%-1", "%FF"] {
            assert_eq!(url_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn xml_blocks_split_entries() {
        let x = "<L><Contents><Key>a</Key></Contents><Contents><Key>b</Key></Contents></L>";
        assert_eq!(
            xml_blocks(x, "Contents"),
            vec!["<Key>a</Key>", "<Key>b</Key>"]
        );
        assert!(xml_blocks("<L></L>", "Contents").is_empty());
    }

    #[test]
    fn xml_elements() {
        let x = "<R><ETag>&quot;abc&quot;</ETag><Name>a&amp;b</Name><Name>c</Name></R>";
        assert_eq!(xml_texts(x, "ETag"), vec!["\"abc\""]);
        assert_eq!(xml_texts(x, "Name"), vec!["a&b", "c"]);
        assert!(xml_texts(x, "Key").is_empty());
    }
}
