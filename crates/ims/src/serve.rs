//! `ims serve`: opens the data directory, the records store and the artifact store, and serves the
//! API until SIGTERM/SIGINT (in-flight requests finish).

use crate::config::{Config, ExecutorKind, LogFormat};
use anyhow::{Context, Result, bail};
use ims_artifacts::{ArtifactStore, Storage};
use ims_server::executor::remote::fleet::{Fleet, FleetSettings};
use ims_server::executor::remote::ssh::SshSettings;
use ims_server::executor::remote::{Remote, RemoteExecutor, RemoteSettings};
use ims_server::executor::{LocalExecutor, LocalSettings, RecordOnlyExecutor};
use ims_server::service::leases::{self, Leadership};
use ims_server::sts::{StaticIssuer, StsCredentials, StsIssuer};
use ims_server::{AppParts, AppState, router};
use ims_store::DynStore;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

pub fn init_logging(fmt: &LogFormat) {
    let filter = EnvFilter::try_from_env(crate::settings::LOG.spec.env[0])
        // s3s logs every S3 error answer (a HEAD of a missing object too) at ERROR under `s3s::ops`.
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn,s3s::ops=off"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (`ims serve 2>&1 | head`) loses log lines, never the process: the
        // subscriber would otherwise report the failed write with `eprintln!`, which panics.
        .log_internal_errors(false)
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
            // The lock follows the real file: an `ims.db` that is a symbolic link to another
            // data directory's database shares that database's lock.
            let db = real_path(std::path::Path::new(url.trim_start_matches("sqlite://")));
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

/// `path` with every symbolic link resolved (of the file itself when it exists, else of its
/// directory); as given when neither can be resolved yet.
fn real_path(path: &std::path::Path) -> std::path::PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir).map_or_else(|_| path.to_path_buf(), |d| d.join(name))
        }
        _ => path.to_path_buf(),
    }
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

