//! `impl s3s::S3` over the local artifact root.

use crate::blocking;
use crate::ingest::{self, Algo, Expect};
use crate::list::{self, Entry, Query};
use crate::store::{self, Headers, ObjectInfo, Store, io_err, no_such_upload};
use crate::util::{check_key, hex, unhex, url_encode};
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::*;
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Owner shown in listings and ACLs.
const OWNER_ID: &str = "ims";
/// Default and largest page of ListObjects / ListParts.
const MAX_PAGE: usize = 1000;
/// S3's smallest part size (all parts but the last).
const MIN_PART: u64 = 5 << 20;
const MAX_PARTS: i32 = 10_000;

pub(crate) struct Backend {
    pub store: Arc<Store>,
}

fn owner() -> Owner {
    Owner {
        display_name: Some(OWNER_ID.into()),
        id: Some(OWNER_ID.into()),
    }
}

/// The fixed ACL of every bucket and object: the owner has full control.
fn fixed_grants() -> Grants {
    vec![Grant {
        grantee: Some(Grantee {
            display_name: Some(OWNER_ID.into()),
            email_address: None,
            id: Some(OWNER_ID.into()),
            type_: Type::from_static(Type::CANONICAL_USER),
            uri: None,
        }),
        permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
    }]
}

fn etag(v: &str) -> ETag {
    ETag::Strong(v.to_owned())
}

fn metadata_out(m: &BTreeMap<String, String>) -> Option<Metadata> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn metadata_in(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn etag_matches(cond: &ETagCondition, current: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == current,
    }
}

/// RFC 9110 conditional request evaluation for GET/HEAD.
fn check_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = Timestamp::from(truncate_to_secs(info.modified));
    if let Some(c) = if_match {
        if !etag_matches(c, &info.etag) {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
    } else if let Some(t) = if_unmodified_since
        && modified > *t
    {
        return Err(s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold"
        ));
    }
    if let Some(c) = if_none_match {
        if etag_matches(c, &info.etag) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since
        && modified <= *t
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

/// `x-amz-copy-source-if-*`: every failed condition is a 412.
fn check_copy_source(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    check_conditions(
        info,
        if_match,
        if_none_match,
        if_modified_since,
        if_unmodified_since,
    )
    .map_err(|e| {
        if e.code() == &s3s::S3ErrorCode::NotModified {
            s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            )
        } else {
            e
        }
    })
}

/// Conditional writes: `If-None-Match: *` (create only) is honoured; anything else is refused
/// rather than ignored. Returns whether the write may only create.
fn write_precondition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<bool> {
    if if_match.is_some() {
        return Err(s3_error!(
            NotImplemented,
            "Conditional writes with If-Match are not supported"
        ));
    }
    match if_none_match {
        None => Ok(false),
        Some(ETagCondition::Any) => Ok(true),
        Some(_) => Err(s3_error!(
            NotImplemented,
            "If-None-Match on writes supports only '*'"
        )),
    }
}

/// Which additional checksum to verify: a value in a header, or one announced as a trailer.
fn checksum_expect(
    given: [(Algo, Option<String>); 5],
    headers: &http::HeaderMap,
) -> Option<(Algo, Option<String>)> {
    for (algo, value) in given {
        if let Some(v) = value {
            return Some((algo, Some(v)));
        }
    }
    let trailer = headers.get("x-amz-trailer")?.to_str().ok()?;
    trailer
        .split(',')
        .find_map(Algo::from_header)
        .map(|a| (a, None))
}

fn set_checksum(
    sum: Option<(Algo, String)>,
    crc32: &mut Option<String>,
    crc32c: &mut Option<String>,
    crc64: &mut Option<String>,
    sha1: &mut Option<String>,
    sha256: &mut Option<String>,
) {
    if let Some((algo, v)) = sum {
        *match algo {
            Algo::Crc32 => crc32,
            Algo::Crc32c => crc32c,
            Algo::Crc64Nvme => crc64,
            Algo::Sha1 => sha1,
            Algo::Sha256 => sha256,
        } = Some(v);
    }
}

