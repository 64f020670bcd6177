//! The service layer: one implementation of every operation, parameterised by [`crate::Api`].

pub mod artifacts;
pub mod deleted;
pub mod images;
pub mod job_creds;
pub mod job_runs;
pub mod jobs;
pub mod journal;
pub mod leases;
pub mod node_slots;
pub mod public_keys;
pub mod recipes;
pub mod remote_nodes;

use crate::error::{ApiError, ApiResult};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ims_core::{Problem, Record};
use ims_store::{ListBody, Row, Store, Versioned};
use serde::Serialize;

/// How often an operation that lost a race with a concurrent change is re-run from a fresh read.
pub const MAX_ATTEMPTS: usize = 32;

/// The one conflict-retry loop of the service layer: runs `$op` (an expression that re-reads and
/// re-applies) again while it fails with a store conflict, up to [`MAX_ATTEMPTS`] times.
macro_rules! retrying {
    ($op:expr) => {{
        let mut attempt = 0usize;
        loop {
            match $op {
                Err(e) if e.is_conflict() && attempt + 1 < $crate::service::MAX_ATTEMPTS => {
                    attempt += 1;
                    tokio::task::yield_now().await;
                }
                r => break r,
            }
        }
    }};
}
pub(crate) use retrying;

fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON response from a serialisable value.
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> ApiResult<Response> {
    let body = serde_json::to_vec(v)
        .map_err(|e| Problem::internal(format!("could not serialise the response: {e}")))?;
    Ok(json_response(status, body))
}

/// One stored row as the response body.
pub fn raw_one(row: Row) -> Response {
    json_response(StatusCode::OK, row.data)
}

/// 204 with an empty body.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The link rule of a record PATCH, applied inside the locked update: a record's link is set once
/// (the same link again changes nothing, another one is 409). `checked` says the new link was
/// validated against the artifact store before the update, when the record had none; if it has
/// none now but had one then, the caller's check is stale and the update is re-run (a conflict).
pub fn set_link_once(
    current: &mut Option<ims_core::ArtifactLink>,
    new: &ims_core::ArtifactLink,
    checked: bool,
) -> ApiResult<()> {
    match current {
        Some(existing) if existing == new => Ok(()),
        Some(_) => Err(Problem::conflict().into()),
        None if checked => {
            *current = Some(new.clone());
            Ok(())
        }
        None => Err(ims_store::StoreError::Conflict.into()),
    }
}

/// A record's update by `f` under its row lock ([`ims_store::update_with`]); 404 if it is gone.
pub async fn update<T, F>(store: &dyn Store, id: &str, f: F) -> ApiResult<T>
where
    T: Record + Send,
    F: FnOnce(T) -> ApiResult<T> + Send,
{
    ims_store::update_with(store, id, f)
        .await?
        .ok_or_else(|| ApiError::Problem(Problem::not_found()))
}

/// Reads a record or answers 404.
pub async fn must_get<T: Record>(store: &dyn Store, id: &str) -> ApiResult<Versioned<T>> {
    ims_store::get::<T>(store, id)
        .await?
        .ok_or_else(|| ApiError::Problem(Problem::not_found()))
}

/// GET collection of any table: the cached array, or the rows streamed from the database as they
/// come (the first chunk is awaited, so a database that fails at once still gets an error status).
pub async fn list_raw(store: &dyn Store, table: ims_core::Table) -> ApiResult<Response> {
    use futures::StreamExt as _;
    match store.list_body(table).await? {
        ListBody::Parts(parts) => Ok(json_response(
            StatusCode::OK,
            axum::body::Body::new(PartsBody::new(parts)),
        )),
        ListBody::Chunks(mut chunks) => {
            let first = chunks.next().await.transpose()?.unwrap_or_default();
            let rest = futures::stream::once(async move { Ok(first) }).chain(chunks);
            Ok(json_response(
                StatusCode::OK,
                axum::body::Body::from_stream(rest),
            ))
        }
    }
}

/// A body sent from parts held in memory, with its exact length (`Content-Length`).
struct PartsBody {
    parts: std::collections::VecDeque<bytes::Bytes>,
    remaining: u64,
}

impl PartsBody {
    fn new(parts: Vec<bytes::Bytes>) -> PartsBody {
        let remaining = parts.iter().map(|p| p.len() as u64).sum();
        PartsBody {
            parts: parts.into(),
            remaining,
        }
    }
}

impl http_body::Body for PartsBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.parts.pop_front();
        if let Some(part) = &next {
            self.remaining -= part.len() as u64;
        }
        std::task::Poll::Ready(next.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// GET one of any table.
pub async fn get_raw(store: &dyn Store, table: ims_core::Table, id: &str) -> ApiResult<Response> {
    match store.get(table, id).await? {
        Some(row) => Ok(raw_one(row)),
        None => Err(Problem::not_found().into()),
    }
}
