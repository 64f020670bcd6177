//! A write-through cache for a store that one process owns (the embedded SQLite store: its database
//! is locked against a second process, so every write goes through here).
//!
//! A table is loaded into memory on first use and then kept in step with every successful write, so
//! reads (one record or the whole collection) never wait for the database, also right after a write.
//! The rendered collection array is kept until the next write to its table. Writes are serialised
//! in-process, so they queue in order instead of spinning on SQLite's busy handler. A table larger
//! than [`Cached::budget`] bytes is not kept (reads go to the database), so memory stays bounded.

use crate::{Op, Result, Row, RowEdit, Store, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use ims_core::Table;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Default per-table memory budget.
pub const DEFAULT_TABLE_BUDGET: usize = 16 * 1024 * 1024;

/// List order: `created`, then id (as `ORDER BY created, id`; no `created` sorts first, as in SQLite).
type Key = (Option<String>, String);

#[derive(Default)]
struct TableCache {
    rows: BTreeMap<Key, String>,
    /// id → (created, version)
    ids: HashMap<String, (Option<String>, i64)>,
    bytes: usize,
    body: Option<Bytes>,
}

impl TableCache {
    fn load(rows: Vec<Row>) -> Self {
        let mut t = TableCache::default();
        for r in rows {
            t.put(r.id, r.created, r.version, r.data);
        }
        t
    }

    fn remove(&mut self, id: &str) -> Option<i64> {
        let (created, version) = self.ids.remove(id)?;
        if let Some(data) = self.rows.remove(&(created, id.to_string())) {
            self.bytes -= data.len();
        }
        self.body = None;
        Some(version)
    }

    fn put(&mut self, id: String, created: Option<String>, version: i64, data: String) {
        self.remove(&id);
        self.bytes += data.len();
        self.ids.insert(id.clone(), (created.clone(), version));
        self.rows.insert((created, id), data);
        self.body = None;
    }

    fn get(&self, id: &str) -> Option<Row> {
        let (created, version) = self.ids.get(id)?;
        let data = self.rows.get(&(created.clone(), id.to_string()))?;
        Some(Row {
            id: id.to_string(),
            version: *version,
            created: created.clone(),
            data: data.clone(),
        })
    }

    fn body(&mut self) -> Bytes {
        if let Some(b) = &self.body {
            return b.clone();
        }
        let mut s = String::with_capacity(self.bytes + self.rows.len() + 2);
        s.push('[');
        for (i, data) in self.rows.values().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(data);
        }
        s.push(']');
        let b = Bytes::from(s);
        self.body = Some(b.clone());
        b
    }

    /// Mirrors one committed operation (the same semantics as the SQL).
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Insert(_, r) => self.put(r.id.clone(), r.created.clone(), 1, r.data.clone()),
            Op::Upsert(_, r) => {
                let version = self.ids.get(&r.id).map_or(1, |(_, v)| v + 1);
                self.put(r.id.clone(), r.created.clone(), version, r.data.clone());
            }
            Op::Update { version, row, .. } => self.put(
                row.id.clone(),
                row.created.clone(),
                version + 1,
                row.data.clone(),
            ),
            Op::Delete { id, .. } => {
                self.remove(id);
            }
            Op::DeleteAll(_) => *self = TableCache::default(),
        }
    }
}

enum Slot {
    Loaded(TableCache),
    /// Larger than the budget: served by the database.
    TooBig,
}

pub struct Cached<S> {
    inner: S,
    tables: Arc<Mutex<HashMap<Table, Slot>>>,
    writer: Arc<tokio::sync::Mutex<()>>,
    budget: usize,
}

fn table_of(op: &Op) -> Table {
    match op {
        Op::Insert(t, _) | Op::Upsert(t, _) | Op::DeleteAll(t) => *t,
        Op::Update { table, .. } | Op::Delete { table, .. } => *table,
    }
}

/// Mirrors the outcome of a write into the loaded tables.
fn mirror(tables: &Mutex<HashMap<Table, Slot>>, ops: &[Op], result: &Result<()>, budget: usize) {
    let mut tables = tables.lock().unwrap_or_else(|e| e.into_inner());
    for op in ops {
        let table = table_of(op);
        match (&result, tables.get_mut(&table)) {
            (Ok(()), Some(Slot::Loaded(t))) => {
                t.apply(op);
                if t.bytes > budget {
                    tables.insert(table, Slot::TooBig);
                }
            }
            // After a failed write, reload on next use rather than trust the mirror.
            (Err(e), Some(_)) if !matches!(e, StoreError::Conflict) => {
                tables.remove(&table);
            }
            _ => {}
        }
    }
}