pub async fn run(cfg: Config) -> Result<()> {
    if let Some(why) = cfg.exposure_problem() {
        bail!(why);
    }
    if cfg.open_to_the_network() {
        tracing::warn!(
            "INSECURE: the API on {} has no authentication (--insecure-open-api): anyone who \
             reaches it can start root jobs and get S3 credentials",
            cfg.listen
        );
    }
    let (store, _lock) = open_store(&cfg).await?;
    let limits = connection_limits(&cfg);
    let storage = match &cfg.s3 {
        Some(s3) => Storage::S3(s3.clone()),
        None => Storage::Local {
            root: cfg.data_dir.join("artifacts"),
        },
    };
    let artifacts = ArtifactStore::new(storage);
    match &cfg.s3 {
        None => artifacts
            .ensure_buckets(&[&cfg.service.ims_bucket, &cfg.service.boot_images_bucket])
            .context("cannot create the artifact directories")?,
        Some(s3) => check_s3_keys(&artifacts, s3, &cfg.service.ims_bucket).await?,
    }
    // Embedded mode: the built-in S3 endpoint serves the artifact root; STS hands out temporary
    // credentials for it. With an external S3, STS hands out the configured keys and endpoint.
    let (stop_s3, stop_s3_rx) = tokio::sync::oneshot::channel::<()>();
    let (sts, s3_task, s3_meta): (Arc<dyn StsIssuer>, _, _) = match &cfg.s3 {
        Some(s3) => (
            Arc::new(StaticIssuer {
                access_key: s3.access_key.clone(),
                secret_key: s3.secret_key.clone(),
                endpoint_url: s3.endpoint.clone(),
                ttl: STS_TTL,
            }),
            None,
            None,
        ),
        None => {
            let cred_path = cfg.s3_credentials_path();
            let creds = Arc::new(
                ims_s3::CredentialStore::open(&cred_path)
                    .with_context(|| format!("cannot open {}", cred_path.display()))?,
            );
            let (svc, meta) = ims_s3::service_with_metadata(
                ims_s3::S3Config {
                    root: cfg.data_dir.join("artifacts"),
                    state_dir: cfg.data_dir.join("s3-state"),
                },
                creds.clone(),
            )
            .context("cannot start the built-in S3 endpoint")?;
            let listener = ims_http::bind(cfg.s3_listen)
                .with_context(|| format!("cannot listen on {} (S3 endpoint)", cfg.s3_listen))?;
            let addr = listener.local_addr()?;
            // On this host (`ims s3-credentials`, the log) the endpoint is reachable on loopback
            // when it listens on every address; API clients get the host they used (STS).
            let local_host = if addr.ip().is_unspecified() {
                Some(if addr.is_ipv4() { "127.0.0.1" } else { "[::1]" })
            } else {
                None
            };
            let url = ims_server::sts::advertised_endpoint(
                cfg.s3_public_url.as_deref(),
                addr,
                local_host,
            );
            tracing::info!(
                "S3 endpoint at {url} (access key {}; credentials in {}, shown by `ims s3-credentials`)",
                creds.root().access_key,
                cred_path.display()
            );
            // For `ims s3-credentials`: the URL as advertised, whatever flags gave the address.
            crate::config::write_s3_endpoint(&cfg.data_dir, &url).with_context(|| {
                format!(
                    "cannot record the S3 endpoint URL in {}",
                    cfg.data_dir.display()
                )
            })?;
            let task = tokio::spawn(ims_s3::serve(listener, svc, limits, async move {
                let _ = stop_s3_rx.await;
            }));
            (
                Arc::new(EmbeddedIssuer {
                    creds,
                    public_url: cfg.s3_public_url.clone(),
                    listen: addr,
                }),
                Some(task),
                Some(meta),
            )
        }
    };
    // The endpoint's per-object metadata (md5sum, content type, ETag) follows the objects the
    // records service moves (soft delete, undelete) and goes with those it deletes.
    let artifacts = Arc::new(match s3_meta {
        Some(meta) => artifacts.with_events(Arc::new(S3MetadataEvents(meta))),
        None => artifacts,
    });
    let listener =
        ims_http::bind(cfg.listen).with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let api_url = agent_api_url(&cfg, addr);
    let fleet = Arc::new(fleet(&cfg, &api_url)?);
    let Executors {
        executor,
        remote,
        kubernetes,
    } = executor(&cfg, &api_url, &fleet).await?;
    let state = AppState::new(AppParts {
        store: store.clone(),
        artifacts,
        cfg: Arc::new(cfg.service.clone()),
        executor,
        prober: fleet.clone(),
        sts: Some(sts),
        admin_token: cfg.api_token.as_deref().map(Arc::from),
        job_tokens: ims_server::auth::JobTokens::load_or_create(&cfg.job_token_key_file)
            .with_context(|| {
                format!(
                    "cannot use the job-token key {}",
                    cfg.job_token_key_file.display()
                )
            })?,
        started: ims_core::Timestamp::now(),
    });
    // Jobs whose agents outlived a previous server are taken over (or failed); then the
    // reconciler fails jobs whose agents fall silent or whose users never finish.
    state
        .executor
        .recover(&ims_server::service::job_runs::executor_context(&state))
        .await;
    // Artifact work that record changes committed before a crash still owe (moves, deletes) is
    // done before serving; the embedded SQLite store belongs to this process alone, so all of it.
    let exclusive = store.engine() == "sqlite";
    let done = ims_server::service::journal::recover(&state, exclusive).await;
    if done > 0 {
        tracing::info!("completed the artifact work of {done} interrupted record changes");
    }
    // Then work whose owner stopped (another replica died, a move failed) is taken over. In
    // every replica: each row has a lease of its own, so this is safe anywhere, and artifact work
    // does not wait for the leader (one with a broken S3 connection would hold it up).
    let sweeper = {
        let st = state.clone();
        let every =
            (st.cfg.artifact_lease / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                ims_server::service::journal::sweep(&st).await;
            }
        })
    };
    // Replicas sharing PostgreSQL elect one to run the background work below (with SQLite this
    // process is the only one, and leads).
    let leader = Leadership::spawn(&state, leases::BACKGROUND);
    // Jobs waiting for a node slot are placed, and the nodes cleaned, by the remote executor's
    // passes.
    let node_passes = remote.as_ref().map(|r| {
        r.spawn_passes(
            ims_server::service::job_runs::executor_context(&state),
            leader.clone(),
        )
    });
    // Job pods and Services are watched (and objects of ended jobs cleaned up) by the Kubernetes
    // executor's supervisor, on the leader too.
    let supervisor = kubernetes.as_ref().map(|k| {
        k.supervise(
            ims_server::service::job_runs::executor_context(&state),
            leader.watch(),
        )
    });
    // The reconciler only reads records and ends jobs through the store, so one replica serves
    // all; agents stay supervised by the replica that started them (their exit fails their job,
    // and that replica stops those whose job was ended elsewhere: see the local executor).
    let reconciler = {
        let (st, leader) = (state.clone(), leader.clone());
        let every = (st.cfg.job_heartbeat_timeout / 3)
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if leader.is_leader() {
                    ims_server::service::job_runs::reconcile(&st).await;
                }
            }
        })
    };
    tracing::info!(
        "listening on http://{addr} (data dir {}, records: {}, artifacts: {})",
        cfg.data_dir.display(),
        store.engine(),
        if cfg.s3.is_some() { "s3" } else { "local" }
    );
    // On SIGTERM/SIGINT stop accepting and let in-flight requests finish, but only for
    // ims_http::SHUTDOWN_GRACE: a stalled client must not keep the process alive.
    let service = ims_http::TowerToHyperService::new(router(state));
    let releasing = leader.clone();
    ims_http::serve(listener, service, limits, "API", async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        // A rolling restart hands the background work over at once, while requests drain.
        releasing.release().await;
    })
    .await
    .context("server error")?;
    reconciler.abort();
    sweeper.abort();
    if let Some(p) = node_passes {
        p.abort();
    }
    if let Some(s) = supervisor {
        s.abort();
    }
    let _ = stop_s3.send(());
    if let Some(task) = s3_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "S3 endpoint stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "S3 endpoint task failed"),
            Ok(Ok(())) => {}
        }
    }
    store.close().await;
    Ok(())
}

