//! Request-body extraction with problem+json errors (400 malformed JSON, 415 wrong content type,
//! 413 too large). An empty body is `None` (the service answers 400 "No input provided").

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use ims_core::Problem;
use serde_json::Value;

/// An optional JSON request body.
pub struct JsonBody(pub Option<Value>);

impl JsonBody {
    pub fn as_ref(&self) -> Option<&Value> {
        self.0.as_ref()
    }
}

fn is_json(ct: &str) -> bool {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(413, "The request body is larger than the server accepts.")
            } else {
                Problem::bad_request(format!("The request body could not be read: {e}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        match ct.as_deref() {
            Some(ct) if is_json(ct) => {}
            Some(ct) => {
                return Err(Problem::new(
                    415,
                    format!("Unsupported content type {ct:?}: send application/json."),
                )
                .into());
            }
            None => {
                return Err(
                    Problem::new(415, "Missing content type: send application/json.").into(),
                );
            }
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::bad_request(format!("The request body is not valid JSON: {e}"))
        })?;
        Ok(JsonBody(Some(v)))
    }
}

/// The one path parameter of a record route (`{id}` or `{xname}`). A parameter that cannot be
/// decoded (invalid percent-encoding or UTF-8) cannot name a record: 404 problem, as the original
/// answers for any unknown id (axum's own rejection would be a plain-text 400).
pub struct IdPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(IdPath(id)),
            Err(e) => {
                tracing::debug!(error = %e, "undecodable path parameter");
                Err(Problem::not_found().into())
            }
        }
    }
}
