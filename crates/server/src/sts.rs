//! `PUT /apis/sts/token`: temporary S3 credentials, as the CSM STS service hands them to
//! `cray artifacts` (`{"Credentials": {AccessKeyId, SecretAccessKey, SessionToken, EndpointURL,
//! Expiration}}`). `EndpointURL` is how clients discover the S3 endpoint: the built-in one in
//! embedded mode, or the configured external S3.

use ims_core::Timestamp;
use serde::Serialize;

/// One set of credentials, in the STS response's field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    #[serde(rename = "EndpointURL")]
    pub endpoint_url: String,
    pub expiration: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StsResponse {
    #[serde(rename = "Credentials")]
    pub credentials: StsCredentials,
}

/// Issues credentials for S3 access.
pub trait StsIssuer: Send + Sync + 'static {
    fn issue(&self) -> StsCredentials;
}

/// External S3: the configured keys (a site's RGW/MinIO policy governs them), no session token.
pub struct StaticIssuer {
    pub access_key: String,
    pub secret_key: String,
    pub endpoint_url: String,
    pub ttl: std::time::Duration,
}

impl StsIssuer for StaticIssuer {
    fn issue(&self) -> StsCredentials {
        let expiration = Timestamp(
            Timestamp::now().0 + chrono::Duration::from_std(self.ttl).unwrap_or_default(),
        );
        StsCredentials {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            session_token: String::new(),
            endpoint_url: self.endpoint_url.clone(),
            expiration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_shape_is_the_csm_one() {
        let i = StaticIssuer {
            access_key: "AK".into(),
            secret_key: "SK".into(),
            endpoint_url: "http://127.0.0.1:9001".into(),
            ttl: std::time::Duration::from_secs(3600),
        };
        let v = serde_json::to_value(StsResponse {
            credentials: i.issue(),
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
    }
}
