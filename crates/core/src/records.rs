//! The persisted and returned record shapes (one serde type per record).
//!
//! Field order is alphabetical so that serialised bodies have the sorted key order the original's
//! Flask `jsonify` produces.

use crate::time::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Declares a closed set of wire strings as an enum: serde uses the strings (so records and bodies
/// are unchanged), `NAMES` is the strings in declaration order, `as_str`/`FromStr` convert, and
/// an unknown value fails to deserialise with `<field> "<value>" is not one of: …`.
macro_rules! wire_enum {
    (
        $(#[$m:meta])*
        $name:ident ($field:literal) {
            $($(#[$vm:meta])* $v:ident = $s:literal,)+
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];
            /// Every value's wire string, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($s,)+];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }
        }

        // By hand: the derive does not see serde renames made by a macro.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some($name::NAMES.iter().copied()))
                    .into()
            }
        }

        impl ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(not_one_of($field, s, $name::NAMES)),
                }
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn not_one_of(field: &str, value: &str, allowed: &[&str]) -> String {
    format!("{field} {value:?} is not one of: {}", allowed.join(", "))
}

wire_enum! {
    /// A recipe's, image's or job's architecture.
    Arch("arch") {
        X86_64 = "x86_64",
        Aarch64 = "aarch64",
    }
}

impl Arch {
    /// The default kernel file name (`vmlinuz` on x86_64, `Image` on aarch64).
    pub fn default_kernel_file_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "vmlinuz",
            Arch::Aarch64 => "Image",
        }
    }
}

wire_enum! {
    /// A job's kind.
    JobType("job_type") {
        Create = "create",
        Customize = "customize",
    }
}

wire_enum! {
    /// A job's status: the original's `STATUS_TYPES`, in its order.
    JobStatus("status") {
        Creating = "creating",
        FetchingImage = "fetching_image",
        FetchingRecipe = "fetching_recipe",
        WaitingForRepos = "waiting_for_repos",
        BuildingImage = "building_image",
        PackagingArtifacts = "packaging_artifacts",
        WaitingOnUser = "waiting_on_user",
        Error = "error",
        Success = "success",
    }
}

impl JobStatus {
    /// `success` or `error`: the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Error)
    }
}

wire_enum! {
    /// The state of a job's SSH session (`ssh_containers[].status`, and the agent's report).
    SshStatus("status") {
        Pending = "pending",
        Establishing = "establishing",
        Running = "running",
        Stopped = "stopped",
    }
}

wire_enum! {
    /// What a user asked of a job waiting on them (`POST /v3/jobs/{id}/complete|fail`).
    UserRequest("request") {
        Complete = "complete",
        Fail = "fail",
    }
}

pub const ARCHES: &[&str] = Arch::NAMES;
pub const DEFAULT_ARCH: &str = Arch::X86_64.as_str();
pub const RECIPE_TYPES: &[&str] = &["kiwi-ng", "packer"];
/// Accepted `linux_distribution` values: the original's three first, then the additions.
pub const LINUX_DISTRIBUTIONS: &[&str] = &[
    "sles12",
    "sles15",
    "centos7",
    "sles16",
    "opensuse15",
    "opensuse16",
    "rhel8",
    "rhel9",
    "rhel10",
    "rocky8",
    "rocky9",
    "rocky10",
    "almalinux8",
    "almalinux9",
    "almalinux10",
    "debian11",
    "debian12",
    "debian13",
    "ubuntu22",
    "ubuntu24",
];
pub const JOB_TYPES: &[&str] = JobType::NAMES;
/// The original's `STATUS_TYPES`, in its order.
pub const JOB_STATUSES: &[&str] = JobStatus::NAMES;
pub const LINK_TYPES: &[&str] = &["s3"];

fn default_arch() -> Arch {
    Arch::X86_64
}
fn default_true() -> bool {
    true
}
fn default_template_dictionary() -> Option<Vec<KeyValue>> {
    Some(vec![])
}

