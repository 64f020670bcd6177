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
    /// An artifact store failure: logged (whole) and turned into a 500 without server paths when
    /// the response is made.
    Artifact(ArtifactError),
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
        ApiError::Artifact(e)
    }
}

/// What a client is told about an artifact store failure: the artifact, bucket or endpoint, but
/// not the store's own message, which may name server files. The whole error goes to the log,
/// here: call this once, where the response is made.
pub fn artifact_detail(e: &ArtifactError) -> String {
    tracing::error!(error = %e, "artifact store");
    match e {
        ArtifactError::Store { location, .. } => {
            format!("artifact store error on {location} (details in the server log)")
        }
        e => e.to_string(),
    }
}

impl ApiError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Store(StoreError::Conflict))
    }

    /// The problem to answer with; a failure of a store is logged here.
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
            ApiError::Artifact(e) => {
                Problem::internal(format!("Artifact store error: {}", artifact_detail(&e)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_failures_show_no_server_paths() {
        let e = ArtifactError::Store {
            location: "s3://ims/recipes/1/recipe.tar.gz".into(),
            message: "Unable to open file /var/lib/ims/artifacts/ims/recipes/1/recipe.tar.gz#1: \
                      Permission denied (os error 13)"
                .into(),
        };
        let p = ApiError::from(e).into_problem();
        assert_eq!(p.status, 500);
        let detail = p.detail.unwrap_or_default();
        assert_eq!(
            detail,
            "Artifact store error: artifact store error on s3://ims/recipes/1/recipe.tar.gz \
             (details in the server log)"
        );
        let missing = ApiError::from(ArtifactError::NotFound("s3://ims/x".into())).into_problem();
        assert_eq!(
            missing.detail.as_deref(),
            Some("Artifact store error: artifact s3://ims/x does not exist")
        );
    }
}
