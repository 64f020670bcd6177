//! Job slots of remote build nodes, reserved in the records store.
//!
//! A slot is a row `<xname>/<n>` of the internal `node_slots` table with `n < capacity`. Placing
//! a job on a node is one transaction of three changes:
//! * the job's record gets `remote_build_node = xname` (at the version read: a job deleted or
//!   ended meanwhile is not placed);
//! * the slot row is inserted (the primary key refuses a slot another placement took);
//! * the node's record is rewritten at the version read (unchanged), so a placement and a drain or
//!   a removal of the node, or two placements on one node, never both commit from one read.
//!
//! So two concurrent POSTs, in one server or in two replicas on one PostgreSQL, can never put
//! more jobs on a node than it has slots: the loser of a race re-reads and tries again (or finds
//! the node full). A slot is released when its job ends or is deleted, and the remote executor's
//! node pass releases the slots of jobs that ended or are gone (a crash between the end of a job
//! and the release).

use super::MAX_ATTEMPTS;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use ims_core::{Job, NodeSlot, RemoteBuildNode, Timestamp};
use ims_store::{Op, delete_op, insert_op, list, update_op};

/// Every reserved slot.
pub async fn all(st: &AppState) -> ApiResult<Vec<NodeSlot>> {
    Ok(list::<NodeSlot>(&*st.store)
        .await?
        .into_iter()
        .map(|v| v.record)
        .collect())
}

/// What [`reserve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The job holds slot `n` of the node now.
    Slot(u32),
    /// Every slot below the capacity is taken.
    Full,
    /// The node is drained or no longer registered.
    Unavailable,
    /// The job was deleted or has ended: it is not placed.
    JobGone,
    /// The job holds a slot already (another replica placed it meanwhile, or the API host claimed
    /// it): the slot's node and when it was reserved.
    Placed(String, Timestamp),
}

/// The slot name of a job the API host runs after it waited (no node is called so: xnames are
/// host names). Its slot row is the claim that keeps a node placement out.
pub fn home_xname(job_id: &str) -> String {
    format!("@api-host-{job_id}")
}

/// Reserves a slot of node `xname` for `job` and assigns the job to the node, in one transaction
/// (see the module's documentation). The node holds its record's `capacity` jobs, else
/// `probed_capacity` (its size).
pub async fn reserve(
    st: &AppState,
    job_id: &str,
    xname: &str,
    probed_capacity: u32,
) -> ApiResult<Reserved> {
    let mut attempt = 0;
    loop {
        match reserve_once(st, job_id, xname, probed_capacity).await {
            Err(e) if e.is_conflict() && attempt + 1 < MAX_ATTEMPTS => {
                attempt += 1;
                tokio::task::yield_now().await;
            }
            r => return r,
        }
    }
}

async fn reserve_once(
    st: &AppState,
    job_id: &str,
    xname: &str,
    probed_capacity: u32,
) -> ApiResult<Reserved> {
    let Some(job) = ims_store::get::<Job>(&*st.store, job_id).await? else {
        return Ok(Reserved::JobGone);
    };
    if job.record.status.is_final() {
        return Ok(Reserved::JobGone);
    }
    let Some(node) = ims_store::get::<RemoteBuildNode>(&*st.store, xname).await? else {
        return Ok(Reserved::Unavailable);
    };
    if node.record.drained {
        return Ok(Reserved::Unavailable);
    }
    let slots = all(st).await?;
    if let Some(s) = slots.iter().find(|s| s.job_id == job_id) {
        return Ok(Reserved::Placed(s.xname.clone(), s.created));
    }
    // The capacity as the node record says now (else the node's size as probed), counted as taken
    // slots: slot numbers at or above a lowered capacity still count.
    let capacity = node.record.capacity.unwrap_or(probed_capacity);
    let taken: std::collections::HashSet<u32> = slots
        .iter()
        .filter(|s| s.xname == xname)
        .map(|s| s.slot)
        .collect();
    if taken.len() >= capacity as usize {
        return Ok(Reserved::Full);
    }
    let Some(n) = (0..capacity).find(|n| !taken.contains(n)) else {
        return Ok(Reserved::Full);
    };
    let slot = NodeSlot {
        id: NodeSlot::id_of(xname, n),
        created: Timestamp::now(),
        xname: xname.to_string(),
        slot: n,
        job_id: job_id.to_string(),
    };
    let mut placed = job.record.clone();
    placed.remote_build_node = xname.to_string();
    st.store
        .apply(vec![
            update_op(&placed, job.version)?,
            insert_op(&slot)?,
            update_op(&node.record, node.version)?,
        ])
        .await?;
    Ok(Reserved::Slot(n))
}

/// Releases every slot `job_id` holds (none is fine). With `unassign` (its agent could not be
/// started there) a job that has not ended is no longer assigned to the node, in the same
/// transaction; otherwise the job keeps the node it ran on.
pub async fn release(st: &AppState, job_id: &str, unassign: bool) -> ApiResult<()> {
    super::retrying!(
        async {
            let held: Vec<_> = list::<NodeSlot>(&*st.store)
                .await?
                .into_iter()
                .filter(|v| v.record.job_id == job_id)
                .collect();
            if held.is_empty() {
                return Ok(());
            }
            let mut ops: Vec<Op> = held.iter().map(delete_op).collect();
            if unassign
                && let Some(job) = ims_store::get::<Job>(&*st.store, job_id).await?
                && !job.record.status.is_final()
                && held
                    .iter()
                    .any(|s| s.record.xname == job.record.remote_build_node)
            {
                let mut unassigned = job.record.clone();
                unassigned.remote_build_node = String::new();
                ops.push(update_op(&unassigned, job.version)?);
            }
            st.store.apply(ops).await.map_err(ApiError::from)
        }
        .await
    )
}

/// Claims job `job_id` for the API host after it waited for a node: a slot row of its own
/// ([`home_xname`]), inserted with a rewrite of the job at the version read, so a node placement of
/// the same job by another replica and this claim never both commit. `false`: the job holds a
/// slot already (or ended, or is gone).
pub async fn claim_home(st: &AppState, job_id: &str) -> ApiResult<bool> {
    super::retrying!(
        async {
            let Some(job) = ims_store::get::<Job>(&*st.store, job_id).await? else {
                return Ok(false);
            };
            if job.record.status.is_final() || all(st).await?.iter().any(|s| s.job_id == job_id) {
                return Ok(false);
            }
            let xname = home_xname(job_id);
            let slot = NodeSlot {
                id: NodeSlot::id_of(&xname, 0),
                created: Timestamp::now(),
                xname,
                slot: 0,
                job_id: job_id.to_string(),
            };
            st.store
                .apply(vec![
                    update_op(&job.record, job.version)?,
                    insert_op(&slot)?,
                ])
                .await?;
            Ok::<_, ApiError>(true)
        }
        .await
    )
}

/// Whether node `xname` holds reserved slots (it cannot be removed then).
pub async fn in_use(st: &AppState, xname: &str) -> ApiResult<Vec<String>> {
    Ok(all(st)
        .await?
        .into_iter()
        .filter(|s| s.xname == xname)
        .map(|s| s.job_id)
        .collect())
}
