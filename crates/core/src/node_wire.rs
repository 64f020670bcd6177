//! What the server and a remote build node say to each other. The server runs this same binary on
//! the node over SSH (`ims agent node-probe|node-run|node-stop`); each command prints one of these
//! as one line of JSON on its standard output, and `node-run` reads a [`NodeRunRequest`] on its
//! standard input (the job token travels there: never in a command line or a file).

use crate::Arch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The directory a node keeps the agent binaries (`bin/ims-<sha256>`) and the jobs' scratch
/// directories (`jobs/<job-id>`) in, unless the server is told otherwise.
pub const DEFAULT_NODE_BASE: &str = "/var/lib/ims-node";

/// `ims agent node-probe`: what the node is and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProbe {
    pub arch: Arch,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Why the node cannot run each kind of job; `None` when it can.
    pub cannot_run: CannotRun,
    /// The job directories on the node.
    pub jobs: Vec<NodeJob>,
    /// The `ims` version that answered.
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CannotRun {
    pub create: Option<String>,
    pub create_debug: Option<String>,
    pub customize: Option<String>,
}

impl CannotRun {
    /// Why a job of this type cannot run (`session`: it opens an SSH session).
    pub fn why(&self, job_type: crate::JobType, session: bool) -> Option<&str> {
        match (job_type, session) {
            (crate::JobType::Create, false) => self.create.as_deref(),
            (crate::JobType::Create, true) => self.create_debug.as_deref(),
            (crate::JobType::Customize, _) => self.customize.as_deref(),
        }
    }
}

/// A job directory on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeJob {
    pub id: String,
    /// Its agent still runs.
    pub running: bool,
}

/// `ims agent node-run`'s standard input: the agent's environment (`ims_core::agent_env`), the
/// scratch directory excepted (the node chooses it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRunRequest {
    pub env: BTreeMap<String, String>,
}

/// `ims agent node-run`'s answer: the agent started, as the process `pid` that started at
/// `start` (clock ticks since boot; with the pid, it names the process even if the pid is reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRunAnswer {
    pub pid: u32,
    pub start: u64,
}

/// `ims agent node-stop`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStopAnswer {
    pub stopped: Vec<NodeStopped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStopped {
    pub id: String,
    pub was_running: bool,
    pub removed: bool,
}
