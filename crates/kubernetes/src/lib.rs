//! The `kubernetes` job executor: each job's agent (`ims agent run <id>`, the same binary as the
//! server) runs in the one pod of a Kubernetes Job, with its token in a Secret, its scratch space
//! on a PersistentVolumeClaim (or an `emptyDir`) and its SSH session behind a Service.
//!
//! * [`objects`]: the objects of a job, built by pure functions (golden files in `tests/`).
//! * [`pods`]: what a pod's state says about its job (unschedulable, image pull, evicted,
//!   OOM-killed…), a pure function too.
//! * [`executor`]: their lifecycle through the Kubernetes API (kube-rs), and the supervisor that
//!   watches pods and Services (on the elected replica only).

pub mod executor;
pub mod objects;
pub mod pods;

pub use executor::{KubernetesExecutor, connect};
pub use objects::{JobObjects, KubeSettings, Names, Scratch, ServiceType, job_objects};
