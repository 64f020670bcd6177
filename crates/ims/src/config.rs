//! Configuration: defaults < TOML file < the original's environment names < `IMS_*` environment <
//! command-line flags. A bad value stops start-up with one line naming the setting.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
pub const DEFAULT_DATA_DIR: &str = "./ims-data";
/// The built-in S3 endpoint (embedded mode, when no external S3 is configured).
pub const DEFAULT_S3_LISTEN: &str = "127.0.0.1:9001";

/// The configuration file (`--config FILE`, `IMS_CONFIG`, or `<data-dir>/ims.toml` when present).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// Address of the built-in S3 endpoint.
    pub s3_listen: Option<String>,
    /// The URL clients are told to use for the built-in S3 endpoint (STS `EndpointURL`).
    pub s3_public_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub log_format: Option<String>,
    /// How long unfinished artifact work stays with a process that stopped renewing it before
    /// another replica takes it over (e.g. `60s`).
    pub artifact_lease: Option<String>,
    /// Serve the API on a non-loopback address without a token (a lab only).
    pub insecure_open_api: Option<bool>,
    #[serde(default)]
    pub s3: S3File,
    #[serde(default)]
    pub jobs: JobsFile,
    #[serde(default)]
    pub remote_build_nodes: NodesFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub http: HttpFile,
}

/// `[http]`: the connection rules of both listeners (API and built-in S3 endpoint).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// A connection must send a complete request head within this time (e.g. `30s`).
    pub header_timeout: Option<String>,
    /// A connection with no request in flight is closed after this time (e.g. `60s`).
    pub idle_timeout: Option<String>,
    /// Connections each listener serves at once; more wait in the listen backlog.
    pub max_connections: Option<u64>,
}

/// `[auth]`: API access.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// File holding the administrator bearer token; when set, the API requires it.
    pub api_token_file: Option<PathBuf>,
    /// File holding the job-token key (hex); replicas sharing a database must share it.
    /// Default: `<data-dir>/job-token.key`, created on first start.
    pub job_token_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3File {
    pub endpoint: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub verify_tls: Option<bool>,
    pub ims_bucket: Option<String>,
    pub boot_images_bucket: Option<String>,
    /// Objects above this size move by multipart copy (e.g. `5GiB`, the default and maximum).
    pub copy_multipart_threshold: Option<String>,
    /// The part size of those copies (e.g. `512MiB`, the default; at least 5 MiB).
    pub copy_part_size: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobsFile {
    pub default_image_size: Option<i64>,
    pub default_mem_size: Option<i64>,
    pub namespace: Option<String>,
    pub customer_access_subnet: Option<String>,
    pub customer_access_domain: Option<String>,
    pub enable_dkms: Option<bool>,
    pub max_manifest_size: Option<u64>,
    /// `local` (agents as child processes) or `none` (records only).
    pub executor: Option<String>,
    /// The API URL job agents use (default: the listen address, loopback if unspecified).
    pub agent_api_url: Option<String>,
    /// A silent agent's job ends in error after this long (e.g. `60s`, `2m`).
    pub heartbeat_timeout: Option<String>,
    /// A job waiting on its user ends in error after this long (e.g. `24h`).
    pub user_deadline: Option<String>,
    /// An agent that cannot reach the server for this long stops by itself (default `1h`).
    pub orphan_timeout: Option<String>,
    /// The site CA certificate put into every image root (`/etc/cray/ca/certificate_authority.crt`).
    pub ca_cert: Option<PathBuf>,
    /// The host name users reach job SSH sessions at (default: this host's name).
    pub ssh_host: Option<String>,
    /// Address sessions' sshd listen on (default every address).
    pub ssh_listen: Option<String>,
    /// Ports sessions' sshd may listen on, `FIRST-LAST` (default any free port).
    pub ssh_ports: Option<String>,
    /// squashfs compression of the images jobs produce (default zstd).
    pub compression: Option<String>,
    /// Its level (default: mksquashfs's; create jobs 6 for zstd).
    pub compression_level: Option<u32>,
    /// How long a create job waits for its recipe's repositories (default 500s).
    pub repo_timeout: Option<String>,
    /// Keys passed to kiwi-ng as `--signing-key` (files or directories of them; default: the
    /// Debian archive keyring for apt recipes).
    pub signing_keys: Option<Vec<PathBuf>>,
    /// The kiwi-ng program (default `kiwi-ng` on the PATH).
    pub kiwi: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    pub ssh_key: Option<PathBuf>,
}

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
    pub node_ssh_key: Option<PathBuf>,
    /// The administrator bearer token the API requires, if any.
    pub api_token: Option<String>,
    /// An API without a token may listen on a non-loopback address (`--insecure-open-api`).
    pub insecure_open_api: bool,
    /// Which executor runs jobs.
    pub executor: ExecutorKind,
    pub agent_api_url: Option<String>,
    /// Settings handed to job agents (`IMS_AGENT_*`).
    pub agent_env: Vec<(String, String)>,
    pub job_token_key_file: PathBuf,
    /// The connection rules of both listeners.
    pub http: HttpConfig,
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

/// The largest connection limit accepted.
pub const MAX_CONNECTIONS_LIMIT: u64 = 1_000_000;

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
    /// Records only: jobs are stored and nothing runs them.
    None,
}

