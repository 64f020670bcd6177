//! `ims serve`: opens the data directory, the records store and the artifact store, and serves the
//! API until SIGTERM/SIGINT (in-flight requests finish).

use crate::config::{Config, LogFormat};
use anyhow::{Context, Result, bail};
use ims_artifacts::{ArtifactStore, Backend};
use ims_server::executor::RecordOnlyExecutor;
use ims_server::nodes::SshProber;
use ims_server::{AppState, router};
use ims_store::DynStore;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

pub fn init_logging(fmt: &LogFormat) {
    let filter = EnvFilter::try_from_env("IMS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match fmt {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Holds the data directory's lock: one process owns an embedded (SQLite) data directory.
pub struct DataDirLock(#[allow(dead_code)] Option<File>);

/// Opens the records store: SQLite in the data directory (locked against a second process) or
/// the configured PostgreSQL.
pub async fn open_store(cfg: &Config) -> Result<(DynStore, DataDirLock)> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let (url, lock) = match &cfg.database_url {
        Some(u) if !u.starts_with("sqlite://") => (u.clone(), DataDirLock(None)),
        other => {
            let url = other
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", cfg.data_dir.join("ims.db").display()));
            // The lock sits beside the database file, so two servers cannot share one SQLite
            // database whatever their data directories (the in-memory caches would diverge).
            let db = std::path::PathBuf::from(url.trim_start_matches("sqlite://"));
            let lock_path = db.with_file_name(format!(
                "{}.lock",
                db.file_name().and_then(|n| n.to_str()).unwrap_or("ims.db")
            ));
            if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let f = File::create(&lock_path)
                .with_context(|| format!("cannot create {}", lock_path.display()))?;
            if f.try_lock().is_err() {
                bail!(
                    "the SQLite database {} is in use by another ims process (SQLite allows one server; use PostgreSQL for several)",
                    db.display()
                );
            }
            (url, DataDirLock(Some(f)))
        }
    };
    let store = ims_store::open(&url)
        .await
        .with_context(|| format!("cannot open the records store ({})", redact(&url)))?;
    Ok((store, lock))
}

/// Hides a password in a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// How long in-flight requests may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> Result<()> {
    let (store, _lock) = open_store(&cfg).await?;
    let backend = match &cfg.s3 {
        Some(s3) => Backend::S3(s3.clone()),
        None => Backend::Local {
            root: cfg.data_dir.join("artifacts"),
        },
    };
    let artifacts = Arc::new(ArtifactStore::new(backend));
    if cfg.s3.is_none() {
        artifacts
            .ensure_buckets(&[&cfg.service.ims_bucket, &cfg.service.boot_images_bucket])
            .context("cannot create the artifact directories")?;
    }
    let state = AppState {
        store: store.clone(),
        artifacts,
        cfg: Arc::new(cfg.service.clone()),
        executor: Arc::new(RecordOnlyExecutor),
        prober: Arc::new(SshProber {
            key: cfg.node_ssh_key.clone(),
            timeout: Duration::from_secs(10),
        }),
        sts: cfg.s3.as_ref().map(|s3| {
            Arc::new(ims_server::sts::StaticIssuer {
                access_key: s3.access_key.clone(),
                secret_key: s3.secret_key.clone(),
                endpoint_url: s3.endpoint.clone(),
                ttl: Duration::from_secs(3600),
            }) as Arc<dyn ims_server::sts::StsIssuer>
        }),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "listening on http://{addr} (data dir {}, records: {}, artifacts: {})",
        cfg.data_dir.display(),
        store.backend(),
        if cfg.s3.is_some() { "s3" } else { "local" }
    );
    // On SIGTERM/SIGINT stop accepting and let in-flight requests finish, but only for
    // SHUTDOWN_GRACE: a stalled client must not keep the process alive.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stopping_tx.send(());
    });
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r.context("server error")?,
        _ = deadline => tracing::warn!(
            "requests still in flight after {} s; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
