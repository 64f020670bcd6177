//! `ims-server`: the IMS HTTP API.
//!
//! Route modules are thin (parse, call the service, map the error); v2 and v3 are one service layer
//! with an [`Api`] parameter. Job execution is behind the [`executor::JobExecutor`] seam.

#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod executor;
pub mod extract;

pub mod openapi;
pub mod routes;
pub mod service;
pub mod sts;

use ims_artifacts::ArtifactStore;
use ims_store::DynStore;
use std::sync::Arc;

pub use routes::router;
/// For the service modules (`crate::retrying`).
pub(crate) use service::retrying;

/// Which API family a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v2/...` and the unversioned paths: hard delete with `cascade`.
    V2,
    /// `/v3/...`: soft delete, undelete.
    V3,
}

/// Settings the service layer uses (the original's environment knobs, resolved at start-up).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// `S3_IMS_BUCKET`: recipes.
    pub ims_bucket: String,
    /// `S3_BOOT_IMAGES_BUCKET`: image artifacts and deleted-image manifests.
    pub boot_images_bucket: String,
    /// `DEFAULT_IMS_IMAGE_SIZE` (GiB).
    pub default_image_size: i64,
    /// `DEFAULT_IMS_JOB_MEM_SIZE` (GiB).
    pub default_job_mem_size: i64,
    /// `DEFAULT_IMS_JOB_NAMESPACE`.
    pub job_namespace: String,
    /// `JOB_CUSTOMER_ACCESS_SUBNET_NAME`.
    pub customer_access_subnet: String,
    /// `JOB_CUSTOMER_ACCESS_NETWORK_DOMAIN`.
    pub customer_access_domain: String,
    /// `JOB_ENABLE_DKMS`: the customize-job default for `require_dkms`.
    pub job_enable_dkms: bool,
    /// `IMS_JOB_EMULATE_AARCH64`: aarch64 jobs may run on an x86_64 host under qemu-user
    /// emulation (binfmt_misc), when no aarch64 node runs them natively.
    pub job_emulate_aarch64: bool,
    /// Largest accepted manifest (`MAX_IMAGE_MANIFEST_SIZE_BYTES`).
    pub max_manifest_size: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A supervised job whose agent is silent this long ends in `error`.
    pub job_heartbeat_timeout: std::time::Duration,
    /// A job waiting on its user this long ends in `error`.
    pub job_user_deadline: std::time::Duration,
    /// How long a process holds unfinished artifact work (journal row) without renewing it before
    /// another replica may take it over (`IMS_ARTIFACT_LEASE`).
    pub artifact_lease: std::time::Duration,
    /// How long the replica that runs the background work (job reconciler, remote-node passes)
    /// keeps that role after it stops renewing it (`IMS_LEADER_LEASE`; see
    /// [`service::leases`]).
    pub leader_lease: std::time::Duration,
    /// Reported by `/version`.
    pub version: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            ims_bucket: "ims".into(),
            boot_images_bucket: "boot-images".into(),
            default_image_size: 60,
            default_job_mem_size: 8,
            job_namespace: "ims".into(),
            customer_access_subnet: "cmn".into(),
            customer_access_domain: "shasta.local".into(),
            job_enable_dkms: true,
            job_emulate_aarch64: false,
            max_manifest_size: ims_core::manifest::MAX_MANIFEST_SIZE,
            max_body_bytes: 1024 * 1024,
            job_heartbeat_timeout: std::time::Duration::from_secs(60),
            job_user_deadline: std::time::Duration::from_secs(24 * 3600),
            artifact_lease: std::time::Duration::from_secs(60),
            leader_lease: std::time::Duration::from_secs(15),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Everything a request handler needs, behind one `Arc`: the state is cloned for every request,
/// and that must stay one reference count.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of an [`AppState`].
pub struct AppParts {
    pub store: DynStore,
    pub artifacts: Arc<ArtifactStore>,
    pub cfg: Arc<ServiceConfig>,
    pub executor: Arc<dyn executor::JobExecutor>,
    pub prober: Arc<dyn executor::remote::fleet::NodeProber>,
    /// Issues S3 credentials at `PUT /apis/sts/token`; `None` when no S3 endpoint is available.
    pub sts: Option<Arc<dyn sts::StsIssuer>>,
    /// Required bearer token for the API when set (`IMS_API_TOKEN`); open API otherwise.
    pub admin_token: Option<Arc<str>>,
    /// Issues and checks the job agents' tokens.
    pub job_tokens: auth::JobTokens,
    /// When this server started: agents get a full heartbeat timeout from then on to reach a
    /// restarted server before their jobs count as silent.
    pub started: ims_core::Timestamp,
}
