//! The STS answer (`PUT /apis/sts/token`): temporary S3 credentials, as the CSM STS service hands
//! them to `cray artifacts` (`{"Credentials": {AccessKeyId, SecretAccessKey, SessionToken,
//! EndpointURL, Expiration}}`), plus the IMS extension `ImsJob` a job's agent gets. The server
//! writes it, the client reads it, and `ims s3-credentials` shows the built-in endpoint's
//! long-lived key pair in the same shape.

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// A whole STS answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StsResponse {
    #[serde(rename = "Credentials")]
    pub credentials: StsCredentials,
    /// To a job's agent only: what its credentials are for (an IMS extension).
    #[serde(rename = "ImsJob", default, skip_serializing_if = "Option::is_none")]
    pub job: Option<StsJob>,
}

/// One set of credentials, in the STS answer's field names (in this order on the wire).
///
/// STS always sends `SessionToken` (empty for a site's own keys), `EndpointURL` and
/// `Expiration`; `ims s3-credentials` shows a long-lived pair: no token, no expiry, and no
/// endpoint when none is known yet. A client needs only the keys and the endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    #[serde(
        rename = "EndpointURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Timestamp>,
}

impl StsCredentials {
    /// The session token, `""` when there is none.
    pub fn token(&self) -> &str {
        self.session_token.as_deref().unwrap_or_default()
    }
}

/// The part of an STS answer only a job's agent gets: the image it is to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StsJob {
    /// The id the job's new image is to have; its objects go under `<ImageId>/` of `Bucket`.
    pub image_id: String,
    pub bucket: String,
    /// Whether the credentials are confined to the job's objects (`false`: the site's own keys).
    #[serde(default)]
    pub confined: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> StsCredentials {
        StsCredentials {
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            session_token: Some(String::new()),
            endpoint_url: Some("http://127.0.0.1:9001".into()),
            expiration: Timestamp::parse("2026-01-02T03:04:05.000006+00:00"),
        }
    }

    #[test]
    fn sts_answer_bytes() {
        let plain = StsResponse {
            credentials: creds(),
            job: None,
        };
        let text = serde_json::to_string(&plain).unwrap();
        assert_eq!(
            text,
            r#"{"Credentials":{"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"","EndpointURL":"http://127.0.0.1:9001","Expiration":"2026-01-02T03:04:05.000006+00:00"}}"#
        );
        assert_eq!(serde_json::from_str::<StsResponse>(&text).unwrap(), plain);
        let job = StsResponse {
            credentials: creds(),
            job: Some(StsJob {
                image_id: "i".into(),
                bucket: "boot-images".into(),
                confined: true,
            }),
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(
            text.ends_with(r#","ImsJob":{"ImageId":"i","Bucket":"boot-images","Confined":true}}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<StsResponse>(&text).unwrap(), job);
    }

    #[test]
    fn a_long_lived_pair_has_no_token_or_expiry() {
        let pair = StsResponse {
            credentials: StsCredentials {
                session_token: None,
                expiration: None,
                endpoint_url: None,
                ..creds()
            },
            job: None,
        };
        assert_eq!(
            serde_json::to_string(&pair).unwrap(),
            r#"{"Credentials":{"AccessKeyId":"AK","SecretAccessKey":"SK"}}"#
        );
        // What a client reads: a missing token is none.
        let read: StsResponse = serde_json::from_str(
            r#"{"Credentials":{"AccessKeyId":"a","SecretAccessKey":"s","EndpointURL":"e"}}"#,
        )
        .unwrap();
        assert_eq!(read.credentials.token(), "");
        assert!(read.job.is_none());
    }
}
