//! The job agent's contract: what an executor hands the agent (`ims agent run JOB`) it starts, as
//! environment variables. Every executor (a child process, a pod, a remote node) builds the agent's
//! environment with [`AgentEnv::to_env`]; the agent reads it back with [`AgentEnv::from_env`].
//!
//! * Per job: the API URL ([`URL`]), the job token ([`TOKEN`]) and a scratch directory ([`DIR`]).
//! * Per site ([`AgentSettings`], from the server's configuration, the same for every job): every
//!   other `IMS_AGENT_*` variable. An absent one means the agent's default.
//!
//! Values are strings: paths as they are, durations in whole seconds, lists of paths joined by
//! [`PATH_LIST_SEPARATOR`] (so no path of a list may contain it).

use crate::compression::Compression;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// The API URL the agent talks to.
pub const URL: &str = "IMS_URL";
/// The job token (it can act on its own job only).
pub const TOKEN: &str = "IMS_TOKEN";
/// The job's scratch directory (removed by the executor afterwards).
pub const DIR: &str = "IMS_AGENT_DIR";
/// The bucket new images go to.
pub const BOOT_IMAGES_BUCKET: &str = "IMS_AGENT_BOOT_IMAGES_BUCKET";
/// The site CA certificate put into image roots.
pub const CA_CERT: &str = "IMS_AGENT_CA_CERT";
/// The host name users reach SSH sessions at.
pub const SSH_HOST: &str = "IMS_AGENT_SSH_HOST";
/// The IPv4 address sessions' sshd listen on.
pub const SSH_LISTEN: &str = "IMS_AGENT_SSH_LISTEN";
/// The ports sessions may listen on (`FIRST-LAST`).
pub const SSH_PORTS: &str = "IMS_AGENT_SSH_PORTS";
/// squashfs compression of the images jobs produce.
pub const COMPRESSION: &str = "IMS_AGENT_COMPRESSION";
/// Its level.
pub const COMPRESSION_LEVEL: &str = "IMS_AGENT_COMPRESSION_LEVEL";
/// How long a create job waits for its repositories (seconds).
pub const REPO_TIMEOUT: &str = "IMS_AGENT_REPO_TIMEOUT";
/// How long the agent runs on while the server does not answer (seconds).
pub const ORPHAN_TIMEOUT: &str = "IMS_AGENT_ORPHAN_TIMEOUT";
/// Keys given to kiwi-ng as `--signing-key` (files or directories).
pub const SIGNING_KEYS: &str = "IMS_AGENT_SIGNING_KEYS";
/// The kiwi-ng program.
pub const KIWI: &str = "IMS_AGENT_KIWI";
/// kiwi's package cache shared by the host's builds.
pub const KIWI_CACHE: &str = "IMS_AGENT_KIWI_CACHE";

/// Every variable of the contract, in the order [`AgentEnv::to_env`] writes them.
pub const ALL: [&str; 15] = [
    URL,
    TOKEN,
    DIR,
    BOOT_IMAGES_BUCKET,
    CA_CERT,
    SSH_HOST,
    SSH_LISTEN,
    SSH_PORTS,
    COMPRESSION,
    COMPRESSION_LEVEL,
    REPO_TIMEOUT,
    ORPHAN_TIMEOUT,
    SIGNING_KEYS,
    KIWI,
    KIWI_CACHE,
];

/// The `PATH` every executor gives the agent, and checks the agent's prerequisites with
/// (`ims_jobs::prereq`).
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Joins the paths of [`SIGNING_KEYS`].
pub const PATH_LIST_SEPARATOR: char = ':';
/// The kiwi-ng program when [`KIWI`] is not set (looked up in `PATH`).
pub const DEFAULT_KIWI: &str = "kiwi-ng";

/// What one job's agent is told.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEnv {
    pub api_url: String,
    pub token: Option<String>,
    pub dir: PathBuf,
    pub settings: AgentSettings,
}

/// The site's agent settings: the same for every job, from the server's configuration. `None`:
/// the variable is not set and the agent uses its default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSettings {
    pub boot_images_bucket: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub ssh_host: Option<String>,
    /// IPv4: slirp4netns forwards a session's port to its sshd over IPv4 only.
    pub ssh_listen: Option<Ipv4Addr>,
    pub ssh_ports: Option<PortRange>,
    pub compression: Option<Compression>,
    /// Checked against `compression` (or its default) by [`AgentEnv::from_env`].
    pub compression_level: Option<u32>,
    /// Whole seconds.
    pub repo_timeout: Option<Duration>,
    /// Whole seconds, at least one.
    pub orphan_timeout: Option<Duration>,
    /// No path may contain [`PATH_LIST_SEPARATOR`].
    pub signing_keys: Option<Vec<PathBuf>>,
    pub kiwi: Option<PathBuf>,
    pub kiwi_cache: Option<PathBuf>,
}

