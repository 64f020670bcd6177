//! Configuration: defaults < TOML file < the original's environment names < `IMS_*` environment <
//! command-line flags. A bad value stops start-up with one line naming the setting. The settings
//! themselves (names, parsers, defaults) are declared in [`crate::settings`].

use crate::settings::{self as s, FileConfig, Raw, Setting};
use ims_core::agent_env::AgentSettings;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags that override everything else.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub s3_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub log_format: Option<String>,
    /// `--insecure-open-api`.
    pub insecure_open_api: bool,
}

impl Flags {
    /// The value given to `flag` (a setting's [`s::Spec::flag`]).
    pub fn value(&self, flag: &str) -> Option<Raw> {
        match flag {
            "--config" => self.config.clone().map(Raw::Path),
            "--listen" => self.listen.clone().map(Raw::Text),
            "--s3-listen" => self.s3_listen.clone().map(Raw::Text),
            "--data-dir" => self.data_dir.clone().map(Raw::Path),
            "--database-url" => self.database_url.clone().map(Raw::Text),
            "--log-format" => self.log_format.clone().map(Raw::Text),
            "--insecure-open-api" => self.insecure_open_api.then(|| Raw::Text("true".into())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the built-in S3 endpoint listens (used only without an external S3).
    pub s3_listen: SocketAddr,
    /// The built-in endpoint's URL as clients should reach it; default `http://<s3_listen>`.
    pub s3_public_url: Option<String>,
    pub data_dir: PathBuf,
    /// `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    pub log_format: LogFormat,
    /// `None`: artifacts on the local filesystem under the data directory.
    pub s3: Option<ims_artifacts::S3Settings>,
    pub service: ims_server::ServiceConfig,
    /// How remote build nodes are reached and used.
    pub nodes: NodesConfig,
    /// How the `kubernetes` executor makes job pods.
    pub kubernetes: KubernetesConfig,
    /// The administrator bearer token the API requires, if any.
    pub api_token: Option<String>,
    /// An API without a token may listen on a non-loopback address (`--insecure-open-api`).
    pub insecure_open_api: bool,
    /// Which executor runs jobs.
    pub executor: ExecutorKind,
    pub agent_api_url: Option<String>,
    /// Settings handed to job agents (`IMS_AGENT_*`).
    pub agent: AgentSettings,
    pub job_token_key_file: PathBuf,
    /// The connection rules of both listeners.
    pub http: HttpConfig,
}

/// Remote build nodes (`[remote_build_nodes]`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodesConfig {
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub addresses: Vec<(String, String)>,
    pub dir: String,
    pub agent_x86_64: Option<PathBuf>,
    pub agent_aarch64: Option<PathBuf>,
    pub timeout: std::time::Duration,
    pub placement_timeout: std::time::Duration,
}

/// The `kubernetes` executor (`[kubernetes]`).
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    pub kubeconfig: Option<PathBuf>,
    /// Required with `IMS_JOB_EXECUTOR=kubernetes` (checked at load).
    pub image: Option<String>,
    pub service_type: ims_kubernetes::ServiceType,
    pub service_annotations: Vec<(String, String)>,
    pub address_pool: String,
    pub scratch: ims_kubernetes::Scratch,
    pub storage_class: Option<String>,
    pub runtime_class: Option<String>,
    pub service_account: Option<String>,
    pub pod_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub ttl_after_finished: std::time::Duration,
    pub destination_rule: bool,
}

/// The connection rules of both listeners (`ims_http::Limits`, once the connection limit is
/// known).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpConfig {
    pub header_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    /// `None`: derived from the open-file limit at start-up (`ims_http::default_max_connections`).
    pub max_connections: Option<usize>,
}

impl Config {
    /// Whether the API listens beyond loopback without an administrator token.
    pub fn open_to_the_network(&self) -> bool {
        !self.listen.ip().is_loopback() && self.api_token.is_none()
    }

