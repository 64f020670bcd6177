//! Test helpers: a fresh database of each backend.
//!
//! PostgreSQL tests need a server: set `IMS_TEST_POSTGRES_URL` to an admin URL (the test script
//! `scripts/test.sh` starts a throw-away cluster and sets it). Each call creates a new database.
//! Without the variable the PostgreSQL tests fail, unless `IMS_TEST_SKIP_POSTGRES=1` says to skip them.

use sqlx::Connection;

/// A database URL for a fresh SQLite file and the directory that holds it.
pub fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ims.db").display());
    (dir, url)
}

/// Whether PostgreSQL tests are explicitly skipped.
pub fn skip_postgres() -> bool {
    std::env::var("IMS_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1")
}

/// Creates a fresh PostgreSQL database and returns its URL. Panics when no server is configured.
pub async fn postgres_url() -> String {
    let admin = std::env::var("IMS_TEST_POSTGRES_URL").expect(
        "IMS_TEST_POSTGRES_URL is not set: run the test suite with scripts/test.sh \
         (or set IMS_TEST_SKIP_POSTGRES=1 to skip PostgreSQL tests)",
    );
    let name = format!("ims_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to IMS_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(i) if admin[..i].contains("//") && i > admin.find("//").unwrap_or(0) + 1 => {
            let (base, rest) = admin.split_at(i);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}/{name}{query}")
        }
        _ => format!("{}/{name}", admin.trim_end_matches('/')),
    }
}
