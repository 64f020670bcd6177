//! Public keys: create, hard delete (v2) and soft delete (v3).

use super::{must_get, no_content};
use crate::error::ApiResult;
use crate::{Api, AppState, retrying};
use axum::response::Response;
use ims_core::{Deleted, PublicKey, Timestamp, input};
use ims_store::{Op, delete_op, insert_op, list};
use serde_json::Value;

pub async fn create(st: &AppState, body: Option<&Value>) -> ApiResult<PublicKey> {
    let new = input::public_key_create(body)?;
    let rec = PublicKey {
        created: Timestamp::now(),
        id: ims_core::new_id(),
        name: new.name,
        public_key: new.public_key,
    };
    ims_store::insert(&*st.store, &rec).await?;
    Ok(rec)
}

async fn delete_one_once(st: &AppState, api: Api, id: &str) -> ApiResult<()> {
    let cur = must_get::<PublicKey>(&*st.store, id).await?;
    let mut ops = vec![delete_op(&cur)];
    if api == Api::V3 {
        ops.push(insert_op(&Deleted {
            record: cur.record,
            deleted: Timestamp::now(),
        })?);
    }
    st.store.apply(ops).await?;
    Ok(())
}

pub async fn delete_one(st: &AppState, api: Api, id: &str) -> ApiResult<Response> {
    retrying!(delete_one_once(st, api, id).await)?;
    Ok(no_content())
}

async fn delete_all_once(st: &AppState, api: Api) -> ApiResult<()> {
    let all = list::<PublicKey>(&*st.store).await?;
    let now = Timestamp::now();
    let mut ops = Vec::with_capacity(all.len() * 2);
    for cur in all {
        ops.push(delete_op(&cur));
        if api == Api::V3 {
            ops.push(insert_op(&Deleted {
                record: cur.record,
                deleted: now,
            })?);
        }
    }
    if !ops.is_empty() {
        st.store.apply(ops).await?;
    }
    Ok(())
}

/// DELETE on the collection: every key (v2 hard, v3 soft), in one transaction.
pub async fn delete_all(st: &AppState, api: Api) -> ApiResult<Response> {
    retrying!(delete_all_once(st, api).await)?;
    Ok(no_content())
}

/// Used by the deleted-records service: the ops that restore one deleted key.
pub fn undelete_ops(d: &ims_store::Versioned<Deleted<PublicKey>>) -> ApiResult<Vec<Op>> {
    Ok(vec![delete_op(d), insert_op(&d.record.record)?])
}
