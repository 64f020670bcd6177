//! The two SQL implementations of [`Store`]. They share one body of SQL through `sql_store!`.

use crate::{Batch, NewRow, Op, Result, Row, RowEdit, RowStream, Store, StoreError};
use async_trait::async_trait;
use futures::{SinkExt as _, StreamExt as _};
use ims_core::Table;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The embedded default: one SQLite file in WAL mode with durable (`synchronous=FULL`) commits.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .pragma("cache_size", "-2000")
            // Deleted content is overwritten with zeros, not left in free pages: a purged record
            // (a key pasted by mistake) cannot be read back from the database file.
            .pragma("secure_delete", "ON")
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrations: {e}")))?;
        Ok(SqliteStore { pool })
    }
}

/// PostgreSQL, for several `ims serve` replicas sharing one database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self> {
        // One direct connection first: an unreachable or misconfigured server is reported with its
        // real cause (refused, authentication…) within seconds, not as a pool time-out.
        let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
        match tokio::time::timeout(
            Duration::from_secs(10),
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
        )
        .await
        {
            Err(_) => {
                return Err(StoreError::Database(
                    "PostgreSQL did not answer within 10 s".into(),
                ));
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrations: {e}")))?;
        Ok(PgStore { pool })
    }
}

/// What the readiness probe writes: 64 KiB that neither SQLite nor PostgreSQL's TOAST compression
/// shrinks (hex of pseudo-random bytes), so a disk too full for an ordinary record write is too full
/// for the probe too.
fn probe_pad() -> String {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    let mut pad = String::with_capacity(64 * 1024);
    while pad.len() < 64 * 1024 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pad.push_str(&format!("{x:016x}"));
    }
    pad
}

fn expect_one(affected: u64) -> Result<()> {
    if affected == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict)
    }
}

/// A transaction of either backend, taking its changes batch by batch, on a pooled connection of
/// its own.
///
/// A connection goes back to the pool only when its transaction ended cleanly (committed, or a
/// conflict rolled back). After any other error, or when the batch is dropped unfinished (a
/// cancelled request), the connection is closed instead: a failed COMMIT (a full disk, an I/O
/// error) can leave it inside the transaction, and a pooled connection with an open transaction
/// would turn later writes into parts of a transaction that never commits while their requests
/// are acknowledged (and keep SQLite's write lock). A new connection starts clean, so service
/// resumes by itself once the cause is gone.
pub(crate) struct SqlBatch<DB: sqlx::Database> {
    conn: sqlx::pool::PoolConnection<DB>,
    /// The transaction ended cleanly: the connection may be reused.
    clean: bool,
}

impl<DB: sqlx::Database> Drop for SqlBatch<DB> {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

/// Logs why a connection is discarded (conflicts are ordinary and rolled back, not logged).
fn discarding(e: &StoreError) {
    if !matches!(e, StoreError::Conflict) {
        tracing::warn!(error = %e, "records store: discarding the database connection after an error");
    }
}

/// Rows sent ahead of the reader of a [`RowStream`].
const STREAM_AHEAD: usize = 256;

macro_rules! sql_store {
    ($store:ident, $db:ty, $engine:literal, $begin:literal, $lock:literal) => {
        impl $store {
            /// A transaction on a connection of its own (`$begin`: SQLite takes the write lock
            /// at once).
            async fn begin_sql(&self) -> Result<SqlBatch<$db>> {
                let mut conn = self.pool.acquire().await?;
                match sqlx::query($begin).execute(&mut *conn).await {
                    Ok(_) => Ok(SqlBatch { conn, clean: false }),
                    Err(e) => {
                        let e = StoreError::from(e);
                        discarding(&e);
                        conn.close_on_drop();
                        Err(e)
                    }
                }
            }
        }

        impl SqlBatch<$db> {
            /// Ends the transaction; the connection is reused only if COMMIT succeeded.
            async fn finish(mut self) -> Result<()> {
                match sqlx::query("COMMIT").execute(&mut *self.conn).await {
                    Ok(_) => {
                        self.clean = true;
                        Ok(())
                    }
                    Err(e) => {
                        let e = StoreError::from(e);
                        discarding(&e);
                        Err(e)
                    }
                }
            }

            /// After a failed statement: a conflict is rolled back and the connection kept;
            /// anything else leaves it to be discarded.
            async fn failed(&mut self, e: StoreError) -> StoreError {
                if matches!(e, StoreError::Conflict)
                    && sqlx::query("ROLLBACK").execute(&mut *self.conn).await.is_ok()
                {
                    self.clean = true;
                } else {
                    discarding(&e);
                }
                e
            }
        }

        #[async_trait]
        impl Store for $store {
            fn stream(&self, table: Table) -> RowStream {
                // A task reads the rows with its own pooled connection and hands them over as they
                // arrive; it stops when the reader goes away.
                let pool = self.pool.clone();
                let (mut tx, rx) = futures::channel::mpsc::channel(STREAM_AHEAD);
                tokio::spawn(async move {
                    let sql = format!(
                        "SELECT id, version, created, data FROM {} ORDER BY created, id",
                        table.name()
                    );
                    let mut rows =
                        sqlx::query_as::<_, (String, i64, Option<String>, String)>(&sql).fetch(&pool);
                    while let Some(r) = rows.next().await {
                        let item = r
                            .map(|(id, version, created, data)| Row { id, version, created, data })
                            .map_err(StoreError::from);
                        let failed = item.is_err();
                        if tx.send(item).await.is_err() || failed {
                            break;
                        }
                    }
                });
                rx.boxed()
            }

            async fn get(&self, table: Table, id: &str) -> Result<Option<Row>> {
                let sql = format!(
                    "SELECT id, version, created, data FROM {} WHERE id = $1",
                    table.name()
                );
                let row: Option<(String, i64, Option<String>, String)> = sqlx::query_as(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|(id, version, created, data)| Row { id, version, created, data }))
            }

            async fn link_in_use(
                &self,
                table: Table,
                path: &str,
                except_id: Option<&str>,
            ) -> Result<bool> {
                let sql = format!(
                    "SELECT COUNT(*) FROM {} WHERE link_path = $1 AND id <> $2",
                    table.name()
                );
                let (n,): (i64,) = sqlx::query_as(&sql)
                    .bind(path)
                    .bind(except_id.unwrap_or(""))
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n > 0)
            }

            async fn begin(&self) -> Result<Box<dyn Batch + '_>> {
                Ok(Box::new(self.begin_sql().await?))
            }

