//! The registered remote build nodes as the server sees them: probed over SSH (concurrently, in
//! bounded time, the answers cached briefly), the agent binary installed when a node lacks that
//! exact build, and the node-side commands (`ims agent node-run|node-stop`) run.
//!
//! A node runs the very binary the server runs (`<base>/bin/ims-<sha256>`), or for another
//! architecture the build the site configured for it. It is copied only when the node has no file
//! of that name: the name is its content hash, checked on the node before the file is moved into
//! place.

use super::ssh::{HostKey, Input, SshError, SshSettings};
use async_trait::async_trait;
use ims_core::node_wire::{AgentPid, NodeProbe, NodeRunInput, NodeStopReport};
use ims_core::{Arch, RemoteBuildNode, RemoteBuildNodeStatus};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the status endpoint needs from the nodes (the [`Fleet`]; tests may stand in).
#[async_trait]
pub trait NodeProber: Send + Sync + 'static {
    /// The node's live status; `reserved`: its slots reserved in the records store.
    async fn status(&self, node: &RemoteBuildNode, reserved: u32) -> RemoteBuildNodeStatus;
    /// The host keys the node presents now (unverified: for the administrator to check).
    async fn host_keys(&self, xname: &str) -> Result<Vec<HostKey>, SshError>;
}

/// How the server uses the nodes.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub ssh: SshSettings,
    /// The node-side directory (`IMS_REMOTE_BUILD_NODE_DIR`).
    pub base: String,
    /// The `ims` builds to install, per architecture (the server's own binary for its own).
    pub binaries: Vec<(Arch, PathBuf)>,
    /// Bound on one probe, binary copy excepted.
    pub probe_timeout: Duration,
    /// Bound on copying the binary to a node.
    pub install_timeout: Duration,
    /// Why agents on nodes could not reach the server (its API or S3 URL is a loopback
    /// address); `None` when they can.
    pub unreachable_server: Option<String>,
}

/// A binary to install: its architecture, file and content hash.
#[derive(Debug, Clone)]
struct Binary {
    arch: Arch,
    path: PathBuf,
    sha256: String,
}

/// One probe's result.
#[derive(Debug, Clone)]
pub enum Probe {
    Ok(NodeProbe),
    Failed(ProbeFailure),
}

#[derive(Debug, Clone)]
pub enum ProbeFailure {
    Ssh(SshError),
    /// Reached, but the node cannot run the agent: no build for its architecture, the copy
    /// failed, or its answer made no sense.
    Agent {
        arch: Option<String>,
        why: String,
    },
}

impl ProbeFailure {
    pub fn describe(&self) -> String {
        match self {
            ProbeFailure::Ssh(e) => e.to_string(),
            ProbeFailure::Agent { why, .. } => why.clone(),
        }
    }
}

/// Why an agent was not started; `maybe_started`: the node may have started it all the same (the
/// connection broke before its answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub maybe_started: bool,
    pub message: String,
}

/// How long a probe's answer is used for placement before the node is asked again. Starting or
/// stopping an agent does not make it stale: placement uses the node's architecture, tools and
/// size, and takes the load from the slots in the store, not from the probe's job list.
pub const PROBE_TTL: Duration = Duration::from_secs(20);

/// The binary's answer when the node has none of ours installed (printed by the probe script).
#[derive(serde::Deserialize)]
struct NotInstalled {
    installed: bool,
    arch: String,
}

pub struct Fleet {
    s: FleetSettings,
    /// The builds to install with their hashes, read once at start-up.
    binaries: Result<Vec<Binary>, String>,
    probes: Mutex<HashMap<String, (Instant, Probe)>>,
    /// The last failure to start an agent on a node, and when (placement avoids it a while).
    failures: Mutex<HashMap<String, (Instant, String)>>,
}

/// What a node command does when none of our binaries is installed there.
const NOT_INSTALLED_EXIT: &str = "echo 'ims agent not installed on the node' >&2; exit 3";
const NOT_INSTALLED_MESSAGE: &str = "ims agent not installed on the node";

