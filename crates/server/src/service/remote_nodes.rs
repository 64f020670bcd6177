//! Remote build nodes (v3): registration records and live status, plus the IMS-rs extensions
//! (documented in docs/compatibility.md): a node's capacity and drained flag (`POST`, `PATCH`),
//! removal refused while jobs hold its slots, and its SSH host key shown and accepted
//! (`GET`/`POST /v3/remote-build-nodes/{xname}/host-key`).

use super::{must_get, no_content, node_slots};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::executor::remote::ssh::{HostKey, safe_host};
use axum::response::Response;
use futures::future::join_all;
use ims_core::{Problem, RemoteBuildNode, RemoteBuildNodeStatus, input};
use ims_store::{Op, list, update_op};
use serde::Serialize;
use serde_json::Value;

/// POST: upsert by xname (re-registering is not an error, as the original). A re-registered
/// node keeps its accepted host keys, and its capacity and drained flag unless the body sets them.
pub async fn create(st: &AppState, body: Option<&Value>) -> ApiResult<RemoteBuildNode> {
    let new = input::remote_build_node_create(body)?;
    check_xname(&new.xname)?;
    super::retrying!(
        async {
            let cur = ims_store::get::<RemoteBuildNode>(&*st.store, &new.xname).await?;
            let mut node = cur
                .as_ref()
                .map(|v| v.record.clone())
                .unwrap_or_else(|| RemoteBuildNode::new(new.xname.clone()));
            new.set.apply_to(&mut node);
            let op = match &cur {
                Some(v) => update_op(&node, v.version)?,
                None => ims_store::insert_op(&node)?,
            };
            st.store.apply(vec![op]).await?;
            Ok::<_, ApiError>(node)
        }
        .await
    )
}

/// Node names become `ssh` arguments and file names: host-name characters only.
fn check_xname(xname: &str) -> ApiResult<()> {
    if safe_host(xname) && !xname.contains(':') && !xname.starts_with('.') {
        return Ok(());
    }
    Err(Problem::bad_request(format!(
        "Invalid xname {xname:?}: use a host name (letters, digits, '-', '.', '_')."
    ))
    .into())
}

/// PATCH (extension): capacity and drained flag.
pub async fn patch(st: &AppState, xname: &str, body: Option<&Value>) -> ApiResult<RemoteBuildNode> {
    must_get::<RemoteBuildNode>(&*st.store, xname).await?;
    let p = input::remote_build_node_patch(body)?;
    super::retrying!(
        async {
            let cur = must_get::<RemoteBuildNode>(&*st.store, xname).await?;
            let mut node = cur.record.clone();
            p.apply_to(&mut node);
            if node != cur.record {
                st.store.apply(vec![update_op(&node, cur.version)?]).await?;
            }
            Ok::<_, ApiError>(node)
        }
        .await
    )
}

/// The refusal to remove a node that jobs still hold slots of.
fn busy(xname: &str, jobs: &[String]) -> ApiError {
    Problem::new(
        409,
        format!(
            "Remote build node {xname} still runs {} job(s) ({}): drain it (`ims remote-build-nodes update {xname} --drained true`) and remove it once they ended.",
            jobs.len(),
            jobs.join(", ")
        ),
    )
    .into()
}

/// DELETE one: only when no job holds a slot of the node. The check and the removal are one
/// transaction with the node's version, so a job placed meanwhile makes the removal retry (and
/// then refuse).
pub async fn delete_one(st: &AppState, xname: &str) -> ApiResult<Response> {
    super::retrying!(
        async {
            let Some(cur) = ims_store::get::<RemoteBuildNode>(&*st.store, xname).await? else {
                return Err(Problem::not_found().into());
            };
            let jobs = node_slots::in_use(st, xname).await?;
            if !jobs.is_empty() {
                return Err(busy(xname, &jobs));
            }
            st.store.apply(vec![ims_store::delete_op(&cur)]).await?;
            Ok::<_, ApiError>(())
        }
        .await
    )?;
    Ok(no_content())
}

/// DELETE all: refused (and nothing removed) while any node has jobs.
pub async fn delete_all(st: &AppState) -> ApiResult<Response> {
    super::retrying!(
        async {
            let nodes = list::<RemoteBuildNode>(&*st.store).await?;
            for n in &nodes {
                let jobs = node_slots::in_use(st, &n.record.xname).await?;
                if !jobs.is_empty() {
                    return Err(busy(&n.record.xname, &jobs));
                }
            }
            let ops: Vec<Op> = nodes.iter().map(ims_store::delete_op).collect();
            if !ops.is_empty() {
                st.store.apply(ops).await?;
            }
            Ok::<_, ApiError>(())
        }
        .await
    )?;
    Ok(no_content())
}

