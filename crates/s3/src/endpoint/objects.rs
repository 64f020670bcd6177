//! Object operations: put, head, get, delete (one or many), copy, ACLs (fixed), with their
//! conditions and checksums.

use super::*;

fn metadata_out(m: &BTreeMap<String, String>) -> Option<Metadata> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn stream_file(mut file: File, start: u64, len: u64) -> io::Result<StreamingBlob> {
    use tokio::io::AsyncReadExt as _;
    file.seek(io::SeekFrom::Start(start))?;
    let reader = tokio::fs::File::from_std(file).take(len);
    Ok(StreamingBlob::wrap(
        tokio_util::io::ReaderStream::with_capacity(reader, store::IO_CHUNK),
    ))
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

pub(super) async fn put_object(
    ep: &Endpoint,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let trailers = req.trailing_headers.clone();
    let input = req.input;
    check_key(&input.key)?;
    let create_only = write_precondition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
    let store = ep.store.clone();
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
    let received = ingest::receive(&ep.store, input.body, expect, trailers).await?;
    let md5 = hex(&received.md5);
    let store = ep.store.clone();
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

pub(super) async fn head_object(
    ep: &Endpoint,
    req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let store = ep.store.clone();
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

pub(super) async fn get_object(
    ep: &Endpoint,
    req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let input = req.input;
    let store = ep.store.clone();
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

pub(super) async fn delete_object(
    ep: &Endpoint,
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
    let store = ep.store.clone();
    let (bucket, key) = (input.bucket, input.key);
    blocking(move || store.delete_object(&bucket, &key)).await?;
    Ok(S3Response::new(DeleteObjectOutput::default()))
}

pub(super) async fn delete_objects(
    ep: &Endpoint,
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
    let store = ep.store.clone();
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

pub(super) async fn copy_object(
    ep: &Endpoint,
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
    let store = ep.store.clone();
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

pub(super) async fn get_object_acl(
    ep: &Endpoint,
    req: S3Request<GetObjectAclInput>,
) -> S3Result<S3Response<GetObjectAclOutput>> {
    let store = ep.store.clone();
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

pub(super) async fn put_object_acl(
    ep: &Endpoint,
    req: S3Request<PutObjectAclInput>,
) -> S3Result<S3Response<PutObjectAclOutput>> {
    let store = ep.store.clone();
    blocking(move || {
        store
            .open_object(&req.input.bucket, &req.input.key)
            .map(|_| ())
    })
    .await?;
    Ok(S3Response::new(PutObjectAclOutput::default()))
}
