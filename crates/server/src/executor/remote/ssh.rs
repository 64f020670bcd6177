//! The transport to remote build nodes: the OpenSSH client, as `root`, with the configured key.
//!
//! Host keys are checked, always (`StrictHostKeyChecking=yes`): a node's key must be one the
//! administrator accepted (kept in the node's record, shared by every replica) or one in the site's
//! own known-hosts file (`IMS_REMOTE_BUILD_NODE_KNOWN_HOSTS`). Keys are looked up under the node's
//! xname (`HostKeyAlias`), whatever address it resolves to. Nothing else of the server's user is
//! read: no `~/.ssh/config`, no agent, no other identity.

use ims_core::RemoteBuildNode;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How to reach the nodes.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// The private key (`IMS_REMOTE_BUILD_NODE_SSH_KEY`); `None`: nodes are not used.
    pub key: Option<PathBuf>,
    /// The site's known-hosts file, entries by xname (`IMS_REMOTE_BUILD_NODE_KNOWN_HOSTS`).
    pub known_hosts: Option<PathBuf>,
    /// Where the server writes each node's accepted keys as a known-hosts file for `ssh`.
    pub state_dir: PathBuf,
    /// xname → address, for nodes the site's DNS does not resolve (`IMS_REMOTE_BUILD_NODE_ADDRESSES`).
    pub addresses: std::collections::HashMap<String, String>,
    /// Bound on connecting (and on a whole probe).
    pub connect_timeout: Duration,
}

/// Why a command on a node did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    #[error("no SSH key is configured for remote build nodes (IMS_REMOTE_BUILD_NODE_SSH_KEY)")]
    NoKey,
    #[error("Invalid host name {0:?}: it cannot be an SSH destination")]
    BadHost(String),
    #[error(
        "the node's SSH host key is not accepted: check it with `ims remote-build-nodes host-key show {0}` and accept it with `ims remote-build-nodes host-key accept {0} --fingerprint SHA256:…`"
    )]
    HostKey(String),
    #[error("the node did not answer within {0} s")]
    Timeout(u64),
    /// The connection broke (or the command gave no answer in time) after the command may have
    /// started on the node.
    #[error("the connection to the node was lost: {0}")]
    Lost(String),
    #[error("SSH connection failed: {0}")]
    Connect(String),
    /// The command ran and failed: its exit status and last line of error output.
    #[error("{0}")]
    Command(String),
    #[error("could not run ssh: {0}")]
    Spawn(String),
}

/// What OpenSSH's messages say when it failed before running the command.
const CONNECT_PHASE: &[&str] = &[
    "connect to host",
    "Could not resolve hostname",
    "banner exchange",
    "Permission denied",
    "Connection refused",
    "No route to host",
    "Network is unreachable",
    "kex_exchange_identification",
    "Connection closed by",
];

/// The most a command on a node may print (on each of its outputs).
pub const MAX_ANSWER: u64 = 1 << 20;

/// Reads `pipe` whole, refusing more than `limit` bytes.
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    limit: u64,
) -> Result<Vec<u8>, SshError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    if let Some(p) = pipe {
        p.take(limit + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| SshError::Spawn(e.to_string()))?;
    }
    if buf.len() as u64 > limit {
        return Err(SshError::Command(format!(
            "the node's answer is larger than {limit} bytes"
        )));
    }
    Ok(buf)
}