/// The connection rules of both listeners. The soft open-file limit is raised to the hard one
/// first; the default connection limit is derived from it.
fn connection_limits(cfg: &Config) -> ims_http::Limits {
    let nofile = match ims_http::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    };
    let max_connections = cfg
        .http
        .max_connections
        .unwrap_or_else(|| ims_http::default_max_connections(nofile));
    // Two listeners, and an S3 connection may hold a file open besides its socket.
    if (max_connections as u64).saturating_mul(4) + ims_http::RESERVED_FDS > nofile {
        tracing::warn!(
            "IMS_HTTP_MAX_CONNECTIONS {max_connections} per listener may exhaust the open-file \
             limit ({nofile}); raise `ulimit -n` (LimitNOFILE=) or lower the setting"
        );
    }
    tracing::info!(
        "connections: at most {max_connections} per listener, request head within {} s, closed \
         after {} s without a request (open-file limit {nofile})",
        cfg.http.header_timeout.as_secs(),
        cfg.http.idle_timeout.as_secs()
    );
    ims_http::Limits {
        header_timeout: cfg.http.header_timeout,
        idle_timeout: cfg.http.idle_timeout,
        max_connections,
    }
}

/// The API URL job agents use: `IMS_AGENT_API_URL`, else the listen address (loopback when it
/// listens on every address).
fn agent_api_url(cfg: &Config, addr: std::net::SocketAddr) -> String {
    cfg.agent_api_url.clone().unwrap_or_else(|| {
        let ip = if addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
    })
}

