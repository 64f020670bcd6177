//! A job's SSH session with its user: the customize session, and the debug shell of a failed
//! create job. The agent starts the job's sshd ([`crate::session`]), reports where it listens,
//! sets `waiting_on_user`, and waits until the user finishes: a flag file (`/tmp/complete|failed`
//! inside the image root when jailed, `/mnt/image/complete|failed` otherwise) or
//! `ims jobs complete|fail` (the heartbeat brings the request).

use crate::agent::Agent;
use crate::session;
use ims_client::Resource;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How much of the end of sshd's own log goes into the job's log when the session ends.
const SSHD_LOG_KEPT: u64 = 64 * 1024;

/// The flag files of a session.
pub struct Flags {
    pub complete: PathBuf,
    pub failed: PathBuf,
}

impl Flags {
    pub fn new(job_dir: &Path, image_root: &Path, jail: bool) -> Flags {
        let base = if jail {
            image_root.join("tmp")
        } else {
            job_dir.join("mnt")
        };
        Flags {
            complete: base.join("complete"),
            failed: base.join("failed"),
        }
    }

    /// Whether a flag is there, whatever it is (never followed).
    fn present(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok()
    }

    pub fn clear(&self) {
        for p in [&self.complete, &self.failed] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How the user ended the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Failed,
}

/// Starts the job's sshd for a session (`jail`: chrooted into the image root; `dkms`: /proc,
/// /sys and /dev in the image root), reports its endpoint and sets `waiting_on_user`.
pub async fn open(
    agent: &Agent,
    jail: bool,
    dkms: bool,
    set_env: Vec<(String, String)>,
) -> Result<session::Session, String> {
    let job = &agent.job;
    let public_key = agent
        .api
        .describe(Resource::PublicKeys, &job.public_key_id)
        .await
        .map_err(|e| {
            format!(
                "cannot read the job's public key {}: {e}",
                job.public_key_id
            )
        })?
        .get("public_key")
        .and_then(|k| k.as_str())
        .map(str::to_string)
        .ok_or("the job's public key record has no key")?;
    let mut env = vec![("IMS_JOB_ID".to_string(), job.id.clone())];
    env.extend(set_env);
    let spec = session::Spec {
        job_dir: agent.settings.dir.clone(),
        jail,
        public_key,
        listen: agent.settings.ssh_listen,
        ports: agent.settings.ssh_ports,
        set_env: env,
        ready_timeout: Duration::from_secs(30),
        dkms,
        debug: job.enable_debug,
    };
    let ssh = session::start(&spec).await?;
    agent.say(&format!(
        "sshd accepts connections on {}:{} ({}; root login with the job's key only)",
        agent.settings.ssh_host,
        ssh.port,
        if jail {
            "jailed: chrooted into the image root"
        } else {
            "the job's files are at /mnt/image"
        }
    ));
    let host_key = ssh.host_public_key()?;
    agent
        .report_ssh(
            &agent.settings.ssh_host,
            ssh.port,
            "running",
            Some(&host_key),
        )
        .await?;
    agent.status("waiting_on_user").await?;
    let (complete, failed) = if jail {
        ("/tmp/complete", "/tmp/failed")
    } else {
        ("/mnt/image/complete", "/mnt/image/failed")
    };
    agent.say(&format!(
        "waiting for the user: touch {complete} (or {failed}), or `ims jobs complete|fail {}`",
        job.id
    ));
    Ok(ssh)
}

/// Stops the session's sshd, copies the end of its own log (logins, refused keys) into the job's
/// log and reports the endpoint stopped.
pub async fn close(agent: &Agent, ssh: session::Session) {
    let (port, sshd_log) = (ssh.port, ssh.log.clone());
    ssh.stop().await;
    for line in session::log_tail(&sshd_log, SSHD_LOG_KEPT) {
        agent.say(&format!("sshd: {line}"));
    }
    let _ = agent
        .report_ssh(&agent.settings.ssh_host, port, "stopped", None)
        .await;
}

/// Waits until the user sets a flag or asks through the API; an error if the job is cancelled
/// or sshd dies.
pub async fn wait_for_user(
    agent: &Agent,
    flags: &Flags,
    ssh: &mut session::Session,
) -> Result<Outcome, String> {
    let mut requests = agent.requests.clone();
    loop {
        if !ssh.running() {
            return Err(format!(
                "the job's sshd stopped unexpectedly; see {}",
                ssh.log.display()
            ));
        }
        if Flags::present(&flags.failed) {
            agent.say("the failed flag is set");
            return Ok(Outcome::Failed);
        }
        if Flags::present(&flags.complete) {
            agent.say("the complete flag is set");
            return Ok(Outcome::Complete);
        }
        match requests.borrow().as_deref() {
            Some("complete") => {
                agent.say("completed through the API");
                return Ok(Outcome::Complete);
            }
            Some("fail") => {
                agent.say("failed through the API");
                return Ok(Outcome::Failed);
            }
            _ => {}
        }
        tokio::select! {
            _ = agent.cancel.cancelled() => return Err("the job was stopped".to_string()),
            _ = requests.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
