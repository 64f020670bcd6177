//! Remote build node status probes.
//!
//! The original SSHes to each node as `root`, runs `uname -i`, `which podman` and counts `/tmp/ims_*`
//! directories. [`SshProber`] does the same with the OpenSSH client (batch mode, bounded time); nodes
//! are probed concurrently, not one after another.

use async_trait::async_trait;
use ims_core::{Arch, RemoteBuildNodeStatus};
use std::path::PathBuf;
use std::time::Duration;

#[async_trait]
pub trait NodeProber: Send + Sync + 'static {
    async fn probe(&self, xname: &str) -> RemoteBuildNodeStatus;
}

/// Probes over SSH with the configured private key.
pub struct SshProber {
    /// The private key; `None` disables probing (status reports why).
    pub key: Option<PathBuf>,
    pub timeout: Duration,
}

/// Host names that are safe to hand to `ssh` as an argument (no option injection).
fn safe_host(x: &str) -> bool {
    !x.is_empty()
        && x.len() <= 253
        && !x.starts_with('-')
        && x.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

const PROBE_SCRIPT: &str =
    "uname -i; echo @@; which podman; echo @@; ls -d /tmp/ims_* 2>/dev/null | wc -l";

/// Interprets the probe's output.
pub fn parse_probe(xname: &str, stdout: &str) -> RemoteBuildNodeStatus {
    let mut st = RemoteBuildNodeStatus::unknown(xname);
    st.sshStatus = "SSH connection established.".into();
    let parts: Vec<&str> = stdout.split("@@").map(str::trim).collect();
    let uname = parts.first().copied().unwrap_or("");
    let arch = if uname.contains("aarch64") {
        Some(Arch::Aarch64)
    } else if uname.contains("x86") {
        Some(Arch::X86_64)
    } else {
        None
    };
    // The field stays a string: besides an architecture it carries "Unknown" (not probed) or
    // the unrecognised `uname -i`, which an `Arch` cannot hold.
    st.nodeArch = match arch {
        Some(a) => a.to_string(),
        None => format!("Unknown architecture: {uname}"),
    };
    let podman = parts.get(1).copied().unwrap_or("");
    if podman == "/usr/bin/podman" {
        st.podmanStatus = "Podman present at /usr/bin/podman".into();
        st.ableToRunJobs = arch.is_some();
    } else {
        st.podmanStatus = "Podman not found at /usr/bin/podman".into();
    }
    if let Some(n) = parts.get(2).and_then(|s| s.parse::<i64>().ok()) {
        st.numCurrentJobs = n;
    }
    st
}

#[async_trait]
impl NodeProber for SshProber {
    async fn probe(&self, xname: &str) -> RemoteBuildNodeStatus {
        let mut st = RemoteBuildNodeStatus::unknown(xname);
        let Some(key) = &self.key else {
            st.sshStatus = "No SSH key configured for remote build nodes.".into();
            return st;
        };
        if !safe_host(xname) {
            st.sshStatus = "Invalid host name.".into();
            return st;
        }
        let secs = self.timeout.as_secs().max(1);
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.arg("-i")
            .arg(key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                &format!("ConnectTimeout={secs}"),
                "-l",
                "root",
                "--",
                xname,
                PROBE_SCRIPT,
            ])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), cmd.output()).await {
            Err(_) => {
                st.sshStatus = format!("SSH connection timed out after {secs} s.");
                st
            }
            Ok(Err(e)) => {
                st.sshStatus = format!("Could not run ssh: {e}");
                st
            }
            Ok(Ok(out)) if !out.status.success() => {
                let err = String::from_utf8_lossy(&out.stderr);
                st.sshStatus = format!("SSH connection failed: {}", err.trim());
                st
            }
            Ok(Ok(out)) => parse_probe(xname, &String::from_utf8_lossy(&out.stdout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_output() {
        let s = parse_probe("x1", "x86_64\n@@\n/usr/bin/podman\n@@\n3\n");
        assert!(s.ableToRunJobs);
        assert_eq!(s.nodeArch, "x86_64");
        assert_eq!(s.numCurrentJobs, 3);
        let s = parse_probe("x1", "aarch64\n@@\n\n@@\n0\n");
        assert!(!s.ableToRunJobs);
        assert_eq!(s.nodeArch, "aarch64");
    }

    #[test]
    fn refuses_option_like_hosts() {
        assert!(!safe_host("-oProxyCommand=x"));
        assert!(!safe_host("a b"));
        assert!(safe_host("x3000c0s1b0n0"));
    }

    #[tokio::test]
    async fn no_key_reports_why() {
        let p = SshProber {
            key: None,
            timeout: Duration::from_secs(1),
        };
        let s = p.probe("x1").await;
        assert!(s.sshStatus.contains("No SSH key"));
        assert_eq!(s.numCurrentJobs, -1);
    }
}
