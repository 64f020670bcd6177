//! Multipart uploads: create, upload a part (or copy one), complete, abort, list the parts. Each
//! upload is a directory of part files with JSON sidecars in the state directory.

use super::*;

/// S3's smallest part size (all parts but the last).
const MIN_PART: u64 = 5 << 20;

const MAX_PARTS: i32 = 10_000;

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

pub(super) async fn create_multipart_upload(
    ep: &Endpoint,
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
    let store = ep.store.clone();
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

pub(super) async fn upload_part(
    ep: &Endpoint,
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
    let dir = ep.store.upload_dir(&input.upload_id)?;
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
    let received = ingest::receive(&ep.store, input.body, expect, trailers).await?;
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
    let store = ep.store.clone();
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

pub(super) async fn upload_part_copy(
    ep: &Endpoint,
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
    let dir = ep.store.upload_dir(&input.upload_id)?;
    let store = ep.store.clone();
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

pub(super) async fn complete_multipart_upload(
    ep: &Endpoint,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let input = req.input;
    let create_only = write_precondition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
    let dir = ep.store.upload_dir(&input.upload_id)?;
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

    let store = ep.store.clone();
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
            let info = store.commit(tmp, &bucket, &key, etag_value, upload.headers, create_only)?;
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

pub(super) async fn abort_multipart_upload(
    ep: &Endpoint,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let input = req.input;
    let dir = ep.store.upload_dir(&input.upload_id)?;
    blocking(move || {
        load_upload(&dir, &input.bucket, &input.key)?;
        remove_upload(&dir);
        Ok(())
    })
    .await?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

pub(super) async fn list_parts(
    ep: &Endpoint,
    req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let input = req.input;
    let dir = ep.store.upload_dir(&input.upload_id)?;
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
