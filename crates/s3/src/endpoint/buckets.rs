//! Bucket operations: list, head, location, create, delete, ACLs (fixed).

use super::*;

pub(super) async fn list_buckets(
    ep: &Endpoint,
    req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    let store = ep.store.clone();
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

pub(super) async fn head_bucket(
    ep: &Endpoint,
    req: S3Request<HeadBucketInput>,
) -> S3Result<S3Response<HeadBucketOutput>> {
    let store = ep.store.clone();
    blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
    Ok(S3Response::new(HeadBucketOutput::default()))
}

pub(super) async fn get_bucket_location(
    ep: &Endpoint,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    let store = ep.store.clone();
    blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
    Ok(S3Response::new(GetBucketLocationOutput::default()))
}

pub(super) async fn create_bucket(
    ep: &Endpoint,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let store = ep.store.clone();
    let bucket = req.input.bucket;
    let location = format!("/{bucket}");
    blocking(move || store.create_bucket(&bucket)).await?;
    Ok(S3Response::new(CreateBucketOutput {
        location: Some(location),
    }))
}

pub(super) async fn delete_bucket(
    ep: &Endpoint,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    let store = ep.store.clone();
    blocking(move || store.delete_bucket(&req.input.bucket)).await?;
    Ok(S3Response::new(DeleteBucketOutput {}))
}

pub(super) async fn get_bucket_acl(
    ep: &Endpoint,
    req: S3Request<GetBucketAclInput>,
) -> S3Result<S3Response<GetBucketAclOutput>> {
    let store = ep.store.clone();
    blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
    Ok(S3Response::new(GetBucketAclOutput {
        grants: Some(fixed_grants()),
        owner: Some(owner()),
    }))
}

pub(super) async fn put_bucket_acl(
    ep: &Endpoint,
    req: S3Request<PutBucketAclInput>,
) -> S3Result<S3Response<PutBucketAclOutput>> {
    let store = ep.store.clone();
    blocking(move || store.require_bucket(&req.input.bucket).map(|_| ())).await?;
    Ok(S3Response::new(PutBucketAclOutput {}))
}
