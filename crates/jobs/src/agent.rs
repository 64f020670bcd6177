//! The agent's settings and process set-up, what the executor gives `ims agent run`.
//!
//! * **Settings** come from the environment the executor sets ([`ims_core::agent_env`]): `IMS_URL`,
//!   `IMS_TOKEN` (the job token), `IMS_AGENT_DIR` (scratch space, removed by the executor
//!   afterwards), and the site's optional agent settings (`IMS_AGENT_*`).
//! * **Mounts**: [`enter_private_mount_namespace`], before any thread exists.
//!
//! The process frame (heartbeat, signals, outcome) is [`crate::runner`]; what a pipeline works
//! with is [`crate::context`].

use ims_core::agent_env::AgentEnv;
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
    /// The settings the executor put into the agent's environment ([`AgentEnv`]), with the
    /// agent's defaults for those it left out.
    pub fn from_env() -> crate::error::Result<Settings> {
        let AgentEnv {
            api_url,
            token,
            dir,
            settings: s,
        } = AgentEnv::from_env()?;
        Ok(Settings {
            api_url,
            token,
            dir,
            kiwi: s.kiwi_program(),
            ca_cert: s.ca_cert,
            compression: s.compression.unwrap_or_default(),
            compression_level: s.compression_level,
            boot_images_bucket: s
                .boot_images_bucket
                .unwrap_or_else(|| "boot-images".to_string()),
            private_mounts: false,
            ssh_host: s.ssh_host.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".to_string())
            }),
            kiwi_cache: s.kiwi_cache,
            signing_keys: s.signing_keys,
            repo_timeout: s.repo_timeout.unwrap_or(DEFAULT_REPO_TIMEOUT),
            orphan_timeout: s.orphan_timeout.unwrap_or(DEFAULT_ORPHAN_TIMEOUT),
            ssh_listen: s
                .ssh_listen
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
                .into(),
            ssh_ports: s.ssh_ports,
        })
    }
}

/// Moves the process into a mount namespace of its own whose mounts do not propagate back, so
/// every mount the agent makes vanishes with it. Must run before any thread is started.
pub fn enter_private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: rustix marks unshare unsafe for the flags that take file descriptors or memory
    // away (CLONE_FILES, CLONE_VM…); CLONE_NEWNS touches neither. Called while the process is
    // single-threaded, as unshare(CLONE_NEWNS) requires.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )?;
    Ok(())
}