/// Deserializes `null` as the type's default (the original dumps absent strings as `""`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A pointer to an object in S3: `path` is `s3://<bucket>/<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactLink {
    #[serde(default, deserialize_with = "null_as_default")]
    pub etag: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl ArtifactLink {
    pub fn s3(path: impl Into<String>, etag: impl Into<String>) -> Self {
        ArtifactLink {
            etag: etag.into(),
            path: path.into(),
            kind: "s3".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PublicKey {
    pub created: Timestamp,
    pub id: String,
    pub name: String,
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recipe {
    #[serde(default = "default_arch")]
    #[schema(value_type = String)]
    pub arch: Arch,
    pub created: Timestamp,
    pub id: String,
    #[serde(default)]
    pub link: Option<ArtifactLink>,
    pub linux_distribution: String,
    pub name: String,
    pub recipe_type: String,
    #[serde(default = "default_true")]
    pub require_dkms: bool,
    #[serde(default = "default_template_dictionary")]
    pub template_dictionary: Option<Vec<KeyValue>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    #[serde(default = "default_arch")]
    #[schema(value_type = String)]
    pub arch: Arch,
    pub created: Timestamp,
    pub id: String,
    #[serde(default)]
    pub link: Option<ArtifactLink>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectionInfo {
    pub host: String,
    pub port: u16,
}

/// The `connection_info` key of the address users reach from outside (the original's external-dns
/// name; on Kubernetes the job Service's load-balancer address once it has one).
pub const CUSTOMER_ACCESS: &str = "customer_access";
/// The `connection_info` key of the address inside the cluster (the job Service's DNS name).
pub const CLUSTER_LOCAL: &str = "cluster.local";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshContainer {
    #[serde(default)]
    pub connection_info: BTreeMap<String, ConnectionInfo>,
    #[serde(default)]
    pub jail: bool,
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_pending")]
    #[schema(value_type = String)]
    pub status: SshStatus,
}

fn default_pending() -> SshStatus {
    SshStatus::Pending
}
fn default_namespace() -> String {
    "default".into()
}
fn default_initrd() -> String {
    "initrd".into()
}
/// The kernel parameters file jobs and `ims images import` look for in the image root's `/boot`
/// when none is named.
pub const DEFAULT_KERNEL_PARAMETERS_FILE_NAME: &str = "kernel-parameters";

fn default_kernel_parameters() -> String {
    DEFAULT_KERNEL_PARAMETERS_FILE_NAME.into()
}
fn default_kernel() -> String {
    "vmlinuz".into()
}
fn default_image_size() -> i64 {
    60
}
fn default_mem_size() -> i64 {
    8
}

/// A job record: always the same 24 keys on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    #[serde(default = "default_arch")]
    #[schema(value_type = String)]
    pub arch: Arch,
    pub artifact_id: String,
    #[serde(default = "default_image_size")]
    pub build_env_size: i64,
    pub created: Timestamp,
    #[serde(default)]
    pub enable_debug: bool,
    pub id: String,
    pub image_root_archive_name: String,
    #[serde(default = "default_initrd")]
    pub initrd_file_name: String,
    #[serde(default = "default_mem_size")]
    pub job_mem_size: i64,
    #[schema(value_type = String)]
    pub job_type: JobType,
    #[serde(default = "default_kernel")]
    pub kernel_file_name: String,
    #[serde(default = "default_kernel_parameters")]
    pub kernel_parameters_file_name: String,
    #[serde(default)]
    pub kubernetes_configmap: Option<String>,
    #[serde(default)]
    pub kubernetes_job: Option<String>,
    #[serde(default = "default_namespace")]
    pub kubernetes_namespace: String,
    #[serde(default)]
    pub kubernetes_pvc: Option<String>,
    #[serde(default)]
    pub kubernetes_secret: Option<String>,
    #[serde(default)]
    pub kubernetes_service: Option<String>,
    pub public_key_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub remote_build_node: String,
    #[serde(default = "default_true")]
    pub require_dkms: bool,
    #[serde(default)]
    pub resultant_image_id: Option<String>,
    #[serde(default)]
    pub ssh_containers: Option<Vec<SshContainer>>,
    #[schema(value_type = String)]
    pub status: JobStatus,
}

/// A registered remote build node. The original stores the xname only; the other fields are
/// IMS-rs extensions (absent from the JSON while they have their defaults, so the original's
/// clients see the shape they know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RemoteBuildNode {
    pub xname: String,
    /// Jobs the node runs at once; absent: derived from the node's cores and memory as probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// A drained node gets no new jobs; the jobs it runs finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// The node's SSH host keys the administrator accepted (`TYPE BASE64`, as in `known_hosts`);
    /// the server refuses any other key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<String>,
}

impl RemoteBuildNode {
    pub fn new(xname: impl Into<String>) -> RemoteBuildNode {
        RemoteBuildNode {
            xname: xname.into(),
            capacity: None,
            drained: false,
            host_keys: Vec::new(),
        }
    }
}

/// Internal: one reserved job slot of a remote build node. The id is `<xname>/<slot>` with
/// `slot < capacity`, so the table's unique ids are what keeps two placements (in one process or
/// in two replicas) from taking the same slot: the second insert conflicts. Written in the
/// transaction that assigns the job to the node; removed when the job ends or goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlot {
    pub id: String,
    pub created: Timestamp,
    pub xname: String,
    pub slot: u32,
    pub job_id: String,
}

impl NodeSlot {
    pub fn id_of(xname: &str, slot: u32) -> String {
        format!("{xname}/{slot}")
    }
}

/// Internal: a lease that elects one replica (of several `ims serve` on one PostgreSQL) for a duty,
/// such as the background work (`ims_server::service::leases`). The id is the duty's name. The
/// holder renews it by a conditional update at the row's version; another replica takes it over
/// only after it saw the row unchanged for `ttl_ms` on its own clock, so the times below are for
/// people reading the table, not compared across hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The duty's name.
    pub id: String,
    pub created: Timestamp,
    /// Who holds it: `<host>/<pid>/<random>`, unique per process.
    pub holder: String,
    /// When the holder took it.
    pub acquired: Timestamp,
    /// The holder's last renewal.
    pub renewed: Timestamp,
    /// `renewed` + `ttl_ms` by the holder's clock.
    pub expires: Timestamp,
    /// How long the row may stay unchanged before another replica takes it over (milliseconds).
    pub ttl_ms: u64,
}

/// The live status of a remote build node (recomputed on each request, never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[allow(non_snake_case)]
pub struct RemoteBuildNodeStatus {
    pub ableToRunJobs: bool,
    pub nodeArch: String,
    pub numCurrentJobs: i64,
    pub podmanStatus: String,
    pub sshStatus: String,
    pub xname: String,
    // IMS-rs extensions (what placement uses).
    /// Jobs the node takes at once (its record's `capacity`, else derived from the probe); 0
    /// when unknown.
    #[serde(default)]
    pub capacity: u32,
    /// Slots reserved for jobs on this node in the records store.
    #[serde(default)]
    pub reservedSlots: u32,
    #[serde(default)]
    pub drained: bool,
    /// Whether the node's host key is pinned (accepted or configured).
    #[serde(default)]
    pub hostKeyPinned: bool,
    /// Why the node cannot run jobs (or the last failure to start a job there); empty when none.
    #[serde(default)]
    pub lastError: String,
}

impl RemoteBuildNodeStatus {
    pub fn unknown(xname: &str) -> Self {
        RemoteBuildNodeStatus {
            ableToRunJobs: false,
            nodeArch: "Unknown".into(),
            numCurrentJobs: -1,
            podmanStatus: "Unknown".into(),
            sshStatus: "Unknown".into(),
            xname: xname.into(),
            capacity: 0,
            reservedSlots: 0,
            drained: false,
            hostKeyPinned: false,
            lastError: String::new(),
        }
    }
}

/// A soft-deleted record: the active record's fields plus `deleted`.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted<T> {
    pub record: T,
    pub deleted: Timestamp,
}

