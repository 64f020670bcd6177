//! `ims`: the image management service (`ims serve`), its data tools (`ims migrate`) and the client
//! CLI shaped like `cray ims` (`ims images list`, …); later the job agent.

mod cli;
mod config;
mod migrate;
mod serve;
mod settings;

/// mimalloc: per-thread heaps instead of glibc malloc's contended arenas (measured in
/// docs/benchmarks.md, "A new connection must be cheap").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `ims --version`: the package version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("IMS_BUILD_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "ims",
    version = VERSION,
    about = "Image management service for HPC clusters (IMS-compatible)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    client: cli::Globals,
}

#[derive(clap::Args, Clone, Default)]
struct Common {
    /// Configuration file (TOML). Default: IMS_CONFIG, else <data-dir>/ims.toml if present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Directory holding all state (SQLite database, artifacts). Default ./ims-data.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Records database: postgres://… for PostgreSQL; default SQLite in the data directory.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Log format: human or json.
    #[arg(long, global = true)]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API server.
    Serve {
        /// Address to listen on (ADDRESS:PORT). Default 127.0.0.1:9000.
        #[arg(long)]
        listen: Option<String>,
        /// Address of the built-in S3 endpoint (embedded mode). Default 127.0.0.1:9001.
        #[arg(long)]
        s3_listen: Option<String>,
        /// Serve the API on a non-loopback address without an administrator token. Anyone who
        /// reaches it can start root jobs and get S3 credentials: for an isolated lab only.
        #[arg(long)]
        insecure_open_api: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Move records between this service and the original IMS's JSON data files.
    Migrate {
        #[command(subcommand)]
        op: MigrateOp,
        #[command(flatten)]
        common: Common,
    },
    /// Show the built-in S3 endpoint's credentials (embedded mode) for S3 clients used directly
    /// (aws, rclone, s3cmd, boto3): access key, secret and endpoint URL. Reads the server's
    /// configuration as `ims serve` does; run it where the server runs. Keep the output secret.
    S3Credentials {
        #[command(flatten)]
        common: Common,
    },
    /// The job agent (started by the server's executor, not by hand).
    Agent {
        #[command(subcommand)]
        op: AgentOp,
    },
    /// Client commands, shaped like `cray ims` (images, recipes, public-keys, jobs, …).
    #[command(flatten)]
    Client(cli::Command),
}

#[derive(Subcommand)]
enum AgentOp {
    /// Run one job: settings from IMS_URL, IMS_TOKEN, IMS_AGENT_DIR and IMS_AGENT_*.
    Run {
        /// The job's id.
        job_id: String,
    },
    /// On a remote build node: this node's architecture, cores, memory, what it lacks for each
    /// kind of job, and its job directories (one line of JSON).
    NodeProbe {
        /// The node's directory (agent binaries, job directories).
        #[arg(long, default_value = ims_jobs::node::DEFAULT_BASE)]
        base: PathBuf,
    },
    /// On a remote build node: start a job's agent in a session of its own; its environment is
    /// read from stdin as {"env":{"IMS_URL":…,"IMS_TOKEN":…}}. Prints {"pid":…,"start":…}.
    NodeRun {
        /// The node's directory (agent binaries, job directories).
        #[arg(long, default_value = ims_jobs::node::DEFAULT_BASE)]
        base: PathBuf,
        /// The job's id (a UUID).
        #[arg(allow_hyphen_values = true)]
        job_id: String,
    },
    /// On a remote build node: stop jobs' agents (SIGTERM, then SIGKILL) and remove their
    /// directories.
    NodeStop {
        /// The node's directory (agent binaries, job directories).
        #[arg(long, default_value = ims_jobs::node::DEFAULT_BASE)]
        base: PathBuf,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = ims_jobs::node::DEFAULT_STOP_GRACE_SECS)]
        grace: u64,
        /// The jobs' ids (UUIDs).
        #[arg(required = true, allow_hyphen_values = true)]
        job_ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum MigrateOp {
    /// Load the original's data files (v2_public_keys.json, v2.2_recipes.json, …) from DIR.
    Import {
        /// The directory holding the data files.
        dir: PathBuf,
    },
    /// Write all records to DIR as the original's data files.
    Export {
        /// The directory to write the data files to (created if missing).
        dir: PathBuf,
    },
}

/// The command line. The client options (`--url`, `--format`, …) are global so that they go
/// anywhere on a client command line; the server's own commands (`serve`, `migrate`, `agent`,
/// `s3-credentials`) do not list them in their `--help`: each gets hidden copies, which clap's
/// propagation of global options then leaves alone.
fn command() -> clap::Command {
    use clap::{Args, CommandFactory};
    fn hide_client_options(mut c: clap::Command, options: &[clap::Arg]) -> clap::Command {
        for a in options {
            c = c.arg(a.clone().global(false).hide(true));
        }
        let subs: Vec<String> = c
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for name in subs {
            c = c.mut_subcommand(name, |s| hide_client_options(s, options));
        }
        c
    }
    let options: Vec<clap::Arg> = cli::Globals::augment_args(clap::Command::new("options"))
        .get_arguments()
        .cloned()
        .collect();
    let mut cmd = cli::examples::add(Cli::command());
    for server_command in ["serve", "migrate", "s3-credentials", "agent"] {
        cmd = cmd.mut_subcommand(server_command, |s| hide_client_options(s, &options));
    }
    cmd.mut_subcommand("serve", settings::add_to_help)
}

fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn flags(
    common: &Common,
    listen: Option<String>,
    s3_listen: Option<String>,
    insecure_open_api: bool,
) -> config::Flags {
    config::Flags {
        config: common.config.clone(),
        listen,
        s3_listen,
        insecure_open_api,
        data_dir: common.data_dir.clone(),
        database_url: common.database_url.clone(),
        log_format: common.log_format.clone(),
    }
}

fn main() -> ExitCode {
    let cli = parse();
    match cli.cmd {
        Cmd::Client(c) => cli::run(c, cli.client),
        Cmd::Serve {
            listen,
            s3_listen,
            insecure_open_api,
            common,
        } => run_service(
            &flags(&common, listen, s3_listen, insecure_open_api),
            Service::Serve,
        ),
        Cmd::Migrate { op, common } => {
            run_service(&flags(&common, None, None, false), Service::Migrate(op))
        }
        Cmd::S3Credentials { common } => s3_credentials(&common, cli.client.format),
        Cmd::Agent {
            op: AgentOp::Run { job_id },
        } => run_agent(&job_id),
        Cmd::Agent {
            op: AgentOp::NodeProbe { base },
        } => ExitCode::from(ims_jobs::node::probe_command(&base)),
        Cmd::Agent {
            op: AgentOp::NodeRun { base, job_id },
        } => ExitCode::from(ims_jobs::node::run_command(&base, &job_id)),
        Cmd::Agent {
            op:
                AgentOp::NodeStop {
                    base,
                    grace,
                    job_ids,
                },
        } => ExitCode::from(ims_jobs::node::stop_command(
            &base,
            std::time::Duration::from_secs(grace),
            &job_ids,
        )),
    }
}

/// `ims s3-credentials`: the long-lived key pair `ims serve` generated on its first start, with the
/// endpoint URL it advertises, in the shape of an STS answer.
fn s3_credentials(common: &Common, format: Option<cli::Format>) -> ExitCode {
    let shown = (|| {
        let cfg = config::load(
            &flags(common, None, None, false),
            &config::Env::from_process(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(s3) = &cfg.s3 {
            return Err(format!(
                "artifacts are kept in the external S3 endpoint {}; there is no built-in endpoint \
                 and no credentials of its own (STS hands out the configured ones)",
                s3.endpoint
            ));
        }
        let path = cfg.s3_credentials_path();
        let c = match ims_s3::CredentialStore::read_root(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "no S3 credentials yet in {}: `ims serve` generates them on its first start",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("cannot read the S3 credentials: {e}")),
        };
        let endpoint_url = cfg.s3_endpoint_url();
        if endpoint_url.is_none() {
            eprintln!(
                "ims: the S3 endpoint listens on a port chosen at start (s3_listen {}) and no \
                 server has started on this data directory yet",
                cfg.s3_listen
            );
        }
        // A long-lived pair: no session token, no expiry.
        let shown = ims_core::sts::StsResponse {
            credentials: ims_core::sts::StsCredentials {
                access_key_id: c.access_key,
                secret_access_key: c.secret_key,
                session_token: None,
                endpoint_url,
                expiration: None,
            },
            job: None,
        };
        serde_json::to_value(shown).map_err(|e| e.to_string())
    })();
    match shown.and_then(|v| cli::print(&v, format.unwrap_or_default())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ims: {e}");
            ExitCode::from(2)
        }
    }
}

/// `ims agent run JOB`: first a private mount namespace (while the process has one thread), then
/// the pipeline.
fn run_agent(job_id: &str) -> ExitCode {
    let mut settings = match ims_jobs::agent::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ims agent: {e}");
            return ExitCode::from(2);
        }
    };
    match ims_jobs::agent::enter_private_mount_namespace() {
        Ok(()) => settings.private_mounts = true,
        Err(e) => eprintln!(
            "ims agent: no private mount namespace ({e}); image roots will be unpacked, not mounted"
        ),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ims agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(ims_jobs::runner::run(job_id, settings));
    // A blocking task still running (a stopped pipeline's) must not keep the agent alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The commands that work on the service's own data (they load the server configuration).
enum Service {
    Serve,
    Migrate(MigrateOp),
}

/// Called when a runtime worker runs out of work: at most once a second per worker, mimalloc
/// returns the memory this thread's heap holds freed (the buffers of connections that closed,
/// also those freed on other threads) to the system. Without it, the memory of a burst of
/// connections stays with the process after they close (docs/benchmarks.md, issue 12 item 7).
fn return_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            last.set(Some(Instant::now()));
            // SAFETY: mi_collect only walks and trims the calling thread's heap (and the shared
            // arenas); it has no preconditions.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}

fn run_service(flags: &config::Flags, cmd: Service) -> ExitCode {
    let cfg = match config::load(flags, &config::Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ims: {e}");
            return ExitCode::from(2);
        }
    };
    serve::init_logging(&cfg.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(return_freed_memory)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ims: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cmd {
            Service::Serve => serve::run(cfg).await,
            Service::Migrate(op) => {
                let (store, _lock) = serve::open_store(&cfg).await?;
                let r = match op {
                    MigrateOp::Import { dir } => {
                        migrate::import(&*store, &dir).await.map(cli::print_lines)
                    }
                    MigrateOp::Export { dir } => {
                        migrate::export(&*store, &dir).await.map(|files| {
                            cli::print_lines(files.iter().map(|(f, n)| format!("{f}: {n} records")))
                        })
                    }
                };
                store.close().await;
                r
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ims: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every leaf command's path ("images list") with the command.
    fn leaves(c: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        let subs: Vec<&clap::Command> = c
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() {
            out.push((path.trim().to_string(), c.clone()));
        }
        for s in subs {
            leaves(s, &format!("{path} {}", s.get_name()), out);
        }
    }

    /// `--help` is complete: every option and argument described, examples in every command,
    /// and the server's commands without the client options.
    #[test]
    fn help_describes_every_option_with_examples() {
        let mut cmd = super::command();
        cmd.build();
        let mut all = vec![];
        leaves(&cmd, "", &mut all);
        let mut problems = vec![];
        for (path, c) in &all {
            for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    problems.push(format!("ims {path}: {id} is not described"));
                }
            }
            let help = c
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !help.contains("Examples:") || !help.contains(&format!("ims {path}")) {
                problems.push(format!("ims {path}: no example"));
            }
            let server = ["serve", "migrate", "s3-credentials", "agent"]
                .iter()
                .any(|s| path.split(' ').next() == Some(s));
            let url = c
                .get_arguments()
                .any(|a| a.get_id() == "url" && !a.is_hide_set());
            if server == url {
                problems.push(format!("ims {path}: client options shown: {url}"));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