    /// Why `ims serve` must not start as configured, if it must not: an API that starts root jobs
    /// and hands out S3 credentials, open to anyone who can reach a non-loopback address.
    pub fn exposure_problem(&self) -> Option<String> {
        if !self.open_to_the_network() || self.insecure_open_api {
            return None;
        }
        Some(format!(
            "refusing to serve the API on {} without authentication: anyone who reaches that \
             address could start root jobs and get S3 credentials. Set an administrator token \
             (IMS_API_TOKEN_FILE or [auth] api_token_file), listen on 127.0.0.1, or — for a lab \
             only — pass --insecure-open-api (IMS_INSECURE_OPEN_API=true)",
            self.listen
        ))
    }

    /// The built-in S3 endpoint's long-lived key pair (mode 0600).
    pub fn s3_credentials_path(&self) -> PathBuf {
        self.data_dir.join("s3-credentials.json")
    }

    /// The URL the built-in S3 endpoint was advertised at by the last `ims serve` on this data
    /// directory; else the one the configuration gives (`None` with port 0 and no public URL).
    pub fn s3_endpoint_url(&self) -> Option<String> {
        if let Ok(u) = std::fs::read_to_string(self.data_dir.join(S3_ENDPOINT_FILE)) {
            let u = u.trim();
            if !u.is_empty() {
                return Some(u.to_string());
            }
        }
        match &self.s3_public_url {
            Some(u) => Some(u.clone()),
            None if self.s3_listen.port() != 0 => Some(format!("http://{}", self.s3_listen)),
            None => None,
        }
    }
}

/// Where `ims serve` records the URL it advertises for its built-in S3 endpoint.
const S3_ENDPOINT_FILE: &str = "s3-endpoint";

/// Records the advertised S3 endpoint URL in the data directory (replaced atomically).
pub fn write_s3_endpoint(data_dir: &std::path::Path, url: &str) -> std::io::Result<()> {
    let tmp = data_dir.join(format!(".{S3_ENDPOINT_FILE}.tmp"));
    std::fs::write(&tmp, format!("{url}\n"))?;
    std::fs::rename(&tmp, data_dir.join(S3_ENDPOINT_FILE))
}

/// Which executor runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    /// `ims agent run` as a child process of the server.
    Local,
    /// `ims agent run` in the pod of a Kubernetes Job (crate `ims-kubernetes`).
    Kubernetes,
    /// Records only: jobs are stored and nothing runs them.
    None,
}

/// A configuration error: names the setting and says what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

fn err(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_string(),
        message: message.into(),
    }
}

/// Reads environment variables (a map, so tests need not touch the process environment).
pub struct Env(pub HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    /// The first of `names` that is set (non-empty), with its name.
    fn get(&self, names: &[&str]) -> Option<(String, String)> {
        names.iter().find_map(|n| {
            self.0
                .get(*n)
                .filter(|v| !v.is_empty())
                .map(|v| (n.to_string(), v.clone()))
        })
    }
}

/// Where settings are given, in order of precedence.
struct Sources<'a> {
    flags: &'a Flags,
    env: &'a Env,
    file: Option<&'a FileConfig>,
}

impl Sources<'_> {
    /// The setting's value if given, with the name errors about it use.
    fn given<T>(&self, setting: &Setting<T>) -> Result<Option<(String, T)>, ConfigError> {
        let spec = &setting.spec;
        let found = spec
            .flag
            .and_then(|f| self.flags.value(f).map(|v| (f.to_string(), v)))
            .or_else(|| self.env.get(spec.env).map(|(n, v)| (n, Raw::Text(v))))
            .or_else(|| {
                let v = (spec.file)(self.file?)?;
                Some((spec.key?.to_string(), v))
            });
        let Some((name, raw)) = found else {
            return Ok(None);
        };
        match (setting.parse)(raw) {
            Ok(v) => Ok(Some((name, v))),
            Err(m) => Err(err(spec.reported_as.unwrap_or(&name), m)),
        }
    }

    /// The setting's value if given.
    fn value<T>(&self, setting: &Setting<T>) -> Result<Option<T>, ConfigError> {
        Ok(self.given(setting)?.map(|(_, v)| v))
    }

    /// The setting's value, else its default value.
    fn get<T>(&self, setting: &Setting<T>) -> Result<T, ConfigError> {
        if let Some(v) = self.value(setting)? {
            return Ok(v);
        }
        let name = setting.spec.env[0];
        match setting.spec.default {
            s::Default::Value(d) => (setting.parse)(Raw::Text(d.into()))
                .map_err(|m| err(name, format!("default {d:?}: {m}"))),
            s::Default::Doc(_) => Err(err(name, "has no default value (a bug)")),
        }
    }
}