impl<T: Serialize> Serialize for Deleted<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(&self.record).map_err(serde::ser::Error::custom)?;
        if let Value::Object(m) = &mut v {
            m.insert("deleted".into(), Value::String(self.deleted.to_wire()));
        }
        v.serialize(s)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Deleted<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut m = Map::<String, Value>::deserialize(d)?;
        let deleted = m
            .remove("deleted")
            .ok_or_else(|| serde::de::Error::missing_field("deleted"))?;
        let deleted: Timestamp =
            serde_json::from_value(deleted).map_err(serde::de::Error::custom)?;
        let record = serde_json::from_value(Value::Object(m)).map_err(serde::de::Error::custom)?;
        Ok(Deleted { record, deleted })
    }
}

pub type DeletedPublicKey = Deleted<PublicKey>;
pub type DeletedRecipe = Deleted<Recipe>;
pub type DeletedImage = Deleted<Image>;

/// What the store needs to know about a record type: its table and its key.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    const TABLE: Table;
    fn id(&self) -> &str;
    /// Creation time (ordering); nodes have none.
    fn created(&self) -> Option<Timestamp>;
    /// The artifact link path, indexed for uniqueness checks.
    fn link_path(&self) -> Option<&str> {
        None
    }
    /// Job status and type, indexed for filtered deletes.
    fn job_fields(&self) -> (Option<&str>, Option<&str>) {
        (None, None)
    }
    /// Checks what deserialisation alone does not (id form, string sets): records from outside the
    /// API (`ims migrate import`) must be ones the API could have produced.
    fn check(&self) -> Result<(), String>;
}