/// A duration setting: `90`, `90s`, `2m`, `24h`, `1d`, `2weeks`, … (at least one second).
fn parse_duration(name: &str, v: &str) -> Result<std::time::Duration, ConfigError> {
    let v = v.trim();
    let secs = match v.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => ims_core::input::parse_age(v),
    };
    match secs {
        Some(n) if n >= 1 => Ok(std::time::Duration::from_secs(n as u64)),
        _ => Err(err(
            name,
            format!("{v:?} is not a duration (e.g. 90s, 2m, 24h, 1d)"),
        )),
    }
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

fn parse_bool(name: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(err(name, format!("{v:?} is not a boolean (true/false)"))),
    }
}

fn parse_size(name: &str, v: &str) -> Result<i64, ConfigError> {
    match v.trim().parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(err(name, format!("{v:?} is not a positive integer"))),
    }
}

/// A byte count: `1048576`, `8MiB`, `5GiB`, `512M` (binary multiples; `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, any case) within `min..=max`.
fn parse_bytes(name: &str, v: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let t = v.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(err(name, format!("{v:?} is not a size (e.g. 8MiB, 5GiB)"))),
    };
    match n
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
    {
        Some(b) if (min..=max).contains(&b) => Ok(b),
        Some(_) => Err(err(
            name,
            format!("{v:?} is not between {min} and {max} bytes"),
        )),
        None => Err(err(name, format!("{v:?} is not a size (e.g. 8MiB, 5GiB)"))),
    }
}

fn check_bucket(name: &str, v: String) -> Result<String, ConfigError> {
    if ims_artifacts::valid_bucket(&v) {
        Ok(v)
    } else {
        Err(err(name, format!("{v:?} is not a valid S3 bucket name")))
    }
}

/// `p` made absolute against the working directory (without touching the filesystem).
fn absolute(name: &str, p: &std::path::Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(p).map_err(|e| {
        err(
            name,
            format!("cannot make {} an absolute path: {e}", p.display()),
        )
    })
}

