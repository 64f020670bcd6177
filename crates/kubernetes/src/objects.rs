//! The Kubernetes objects of one job, built by pure functions (no I/O): a Secret with the agent's
//! token, a PersistentVolumeClaim for its scratch space (or none, with an `emptyDir`), a Service
//! exposing its SSH session, an optional Istio DestinationRule, and the batch Job whose one pod
//! runs `ims agent run <id>`.
//!
//! Names follow the original (`cray-ims-<id>-…`) and so do the pod's labels
//! (`app: ims-<id>-<type>`, `app.kubernetes.io/name: ims-job`) and container name
//! (`buildenv-sidecar`), so `kubectl -n ims describe job cray-ims-<id>-customize` and
//! `kubectl logs -n ims -l job-name=… -c buildenv-sidecar` keep working. Every object also carries
//! [`MANAGED_BY`] and [`JOB_ID`] labels: the executor lists, watches and cleans up by them.

use ims_core::agent_env::{AGENT_PATH, AgentEnv, AgentSettings, PortRange};
use ims_core::{Arch, Job};
use ims_server::ServiceConfig;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{Job as KubeJob, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HostPathVolumeSource, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::time::Duration;

/// Label of every object the executor creates (what it lists, watches and cleans up).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ims-rs");
/// The original's pod label, kept on every object: site tooling selects job pods by it.
pub const NAME: (&str, &str) = ("app.kubernetes.io/name", "ims-job");
/// Label naming the IMS job an object belongs to.
pub const JOB_ID: &str = "ims.hpe.com/job-id";
/// Label naming the job's type (`create`, `customize`).
pub const JOB_TYPE: &str = "ims.hpe.com/job-type";
/// The one container of a job pod; the original's name of the container that reports status and
/// packages the image (`kubectl logs … -c buildenv-sidecar`).
pub const CONTAINER: &str = "buildenv-sidecar";
/// Where the job's scratch volume is mounted in the pod (the original's `IMAGE_ROOT_PARENT`).
pub const SCRATCH_PATH: &str = "/mnt/image";
/// The session's SSH port: the Service's port and the pod's.
pub const SSH_PORT: u16 = 22;
/// The Secret's key holding the job token.
pub const TOKEN_KEY: &str = "token";
/// The Secret's key holding the site CA certificate, when one is configured.
pub const CA_KEY: &str = "ca.crt";
const CA_DIR: &str = "/etc/ims/ca";
/// The Kata annotation that keeps extended attributes (file capabilities) through virtio-fs
/// (CASMCMS-8362); the original set it on customize pods only.
pub const KATA_XATTR: (&str, &str) = (
    "io.katacontainers.config.hypervisor.virtio_fs_extra_args",
    r#"["-o","xattr"]"#,
);
/// What the agent needs beyond a default container, measured by running customize jobs (jailed
/// and not) and the create-job prerequisites in a container of the image with every capability
/// dropped but these, removing one at a time (`crates/ims/tests/it/container_image.rs`):
///
/// * `CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `MKNOD`, `SETFCAP`, `SETGID`, `SETPCAP`, `SETUID`,
///   `SYS_CHROOT`: the agent's prerequisites (`ims_jobs::prereq`): unpacking and repacking image
///   roots as they are (owners, modes, device nodes, file capabilities), sshd and its jail; without
///   one every job fails at once naming it;
/// * `SYS_ADMIN`: its private mount namespace, image-root mounts, the session's sandbox;
/// * `NET_ADMIN`: the session's network (slirp4netns opens a TUN device);
/// * `NET_BIND_SERVICE`: the session's port 22.
///
/// Not needed (jobs complete without them): `AUDIT_WRITE`, `FSETID`, `KILL`.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_CHROOT",
];
/// The TUN device the session's network (slirp4netns) opens: a container's `/dev` lacks it, so
/// the pod mounts the node's (containerd and CRI-O allow the device by default).
pub const TUN: &str = "/dev/net/tun";
/// Added to the user deadline for a job pod's `activeDeadlineSeconds`: the time to fetch,
/// build and package around the user's session. The server's own deadlines act first; this is
/// the cluster's backstop should the server not.
pub const BUILD_BUDGET: Duration = Duration::from_secs(24 * 3600);