fn stream_file(mut file: File, start: u64, len: u64) -> io::Result<StreamingBlob> {
    use tokio::io::AsyncReadExt as _;
    file.seek(io::SeekFrom::Start(start))?;
    let reader = tokio::fs::File::from_std(file).take(len);
    Ok(StreamingBlob::wrap(
        tokio_util::io::ReaderStream::with_capacity(reader, store::IO_CHUNK),
    ))
}

/// Parses `x-amz-copy-source` into a bucket and a validated key.
fn copy_source(src: &CopySource) -> S3Result<(String, String)> {
    match src {
        CopySource::Bucket { bucket, key, .. } => {
            if !ims_core::s3name::valid_bucket(bucket) {
                return Err(s3_error!(
                    InvalidBucketName,
                    "The copy source bucket name is not valid"
                ));
            }
            check_key(key)?;
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(s3_error!(
            NotImplemented,
            "Only bucket/key copy sources are supported"
        )),
    }
}

// ---- multipart upload state ---------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct UploadFile {
    bucket: String,
    key: String,
    initiated: String,
    headers: Headers,
}

#[derive(Serialize, Deserialize, Clone)]
struct PartFile {
    number: i32,
    file: String,
    size: u64,
    /// Hex MD5 of the part, computed while it was received.
    md5: String,
    #[serde(default)]
    checksum: Option<(String, String)>,
}

fn sidecar_name(n: i32) -> String {
    format!("part-{n:05}.json")
}

fn load_upload(dir: &Path, bucket: &str, key: &str) -> S3Result<UploadFile> {
    let data = match fs::read(dir.join("upload.json")) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_such_upload()),
        Err(e) => return Err(io_err(e)),
    };
    let u: UploadFile = serde_json::from_slice(&data).map_err(S3Error::internal_error)?;
    if u.bucket != bucket || u.key != key {
        return Err(no_such_upload());
    }
    Ok(u)
}

fn load_parts(dir: &Path) -> S3Result<BTreeMap<i32, PartFile>> {
    let mut parts = BTreeMap::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_such_upload()),
        Err(e) => return Err(io_err(e)),
    };
    for e in rd {
        let e = e.map_err(io_err)?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("part-") && name.ends_with(".json") {
            let Ok(data) = fs::read(e.path()) else {
                continue;
            };
            if let Ok(p) = serde_json::from_slice::<PartFile>(&data) {
                parts.insert(p.number, p);
            }
        }
    }
    Ok(parts)
}

/// Moves a received part into its upload (under the part's lock) and records it, replacing and
/// removing an earlier upload of the same part number.
fn save_part(
    store: &Store,
    dir: &Path,
    id: &str,
    tmp: store::TempFile,
    part: PartFile,
) -> S3Result<()> {
    let n = part.number;
    let _g = store.lock(id, &n.to_string());
    if !dir.join("upload.json").is_file() {
        return Err(no_such_upload());
    }
    let sidecar = dir.join(sidecar_name(n));
    let old: Option<PartFile> = fs::read(&sidecar)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok());
    let file = store.place_part(tmp, dir, n)?;
    let part = PartFile { file, ..part };
    store.write_json(&sidecar, &part).map_err(io_err)?;
    if let Some(old) = old
        && old.file != part.file
        && !old.file.contains('/')
    {
        let _ = fs::remove_file(dir.join(old.file));
    }
    Ok(())
}

fn remove_upload(dir: &Path) {
    // A part arriving meanwhile makes removal fail with ENOTEMPTY: try again.
    for _ in 0..5 {
        match fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => continue,
        }
    }
    tracing::warn!(dir = %dir.display(), "could not remove a multipart upload directory");
}

fn info_headers(
    h: &Headers,
) -> (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    (
        h.content_type
            .clone()
            .unwrap_or_else(|| "binary/octet-stream".to_owned()),
        h.content_encoding.clone(),
        h.content_disposition.clone(),
        h.content_language.clone(),
        h.cache_control.clone(),
    )
}

