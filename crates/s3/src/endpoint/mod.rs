//! `impl s3s::S3` over the local artifact root: the built-in endpoint's operations, by family
//! ([`buckets`], [`objects`], [`listing`], [`multipart`]), over the files of [`Store`]. The
//! trait's methods only hand each request to its family.

mod buckets;
mod listing;
mod multipart;
mod objects;

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

pub(crate) struct Endpoint {
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

#[async_trait::async_trait]
impl S3 for Endpoint {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        buckets::list_buckets(self, req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        buckets::head_bucket(self, req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        buckets::get_bucket_location(self, req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        buckets::create_bucket(self, req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        buckets::delete_bucket(self, req).await
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        buckets::get_bucket_acl(self, req).await
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        buckets::put_bucket_acl(self, req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        objects::put_object(self, req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        objects::head_object(self, req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        objects::get_object(self, req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        objects::delete_object(self, req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        objects::delete_objects(self, req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        objects::copy_object(self, req).await
    }

    async fn get_object_acl(
        &self,
        req: S3Request<GetObjectAclInput>,
    ) -> S3Result<S3Response<GetObjectAclOutput>> {
        objects::get_object_acl(self, req).await
    }

    async fn put_object_acl(
        &self,
        req: S3Request<PutObjectAclInput>,
    ) -> S3Result<S3Response<PutObjectAclOutput>> {
        objects::put_object_acl(self, req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        listing::list_objects(self, req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        listing::list_objects_v2(self, req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        multipart::create_multipart_upload(self, req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        multipart::upload_part(self, req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        multipart::upload_part_copy(self, req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        multipart::complete_multipart_upload(self, req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        multipart::abort_multipart_upload(self, req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        multipart::list_parts(self, req).await
    }
}