/// Host names and addresses that are safe as an `ssh` argument (no option injection).
pub fn safe_host(x: &str) -> bool {
    !x.is_empty()
        && x.len() <= 253
        && !x.starts_with('-')
        && x.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

impl SshSettings {
    /// The address `ssh` connects to for node `xname` (the mapping, else the xname itself).
    pub fn address(&self, xname: &str) -> String {
        self.addresses
            .get(xname)
            .cloned()
            .unwrap_or_else(|| xname.to_string())
    }

    /// Whether a host key of `node` is pinned: accepted through the API, or named (by xname) in the
    /// site's known-hosts file.
    pub fn pinned(&self, node: &RemoteBuildNode) -> bool {
        node.host_keys
            .iter()
            .any(|e| HostKey::parse_entry(e).is_some())
            || self.known_hosts.as_ref().is_some_and(|f| {
                std::fs::read_to_string(f).is_ok_and(|t| {
                    t.lines().any(|l| {
                        l.split_whitespace()
                            .next()
                            .is_some_and(|hosts| hosts.split(',').any(|h| h == node.xname))
                    })
                })
            })
    }

    /// Writes the node's accepted host keys as a known-hosts file (by xname); its path.
    fn known_hosts_of(&self, node: &RemoteBuildNode) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)?;
        let mut text = String::new();
        // Only well-formed keys (a record imported from elsewhere could hold anything: a
        // `@cert-authority` marker, a wildcard, a second line).
        for k in node
            .host_keys
            .iter()
            .filter_map(|e| HostKey::parse_entry(e))
        {
            text.push_str(&format!("{} {}\n", node.xname, k.entry()));
        }
        let path = self.state_dir.join(format!("{}.known_hosts", node.xname));
        // Written whole under a temporary name and renamed: a concurrent `ssh` reads the old or
        // the new file, never half of one.
        let tmp = self.state_dir.join(format!(
            ".{}.known_hosts.{}.{:?}",
            node.xname,
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Runs `script` (a shell command line) on `node` as root; `stdin` is sent and closed.
    /// Returns the command's standard output.
    pub async fn run(
        &self,
        node: &RemoteBuildNode,
        script: &str,
        stdin: Option<Input<'_>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, SshError> {
        let key = self.key.as_ref().ok_or(SshError::NoKey)?;
        let addr = self.address(&node.xname);
        if !safe_host(&addr) {
            return Err(SshError::BadHost(addr));
        }
        if !safe_host(&node.xname) {
            return Err(SshError::BadHost(node.xname.clone()));
        }
        let mut known = vec![
            self.known_hosts_of(node)
                .map_err(|e| SshError::Spawn(format!("cannot write the known-hosts file: {e}")))?,
        ];
        known.extend(self.known_hosts.clone());
        let known = known
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        if known.iter().any(|p| p.contains(char::is_whitespace)) {
            return Err(SshError::Spawn(
                "known-hosts paths must not contain white space".into(),
            ));
        }
        let secs = self.connect_timeout.as_secs().max(1);
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.arg("-F")
            .arg("none")
            .arg("-i")
            .arg(key)
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "IdentityAgent=none"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.join(" ")))
            .args(["-o", "GlobalKnownHostsFile=none"])
            .arg("-o")
            .arg(format!("HostKeyAlias={}", node.xname))
            .args(["-o", "CheckHostIP=no"])
            .args(["-o", "UpdateHostKeys=no"])
            .arg("-o")
            .arg(format!("ConnectTimeout={secs}"))
            .args(["-o", "ServerAliveInterval=5"])
            .args(["-o", "ServerAliveCountMax=3"])
            .args(["-o", "LogLevel=ERROR"])
            .args(["-l", "root", "--", &addr, script])
            .env_remove("SSH_AUTH_SOCK")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| SshError::Spawn(e.to_string()))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let work = async {
            let feed = async {
                if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                    // A failed write shows as the command's failure (it saw a short input).
                    let _ = match input {
                        Input::Bytes(b) => pipe.write_all(b).await,
                        Input::File(p) => match tokio::fs::File::open(p).await {
                            Ok(mut f) => tokio::io::copy(&mut f, &mut pipe).await.map(|_| ()),
                            Err(e) => {
                                return Err(SshError::Spawn(format!("{}: {e}", p.display())));
                            }
                        },
                    };
                }
                Ok(())
            };
            // What a node answers is read at most MAX_ANSWER bytes far (a node is not trusted
            // with the server's memory).
            let (fed, out, err) = tokio::join!(
                feed,
                read_bounded(stdout, MAX_ANSWER),
                read_bounded(stderr, MAX_ANSWER)
            );
            fed?;
            let status = child
                .wait()
                .await
                .map_err(|e| SshError::Spawn(e.to_string()))?;
            Ok::<_, SshError>(std::process::Output {
                status,
                stdout: out?,
                stderr: err?,
            })
        };
        let out = match tokio::time::timeout(timeout, work).await {
            Err(_) => {
                return Err(SshError::Lost(format!(
                    "no answer within {} s",
                    timeout.as_secs()
                )));
            }
            Ok(r) => r?,
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("")
            .chars()
            .take(1000)
            .collect::<String>();
        Err(match out.status.code() {
            Some(255)
                if err.contains("Host key verification failed")
                    || err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                    || err.contains("No ") && err.contains("host key is known") =>
            {
                SshError::HostKey(node.xname.clone())
            }
            // Failures before the command could start: connecting, resolving, logging in.
            Some(255)
                if CONNECT_PHASE.iter().any(|m| err.contains(m)) && err.contains("timed out") =>
            {
                SshError::Timeout(secs)
            }
            Some(255) if CONNECT_PHASE.iter().any(|m| err.contains(m)) => SshError::Connect(last),
            // Anything else: the connection broke, possibly while the command ran.
            Some(255) => SshError::Lost(last),
            Some(c) => SshError::Command(if last.is_empty() {
                format!("exit status {c}")
            } else {
                last
            }),
            None => SshError::Command("killed by a signal".into()),
        })
    }

    /// The node's host keys as it presents them now (`ssh-keyscan`), unverified: for the
    /// administrator to compare with the node's own (`ssh-keygen -lf /etc/ssh/ssh_host_*.pub`).
    pub async fn scan(&self, xname: &str) -> Result<Vec<HostKey>, SshError> {
        let addr = self.address(xname);
        if !safe_host(&addr) {
            return Err(SshError::BadHost(addr));
        }
        let secs = self.connect_timeout.as_secs().max(1);
        let out = tokio::time::timeout(
            self.connect_timeout + Duration::from_secs(2),
            tokio::process::Command::new("ssh-keyscan")
                .args(["-T", &secs.to_string(), "--", &addr])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| SshError::Timeout(secs))?
        .map_err(|e| SshError::Spawn(format!("ssh-keyscan: {e}")))?;
        let keys: Vec<HostKey> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_host, kind, b64) = (f.next()?, f.next()?, f.next()?);
                HostKey::new(kind, b64)
            })
            .collect();
        if keys.is_empty() {
            return Err(SshError::Connect(format!(
                "no host key from {addr}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(keys)
    }
}

/// What a command on a node reads on its standard input.
pub enum Input<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// An SSH host key: its type, its base64 blob and its fingerprint (`SHA256:…`, as `ssh-keygen -l`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostKey {
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub fingerprint: String,
}

impl HostKey {
    /// A key from its `known_hosts` fields; `None` unless the blob is base64 that names `kind`.
    pub fn new(kind: &str, b64: &str) -> Option<HostKey> {
        use base64::Engine;
        use sha2::Digest;
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        // The blob starts with its own type as an SSH string: a key claiming another type is
        // garbage (or a lie).
        let n = u32::from_be_bytes(blob.get(0..4)?.try_into().ok()?) as usize;
        if blob.get(4..4 + n)? != kind.as_bytes() || !kind.chars().all(|c| c.is_ascii_graphic()) {
            return None;
        }
        let digest = sha2::Sha256::digest(&blob);
        Some(HostKey {
            kind: kind.to_string(),
            key: b64.to_string(),
            fingerprint: format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
            ),
        })
    }

    /// The key as a node record keeps it (`TYPE BASE64`).
    pub fn entry(&self) -> String {
        format!("{} {}", self.kind, self.key)
    }

    /// A key from a node record's entry.
    pub fn parse_entry(entry: &str) -> Option<HostKey> {
        let mut f = entry.split_whitespace();
        let k = HostKey::new(f.next()?, f.next()?)?;
        f.next().is_none().then_some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_option_like_hosts() {
        assert!(!safe_host("-oProxyCommand=x"));
        assert!(!safe_host("a b"));
        assert!(!safe_host("a;b"));
        assert!(safe_host("x3000c0s1b0n0"));
        assert!(safe_host("10.213.0.11"));
    }

    #[test]
    fn host_keys_are_checked_and_fingerprinted() {
        // An ed25519 key (type string + 32 bytes), fingerprinted as ssh-keygen -l does.
        let b64 = "AAAAC3NzaC1lZDI1NTE5AAAAIApQ23u8S2hTkUxL7jNHX3vjnHj/EbIUxdpi2NMMqzlu";
        let k = HostKey::new("ssh-ed25519", b64).expect("a valid key");
        assert_eq!(
            k.fingerprint,
            "SHA256:O6X6Du22GFmDJeYRJoxS3rvJhMoifXHgACqmnYZBQhQ"
        );
        assert_eq!(HostKey::parse_entry(&k.entry()), Some(k.clone()));
        // The blob names another type: refused.
        assert!(HostKey::new("ssh-rsa", b64).is_none());
        assert!(HostKey::new("ssh-ed25519", "not base64!").is_none());
        assert!(HostKey::parse_entry("ssh-ed25519").is_none());
        assert!(HostKey::parse_entry(&format!("{} extra", k.entry())).is_none());
    }
}