#[async_trait::async_trait]
impl S3 for Backend {
    // ---- buckets ---------------------------------------------------------------------------

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let store = self.store.clone();
        let mut buckets = blocking(move || store.list_buckets()).await?;
        if let Some(p) = &req.input.prefix {
            buckets.retain(|(name, _)| name.starts_with(p.as_str()));
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|(name, t)| Bucket {
                        name: Some(name),
                        creation_date: Some(t.into()),
                        bucket_region: None,
                    })
                    .collect(),
            ),
            owner: Some(owner()),
            prefix: req.input.prefix,
            continuation_token: None,
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let store = self.store.clone();
        blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let store = self.store.clone();
        blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let store = self.store.clone();
        let bucket = req.input.bucket;
        let location = format!("/{bucket}");
        blocking(move || store.create_bucket(&bucket)).await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(location),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let store = self.store.clone();
        blocking(move || store.delete_bucket(&req.input.bucket)).await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let store = self.store.clone();
        blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(fixed_grants()),
            owner: Some(owner()),
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let store = self.store.clone();
        blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
        Ok(S3Response::new(PutBucketAclOutput {}))
    }

    // ---- objects -----------------------------------------------------------------------------

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let trailers = req.trailing_headers.clone();
        let input = req.input;
        check_key(&input.key)?;
        let create_only =
            write_precondition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let store = self.store.clone();
        let bucket = input.bucket.clone();
        blocking(move || store.require_bucket(&bucket).map(|_| ())).await?;
        let expect = Expect {
            length: input.content_length.and_then(|l| u64::try_from(l).ok()),
            content_md5: input.content_md5,
            checksum: checksum_expect(
                [
                    (Algo::Crc32, input.checksum_crc32),
                    (Algo::Crc32c, input.checksum_crc32c),
                    (Algo::Crc64Nvme, input.checksum_crc64nvme),
                    (Algo::Sha1, input.checksum_sha1),
                    (Algo::Sha256, input.checksum_sha256),
                ],
                &req.headers,
            ),
        };
        let headers = Headers {
            content_type: input.content_type,
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            metadata: metadata_in(input.metadata),
        };
        let received = ingest::receive(&self.store, input.body, expect, trailers).await?;
        let md5 = hex(&received.md5);
        let store = self.store.clone();
        let (bucket, key) = (input.bucket, input.key);
        let info =
            blocking(move || store.commit(received.tmp, &bucket, &key, md5, headers, create_only))
                .await?;
        let mut out = PutObjectOutput {
            e_tag: Some(etag(&info.etag)),
            size: i64::try_from(info.size).ok(),
            ..Default::default()
        };
        set_checksum(
            received.checksum,
            &mut out.checksum_crc32,
            &mut out.checksum_crc32c,
            &mut out.checksum_crc64nvme,
            &mut out.checksum_sha1,
            &mut out.checksum_sha256,
        );
        Ok(S3Response::new(out))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let store = self.store.clone();
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let info = blocking(move || {
            let (f, md) = store.open_object(&bucket, &key)?;
            store.info(&bucket, &key, &f, &md)
        })
        .await?;
        check_conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (content_type, content_encoding, content_disposition, content_language, cache_control) =
            info_headers(&info.headers);
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: i64::try_from(info.size).ok(),
            content_type: Some(content_type),
            content_encoding,
            content_disposition,
            content_language,
            cache_control,
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(info.modified.into()),
            metadata: metadata_out(&info.headers.metadata),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let store = self.store.clone();
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let (file, info) = blocking(move || {
            let (f, md) = store.open_object(&bucket, &key)?;
            let info = store.info(&bucket, &key, &f, &md)?;
            Ok((f, info))
        })
        .await?;
        check_conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (start, len, content_range) = match input.range {
            Some(r) => {
                let rg = r.check(info.size)?;
                let range = format!("bytes {}-{}/{}", rg.start, rg.end - 1, info.size);
                (rg.start, rg.end - rg.start, Some(range))
            }
            None => (0, info.size, None),
        };
        let body = stream_file(file, start, len).map_err(io_err)?;
        let (content_type, content_encoding, content_disposition, content_language, cache_control) =
            info_headers(&info.headers);
        Ok(S3Response::new(GetObjectOutput {
            body: Some(body),
            accept_ranges: Some("bytes".into()),
            content_length: i64::try_from(len).ok(),
            content_range,
            content_type: Some(content_type),
            content_encoding,
            content_disposition,
            content_language,
            cache_control,
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(info.modified.into()),
            metadata: metadata_out(&info.headers.metadata),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        if input.if_match.is_some()
            || input.if_match_last_modified_time.is_some()
            || input.if_match_size.is_some()
        {
            return Err(s3_error!(
                NotImplemented,
                "Conditional deletes are not supported"
            ));
        }
        let store = self.store.clone();
        let (bucket, key) = (input.bucket, input.key);
        blocking(move || store.delete_object(&bucket, &key)).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "A DeleteObjects request can name at most 1000 keys"
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let store = self.store.clone();
        let bucket = input.bucket;
        let objects = input.delete.objects;
        let (deleted, errors) = blocking(move || {
            store.require_bucket(&bucket)?;
            let mut deleted = Vec::new();
            let mut errors = Vec::new();
            for o in objects {
                match store.delete_object(&bucket, &o.key) {
                    Ok(()) => {
                        if !quiet {
                            deleted.push(DeletedObject {
                                key: Some(o.key),
                                ..Default::default()
                            });
                        }
                    }
                    Err(e) => errors.push(s3s::dto::Error {
                        code: Some(e.code().as_str().to_owned()),
                        message: e.message().map(str::to_owned),
                        key: Some(o.key),
                        version_id: None,
                    }),
                }
            }
            Ok((deleted, errors))
        })
        .await?;
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            request_charged: None,
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str().eq_ignore_ascii_case(MetadataDirective::REPLACE));
        let onto_itself = src_bucket == input.bucket && src_key == input.key;
        if onto_itself && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let conditions = (
            input.copy_source_if_match,
            input.copy_source_if_none_match,
            input.copy_source_if_modified_since,
            input.copy_source_if_unmodified_since,
        );
        let new_headers = replace.then(|| Headers {
            content_type: input.content_type,
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            metadata: metadata_in(input.metadata),
        });
        let store = self.store.clone();
        let (bucket, key) = (input.bucket, input.key);
        let info = blocking(move || {
            let check = |src_info: &ObjectInfo| {
                check_copy_source(
                    src_info,
                    conditions.0.as_ref(),
                    conditions.1.as_ref(),
                    conditions.2.as_ref(),
                    conditions.3.as_ref(),
                )
            };
            if onto_itself && let Some(headers) = new_headers {
                // Only the metadata changes: no byte is copied, whatever the object's size, and
                // the object keeps its ETag and modification time.
                return store.replace_headers(&bucket, &key, headers, check);
            }
            store.require_bucket(&bucket)?;
            let (src, md) = store.open_object(&src_bucket, &src_key)?;
            let src_info = store.info(&src_bucket, &src_key, &src, &md)?;
            check(&src_info)?;
            let mut tmp = store.temp_file().map_err(io_err)?;
            let plain_md5 = src_info.etag.len() == 32 && !src_info.etag.contains('-');
            let md5 = if plain_md5 {
                // The content's MD5 is known: let the kernel copy (or reflink) the bytes.
                let copied =
                    io::copy(&mut (&src).take(src_info.size), &mut tmp.file).map_err(io_err)?;
                if copied != src_info.size {
                    return Err(s3_error!(
                        InternalError,
                        "The source object changed while it was copied; try again"
                    ));
                }
                src_info.etag.clone()
            } else {
                hex(&store::copy_hashed(&src, 0, src_info.size, &mut tmp.file).map_err(io_err)?)
            };
            let unchanged = src
                .metadata()
                .is_ok_and(|now| store::Stamp::of(&now) == store::Stamp::of(&md));
            if !unchanged {
                return Err(s3_error!(
                    InternalError,
                    "The source object changed while it was copied; try again"
                ));
            }
            tmp.file.sync_all().map_err(io_err)?;
            let headers = new_headers.unwrap_or(src_info.headers);
            store.commit(tmp, &bucket, &key, md5, headers, false)
        })
        .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&info.etag)),
                last_modified: Some(info.modified.into()),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn get_object_acl(
        &self,
        req: S3Request<GetObjectAclInput>,
    ) -> S3Result<S3Response<GetObjectAclOutput>> {
        let store = self.store.clone();
        blocking(move || {
            store
                .open_object(&req.input.bucket, &req.input.key)
                .map(|_| ())
        })
        .await?;
        Ok(S3Response::new(GetObjectAclOutput {
            grants: Some(fixed_grants()),
            owner: Some(owner()),
            request_charged: None,
        }))
    }

    /// Accepted and ignored: every object has the fixed ACL (`x-amz-acl` on PUT is ignored too).
    async fn put_object_acl(
        &self,
        req: S3Request<PutObjectAclInput>,
    ) -> S3Result<S3Response<PutObjectAclOutput>> {
        let store = self.store.clone();
        blocking(move || {
            store
                .open_object(&req.input.bucket, &req.input.key)
                .map(|_| ())
        })
        .await?;
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }

    // ---- listings ----------------------------------------------------------------------------

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let max = page_size(input.max_keys)?;
        let listed = self
            .list(
                input.bucket.clone(),
                input.prefix.clone().unwrap_or_default(),
                input.delimiter.clone(),
                input.marker.clone(),
                max,
                true,
            )
            .await?;
        let next_marker = listed
            .truncated
            .then(|| listed.last.clone())
            .flatten()
            .map(enc);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            marker: Some(enc(input.marker.unwrap_or_default())),
            max_keys: i32::try_from(max).ok(),
            is_truncated: Some(listed.truncated),
            contents: Some(listed.contents(url)),
            common_prefixes: listed.prefixes(url),
            delimiter: input.delimiter.map(enc),
            next_marker,
            encoding_type: input.encoding_type,
            request_charged: None,
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let max = page_size(input.max_keys)?;
        let after = match &input.continuation_token {
            Some(t) => Some(
                unhex(t)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        s3_error!(
                            InvalidArgument,
                            "The continuation token provided is incorrect"
                        )
                    })?,
            ),
            None => input.start_after.clone(),
        };
        let listed = self
            .list(
                input.bucket.clone(),
                input.prefix.clone().unwrap_or_default(),
                input.delimiter.clone(),
                after,
                max,
                input.fetch_owner.unwrap_or(false),
            )
            .await?;
        let next = listed
            .truncated
            .then(|| listed.last.as_deref().map(|s| hex(s.as_bytes())))
            .flatten();
        let contents = listed.contents(url);
        let prefixes = listed.prefixes(url);
        let count = contents.len() + prefixes.as_ref().map_or(0, Vec::len);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            max_keys: i32::try_from(max).ok(),
            key_count: i32::try_from(count).ok(),
            continuation_token: input.continuation_token,
            is_truncated: Some(listed.truncated),
            next_continuation_token: next,
            contents: Some(contents),
            common_prefixes: prefixes,
            delimiter: input.delimiter.map(enc),
            encoding_type: input.encoding_type,
            start_after: input.start_after.map(enc),
            request_charged: None,
        }))
    }

    // ---- multipart uploads -------------------------------------------------------------------

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        let upload = UploadFile {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            initiated: chrono::Utc::now().to_rfc3339(),
            headers: Headers {
                content_type: input.content_type,
                content_encoding: input.content_encoding,
                content_disposition: input.content_disposition,
                content_language: input.content_language,
                cache_control: input.cache_control,
                metadata: metadata_in(input.metadata),
            },
        };
        let store = self.store.clone();
        let id = blocking(move || {
            store.require_bucket(&upload.bucket)?;
            let (id, dir) = store.new_upload_dir().map_err(io_err)?;
            if let Err(e) = store.write_json(&dir.join("upload.json"), &upload) {
                remove_upload(&dir);
                return Err(io_err(e));
            }
            Ok(id)
        })
        .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            checksum_algorithm: input.checksum_algorithm,
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let trailers = req.trailing_headers.clone();
        let input = req.input;
        if !(1..=MAX_PARTS).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let dir = self.store.upload_dir(&input.upload_id)?;
        {
            let (dir, bucket, key) = (dir.clone(), input.bucket.clone(), input.key.clone());
            blocking(move || load_upload(&dir, &bucket, &key).map(|_| ())).await?;
        }
        let expect = Expect {
            length: input.content_length.and_then(|l| u64::try_from(l).ok()),
            content_md5: input.content_md5,
            checksum: checksum_expect(
                [
                    (Algo::Crc32, input.checksum_crc32),
                    (Algo::Crc32c, input.checksum_crc32c),
                    (Algo::Crc64Nvme, input.checksum_crc64nvme),
                    (Algo::Sha1, input.checksum_sha1),
                    (Algo::Sha256, input.checksum_sha256),
                ],
                &req.headers,
            ),
        };
        let received = ingest::receive(&self.store, input.body, expect, trailers).await?;
        let part = PartFile {
            number: input.part_number,
            file: String::new(),
            size: received.size,
            md5: hex(&received.md5),
            checksum: received
                .checksum
                .as_ref()
                .map(|(a, v)| (a.header().to_owned(), v.clone())),
        };
        let store = self.store.clone();
        let id = input.upload_id;
        let md5 = part.md5.clone();
        blocking(move || save_part(&store, &dir, &id, received.tmp, part)).await?;
        let mut out = UploadPartOutput {
            e_tag: Some(etag(&md5)),
            ..Default::default()
        };
        set_checksum(
            received.checksum,
            &mut out.checksum_crc32,
            &mut out.checksum_crc32c,
            &mut out.checksum_crc64nvme,
            &mut out.checksum_sha1,
            &mut out.checksum_sha256,
        );
        Ok(S3Response::new(out))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        if !(1..=MAX_PARTS).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let range = match &input.copy_source_range {
            Some(r) => Some(Range::parse(r).map_err(|_| {
                s3_error!(
                    InvalidArgument,
                    "The x-amz-copy-source-range value must be of the form bytes=first-last"
                )
            })?),
            None => None,
        };
        let dir = self.store.upload_dir(&input.upload_id)?;
        let store = self.store.clone();
        let conditions = (
            input.copy_source_if_match,
            input.copy_source_if_none_match,
            input.copy_source_if_modified_since,
            input.copy_source_if_unmodified_since,
        );
        let (bucket, key, id, n) = (input.bucket, input.key, input.upload_id, input.part_number);
        let (md5, modified) = blocking(move || {
            load_upload(&dir, &bucket, &key)?;
            let (src, md) = store.open_object(&src_bucket, &src_key)?;
            if conditions.0.is_some()
                || conditions.1.is_some()
                || conditions.2.is_some()
                || conditions.3.is_some()
            {
                let info = store.info(&src_bucket, &src_key, &src, &md)?;
                check_copy_source(
                    &info,
                    conditions.0.as_ref(),
                    conditions.1.as_ref(),
                    conditions.2.as_ref(),
                    conditions.3.as_ref(),
                )?;
            }
            let size = md.len();
            let (start, len) = match range {
                Some(r) => {
                    let rg = r.check(size)?;
                    (rg.start, rg.end - rg.start)
                }
                None => (0, size),
            };
            let mut tmp = store.temp_file().map_err(io_err)?;
            let md5 = hex(&store::copy_hashed(&src, start, len, &mut tmp.file).map_err(io_err)?);
            tmp.file.sync_all().map_err(io_err)?;
            let part = PartFile {
                number: n,
                file: String::new(),
                size: len,
                md5: md5.clone(),
                checksum: None,
            };
            save_part(&store, &dir, &id, tmp, part)?;
            Ok((md5, SystemTime::now()))
        })
        .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&md5)),
                last_modified: Some(modified.into()),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let create_only =
            write_precondition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let dir = self.store.upload_dir(&input.upload_id)?;
        let requested = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if requested.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
        let mut numbers = Vec::with_capacity(requested.len());
        for p in &requested {
            let n = p
                .part_number
                .ok_or_else(|| s3_error!(MalformedXML, "A part has no PartNumber"))?;
            if numbers.last().is_some_and(|&last| n <= last) {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order. Parts must be ordered by part number."
                ));
            }
            numbers.push(n);
        }
        // Validate the parts and open their data now, so that errors come with their own status
        // codes; the long part (assembling) runs under s3s's keep-alive below.
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let vdir = dir.clone();
        let (upload, files, etag_value) = blocking(move || {
            let upload = load_upload(&vdir, &bucket, &key)?;
            let parts = load_parts(&vdir)?;
            let mut files = Vec::with_capacity(requested.len());
            let mut md5s = Vec::with_capacity(requested.len() * 16);
            let last = requested.len() - 1;
            for (i, want) in requested.iter().enumerate() {
                let n = want.part_number.unwrap_or_default();
                let Some(part) = parts.get(&n) else {
                    return Err(s3_error!(InvalidPart, "Part {n} was not uploaded"));
                };
                if let Some(e) = &want.e_tag
                    && !e.value().trim_matches('"').eq_ignore_ascii_case(&part.md5)
                {
                    return Err(s3_error!(
                        InvalidPart,
                        "The ETag given for part {n} does not match the uploaded part"
                    ));
                }
                if i < last && part.size < MIN_PART {
                    return Err(s3_error!(
                        EntityTooSmall,
                        "Part {n} is smaller than the minimum allowed size of 5 MiB"
                    ));
                }
                if part.file.contains('/') {
                    return Err(s3_error!(InvalidPart));
                }
                let f = File::open(vdir.join(&part.file))
                    .map_err(|_| s3_error!(InvalidPart, "Part {n} is gone"))?;
                let md = f.metadata().map_err(io_err)?;
                if md.len() != part.size {
                    return Err(s3_error!(InvalidPart, "Part {n} is damaged"));
                }
                md5s.extend_from_slice(
                    &crate::util::unhex(&part.md5).ok_or_else(|| s3_error!(InvalidPart))?,
                );
                files.push((f, part.size));
            }
            let etag_value = format!("{}-{}", hex(&Md5::checksum(&md5s)), requested.len());
            Ok((upload, files, etag_value))
        })
        .await?;

        let store = self.store.clone();
        let (bucket, key) = (input.bucket, input.key);
        let future = async move {
            let out_bucket = bucket.clone();
            let out_key = key.clone();
            let info = blocking(move || {
                if !dir.join("upload.json").is_file() {
                    return Err(no_such_upload());
                }
                // One pass: each part is appended with copy_file_range (a reflink where the file
                // system can), the result fsynced and renamed into place. No part is hashed again.
                let mut tmp = store.temp_file().map_err(io_err)?;
                for (mut f, size) in files {
                    let copied = io::copy(&mut f, &mut tmp.file).map_err(io_err)?;
                    if copied != size {
                        return Err(s3_error!(
                            InternalError,
                            "A part changed while the upload was completed"
                        ));
                    }
                }
                tmp.file.sync_all().map_err(io_err)?;
                let info =
                    store.commit(tmp, &bucket, &key, etag_value, upload.headers, create_only)?;
                remove_upload(&dir);
                Ok(info)
            })
            .await?;
            Ok(CompleteMultipartUploadOutput {
                location: Some(format!("/{out_bucket}/{out_key}")),
                bucket: Some(out_bucket),
                key: Some(out_key),
                e_tag: Some(etag(&info.etag)),
                ..Default::default()
            })
        };
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            future: Some(Box::pin(future)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let dir = self.store.upload_dir(&input.upload_id)?;
        blocking(move || {
            load_upload(&dir, &input.bucket, &input.key)?;
            remove_upload(&dir);
            Ok(())
        })
        .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let dir = self.store.upload_dir(&input.upload_id)?;
        let max = match input.max_parts {
            Some(m) if m < 0 => {
                return Err(s3_error!(InvalidArgument, "max-parts must not be negative"));
            }
            Some(m) => usize::try_from(m).unwrap_or(MAX_PAGE).min(MAX_PAGE),
            None => MAX_PAGE,
        };
        let marker = input.part_number_marker.unwrap_or(0);
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let (parts, upload_dir) = blocking(move || {
            load_upload(&dir, &bucket, &key)?;
            Ok((load_parts(&dir)?, dir))
        })
        .await?;
        let mut out_parts = Vec::new();
        let mut truncated = false;
        for p in parts.values().filter(|p| p.number > marker) {
            if out_parts.len() == max {
                truncated = true;
                break;
            }
            let modified = fs::metadata(upload_dir.join(&p.file))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut part = Part {
                part_number: Some(p.number),
                size: i64::try_from(p.size).ok(),
                e_tag: Some(etag(&p.md5)),
                last_modified: Some(modified.into()),
                ..Default::default()
            };
            if let Some((name, value)) = &p.checksum {
                set_checksum(
                    Algo::from_header(name).map(|a| (a, value.clone())),
                    &mut part.checksum_crc32,
                    &mut part.checksum_crc32c,
                    &mut part.checksum_crc64nvme,
                    &mut part.checksum_sha1,
                    &mut part.checksum_sha256,
                );
            }
            out_parts.push(part);
        }
        let next = truncated
            .then(|| out_parts.last().and_then(|p| p.part_number))
            .flatten();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: i32::try_from(max).ok(),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(out_parts),
            owner: Some(owner()),
            initiator: Some(Initiator {
                display_name: Some(OWNER_ID.into()),
                id: Some(OWNER_ID.into()),
            }),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }
}