/// How the job Service is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// The original's: an external address from the cluster's load balancer (MetalLB).
    LoadBalancer,
    /// Inside the cluster only.
    ClusterIp,
    /// On a port of every node.
    NodePort,
}

impl ServiceType {
    pub const NAMES: &'static [&'static str] = &["LoadBalancer", "ClusterIP", "NodePort"];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
        }
    }

    pub fn parse(s: &str) -> Option<ServiceType> {
        match s.to_ascii_lowercase().as_str() {
            "loadbalancer" => Some(ServiceType::LoadBalancer),
            "clusterip" => Some(ServiceType::ClusterIp),
            "nodeport" => Some(ServiceType::NodePort),
            _ => None,
        }
    }
}

/// Where the job's image root lives in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scratch {
    /// A PersistentVolumeClaim of 5 × `build_env_size` GiB (the original's).
    Pvc,
    /// An `emptyDir` on the node, limited to the same size (faster; the CSM documentation's
    /// hand edit of the templates, made a setting).
    EmptyDir,
}

/// Everything about a job's objects that is the site's choice.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// The image whose `ims` runs the agent (`scripts/build-image.sh`).
    pub image: String,
    /// The API URL agents in pods use (must resolve and be reachable from pods).
    pub api_url: String,
    /// The server's agent settings; paths on the server's host are not passed on (see
    /// [`pod_agent_settings`]).
    pub agent: AgentSettings,
    /// The site CA certificate (PEM) put into image roots, carried in the job's Secret.
    pub ca_cert: Option<String>,
    pub service_type: ServiceType,
    /// The Service's annotations, `{hostname}` and `{pool}` already allowed in values (see
    /// [`annotations`]).
    pub service_annotations: Vec<(String, String)>,
    /// The customer-access address pool (`{pool}` in annotations).
    pub address_pool: String,
    pub storage_class: Option<String>,
    pub scratch: Scratch,
    /// A runtime class (Kata) for job pods; with it, the virtio-fs xattr annotation.
    pub runtime_class: Option<String>,
    /// The pods' service account; without one, no API token is mounted into job pods.
    pub service_account: Option<String>,
    /// The pod's `activeDeadlineSeconds`: a backstop should the server's own deadline not act.
    pub active_deadline: Duration,
    /// The Job's `ttlSecondsAfterFinished`.
    pub ttl_after_finished: Duration,
    pub destination_rule: bool,
    /// aarch64 jobs run in x86_64 pods under qemu-user emulation (else on arm64 nodes).
    pub emulate_aarch64: bool,
}

/// Every object of one job.
#[derive(Debug, Clone)]
pub struct JobObjects {
    pub secret: Secret,
    pub pvc: Option<PersistentVolumeClaim>,
    pub service: Service,
    pub destination_rule: Option<serde_json::Value>,
    pub job: KubeJob,
}

/// The names of a job's objects (the original's; the Secret is ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub job: String,
    pub service: String,
    pub pvc: String,
    pub secret: String,
    /// The pods' `app` label and the Service's selector.
    pub app: String,
}

impl Names {
    pub fn of(job: &Job) -> Names {
        Names::from_parts(&job.id, job.job_type.as_str())
    }

    /// The names of job `id` of type `t` (for objects whose job record is gone: from their
    /// labels).
    pub fn from_parts(id: &str, t: &str) -> Names {
        Names {
            job: format!("cray-ims-{id}-{t}"),
            service: format!("cray-ims-{id}-service"),
            pvc: format!("cray-ims-{id}-job-claim"),
            secret: format!("cray-ims-{id}-token"),
            app: format!("ims-{id}-{t}"),
        }
    }
}

/// The labels of every object of `job`.
pub fn labels(job: &Job) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (NAME.0.to_string(), NAME.1.to_string()),
        (JOB_ID.to_string(), job.id.clone()),
        (JOB_TYPE.to_string(), job.job_type.as_str().to_string()),
    ])
}

/// The selector of every object the executor made.
pub fn managed_selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// The selector of one job's objects.
pub fn job_selector(id: &str) -> String {
    format!("{},{JOB_ID}={id}", managed_selector())
}

