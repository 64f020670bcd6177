//! Every setting of `ims serve` (and `ims migrate`, `ims s3-credentials`), declared once: its key
//! in the configuration file, its environment names, its flag, its parser, its default and its
//! help line. The configuration file's types ([`FileConfig`] and its sections), the loader's
//! look-ups ([`crate::config::load`]) and the README's settings table ([`readme_table`]) all come
//! from the table at the end of this file.
//!
//! Precedence: defaults < configuration file < environment (the names of a setting in order: the
//! `IMS_*` name before the original's) < flag. An empty environment variable counts as unset.

use crate::config::{ExecutorKind, LogFormat};
use ims_core::agent_env::{PATH_LIST_SEPARATOR, PortRange};
use ims_core::compression::Compression;
use ims_kubernetes::{Scratch, ServiceType};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
pub const DEFAULT_DATA_DIR: &str = "./ims-data";
/// The built-in S3 endpoint (embedded mode, when no external S3 is configured).
pub const DEFAULT_S3_LISTEN: &str = "127.0.0.1:9001";
/// The largest connection limit accepted.
pub const MAX_CONNECTIONS_LIMIT: u64 = 1_000_000;

/// A setting whose values are `T`.
pub struct Setting<T: 'static> {
    pub spec: Spec,
    /// Checks and converts a given value; the error is the message after `invalid setting NAME: `.
    pub parse: fn(Raw) -> Result<T, String>,
}

/// What a setting is, whatever its type.
pub struct Spec {
    /// Its key in the configuration file (`listen`, `jobs.namespace`); `None`: not in the file.
    pub key: Option<&'static str>,
    /// Its environment variables, first wins.
    pub env: &'static [&'static str],
    /// Its flag.
    pub flag: Option<&'static str>,
    pub default: Default,
    /// One line for the README's table.
    pub help: &'static str,
    /// Errors about a bad value name this, whichever source gave it (else the flag, the
    /// environment variable or the file key that did).
    pub reported_as: Option<&'static str>,
    /// The setting's value in a configuration file.
    pub file: fn(&FileConfig) -> Option<Raw>,
}

