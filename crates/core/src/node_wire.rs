//! What the server's remote executor and a remote build node say to each other: the node side is
//! `ims agent node-probe|node-run|node-stop` (this binary, run over SSH as root; `ims_jobs::node`
//! documents the commands), the server reads their one-line JSON answers into these types. One
//! declaration for both sides.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The node's own directory when `--base` is not given: `bin/` (the agent binaries) and
/// `jobs/<job-id>` (each job's scratch directory).
pub const DEFAULT_BASE: &str = "/var/lib/ims-node";
/// The jobs' directories under the base.
pub const JOBS_DIR: &str = "jobs";
/// In a job's directory: the agent's pid and start time ([`AgentPid`]).
pub const PID_FILE: &str = "agent.pid";
/// In a job's directory: the agent's stdout and stderr.
pub const OUT_FILE: &str = "agent.out";
/// The largest `node-run` input (its stdin).
pub const MAX_RUN_INPUT: usize = 1 << 20;
/// `node-stop`'s SIGTERM-to-SIGKILL time when `--grace` is not given (seconds).
pub const DEFAULT_STOP_GRACE_SECS: u64 = 10;

/// Checks a job id given to a node command: the canonical UUID form (lower-case, hyphenated), as
/// the server writes ids. Ids become path components on the node, so nothing else is taken.
pub fn check_job_id(id: &str) -> Result<(), String> {
    crate::records::check_id(id)
        .map_err(|_| format!("bad job id {id:?}: not a UUID (8-4-4-4-12 lower-case hex digits)"))
}

/// `node-probe`'s answer: the node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProbe {
    /// The node's architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    pub cores: u64,
    pub memory_bytes: u64,
    pub cannot_run: CannotRun,
    /// Every job directory on the node, sorted by id.
    pub jobs: Vec<NodeJob>,
    /// The `ims` version of the binary that answered.
    pub version: String,
}

/// What the node lacks for each kind of job, in one line (`None`: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CannotRun {
    /// Create jobs without a debug shell.
    pub create: Option<String>,
    /// Create jobs with `enable_debug` (an SSH session after a failed build).
    pub create_debug: Option<String>,
    /// Customize jobs (always an SSH session).
    pub customize: Option<String>,
}

impl CannotRun {
    /// Why a job of this type cannot run on the node (`session`: it opens an SSH session).
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
    /// Its agent runs (the pid file names a live process with the recorded start time).
    pub running: bool,
}

/// `node-run`'s input on stdin: the agent's environment (`crate::agent_env`), without
/// [`crate::agent_env::DIR`], which `node-run` sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRunInput {
    pub env: BTreeMap<String, String>,
}

/// `node-run`'s answer, and the job directory's [`PID_FILE`]: the agent's pid and start time
/// (clock ticks since the node's boot, field 22 of `/proc/<pid>/stat`), for
/// `crate::process::same_process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPid {
    pub pid: u32,
    pub start: u64,
}

/// `node-stop`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStopReport {
    /// One per id given, in order.
    pub stopped: Vec<NodeStopped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStopped {
    pub id: String,
    /// The agent was alive when the command started (it was stopped).
    pub was_running: bool,
    /// The job directory was there and has been removed (`false` with no error: there was none).
    pub removed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_canonical_uuids_only() {
        assert_eq!(check_job_id("4e3f1b7c-56a2-4c2e-9d8e-0123456789ab"), Ok(()));
        for bad in [
            "",
            "../x",
            "-rf",
            "x",
            "4E3F1B7C-56A2-4C2E-9D8E-0123456789AB",
            "4e3f1b7c56a24c2e9d8e0123456789ab",
            "{4e3f1b7c-56a2-4c2e-9d8e-0123456789ab}",
            "urn:uuid:4e3f1b7c-56a2-4c2e-9d8e-0123456789ab",
            " 4e3f1b7c-56a2-4c2e-9d8e-0123456789ab",
            "4e3f1b7c-56a2-4c2e-9d8e-0123456789ab/..",
        ] {
            let e = check_job_id(bad).unwrap_err();
            assert!(
                e.starts_with("bad job id ") && e.contains("not a UUID"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_answers_read_back() {
        let p: AgentPid = serde_json::from_str(r#"{"pid":12,"start":345}"#).unwrap();
        assert_eq!(
            p,
            AgentPid {
                pid: 12,
                start: 345
            }
        );
        assert!(serde_json::from_str::<AgentPid>(r#"{"pid":12}"#).is_err());
        let i: Result<NodeRunInput, _> = serde_json::from_str(r#"{"env":{},"x":1}"#);
        assert!(i.is_err(), "unknown fields are refused");
    }
}
