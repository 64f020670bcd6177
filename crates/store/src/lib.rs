//! `ims-store`: the records store.
//!
//! [`Store`] is a small, object-safe trait over rows that hold a record's wire JSON plus a few
//! derived columns. Two implementations share one body of SQL ([`SqliteStore`], the embedded default,
//! and [`PgStore`] for several replicas). Every change goes through [`Store::apply`], which runs a list
//! of [`Op`]s in one transaction: either all of them happen or none. Updates carry the row `version`
//! they were computed from (optimistic concurrency), so two writers — in one process or in two
//! `ims serve` processes on one PostgreSQL — never silently overwrite each other: the loser gets
//! [`StoreError::Conflict`]. A read-modify-write of one record ([`Store::modify`], typed as
//! [`update_with`]) instead holds the row's lock from the read to the commit, so concurrent
//! updates of one record queue and all succeed.

#![forbid(unsafe_code)]

mod cache;
mod sql;
mod typed;

pub use cache::{Cached, DEFAULT_TABLE_BUDGET};

pub use sql::{PgStore, SqliteStore};
pub use typed::*;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _, TryStreamExt as _};
use ims_core::Table;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write found the row missing, present, or at another version, or a unique
    /// index (id, link path) refused it.
    #[error("conflicting concurrent change (or a duplicate id or link path)")]
    Conflict,
    #[error("database error: {0}")]
    Database(String),
    /// A stored row does not parse as its record type.
    #[error("corrupt record {table}/{id}: {reason}")]
    Corrupt {
        table: &'static str,
        id: String,
        reason: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // A unique index (ids, link paths) refused a write: another writer got there first. Or
        // PostgreSQL broke a deadlock between two transactions (or a serialization failure): the
        // change did not happen and a re-run from a fresh read succeeds.
        if e.as_database_error().is_some_and(|d| {
            d.is_unique_violation() || matches!(d.code().as_deref(), Some("40P01" | "40001"))
        }) {
            return StoreError::Conflict;
        }
        StoreError::Database(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored row: the record's JSON and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub version: i64,
    /// The `created` column (list order); `None` for records without one.
    pub created: Option<String>,
    pub data: String,
}

/// A row to write, with the columns derived from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow {
    pub id: String,
    pub created: Option<String>,
    pub link_path: Option<String>,
    pub status: Option<String>,
    pub job_type: Option<String>,
    pub data: String,
}

/// One change inside an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds a row; [`StoreError::Conflict`] if the id exists.
    Insert(Table, NewRow),
    /// Adds or replaces a row.
    Upsert(Table, NewRow),
    /// Replaces a row that is still at `version`; conflict otherwise.
    Update {
        table: Table,
        version: i64,
        row: NewRow,
    },
    /// Removes a row; with `version`, only if it is still at that version (conflict otherwise).
    /// Without, removing a missing row is a conflict too.
    Delete {
        table: Table,
        id: String,
        version: Option<i64>,
    },
    /// Removes every row of a table.
    DeleteAll(Table),
}

/// Rows of a table as the database returns them, oldest first.
pub type RowStream = BoxStream<'static, Result<Row>>;

/// A collection as one JSON array: in parts held in memory (to be sent one after the other), or in
/// chunks as its rows come from the database.
pub enum ListBody {
    Parts(Vec<Bytes>),
    Chunks(BoxStream<'static, Result<Bytes>>),
}

/// One transaction applied in several batches (an import too large to hold in memory at once).
/// Dropped without [`Batch::commit`], nothing of it happened.
#[async_trait]
pub trait Batch: Send {
    async fn apply(&mut self, ops: Vec<Op>) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every row of a table, oldest first, as the database returns them (memory stays bounded).
    fn stream(&self, table: Table) -> RowStream;
    /// Every row of a table, oldest first.
    async fn list(&self, table: Table) -> Result<Vec<Row>> {
        self.stream(table).try_collect().await
    }
    /// Every row of a table as one JSON array (the rows' wire JSON joined), oldest first.
    async fn list_body(&self, table: Table) -> Result<ListBody> {
        Ok(ListBody::Chunks(json_chunks(self.stream(table))))
    }
    /// [`Store::list_body`] in one buffer.
    async fn list_json(&self, table: Table) -> Result<Bytes> {
        match self.list_body(table).await? {
            ListBody::Parts(parts) => Ok(Bytes::from(parts.concat())),
            ListBody::Chunks(chunks) => {
                let parts: Vec<Bytes> = chunks.try_collect().await?;
                Ok(Bytes::from(parts.concat()))
            }
        }
    }
    async fn get(&self, table: Table, id: &str) -> Result<Option<Row>>;
    /// Whether any row other than `except_id` has this link path.
    async fn link_in_use(&self, table: Table, path: &str, except_id: Option<&str>) -> Result<bool>;
    /// Starts a transaction that takes its changes in batches.
    async fn begin(&self) -> Result<Box<dyn Batch + '_>>;
    /// Runs all `ops` in one transaction.
    async fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let mut batch = self.begin().await?;
        batch.apply(ops).await?;
        batch.commit().await
    }
    /// Read-modify-write of one row with no other writer in between (in this process or another
    /// replica): reads the row, calls `edit` once with it and writes what `edit` returns (`None`
    /// leaves the row as it is), in one transaction that holds the row's lock. Returns whether the
    /// row exists (`edit` is not called when it does not).
    async fn modify(&self, table: Table, id: &str, edit: &mut RowEdit<'_>) -> Result<bool>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<()>;
    /// Checks that a write can commit now: commits a small probe write (readiness).
    async fn ready(&self) -> Result<()>;
    /// The database engine: `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;
    async fn close(&self);
}

/// The rows' JSON as an array, in chunks of about 64 KiB.
pub fn json_chunks<'a>(rows: BoxStream<'a, Result<Row>>) -> BoxStream<'a, Result<Bytes>> {
    const CHUNK: usize = 64 * 1024;
    struct State<'a> {
        rows: BoxStream<'a, Result<Row>>,
        opened: bool,
        any: bool,
        done: bool,
    }
    let start = State {
        rows,
        opened: false,
        any: false,
        done: false,
    };
    futures::stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        let mut buf = Vec::with_capacity(CHUNK + 1024);
        if !st.opened {
            buf.push(b'[');
            st.opened = true;
        }
        loop {
            match st.rows.next().await {
                Some(Ok(row)) => {
                    if st.any {
                        buf.push(b',');
                    }
                    st.any = true;
                    buf.extend_from_slice(row.data.as_bytes());
                    if buf.len() >= CHUNK {
                        return Some((Ok(Bytes::from(buf)), st));
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    buf.push(b']');
                    st.done = true;
                    return Some((Ok(Bytes::from(buf)), st));
                }
            }
        }
    })
    .boxed()
}

pub type DynStore = Arc<dyn Store>;

/// The edit of [`Store::modify`]: the current row in, the replacement (or `None`) out.
pub type RowEdit<'a> = dyn FnMut(&Row) -> Option<NewRow> + Send + 'a;

/// Opens a store from a URL: `sqlite://PATH` (created if missing) or `postgres://…`. Runs migrations.
pub async fn open(url: &str) -> Result<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        // The embedded store is owned by one process (the data directory is locked), so its
        // collection reads can be served from memory.
        Ok(Arc::new(Cached::new(
            SqliteStore::open(std::path::Path::new(path)).await?,
        )))
    } else {
        Err(StoreError::Database(format!(
            "unsupported database URL {url:?}: use sqlite://PATH or postgres://…"
        )))
    }
}

#[cfg(feature = "testing")]
pub mod testing;
