//! RFC 7807 problem details, shaped exactly like the original's `httpproblem` output:
//! `status`, `title`, `detail` and, for validation failures, `errors`. No `type`/`instance`.

use serde::Serialize;
use serde_json::Value;

pub const DETAIL_NO_INPUT: &str = "No input provided. Determine the specific information that is missing or invalid and then re-run the request with valid information.";
pub const DETAIL_VALIDATION: &str = "Input data was understood, but failed validation. Re-run request with valid input values for the fields indicated in the response.";
pub const DETAIL_NOT_FOUND: &str =
    "Requested resource does not exist. Re-run request with valid ID.";
pub const DETAIL_CONFLICT: &str = "Requested resource exists, but cannot be patched due to a patch conflict. Re-run request with valid input values for the fields indicated in the response.";
pub const DETAIL_NO_ROUTE: &str = "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.";
pub const DETAIL_BAD_METHOD: &str = "The method is not allowed for the requested URL.";

/// An error response body (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub errors: Option<Value>,
    pub status: u16,
    pub title: String,
}

/// The HTTP reason phrase the original uses as a default title.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Problem {
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title: reason_phrase(status).to_string(),
            detail: Some(detail.into()),
            errors: None,
        }
    }

    pub fn with_errors(mut self, errors: Value) -> Self {
        self.errors = Some(errors);
        self
    }

    /// 400: the body was empty (`{}`, `[]`, nothing).
    pub fn no_input() -> Self {
        Problem::new(400, DETAIL_NO_INPUT)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(400, detail)
    }

    /// 422 with a marshmallow-style error map `{field: [messages]}`.
    pub fn validation(errors: Value) -> Self {
        Problem::new(422, DETAIL_VALIDATION).with_errors(errors)
    }

    /// 422 with a specific detail and no `errors` key (artifact validation failures).
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Problem::new(422, detail)
    }

    pub fn not_found() -> Self {
        Problem::new(404, DETAIL_NOT_FOUND)
    }

    pub fn conflict() -> Self {
        Problem::new(409, DETAIL_CONFLICT)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(500, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem::new(503, detail)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}