impl<S: Store + Clone> Cached<S> {
    pub fn new(inner: S) -> Self {
        Cached::with_budget(inner, DEFAULT_TABLE_BUDGET)
    }

    /// `budget`: the most bytes of record JSON one table may keep in memory.
    pub fn with_budget(inner: S, budget: usize) -> Self {
        Cached {
            inner,
            tables: Arc::new(Mutex::new(HashMap::new())),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            budget,
        }
    }

    /// Writes `ops` and mirrors them, holding the writer lock `w` throughout. Both run in a task of
    /// their own: a caller that goes away mid-write (its client disconnected) cannot leave a commit
    /// unmirrored, nor let the next write or table load in before the mirror is updated.
    async fn write(&self, w: tokio::sync::OwnedMutexGuard<()>, ops: Vec<Op>) -> Result<()> {
        let (inner, tables, budget) = (self.inner.clone(), self.tables.clone(), self.budget);
        tokio::spawn(async move {
            let result = inner.apply(ops.clone()).await;
            mirror(&tables, &ops, &result, budget);
            drop(w);
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("the write task failed: {e}")))?
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, HashMap<Table, Slot>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the table's cache, loading it first if needed. `None`: served by the database.
    async fn with_table<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut TableCache) -> T,
    ) -> Result<Option<T>> {
        {
            let mut tables = self.tables();
            match tables.get_mut(&table) {
                Some(Slot::Loaded(t)) => return Ok(Some(f(t))),
                Some(Slot::TooBig) => return Ok(None),
                None => {}
            }
        }
        // Load under the writer lock: no write can commit between the read and the install.
        let _w = self.writer.lock().await;
        let missing = !self.tables().contains_key(&table);
        if missing {
            let loaded = TableCache::load(self.inner.list(table).await?);
            let slot = if loaded.bytes > self.budget {
                tracing::info!(
                    table = table.name(),
                    bytes = loaded.bytes,
                    "table larger than the cache budget; reads go to the database"
                );
                Slot::TooBig
            } else {
                Slot::Loaded(loaded)
            };
            self.tables().insert(table, slot);
        }
        let mut tables = self.tables();
        match tables.get_mut(&table) {
            Some(Slot::Loaded(t)) => Ok(Some(f(t))),
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl<S: Store + Clone> Store for Cached<S> {
    async fn list(&self, table: Table) -> Result<Vec<Row>> {
        self.inner.list(table).await
    }

    async fn list_json(&self, table: Table) -> Result<Bytes> {
        match self.with_table(table, TableCache::body).await? {
            Some(b) => Ok(b),
            None => self.inner.list_json(table).await,
        }
    }

    async fn get(&self, table: Table, id: &str) -> Result<Option<Row>> {
        match self.with_table(table, |t| t.get(id)).await? {
            Some(row) => Ok(row),
            None => self.inner.get(table, id).await,
        }
    }

    async fn link_in_use(&self, table: Table, path: &str, except_id: Option<&str>) -> Result<bool> {
        self.inner.link_in_use(table, path, except_id).await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let w = self.writer.clone().lock_owned().await;
        self.write(w, ops).await
    }

    async fn modify(&self, table: Table, id: &str, edit: &mut RowEdit<'_>) -> Result<bool> {
        // Every write of this store goes through the writer lock, so the row cannot change between
        // this read and the write below. (Loading the table takes the lock: load it first.)
        self.with_table(table, |_| ()).await?;
        let w = self.writer.clone().lock_owned().await;
        let cached = match self.tables().get(&table) {
            Some(Slot::Loaded(t)) => Some(t.get(id)),
            _ => None,
        };
        let cur = match cached {
            Some(row) => row,
            None => self.inner.get(table, id).await?,
        };
        let Some(cur) = cur else { return Ok(false) };
        if let Some(row) = edit(&cur) {
            let version = cur.version;
            self.write(
                w,
                vec![Op::Update {
                    table,
                    version,
                    row,
                }],
            )
            .await?;
        }
        Ok(true)
    }

    async fn ready(&self) -> Result<()> {
        let _w = self.writer.lock().await;
        self.inner.ready().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
