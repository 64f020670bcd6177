//! A write-through cache for a store that one process owns (the embedded SQLite store: its database
//! is locked against a second process, so every write goes through here).
//!
//! A table is loaded into memory on first use and then kept in step with every successful write, so
//! reads (one record or the whole collection) never wait for the database, also right after a write.
//! Writes are serialised in-process, so they queue in order instead of spinning on SQLite's busy
//! handler.
//!
//! Memory: each table keeps its collection array rendered in pieces of about [`PIECE`] records
//! (shared [`Bytes`], sent as they are) and every record's JSON is a slice of its piece, so the
//! records are held once. A write marks the piece it falls in; the next list renders only the
//! marked pieces again (once, however many lists wait for it, and without blocking reads of single
//! records) and re-points their records into them. A table larger than [`Cached::budget`] bytes is
//! not kept (its reads stream from the database); it is tried again after [`TOO_BIG_RETRY`].

use crate::{Batch, ListBody, Op, Result, Row, RowEdit, Store, StoreError};
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

/// Records per rendered piece of a collection array (a piece that grew past twice this is split).
pub const PIECE: usize = 256;

/// List order: `created`, then id (as `ORDER BY created, id`; no `created` sorts first, as in SQLite).
type Key = (Option<Arc<str>>, Arc<str>);

/// The lowest key: the bound of the first piece.
fn lowest() -> Key {
    (None, Arc::from(""))
}

struct Entry {
    version: i64,
    /// The record's JSON: a slice of its rendered piece, or its own buffer if written since.
    data: Bytes,
}

struct Rows {
    entries: BTreeMap<Key, Entry>,
    /// id → created (the key's allocations are shared with `entries`)
    ids: HashMap<Arc<str>, Option<Arc<str>>>,
    bytes: usize,
    /// Counts changes, so a rendering knows whether it is still current.
    generation: u64,
    /// The collection array in pieces, by lower bound: each holds the records from its bound up to
    /// the next piece's, joined by commas; `None` after a write into it, until rendered again.
    pieces: BTreeMap<Key, Option<Bytes>>,
}

impl Default for Rows {
    fn default() -> Self {
        Rows {
            entries: BTreeMap::new(),
            ids: HashMap::new(),
            bytes: 0,
            generation: 0,
            pieces: BTreeMap::from([(lowest(), None)]),
        }
    }
}

/// The pieces of a collection to render again, taken under the read lock.
struct Plan {
    generation: u64,
    pieces: Vec<PlanPiece>,
}

enum PlanPiece {
    Ready(Bytes),
    /// A piece to render: its bound and its records.
    Render(Key, Vec<(Key, Bytes)>),
}

/// A rendered piece: bound, JSON, and its records' keys and lengths (to re-point them).
struct Rendered {
    bound: Key,
    json: Bytes,
    records: Vec<(Key, usize)>,
}

impl Rows {
    /// Marks the piece `key` falls in for rendering.
    fn touch(&mut self, key: &Key) {
        if let Some((_, piece)) = self.pieces.range_mut(..=key.clone()).next_back() {
            *piece = None;
        }
        self.generation += 1;
    }

    fn remove(&mut self, id: &str) -> Option<i64> {
        let (id, created) = self.ids.remove_entry(id)?;
        let key = (created, id);
        let entry = self.entries.remove(&key)?;
        self.bytes -= entry.data.len();
        self.touch(&key);
        Some(entry.version)
    }

