//! Uploads: one read of the file, hashed while it is sent; multipart above one part.

use super::{Ctx, IN_FLIGHT, PART, Result, S3Error, Transfer, hex, key_path, s3_error};
use bytes::Bytes;
use md5::Md5;
use object_store::{
    Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use tokio_util::sync::CancellationToken;

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
/// the S3 side) before this returns [`S3Error::Interrupted`].
pub async fn upload(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    file: &Path,
    attributes: Attributes,
    hash: Hashing,
    cancel: &CancellationToken,
) -> Result<Uploaded> {
    let store = ctx.store(bucket)?;
    let path = key_path(key)?;
    let unreadable = |source| S3Error::Read {
        path: file.to_path_buf(),
        source,
    };
    let interrupted = || S3Error::Interrupted {
        transfer: Transfer::Upload,
        bucket: bucket.to_string(),
        key: key.to_string(),
    };
    let f = std::fs::File::open(file).map_err(unreadable)?;
    let size = f.metadata().map_err(unreadable)?.len();
    let meter = ctx.progress.start(key, size);
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = spawn_reader(f, hash, tx);
    let first = match rx.recv().await {
        Some(r) => r.map_err(unreadable)?,
        None => Bytes::new(),
    };
    let put = if first.len() < PART {
        meter.advance(first.len() as u64);
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
                meter.advance(part.len() as u64);
                w.put(part);
                next = match rx.recv().await {
                    Some(r) => Some(r.map_err(unreadable)?),
                    None => None,
                };
            }
            Ok::<(), S3Error>(())
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
    let (md5, sha256, total) = reader.await?;
    meter.finish();
    if total != size {
        return Err(S3Error::Changed {
            path: file.to_path_buf(),
            before: size,
            read: total,
        });
    }
    Ok(Uploaded {
        etag: put.e_tag.unwrap_or_default().trim_matches('"').to_string(),
        md5,
        sha256,
    })
}

/// md5 of a file, read in one streaming pass on a blocking thread.
pub async fn file_md5(file: &Path) -> Result<String> {
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let unreadable = |source| S3Error::Read {
            path: file.clone(),
            source,
        };
        let mut f = std::fs::File::open(&file).map_err(unreadable)?;
        let mut h = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(unreadable)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex(&h.finalize()))
    })
    .await?
}
