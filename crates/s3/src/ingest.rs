//! Receiving a request body into a temporary file: MD5 (and the checksum the client asked for)
//! computed in the same pass, on a blocking thread, while the network side keeps reading.

use crate::store::{Store, TempFile, io_err};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Md5, Sha1, Sha256};
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3Result, s3_error};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Chunks are coalesced to about this size before they are handed to the writer thread.
const HANDOFF: usize = 512 << 10;

/// The additional checksum algorithms of S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algo {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algo {
    pub fn parse(name: &str) -> Option<Algo> {
        Some(match name.to_ascii_uppercase().as_str() {
            "CRC32" => Algo::Crc32,
            "CRC32C" => Algo::Crc32c,
            "CRC64NVME" => Algo::Crc64Nvme,
            "SHA1" => Algo::Sha1,
            "SHA256" => Algo::Sha256,
            _ => return None,
        })
    }

    /// From a header name such as `x-amz-checksum-crc32`.
    pub fn from_header(name: &str) -> Option<Algo> {
        Algo::parse(
            name.trim()
                .to_ascii_lowercase()
                .strip_prefix("x-amz-checksum-")?,
        )
    }

    pub fn header(self) -> &'static str {
        match self {
            Algo::Crc32 => "x-amz-checksum-crc32",
            Algo::Crc32c => "x-amz-checksum-crc32c",
            Algo::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algo::Sha1 => "x-amz-checksum-sha1",
            Algo::Sha256 => "x-amz-checksum-sha256",
        }
    }

    fn hasher(self) -> ChecksumHasher {
        let mut h = ChecksumHasher::default();
        match self {
            Algo::Crc32 => h.crc32 = Some(Crc32::new()),
            Algo::Crc32c => h.crc32c = Some(Crc32c::new()),
            Algo::Crc64Nvme => h.crc64nvme = Some(Crc64Nvme::new()),
            Algo::Sha1 => h.sha1 = Some(Sha1::new()),
            Algo::Sha256 => h.sha256 = Some(Sha256::new()),
        }
        h
    }
}

/// The integrity checks a request asks for.
#[derive(Default, Debug)]
pub(crate) struct Expect {
    /// Content-Length of the decoded body.
    pub length: Option<u64>,
    /// `Content-MD5` (base64).
    pub content_md5: Option<String>,
    /// Additional checksum: algorithm, and its expected value unless it comes in the trailer.
    pub checksum: Option<(Algo, Option<String>)>,
}

/// A received body.
pub(crate) struct Received {
    pub tmp: TempFile,
    pub md5: [u8; 16],
    pub size: u64,
    /// The additional checksum, verified, to echo back: (header name, base64 value).
    pub checksum: Option<(Algo, String)>,
}

fn body_error(e: s3s::StdError) -> S3Error {
    match e.downcast::<S3Error>() {
        Ok(e) => *e,
        Err(e) => s3_error!(IncompleteBody, "The request body could not be read: {e}"),
    }
}

/// Streams `body` into a new temporary file, fsyncs it and checks it against `expect`.
/// `trailers` supplies checksum values sent as aws-chunked trailers.
pub(crate) async fn receive(
    store: &Arc<Store>,
    body: Option<StreamingBlob>,
    expect: Expect,
    trailers: Option<s3s::TrailingHeaders>,
) -> S3Result<Received> {
    let tmp = {
        let store = store.clone();
        crate::blocking(move || store.temp_file().map_err(io_err)).await?
    };
    let file = tmp.file.try_clone().map_err(io_err)?;
    let algo = expect.checksum.as_ref().map(|(a, _)| *a);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    // Set once the whole body arrived: only then is the file worth an fsync.
    let complete = Arc::new(AtomicBool::new(false));
    let done = complete.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut md5 = Md5::new();
        let mut extra = algo.map(Algo::hasher);
        let mut size = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            md5.update(&chunk);
            if let Some(h) = &mut extra {
                h.update(&chunk);
            }
            file.write_all(&chunk)?;
            size += chunk.len() as u64;
        }
        if done.load(Ordering::SeqCst) {
            file.sync_all()?;
        }
        Ok::<_, std::io::Error>((md5.finalize(), extra.map(ChecksumHasher::finalize), size))
    });

    let mut failure = None;
    if let Some(mut body) = body {
        let mut buf = BytesMut::new();
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    let out = if buf.is_empty() && chunk.len() >= HANDOFF {
                        chunk
                    } else {
                        buf.extend_from_slice(&chunk);
                        if buf.len() < HANDOFF {
                            continue;
                        }
                        buf.split().freeze()
                    };
                    if tx.send(out).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    failure = Some(body_error(e));
                    break;
                }
            }
        }
        if failure.is_none() && !buf.is_empty() {
            let _ = tx.send(buf.freeze()).await;
        }
    }
    if failure.is_none() {
        complete.store(true, Ordering::SeqCst);
    }
    drop(tx);
    let written = writer.await.map_err(S3Error::internal_error)?;
    if let Some(e) = failure {
        return Err(e);
    }
    let (md5, sums, size) = written.map_err(io_err)?;

    if let Some(len) = expect.length
        && len != size
    {
        return Err(s3_error!(
            IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header"
        ));
    }
    if let Some(want) = &expect.content_md5 {
        let got = base64::engine::general_purpose::STANDARD.encode(md5);
        if want.trim() != got {
            return Err(s3_error!(
                BadDigest,
                "The Content-MD5 you specified did not match what we received."
            ));
        }
    }
    let mut checksum = None;
    if let (Some((algo, given)), Some(sums)) = (expect.checksum, sums) {
        let got = match algo {
            Algo::Crc32 => sums.checksum_crc32,
            Algo::Crc32c => sums.checksum_crc32c,
            Algo::Crc64Nvme => sums.checksum_crc64nvme,
            Algo::Sha1 => sums.checksum_sha1,
            Algo::Sha256 => sums.checksum_sha256,
        }
        .unwrap_or_default();
        let want = given.or_else(|| {
            trailers
                .as_ref()
                .and_then(|t| {
                    t.read(|h| {
                        h.get(algo.header())
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    })
                })
                .flatten()
        });
        if let Some(want) = want {
            if want.trim() != got {
                return Err(s3_error!(
                    BadDigest,
                    "The {} you specified did not match the calculated checksum.",
                    algo.header()
                ));
            }
            checksum = Some((algo, got));
        }
    }
    Ok(Received {
        tmp,
        md5,
        size,
        checksum,
    })
}