    fn put(&mut self, id: &str, created: Option<&str>, version: i64, data: Bytes) {
        self.remove(id);
        let id: Arc<str> = Arc::from(id);
        let created: Option<Arc<str>> = created.map(Arc::from);
        self.bytes += data.len();
        self.ids.insert(id.clone(), created.clone());
        let key = (created, id);
        self.touch(&key);
        self.entries.insert(key, Entry { version, data });
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

    /// The collection array, if no piece waits to be rendered.
    fn parts(&self) -> Option<Vec<Bytes>> {
        let mut pieces = Vec::with_capacity(self.pieces.len());
        for piece in self.pieces.values() {
            pieces.push(piece.clone()?);
        }
        Some(array(pieces))
    }

    /// What to render: the marked pieces with their records (the others as they are).
    fn plan(&self) -> Plan {
        let mut pieces = Vec::with_capacity(self.pieces.len());
        let mut bounds = self.pieces.iter().peekable();
        while let Some((bound, piece)) = bounds.next() {
            match piece {
                Some(json) => pieces.push(PlanPiece::Ready(json.clone())),
                None => {
                    let records = match bounds.peek() {
                        Some((next, _)) => self.entries.range(bound.clone()..(*next).clone()),
                        None => self.entries.range(bound.clone()..),
                    }
                    .map(|(k, e)| (k.clone(), e.data.clone()))
                    .collect();
                    pieces.push(PlanPiece::Render(bound.clone(), records));
                }
            }
        }
        Plan {
            generation: self.generation,
            pieces,
        }
    }

    /// Installs the rendered pieces (if no write came in between) and re-points their records.
    fn install(&mut self, generation: u64, rendered: &[Rendered]) {
        if generation != self.generation {
            return;
        }
        for r in rendered {
            if r.records.is_empty() && r.bound != lowest() {
                self.pieces.remove(&r.bound);
                continue;
            }
            self.pieces.insert(r.bound.clone(), Some(r.json.clone()));
            let mut at = 0;
            for (key, len) in &r.records {
                if let Some(entry) = self.entries.get_mut(key) {
                    entry.data = r.json.slice(at..at + len);
                }
                at += len + 1;
            }
        }
    }
}

/// Renders the marked pieces of a plan (splitting those that grew too large); returns the
/// collection array and the new pieces.
fn render(plan: Plan) -> (Vec<Bytes>, Vec<Rendered>) {
    let mut all = Vec::with_capacity(plan.pieces.len());
    let mut rendered = Vec::new();
    for piece in plan.pieces {
        match piece {
            PlanPiece::Ready(json) => all.push(json),
            PlanPiece::Render(bound, records) => {
                let size = if records.len() > 2 * PIECE {
                    PIECE
                } else {
                    records.len().max(1)
                };
                let mut bound = Some(bound);
                for group in records.chunks(size) {
                    let len = group.iter().map(|(_, d)| d.len() + 1).sum();
                    let mut json = Vec::with_capacity(len);
                    for (i, (_, data)) in group.iter().enumerate() {
                        if i > 0 {
                            json.push(b',');
                        }
                        json.extend_from_slice(data);
                    }
                    let json = Bytes::from(json);
                    all.push(json.clone());
                    rendered.push(Rendered {
                        // The first group keeps the piece's bound; the others start at their first record.
                        bound: bound.take().unwrap_or_else(|| group[0].0.clone()),
                        json,
                        records: group.iter().map(|(k, d)| (k.clone(), d.len())).collect(),
                    });
                }
                if let Some(bound) = bound {
                    // No records left in this piece.
                    all.push(Bytes::new());
                    rendered.push(Rendered {
                        bound,
                        json: Bytes::new(),
                        records: Vec::new(),
                    });
                }
            }
        }
    }
    (array(all), rendered)
}

/// `[`, the non-empty pieces separated by commas, `]`.
fn array(pieces: Vec<Bytes>) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(pieces.len() * 2 + 1);
    out.push(Bytes::from_static(b"["));
    for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
        if out.len() > 1 {
            out.push(Bytes::from_static(b","));
        }
        out.push(piece);
    }
    out.push(Bytes::from_static(b"]"));
    out
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

    /// The collection array, its marked pieces rendered again. Readers of single records are not
    /// blocked while they are (only taking the plan and the re-pointing take locks).
    async fn parts(self: &Arc<Self>) -> Result<Vec<Bytes>> {
        if let Some(parts) = self.read().parts() {
            return Ok(parts);
        }
        let _one = self.render.lock().await;
        let plan = {
            let rows = self.read();
            if let Some(parts) = rows.parts() {
                return Ok(parts);
            }
            rows.plan()
        };
        let generation = plan.generation;
        let (parts, rendered) = tokio::task::spawn_blocking(move || render(plan))
            .await
            .map_err(|e| StoreError::Database(format!("rendering the collection: {e}")))?;
        self.write().install(generation, &rendered);
        Ok(parts)
    }
}

enum Slot {
    Loaded(Arc<TableState>),
    /// Larger than the budget (when checked): served by the database.
    TooBig(Instant),
}

pub struct Cached<S> {
    inner: S,
    tables: Arc<Mutex<HashMap<Table, Slot>>>,
    writer: Arc<tokio::sync::Mutex<()>>,
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

fn lock_tables(
    tables: &Mutex<HashMap<Table, Slot>>,
) -> std::sync::MutexGuard<'_, HashMap<Table, Slot>> {
    tables.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mirrors the outcome of a write into the loaded tables.
fn mirror(tables: &Mutex<HashMap<Table, Slot>>, ops: &[Op], result: &Result<()>, budget: usize) {
    for op in ops {
        let table = table_of(op);
        let slot = match lock_tables(tables).get(&table) {
            Some(Slot::Loaded(t)) => Some(t.clone()),
            Some(Slot::TooBig(_)) => None,
            None => continue,
        };
        match (result, slot) {
            (Ok(()), Some(t)) => {
                let mut rows = t.write();
                rows.apply(op);
                if rows.bytes > budget {
                    drop(rows);
                    lock_tables(tables).insert(table, Slot::TooBig(Instant::now()));
                }
            }
            // After a failed write, reload on next use rather than trust the mirror.
            (Err(e), _) if !matches!(e, StoreError::Conflict) => {
                lock_tables(tables).remove(&table);
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
            batch_open: AtomicBool::new(false),
            budget,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, HashMap<Table, Slot>> {
        lock_tables(&self.tables)
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
            // Render as the rows come (they come in list order, so mostly the last piece): the
            // rows' own buffers are freed as they go and the table is never held twice.
            if rows.entries.len() % (4 * PIECE) == 0 {
                let (_, rendered) = render(rows.plan());
                let generation = rows.generation;
                rows.install(generation, &rendered);
            }
        }
        let (_, rendered) = render(rows.plan());
        let generation = rows.generation;
        rows.install(generation, &rendered);
        Ok(Some(rows))
    }
}

#[async_trait]
impl<S: Store + Clone> Store for Cached<S> {
    fn stream(&self, table: Table) -> crate::RowStream {
        self.inner.stream(table)
    }

    async fn list_body(&self, table: Table) -> Result<ListBody> {
        match self.table(table).await? {
            Some(t) => Ok(ListBody::Parts(t.parts().await?)),
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
        let w = self.writer.clone().lock_owned().await;
        self.write(w, ops).await
    }

    async fn modify(&self, table: Table, id: &str, edit: &mut RowEdit<'_>) -> Result<bool> {
        // Every write of this store goes through the writer lock, so the row cannot change between
        // this read and the write below. (Loading the table takes the lock: load it first.)
        let cached = self.table(table).await?;
        let w = self.writer.clone().lock_owned().await;
        let cur = match cached {
            Some(t) => t.read().get(id),
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

    fn engine(&self) -> &'static str {
        self.inner.engine()
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
        let mut tables = lock_tables(&self.cache.tables);
        for t in &self.touched {
            tables.remove(t);
        }
        self.cache.batch_open.store(false, Ordering::Release);
    }
}