async fn status_of(
    st: &AppState,
    node: &RemoteBuildNode,
    slots: &[ims_core::NodeSlot],
) -> RemoteBuildNodeStatus {
    let reserved = slots.iter().filter(|s| s.xname == node.xname).count() as u32;
    st.prober.status(node, reserved).await
}

/// Status of every registered node, probed concurrently.
pub async fn status_all(st: &AppState) -> ApiResult<Vec<RemoteBuildNodeStatus>> {
    let nodes = list::<RemoteBuildNode>(&*st.store).await?;
    let slots = node_slots::all(st).await?;
    Ok(join_all(nodes.iter().map(|n| status_of(st, &n.record, &slots))).await)
}

pub async fn status_one(st: &AppState, xname: &str) -> ApiResult<RemoteBuildNodeStatus> {
    let node = must_get::<RemoteBuildNode>(&*st.store, xname).await?;
    let slots = node_slots::all(st).await?;
    Ok(status_of(st, &node.record, &slots).await)
}

/// A host key as shown by `GET …/host-key`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShownKey {
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub fingerprint: String,
    /// Already accepted for this node.
    pub accepted: bool,
}

/// `GET …/host-key`: the keys the node presents now (unverified) and the accepted ones.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostKeys {
    pub xname: String,
    /// What the node presents now; empty when it could not be reached (`error` says why).
    pub presented: Vec<ShownKey>,
    /// The keys accepted for the node.
    pub accepted: Vec<ShownKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn shown(k: &HostKey, accepted: bool) -> ShownKey {
    ShownKey {
        kind: k.kind.clone(),
        key: k.key.clone(),
        fingerprint: k.fingerprint.clone(),
        accepted,
    }
}

pub async fn host_keys(st: &AppState, xname: &str) -> ApiResult<HostKeys> {
    let node = must_get::<RemoteBuildNode>(&*st.store, xname).await?.record;
    let accepted: Vec<HostKey> = node
        .host_keys
        .iter()
        .filter_map(|e| HostKey::parse_entry(e))
        .collect();
    let (presented, error) = match st.prober.host_keys(xname).await {
        Ok(keys) => (keys, None),
        Err(e) => (vec![], Some(e.to_string())),
    };
    Ok(HostKeys {
        xname: node.xname,
        presented: presented
            .iter()
            .map(|k| shown(k, accepted.contains(k)))
            .collect(),
        accepted: accepted.iter().map(|k| shown(k, true)).collect(),
        error,
    })
}

/// `POST …/host-key {"fingerprint": "SHA256:…"}`: accepts the key the node presents now with that
/// fingerprint (the administrator compared it with the node's own). Keys of other types stay
/// accepted; a changed key of the same type replaces the old one.
pub async fn accept_host_key(
    st: &AppState,
    xname: &str,
    body: Option<&Value>,
) -> ApiResult<HostKeys> {
    must_get::<RemoteBuildNode>(&*st.store, xname).await?;
    let want = input::host_key_accept(body)?.fingerprint.trim().to_string();
    let presented = st.prober.host_keys(xname).await.map_err(|e| {
        ApiError::from(Problem::new(
            502,
            format!("The host key of {xname} could not be read: {e}"),
        ))
    })?;
    let Some(key) = presented.into_iter().find(|k| k.fingerprint == want) else {
        return Err(Problem::new(
            409,
            format!(
                "{xname} does not present a host key with fingerprint {want}: compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the node and `ims remote-build-nodes host-key show {xname}`."
            ),
        )
        .into());
    };
    super::retrying!(
        async {
            let cur = must_get::<RemoteBuildNode>(&*st.store, xname).await?;
            let mut node = cur.record.clone();
            node.host_keys
                .retain(|e| HostKey::parse_entry(e).is_some_and(|k| k.kind != key.kind));
            node.host_keys.push(key.entry());
            st.store.apply(vec![update_op(&node, cur.version)?]).await?;
            Ok::<_, ApiError>(())
        }
        .await
    )?;
    tracing::info!(node = %xname, fingerprint = %key.fingerprint, "host key accepted");
    host_keys(st, xname).await
}
