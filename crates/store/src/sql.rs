//! The two SQL implementations of [`Store`]. They share one body of SQL through `sql_store!`.

use crate::{Batch, NewRow, Op, Result, Row, RowStream, Store, StoreError};
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

fn expect_one(affected: u64) -> Result<()> {
    if affected == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict)
    }
}

/// A transaction of either backend, taking its changes batch by batch.
pub(crate) struct SqlBatch<DB: sqlx::Database>(sqlx::Transaction<'static, DB>);

/// Rows sent ahead of the reader of a [`RowStream`].
const STREAM_AHEAD: usize = 256;

macro_rules! sql_store {
    ($store:ident, $db:ty, $backend:literal) => {
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
                Ok(Box::new(SqlBatch(self.pool.begin().await?)))
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn backend(&self) -> &'static str {
                $backend
            }

            async fn close(&self) {
                self.pool.close().await;
            }
        }

        #[async_trait]
        impl Batch for SqlBatch<$db> {
            async fn apply(&mut self, ops: Vec<Op>) -> Result<()> {
                for op in ops {
                    match op {
                        Op::Insert(table, r) => {
                            let sql = format!(
                                "INSERT INTO {} (id, version, created, link_path, status, job_type, data) \
                                 VALUES ($1, 1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                                table.name()
                            );
                            let n = bind_row(sqlx::query(&sql), r)
                                .execute(&mut *self.0)
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
                            bind_row(sqlx::query(&sql), r).execute(&mut *self.0).await?;
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
                                .execute(&mut *self.0)
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
                                    sqlx::query(&sql).bind(id).bind(v).execute(&mut *self.0).await?
                                }
                                None => {
                                    let sql = format!("DELETE FROM {} WHERE id = $1", table.name());
                                    sqlx::query(&sql).bind(id).execute(&mut *self.0).await?
                                }
                            }
                            .rows_affected();
                            expect_one(n)?;
                        }
                        Op::DeleteAll(table) => {
                            let sql = format!("DELETE FROM {}", table.name());
                            sqlx::query(&sql).execute(&mut *self.0).await?;
                        }
                    }
                }
                Ok(())
            }

            async fn commit(self: Box<Self>) -> Result<()> {
                self.0.commit().await?;
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

sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");
sql_store!(PgStore, sqlx::Postgres, "postgres");
