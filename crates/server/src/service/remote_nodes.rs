//! Remote build nodes (v3): registration records and live status.

use super::no_content;
use crate::AppState;
use crate::error::ApiResult;
use axum::response::Response;
use futures::future::join_all;
use ims_core::{Problem, RemoteBuildNode, RemoteBuildNodeStatus, Table, input};
use ims_store::{Op, list, upsert_op};
use serde_json::Value;

/// POST: upsert by xname (re-registering is not an error, as the original).
pub async fn create(st: &AppState, body: Option<&Value>) -> ApiResult<RemoteBuildNode> {
    let node = input::remote_build_node_create(body)?;
    st.store.apply(vec![upsert_op(&node)?]).await?;
    Ok(node)
}

pub async fn delete_one(st: &AppState, xname: &str) -> ApiResult<Response> {
    match st
        .store
        .apply(vec![Op::Delete {
            table: Table::RemoteBuildNodes,
            id: xname.to_string(),
            version: None,
        }])
        .await
    {
        Ok(()) => Ok(no_content()),
        Err(ims_store::StoreError::Conflict) => Err(Problem::not_found().into()),
        Err(e) => Err(e.into()),
    }
}

pub async fn delete_all(st: &AppState) -> ApiResult<Response> {
    st.store
        .apply(vec![Op::DeleteAll(Table::RemoteBuildNodes)])
        .await?;
    Ok(no_content())
}

/// Status of every registered node, probed concurrently.
pub async fn status_all(st: &AppState) -> ApiResult<Vec<RemoteBuildNodeStatus>> {
    let nodes = list::<RemoteBuildNode>(&*st.store).await?;
    Ok(join_all(nodes.iter().map(|n| st.prober.probe(&n.record.xname))).await)
}

pub async fn status_one(st: &AppState, xname: &str) -> ApiResult<RemoteBuildNodeStatus> {
    let node = super::must_get::<RemoteBuildNode>(&*st.store, xname).await?;
    Ok(st.prober.probe(&node.record.xname).await)
}
