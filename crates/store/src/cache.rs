//! A write-through cache for a store that one process owns (the embedded SQLite store: its database
//! is locked against a second process, so every write goes through here).
//!
//! A table is loaded into memory on first use and then kept in step with every successful write, so
//! reads (one record or the whole collection) never wait for the database, also right after a write.
//! Writes are serialised in-process, so they queue in order instead of spinning on SQLite's busy
//! handler.
//!
//! Memory: each table keeps its rendered collection array (one shared [`Bytes`]) and every record's
//! JSON is a slice of it, so the records are held once. A write invalidates the array; the next list
//! renders it again (once, however many lists wait for it, and without blocking reads of single
//! records) and the records are re-pointed into the new array. Between a write and the next list
//! the changed records have their own buffers and the old array is kept by the unchanged ones. A
//! table larger than [`Cached::budget`] bytes is not kept (its reads stream from the database); it is
//! tried again after [`TOO_BIG_RETRY`].

use crate::{Batch, ListBody, Op, Result, Row, Store, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use ims_core::Table;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Default per-table memory budget (record JSON).
pub const DEFAULT_TABLE_BUDGET: usize = 256 * 1024 * 1024;

/// How long a table found larger than the budget is served by the database before loading is tried again.
pub const TOO_BIG_RETRY: Duration = Duration::from_secs(60);

/// List order: `created`, then id (as `ORDER BY created, id`; no `created` sorts first, as in SQLite).
type Key = (Option<Arc<str>>, Arc<str>);

struct Entry {
    version: i64,
    /// The record's JSON: a slice of the rendered array, or its own buffer if written since.
    data: Bytes,
}

#[derive(Default)]
struct Rows {
    entries: BTreeMap<Key, Entry>,
    /// id → created (the key's allocations are shared with `entries`)
    ids: HashMap<Arc<str>, Option<Arc<str>>>,
    bytes: usize,
    /// Counts changes, so a rendering knows whether it is still current.
    generation: u64,
    body: Option<Bytes>,
}

impl Rows {
    fn remove(&mut self, id: &str) -> Option<i64> {
        let (id, created) = self.ids.remove_entry(id)?;
        let entry = self.entries.remove(&(created, id))?;
        self.bytes -= entry.data.len();
        self.generation += 1;
        self.body = None;
        Some(entry.version)
    }

    fn put(&mut self, id: &str, created: Option<&str>, version: i64, data: Bytes) {
        self.remove(id);
        let id: Arc<str> = Arc::from(id);
        let created: Option<Arc<str>> = created.map(Arc::from);
        self.bytes += data.len();
        self.ids.insert(id.clone(), created.clone());
        self.entries.insert((created, id), Entry { version, data });
        self.generation += 1;
        self.body = None;
    }

    fn get(&self, id: &str) -> Option<Row> {
        let (id, created) = self.ids.get_key_value(id)?;
        let entry = self.entries.get(&(created.clone(), id.clone()))?;
        Some(Row {
            id: id.to_string(),
            version: entry.version,
            created: created.as_deref().map(str::to_string),
            data: String::from_utf8_lossy(&entry.data).into_owned(),
        })
    }

    /// Mirrors one committed operation (the same semantics as the SQL).
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Insert(_, r) => self.put(&r.id, r.created.as_deref(), 1, r.data.clone().into()),
            Op::Upsert(_, r) => {
                let version = self.version(&r.id).map_or(1, |v| v + 1);
                self.put(&r.id, r.created.as_deref(), version, r.data.clone().into());
            }
            Op::Update { version, row, .. } => self.put(
                &row.id,
                row.created.as_deref(),
                version + 1,
                row.data.clone().into(),
            ),
            Op::Delete { id, .. } => {
                self.remove(id);
            }
            Op::DeleteAll(_) => {
                let generation = self.generation + 1;
                *self = Rows::default();
                self.generation = generation;
            }
        }
    }

    fn version(&self, id: &str) -> Option<i64> {
        let (id, created) = self.ids.get_key_value(id)?;
        Some(self.entries.get(&(created.clone(), id.clone()))?.version)
    }

    /// Length of the collection array.
    fn json_len(&self) -> usize {
        self.bytes + self.entries.len().max(1) + 1
    }

    /// Makes `body` (rendered from this generation) the collection array and every record a slice
    /// of it. A body rendered before a later write is not installed.
    fn install(&mut self, generation: u64, body: &Bytes) {
        if generation != self.generation {
            return;
        }
        let mut at = 1;
        for entry in self.entries.values_mut() {
            let len = entry.data.len();
            entry.data = body.slice(at..at + len);
            at += len + 1;
        }
        self.body = Some(body.clone());
    }
}

