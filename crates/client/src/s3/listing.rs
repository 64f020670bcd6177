//! ListBuckets and ListObjects v1, as `cray artifacts` sends them, their XML answers read with
//! `roxmltree` (element by element, namespace ignored).

use super::signed::signed;
use super::{Creds, Result, S3Error};
use ims_artifacts::sigv4;
use roxmltree::{Document, Node};

/// One object of a bucket listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub key: String,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    /// As the endpoint sent it (with its quotes).
    pub etag: String,
    pub size: u64,
    pub storage_class: String,
}

/// The element children of `node` named `tag`.
fn children<'a, 'i>(node: Node<'a, 'i>, tag: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == tag)
}

/// The text of `node`'s first child element `tag` (`""` for an empty one).
fn child_text(node: Node, tag: &str) -> Option<String> {
    children(node, tag)
        .next()
        .map(|n| n.text().unwrap_or_default().to_string())
}

fn parse<'i>(what: &str, text: &'i str) -> Result<Document<'i>> {
    Document::parse(text).map_err(|e| S3Error::Answer {
        what: what.to_string(),
        detail: format!("not XML: {e}"),
    })
}

/// ListBuckets (`GET /`): the bucket names.
pub async fn list_buckets(c: &Creds) -> Result<Vec<String>> {
    let (status, text) = signed(c, reqwest::Method::GET, "/", &[], &[]).await?;
    if !status.is_success() {
        return Err(S3Error::Refused {
            what: "S3 ListBuckets".to_string(),
            detail: format!("{status}: {}", text.trim()),
        });
    }
    bucket_names(&text)
}

/// The names of a `ListAllMyBucketsResult`.
fn bucket_names(text: &str) -> Result<Vec<String>> {
    let doc = parse("S3 ListBuckets", text)?;
    Ok(children(doc.root_element(), "Buckets")
        .flat_map(|b| children(b, "Bucket"))
        .filter_map(|b| child_text(b, "Name"))
        .collect())
}

/// Whether `bucket` exists (ListBuckets).
pub async fn bucket_exists(c: &Creds, bucket: &str) -> Result<bool> {
    Ok(list_buckets(c).await?.iter().any(|n| n == bucket))
}

/// One page of a ListObjects v1 answer: its objects, whether more follow, the `NextMarker`.
struct Page {
    objects: Vec<Listed>,
    truncated: bool,
    next_marker: Option<String>,
}