/// Whether a URL names this host's loopback (unreachable from a remote build node or a pod).
fn loopback_url(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// The remote build nodes as the server uses them.
fn fleet(cfg: &Config, api_url: &str) -> anyhow::Result<Fleet> {
    let n = &cfg.nodes;
    // The file this process runs, even if an upgrade replaced the binary on disk since.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let own = |arch: ims_core::Arch| (arch.as_str() == std::env::consts::ARCH).then(|| exe.clone());
    let binaries = [
        (
            ims_core::Arch::X86_64,
            n.agent_x86_64
                .clone()
                .or_else(|| own(ims_core::Arch::X86_64)),
        ),
        (
            ims_core::Arch::Aarch64,
            n.agent_aarch64
                .clone()
                .or_else(|| own(ims_core::Arch::Aarch64)),
        ),
    ]
    .into_iter()
    .filter_map(|(a, p)| Some((a, p?)))
    .collect();
    // Agents on nodes reach the API and S3 over the network: a loopback URL cannot work.
    let s3_url = match &cfg.s3 {
        Some(s3) => Some(s3.endpoint.clone()),
        None => cfg.s3_public_url.clone().or_else(|| {
            cfg.s3_listen
                .ip()
                .is_loopback()
                .then(|| format!("http://{}", cfg.s3_listen))
        }),
    };
    let unreachable_server = if loopback_url(api_url) {
        Some(format!(
            "the API URL agents are given ({api_url}) is a loopback address that nodes cannot reach: set IMS_AGENT_API_URL (and listen on an address the nodes reach)"
        ))
    } else {
        s3_url.filter(|u| loopback_url(u)).map(|u| {
            format!(
                "the S3 endpoint agents are given ({u}) is a loopback address that nodes cannot reach: set IMS_S3_PUBLIC_URL (and IMS_S3_LISTEN)"
            )
        })
    };
    if let (Some(why), Some(_)) = (&unreachable_server, &n.ssh_key) {
        tracing::warn!("remote build nodes: {why}; no job is placed on a node");
    }
    Ok(Fleet::new(FleetSettings {
        ssh: SshSettings {
            key: n.ssh_key.clone(),
            known_hosts: n.known_hosts.clone(),
            state_dir: cfg.data_dir.join("remote-nodes"),
            addresses: n.addresses.iter().cloned().collect(),
            connect_timeout: n.timeout,
        },
        base: n.dir.clone(),
        binaries,
        probe_timeout: n.timeout * 3,
        install_timeout: Duration::from_secs(600),
        unreachable_server,
    }))
}

/// The configured job executor (and, for `local` and `kubernetes`, the remote-node executor
/// wrapping it, whose passes must run; and the Kubernetes executor, whose supervisor must run).
struct Executors {
    executor: Arc<dyn ims_server::executor::JobExecutor>,
    remote: Option<Arc<Remote>>,
    kubernetes: Option<Arc<ims_kubernetes::KubernetesExecutor>>,
}

async fn executor(cfg: &Config, api_url: &str, fleet: &Arc<Fleet>) -> anyhow::Result<Executors> {
    let stop_grace = Duration::from_secs(10);
    let (home, kubernetes): (Arc<dyn ims_server::executor::JobExecutor>, _) = match cfg.executor {
        ExecutorKind::None => {
            return Ok(Executors {
                executor: Arc::new(RecordOnlyExecutor),
                remote: None,
                kubernetes: None,
            });
        }
        ExecutorKind::Local => (Arc::new(local_executor(cfg, api_url, stop_grace)?), None),
        ExecutorKind::Kubernetes => {
            let k = Arc::new(kubernetes_executor(cfg, api_url).await?);
            (Arc::new(ims_kubernetes::executor::Kube(k.clone())), Some(k))
        }
    };
    let remote = Remote::new(
        home,
        fleet.clone(),
        RemoteSettings {
            api_url: api_url.to_string(),
            agent: cfg.agent.clone(),
            placement_timeout: cfg.nodes.placement_timeout,
            stop_grace,
        },
    );
    Ok(Executors {
        executor: Arc::new(RemoteExecutor(remote.clone())),
        remote: Some(remote),
        kubernetes,
    })
}

/// The `kubernetes` executor: a client for the cluster (checked now: a server that cannot reach
/// its cluster says so at start-up) and the objects' settings.
async fn kubernetes_executor(
    cfg: &Config,
    api_url: &str,
) -> anyhow::Result<ims_kubernetes::KubernetesExecutor> {
    let kc = &cfg.kubernetes;
    let clients = ims_kubernetes::connect(kc.kubeconfig.as_deref(), kc.request_timeout)
        .await
        .map_err(anyhow::Error::msg)?;
    let ns = cfg.service.job_namespace.as_str();
    if loopback_url(api_url) {
        tracing::warn!(
            "kubernetes executor: job pods are told to reach the API at {api_url}, a loopback address: set IMS_AGENT_API_URL to the server's Service URL"
        );
    }
    let ca_cert = match &cfg.agent.ca_cert {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the site CA {}", p.display()))?,
        ),
        None => None,
    };
    let k = ims_kubernetes::KubernetesExecutor::new(
        clients,
        ns,
        ims_kubernetes::KubeSettings {
            image: kc
                .image
                .clone()
                .context("IMS_KUBERNETES_IMAGE is not set")?,
            api_url: api_url.to_string(),
            agent: cfg.agent.clone(),
            ca_cert,
            service_type: kc.service_type,
            service_annotations: kc.service_annotations.clone(),
            address_pool: kc.address_pool.clone(),
            storage_class: kc.storage_class.clone(),
            scratch: kc.scratch,
            runtime_class: kc.runtime_class.clone(),
            service_account: kc.service_account.clone(),
            active_deadline: cfg.service.job_user_deadline + ims_kubernetes::objects::BUILD_BUDGET,
            ttl_after_finished: kc.ttl_after_finished,
            destination_rule: kc.destination_rule,
            emulate_aarch64: cfg.service.job_emulate_aarch64,
        },
        cfg.kubernetes.pod_timeout,
    );
    match k.check().await {
        Ok(()) => tracing::info!("kubernetes executor: jobs run in namespace {ns}"),
        Err(e) => tracing::warn!(
            "kubernetes executor: cannot list Jobs in namespace {ns} yet (RBAC, or the API server is down): {e}"
        ),
    }
    Ok(k)
}