impl AgentSettings {
    /// The kiwi-ng program: [`KIWI`], else [`DEFAULT_KIWI`].
    pub fn kiwi_program(&self) -> PathBuf {
        self.kiwi
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KIWI))
    }

    /// The site's part of the agent's environment (see [`AgentEnv::to_env`]).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let secs = |d: &Duration| d.as_secs().to_string();
        let sep = PATH_LIST_SEPARATOR.to_string();
        [
            (BOOT_IMAGES_BUCKET, self.boot_images_bucket.clone()),
            (CA_CERT, self.ca_cert.as_ref().map(path)),
            (SSH_HOST, self.ssh_host.clone()),
            (SSH_LISTEN, self.ssh_listen.map(|a| a.to_string())),
            (SSH_PORTS, self.ssh_ports.map(|r| r.to_string())),
            (COMPRESSION, self.compression.map(|c| c.to_string())),
            (
                COMPRESSION_LEVEL,
                self.compression_level.map(|l| l.to_string()),
            ),
            (REPO_TIMEOUT, self.repo_timeout.as_ref().map(secs)),
            (ORPHAN_TIMEOUT, self.orphan_timeout.as_ref().map(secs)),
            (
                SIGNING_KEYS,
                self.signing_keys
                    .as_ref()
                    .map(|k| k.iter().map(path).collect::<Vec<_>>().join(&sep)),
            ),
            (KIWI, self.kiwi.as_ref().map(path)),
            (KIWI_CACHE, self.kiwi_cache.as_ref().map(path)),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }
}

/// The ports sessions may listen on (`IMS_JOB_SSH_PORTS=40000-40999`, or one port `40000`), for
/// firewalls that open a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not a port range (FIRST-LAST, e.g. 40000-40999, or one port)");
        let (a, b) = s.trim().split_once('-').unwrap_or((s.trim(), s.trim()));
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why the agent's environment is unusable: names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentEnvError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var} {value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
}

