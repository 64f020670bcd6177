//! The agent's settings and process set-up, what the executor gives `ims agent run`.
//!
//! * **Settings** come from the environment the executor sets: `IMS_URL`, `IMS_TOKEN` (the job
//!   token), `IMS_AGENT_DIR` (scratch space, removed by the executor afterwards), and optional
//!   agent settings (`IMS_AGENT_CA_CERT`, `IMS_AGENT_COMPRESSION`, `IMS_AGENT_KIWI`,
//!   `IMS_AGENT_KIWI_CACHE`, `IMS_AGENT_SIGNING_KEYS`, `IMS_AGENT_REPO_TIMEOUT`, …).
//! * **Mounts**: [`enter_private_mount_namespace`], before any thread exists.
//!
//! The process frame (heartbeat, signals, outcome) is [`crate::runner`]; what a pipeline works
//! with is [`crate::context`].

use std::path::PathBuf;
use std::time::Duration;

/// How long a create job waits for its repositories by default (the original's default).
pub const DEFAULT_REPO_TIMEOUT: Duration = Duration::from_secs(500);
/// By default an agent that has not reached the server for this long stops (and cleans up): its
/// server is gone for good, or its job cannot be finished anyway (status, log and image all go
/// through the API). Long enough for a server upgrade or a node reboot; a restarted server takes
/// live agents over, or fails their jobs, on its own.
pub const DEFAULT_ORPHAN_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the executor tells the agent.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: String,
    pub token: Option<String>,
    /// The job's scratch directory.
    pub dir: PathBuf,
    /// The site CA certificate to put into image roots.
    pub ca_cert: Option<PathBuf>,
    /// squashfs compression of packaged images.
    pub compression: ims_rootfs::Compression,
    /// Its level (`None`: create jobs [`crate::package::CREATE_ZSTD_LEVEL`] for zstd, else
    /// mksquashfs's default).
    pub compression_level: Option<u32>,
    /// The bucket new images go to.
    pub boot_images_bucket: String,
    /// The host name users and Ansible reach job SSH sessions at (`connection_info`).
    pub ssh_host: String,
    /// The address job sshd listens on.
    pub ssh_listen: std::net::IpAddr,
    /// Ports sessions may listen on (`IMS_AGENT_SSH_PORTS`); `None`: any free port.
    pub ssh_ports: Option<crate::sshd::PortRange>,
    /// Whether the agent has a private mount namespace (mounts are allowed only then).
    pub private_mounts: bool,
    /// The kiwi-ng program of create jobs.
    pub kiwi: PathBuf,
    /// kiwi's package cache shared by the host's builds (a build finding it busy uses its own).
    pub kiwi_cache: Option<PathBuf>,
    /// Keys given to kiwi as `--signing-key` (files, or directories of them); `None`: the Debian
    /// archive keyring for apt recipes, where installed.
    pub signing_keys: Option<Vec<PathBuf>>,
    /// How long a create job waits for the recipe's repositories.
    pub repo_timeout: Duration,
    /// How long the agent runs on while the server does not answer.
    pub orphan_timeout: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Settings, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let api_url = var("IMS_URL").ok_or("IMS_URL is not set")?;
        let dir = var("IMS_AGENT_DIR")
            .map(PathBuf::from)
            .ok_or("IMS_AGENT_DIR is not set")?;
        let compression = match var("IMS_AGENT_COMPRESSION") {
            Some(c) => c
                .parse()
                .map_err(|e: ims_rootfs::RootfsError| format!("IMS_AGENT_COMPRESSION: {e}"))?,
            None => ims_rootfs::Compression::default(),
        };
        let compression_level = match var("IMS_AGENT_COMPRESSION_LEVEL") {
            Some(l) => {
                let l: u32 = l
                    .parse()
                    .map_err(|e| format!("IMS_AGENT_COMPRESSION_LEVEL {l:?}: {e}"))?;
                compression
                    .check_level(l)
                    .map_err(|e| format!("IMS_AGENT_COMPRESSION_LEVEL: {e}"))?;
                Some(l)
            }
            None => None,
        };
        Ok(Settings {
            api_url,
            compression_level,
            token: var("IMS_TOKEN"),
            dir,
            ca_cert: var("IMS_AGENT_CA_CERT").map(PathBuf::from),
            compression,
            boot_images_bucket: var("IMS_AGENT_BOOT_IMAGES_BUCKET")
                .unwrap_or_else(|| "boot-images".to_string()),
            private_mounts: false,
            ssh_host: var("IMS_AGENT_SSH_HOST").unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".to_string())
            }),
            kiwi: var("IMS_AGENT_KIWI")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("kiwi-ng")),
            kiwi_cache: var("IMS_AGENT_KIWI_CACHE").map(PathBuf::from),
            signing_keys: var("IMS_AGENT_SIGNING_KEYS").map(|v| {
                v.split(':')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }),
            repo_timeout: match var("IMS_AGENT_REPO_TIMEOUT") {
                Some(t) => Duration::from_secs(
                    t.parse()
                        .map_err(|e| format!("IMS_AGENT_REPO_TIMEOUT {t:?} (seconds): {e}"))?,
                ),
                None => DEFAULT_REPO_TIMEOUT,
            },
            orphan_timeout: match var("IMS_AGENT_ORPHAN_TIMEOUT") {
                Some(t) => Duration::from_secs(t.parse().ok().filter(|s| *s > 0).ok_or(
                    format!("IMS_AGENT_ORPHAN_TIMEOUT {t:?} is not a number of seconds"),
                )?),
                None => DEFAULT_ORPHAN_TIMEOUT,
            },
            ssh_listen: match var("IMS_AGENT_SSH_LISTEN") {
                Some(a) => a
                    .parse()
                    .map_err(|e| format!("IMS_AGENT_SSH_LISTEN {a:?}: {e}"))?,
                None => std::net::IpAddr::from([0, 0, 0, 0]),
            },
            ssh_ports: var("IMS_AGENT_SSH_PORTS")
                .map(|r| r.parse().map_err(|e| format!("IMS_AGENT_SSH_PORTS: {e}")))
                .transpose()?,
        })
    }
}

/// Moves the process into a mount namespace of its own whose mounts do not propagate back, so
/// every mount the agent makes vanishes with it. Must run before any thread is started.
pub fn enter_private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: plain system calls with valid, NUL-terminated constant strings; called while the
    // process is single-threaded, as unshare(CLONE_NEWNS) requires.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