/// Whether `id` is a record id as the server makes them (a lower-case hyphenated UUID): safe as a
/// path component and a command-line argument.
pub fn check_id(id: &str) -> Result<(), String> {
    match uuid::Uuid::parse_str(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(format!("id {id:?} is not a lower-case hyphenated UUID")),
    }
}

fn check_enum(field: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(not_one_of(field, value, allowed))
    }
}

impl PublicKey {
    fn check_fields(&self) -> Result<(), String> {
        check_id(&self.id)
    }
}

impl Recipe {
    fn check_fields(&self) -> Result<(), String> {
        check_id(&self.id)?;
        check_enum("recipe_type", &self.recipe_type, RECIPE_TYPES)?;
        check_enum(
            "linux_distribution",
            &self.linux_distribution,
            LINUX_DISTRIBUTIONS,
        )
    }
}

impl Image {
    fn check_fields(&self) -> Result<(), String> {
        // The arch is checked by deserialisation (an enum).
        check_id(&self.id)
    }
}

/// The tables of the records store (one per record kind, as the original's data files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    PublicKeys,
    Recipes,
    Images,
    Jobs,
    RemoteBuildNodes,
    DeletedPublicKeys,
    DeletedRecipes,
    DeletedImages,
    /// Internal: the running state of jobs ([`JobRun`]); not a wire resource, not in [`Table::ALL`]
    /// (so `ims migrate` neither exports nor imports it).
    JobRuns,
    /// Internal: reserved job slots of remote build nodes ([`NodeSlot`]); not in [`Table::ALL`].
    NodeSlots,
    /// Internal: artifact work a committed record change still owes (moves, deletes), written in the
    /// same transaction as the change and removed once done; not in [`Table::ALL`].
    ArtifactJournal,
    /// Internal: leases that elect one replica for a duty ([`Lease`]); not in [`Table::ALL`].
    Leases,
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::PublicKeys,
        Table::Recipes,
        Table::Images,
        Table::Jobs,
        Table::RemoteBuildNodes,
        Table::DeletedPublicKeys,
        Table::DeletedRecipes,
        Table::DeletedImages,
    ];

    /// The SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::PublicKeys => "public_keys",
            Table::Recipes => "recipes",
            Table::Images => "images",
            Table::Jobs => "jobs",
            Table::RemoteBuildNodes => "remote_build_nodes",
            Table::DeletedPublicKeys => "deleted_public_keys",
            Table::DeletedRecipes => "deleted_recipes",
            Table::DeletedImages => "deleted_images",
            Table::JobRuns => "job_runs",
            Table::NodeSlots => "node_slots",
            Table::ArtifactJournal => "artifact_journal",
            Table::Leases => "leases",
        }
    }

    /// The original's data file for this table (`ims migrate`).
    pub fn original_file(self) -> &'static str {
        match self {
            Table::PublicKeys => "v2_public_keys.json",
            Table::Recipes => "v2.2_recipes.json",
            Table::Images => "v2.1_images.json",
            Table::Jobs => "v2.4_jobs.json",
            Table::RemoteBuildNodes => "v2.0_remote_build_nodes.json",
            Table::DeletedPublicKeys => "v3_deleted_public_keys.json",
            Table::DeletedRecipes => "v3.2_deleted_recipes.json",
            Table::DeletedImages => "v3.1_deleted_images.json",
            // Not one of the original's files: never read or written by `ims migrate`.
            Table::JobRuns => "job_runs.json",
            Table::NodeSlots => "node_slots.json",
            Table::ArtifactJournal => "artifact_journal.json",
            Table::Leases => "leases.json",
        }
    }

    /// Older file names of the same table, newest first (the original's upgrade hook copied these forward).
    pub fn legacy_files(self) -> &'static [&'static str] {
        match self {
            Table::Recipes => &["v2.1_recipes.json", "v2_recipes.json"],
            Table::Images => &["v2_images.json"],
            Table::Jobs => &["v2.2_jobs.json", "v2.1_jobs.json", "v2_jobs.json"],
            Table::DeletedRecipes => &["v3.1_deleted_recipes.json", "v3_deleted_recipes.json"],
            Table::DeletedImages => &["v3_deleted_images.json"],
            _ => &[],
        }
    }
}

