//! A read cache for a store that one process owns (the embedded SQLite store: its data directory is
//! locked against a second process). Collection reads (`list_json`) are kept in memory until a write
//! touches their table; writes are serialised in-process, so they queue in order instead of spinning
//! on SQLite's busy handler.

use crate::{Op, Result, Row, Store};
use async_trait::async_trait;
use ims_core::Table;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One table's cached collection: the generation (bumped by every write) and the array, if any.
#[derive(Clone, Default)]
struct Entry {
    generation: u64,
    body: Option<Arc<str>>,
}

pub struct Cached<S> {
    inner: S,
    lists: Mutex<HashMap<Table, Entry>>,
    writer: tokio::sync::Mutex<()>,
}

impl<S: Store> Cached<S> {
    pub fn new(inner: S) -> Self {
        Cached {
            inner,
            lists: Mutex::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn entry(&self, table: Table) -> Entry {
        let lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        lists.get(&table).cloned().unwrap_or_default()
    }

    fn invalidate(&self, tables: impl IntoIterator<Item = Table>) {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        for t in tables {
            let e = lists.entry(t).or_default();
            e.generation += 1;
            e.body = None;
        }
    }
}

fn table_of(op: &Op) -> Table {
    match op {
        Op::Insert(t, _) | Op::Upsert(t, _) | Op::DeleteAll(t) => *t,
        Op::Update { table, .. } | Op::Delete { table, .. } => *table,
    }
}

#[async_trait]
impl<S: Store> Store for Cached<S> {
    async fn list(&self, table: Table) -> Result<Vec<Row>> {
        self.inner.list(table).await
    }

    async fn list_json(&self, table: Table) -> Result<Arc<str>> {
        let Entry { generation, body } = self.entry(table);
        if let Some(body) = body {
            return Ok(body);
        }
        let body = self.inner.list_json(table).await?;
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let e = lists.entry(table).or_default();
        // Keep it only if no write happened while it was read.
        if e.generation == generation {
            e.body = Some(body.clone());
        }
        Ok(body)
    }

    async fn get(&self, table: Table, id: &str) -> Result<Option<Row>> {
        self.inner.get(table, id).await
    }

    async fn link_in_use(&self, table: Table, path: &str, except_id: Option<&str>) -> Result<bool> {
        self.inner.link_in_use(table, path, except_id).await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let tables: Vec<Table> = ops.iter().map(table_of).collect();
        let _w = self.writer.lock().await;
        // Invalidate before and after: a list read that overlaps the write is never kept.
        self.invalidate(tables.iter().copied());
        let r = self.inner.apply(ops).await;
        self.invalidate(tables);
        r
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
