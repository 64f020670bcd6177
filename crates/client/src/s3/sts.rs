//! The connection to S3: credentials from the IMS server's STS endpoint and an `object_store`
//! client per bucket.

use super::{NoProgress, Progress, REGION, Result, S3Error};
use crate::Client;
use ims_core::sts::{StsCredentials, StsJob, StsResponse};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use std::sync::Arc;

/// Credentials from STS, with an endpoint URL (checked when they are received).
pub struct Creds {
    sts: StsCredentials,
}

impl Creds {
    pub(super) fn access_key(&self) -> &str {
        &self.sts.access_key_id
    }
    pub(super) fn secret_key(&self) -> &str {
        &self.sts.secret_access_key
    }
    pub(super) fn token(&self) -> &str {
        self.sts.token()
    }
    pub(super) fn endpoint(&self) -> &str {
        self.sts.endpoint_url.as_deref().unwrap_or_default()
    }
}

/// The server connection plus S3 credentials from STS.
pub struct Ctx {
    pub client: Client,
    pub creds: Creds,
    /// For a job's agent: the image the credentials are for (STS's `ImsJob`): the id its new
    /// image is to have and the bucket it goes to (the credentials may write only below
    /// `<bucket>/<image_id>/`).
    pub job: Option<StsJob>,
    /// Where uploads and downloads report their bytes (nowhere unless the caller says).
    pub progress: Arc<dyn Progress>,
}

impl Ctx {
    /// Connects to the IMS server at `url` (with an optional bearer token) and asks its STS
    /// endpoint for S3 credentials.
    pub async fn new(url: &str, token: Option<String>) -> Result<Ctx> {
        let client = Client::new(url, token)?;
        Self::with_client(url, client).await
    }

    /// As [`Ctx::new`], with a client made by the caller for the server at `url`.
    pub async fn with_client(url: &str, client: Client) -> Result<Ctx> {
        let invalid = |reason: &str| S3Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let mut u = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        u.set_query(None);
        u.set_fragment(None);
        u.path_segments_mut()
            .map_err(|()| invalid("not a base URL"))?
            .pop_if_empty()
            .extend(["apis", "sts", "token"]);
        let v = client.send(reqwest::Method::PUT, u, &[], None).await?;
        let answer: StsResponse = serde_json::from_value(v)
            .map_err(|e| S3Error::Sts(format!("unexpected response: {e}")))?;
        if answer.credentials.endpoint_url.is_none() {
            return Err(S3Error::Sts(
                "the response has no Credentials.EndpointURL".to_string(),
            ));
        }
        Ok(Ctx {
            client,
            creds: Creds {
                sts: answer.credentials,
            },
            job: answer.job,
            progress: Arc::new(NoProgress),
        })
    }

    /// The same, reporting transfers to `progress`.
    pub fn with_progress(self, progress: Arc<dyn Progress>) -> Ctx {
        Ctx { progress, ..self }
    }

    /// An `object_store` client for `bucket` on the STS endpoint (path-style).
    pub fn store(&self, bucket: &str) -> Result<Arc<AmazonS3>> {
        let c = &self.creds;
        let mut b = AmazonS3Builder::new()
            .with_endpoint(c.endpoint())
            .with_bucket_name(bucket)
            .with_access_key_id(c.access_key())
            .with_secret_access_key(c.secret_key())
            .with_region(REGION)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false);
        if !c.token().is_empty() {
            b = b.with_token(c.token());
        }
        b.build().map(Arc::new).map_err(|source| S3Error::Endpoint {
            endpoint: c.endpoint().to_string(),
            source,
        })
    }
}