macro_rules! plain_record {
    ($t:ty, $table:expr) => {
        impl Record for $t {
            const TABLE: Table = $table;
            fn id(&self) -> &str {
                &self.id
            }
            fn created(&self) -> Option<Timestamp> {
                Some(self.created)
            }
            fn link_path(&self) -> Option<&str> {
                link_path_of(self)
            }
            fn check(&self) -> Result<(), String> {
                self.check_fields()
            }
        }
    };
}

trait MaybeLink {
    fn link_opt(&self) -> Option<&ArtifactLink>;
}
impl MaybeLink for PublicKey {
    fn link_opt(&self) -> Option<&ArtifactLink> {
        None
    }
}
impl MaybeLink for Recipe {
    fn link_opt(&self) -> Option<&ArtifactLink> {
        self.link.as_ref()
    }
}
impl MaybeLink for Image {
    fn link_opt(&self) -> Option<&ArtifactLink> {
        self.link.as_ref()
    }
}
fn link_path_of<T: MaybeLink>(r: &T) -> Option<&str> {
    r.link_opt().map(|l| l.path.as_str())
}

plain_record!(PublicKey, Table::PublicKeys);
plain_record!(Recipe, Table::Recipes);
plain_record!(Image, Table::Images);

impl Record for Job {
    const TABLE: Table = Table::Jobs;
    fn id(&self) -> &str {
        &self.id
    }
    fn created(&self) -> Option<Timestamp> {
        Some(self.created)
    }
    fn job_fields(&self) -> (Option<&str>, Option<&str>) {
        (Some(self.status.as_str()), Some(self.job_type.as_str()))
    }
    fn check(&self) -> Result<(), String> {
        // Job type, status and arch are checked by deserialisation (enums).
        check_id(&self.id)
    }
}

/// Internal: what the server knows about a job while it runs — where its agent is, when it last
/// reported, what the user asked for. Never served as is; removed with its job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobRun {
    /// The job's id.
    pub id: String,
    pub created: Timestamp,
    /// The executor that started the agent (`local`, …).
    pub executor: String,
    /// The host the agent runs on (local executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The agent's process id and start time (clock ticks since boot), to recognise it after a
    /// server restart (local executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    /// The agent's last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Timestamp>,
    /// What the agent said it is doing (for `ims jobs describe` and logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `complete` or `fail`, asked through the API (`ims jobs complete|fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<UserRequest>,
    /// When the job entered `waiting_on_user` (for the user deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Timestamp>,
    /// Log chunks stored so far (the next chunk's storage index).
    #[serde(default)]
    pub log_chunks: u64,
    /// The next chunk number expected from the agent (its own count, for idempotent retries;
    /// notes the server adds do not count).
    #[serde(default)]
    pub agent_log_seq: u64,
    /// Why the server ended the job in `error` (agent lost, deadline), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Log bytes received so far.
    #[serde(default)]
    pub log_bytes: u64,
    /// The public host key of the job's sshd, as its agent reported it (clients pin it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
    /// The id the job's new image gets, chosen by the server the first time the agent asks for
    /// S3 credentials (they may write only under it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// When the job reached `success` or `error` (its token's grace period counts from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Timestamp>,
    /// Since when the job waits for a free slot on a remote build node (no agent runs yet: the
    /// reconciler leaves it to the placement timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_wait: Option<Timestamp>,
    /// When its agent was started (silence counts from then until the first heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched: Option<Timestamp>,
}

impl Record for JobRun {
    const TABLE: Table = Table::JobRuns;
    fn id(&self) -> &str {
        &self.id
    }
    fn created(&self) -> Option<Timestamp> {
        Some(self.created)
    }
    fn check(&self) -> Result<(), String> {
        check_id(&self.id)
    }
}

impl Record for NodeSlot {
    const TABLE: Table = Table::NodeSlots;
    fn id(&self) -> &str {
        &self.id
    }
    fn created(&self) -> Option<Timestamp> {
        Some(self.created)
    }
    fn check(&self) -> Result<(), String> {
        if self.id != NodeSlot::id_of(&self.xname, self.slot) {
            return Err(format!(
                "slot id {:?} does not match its node and number",
                self.id
            ));
        }
        check_id(&self.job_id)
    }
}

impl Record for Lease {
    const TABLE: Table = Table::Leases;
    fn id(&self) -> &str {
        &self.id
    }
    fn created(&self) -> Option<Timestamp> {
        Some(self.created)
    }
    fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.holder.is_empty() {
            return Err("a lease needs a name and a holder".into());
        }
        Ok(())
    }
}

