//! Typed access on top of the row-level [`Store`]: (de)serialise records and derive their columns.

use crate::{NewRow, Op, Result, Row, Store, StoreError};
use ims_core::Record;

/// The row for a record, with its derived columns.
pub fn row_of<T: Record>(r: &T) -> Result<NewRow> {
    let data = serde_json::to_string(r).map_err(|e| StoreError::Corrupt {
        table: T::TABLE.name(),
        id: r.id().to_string(),
        reason: e.to_string(),
    })?;
    let (status, job_type) = r.job_fields();
    Ok(NewRow {
        id: r.id().to_string(),
        created: r.created().map(|t| t.to_wire()),
        link_path: r.link_path().map(str::to_string),
        status: status.map(str::to_string),
        job_type: job_type.map(str::to_string),
        data,
    })
}

/// Parses a stored row as `T`.
pub fn parse_row<T: Record>(row: &Row) -> Result<T> {
    serde_json::from_str(&row.data).map_err(|e| StoreError::Corrupt {
        table: T::TABLE.name(),
        id: row.id.clone(),
        reason: e.to_string(),
    })
}

/// A record and the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub record: T,
    pub version: i64,
}

pub async fn get<T: Record>(store: &dyn Store, id: &str) -> Result<Option<Versioned<T>>> {
    match store.get(T::TABLE, id).await? {
        Some(row) => Ok(Some(Versioned {
            record: parse_row(&row)?,
            version: row.version,
        })),
        None => Ok(None),
    }
}

pub async fn list<T: Record>(store: &dyn Store) -> Result<Vec<Versioned<T>>> {
    store
        .list(T::TABLE)
        .await?
        .iter()
        .map(|row| {
            Ok(Versioned {
                record: parse_row(row)?,
                version: row.version,
            })
        })
        .collect()
}

pub fn insert_op<T: Record>(r: &T) -> Result<Op> {
    Ok(Op::Insert(T::TABLE, row_of(r)?))
}

pub fn upsert_op<T: Record>(r: &T) -> Result<Op> {
    Ok(Op::Upsert(T::TABLE, row_of(r)?))
}

pub fn update_op<T: Record>(r: &T, version: i64) -> Result<Op> {
    Ok(Op::Update {
        table: T::TABLE,
        version,
        row: row_of(r)?,
    })
}

pub fn delete_op<T: Record>(v: &Versioned<T>) -> Op {
    Op::Delete {
        table: T::TABLE,
        id: v.record.id().to_string(),
        version: Some(v.version),
    }
}

pub async fn insert<T: Record>(store: &dyn Store, r: &T) -> Result<()> {
    store.apply(vec![insert_op(r)?]).await
}

/// How many times a read-modify-write is retried after losing a race.
pub const MAX_RETRIES: usize = 64;

/// Read-modify-write of one record with optimistic concurrency: `f` is applied to the current
/// record; if another writer changed it meanwhile, the record is re-read and `f` applied again.
/// `f` may refuse with its own error. Returns `Ok(None)` when the record does not exist.
pub async fn update_with<T, E, F>(
    store: &dyn Store,
    id: &str,
    mut f: F,
) -> std::result::Result<Option<T>, E>
where
    T: Record + Clone,
    E: From<StoreError>,
    F: FnMut(T) -> std::result::Result<T, E>,
{
    for _ in 0..MAX_RETRIES {
        let Some(cur) = get::<T>(store, id).await? else {
            return Ok(None);
        };
        let new = f(cur.record)?;
        match store.apply(vec![update_op(&new, cur.version)?]).await {
            Ok(()) => return Ok(Some(new)),
            Err(StoreError::Conflict) => {
                tokio::task::yield_now().await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}