impl AgentEnv {
    /// The agent's environment, in the order of [`ALL`]; unset settings are left out.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(URL, self.api_url.clone())];
        if let Some(t) = &self.token {
            env.push((TOKEN, t.clone()));
        }
        env.push((DIR, self.dir.to_string_lossy().into_owned()));
        env.extend(self.settings.to_env());
        env
    }

    /// The agent's side: reads the process environment (an empty variable counts as unset).
    pub fn from_env() -> Result<AgentEnv, AgentEnvError> {
        Self::from_lookup(|k| match std::env::var(k) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(AgentEnvError::Invalid {
                var: k,
                value: v.to_string_lossy().into_owned(),
                reason: "not UTF-8".into(),
            }),
        })
    }

    /// [`AgentEnv::from_env`] over `lookup` (variable → value) instead of the process
    /// environment.
    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<Option<String>, AgentEnvError>,
    ) -> Result<AgentEnv, AgentEnvError> {
        let var = |k: &'static str| -> Result<Option<String>, AgentEnvError> {
            Ok(lookup(k)?.filter(|v| !v.is_empty()))
        };
        fn typed<T>(
            k: &'static str,
            v: Option<String>,
            f: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, AgentEnvError> {
            v.map(|v| {
                f(&v).map_err(|reason| AgentEnvError::Invalid {
                    var: k,
                    value: v.clone(),
                    reason,
                })
            })
            .transpose()
        }
        let seconds = |v: &str| match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err("not a positive number of seconds".to_string()),
        };
        let compression = typed(COMPRESSION, var(COMPRESSION)?, |v| {
            v.parse::<Compression>().map_err(|e| e.to_string())
        })?;
        let compression_level = typed(COMPRESSION_LEVEL, var(COMPRESSION_LEVEL)?, |v| {
            let l = v.trim().parse::<u32>().map_err(|e| e.to_string())?;
            compression.unwrap_or_default().check_level(l)?;
            Ok(l)
        })?;
        let paths = |v: &str| -> Result<Vec<PathBuf>, String> {
            Ok(v.split(PATH_LIST_SEPARATOR)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect())
        };
        let path = |v: &str| -> Result<PathBuf, String> { Ok(PathBuf::from(v)) };
        let text = |v: &str| -> Result<String, String> { Ok(v.to_string()) };
        Ok(AgentEnv {
            api_url: var(URL)?.ok_or(AgentEnvError::Missing(URL))?,
            token: var(TOKEN)?,
            dir: var(DIR)?
                .map(PathBuf::from)
                .ok_or(AgentEnvError::Missing(DIR))?,
            settings: AgentSettings {
                boot_images_bucket: typed(BOOT_IMAGES_BUCKET, var(BOOT_IMAGES_BUCKET)?, text)?,
                ca_cert: typed(CA_CERT, var(CA_CERT)?, path)?,
                ssh_host: typed(SSH_HOST, var(SSH_HOST)?, text)?,
                ssh_listen: typed(SSH_LISTEN, var(SSH_LISTEN)?, |v| {
                    v.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|_| "not an IPv4 address".to_string())
                })?,
                ssh_ports: typed(SSH_PORTS, var(SSH_PORTS)?, |v| v.parse::<PortRange>())?,
                compression,
                compression_level,
                repo_timeout: typed(REPO_TIMEOUT, var(REPO_TIMEOUT)?, seconds)?,
                orphan_timeout: typed(ORPHAN_TIMEOUT, var(ORPHAN_TIMEOUT)?, seconds)?,
                signing_keys: typed(SIGNING_KEYS, var(SIGNING_KEYS)?, paths)?,
                kiwi: typed(KIWI, var(KIWI)?, path)?,
                kiwi_cache: typed(KIWI_CACHE, var(KIWI_CACHE)?, path)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(env: &[(&str, String)]) -> Result<AgentEnv, AgentEnvError> {
        let map: HashMap<&str, String> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
        AgentEnv::from_lookup(|k| Ok(map.get(k).cloned()))
    }

    fn full() -> AgentEnv {
        AgentEnv {
            api_url: "http://127.0.0.1:9000".into(),
            token: Some("t".into()),
            dir: "/var/lib/ims/jobs/1".into(),
            settings: AgentSettings {
                boot_images_bucket: Some("boot-images".into()),
                ca_cert: Some("/etc/ca.crt".into()),
                ssh_host: Some("node1".into()),
                ssh_listen: Some(Ipv4Addr::LOCALHOST),
                ssh_ports: Some(PortRange {
                    first: 40000,
                    last: 40999,
                }),
                compression: Some(Compression::Gzip),
                compression_level: Some(9),
                repo_timeout: Some(Duration::from_secs(120)),
                orphan_timeout: Some(Duration::from_secs(90)),
                signing_keys: Some(vec!["/etc/a.gpg".into(), "/etc/keys".into()]),
                kiwi: Some("/opt/kiwi-ng".into()),
                kiwi_cache: Some("/var/lib/ims/kiwi-cache".into()),
            },
        }
    }

    #[test]
    fn round_trips_every_variable() {
        let a = full();
        let env = a.to_env();
        assert_eq!(env.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ALL);
        assert_eq!(read(&env).unwrap(), a);
        let get = |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(SIGNING_KEYS), Some("/etc/a.gpg:/etc/keys"));
        assert_eq!(get(REPO_TIMEOUT), Some("120"));
        assert_eq!(get(SSH_PORTS), Some("40000-40999"));
        // Unset settings are left out, and read back as unset.
        let bare = AgentEnv {
            settings: AgentSettings::default(),
            ..full()
        };
        assert_eq!(bare.to_env().len(), 3);
        assert_eq!(read(&bare.to_env()).unwrap(), bare);
    }

    #[test]
    fn errors_name_the_variable() {
        let base = full().to_env();
        let with = |k: &'static str, v: &str| {
            let mut env = base.clone();
            env.retain(|(n, _)| *n != k);
            env.push((k, v.to_string()));
            read(&env).unwrap_err()
        };
        assert_eq!(with(URL, ""), AgentEnvError::Missing(URL));
        assert_eq!(with(DIR, ""), AgentEnvError::Missing(DIR));
        for (k, v, reason) in [
            (COMPRESSION, "bzip2", "use one of zstd, gzip, xz, lz4, lzo"),
            (COMPRESSION_LEVEL, "12", "gzip levels are 1 to 9, not 12"),
            (COMPRESSION_LEVEL, "high", "invalid digit"),
            (REPO_TIMEOUT, "soon", "seconds"),
            (ORPHAN_TIMEOUT, "0", "seconds"),
            (SSH_LISTEN, "::1", "IPv4"),
            (SSH_PORTS, "9-1", "port range"),
        ] {
            let e = with(k, v);
            let msg = e.to_string();
            assert!(
                matches!(&e, AgentEnvError::Invalid { var, .. } if *var == k)
                    && msg.contains(reason)
                    && msg.starts_with(&format!("{k} {v:?}: ")),
                "{k}={v}: {msg}"
            );
        }
    }

    #[test]
    fn compression_level_is_checked_against_the_default_compression() {
        let mut env = AgentEnv {
            settings: AgentSettings::default(),
            ..full()
        }
        .to_env();
        env.push((COMPRESSION_LEVEL, "22".into()));
        assert_eq!(read(&env).unwrap().settings.compression_level, Some(22));
        env.pop();
        env.push((COMPRESSION_LEVEL, "23".into()));
        assert!(read(&env).is_err());
    }
}