fn meta(name: &str, ns: &str, job: &Job) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(labels(job)),
        ..Default::default()
    }
}

fn gib(n: i64) -> Quantity {
    Quantity(format!("{n}Gi"))
}

/// Scratch space: 5 × `build_env_size` GiB, as the original sizes its PVC.
fn scratch_size(job: &Job) -> Quantity {
    gib(job.build_env_size.saturating_mul(5))
}

/// The Service's annotations with `{hostname}` (the job's external-dns name) and `{pool}` filled
/// in.
pub fn annotations(cfg: &ServiceConfig, s: &KubeSettings, job: &Job) -> BTreeMap<String, String> {
    let host = ims_server::service::jobs::customer_access_host(cfg, &job.id);
    s.service_annotations
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.replace("{hostname}", &host)
                    .replace("{pool}", &s.address_pool),
            )
        })
        .collect()
}

/// What the agent in a pod is told: the server's agent settings, less what names paths of the
/// server's host (the CA comes through the Secret instead), and its session on port 22 of every
/// address of the pod, announced under the Service's name.
pub fn pod_agent_settings(cfg: &ServiceConfig, s: &KubeSettings, service: &str) -> AgentSettings {
    AgentSettings {
        ca_cert: s
            .ca_cert
            .as_ref()
            .map(|_| format!("{CA_DIR}/{CA_KEY}").into()),
        ssh_host: Some(ims_server::service::jobs::cluster_host(cfg, service)),
        ssh_listen: None,
        ssh_ports: Some(PortRange {
            first: SSH_PORT,
            last: SSH_PORT,
        }),
        signing_keys: None,
        kiwi: None,
        kiwi_cache: None,
        ..s.agent.clone()
    }
}

/// The pod's node architecture label for a job.
fn node_arch(job: &Job, s: &KubeSettings) -> &'static str {
    match job.arch {
        Arch::Aarch64 if !s.emulate_aarch64 => "arm64",
        _ => "amd64",
    }
}