fn page_size(max_keys: Option<i32>) -> S3Result<usize> {
    match max_keys {
        Some(m) if m < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(m) => Ok(usize::try_from(m).unwrap_or(MAX_PAGE).min(MAX_PAGE)),
        None => Ok(MAX_PAGE),
    }
}

/// One page of a listing, with what S3 shows about each object.
struct Listed {
    objects: Vec<(String, ObjectInfo)>,
    prefixes: Vec<String>,
    truncated: bool,
    /// The last key or common prefix of the page (the next marker).
    last: Option<String>,
    owner: bool,
}

impl Listed {
    fn contents(&self, url: bool) -> Vec<Object> {
        self.objects
            .iter()
            .map(|(key, info)| Object {
                key: Some(if url { url_encode(key) } else { key.clone() }),
                size: i64::try_from(info.size).ok(),
                last_modified: Some(info.modified.into()),
                e_tag: Some(etag(&info.etag)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                owner: self.owner.then(owner),
                ..Default::default()
            })
            .collect()
    }

    fn prefixes(&self, url: bool) -> Option<Vec<CommonPrefix>> {
        (!self.prefixes.is_empty()).then(|| {
            self.prefixes
                .iter()
                .map(|p| CommonPrefix {
                    prefix: Some(if url { url_encode(p) } else { p.clone() }),
                })
                .collect()
        })
    }
}

impl Backend {
    async fn list(
        &self,
        bucket: String,
        prefix: String,
        delimiter: Option<String>,
        after: Option<String>,
        max: usize,
        owner: bool,
    ) -> S3Result<Listed> {
        let store = self.store.clone();
        blocking(move || {
            let dir = store.require_bucket(&bucket)?;
            let q = Query {
                prefix: &prefix,
                delimiter: delimiter.as_deref(),
                after: after.as_deref(),
                max,
            };
            let page = list::list(&dir, &q).map_err(io_err)?;
            let last = page.entries.last().map(|e| e.name().to_owned());
            let mut objects = Vec::new();
            let mut prefixes = Vec::new();
            for e in page.entries {
                match e {
                    Entry::Prefix(p) => prefixes.push(p),
                    Entry::Object { key, md } => match store.info_for_listing(&bucket, &key, &md) {
                        Ok(info) => objects.push((key, info)),
                        // Deleted or replaced by a non-file since the walk: leave it out.
                        Err(e) if e.code() == &s3s::S3ErrorCode::NoSuchKey => {}
                        Err(e) => return Err(e),
                    },
                }
            }
            Ok(Listed {
                objects,
                prefixes,
                truncated: page.truncated,
                last,
                owner,
            })
        })
        .await
    }
}
