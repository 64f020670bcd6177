//! `PUT /apis/sts/token`: temporary S3 credentials, as the CSM STS service hands them to
//! `cray artifacts` (`{"Credentials": {AccessKeyId, SecretAccessKey, SessionToken, EndpointURL,
//! Expiration}}`). `EndpointURL` is how clients discover the S3 endpoint: the built-in one in
//! embedded mode, or the configured external S3.

use ims_core::Timestamp;
pub use ims_core::sts::{StsCredentials, StsJob, StsResponse};

/// What a job may touch in S3: read its source objects, write below its new image's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobScope {
    pub job_id: String,
    /// `(bucket, key)` of every object the job reads: the source image's manifest and the
    /// artifacts it lists (customize), or the recipe's archive (create).
    pub read: Vec<(String, String)>,
    /// The bucket and prefix (`<image id>/`) the job writes its new image under.
    pub write_bucket: String,
    pub write_prefix: String,
}

/// Issues credentials for S3 access.
pub trait StsIssuer: Send + Sync + 'static {
    /// `host`: the `Host` the client sent to the API (`name[:port]`), for an endpoint URL that
    /// depends on how the client reaches this server.
    fn issue(&self, host: Option<&str>) -> StsCredentials;
    /// Credentials for a job's agent, confined to `scope` where the issuer can confine them
    /// (the built-in endpoint); the default is [`StsIssuer::issue`].
    fn issue_for_job(&self, host: Option<&str>, scope: &JobScope) -> StsCredentials {
        let _ = scope;
        self.issue(host)
    }
    /// Whether [`StsIssuer::issue_for_job`] confines what the credentials may do.
    fn confines_jobs(&self) -> bool {
        false
    }
    /// Voids every credential issued for job `job_id` (it ended or was deleted), where the
    /// issuer can.
    fn revoke_job(&self, job_id: &str) {
        let _ = job_id;
    }
    /// Whether the credentials are the site's own long-lived keys (an external S3 store), which
    /// only an authenticated caller may get.
    fn hands_out_site_keys(&self) -> bool {
        false
    }
}

/// The endpoint URL to advertise for an S3 endpoint listening on `listen`: `public` when
/// configured; for an endpoint on every address (`0.0.0.0`, `::`) the host the client used for
/// the API with the endpoint's port — never the unspecified address, which no client can use.
pub fn advertised_endpoint(
    public: Option<&str>,
    listen: std::net::SocketAddr,
    client_host: Option<&str>,
) -> String {
    if let Some(p) = public {
        return p.to_string();
    }
    if !listen.ip().is_unspecified() {
        return format!("http://{listen}");
    }
    let host = client_host
        .map(host_part)
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}:{}", listen.port())
}

/// `name` of `name:port`, `[v6]` of `[v6]:port`.
fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// External S3: the configured keys (a site's RGW/MinIO policy governs them), no session token.
pub struct StaticIssuer {
    pub access_key: String,
    pub secret_key: String,
    pub endpoint_url: String,
    pub ttl: std::time::Duration,
}

impl StsIssuer for StaticIssuer {
    fn hands_out_site_keys(&self) -> bool {
        true
    }

    fn issue(&self, _host: Option<&str>) -> StsCredentials {
        let expiration = Timestamp(
            Timestamp::now().0 + chrono::Duration::from_std(self.ttl).unwrap_or_default(),
        );
        StsCredentials {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            session_token: Some(String::new()),
            endpoint_url: Some(self.endpoint_url.clone()),
            expiration: Some(expiration),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_clients_can_use() {
        let any: std::net::SocketAddr = "0.0.0.0:9001".parse().unwrap();
        let any6: std::net::SocketAddr = "[::]:9001".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:9001".parse().unwrap();
        assert_eq!(
            advertised_endpoint(Some("https://s3.site"), any, Some("x")),
            "https://s3.site"
        );
        assert_eq!(
            advertised_endpoint(None, lo, Some("ims.site:9000")),
            "http://127.0.0.1:9001"
        );
        assert_eq!(
            advertised_endpoint(None, any, Some("ims.site:9000")),
            "http://ims.site:9001"
        );
        assert_eq!(
            advertised_endpoint(None, any6, Some("ims.site")),
            "http://ims.site:9001"
        );
        assert_eq!(
            advertised_endpoint(None, any, Some("[fd00::5]:9000")),
            "http://[fd00::5]:9001"
        );
        assert_eq!(
            advertised_endpoint(None, any, Some("10.1.2.3:9000")),
            "http://10.1.2.3:9001"
        );
        // A hostile or missing Host header never ends up in the URL.
        assert_eq!(
            advertised_endpoint(None, any, Some("evil/x@y")),
            "http://localhost:9001"
        );
        assert_eq!(
            advertised_endpoint(None, any, None),
            "http://localhost:9001"
        );
    }

    #[test]
    fn response_shape_is_the_csm_one() {
        let i = StaticIssuer {
            access_key: "AK".into(),
            secret_key: "SK".into(),
            endpoint_url: "http://127.0.0.1:9001".into(),
            ttl: std::time::Duration::from_secs(3600),
        };
        let v = serde_json::to_value(StsResponse {
            credentials: i.issue(None),
            job: None,
        })
        .unwrap();
        let c = v["Credentials"].as_object().unwrap();
        let mut keys: Vec<&str> = c.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "AccessKeyId",
                "EndpointURL",
                "Expiration",
                "SecretAccessKey",
                "SessionToken"
            ]
        );
        assert!(c["Expiration"].as_str().unwrap().ends_with("+00:00"));
        assert!(v.get("ImsJob").is_none());
    }
}