impl Fleet {
    /// Reads and hashes the builds to install (for the server's own: `/proc/self/exe`, the file
    /// this process runs even if a package upgrade replaced it on disk since).
    pub fn new(s: FleetSettings) -> Fleet {
        let binaries = s
            .binaries
            .iter()
            .map(|(arch, path)| {
                sha256_file(path)
                    .map(|sha256| Binary {
                        arch: *arch,
                        path: path.clone(),
                        sha256,
                    })
                    .map_err(|e| format!("cannot read the ims build {}: {e}", path.display()))
            })
            .collect();
        if let Err(e) = &binaries {
            tracing::error!("remote build nodes: {e}");
        }
        Fleet {
            s,
            binaries,
            probes: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.s
    }

    /// Whether nodes can be used at all (a key is configured).
    pub fn enabled(&self) -> bool {
        self.s.ssh.key.is_some()
    }

    /// The address users and agents reach node `xname` at.
    pub fn address(&self, xname: &str) -> String {
        self.s.ssh.address(xname)
    }

    fn binaries(&self) -> Result<&[Binary], String> {
        self.binaries.as_deref().map_err(Clone::clone)
    }

    /// A shell command line that runs `ims agent ARGS` with whichever of our builds the node has
    /// (there is at most one per architecture), or else runs `fallback` (which says so and exits).
    async fn node_command(&self, args: &str, fallback: &str) -> Result<String, String> {
        let hashes: Vec<&str> = self.binaries()?.iter().map(|b| b.sha256.as_str()).collect();
        Ok(format!(
            "B='{base}'; for h in {hashes}; do b=\"$B/bin/ims-$h\"; if [ -x \"$b\" ]; then exec \"$b\" agent {args}; fi; done; {fallback}",
            base = self.s.base,
            hashes = hashes.join(" "),
        ))
    }

    /// Probes `node` now (installing the agent binary when the node lacks it and `install`), and
    /// caches the answer.
    pub async fn probe(&self, node: &RemoteBuildNode, install: bool) -> Probe {
        let p = self.probe_uncached(node, install).await;
        if let Ok(mut c) = self.probes.lock() {
            c.insert(node.xname.clone(), (Instant::now(), p.clone()));
        }
        p
    }

    /// The cached answer if younger than `max_age`, else a fresh probe — which does not copy the
    /// binary (the node pass does): a request never waits for a copy.
    pub async fn probe_cached(&self, node: &RemoteBuildNode, max_age: Duration) -> Probe {
        let cached = self
            .probes
            .lock()
            .ok()
            .and_then(|c| c.get(&node.xname).cloned());
        match cached {
            Some((at, p)) if at.elapsed() < max_age => p,
            _ => self.probe(node, false).await,
        }
    }

    /// Forgets the cached answer of a node (starting an agent there failed).
    fn invalidate(&self, xname: &str) {
        if let Ok(mut c) = self.probes.lock() {
            c.remove(xname);
        }
    }

    async fn probe_uncached(&self, node: &RemoteBuildNode, install: bool) -> Probe {
        let fail = |e| Probe::Failed(ProbeFailure::Ssh(e));
        let script = match self
            .node_command(
                "node-probe --base \"$B\"",
                "printf '{\"installed\":false,\"arch\":\"%s\"}\\n' \"$(uname -m)\"; exit 0",
            )
            .await
        {
            Ok(s) => s,
            Err(why) => return Probe::Failed(ProbeFailure::Agent { arch: None, why }),
        };
        let out = match self
            .s
            .ssh
            .run(node, &script, None, self.s.probe_timeout)
            .await
        {
            Ok(out) => out,
            Err(SshError::Command(why)) => {
                return Probe::Failed(ProbeFailure::Agent {
                    arch: None,
                    why: format!("the node's ims agent failed: {why}"),
                });
            }
            Err(e) => return fail(e),
        };
        let text = String::from_utf8_lossy(&out);
        let line = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        if let Ok(p) = serde_json::from_str::<NodeProbe>(line) {
            return Probe::Ok(p);
        }
        let bad = |why: String| Probe::Failed(ProbeFailure::Agent { arch: None, why });
        let Ok(missing) = serde_json::from_str::<NotInstalled>(line) else {
            return bad(format!(
                "the node's answer to the probe is not understood: {:?}",
                line.chars().take(200).collect::<String>()
            ));
        };
        if missing.installed {
            return bad("the node's answer to the probe is not understood".into());
        }
        let arch: Option<Arch> = missing.arch.parse().ok();
        let Some(arch) = arch else {
            return Probe::Failed(ProbeFailure::Agent {
                arch: Some(missing.arch.clone()),
                why: format!("unsupported node architecture {:?}", missing.arch),
            });
        };
        if !install {
            return Probe::Failed(ProbeFailure::Agent {
                arch: Some(arch.to_string()),
                why: "the ims agent is not installed yet (it is copied at the next placement)"
                    .into(),
            });
        }
        if let Err(why) = self.install(node, arch).await {
            return Probe::Failed(ProbeFailure::Agent {
                arch: Some(arch.to_string()),
                why,
            });
        }
        Box::pin(self.probe_uncached(node, false)).await
    }

    /// Copies the `ims` build for `arch` to the node, checked against its hash there.
    async fn install(&self, node: &RemoteBuildNode, arch: Arch) -> Result<(), String> {
        let binaries = self.binaries()?;
        let Some(b) = binaries.iter().find(|b| b.arch == arch) else {
            return Err(format!(
                "no ims build for {arch} nodes is configured (IMS_REMOTE_BUILD_NODE_AGENT_{})",
                arch.as_str().to_uppercase()
            ));
        };
        tracing::info!(node = %node.xname, binary = %b.path.display(), sha256 = %b.sha256, "installing the ims agent on a remote build node");
        // Written under a temporary name, checked against the hash, then renamed: a node never
        // runs a partial or altered copy. Builds older than a week that are not this one go.
        let script = format!(
            "set -e; umask 077; B='{base}'; H='{hash}'; mkdir -p \"$B/bin\"; \
             t=$(mktemp \"$B/bin/.ims-XXXXXX\"); trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; \
             echo \"$H  $t\" | sha256sum -c --status || {{ echo 'the copy does not match its sha256' >&2; exit 1; }}; \
             chmod 0700 \"$t\"; mv -f \"$t\" \"$B/bin/ims-$H\"; trap - EXIT; \
             find \"$B/bin\" -maxdepth 1 -name 'ims-*' ! -name \"ims-$H\" -mmin +10080 -delete 2>/dev/null || true",
            base = self.s.base,
            hash = b.sha256
        );
        self.s
            .ssh
            .run(
                node,
                &script,
                Some(Input::File(&b.path)),
                self.s.install_timeout,
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot copy the ims agent to the node: {e}"))
    }

    /// Starts job `id`'s agent on `node` with `env` (which holds its token): `ims agent node-run`.
    pub async fn run_agent(
        &self,
        node: &RemoteBuildNode,
        id: &str,
        env: Vec<(&'static str, String)>,
    ) -> Result<AgentPid, StartError> {
        let refused = |message: String| StartError {
            maybe_started: false,
            message,
        };
        ims_core::node_wire::check_job_id(id).map_err(refused)?;
        let script = self
            .node_command(&format!("node-run --base \"$B\" {id}"), NOT_INSTALLED_EXIT)
            .await
            .map_err(refused)?;
        let request = NodeRunInput {
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        };
        let body = serde_json::to_vec(&request).map_err(|e| refused(e.to_string()))?;
        let run = || {
            self.s.ssh.run(
                node,
                &script,
                Some(Input::Bytes(&body)),
                self.s.probe_timeout + Duration::from_secs(10),
            )
        };
        let out = match run().await {
            // The binary went (a node reinstalled, its directory wiped) since the last probe:
            // copied again, then started.
            Err(SshError::Command(why)) if why.contains(NOT_INSTALLED_MESSAGE) => {
                tracing::info!(node = %node.xname, "the ims agent is missing on the node; copying it again");
                if let Probe::Failed(f) = self.probe(node, true).await {
                    return Err(refused(format!(
                        "cannot install the agent on {}: {}",
                        node.xname,
                        f.describe()
                    )));
                }
                run().await
            }
            r => r,
        };
        let text = match out {
            Ok(out) => String::from_utf8_lossy(&out).into_owned(),
            // Cut off after the command may have started: the agent may run.
            Err(e @ SshError::Lost(_)) => {
                return Err(StartError {
                    maybe_started: true,
                    message: format!(
                        "no answer from {} while starting the agent: {e}",
                        node.xname
                    ),
                });
            }
            // Not connected, or node-run said it did not start the agent (it removes what it
            // made then).
            Err(e) => {
                return Err(refused(format!(
                    "cannot start the agent on {}: {e}",
                    node.xname
                )));
            }
        };
        serde_json::from_str(text.trim()).map_err(|_| StartError {
            maybe_started: true,
            message: format!(
                "the node's answer to node-run is not understood: {:?}",
                text.chars().take(200).collect::<String>()
            ),
        })
    }

    /// Stops the agents of jobs `ids` on `node` and removes their directories:
    /// `ims agent node-stop`.
    pub async fn stop_agents(
        &self,
        node: &RemoteBuildNode,
        ids: &[String],
        grace: Duration,
    ) -> Result<NodeStopReport, SshError> {
        let ids: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| ims_core::node_wire::check_job_id(id).is_ok())
            .collect();
        if ids.is_empty() {
            return Ok(NodeStopReport { stopped: vec![] });
        }
        let script = self
            .node_command(
                &format!(
                    "node-stop --base \"$B\" --grace {} {}",
                    grace.as_secs(),
                    ids.join(" ")
                ),
                NOT_INSTALLED_EXIT,
            )
            .await
            .map_err(SshError::Command)?;
        let out = self
            .s
            .ssh
            .run(
                node,
                &script,
                None,
                self.s.probe_timeout + grace + Duration::from_secs(20),
            )
            .await?;
        let text = String::from_utf8_lossy(&out);
        serde_json::from_str(text.trim()).map_err(|_| {
            SshError::Command(format!(
                "the node's answer to node-stop is not understood: {:?}",
                text.chars().take(200).collect::<String>()
            ))
        })
    }

    /// Records that starting an agent on `xname` failed (placement avoids the node a while).
    pub fn failed(&self, xname: &str, why: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.insert(xname.to_string(), (Instant::now(), why.to_string()));
        }
        self.invalidate(xname);
    }

    /// The last failure to start an agent on `xname` within `within`.
    pub fn recent_failure(&self, xname: &str, within: Duration) -> Option<String> {
        let f = self.failures.lock().ok()?;
        let (at, why) = f.get(xname)?;
        (at.elapsed() < within).then(|| why.clone())
    }

    /// Jobs the node takes at once by its size: one per 4 cores and per 16 GiB of memory,
    /// whichever is fewer (at least one). A node record's `capacity` overrides it.
    pub fn probed_capacity(probe: &NodeProbe) -> u32 {
        let by_cores = probe.cores / 4;
        let by_memory = probe.memory_bytes / (16 << 30);
        by_cores
            .min(by_memory)
            .clamp(1, u64::from(ims_core::input::MAX_NODE_CAPACITY)) as u32
    }

    /// Jobs the node takes at once: its record's capacity, else [`Fleet::probed_capacity`].
    pub fn capacity(node: &RemoteBuildNode, probe: &NodeProbe) -> u32 {
        node.capacity
            .unwrap_or_else(|| Fleet::probed_capacity(probe))
    }
}

/// `podmanStatus` of a node that answered: the field keeps the original's shape.
const PODMAN_NOT_USED: &str = "Not used: IMS-rs runs its own agent on the node (no podman)";

/// How long a node with a failed agent start is passed over.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(60);

#[async_trait]
impl NodeProber for Fleet {
    async fn status(&self, node: &RemoteBuildNode, reserved: u32) -> RemoteBuildNodeStatus {
        let mut st = RemoteBuildNodeStatus::unknown(&node.xname);
        st.drained = node.drained;
        st.reservedSlots = reserved;
        st.hostKeyPinned = self.s.ssh.pinned(node);
        st.capacity = node.capacity.unwrap_or(0);
        if !self.enabled() {
            st.sshStatus = "No SSH key configured for remote build nodes.".into();
            st.lastError = SshError::NoKey.to_string();
            return st;
        }
        // Bounded: the binary is copied by the node pass and placement, not by a status request.
        match self.probe(node, false).await {
            Probe::Failed(ProbeFailure::Ssh(e)) => {
                st.sshStatus = match &e {
                    SshError::Timeout(s) => format!("SSH connection timed out after {s} s."),
                    e => e.to_string(),
                };
                st.lastError = e.to_string();
            }
            Probe::Failed(ProbeFailure::Agent { arch, why }) => {
                st.sshStatus = "SSH connection established.".into();
                st.podmanStatus = PODMAN_NOT_USED.into();
                if let Some(a) = arch {
                    st.nodeArch = a;
                }
                st.lastError = why;
            }
            Probe::Ok(p) => {
                st.sshStatus = "SSH connection established.".into();
                st.podmanStatus = PODMAN_NOT_USED.into();
                st.nodeArch = p.arch.clone();
                st.numCurrentJobs = p.jobs.iter().filter(|j| j.running).count() as i64;
                st.capacity = Fleet::capacity(node, &p);
                let why = self
                    .s
                    .unreachable_server
                    .clone()
                    .or_else(|| p.cannot_run.customize.clone())
                    .or_else(|| self.recent_failure(&node.xname, FAILURE_BACKOFF));
                st.ableToRunJobs = why.is_none();
                st.lastError = why
                    .or_else(|| p.cannot_run.create.clone())
                    .unwrap_or_default();
            }
        }
        st
    }

    async fn host_keys(&self, xname: &str) -> Result<Vec<HostKey>, SshError> {
        self.s.ssh.scan(xname).await
    }
}

fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex_lower(&h.finalize()))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(cores: u64, gib: u64) -> NodeProbe {
        NodeProbe {
            arch: "x86_64".into(),
            cores,
            memory_bytes: gib << 30,
            cannot_run: Default::default(),
            jobs: vec![],
            version: "0".into(),
        }
    }

    #[test]
    fn capacity_comes_from_the_record_else_the_probe() {
        let mut n = RemoteBuildNode::new("x1");
        assert_eq!(Fleet::capacity(&n, &probe(64, 256)), 16);
        assert_eq!(Fleet::capacity(&n, &probe(64, 32)), 2, "memory bounds it");
        assert_eq!(Fleet::capacity(&n, &probe(2, 4)), 1, "at least one");
        n.capacity = Some(3);
        assert_eq!(Fleet::capacity(&n, &probe(2, 4)), 3);
    }
}
