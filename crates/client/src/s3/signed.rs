//! SigV4-signed requests for the operations `object_store` does not offer (ListBuckets,
//! ListObjects v1, CopyObject with new metadata), sent with [`ims_artifacts::sigv4`].

use super::{Creds, REGION, Result, S3Error};
use bytes::Bytes;
use ims_artifacts::sigv4::{self, is_error_document, uri_encode, xml_text};

/// Sends one SigV4-signed request with an empty body to the endpoint (path-style). `path` is
/// unencoded (`/bucket/key`), so are the `query` pairs; `headers` are lower-case names. Returns
/// the status and the body.
pub(super) async fn signed(
    c: &Creds,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, String)],
) -> Result<(reqwest::StatusCode, String)> {
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
) -> Result<String> {
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
    if !status.is_success() || is_error_document(&text) {
        return Err(S3Error::Metadata {
            bucket: bucket.to_string(),
            key: key.to_string(),
            status,
            detail: xml_text(&text, "Message").unwrap_or_else(|| text.trim().to_string()),
        });
    }
    Ok(xml_text(&text, "ETag")
        .unwrap_or_default()
        .trim_matches('"')
        .to_string())
}