/// The records' JSON joined into one array.
fn join<'a>(parts: impl Iterator<Item = &'a Bytes>, len: usize) -> Bytes {
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, part) in parts.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(part);
    }
    body.push(b']');
    Bytes::from(body)
}

struct TableState {
    rows: RwLock<Rows>,
    /// One rendering at a time per table: concurrent lists wait for it and share its result.
    render: tokio::sync::Mutex<()>,
}

impl TableState {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rows> {
        self.rows.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rows> {
        self.rows.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The collection array, rendered if a write invalidated it. Readers of single records are not
    /// blocked while it is copied (only the snapshot of the slices and the re-pointing take locks).
    async fn body(self: &Arc<Self>) -> Result<Bytes> {
        if let Some(b) = &self.read().body {
            return Ok(b.clone());
        }
        let _one = self.render.lock().await;
        let (generation, parts, len) = {
            let rows = self.read();
            if let Some(b) = &rows.body {
                return Ok(b.clone());
            }
            let parts: Vec<Bytes> = rows.entries.values().map(|e| e.data.clone()).collect();
            (rows.generation, parts, rows.json_len())
        };
        let body = tokio::task::spawn_blocking(move || join(parts.iter(), len))
            .await
            .map_err(|e| StoreError::Database(format!("rendering the collection: {e}")))?;
        self.write().install(generation, &body);
        Ok(body)
    }
}

enum Slot {
    Loaded(Arc<TableState>),
    /// Larger than the budget (when checked): served by the database.
    TooBig(Instant),
}

pub struct Cached<S> {
    inner: S,
    tables: Mutex<HashMap<Table, Slot>>,
    writer: tokio::sync::Mutex<()>,
    /// A [`Batch`] holds the writer lock: reads then go to the database instead of loading tables.
    batch_open: AtomicBool,
    budget: usize,
}

fn table_of(op: &Op) -> Table {
    match op {
        Op::Insert(t, _) | Op::Upsert(t, _) | Op::DeleteAll(t) => *t,
        Op::Update { table, .. } | Op::Delete { table, .. } => *table,
    }
}

impl<S: Store> Cached<S> {
    pub fn new(inner: S) -> Self {
        Cached::with_budget(inner, DEFAULT_TABLE_BUDGET)
    }