/// What applies when a setting is not given.
pub enum Default {
    /// This value, parsed as a given one would be.
    Value(&'static str),
    /// Described only: the code that uses the setting knows it (or it depends on other settings).
    Doc(&'static str),
}

/// A value as given: text (a flag, the environment, a file's scalar) or paths.
#[derive(Debug, Clone)]
pub enum Raw {
    Text(String),
    Path(PathBuf),
    Paths(Vec<PathBuf>),
}

impl Raw {
    fn text(self) -> String {
        match self {
            Raw::Text(t) => t,
            Raw::Path(p) => p.display().to_string(),
            Raw::Paths(p) => p
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(&PATH_LIST_SEPARATOR.to_string()),
        }
    }

    fn path(self) -> PathBuf {
        match self {
            Raw::Path(p) => p,
            other => PathBuf::from(other.text()),
        }
    }
}

impl From<String> for Raw {
    fn from(v: String) -> Raw {
        Raw::Text(v)
    }
}
impl From<PathBuf> for Raw {
    fn from(v: PathBuf) -> Raw {
        Raw::Path(v)
    }
}
impl From<Vec<PathBuf>> for Raw {
    fn from(v: Vec<PathBuf>) -> Raw {
        Raw::Paths(v)
    }
}
macro_rules! raw_from_display {
    ($($t:ty),*) => {$(
        impl From<$t> for Raw {
            fn from(v: $t) -> Raw {
                Raw::Text(v.to_string())
            }
        }
    )*};
}
raw_from_display!(bool, i64, u64, u32);

/// Declares the settings: for each, a `pub static NAME: Setting<T>`; the configuration file's
/// structs (a field of type `Option<FILE_TYPE>` per filed setting, the sections as tables); and
/// [`ALL`], every setting in the order of declaration.
macro_rules! settings {
    (
        top $Top:ident {
            $( $NAME:ident: $T:ty = $field:ident: $FT:ty { help: $help:literal, $($spec:tt)* } )*
        }
        $( section $sec:ident: $Sec:ident {
            $( $SNAME:ident: $ST:ty = $sfield:ident: $SFT:ty { help: $shelp:literal, $($sspec:tt)* } )*
        } )*
        not_in_the_file {
            $( $UNAME:ident: $UT:ty { $($uspec:tt)* } )*
        }
    ) => {
        /// The configuration file (`--config FILE`, `IMS_CONFIG`, or `<data-dir>/ims.toml`).
        #[derive(Debug, Clone, Deserialize, PartialEq, std::default::Default)]
        #[serde(deny_unknown_fields)]
        pub struct $Top {
            $( #[doc = $help] pub $field: Option<$FT>, )*
            $( #[serde(default)] pub $sec: $Sec, )*
        }
        $(
            #[derive(Debug, Clone, Deserialize, PartialEq, std::default::Default)]
            #[serde(deny_unknown_fields)]
            pub struct $Sec {
                $( #[doc = $shelp] pub $sfield: Option<$SFT>, )*
            }
        )*
        $( pub static $NAME: Setting<$T> = settings!(@setting
            Some(stringify!($field)), |f| f.$field.clone().map(Raw::from),
            help: $help, $($spec)*); )*
        $( $( pub static $SNAME: Setting<$ST> = settings!(@setting
            Some(concat!(stringify!($sec), ".", stringify!($sfield))),
            |f| f.$sec.$sfield.clone().map(Raw::from),
            help: $shelp, $($sspec)*); )* )*
        $( pub static $UNAME: Setting<$UT> = settings!(@setting None, |_| None, $($uspec)*); )*
        /// Every setting, in the order of declaration.
        pub static ALL: &[&Spec] = &[
            $( &$NAME.spec, )* $( $( &$SNAME.spec, )* )* $( &$UNAME.spec, )*
        ];
    };
    (@setting $key:expr, $file:expr,
        help: $help:literal,
        $(flag: $flag:literal,)?
        env: [$($env:literal),* $(,)?],
        parse: $parse:expr,
        default: $default:expr,
        $(reported_as: $reported:literal,)?
    ) => {
        Setting {
            spec: Spec {
                key: $key,
                env: &[$($env),*],
                flag: settings!(@opt $($flag)?),
                default: $default,
                help: $help,
                reported_as: settings!(@opt $($reported)?),
                file: $file,
            },
            parse: $parse,
        }
    };
    (@opt) => { None };
    (@opt $v:literal) => { Some($v) };
}

use Default::{Doc, Value};

settings! {
    top FileConfig {
        LISTEN: SocketAddr = listen: String {
            help: "listen address",
            flag: "--listen",
            env: ["IMS_LISTEN"],
            parse: address,
            default: Value(DEFAULT_LISTEN),
        }
        S3_LISTEN: SocketAddr = s3_listen: String {
            help: "built-in S3 endpoint (embedded mode)",
            flag: "--s3-listen",
            env: ["IMS_S3_LISTEN"],
            parse: address,
            default: Value(DEFAULT_S3_LISTEN),
        }
        S3_PUBLIC_URL: String = s3_public_url: String {
            help: "the URL clients are told to use for the built-in S3 endpoint (STS `EndpointURL`)",
            env: ["IMS_S3_PUBLIC_URL"],
            parse: http_url,
            default: Doc("`http://<s3_listen>`"),
            reported_as: "s3_public_url",
        }
        DATA_DIR: PathBuf = data_dir: PathBuf {
            help: "data directory",
            flag: "--data-dir",
            env: ["IMS_DATA_DIR"],
            // Made absolute once, here: every path derived from it (the job directories, the
            // agents' settings) stays right for processes started elsewhere.
            parse: |v| absolute(&v.path()),
            default: Value(DEFAULT_DATA_DIR),
            reported_as: "data_dir",
        }
        DATABASE_URL: String = database_url: String {
            help: "records database",
            flag: "--database-url",
            env: ["IMS_DATABASE_URL"],
            parse: database_url,
            default: Doc("SQLite `<data-dir>/ims.db`"),
            reported_as: "database_url",
        }
        LOG_FORMAT: LogFormat = log_format: String {
            help: "log format (`human`/`json`)",
            flag: "--log-format",
            env: ["IMS_LOG_FORMAT"],
            parse: log_format,
            default: Value("human"),
            reported_as: "log_format",
        }
        ARTIFACT_LEASE: Duration = artifact_lease: String {
            help: "how long unfinished artifact work (a delete's moves) stays with a replica that stopped renewing it",
            env: ["IMS_ARTIFACT_LEASE"],
            parse: duration,
            default: Doc("60s"),
        }
        LEADER_LEASE: Duration = leader_lease: String {
            help: "replicas on one PostgreSQL elect one to run the background work (job reconciler, remote-node passes); another takes over this long after it stops renewing",
            env: ["IMS_LEADER_LEASE"],
            parse: duration,
            default: Doc("15s"),
        }
        INSECURE_OPEN_API: bool = insecure_open_api: bool {
            help: "serve a token-less API on a non-loopback address (a lab only; loud warning)",
            flag: "--insecure-open-api",
            env: ["IMS_INSECURE_OPEN_API"],
            parse: boolean,
            default: Value("false"),
        }
    }
    section s3: S3File {
        S3_ENDPOINT: String = endpoint: String {
            help: "external S3 endpoint",
            env: ["IMS_S3_ENDPOINT", "S3_ENDPOINT"],
            parse: http_url,
            default: Doc("none: local filesystem + built-in endpoint"),
            reported_as: "S3_ENDPOINT",
        }
        S3_ACCESS_KEY: String = access_key: String {
            help: "external S3 access key",
            env: ["IMS_S3_ACCESS_KEY", "S3_ACCESS_KEY"],
            parse: text,
            default: Doc("required with an endpoint"),
        }
        S3_SECRET_KEY: String = secret_key: String {
            help: "external S3 secret key",
            env: ["IMS_S3_SECRET_KEY", "S3_SECRET_KEY"],
            parse: text,
            default: Doc("required with an endpoint"),
        }
        S3_REGION: String = region: String {
            help: "external S3 region",
            env: ["IMS_S3_REGION", "S3_REGION"],
            parse: text,
            default: Value("us-east-1"),
        }
        S3_PATH_STYLE: bool = path_style: bool {
            help: "external S3: path-style addressing",
            env: ["IMS_S3_PATH_STYLE"],
            parse: boolean,
            default: Value("true"),
        }
        S3_VERIFY_TLS: bool = verify_tls: bool {
            help: "external S3: TLS certificate verification",
            env: ["IMS_S3_VERIFY_TLS", "S3_SSL_VALIDATE"],
            parse: boolean,
            default: Value("true"),
        }
        S3_IMS_BUCKET: String = ims_bucket: String {
            help: "the IMS bucket (recipes, job logs)",
            env: ["IMS_S3_IMS_BUCKET", "S3_IMS_BUCKET"],
            parse: bucket,
            default: Doc("`ims`"),
            reported_as: "S3_IMS_BUCKET",
        }
        S3_BOOT_IMAGES_BUCKET: String = boot_images_bucket: String {
            help: "the bucket of images (new images go there)",
            env: ["IMS_S3_BOOT_IMAGES_BUCKET", "S3_BOOT_IMAGES_BUCKET"],
            parse: bucket,
            default: Doc("`boot-images`"),
            reported_as: "S3_BOOT_IMAGES_BUCKET",
        }
        S3_COPY_MULTIPART_THRESHOLD: u64 = copy_multipart_threshold: String {
            help: "moves of large objects on an external S3: multipart copy above this size (e.g. `5GiB`)",
            env: ["IMS_S3_COPY_MULTIPART_THRESHOLD"],
            parse: |v| bytes(v, 1, ims_artifacts::MAX_SINGLE_COPY),
            default: Doc("5GiB (the maximum)"),
        }
        S3_COPY_PART_SIZE: u64 = copy_part_size: String {
            help: "moves of large objects on an external S3: the part size of those copies (e.g. `512MiB`)",
            env: ["IMS_S3_COPY_PART_SIZE"],
            parse: |v| bytes(v, ims_artifacts::MIN_PART, ims_artifacts::MAX_SINGLE_COPY),
            default: Doc("512MiB (at least 5MiB)"),
        }
    }
    section jobs: JobsFile {
        DEFAULT_IMAGE_SIZE: i64 = default_image_size: i64 {
            help: "jobs' default `image_size` (GiB)",
            env: ["IMS_DEFAULT_IMAGE_SIZE", "DEFAULT_IMS_IMAGE_SIZE"],
            parse: positive,
            default: Doc("60"),
        }
        DEFAULT_MEM_SIZE: i64 = default_mem_size: i64 {
            help: "jobs' default `job_mem_size` (GiB)",
            env: ["IMS_DEFAULT_JOB_MEM_SIZE", "DEFAULT_IMS_JOB_MEM_SIZE"],
            parse: positive,
            default: Doc("8"),
        }
        JOB_NAMESPACE: String = namespace: String {
            help: "jobs' `kubernetes_namespace`",
            env: ["IMS_JOB_NAMESPACE", "DEFAULT_IMS_JOB_NAMESPACE"],
            parse: text,
            default: Doc("`ims`"),
        }
        CUSTOMER_ACCESS_SUBNET: String = customer_access_subnet: String {
            help: "job host names: subnet",
            env: ["JOB_CUSTOMER_ACCESS_SUBNET_NAME"],
            parse: text,
            default: Doc("`cmn`"),
        }
        CUSTOMER_ACCESS_DOMAIN: String = customer_access_domain: String {
            help: "job host names: domain",
            env: ["JOB_CUSTOMER_ACCESS_NETWORK_DOMAIN"],
            parse: text,
            default: Doc("`shasta.local`"),
        }
        ENABLE_DKMS: bool = enable_dkms: bool {
            help: "jobs' default `require_dkms`",
            env: ["IMS_JOB_ENABLE_DKMS", "JOB_ENABLE_DKMS"],
            parse: boolean,
            default: Doc("true"),
        }
        EMULATE_AARCH64: bool = emulate_aarch64: bool {
            help: "aarch64 jobs may run on an x86_64 host under qemu-user emulation, about 13x slower (needs `qemu-user-static`, `binfmt-support`)",
            env: ["IMS_JOB_EMULATE_AARCH64"],
            parse: boolean,
            default: Value("false"),
        }
        MAX_MANIFEST_SIZE: u64 = max_manifest_size: u64 {
            help: "manifest size limit (bytes)",
            env: ["MAX_IMAGE_MANIFEST_SIZE_BYTES"],
            parse: positive,
            default: Doc("1048576"),
        }
        EXECUTOR: ExecutorKind = executor: String {
            help: "job executor (`local`: agents as child processes; `kubernetes`: agents in Kubernetes Jobs; `none`: records only); remote build nodes take jobs first with `local` and `kubernetes`",
            env: ["IMS_JOB_EXECUTOR"],
            parse: executor,
            default: Value("local"),
        }
        AGENT_API_URL: String = agent_api_url: String {
            help: "API URL job agents use",
            env: ["IMS_AGENT_API_URL"],
            parse: text,
            default: Doc("the listen address (loopback if unspecified)"),
        }
        HEARTBEAT_TIMEOUT: Duration = heartbeat_timeout: String {
            help: "a silent agent's job ends in error after this long",
            env: ["IMS_JOB_HEARTBEAT_TIMEOUT"],
            parse: duration,
            default: Doc("60s"),
        }
        USER_DEADLINE: Duration = user_deadline: String {
            help: "a job waiting on its user ends in error after this long",
            env: ["IMS_JOB_USER_DEADLINE"],
            parse: duration,
            default: Doc("24h"),
        }
        ORPHAN_TIMEOUT: Duration = orphan_timeout: String {
            help: "an agent whose server does not answer stops after this long",
            env: ["IMS_JOB_ORPHAN_TIMEOUT"],
            parse: duration,
            default: Doc("1h"),
        }
        CA_CERT: PathBuf = ca_cert: PathBuf {
            help: "site CA certificate put into image roots",
            env: ["IMS_JOB_CA_CERT"],
            parse: |v| {
                let p = v.path();
                if !p.is_file() {
                    return Err(format!("{} is not a readable file", p.display()));
                }
                absolute(&p)
            },
            default: Doc("none"),
        }
        SSH_HOST: String = ssh_host: String {
            help: "host name in `connection_info`",
            env: ["IMS_JOB_SSH_HOST"],
            parse: text,
            default: Doc("this host's name"),
        }
        SSH_LISTEN: Ipv4Addr = ssh_listen: String {
            help: "IPv4 address sessions' sshd listen on",
            env: ["IMS_JOB_SSH_LISTEN"],
            // IPv4: slirp4netns forwards the session's port to sshd in its sandbox, IPv4 only.
            parse: |v| {
                let a = v.text();
                a.trim().parse().map_err(|_| {
                    format!("{a:?} is not an IPv4 address (sessions are reached over IPv4)")
                })
            },
            default: Doc("every address"),
        }
        SSH_PORTS: PortRange = ssh_ports: String {
            help: "ports sessions' sshd may listen on (`40000-40999`, for firewalls)",
            env: ["IMS_JOB_SSH_PORTS"],
            parse: |v| v.text().parse(),
            default: Doc("any free port"),
        }
        COMPRESSION: Compression = compression: String {
            help: "squashfs compression of job results",
            env: ["IMS_JOB_COMPRESSION"],
            parse: |v| {
                let c = v.text();
                c.parse()
                    .map_err(|_| format!("{c:?} is not one of {}", Compression::names()))
            },
            default: Doc("`zstd`"),
        }
        COMPRESSION_LEVEL: u32 = compression_level: u32 {
            help: "squashfs compression level of job results",
            env: ["IMS_JOB_COMPRESSION_LEVEL"],
            parse: |v| {
                let v = v.text();
                v.trim().parse().map_err(|_| format!("{v:?} is not a number"))
            },
            default: Doc("mksquashfs's (zstd 15); create jobs zstd 6"),
        }
        REPO_TIMEOUT: Duration = repo_timeout: String {
            help: "create jobs: how long to wait for the recipe's repositories",
            env: ["IMS_JOB_REPO_TIMEOUT"],
            parse: duration,
            default: Doc("500s"),
        }
        SIGNING_KEYS: Vec<PathBuf> = signing_keys: Vec<PathBuf> {
            help: "create jobs: kiwi `--signing-key`s (`:`-separated files or directories)",
            env: ["IMS_JOB_SIGNING_KEYS"],
            parse: signing_keys,
            default: Doc("the Debian archive keyring for apt recipes"),
        }
        KIWI: PathBuf = kiwi: PathBuf {
            help: "create jobs: the kiwi-ng program",
            env: ["IMS_JOB_KIWI"],
            // A path (not a bare program name looked up in PATH) must not depend on the agent's
            // working directory.
            parse: |v| {
                let k = v.path();
                if k.components().count() > 1 { absolute(&k) } else { Ok(k) }
            },
            default: Doc("`kiwi-ng`"),
            reported_as: "IMS_JOB_KIWI",
        }
    }
    section remote_build_nodes: NodesFile {
        NODE_SSH_KEY: PathBuf = ssh_key: PathBuf {
            help: "remote build node SSH key (root's key on the nodes); without it no node is used",
            env: ["IMS_REMOTE_BUILD_NODE_SSH_KEY"],
            parse: |v| {
                let p = v.path();
                if !p.is_file() {
                    return Err(format!("{} is not a readable file", p.display()));
                }
                absolute(&p)
            },
            default: Doc("none (status says so)"),
        }
        NODE_KNOWN_HOSTS: PathBuf = known_hosts: PathBuf {
            help: "the site's known-hosts file for nodes (entries by xname), besides the keys accepted through the API",
            env: ["IMS_REMOTE_BUILD_NODE_KNOWN_HOSTS"],
            parse: |v| {
                let p = v.path();
                if !p.is_file() {
                    return Err(format!("{} is not a readable file", p.display()));
                }
                let p = absolute(&p)?;
                if p.to_string_lossy().contains(char::is_whitespace) {
                    return Err("the path must not contain white space".into());
                }
                Ok(p)
            },
            default: Doc("none"),
        }
        NODE_ADDRESSES: Vec<(String, String)> = addresses: String {
            help: "addresses of nodes the DNS does not resolve (`XNAME=ADDRESS,…`)",
            env: ["IMS_REMOTE_BUILD_NODE_ADDRESSES"],
            parse: node_addresses,
            default: Doc("the xname (DNS)"),
        }
        NODE_DIR: String = dir: String {
            help: "directory on the nodes for the agent binary and the jobs' scratch space",
            env: ["IMS_REMOTE_BUILD_NODE_DIR"],
            parse: |v| {
                let d = v.text();
                let ok = d.starts_with('/')
                    && d.len() > 1
                    && !d.split('/').any(|c| c == "..")
                    && d.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
                if ok { Ok(d.trim_end_matches('/').to_string()) } else {
                    Err(format!("{d:?} is not an absolute path of letters, digits, '/', '.', '_', '-'"))
                }
            },
            default: Value(ims_core::node_wire::DEFAULT_BASE),
        }
        NODE_AGENT_X86_64: PathBuf = agent_x86_64: PathBuf {
            help: "the `ims` build copied to x86_64 nodes",
            env: ["IMS_REMOTE_BUILD_NODE_AGENT_X86_64"],
            parse: existing_file,
            default: Doc("this binary on an x86_64 server"),
        }
        NODE_AGENT_AARCH64: PathBuf = agent_aarch64: PathBuf {
            help: "the `ims` build copied to aarch64 nodes",
            env: ["IMS_REMOTE_BUILD_NODE_AGENT_AARCH64"],
            parse: existing_file,
            default: Doc("this binary on an aarch64 server; none otherwise"),
        }
        NODE_TIMEOUT: Duration = timeout: String {
            help: "bound on connecting to a node (a probe may take 3 times as long, copying the agent 10 minutes)",
            env: ["IMS_REMOTE_BUILD_NODE_TIMEOUT"],
            parse: duration,
            default: Value("10s"),
        }
        PLACEMENT_TIMEOUT: Duration = placement_timeout: String {
            help: "a job waiting for a free node slot ends in error after this long",
            env: ["IMS_JOB_PLACEMENT_TIMEOUT"],
            parse: duration,
            default: Value("1h"),
        }
    }
    section kubernetes: KubernetesFile {
        KUBE_CONFIG: PathBuf = kubeconfig: PathBuf {
            help: "`kubernetes` executor: kubeconfig of a server outside the cluster",
            env: ["IMS_KUBERNETES_KUBECONFIG"],
            parse: existing_file,
            default: Doc("the pod's service account, else `KUBECONFIG` or `~/.kube/config`"),
        }
        KUBE_IMAGE: String = image: String {
            help: "`kubernetes` executor: the image job pods run (`scripts/build-image.sh`, pushed to the site's registry)",
            env: ["IMS_KUBERNETES_IMAGE"],
            parse: |v| {
                let i = v.text();
                let ok = !i.is_empty() && i.len() <= 512 && i.chars().all(|c| c.is_ascii_graphic());
                if ok { Ok(i) } else { Err(format!("{i:?} is not an image reference")) }
            },
            default: Doc("none: required with `IMS_JOB_EXECUTOR=kubernetes`"),
        }
        KUBE_SERVICE_TYPE: ServiceType = service_type: String {
            help: "`kubernetes` executor: the type of job Services (`LoadBalancer`, `ClusterIP`, `NodePort`)",
            env: ["IMS_KUBERNETES_SERVICE_TYPE"],
            parse: |v| {
                let t = v.text();
                ServiceType::parse(&t).ok_or_else(|| format!("{t:?} is not one of {}", ServiceType::NAMES.join(", ")))
            },
            default: Value("LoadBalancer"),
        }
        KUBE_SERVICE_ANNOTATIONS: Vec<(String, String)> = service_annotations: String {
            help: "`kubernetes` executor: job Services' annotations, `KEY=VALUE,…`; `{hostname}`: the job's external name, `{pool}`: the address pool (MetalLB ≥ 0.14.9: `metallb.io/address-pool={pool}`)",
            env: ["IMS_KUBERNETES_SERVICE_ANNOTATIONS"],
            parse: annotations,
            default: Value("external-dns.alpha.kubernetes.io/hostname={hostname},metallb.universe.tf/address-pool={pool}"),
        }
        KUBE_ADDRESS_POOL: String = address_pool: String {
            help: "`kubernetes` executor: the customer-access address pool (`{pool}`)",
            env: ["IMS_KUBERNETES_ADDRESS_POOL", "JOB_CUSTOMER_ACCESS_NETWORK_ACCESS_POOL"],
            parse: text,
            default: Value("customer-management"),
        }
        KUBE_SCRATCH: Scratch = scratch: String {
            help: "`kubernetes` executor: job scratch space, `pvc` (5 × `build_env_size` GiB) or `emptydir` (on the node, same limit)",
            env: ["IMS_KUBERNETES_SCRATCH"],
            parse: |v| {
                let t = v.text();
                match t.to_ascii_lowercase().as_str() {
                    "pvc" => Ok(Scratch::Pvc),
                    "emptydir" => Ok(Scratch::EmptyDir),
                    _ => Err(format!("{t:?} is not `pvc` or `emptydir`")),
                }
            },
            default: Value("pvc"),
        }
        KUBE_STORAGE_CLASS: String = storage_class: String {
            help: "`kubernetes` executor: StorageClass of job PVCs",
            env: ["IMS_KUBERNETES_STORAGE_CLASS"],
            parse: dns_name,
            default: Doc("the cluster's default"),
        }
        KUBE_RUNTIME_CLASS: String = runtime_class: String {
            help: "`kubernetes` executor: RuntimeClass of job pods (Kata; with it the virtio-fs xattr annotation, on every job pod)",
            env: ["IMS_KUBERNETES_RUNTIME_CLASS"],
            parse: dns_name,
            default: Doc("none (the cluster's default runtime)"),
        }
        KUBE_SERVICE_ACCOUNT: String = service_account: String {
            help: "`kubernetes` executor: service account of job pods",
            env: ["IMS_KUBERNETES_SERVICE_ACCOUNT"],
            parse: dns_name,
            default: Doc("none: no API token in job pods"),
        }
        KUBE_POD_TIMEOUT: Duration = pod_timeout: String {
            help: "`kubernetes` executor: a job whose pod is not scheduled and started within this ends in error",
            env: ["IMS_KUBERNETES_POD_TIMEOUT"],
            parse: duration,
            default: Value("10m"),
        }
        KUBE_REQUEST_TIMEOUT: Duration = request_timeout: String {
            help: "`kubernetes` executor: a request to the API server not answered within this fails (a job's start answers 500)",
            env: ["IMS_KUBERNETES_REQUEST_TIMEOUT"],
            parse: duration,
            default: Value("30s"),
        }
        KUBE_TTL_AFTER_FINISHED: Duration = ttl_after_finished: String {
            help: "`kubernetes` executor: a finished Job and its pod (logs) are deleted after this",
            env: ["IMS_KUBERNETES_TTL_AFTER_FINISHED"],
            parse: duration,
            default: Value("7d"),
        }
        KUBE_DESTINATION_RULE: bool = destination_rule: bool {
            help: "`kubernetes` executor: an Istio DestinationRule (TLS off) per job Service, skipped without the CRD",
            env: ["IMS_KUBERNETES_DESTINATION_RULE"],
            parse: boolean,
            default: Value("false"),
        }
    }
    section auth: AuthFile {
        API_TOKEN_FILE: String = api_token_file: PathBuf {
            help: "file holding the administrator token the API then requires",
            env: ["IMS_API_TOKEN_FILE"],
            parse: |v| {
                let p = v.path();
                std::fs::read_to_string(&p)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))
            },
            default: Doc("open API (loopback only)"),
        }
        JOB_TOKEN_KEY_FILE: PathBuf = job_token_key_file: PathBuf {
            help: "file holding the job-token key (hex); replicas sharing a database share it",
            env: ["IMS_JOB_TOKEN_KEY_FILE"],
            parse: |v| Ok(v.path()),
            default: Doc("`<data-dir>/job-token.key`, created on first start"),
        }
    }
    section http: HttpFile {
        HTTP_HEADER_TIMEOUT: Duration = header_timeout: String {
            help: "connections (API and built-in S3 endpoint alike): a request head must arrive within",
            env: ["IMS_HTTP_HEADER_TIMEOUT"],
            parse: duration,
            default: Doc("30s"),
        }
        HTTP_IDLE_TIMEOUT: Duration = idle_timeout: String {
            help: "connections: closed after this long without a request in flight",
            env: ["IMS_HTTP_IDLE_TIMEOUT"],
            parse: duration,
            default: Doc("60s"),
        }
        HTTP_MAX_CONNECTIONS: usize = max_connections: u64 {
            help: "connections: at most this many per listener (more wait in the listen backlog)",
            env: ["IMS_HTTP_MAX_CONNECTIONS"],
            parse: |v| {
                let v = v.text();
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|c| (1..=MAX_CONNECTIONS_LIMIT).contains(c))
                    .map(|c| c as usize)
                    .ok_or_else(|| {
                        format!("{v:?} is not a number of connections (1 to {MAX_CONNECTIONS_LIMIT})")
                    })
            },
            default: Doc("a quarter of the open-file limit after 256 (at most 10,000; the soft limit is first raised to the hard one)"),
        }
    }
    not_in_the_file {
        CONFIG: PathBuf {
            help: "configuration file (TOML)",
            flag: "--config",
            env: ["IMS_CONFIG"],
            parse: |v| Ok(v.path()),
            default: Doc("`<data-dir>/ims.toml` if present"),
        }
        API_TOKEN: String {
            help: "the administrator token the API then requires (rather than `IMS_API_TOKEN_FILE`)",
            env: ["IMS_API_TOKEN"],
            parse: |v| Ok(v.text().trim().to_string()),
            default: Doc("open API (loopback only)"),
        }
        LOG: String {
            help: "log level (a `tracing` filter)",
            env: ["IMS_LOG"],
            parse: |v| Ok(v.text()),
            default: Doc("`info`"),
        }
    }
}

fn text(v: Raw) -> Result<String, String> {
    Ok(v.text())
}

fn address(v: Raw) -> Result<SocketAddr, String> {
    let v = v.text();
    v.parse()
        .map_err(|_| format!("{v:?} is not an ADDRESS:PORT"))
}

fn http_url(v: Raw) -> Result<String, String> {
    let u = v.text();
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(u)
    } else {
        Err(format!("{u:?} is not an http(s) URL"))
    }
}

fn database_url(v: Raw) -> Result<String, String> {
    let u = v.text();
    if ["postgres://", "postgresql://", "sqlite://"]
        .iter()
        .any(|s| u.starts_with(s))
    {
        Ok(u)
    } else {
        Err(format!("{u:?} is not a postgres:// or sqlite:// URL"))
    }
}

fn log_format(v: Raw) -> Result<LogFormat, String> {
    match v.text().as_str() {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not human or json")),
    }
}

fn executor(v: Raw) -> Result<ExecutorKind, String> {
    let v = v.text();
    match v.trim().to_ascii_lowercase().as_str() {
        "local" => Ok(ExecutorKind::Local),
        "none" | "record-only" => Ok(ExecutorKind::None),
        "kubernetes" => Ok(ExecutorKind::Kubernetes),
        _ => Err(format!("{v:?} is not an executor (local or none)")),
    }
}

/// A Kubernetes object name (RFC 1123 DNS subdomain).
fn dns_name(v: Raw) -> Result<String, String> {
    let n = v.text();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if n.len() <= 253 && n.split('.').all(label_ok) {
        Ok(n)
    } else {
        Err(format!(
            "{n:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

/// `KEY=VALUE,…`: Kubernetes annotation keys (`[prefix/]name`), values with only the
/// placeholders `{hostname}` and `{pool}`.
fn annotations(v: Raw) -> Result<Vec<(String, String)>, String> {
    let text = v.text();
    let mut out = vec![];
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, val)) = item.split_once('=') else {
            return Err(format!("{item:?} is not KEY=VALUE"));
        };
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let prefix_ok = prefix.is_none_or(|p| dns_name(Raw::Text(p.to_string())).is_ok());
        if !name_ok || !prefix_ok {
            return Err(format!("{k:?} is not an annotation key ([prefix/]name)"));
        }
        let rest = val.replace("{hostname}", "").replace("{pool}", "");
        if rest.contains(['{', '}']) {
            return Err(format!(
                "{val:?}: the only placeholders are {{hostname}} and {{pool}}"
            ));
        }
        if val.chars().any(char::is_control) {
            return Err(format!("{k:?}: the value has control characters"));
        }
        out.push((k.to_string(), val.to_string()));
    }
    Ok(out)
}

fn boolean(v: Raw) -> Result<bool, String> {
    let v = v.text();
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean (true/false)")),
    }
}

fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(v: Raw) -> Result<T, String> {
    let v = v.text();
    match v.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!("{v:?} is not a positive integer")),
    }
}