/// The `local` executor: agents as child processes of this server.
fn local_executor(
    cfg: &Config,
    api_url: &str,
    stop_grace: Duration,
) -> anyhow::Result<ims_server::executor::local::Local> {
    let program = std::env::current_exe().context("cannot find the ims binary")?;
    let kiwi = cfg.agent.kiwi_program();
    // Say at start-up what this host lacks, rather than when the first job fails.
    for (job_type, session) in [
        (ims_core::JobType::Customize, true),
        (ims_core::JobType::Create, false),
    ] {
        let host = ims_jobs::prereq::check(
            job_type,
            None,
            false,
            session,
            ims_core::agent_env::AGENT_PATH,
            &kiwi,
        );
        for w in &host.warnings {
            tracing::warn!("local executor: {w}");
        }
        if let Some(why) = host.explain(job_type) {
            tracing::warn!(
                "local executor: {why}; such jobs are refused (503) unless a remote build node can run them"
            );
        }
    }
    let emulate = cfg.service.job_emulate_aarch64;
    if emulate && let Err(why) = ims_jobs::prereq::arch_support(ims_core::Arch::Aarch64, true) {
        tracing::warn!("local executor: {why}; aarch64 jobs are refused (503)");
    }
    let local = LocalExecutor::new(LocalSettings {
        program,
        api_url: api_url.to_string(),
        jobs_dir: cfg.data_dir.join("jobs"),
        agent: cfg.agent.clone(),
        stop_grace,
        prerequisites: Some(Arc::new(
            move |job_type: ims_core::JobType,
                  arch: Option<ims_core::Arch>,
                  session: bool,
                  path: &str| {
                ims_jobs::prereq::check(job_type, arch, emulate, session, path, &kiwi)
                    .explain(job_type)
            },
        )),
    })
    .with_context(|| format!("cannot create {}", cfg.data_dir.join("jobs").display()))?;
    Ok(ims_server::executor::local::Local(Arc::new(local)))
}

