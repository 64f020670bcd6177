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

/// Read-modify-write of one record: `f` is applied to the current record and the result stored,
/// with the row locked from the read to the commit ([`Store::modify`]), so concurrent updates of
/// one record queue instead of failing. `f` may refuse with its own error (nothing is written).
/// Nothing is written either when `f` returns the record unchanged. Returns `Ok(None)` when the
/// record does not exist.
pub async fn update_with<T, E, F>(
    store: &dyn Store,
    id: &str,
    f: F,
) -> std::result::Result<Option<T>, E>
where
    T: Record + Send,
    E: From<StoreError> + Send,
    F: FnOnce(T) -> std::result::Result<T, E> + Send,
{
    let mut f = Some(f);
    let mut out: Option<std::result::Result<T, E>> = None;
    let mut edit = |row: &Row| -> Option<NewRow> {
        let f = f.take()?;
        let (res, write) = match parse_row::<T>(row).map_err(E::from).and_then(f) {
            Ok(new) => match row_of(&new) {
                Ok(nr) => {
                    let changed = nr.data != row.data;
                    (Ok(new), changed.then_some(nr))
                }
                Err(e) => (Err(E::from(e)), None),
            },
            Err(e) => (Err(e), None),
        };
        out = Some(res);
        write
    };
    if !store.modify(T::TABLE, id, &mut edit).await? {
        return Ok(None);
    }
    match out {
        Some(r) => r.map(Some),
        None => Err(StoreError::Database(format!(
            "{}/{id}: the update was not run",
            T::TABLE.name()
        ))
        .into()),
    }
}
