//! One container of a pod as the fake kubelet (`common::kube`) resolved it from a Job's pod
//! template: what a container runtime needs to start it. The fake kubelet runs it as a local
//! process in the pod's namespaces, or hands it to `podman run` (`common::podman`), so both
//! runtimes start the same command with the same environment and mounts.
#![allow(dead_code)]

use std::path::PathBuf;

/// A volume mount of the container: a host directory made to appear at `container_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_dir: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// A container ready to start: every `valueFrom` resolved, every volume a host directory.
#[derive(Debug, Clone)]
pub struct ContainerLaunch {
    /// The pod's name (unique in the fake cluster).
    pub pod: String,
    /// The container's name (`buildenv-sidecar`).
    pub name: String,
    pub image: String,
    /// `command` followed by `args`, as Kubernetes joins them.
    pub argv: Vec<String>,
    /// `env`, in order, with `secretKeyRef`/`configMapKeyRef` looked up.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub working_dir: Option<String>,
    /// `securityContext.capabilities`.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    /// The pod's network namespace (`/run/netns/<name>`), shared by its containers.
    pub netns: PathBuf,
    /// Where the container's stdout and stderr go (the runtime opens it for appending):
    /// what `kubectl logs` shows.
    pub log_file: PathBuf,
}