/// Every object of `job`, whose agent authenticates with `token`.
pub fn job_objects(cfg: &ServiceConfig, s: &KubeSettings, job: &Job, token: &str) -> JobObjects {
    let ns = cfg.job_namespace.as_str();
    let n = Names::of(job);
    let mut secret_data =
        BTreeMap::from([(TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec()))]);
    if let Some(ca) = &s.ca_cert {
        secret_data.insert(CA_KEY.to_string(), ByteString(ca.as_bytes().to_vec()));
    }
    let secret = Secret {
        metadata: meta(&n.secret, ns, job),
        type_: Some("Opaque".into()),
        data: Some(secret_data),
        ..Default::default()
    };
    let pvc = (s.scratch == Scratch::Pvc).then(|| PersistentVolumeClaim {
        metadata: meta(&n.pvc, ns, job),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), scratch_size(job))])),
                ..Default::default()
            }),
            storage_class_name: s.storage_class.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut service_meta = meta(&n.service, ns, job);
    let ann = annotations(cfg, s, job);
    service_meta.annotations = (!ann.is_empty()).then_some(ann);
    let service = Service {
        metadata: service_meta,
        spec: Some(ServiceSpec {
            type_: Some(s.service_type.as_str().into()),
            selector: Some(BTreeMap::from([("app".into(), n.app.clone())])),
            ports: Some(vec![ServicePort {
                name: Some("ssh".into()),
                port: i32::from(SSH_PORT),
                target_port: Some(IntOrString::Int(i32::from(SSH_PORT))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let destination_rule = s.destination_rule.then(|| {
        serde_json::json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": {"name": n.service, "namespace": ns, "labels": labels(job)},
            "spec": {
                "host": ims_server::service::jobs::cluster_host(cfg, &n.service),
                "trafficPolicy": {"tls": {"mode": "DISABLE"}},
            },
        })
    });
    let job_obj = KubeJob {
        metadata: meta(&n.job, ns, job),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(secs(s.active_deadline)),
            ttl_seconds_after_finished: Some(secs(s.ttl_after_finished) as i32),
            template: pod_template(cfg, s, job, &n),
            ..Default::default()
        }),
        ..Default::default()
    };
    JobObjects {
        secret,
        pvc,
        service,
        destination_rule,
        job: job_obj,
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs())
        .unwrap_or(i64::MAX)
        .clamp(1, i64::from(i32::MAX))
}

fn pod_template(cfg: &ServiceConfig, s: &KubeSettings, job: &Job, n: &Names) -> PodTemplateSpec {
    let mut pod_labels = labels(job);
    pod_labels.insert("app".into(), n.app.clone());
    let mut pod_annotations = BTreeMap::from([(
        // The agent mounts (image roots, its sandbox): a confining AppArmor profile forbids that.
        format!("container.apparmor.security.beta.kubernetes.io/{CONTAINER}"),
        "unconfined".to_string(),
    )]);
    if s.runtime_class.is_some() {
        pod_annotations.insert(KATA_XATTR.0.into(), KATA_XATTR.1.into());
    }
    let agent = AgentEnv {
        api_url: s.api_url.clone(),
        token: None,
        dir: SCRATCH_PATH.into(),
        settings: pod_agent_settings(cfg, s, &n.service),
    };
    let mut env = vec![EnvVar {
        name: "PATH".into(),
        value: Some(AGENT_PATH.into()),
        ..Default::default()
    }];
    for (k, v) in agent.to_env() {
        env.push(EnvVar {
            name: k.into(),
            value: Some(v),
            ..Default::default()
        });
        // The token right after the URL: from the Secret, never a literal in the pod spec.
        if k == ims_core::agent_env::URL {
            env.push(EnvVar {
                name: ims_core::agent_env::TOKEN.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: n.secret.clone(),
                        key: TOKEN_KEY.into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    let mut mounts = vec![VolumeMount {
        name: "image-vol".into(),
        mount_path: SCRATCH_PATH.into(),
        ..Default::default()
    }];
    mounts.push(VolumeMount {
        name: "tun".into(),
        mount_path: TUN.into(),
        ..Default::default()
    });
    let mut volumes = vec![Volume {
        name: "image-vol".into(),
        persistent_volume_claim: (s.scratch == Scratch::Pvc).then(|| {
            PersistentVolumeClaimVolumeSource {
                claim_name: n.pvc.clone(),
                read_only: None,
            }
        }),
        empty_dir: (s.scratch == Scratch::EmptyDir).then(|| EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(scratch_size(job)),
        }),
        ..Default::default()
    }];
    volumes.push(Volume {
        name: "tun".into(),
        host_path: Some(HostPathVolumeSource {
            path: TUN.into(),
            type_: Some("CharDevice".into()),
        }),
        ..Default::default()
    });
    if s.ca_cert.is_some() {
        mounts.push(VolumeMount {
            name: "ca".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(n.secret.clone()),
                items: Some(vec![KeyToPath {
                    key: CA_KEY.into(),
                    path: CA_KEY.into(),
                    mode: Some(0o444),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(s.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["ims".into()]),
        args: Some(vec!["agent".into(), "run".into(), job.id.clone()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("ssh".into()),
            container_port: i32::from(SSH_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("500m".into())),
                ("memory".into(), gib(job.job_mem_size)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                gib(job.job_mem_size.saturating_mul(5)),
            )])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(true),
            run_as_user: Some(0),
            capabilities: Some(Capabilities {
                add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let has_account = s.service_account.is_some();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![container],
            volumes: Some(volumes),
            service_account_name: s.service_account.clone(),
            automount_service_account_token: Some(has_account),
            enable_service_links: Some(false),
            runtime_class_name: s.runtime_class.clone(),
            node_selector: Some(BTreeMap::from([(
                "kubernetes.io/arch".into(),
                node_arch(job, s).into(),
            )])),
            termination_grace_period_seconds: Some(30),
            affinity: Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 100,
                            pod_affinity_term: PodAffinityTerm {
                                label_selector: Some(LabelSelector {
                                    match_labels: Some(BTreeMap::from([(
                                        NAME.0.into(),
                                        NAME.1.into(),
                                    )])),
                                    ..Default::default()
                                }),
                                topology_key: "kubernetes.io/hostname".into(),
                                ..Default::default()
                            },
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