    /// `budget`: the most bytes of record JSON one table may keep in memory.
    pub fn with_budget(inner: S, budget: usize) -> Self {
        Cached {
            inner,
            tables: Mutex::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(()),
            batch_open: AtomicBool::new(false),
            budget,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, HashMap<Table, Slot>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some`: the table is cached (now); `None`: use the database.
    fn cached(&self, table: Table) -> Option<Option<Arc<TableState>>> {
        match self.tables().get(&table) {
            Some(Slot::Loaded(t)) => Some(Some(t.clone())),
            Some(Slot::TooBig(since)) if since.elapsed() < TOO_BIG_RETRY => Some(None),
            _ => None,
        }
    }

    /// The table's cache, loaded first if needed. `None`: served by the database.
    async fn table(&self, table: Table) -> Result<Option<Arc<TableState>>> {
        if let Some(t) = self.cached(table) {
            return Ok(t);
        }
        if self.batch_open.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Load under the writer lock: no write can commit between the read and the install.
        let _w = self.writer.lock().await;
        if let Some(t) = self.cached(table) {
            return Ok(t);
        }
        let slot = match self.load(table).await? {
            Some(rows) => Slot::Loaded(Arc::new(TableState {
                rows: RwLock::new(rows),
                render: tokio::sync::Mutex::new(()),
            })),
            None => {
                tracing::info!(
                    table = table.name(),
                    budget = self.budget,
                    "table larger than the cache budget; reads go to the database"
                );
                Slot::TooBig(Instant::now())
            }
        };
        let t = match &slot {
            Slot::Loaded(t) => Some(t.clone()),
            Slot::TooBig(_) => None,
        };
        self.tables().insert(table, slot);
        Ok(t)
    }

    /// Reads a table row by row, rendered into its array; `None` once it exceeds the budget.
    async fn load(&self, table: Table) -> Result<Option<Rows>> {
        use futures::StreamExt as _;
        let mut rows = Rows::default();
        let mut stream = self.inner.stream(table);
        while let Some(r) = stream.next().await {
            let r = r?;
            rows.put(&r.id, r.created.as_deref(), r.version, r.data.into());
            if rows.bytes > self.budget {
                return Ok(None);
            }
        }
        let body = join(rows.entries.values().map(|e| &e.data), rows.json_len());
        let generation = rows.generation;
        rows.install(generation, &body);
        Ok(Some(rows))
    }

    /// Forgets a table (it is loaded again on next use).
    fn forget(&self, table: Table) {
        self.tables().remove(&table);
    }
}

#[async_trait]
impl<S: Store> Store for Cached<S> {
    fn stream(&self, table: Table) -> crate::RowStream {
        self.inner.stream(table)
    }

    async fn list_body(&self, table: Table) -> Result<ListBody> {
        match self.table(table).await? {
            Some(t) => Ok(ListBody::Whole(t.body().await?)),
            None => self.inner.list_body(table).await,
        }
    }

    async fn get(&self, table: Table, id: &str) -> Result<Option<Row>> {
        match self.table(table).await? {
            Some(t) => Ok(t.read().get(id)),
            None => self.inner.get(table, id).await,
        }
    }

    async fn link_in_use(&self, table: Table, path: &str, except_id: Option<&str>) -> Result<bool> {
        self.inner.link_in_use(table, path, except_id).await
    }

    async fn begin(&self) -> Result<Box<dyn Batch + '_>> {
        let writer = self.writer.lock().await;
        let inner = self.inner.begin().await?;
        self.batch_open.store(true, Ordering::Release);
        Ok(Box::new(CachedBatch {
            cache: self,
            inner: Some(inner),
            touched: Vec::new(),
            _writer: writer,
        }))
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let _w = self.writer.lock().await;
        let result = self.inner.apply(ops.clone()).await;
        for op in &ops {
            let table = table_of(op);
            let slot = match self.tables().get(&table) {
                Some(Slot::Loaded(t)) => Some(t.clone()),
                Some(Slot::TooBig(_)) => None,
                None => continue,
            };
            match (&result, slot) {
                (Ok(()), Some(t)) => {
                    let mut rows = t.write();
                    rows.apply(op);
                    if rows.bytes > self.budget {
                        drop(rows);
                        self.tables().insert(table, Slot::TooBig(Instant::now()));
                    }
                }
                // After a failed write, reload on next use rather than trust the mirror.
                (Err(e), _) if !matches!(e, StoreError::Conflict) => self.forget(table),
                _ => {}
            }
        }
        result
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

/// A transaction through the cache: holds the writer lock; the tables it wrote are loaded again
/// on next use.
struct CachedBatch<'a, S> {
    cache: &'a Cached<S>,
    inner: Option<Box<dyn Batch + 'a>>,
    touched: Vec<Table>,
    _writer: tokio::sync::MutexGuard<'a, ()>,
}

#[async_trait]
impl<S: Store> Batch for CachedBatch<'_, S> {
    async fn apply(&mut self, ops: Vec<Op>) -> Result<()> {
        for op in &ops {
            let table = table_of(op);
            if !self.touched.contains(&table) {
                self.touched.push(table);
            }
        }
        match &mut self.inner {
            Some(b) => b.apply(ops).await,
            None => Err(StoreError::Database("the batch has ended".into())),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        match self.inner.take() {
            Some(b) => b.commit().await,
            None => Err(StoreError::Database("the batch has ended".into())),
        }
    }
}

impl<S> Drop for CachedBatch<'_, S> {
    fn drop(&mut self) {
        // Rolled back or committed: either way the mirror of a written table is not trusted.
        let mut tables = self.cache.tables.lock().unwrap_or_else(|e| e.into_inner());
        for t in &self.touched {
            tables.remove(t);
        }
        self.cache.batch_open.store(false, Ordering::Release);
    }
}