/// A duration: `90`, `90s`, `2m`, `24h`, `1d`, `2weeks`, … (at least one second).
fn duration(v: Raw) -> Result<Duration, String> {
    let v = v.text();
    let v = v.trim();
    let secs = match v.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => ims_core::input::parse_age(v),
    };
    match secs {
        Some(n) if n >= 1 => Ok(Duration::from_secs(n as u64)),
        _ => Err(format!("{v:?} is not a duration (e.g. 90s, 2m, 24h, 1d)")),
    }
}

/// A byte count: `1048576`, `8MiB`, `5GiB`, `512M` (binary multiples; `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, any case) within `min..=max`.
fn bytes(v: Raw, min: u64, max: u64) -> Result<u64, String> {
    let v = v.text();
    let t = v.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let not_a_size = || format!("{v:?} is not a size (e.g. 8MiB, 5GiB)");
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(not_a_size()),
    };
    match n
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
    {
        Some(b) if (min..=max).contains(&b) => Ok(b),
        Some(_) => Err(format!("{v:?} is not between {min} and {max} bytes")),
        None => Err(not_a_size()),
    }
}

fn bucket(v: Raw) -> Result<String, String> {
    let v = v.text();
    if ims_artifacts::valid_bucket(&v) {
        Ok(v)
    } else {
        Err(format!("{v:?} is not a valid S3 bucket name"))
    }
}