/// Resolves the configuration from flags, environment and the configuration file.
pub fn load(flags: &Flags, env: &Env) -> Result<Config, ConfigError> {
    // Which file: --config, IMS_CONFIG, or <data-dir>/ims.toml when it exists.
    let explicit = flags
        .config
        .clone()
        .or_else(|| env.get(&["IMS_CONFIG"]).map(|(_, v)| PathBuf::from(v)));
    let pre_data_dir = flags
        .data_dir
        .clone()
        .or_else(|| env.get(&["IMS_DATA_DIR"]).map(|(_, v)| PathBuf::from(v)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let file_path = explicit.clone().or_else(|| {
        let p = pre_data_dir.join("ims.toml");
        p.is_file().then_some(p)
    });
    let file: FileConfig = match &file_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| err("config", format!("cannot read {}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| {
                err(
                    "config",
                    format!("{}: {}", p.display(), e.to_string().replace('\n', " ")),
                )
            })?
        }
        None => FileConfig::default(),
    };

    let pick = |flag: &Option<String>,
                names: &[&str],
                file: &Option<String>|
     -> Option<(String, String)> {
        flag.clone()
            .map(|v| ("--flag".to_string(), v))
            .or_else(|| env.get(names))
            .or_else(|| file.clone().map(|v| ("config file".to_string(), v)))
    };

    let (lname, listen) = pick(&flags.listen, &["IMS_LISTEN"], &file.listen)
        .unwrap_or(("default".into(), DEFAULT_LISTEN.into()));
    let listen: SocketAddr = listen.parse().map_err(|_| {
        err(
            if lname == "--flag" {
                "--listen"
            } else if lname == "config file" {
                "listen"
            } else {
                &lname
            },
            format!("{listen:?} is not an ADDRESS:PORT"),
        )
    })?;

    let (sname, s3_listen) = pick(&flags.s3_listen, &["IMS_S3_LISTEN"], &file.s3_listen)
        .unwrap_or(("default".into(), DEFAULT_S3_LISTEN.into()));
    let s3_listen: SocketAddr = s3_listen.parse().map_err(|_| {
        err(
            if sname == "--flag" {
                "--s3-listen"
            } else if sname == "config file" {
                "s3_listen"
            } else {
                &sname
            },
            format!("{s3_listen:?} is not an ADDRESS:PORT"),
        )
    })?;
    let s3_public_url = pick(&None, &["IMS_S3_PUBLIC_URL"], &file.s3_public_url).map(|(_, v)| v);
    if let Some(u) = &s3_public_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(err("s3_public_url", format!("{u:?} is not an http(s) URL")));
    }

    let data_dir = flags
        .data_dir
        .clone()
        .or_else(|| env.get(&["IMS_DATA_DIR"]).map(|(_, v)| PathBuf::from(v)))
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    // Resolved once, here: every path derived from it (the job directories, the agents'
    // settings) stays right for processes started elsewhere (agents run in their job directory).
    let data_dir = absolute("data_dir", &data_dir)?;

    let database_url = pick(
        &flags.database_url,
        &["IMS_DATABASE_URL"],
        &file.database_url,
    )
    .map(|(_, v)| v);
    if let Some(u) = &database_url
        && !(u.starts_with("postgres://")
            || u.starts_with("postgresql://")
            || u.starts_with("sqlite://"))
    {
        return Err(err(
            "database_url",
            format!("{u:?} is not a postgres:// or sqlite:// URL"),
        ));
    }

    let log_format = match pick(&flags.log_format, &["IMS_LOG_FORMAT"], &file.log_format)
        .map(|(_, v)| v)
        .as_deref()
    {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(err("log_format", format!("{other:?} is not human or json"))),
    };

    // S3: configured when an endpoint is given.
    let s3 = match env
        .get(&["IMS_S3_ENDPOINT", "S3_ENDPOINT"])
        .map(|(_, v)| v)
        .or(file.s3.endpoint.clone())
    {
        None => None,
        Some(endpoint) => {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(err(
                    "S3_ENDPOINT",
                    format!("{endpoint:?} is not an http(s) URL"),
                ));
            }
            let access_key = env
                .get(&["IMS_S3_ACCESS_KEY", "S3_ACCESS_KEY"])
                .map(|(_, v)| v)
                .or(file.s3.access_key.clone())
                .ok_or_else(|| err("S3_ACCESS_KEY", "required when an S3 endpoint is set"))?;
            let secret_key = env
                .get(&["IMS_S3_SECRET_KEY", "S3_SECRET_KEY"])
                .map(|(_, v)| v)
                .or(file.s3.secret_key.clone())
                .ok_or_else(|| err("S3_SECRET_KEY", "required when an S3 endpoint is set"))?;
            let verify_tls = match env.get(&["IMS_S3_VERIFY_TLS", "S3_SSL_VALIDATE"]) {
                Some((n, v)) => parse_bool(&n, &v)?,
                None => file.s3.verify_tls.unwrap_or(true),
            };
            let path_style = match env.get(&["IMS_S3_PATH_STYLE"]) {
                Some((n, v)) => parse_bool(&n, &v)?,
                None => file.s3.path_style.unwrap_or(true),
            };
            let region = env
                .get(&["IMS_S3_REGION", "S3_REGION"])
                .map(|(_, v)| v)
                .or(file.s3.region.clone())
                .unwrap_or_else(|| "us-east-1".into());
            // Moves of larger objects are multipart copies (S3 refuses one copy above 5 GiB).
            let copy_multipart_threshold =
                match env.get(&["IMS_S3_COPY_MULTIPART_THRESHOLD"]).or_else(|| {
                    file.s3
                        .copy_multipart_threshold
                        .clone()
                        .map(|v| ("s3.copy_multipart_threshold".to_string(), v))
                }) {
                    Some((n, v)) => parse_bytes(&n, &v, 1, ims_artifacts::MAX_SINGLE_COPY)?,
                    None => ims_artifacts::MAX_SINGLE_COPY,
                };
            let copy_part_size = match env.get(&["IMS_S3_COPY_PART_SIZE"]).or_else(|| {
                file.s3
                    .copy_part_size
                    .clone()
                    .map(|v| ("s3.copy_part_size".to_string(), v))
            }) {
                Some((n, v)) => parse_bytes(
                    &n,
                    &v,
                    ims_artifacts::MIN_PART,
                    ims_artifacts::MAX_SINGLE_COPY,
                )?,
                None => ims_artifacts::DEFAULT_COPY_PART,
            };
            Some(ims_artifacts::S3Settings {
                endpoint,
                region,
                access_key,
                secret_key,
                path_style,
                verify_tls,
                copy_multipart_threshold,
                copy_part_size,
            })
        }
    };

    let mut svc = ims_server::ServiceConfig::default();
    if let Some(b) = env
        .get(&["IMS_S3_IMS_BUCKET", "S3_IMS_BUCKET"])
        .map(|(_, v)| v)
        .or(file.s3.ims_bucket.clone())
    {
        svc.ims_bucket = check_bucket("S3_IMS_BUCKET", b)?;
    }
    if let Some(b) = env
        .get(&["IMS_S3_BOOT_IMAGES_BUCKET", "S3_BOOT_IMAGES_BUCKET"])
        .map(|(_, v)| v)
        .or(file.s3.boot_images_bucket.clone())
    {
        svc.boot_images_bucket = check_bucket("S3_BOOT_IMAGES_BUCKET", b)?;
    }
    match env.get(&["IMS_DEFAULT_IMAGE_SIZE", "DEFAULT_IMS_IMAGE_SIZE"]) {
        Some((n, v)) => svc.default_image_size = parse_size(&n, &v)?,
        None => {
            if let Some(n) = file.jobs.default_image_size {
                svc.default_image_size = parse_size("jobs.default_image_size", &n.to_string())?;
            }
        }
    }
    match env.get(&["IMS_DEFAULT_JOB_MEM_SIZE", "DEFAULT_IMS_JOB_MEM_SIZE"]) {
        Some((n, v)) => svc.default_job_mem_size = parse_size(&n, &v)?,
        None => {
            if let Some(n) = file.jobs.default_mem_size {
                svc.default_job_mem_size = parse_size("jobs.default_mem_size", &n.to_string())?;
            }
        }
    }
    if let Some(v) = env
        .get(&["IMS_JOB_NAMESPACE", "DEFAULT_IMS_JOB_NAMESPACE"])
        .map(|(_, v)| v)
        .or(file.jobs.namespace.clone())
    {
        svc.job_namespace = v;
    }
    if let Some(v) = env
        .get(&["JOB_CUSTOMER_ACCESS_SUBNET_NAME"])
        .map(|(_, v)| v)
        .or(file.jobs.customer_access_subnet.clone())
    {
        svc.customer_access_subnet = v;
    }
    if let Some(v) = env
        .get(&["JOB_CUSTOMER_ACCESS_NETWORK_DOMAIN"])
        .map(|(_, v)| v)
        .or(file.jobs.customer_access_domain.clone())
    {
        svc.customer_access_domain = v;
    }
    match env.get(&["IMS_JOB_ENABLE_DKMS", "JOB_ENABLE_DKMS"]) {
        Some((n, v)) => svc.job_enable_dkms = parse_bool(&n, &v)?,
        None => {
            if let Some(b) = file.jobs.enable_dkms {
                svc.job_enable_dkms = b;
            }
        }
    }
    match env.get(&["MAX_IMAGE_MANIFEST_SIZE_BYTES"]) {
        Some((n, v)) => {
            svc.max_manifest_size = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err(&n, format!("{v:?} is not a positive integer")))?
        }
        None => {
            if let Some(n) = file.jobs.max_manifest_size {
                svc.max_manifest_size = n;
            }
        }
    }
    let node_ssh_key = env
        .get(&["IMS_REMOTE_BUILD_NODE_SSH_KEY"])
        .map(|(_, v)| PathBuf::from(v))
        .or(file.remote_build_nodes.ssh_key.clone());
    let api_token = match env.get(&["IMS_API_TOKEN"]) {
        Some((_, v)) => Some(v.trim().to_string()),
        None => match env
            .get(&["IMS_API_TOKEN_FILE"])
            .map(|(n, v)| (n, PathBuf::from(v)))
            .or_else(|| {
                file.auth
                    .api_token_file
                    .clone()
                    .map(|p| ("auth.api_token_file".to_string(), p))
            }) {
            Some((n, p)) => Some(
                std::fs::read_to_string(&p)
                    .map_err(|e| err(&n, format!("cannot read {}: {e}", p.display())))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        },
    };
    let insecure_open_api = if flags.insecure_open_api {
        true
    } else {
        match env.get(&["IMS_INSECURE_OPEN_API"]) {
            Some((n, v)) => parse_bool(&n, &v)?,
            None => file.insecure_open_api.unwrap_or(false),
        }
    };
    if api_token.as_deref() == Some("") {
        return Err(err("IMS_API_TOKEN", "the token is empty"));
    }
    let executor = match env.get(&["IMS_JOB_EXECUTOR"]).or_else(|| {
        file.jobs
            .executor
            .clone()
            .map(|v| ("jobs.executor".to_string(), v))
    }) {
        None => ExecutorKind::Local,
        Some((n, v)) => match v.trim().to_ascii_lowercase().as_str() {
            "local" => ExecutorKind::Local,
            "none" | "record-only" => ExecutorKind::None,
            _ => return Err(err(&n, format!("{v:?} is not an executor (local or none)"))),
        },
    };
    let agent_api_url = env
        .get(&["IMS_AGENT_API_URL"])
        .map(|(_, v)| v)
        .or(file.jobs.agent_api_url.clone());
    if let Some((n, v)) = env.get(&["IMS_JOB_HEARTBEAT_TIMEOUT"]).or_else(|| {
        file.jobs
            .heartbeat_timeout
            .clone()
            .map(|v| ("jobs.heartbeat_timeout".to_string(), v))
    }) {
        svc.job_heartbeat_timeout = parse_duration(&n, &v)?;
    }
    if let Some((n, v)) = env.get(&["IMS_ARTIFACT_LEASE"]).or_else(|| {
        file.artifact_lease
            .clone()
            .map(|v| ("artifact_lease".to_string(), v))
    }) {
        svc.artifact_lease = parse_duration(&n, &v)?;
    }
    if let Some((n, v)) = env.get(&["IMS_JOB_USER_DEADLINE"]).or_else(|| {
        file.jobs
            .user_deadline
            .clone()
            .map(|v| ("jobs.user_deadline".to_string(), v))
    }) {
        svc.job_user_deadline = parse_duration(&n, &v)?;
    }
    let mut agent_env = vec![(
        "IMS_AGENT_BOOT_IMAGES_BUCKET".to_string(),
        svc.boot_images_bucket.clone(),
    )];
    if let Some((n, v)) = env.get(&["IMS_JOB_ORPHAN_TIMEOUT"]).or_else(|| {
        file.jobs
            .orphan_timeout
            .clone()
            .map(|v| ("jobs.orphan_timeout".to_string(), v))
    }) {
        let t = parse_duration(&n, &v)?;
        agent_env.push(("IMS_AGENT_ORPHAN_TIMEOUT".into(), t.as_secs().to_string()));
    }
    let ca = env
        .get(&["IMS_JOB_CA_CERT"])
        .map(|(n, v)| (n, PathBuf::from(v)))
        .or_else(|| {
            file.jobs
                .ca_cert
                .clone()
                .map(|p| ("jobs.ca_cert".to_string(), p))
        });
    if let Some((n, p)) = ca {
        if !p.is_file() {
            return Err(err(&n, format!("{} is not a readable file", p.display())));
        }
        let p = absolute(&n, &p)?;
        agent_env.push(("IMS_AGENT_CA_CERT".into(), p.display().to_string()));
    }
    if let Some(h) = env
        .get(&["IMS_JOB_SSH_HOST"])
        .map(|(_, v)| v)
        .or(file.jobs.ssh_host.clone())
    {
        agent_env.push(("IMS_AGENT_SSH_HOST".into(), h));
    }
    // Where sessions' sshd listen: an address and a port range, for firewalls.
    if let Some((n, a)) = env.get(&["IMS_JOB_SSH_LISTEN"]).or_else(|| {
        file.jobs
            .ssh_listen
            .clone()
            .map(|v| ("jobs.ssh_listen".to_string(), v))
    }) {
        // IPv4: slirp4netns forwards the session's port to sshd in its sandbox, IPv4 only.
        let ip: std::net::Ipv4Addr = a.trim().parse().map_err(|_| {
            err(
                &n,
                format!("{a:?} is not an IPv4 address (sessions are reached over IPv4)"),
            )
        })?;
        agent_env.push(("IMS_AGENT_SSH_LISTEN".into(), ip.to_string()));
    }
    if let Some((n, r)) = env.get(&["IMS_JOB_SSH_PORTS"]).or_else(|| {
        file.jobs
            .ssh_ports
            .clone()
            .map(|v| ("jobs.ssh_ports".to_string(), v))
    }) {
        let range: ims_jobs::session::PortRange = r.parse().map_err(|e: String| err(&n, e))?;
        agent_env.push(("IMS_AGENT_SSH_PORTS".into(), range.to_string()));
    }
    let mut compression = ims_rootfs::Compression::default();
    if let Some((n, c)) = env.get(&["IMS_JOB_COMPRESSION"]).or_else(|| {
        file.jobs
            .compression
            .clone()
            .map(|v| ("jobs.compression".to_string(), v))
    }) {
        if !["zstd", "gzip", "xz", "lz4", "lzo"].contains(&c.trim()) {
            return Err(err(
                &n,
                format!("{c:?} is not one of zstd, gzip, xz, lz4, lzo"),
            ));
        }
        compression = c.trim().parse().map_err(|e| err(&n, format!("{e}")))?;
        agent_env.push(("IMS_AGENT_COMPRESSION".into(), c.trim().to_string()));
    }
    let level = env
        .get(&["IMS_JOB_COMPRESSION_LEVEL"])
        .map(|(n, v)| {
            v.trim()
                .parse::<u32>()
                .map(|l| (n.clone(), l))
                .map_err(|_| err(&n, format!("{v:?} is not a number")))
        })
        .transpose()?
        .or_else(|| {
            file.jobs
                .compression_level
                .map(|l| ("jobs.compression_level".to_string(), l))
        });
    if let Some((n, l)) = level {
        compression.check_level(l).map_err(|e| err(&n, e))?;
        agent_env.push(("IMS_AGENT_COMPRESSION_LEVEL".into(), l.to_string()));
    }
    if let Some((n, v)) = env.get(&["IMS_JOB_REPO_TIMEOUT"]).or_else(|| {
        file.jobs
            .repo_timeout
            .clone()
            .map(|v| ("jobs.repo_timeout".to_string(), v))
    }) {
        let t = parse_duration(&n, &v)?;
        agent_env.push(("IMS_AGENT_REPO_TIMEOUT".into(), t.as_secs().to_string()));
    }
    let keys = env
        .get(&["IMS_JOB_SIGNING_KEYS"])
        .map(|(n, v)| (n, v.split(':').map(PathBuf::from).collect::<Vec<_>>()))
        .or_else(|| {
            file.jobs
                .signing_keys
                .clone()
                .map(|k| ("jobs.signing_keys".to_string(), k))
        });
    if let Some((n, keys)) = keys {
        let keys: Vec<PathBuf> = keys
            .into_iter()
            .filter(|k| !k.as_os_str().is_empty())
            .collect();
        for k in &keys {
            if !k.exists() {
                return Err(err(&n, format!("{} does not exist", k.display())));
            }
            if k.to_string_lossy().contains(':') {
                return Err(err(&n, format!("{} contains ':'", k.display())));
            }
        }
        let mut joined = Vec::with_capacity(keys.len());
        for k in &keys {
            joined.push(absolute(&n, k)?.display().to_string());
        }
        agent_env.push(("IMS_AGENT_SIGNING_KEYS".into(), joined.join(":")));
    }
    if let Some(k) = env
        .get(&["IMS_JOB_KIWI"])
        .map(|(_, v)| PathBuf::from(v))
        .or(file.jobs.kiwi.clone())
    {
        // A path (not a bare program name looked up in PATH) must not depend on the agent's
        // working directory.
        let k = if k.components().count() > 1 {
            absolute("IMS_JOB_KIWI", &k)?
        } else {
            k
        };
        agent_env.push(("IMS_AGENT_KIWI".into(), k.display().to_string()));
    }
    // One package cache for the host's builds (a build finding it busy uses its own).
    agent_env.push((
        "IMS_AGENT_KIWI_CACHE".into(),
        data_dir.join("kiwi-cache").display().to_string(),
    ));
    let job_token_key_file = env
        .get(&["IMS_JOB_TOKEN_KEY_FILE"])
        .map(|(_, v)| PathBuf::from(v))
        .or(file.auth.job_token_key_file.clone())
        .unwrap_or_else(|| data_dir.join("job-token.key"));
    let http = HttpConfig {
        header_timeout: match env.get(&["IMS_HTTP_HEADER_TIMEOUT"]).or_else(|| {
            file.http
                .header_timeout
                .clone()
                .map(|v| ("http.header_timeout".to_string(), v))
        }) {
            Some((n, v)) => parse_duration(&n, &v)?,
            None => ims_http::DEFAULT_HEADER_TIMEOUT,
        },
        idle_timeout: match env.get(&["IMS_HTTP_IDLE_TIMEOUT"]).or_else(|| {
            file.http
                .idle_timeout
                .clone()
                .map(|v| ("http.idle_timeout".to_string(), v))
        }) {
            Some((n, v)) => parse_duration(&n, &v)?,
            None => ims_http::DEFAULT_IDLE_TIMEOUT,
        },
        max_connections: match env.get(&["IMS_HTTP_MAX_CONNECTIONS"]).or_else(|| {
            file.http
                .max_connections
                .map(|v| ("http.max_connections".to_string(), v.to_string()))
        }) {
            Some((n, v)) => Some(
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|c| (1..=MAX_CONNECTIONS_LIMIT).contains(c))
                    .ok_or_else(|| {
                        err(
                            &n,
                            format!("{v:?} is not a number of connections (1 to {MAX_CONNECTIONS_LIMIT})"),
                        )
                    })? as usize,
            ),
            None => None,
        },
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
        node_ssh_key,
        api_token,
        insecure_open_api,
        executor,
        agent_api_url,
        agent_env,
        job_token_key_file,
        http,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            c.agent_env
                .iter()
                .any(|(k, v)| k == "IMS_AGENT_SSH_LISTEN" && v == "127.0.0.1"),
            "{:?}",
            c.agent_env
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
    fn create_job_settings_reach_the_agent() {
        let agent =
            |pairs: &[(&str, &str)]| load(&Flags::default(), &env(pairs)).map(|c| c.agent_env);
        let a = agent(&[
            ("IMS_JOB_COMPRESSION_LEVEL", "9"),
            ("IMS_JOB_REPO_TIMEOUT", "2m"),
            ("IMS_JOB_SIGNING_KEYS", "/etc/hostname:/etc"),
            ("IMS_JOB_ORPHAN_TIMEOUT", "90s"),
        ])
        .unwrap();
        let get = |k: &str| a.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
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
        let get = |k: &str| {
            c.agent_env
                .iter()
                .find(|(n, _)| n == k)
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
            c.agent_env
                .contains(&("IMS_AGENT_KIWI".into(), "kiwi-ng".into()))
        );
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