impl Record for RemoteBuildNode {
    const TABLE: Table = Table::RemoteBuildNodes;
    fn id(&self) -> &str {
        &self.xname
    }
    fn created(&self) -> Option<Timestamp> {
        None
    }
    fn check(&self) -> Result<(), String> {
        if self.xname.trim().is_empty() || self.xname.chars().any(char::is_whitespace) {
            return Err(format!(
                "xname {:?} is empty or contains white space",
                self.xname
            ));
        }
        Ok(())
    }
}

macro_rules! deleted_record {
    ($t:ty, $table:expr) => {
        impl Record for Deleted<$t> {
            const TABLE: Table = $table;
            fn id(&self) -> &str {
                &self.record.id
            }
            fn created(&self) -> Option<Timestamp> {
                Some(self.record.created)
            }
            fn check(&self) -> Result<(), String> {
                self.record.check_fields()
            }
        }
    };
}
deleted_record!(PublicKey, Table::DeletedPublicKeys);
deleted_record!(Recipe, Table::DeletedRecipes);
deleted_record!(Image, Table::DeletedImages);

/// A fresh lower-case UUIDv4 string.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_has_24_keys_and_legacy_defaults() {
        let v = json!({"id": "a", "created": "2020-01-01T00:00:00", "job_type": "create",
            "artifact_id": "b", "public_key_id": "c", "image_root_archive_name": "n", "status": "success"});
        let j: Job = serde_json::from_value(v).unwrap();
        assert_eq!(j.kubernetes_namespace, "default");
        assert_eq!(j.arch, "x86_64");
        let out = serde_json::to_value(&j).unwrap();
        assert_eq!(out.as_object().unwrap().len(), 24);
    }

    /// Every enum value is its wire string in serde, `as_str` and `FromStr` alike, and the
    /// tables the validators use are the enums' (the original's order).
    #[test]
    fn wire_enums_are_their_strings() {
        fn check<T>(all: &[T], names: &[&str])
        where
            T: Copy + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned,
            T: std::str::FromStr<Err = String> + std::fmt::Display,
        {
            assert_eq!(all.len(), names.len());
            for (v, n) in all.iter().zip(names) {
                assert_eq!(serde_json::to_value(v).unwrap(), json!(n));
                assert_eq!(serde_json::from_value::<T>(json!(n)).unwrap(), *v);
                assert_eq!(n.parse::<T>().unwrap(), *v);
                assert_eq!(v.to_string(), *n);
            }
            assert!("Nope".parse::<T>().is_err());
        }
        check(Arch::ALL, ARCHES);
        check(JobType::ALL, JOB_TYPES);
        check(JobStatus::ALL, JOB_STATUSES);
        check(SshStatus::ALL, SshStatus::NAMES);
        check(UserRequest::ALL, UserRequest::NAMES);
        assert_eq!(ARCHES, ["x86_64", "aarch64"]);
        assert_eq!(JOB_TYPES, ["create", "customize"]);
        assert_eq!(
            JOB_STATUSES,
            [
                "creating",
                "fetching_image",
                "fetching_recipe",
                "waiting_for_repos",
                "building_image",
                "packaging_artifacts",
                "waiting_on_user",
                "error",
                "success"
            ]
        );
        let e = serde_json::from_value::<JobStatus>(json!("running")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(r#"status "running" is not one of: creating, "#),
            "{e}"
        );
        assert!(JobStatus::Error.is_final() && JobStatus::Success.is_final());
        assert!(!JobStatus::WaitingOnUser.is_final());
    }

    #[test]
    fn deleted_adds_one_key_and_round_trips() {
        let pk = PublicKey {
            created: Timestamp::parse("2020-01-01T00:00:00Z").unwrap(),
            id: "x".into(),
            name: "n".into(),
            public_key: "k".into(),
        };
        let d = Deleted {
            record: pk,
            deleted: Timestamp::now(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 5);
        let back: DeletedPublicKey = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn link_etag_null_or_absent_dumps_empty() {
        let l: ArtifactLink =
            serde_json::from_value(json!({"path": "s3://a/b", "type": "s3", "etag": null}))
                .unwrap();
        assert_eq!(l.etag, "");
        let l: ArtifactLink =
            serde_json::from_value(json!({"path": "s3://a/b", "type": "s3"})).unwrap();
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({"etag": "", "path": "s3://a/b", "type": "s3"})
        );
    }
}