            async fn modify(
                &self,
                table: Table,
                id: &str,
                edit: &mut RowEdit<'_>,
            ) -> Result<bool> {
                let mut b = self.begin_sql().await?;
                let sql = format!(
                    "SELECT id, version, created, data FROM {} WHERE id = $1{}",
                    table.name(),
                    $lock
                );
                let row: Option<(String, i64, Option<String>, String)> =
                    match sqlx::query_as(&sql).bind(id).fetch_optional(&mut *b.conn).await {
                        Ok(r) => r,
                        Err(e) => return Err(b.failed(e.into()).await),
                    };
                let found = match row {
                    None => false,
                    Some((id, version, created, data)) => {
                        let row = Row { id, version, created, data };
                        if let Some(new) = edit(&row) {
                            b.apply(vec![Op::Update { table, version, row: new }]).await?;
                        }
                        true
                    }
                };
                b.finish().await?;
                Ok(found)
            }

            async fn ready(&self) -> Result<()> {
                let mut b = self.begin_sql().await?;
                let probe = sqlx::query(
                    "INSERT INTO write_probe (id, at, pad) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at, pad = excluded.pad",
                )
                .bind(ims_core::Timestamp::now().to_wire())
                .bind(probe_pad())
                .execute(&mut *b.conn)
                .await;
                if let Err(e) = probe {
                    return Err(b.failed(e.into()).await);
                }
                b.finish().await
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn engine(&self) -> &'static str {
                $engine
            }

            async fn close(&self) {
                self.pool.close().await;
            }
        }

        #[async_trait]
        impl Batch for SqlBatch<$db> {
            async fn apply(&mut self, ops: Vec<Op>) -> Result<()> {
                match self.apply_ops(ops).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.failed(e).await),
                }
            }

            async fn commit(self: Box<Self>) -> Result<()> {
                (*self).finish().await
            }
        }

        impl SqlBatch<$db> {
            async fn apply_ops(&mut self, ops: Vec<Op>) -> Result<()> {
                for op in ops {
                    match op {
                        Op::Insert(table, r) => {
                            let sql = format!(
                                "INSERT INTO {} (id, version, created, link_path, status, job_type, data) \
                                 VALUES ($1, 1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                                table.name()
                            );
                            let n = bind_row(sqlx::query(&sql), r)
                                .execute(&mut *self.conn)
                                .await?
                                .rows_affected();
                            expect_one(n)?;
                        }
                        Op::Upsert(table, r) => {
                            let sql = format!(
                                "INSERT INTO {t} (id, version, created, link_path, status, job_type, data) \
                                 VALUES ($1, 1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET \
                                 version = {t}.version + 1, created = excluded.created, \
                                 link_path = excluded.link_path, status = excluded.status, \
                                 job_type = excluded.job_type, data = excluded.data",
                                t = table.name()
                            );
                            bind_row(sqlx::query(&sql), r).execute(&mut *self.conn).await?;
                        }
                        Op::Update {
                            table,
                            version,
                            row,
                        } => {
                            let sql = format!(
                                "UPDATE {} SET version = version + 1, created = $2, link_path = $3, \
                                 status = $4, job_type = $5, data = $6 WHERE id = $1 AND version = $7",
                                table.name()
                            );
                            let n = bind_row(sqlx::query(&sql), row)
                                .bind(version)
                                .execute(&mut *self.conn)
                                .await?
                                .rows_affected();
                            expect_one(n)?;
                        }
                        Op::Delete { table, id, version } => {
                            let n = match version {
                                Some(v) => {
                                    let sql = format!(
                                        "DELETE FROM {} WHERE id = $1 AND version = $2",
                                        table.name()
                                    );
                                    sqlx::query(&sql).bind(id).bind(v).execute(&mut *self.conn).await?
                                }
                                None => {
                                    let sql = format!("DELETE FROM {} WHERE id = $1", table.name());
                                    sqlx::query(&sql).bind(id).execute(&mut *self.conn).await?
                                }
                            }
                            .rows_affected();
                            expect_one(n)?;
                        }
                        Op::DeleteAll(table) => {
                            let sql = format!("DELETE FROM {}", table.name());
                            sqlx::query(&sql).execute(&mut *self.conn).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    };
}

fn bind_row<'q, DB>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    r: NewRow,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(r.id)
        .bind(r.created)
        .bind(r.link_path)
        .bind(r.status)
        .bind(r.job_type)
        .bind(r.data)
}

// SQLite: writers take the write lock when they begin (no deferred upgrade that can fail busy), so
// a read inside `modify` sees the last commit and no other writer until its own commit.
sql_store!(SqliteStore, sqlx::Sqlite, "sqlite", "BEGIN IMMEDIATE", "");
// PostgreSQL: `modify` locks the row (`FOR UPDATE`) until its commit, also against other replicas.
sql_store!(PgStore, sqlx::Postgres, "postgres", "BEGIN", " FOR UPDATE");
