//! A minimal AWS Signature Version 4 signer for the S3 calls `object_store` does not offer
//! (ListBuckets, ListObjects v1 and CopyObject with new metadata in the client; the multipart copy
//! of large objects here). Shared by the server's artifact store and the `ims` client.

use sha2::{Digest, Sha256};

/// Where and as whom a request is signed.
pub struct Signer<'a> {
    /// The endpoint URL (`http(s)://host[:port]`; with virtual-hosted-style addressing the bucket
    /// is already part of the host).
    pub endpoint: &'a str,
    pub region: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
    /// A session token (STS), or empty.
    pub token: &'a str,
}

/// An S3 answer, read whole.
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// HMAC-SHA256.
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    hmac::Mac::update(&mut m, msg);
    hmac::Mac::finalize(m).into_bytes().into()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters (and `/` when
/// `keep_slash`), as SigV4 canonical requests need.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The text of the first `tag` element of an S3 XML answer (in document order, at any depth,
/// namespace ignored), entities decoded; `None` when there is none or the text is not XML.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == tag)
        .map(|n| n.text().unwrap_or_default().to_string())
}

/// Whether an S3 answer is an error document (`<Error>…</Error>`): S3 may answer 200 with one for
/// a copy that failed midway.
pub fn is_error_document(xml: &str) -> bool {
    roxmltree::Document::parse(xml).is_ok_and(|d| d.root_element().tag_name().name() == "Error")
}

/// Why a signed request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid S3 endpoint {endpoint:?}{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Endpoint {
        endpoint: String,
        reason: Option<url::ParseError>,
    },
    #[error("invalid S3 path {path:?}: {source}")]
    Path {
        path: String,
        #[source]
        source: url::ParseError,
    },
    /// The request failed on the way (connection, timeout, unreadable body).
    #[error("S3 {url}: {source}")]
    Http {
        url: reqwest::Url,
        #[source]
        source: reqwest::Error,
    },
}

/// Sends one SigV4-signed request. `path` is unencoded (`/bucket/key`, or `/key` with
/// virtual-hosted-style addressing), so are the `query` pairs; `headers` are lower-case names.
pub async fn send(
    http: &reqwest::Client,
    s: &Signer<'_>,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, String)],
    body: bytes::Bytes,
) -> Result<Answer, SendError> {
    let invalid_endpoint = |reason| SendError::Endpoint {
        endpoint: s.endpoint.to_string(),
        reason,
    };
    let base = reqwest::Url::parse(s.endpoint).map_err(|e| invalid_endpoint(Some(e)))?;
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return Err(invalid_endpoint(None)),
    };
    let encoded = uri_encode(path, true);
    let mut url = base.join(&encoded).map_err(|source| SendError::Path {
        path: path.to_string(),
        source,
    })?;
    // The canonical query string: encoded pairs sorted by name (then value); the URL carries the
    // same string so that what is signed is what is sent.
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    let canonical_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    url.set_query((!canonical_query.is_empty()).then_some(canonical_query.as_str()));
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let payload = hex(&Sha256::digest(&body));
    let mut all: Vec<(String, String)> = vec![
        ("host".into(), host),
        ("x-amz-content-sha256".into(), payload.clone()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    if !s.token.is_empty() {
        all.push(("x-amz-security-token".into(), s.token.to_string()));
    }
    all.extend(
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.trim().to_string())),
    );
    all.sort();
    let canonical_headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_names = all
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{encoded}\n{canonical_query}\n{canonical_headers}\n{signed_names}\n{payload}"
    );
    let scope = format!("{date}/{}/s3/aws4_request", s.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut k = hmac(format!("AWS4{}", s.secret_key).as_bytes(), date.as_bytes());
    for part in [s.region, "s3", "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let sig = hex(&hmac(&k, to_sign.as_bytes()));
    let mut req = http.request(method, url.clone()).header(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={sig}",
            s.access_key
        ),
    );
    for (k, v) in all.iter().filter(|(k, _)| k != "host") {
        req = req.header(k, v);
    }
    let failed = |source| SendError::Http {
        url: url.clone(),
        source,
    };
    let resp = req.body(body).send().await.map_err(failed)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.map_err(failed)?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// `Code: Message` of an S3 error document, or the status and body.
pub fn error_text(status: reqwest::StatusCode, text: &str) -> String {
    match (xml_text(text, "Code"), xml_text(text, "Message")) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code,
        _ => format!("{status}: {}", text.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn uri_encoding() {
        assert_eq!(uri_encode("/b/a b/ü~", true), "/b/a%20b/%C3%BC~");
        assert_eq!(uri_encode("/b/k", false), "%2Fb%2Fk");
    }

    #[test]
    fn xml_answers() {
        let x = r#"<?xml version="1.0" encoding="UTF-8"?>
<CopyObjectResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;abc&quot;</ETag></CopyObjectResult>"#;
        assert_eq!(xml_text(x, "ETag").as_deref(), Some("\"abc\""));
        assert_eq!(xml_text(x, "Key"), None);
        assert!(!is_error_document(x));
        // The old scanner's trap: a tag name inside another element's text is text.
        let e = "<Error><Code>NoSuchKey</Code><Message>no &lt;ETag&gt; here &amp; there</Message></Error>";
        assert!(is_error_document(e));
        assert_eq!(xml_text(e, "ETag"), None);
        assert_eq!(
            error_text(reqwest::StatusCode::NOT_FOUND, e),
            "NoSuchKey: no <ETag> here & there"
        );
        assert_eq!(
            error_text(reqwest::StatusCode::BAD_GATEWAY, " <html>bad</html> "),
            "502 Bad Gateway: <html>bad</html>"
        );
        assert!(!is_error_document("not xml <Error>"));
    }
}
