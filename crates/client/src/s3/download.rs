//! Downloads (ranged, parallel), hashing reads and deletes.

use super::{Ctx, IN_FLIGHT, PART, Result, S3Error, Transfer, hex, key_path, s3_error, split_s3};
use futures::{StreamExt, TryStreamExt};
use md5::Md5;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One range of an object, checked to be whole.
async fn range(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    (bucket, key): (&str, &str),
    start: u64,
    size: u64,
) -> Result<bytes::Bytes> {
    let end = (start + PART as u64).min(size);
    let data = store
        .get_range(path, start..end)
        .await
        .map_err(|e| s3_error(bucket, key, e))?;
    if data.len() as u64 != end - start {
        return Err(S3Error::ShortRead {
            bucket: bucket.to_string(),
            key: key.to_string(),
            offset: start,
            got: data.len() as u64,
            want: end - start,
        });
    }
    Ok(data)
}

fn interrupted(bucket: &str, key: &str) -> S3Error {
    S3Error::Interrupted {
        transfer: Transfer::Download,
        bucket: bucket.to_string(),
        key: key.to_string(),
    }
}

/// Downloads an object to a file with parallel ranged GETs, each range written at its offset.
/// The data goes to a temporary file beside `file`, renamed over it only once complete: a failed
/// or interrupted download leaves an existing `file` untouched and no partial file behind.
pub async fn download(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    file: &Path,
    cancel: &CancellationToken,
) -> Result<()> {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let size = store
        .head(&path)
        .await
        .map_err(|e| s3_error(bucket, key, e))?
        .size;
    let unwritable = |source| S3Error::Write {
        path: file.to_path_buf(),
        source,
    };
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
    let meter = ctx.progress.start(key, size);
    let starts: Vec<u64> = (0..size).step_by(PART).collect();
    let fetched = futures::stream::iter(starts)
        .map(|start| {
            let (store, path, out, meter) = (store.clone(), path.clone(), out.clone(), &meter);
            async move {
                let data = range(&*store, &path, (bucket, key), start, size).await?;
                let n = data.len() as u64;
                tokio::task::spawn_blocking(move || out.write_all_at(&data, start))
                    .await?
                    .map_err(unwritable)?;
                meter.advance(n);
                Ok::<(), S3Error>(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>();
    // On an interruption the temporary file is dropped, hence removed.
    tokio::select! {
        r = fetched => r?,
        _ = cancel.cancelled() => return Err(interrupted(bucket, key)),
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
    meter.finish();
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
) -> Result<(String, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let size = store
        .head(&path)
        .await
        .map_err(|e| s3_error(bucket, key, e))?
        .size;
    let unwritable = |source| S3Error::Write {
        path: file.to_path_buf(),
        source,
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(unwritable)?;
    let starts: Vec<u64> = (0..size).step_by(PART).collect();
    let mut ranges = futures::stream::iter(starts)
        .map(|start| {
            let (store, path) = (store.clone(), path.clone());
            async move { range(&*store, &path, (bucket, key), start, size).await }
        })
        .buffered(IN_FLIGHT);
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let mut done = 0u64;
    loop {
        let next = tokio::select! {
            n = ranges.next() => n,
            _ = cancel.cancelled() => return Err(interrupted(bucket, key)),
        };
        let Some(data) = next else { break };
        let data = data?;
        done += data.len() as u64;
        // The write and the hashing of one part run on a blocking thread, which owns them
        // meanwhile.
        let (f, m, s) = tokio::task::spawn_blocking(move || {
            out.write_all(&data)?;
            md5.update(&data);
            sha.update(&data);
            Ok::<_, std::io::Error>((out, md5, sha))
        })
        .await?
        .map_err(unwritable)?;
        (out, md5, sha) = (f, m, s);
        progress(done, size);
    }
    out.sync_all().map_err(unwritable)?;
    Ok((hex(&md5.finalize()), hex(&sha.finalize())))
}

/// md5 and sha256 (when asked for) of an object, read as one stream.
pub async fn hash_object(
    ctx: &Ctx,
    path: &str,
    want_sha: bool,
) -> Result<(String, Option<String>)> {
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
pub async fn remove(ctx: &Ctx, bucket: &str, key: &str) -> Result<()> {
    match ctx.store(bucket)?.delete(&key_path(key)?).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(s3_error(bucket, key, e)),
    }
}