/// A file that exists, made absolute.
fn existing_file(v: Raw) -> Result<PathBuf, String> {
    let p = v.path();
    if !p.is_file() {
        return Err(format!("{} is not a readable file", p.display()));
    }
    absolute(&p)
}

/// `XNAME=ADDRESS,…`: names and addresses that are safe `ssh` arguments.
fn node_addresses(v: Raw) -> Result<Vec<(String, String)>, String> {
    use ims_server::executor::remote::ssh::safe_host;
    let v = v.text();
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((x, a)) if safe_host(x.trim()) && safe_host(a.trim()) => {
                Ok((x.trim().to_string(), a.trim().to_string()))
            }
            _ => Err(format!("{pair:?} is not XNAME=ADDRESS")),
        })
        .collect()
}

/// `p` made absolute against the working directory (without touching the filesystem).
fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("cannot make {} an absolute path: {e}", p.display()))
}

/// Files or directories that exist, made absolute (the agent joins them with `:`).
fn signing_keys(v: Raw) -> Result<Vec<PathBuf>, String> {
    let keys: Vec<PathBuf> = match v {
        Raw::Paths(p) => p,
        other => other
            .text()
            .split(PATH_LIST_SEPARATOR)
            .map(PathBuf::from)
            .collect(),
    };
    let keys: Vec<PathBuf> = keys
        .into_iter()
        .filter(|k| !k.as_os_str().is_empty())
        .collect();
    for k in &keys {
        if !k.exists() {
            return Err(format!("{} does not exist", k.display()));
        }
        if k.to_string_lossy().contains(PATH_LIST_SEPARATOR) {
            return Err(format!("{} contains '{PATH_LIST_SEPARATOR}'", k.display()));
        }
    }
    keys.iter().map(|k| absolute(k)).collect()
}