/// Stores a given value into `slot` (which holds the default).
fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// The configuration file: `--config`, `IMS_CONFIG`, or `<data-dir>/ims.toml` when it exists.
fn read_file(pre: &Sources) -> Result<FileConfig, ConfigError> {
    let path = match pre.value(&s::CONFIG)? {
        Some(p) => Some(p),
        None => Some(pre.get(&s::DATA_DIR)?.join("ims.toml")).filter(|p| p.is_file()),
    };
    let Some(p) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(&p)
        .map_err(|e| err("config", format!("cannot read {}: {e}", p.display())))?;
    toml::from_str(&text).map_err(|e| {
        err(
            "config",
            format!("{}: {}", p.display(), e.to_string().replace('\n', " ")),
        )
    })
}

/// Resolves the configuration from flags, environment and the configuration file.
pub fn load(flags: &Flags, env: &Env) -> Result<Config, ConfigError> {
    let mut src = Sources {
        flags,
        env,
        file: None,
    };
    let file = read_file(&src)?;
    src.file = Some(&file);

    let listen = src.get(&s::LISTEN)?;
    let s3_listen = src.get(&s::S3_LISTEN)?;
    let s3_public_url = src.value(&s::S3_PUBLIC_URL)?;
    let data_dir = src.get(&s::DATA_DIR)?;
    let database_url = src.value(&s::DATABASE_URL)?;
    let log_format = src.get(&s::LOG_FORMAT)?;

    // S3: configured when an endpoint is given.
    let s3 = match src.value(&s::S3_ENDPOINT)? {
        None => None,
        Some(endpoint) => {
            let required = |v: Option<String>, name| {
                v.ok_or_else(|| err(name, "required when an S3 endpoint is set"))
            };
            Some(ims_artifacts::S3Settings {
                endpoint,
                access_key: required(src.value(&s::S3_ACCESS_KEY)?, "S3_ACCESS_KEY")?,
                secret_key: required(src.value(&s::S3_SECRET_KEY)?, "S3_SECRET_KEY")?,
                verify_tls: src.get(&s::S3_VERIFY_TLS)?,
                path_style: src.get(&s::S3_PATH_STYLE)?,
                region: src.get(&s::S3_REGION)?,
                // Moves of larger objects are multipart copies (S3 refuses one copy above 5 GiB).
                copy_multipart_threshold: src
                    .value(&s::S3_COPY_MULTIPART_THRESHOLD)?
                    .unwrap_or(ims_artifacts::MAX_SINGLE_COPY),
                copy_part_size: src
                    .value(&s::S3_COPY_PART_SIZE)?
                    .unwrap_or(ims_artifacts::DEFAULT_COPY_PART),
            })
        }
    };

    let mut svc = ims_server::ServiceConfig::default();
    set(&mut svc.ims_bucket, src.value(&s::S3_IMS_BUCKET)?);
    set(
        &mut svc.boot_images_bucket,
        src.value(&s::S3_BOOT_IMAGES_BUCKET)?,
    );
    set(
        &mut svc.default_image_size,
        src.value(&s::DEFAULT_IMAGE_SIZE)?,
    );
    set(
        &mut svc.default_job_mem_size,
        src.value(&s::DEFAULT_MEM_SIZE)?,
    );
    set(&mut svc.job_namespace, src.value(&s::JOB_NAMESPACE)?);
    set(
        &mut svc.customer_access_subnet,
        src.value(&s::CUSTOMER_ACCESS_SUBNET)?,
    );
    set(
        &mut svc.customer_access_domain,
        src.value(&s::CUSTOMER_ACCESS_DOMAIN)?,
    );
    set(&mut svc.job_enable_dkms, src.value(&s::ENABLE_DKMS)?);
    svc.job_emulate_aarch64 = src.get(&s::EMULATE_AARCH64)?;
    set(
        &mut svc.max_manifest_size,
        src.value(&s::MAX_MANIFEST_SIZE)?,
    );
    let nodes = NodesConfig {
        ssh_key: src.value(&s::NODE_SSH_KEY)?,
        known_hosts: src.value(&s::NODE_KNOWN_HOSTS)?,
        addresses: src.value(&s::NODE_ADDRESSES)?.unwrap_or_default(),
        dir: src.get(&s::NODE_DIR)?,
        agent_x86_64: src.value(&s::NODE_AGENT_X86_64)?,
        agent_aarch64: src.value(&s::NODE_AGENT_AARCH64)?,
        timeout: src.get(&s::NODE_TIMEOUT)?,
        placement_timeout: src.get(&s::PLACEMENT_TIMEOUT)?,
    };
    let kubernetes = KubernetesConfig {
        kubeconfig: src.value(&s::KUBE_CONFIG)?,
        image: src.value(&s::KUBE_IMAGE)?,
        service_type: src.get(&s::KUBE_SERVICE_TYPE)?,
        service_annotations: src.get(&s::KUBE_SERVICE_ANNOTATIONS)?,
        address_pool: src.get(&s::KUBE_ADDRESS_POOL)?,
        scratch: src.get(&s::KUBE_SCRATCH)?,
        storage_class: src.value(&s::KUBE_STORAGE_CLASS)?,
        runtime_class: src.value(&s::KUBE_RUNTIME_CLASS)?,
        service_account: src.value(&s::KUBE_SERVICE_ACCOUNT)?,
        pod_timeout: src.get(&s::KUBE_POD_TIMEOUT)?,
        request_timeout: src.get(&s::KUBE_REQUEST_TIMEOUT)?,
        ttl_after_finished: src.get(&s::KUBE_TTL_AFTER_FINISHED)?,
        destination_rule: src.get(&s::KUBE_DESTINATION_RULE)?,
    };
    let api_token = match src.value(&s::API_TOKEN)? {
        Some(t) => Some(t),
        None => src.value(&s::API_TOKEN_FILE)?,
    };
    let insecure_open_api = src.get(&s::INSECURE_OPEN_API)?;
    if api_token.as_deref() == Some("") {
        return Err(err("IMS_API_TOKEN", "the token is empty"));
    }
    let executor = src.get(&s::EXECUTOR)?;
    if executor == ExecutorKind::Kubernetes && kubernetes.image.is_none() {
        return Err(err(
            "IMS_KUBERNETES_IMAGE",
            "the kubernetes executor needs the image job pods run (see scripts/build-image.sh)",
        ));
    }
    let agent_api_url = src.value(&s::AGENT_API_URL)?;
    set(
        &mut svc.job_heartbeat_timeout,
        src.value(&s::HEARTBEAT_TIMEOUT)?,
    );
    set(&mut svc.artifact_lease, src.value(&s::ARTIFACT_LEASE)?);
    set(&mut svc.leader_lease, src.value(&s::LEADER_LEASE)?);
    set(&mut svc.job_user_deadline, src.value(&s::USER_DEADLINE)?);

    let orphan_timeout = src.value(&s::ORPHAN_TIMEOUT)?;
    let ca_cert = src.value(&s::CA_CERT)?;
    let ssh_host = src.value(&s::SSH_HOST)?;
    // Where sessions' sshd listen: an address and a port range, for firewalls.
    let ssh_listen = src.value(&s::SSH_LISTEN)?;
    let ssh_ports = src.value(&s::SSH_PORTS)?;
    let compression = src.value(&s::COMPRESSION)?;
    let compression_level = match src.given(&s::COMPRESSION_LEVEL)? {
        Some((n, l)) => {
            compression
                .unwrap_or_default()
                .check_level(l)
                .map_err(|e| err(&n, e))?;
            Some(l)
        }
        None => None,
    };
    let agent = AgentSettings {
        boot_images_bucket: Some(svc.boot_images_bucket.clone()),
        orphan_timeout,
        ca_cert,
        ssh_host,
        ssh_listen,
        ssh_ports,
        compression,
        compression_level,
        repo_timeout: src.value(&s::REPO_TIMEOUT)?,
        signing_keys: src.value(&s::SIGNING_KEYS)?,
        kiwi: src.value(&s::KIWI)?,
        // One package cache for the host's builds (a build finding it busy uses its own).
        kiwi_cache: Some(data_dir.join("kiwi-cache")),
    };
    let job_token_key_file = src
        .value(&s::JOB_TOKEN_KEY_FILE)?
        .unwrap_or_else(|| data_dir.join("job-token.key"));
    let http = HttpConfig {
        header_timeout: src
            .value(&s::HTTP_HEADER_TIMEOUT)?
            .unwrap_or(ims_http::DEFAULT_HEADER_TIMEOUT),
        idle_timeout: src
            .value(&s::HTTP_IDLE_TIMEOUT)?
            .unwrap_or(ims_http::DEFAULT_IDLE_TIMEOUT),
        max_connections: src.value(&s::HTTP_MAX_CONNECTIONS)?,
    };

    Ok(Config {
        listen,
        s3_listen,
        s3_public_url,
        data_dir,
        database_url,
        log_format,
        s3,
        service: svc,
        nodes,
        kubernetes,
        api_token,
        insecure_open_api,
        executor,
        agent_api_url,
        agent,
        job_token_key_file,
        http,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{DEFAULT_DATA_DIR, DEFAULT_LISTEN};

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    #[test]
    fn defaults() {
        let c = load(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, std::path::absolute(DEFAULT_DATA_DIR).unwrap());
        assert!(c.data_dir.is_absolute());
        assert!(c.s3.is_none());
        assert_eq!(c.service.default_image_size, 60);
    }

    #[test]
    fn s3_copy_settings_and_artifact_lease() {
        let s3 = [
            ("S3_ENDPOINT", "http://127.0.0.1:1"),
            ("S3_ACCESS_KEY", "a"),
            ("S3_SECRET_KEY", "s"),
        ];
        let c = load(&Flags::default(), &env(&s3)).unwrap();
        let d = c.s3.unwrap();
        assert_eq!(d.copy_multipart_threshold, 5 << 30);
        assert_eq!(d.copy_part_size, 512 << 20);
        assert_eq!(c.service.artifact_lease, std::time::Duration::from_secs(60));
        let mut e = s3.to_vec();
        e.extend([
            ("IMS_S3_COPY_MULTIPART_THRESHOLD", "8MiB"),
            ("IMS_S3_COPY_PART_SIZE", "6m"),
            ("IMS_ARTIFACT_LEASE", "2m"),
        ]);
        let c = load(&Flags::default(), &env(&e)).unwrap();
        let d = c.s3.unwrap();
        assert_eq!(d.copy_multipart_threshold, 8 << 20);
        assert_eq!(d.copy_part_size, 6 << 20);
        assert_eq!(
            c.service.artifact_lease,
            std::time::Duration::from_secs(120)
        );
        for (k, v) in [
            ("IMS_S3_COPY_MULTIPART_THRESHOLD", "6GiB"),
            ("IMS_S3_COPY_MULTIPART_THRESHOLD", "0"),
            ("IMS_S3_COPY_MULTIPART_THRESHOLD", "lots"),
            ("IMS_S3_COPY_PART_SIZE", "1MiB"),
            ("IMS_S3_COPY_PART_SIZE", "99999999999999999999G"),
            ("IMS_ARTIFACT_LEASE", "0"),
        ] {
            let mut e = s3.to_vec();
            e.push((k, v));
            let msg = load(&Flags::default(), &env(&e)).unwrap_err().to_string();
            assert!(msg.contains(k), "{k}={v}: {msg}");
        }
    }

    #[test]
    fn leader_lease_setting() {
        let c = load(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(c.service.leader_lease, std::time::Duration::from_secs(15));
        let c = load(&Flags::default(), &env(&[("IMS_LEADER_LEASE", "40s")])).unwrap();
        assert_eq!(c.service.leader_lease, std::time::Duration::from_secs(40));
        for v in ["0", "soon"] {
            let msg = load(&Flags::default(), &env(&[("IMS_LEADER_LEASE", v)]))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("IMS_LEADER_LEASE"), "{v}: {msg}");
        }
    }

    #[test]
    fn http_connection_rules() {
        let c = load(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(c.http.header_timeout, ims_http::DEFAULT_HEADER_TIMEOUT);
        assert_eq!(c.http.idle_timeout, ims_http::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.http.max_connections, None);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[http]\nheader_timeout = \"5s\"\nidle_timeout = \"2m\"\nmax_connections = 50\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(f),
            ..Default::default()
        };
        let c = load(&flags, &env(&[])).unwrap();
        assert_eq!(c.http.header_timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.http.idle_timeout, std::time::Duration::from_secs(120));
        assert_eq!(c.http.max_connections, Some(50));
        let c = load(
            &flags,
            &env(&[
                ("IMS_HTTP_HEADER_TIMEOUT", "7"),
                ("IMS_HTTP_IDLE_TIMEOUT", "90s"),
                ("IMS_HTTP_MAX_CONNECTIONS", "20"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.header_timeout, std::time::Duration::from_secs(7));
        assert_eq!(c.http.idle_timeout, std::time::Duration::from_secs(90));
        assert_eq!(c.http.max_connections, Some(20));
        for (k, v) in [
            ("IMS_HTTP_HEADER_TIMEOUT", "0"),
            ("IMS_HTTP_IDLE_TIMEOUT", "soon"),
            ("IMS_HTTP_MAX_CONNECTIONS", "0"),
            ("IMS_HTTP_MAX_CONNECTIONS", "many"),
        ] {
            assert_eq!(load(&flags, &env(&[(k, v)])).unwrap_err().setting, k);
        }
    }

    #[test]
    fn session_address_is_ipv4() {
        let c = load(
            &Flags::default(),
            &env(&[("IMS_JOB_SSH_LISTEN", "127.0.0.1")]),
        )
        .unwrap();
        assert!(
            c.agent
                .to_env()
                .iter()
                .any(|(k, v)| *k == "IMS_AGENT_SSH_LISTEN" && v == "127.0.0.1"),
            "{:?}",
            c.agent
        );
        for bad in ["::1", "localhost"] {
            let msg = load(&Flags::default(), &env(&[("IMS_JOB_SSH_LISTEN", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("IMS_JOB_SSH_LISTEN") && msg.contains("IPv4"),
                "{msg}"
            );
        }
    }

    #[test]
    fn precedence_flag_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:1\"\n[jobs]\nnamespace = \"filens\"\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = load(&flags, &env(&[])).unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.service.job_namespace, "filens");
        let c = load(
            &flags,
            &env(&[
                ("IMS_LISTEN", "127.0.0.1:2"),
                ("DEFAULT_IMS_JOB_NAMESPACE", "envns"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.service.job_namespace, "envns");
        let flags = Flags {
            config: Some(f),
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let c = load(&flags, &env(&[("IMS_LISTEN", "127.0.0.1:2")])).unwrap();
        assert_eq!(c.listen.port(), 3);
    }

    #[test]
    fn original_env_names() {
        let c = load(
            &Flags::default(),
            &env(&[
                ("S3_ENDPOINT", "https://rgw:8080"),
                ("S3_ACCESS_KEY", "ak"),
                ("S3_SECRET_KEY", "sk"),
                ("S3_SSL_VALIDATE", "False"),
                ("S3_BOOT_IMAGES_BUCKET", "my-images"),
                ("DEFAULT_IMS_IMAGE_SIZE", "80"),
                ("DEFAULT_IMS_JOB_MEM_SIZE", "16"),
                ("JOB_ENABLE_DKMS", "false"),
            ]),
        )
        .unwrap();
        let s3 = c.s3.unwrap();
        assert!(!s3.verify_tls);
        assert_eq!(s3.endpoint, "https://rgw:8080");
        assert_eq!(c.service.boot_images_bucket, "my-images");
        assert_eq!(c.service.default_image_size, 80);
        assert_eq!(c.service.default_job_mem_size, 16);
        assert!(!c.service.job_enable_dkms);
    }

    #[test]
    fn aarch64_emulation_is_off_unless_set() {
        let c = load(&Flags::default(), &env(&[])).unwrap();
        assert!(!c.service.job_emulate_aarch64);
        let c = load(
            &Flags::default(),
            &env(&[("IMS_JOB_EMULATE_AARCH64", "true")]),
        )
        .unwrap();
        assert!(c.service.job_emulate_aarch64);
        let e = load(
            &Flags::default(),
            &env(&[("IMS_JOB_EMULATE_AARCH64", "qemu")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("IMS_JOB_EMULATE_AARCH64"), "{e}");
    }

    #[test]
    fn create_job_settings_reach_the_agent() {
        let agent =
            |pairs: &[(&str, &str)]| load(&Flags::default(), &env(pairs)).map(|c| c.agent.to_env());
        let a = agent(&[
            ("IMS_JOB_COMPRESSION_LEVEL", "9"),
            ("IMS_JOB_REPO_TIMEOUT", "2m"),
            ("IMS_JOB_SIGNING_KEYS", "/etc/hostname:/etc"),
            ("IMS_JOB_ORPHAN_TIMEOUT", "90s"),
        ])
        .unwrap();
        let get = |k: &str| a.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("IMS_AGENT_ORPHAN_TIMEOUT"), Some("90"));
        assert_eq!(get("IMS_AGENT_COMPRESSION_LEVEL"), Some("9"));
        assert_eq!(get("IMS_AGENT_REPO_TIMEOUT"), Some("120"));
        assert_eq!(get("IMS_AGENT_SIGNING_KEYS"), Some("/etc/hostname:/etc"));
        assert!(get("IMS_AGENT_KIWI_CACHE").is_some_and(|c| c.starts_with('/')));
        for (pairs, setting) in [
            (
                &[
                    ("IMS_JOB_COMPRESSION", "xz"),
                    ("IMS_JOB_COMPRESSION_LEVEL", "6"),
                ][..],
                "IMS_JOB_COMPRESSION_LEVEL",
            ),
            (
                &[("IMS_JOB_COMPRESSION_LEVEL", "23")][..],
                "IMS_JOB_COMPRESSION_LEVEL",
            ),
            (
                &[("IMS_JOB_REPO_TIMEOUT", "soon")][..],
                "IMS_JOB_REPO_TIMEOUT",
            ),
            (
                &[("IMS_JOB_ORPHAN_TIMEOUT", "0")][..],
                "IMS_JOB_ORPHAN_TIMEOUT",
            ),
            (
                &[("IMS_JOB_SIGNING_KEYS", "/nonexistent-key")][..],
                "IMS_JOB_SIGNING_KEYS",
            ),
        ] {
            assert_eq!(agent(pairs).unwrap_err().setting, setting, "{pairs:?}");
        }
    }

    /// Agents run in their job directory: every path the server hands on is absolute, whatever
    /// the form it was given in (relative to the server's working directory).
    #[test]
    fn relative_paths_become_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let c = load(
            &Flags {
                data_dir: Some(PathBuf::from("./rel-data")),
                ..Default::default()
            },
            // Relative to the crate directory, where cargo runs unit tests.
            &env(&[
                ("IMS_JOB_CA_CERT", "Cargo.toml"),
                ("IMS_JOB_SIGNING_KEYS", "src:Cargo.toml"),
                ("IMS_JOB_KIWI", "./kiwi-ng"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, cwd.join("rel-data"));
        assert_eq!(c.job_token_key_file, cwd.join("rel-data/job-token.key"));
        let agent_env = c.agent.to_env();
        let get = |k: &str| {
            agent_env
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let cwd = cwd.display();
        assert_eq!(get("IMS_AGENT_CA_CERT"), format!("{cwd}/Cargo.toml"));
        assert_eq!(
            get("IMS_AGENT_SIGNING_KEYS"),
            format!("{cwd}/src:{cwd}/Cargo.toml")
        );
        assert_eq!(get("IMS_AGENT_KIWI"), format!("{cwd}/kiwi-ng"));
        assert_eq!(
            get("IMS_AGENT_KIWI_CACHE"),
            format!("{cwd}/rel-data/kiwi-cache")
        );
        // A bare program name is still looked up in PATH.
        let c = load(&Flags::default(), &env(&[("IMS_JOB_KIWI", "kiwi-ng")])).unwrap();
        assert!(
            c.agent
                .to_env()
                .contains(&("IMS_AGENT_KIWI", "kiwi-ng".into()))
        );
    }

    #[test]
    fn kubernetes_settings() {
        let c = load(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(
            c.kubernetes.service_type,
            ims_kubernetes::ServiceType::LoadBalancer
        );
        assert_eq!(c.kubernetes.scratch, ims_kubernetes::Scratch::Pvc);
        assert_eq!(
            c.kubernetes.service_annotations,
            [
                (
                    "external-dns.alpha.kubernetes.io/hostname".to_string(),
                    "{hostname}".to_string()
                ),
                (
                    "metallb.universe.tf/address-pool".to_string(),
                    "{pool}".to_string()
                )
            ]
        );
        assert_eq!(c.kubernetes.address_pool, "customer-management");
        assert_eq!(
            c.kubernetes.pod_timeout,
            std::time::Duration::from_secs(600)
        );
        assert_eq!(
            c.kubernetes.request_timeout,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            c.kubernetes.ttl_after_finished,
            std::time::Duration::from_secs(7 * 86400)
        );
        // The executor needs its image.
        let e = load(
            &Flags::default(),
            &env(&[("IMS_JOB_EXECUTOR", "kubernetes")]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "IMS_KUBERNETES_IMAGE");
        let c = load(
            &Flags::default(),
            &env(&[
                ("IMS_JOB_EXECUTOR", "kubernetes"),
                ("IMS_KUBERNETES_IMAGE", "registry.local/ims-rs:1"),
                ("IMS_KUBERNETES_SERVICE_TYPE", "clusterip"),
                ("IMS_KUBERNETES_SCRATCH", "emptyDir"),
                ("JOB_CUSTOMER_ACCESS_NETWORK_ACCESS_POOL", "cmn-pool"),
                (
                    "IMS_KUBERNETES_SERVICE_ANNOTATIONS",
                    "metallb.io/address-pool={pool}, example.com/owner=ims",
                ),
                ("IMS_KUBERNETES_RUNTIME_CLASS", "kata-qemu"),
            ]),
        )
        .unwrap();
        assert_eq!(c.executor, ExecutorKind::Kubernetes);
        assert_eq!(
            c.kubernetes.service_type,
            ims_kubernetes::ServiceType::ClusterIp
        );
        assert_eq!(c.kubernetes.scratch, ims_kubernetes::Scratch::EmptyDir);
        assert_eq!(c.kubernetes.address_pool, "cmn-pool");
        assert_eq!(c.kubernetes.service_annotations.len(), 2);
        assert_eq!(c.kubernetes.runtime_class.as_deref(), Some("kata-qemu"));
        for (name, bad) in [
            ("IMS_KUBERNETES_SERVICE_TYPE", "ExternalName"),
            ("IMS_KUBERNETES_SCRATCH", "hostpath"),
            ("IMS_KUBERNETES_RUNTIME_CLASS", "Kata_QEMU"),
            ("IMS_KUBERNETES_STORAGE_CLASS", "-ceph"),
            ("IMS_KUBERNETES_SERVICE_ANNOTATIONS", "novalue"),
            ("IMS_KUBERNETES_SERVICE_ANNOTATIONS", "bad key=x"),
            ("IMS_KUBERNETES_SERVICE_ANNOTATIONS", "a/b/c=x"),
            ("IMS_KUBERNETES_SERVICE_ANNOTATIONS", "x.io/y={id}"),
            ("IMS_KUBERNETES_IMAGE", "reg/ims rs"),
            ("IMS_KUBERNETES_POD_TIMEOUT", "soon"),
            ("IMS_KUBERNETES_REQUEST_TIMEOUT", "0"),
            ("IMS_KUBERNETES_KUBECONFIG", "/nonexistent/kubeconfig"),
        ] {
            let e = load(&Flags::default(), &env(&[(name, bad)])).unwrap_err();
            assert_eq!(e.setting, name, "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = load(
            &Flags::default(),
            &env(&[("DEFAULT_IMS_IMAGE_SIZE", "big")]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "DEFAULT_IMS_IMAGE_SIZE");
        let e = load(&Flags::default(), &env(&[("S3_ENDPOINT", "http://x")])).unwrap_err();
        assert_eq!(e.setting, "S3_ACCESS_KEY");
        let e = load(
            &Flags {
                listen: Some("nope".into()),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "--listen");
        let e = load(
            &Flags::default(),
            &env(&[("S3_BOOT_IMAGES_BUCKET", "../x")]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "S3_BOOT_IMAGES_BUCKET");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = load(
            &Flags {
                config: Some(f),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "config");
        assert!(e.message.contains("lisen"));
        assert!(!e.to_string().contains('\n'));
    }
}
