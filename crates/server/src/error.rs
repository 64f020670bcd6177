//! API errors: everything becomes an `application/problem+json` response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ims_artifacts::ArtifactError;
use ims_core::Problem;
use ims_store::StoreError;

/// An error from a handler or the service layer.
#[derive(Debug)]
pub enum ApiError {
    /// A problem to show the client as is.
    Problem(Problem),
    /// A store failure; `Conflict` means a concurrent change and is retried by the service.
    Store(StoreError),
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Problem(p)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl From<ArtifactError> for ApiError {
    fn from(e: ArtifactError) -> Self {
        tracing::error!(error = %e, "artifact store");
        ApiError::Problem(Problem::internal(format!("Artifact store error: {e}")))
    }
}

impl ApiError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Store(StoreError::Conflict))
    }

    pub fn into_problem(self) -> Problem {
        match self {
            ApiError::Problem(p) => p,
            ApiError::Store(StoreError::Conflict) => Problem::new(
                409,
                "The resource was changed concurrently by another request. Re-run the request.",
            ),
            ApiError::Store(e) => {
                tracing::error!(error = %e, "records store");
                Problem::unavailable(format!("Records store error: {e}"))
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Renders a problem with its status and the problem+json content type.
pub fn problem_response(p: Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&p).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(self.into_problem())
    }
}