/// How long STS credentials are valid (the CSM STS default is one hour).
const STS_TTL: Duration = Duration::from_secs(3600);

/// An external S3 store that refuses the configured keys stops start-up with one clear line (a
/// typo in a secret would otherwise surface as 500s on the first image). An unreachable store
/// is only a warning: it may come up after the server.
async fn check_s3_keys(
    artifacts: &ArtifactStore,
    s3: &ims_artifacts::S3Settings,
    bucket: &str,
) -> Result<()> {
    let probe = ims_artifacts::Location::new(bucket, ".ims-credentials-check")
        .context("the IMS bucket name")?;
    match tokio::time::timeout(Duration::from_secs(15), artifacts.head(&probe)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let text = e.to_string();
            let refused = [
                "403",
                "401",
                "Forbidden",
                "Unauthorized",
                "denied",
                "Unauthenticated",
            ]
            .iter()
            .any(|w| text.contains(w));
            if refused {
                bail!(
                    "the S3 store at {} refuses the configured keys (S3_ACCESS_KEY {}, S3_SECRET_KEY): {text}",
                    s3.endpoint,
                    s3.access_key
                );
            }
            tracing::warn!(endpoint = %s3.endpoint, error = %text, "the S3 store does not answer yet");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(endpoint = %s3.endpoint, "the S3 store did not answer within 15 s");
            Ok(())
        }
    }
}

/// Keeps the built-in endpoint's per-object metadata in step with the artifact store's moves and
/// deletes.
struct S3MetadataEvents(ims_s3::ObjectMetadata);

impl ims_artifacts::ObjectEvents for S3MetadataEvents {
    fn moved(&self, bucket: &str, from: &str, to: &str) -> std::io::Result<()> {
        self.0.moved(bucket, from, to).map(drop)
    }

    fn deleted(&self, bucket: &str, key: &str) -> std::io::Result<()> {
        self.0.deleted(bucket, key).map(drop)
    }
}

/// STS for the built-in endpoint: a fresh temporary key, secret and session token each time.
struct EmbeddedIssuer {
    creds: Arc<ims_s3::CredentialStore>,
    /// The configured public URL, if any.
    public_url: Option<String>,
    /// Where the endpoint listens.
    listen: std::net::SocketAddr,
}

impl StsIssuer for EmbeddedIssuer {
    fn issue(&self, host: Option<&str>) -> StsCredentials {
        self.answer(self.creds.issue(STS_TTL), host)
    }

    /// A job's credentials may read its source objects and write below its new image's prefix,
    /// nothing else; they are revoked when the job ends or is deleted.
    fn issue_for_job(
        &self,
        host: Option<&str>,
        scope: &ims_server::sts::JobScope,
    ) -> StsCredentials {
        let mut policy = ims_s3::Policy::new(&scope.job_id);
        for (bucket, key) in &scope.read {
            policy = policy.read_object(bucket, key);
        }
        policy = policy.write_prefix(&scope.write_bucket, &scope.write_prefix);
        self.answer(self.creds.issue_with(STS_TTL, Some(policy)), host)
    }

    fn confines_jobs(&self) -> bool {
        true
    }

    fn revoke_job(&self, job_id: &str) {
        let n = self.creds.revoke_owner(job_id);
        if n > 0 {
            tracing::debug!(
                job = job_id,
                revoked = n,
                "revoked the job's S3 credentials"
            );
        }
    }
}

impl EmbeddedIssuer {
    fn answer(&self, c: ims_s3::Credentials, host: Option<&str>) -> StsCredentials {
        StsCredentials {
            access_key_id: c.access_key,
            secret_access_key: c.secret_key,
            session_token: Some(c.session_token.unwrap_or_default()),
            endpoint_url: Some(ims_server::sts::advertised_endpoint(
                self.public_url.as_deref(),
                self.listen,
                host,
            )),
            expiration: Some(ims_core::Timestamp(
                c.expires.unwrap_or_else(chrono::Utc::now),
            )),
        }
    }
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
