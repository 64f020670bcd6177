//! ListObjects (v1 and v2): pages of the bucket directory walk, with common prefixes.

use super::*;

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

impl Endpoint {
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

pub(super) async fn list_objects(
    ep: &Endpoint,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let input = req.input;
    let url = input
        .encoding_type
        .as_ref()
        .is_some_and(|e| e.as_str() == EncodingType::URL);
    let enc = |s: String| if url { url_encode(&s) } else { s };
    let max = page_size(input.max_keys)?;
    let listed = ep
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

pub(super) async fn list_objects_v2(
    ep: &Endpoint,
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
    let listed = ep
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