/// `ims serve --help` ends with every setting (`-h` shows the examples only).
pub fn add_to_help(c: clap::Command) -> clap::Command {
    let plain = |s: &str| s.replace('`', "");
    let mut t = String::from(
        "Settings (default < configuration file < environment < flag; a bad value stops start-up):",
    );
    for s in ALL {
        let mut names: Vec<String> = s.flag.iter().chain(s.env).map(|n| n.to_string()).collect();
        if let Some(k) = s.key {
            names.push(format!("file: {k}"));
        }
        let default = match s.default {
            Value(v) | Doc(v) => plain(v),
        };
        t.push_str(&format!(
            "\n  {}\n      {} (default: {default})",
            names.join(", "),
            plain(s.help)
        ));
    }
    let examples = c
        .get_after_help()
        .map(|h| format!("{h}\n\n"))
        .unwrap_or_default();
    c.after_long_help(format!("{examples}{t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's settings table (section "Configuration"), one row per setting.
    fn readme_table() -> String {
        let code = |s: &str| format!("`{s}`");
        let mut t = String::from(
            "| setting | flag / environment | file key | default |\n|---|---|---|---|\n",
        );
        for s in ALL {
            let names: Vec<String> = s.flag.iter().chain(s.env).map(|n| code(n)).collect();
            let key = match s.key.map(|k| k.split_once('.').unwrap_or(("", k))) {
                None => String::new(),
                Some(("", k)) => code(k),
                Some((section, k)) => format!("`[{section}] {k}`"),
            };
            let default = match s.default {
                Value(v) => code(v),
                Doc(d) => d.to_string(),
            };
            t.push_str(&format!(
                "| {} | {} | {key} | {default} |\n",
                s.help,
                names.join(", ")
            ));
        }
        t
    }

    /// The README's table is [`readme_table`]; when it is stale, the fresh one is printed for a
    /// copy-paste.
    #[test]
    fn readme_table_is_current() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let fresh = readme_table();
        let header = fresh.lines().next().unwrap();
        let at = readme
            .find(header)
            .expect("the settings table in README.md");
        let len = readme[at..].find("\n\n").unwrap_or(readme.len() - at) + 1;
        let current = &readme[at..at + len];
        assert!(
            current == fresh,
            "README.md's settings table is stale; replace it with:\n\n{fresh}"
        );
    }

    /// Every setting has an environment name, names are unique, and every flag is one of
    /// `ims serve`'s options (and is read: `Flags::value` knows it).
    #[test]
    fn names_are_unique_and_flags_exist() {
        let serve = crate::command().find_subcommand("serve").unwrap().clone();
        let longs: Vec<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        let flags = crate::config::Flags {
            config: Some("c".into()),
            listen: Some("l".into()),
            s3_listen: Some("s".into()),
            data_dir: Some("d".into()),
            database_url: Some("u".into()),
            log_format: Some("f".into()),
            insecure_open_api: true,
        };
        let mut seen = std::collections::HashSet::new();
        for s in ALL {
            assert!(!s.env.is_empty(), "{}", s.help);
            for n in s.flag.iter().chain(s.env).chain(s.key.iter()) {
                assert!(seen.insert(*n), "{n} declared twice");
            }
            if let Some(f) = s.flag {
                assert!(
                    longs.iter().any(|l| l == f),
                    "{f} is not an option of ims serve"
                );
                assert!(flags.value(f).is_some(), "{f} is not read");
            }
        }
    }
}