/// Reads a `ListBucketResult` sent with `encoding-type=url`.
fn page(text: &str) -> Result<Page> {
    const WHAT: &str = "S3 ListObjects";
    let bad = |detail: String| S3Error::Answer {
        what: WHAT.to_string(),
        detail,
    };
    let doc = parse(WHAT, text)?;
    let root = doc.root_element();
    let mut objects = vec![];
    for entry in children(root, "Contents") {
        let field = |tag: &str| child_text(entry, tag);
        let raw_key = field("Key").ok_or_else(|| bad("an entry without a Key".to_string()))?;
        let key = url_decode(&raw_key)
            .ok_or_else(|| bad(format!("a key that is not URL-encoded: {raw_key:?}")))?;
        let modified = field("LastModified").unwrap_or_default();
        let last_modified = chrono::DateTime::parse_from_rfc3339(&modified)
            .map_err(|e| bad(format!("{key}: LastModified {modified:?}: {e}")))?
            .with_timezone(&chrono::Utc);
        let size = field("Size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("{key}: no valid Size")))?;
        objects.push(Listed {
            key,
            last_modified,
            etag: field("ETag").unwrap_or_default(),
            size,
            storage_class: field("StorageClass").unwrap_or_default(),
        });
    }
    let next_marker = match child_text(root, "NextMarker") {
        Some(m) => Some(
            url_decode(&m)
                .ok_or_else(|| bad(format!("a NextMarker that is not URL-encoded: {m:?}")))?,
        ),
        None => None,
    };
    Ok(Page {
        objects,
        truncated: child_text(root, "IsTruncated").as_deref() == Some("true"),
        next_marker,
    })
}

/// Every object of `bucket`, as `cray artifacts list` gets them: ListObjects v1 with
/// `encoding-type=url` (keys come back URL-encoded, so any key survives the XML), paginated by
/// marker.
pub async fn list_objects(c: &Creds, bucket: &str) -> Result<Vec<Listed>> {
    let mut out: Vec<Listed> = vec![];
    let mut marker: Option<String> = None;
    loop {
        let mut query = vec![("encoding-type", "url")];
        if let Some(m) = &marker {
            query.push(("marker", m.as_str()));
        }
        let (status, text) =
            signed(c, reqwest::Method::GET, &format!("/{bucket}"), &query, &[]).await?;
        if !status.is_success() {
            return Err(S3Error::Refused {
                what: format!("s3://{bucket}"),
                detail: sigv4::error_text(status, &text),
            });
        }
        let page = page(&text)?;
        let before = out.len();
        out.extend(page.objects);
        if !page.truncated {
            return Ok(out);
        }
        // NextMarker is sent only with a delimiter; otherwise the last key is the marker.
        let next = page
            .next_marker
            .or_else(|| out.last().map(|l| l.key.clone()));
        if out.len() == before || next.is_none() || next == marker {
            return Err(S3Error::Answer {
                what: format!("s3://{bucket}"),
                detail: "the endpoint's listing is truncated but does not advance".to_string(),
            });
        }
        marker = next;
    }
}

/// Decodes `encoding-type=url` text as botocore does (`unquote_plus`): `%XX` escapes and `+`
/// for a space. `None` for a bad escape or bytes that are not UTF-8.
fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                // from_str_radix alone would take a sign ("%+1").
                if !h.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding_as_botocore() {
        assert_eq!(
            url_decode("a%2Bb+c%20d%C3%A4/").as_deref(),
            Some("a+b c dä/")
        );
        assert_eq!(url_decode("plain").as_deref(), Some("plain"));
        for bad in ["%", "%4", "%zz", "%+1", "%-1", "%FF"] {
            assert_eq!(url_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_listing_page() {
        let x = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix></Prefix><Marker></Marker><MaxKeys>1000</MaxKeys>
  <EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
  <Contents><Key>a%26b+c</Key><LastModified>2026-01-02T03:04:05.000Z</LastModified>
    <ETag>&quot;abc&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>%3CKey%3E</Key><LastModified>2026-01-02T03:04:05Z</LastModified>
    <ETag>"d"</ETag><Size>0</Size><Owner><ID>o</ID></Owner></Contents>
</ListBucketResult>"#;
        let p = page(x).unwrap();
        assert!(p.truncated);
        assert_eq!(p.next_marker, None);
        let keys: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a&b c", "<Key>"]);
        assert_eq!(p.objects[0].etag, "\"abc\"");
        assert_eq!(p.objects[0].size, 3);
        assert_eq!(p.objects[0].storage_class, "STANDARD");
        assert_eq!(p.objects[1].storage_class, "");
        let last =
            page("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>").unwrap();
        assert!(!last.truncated && last.objects.is_empty());
        assert!(matches!(
            page("<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>"),
            Err(S3Error::Answer { .. })
        ));
        assert!(page("<ListBucketResult>").is_err());
    }

    #[test]
    fn bucket_names_of_a_listing() {
        let x = "<ListAllMyBucketsResult><Owner><ID>x</ID><DisplayName>Name</DisplayName></Owner>\
                 <Buckets><Bucket><Name>a&amp;b</Name><CreationDate>2026-01-01T00:00:00Z</CreationDate></Bucket>\
                 <Bucket><Name>ims</Name></Bucket></Buckets></ListAllMyBucketsResult>";
        assert_eq!(bucket_names(x).unwrap(), ["a&b", "ims"]);
    }
}
