//! A job's SSH session with its user: the customize session, and the debug shell of a failed
//! create job. The agent starts the job's sshd ([`crate::sshd`]), reports where it listens,
//! sets `waiting_on_user`, and waits until the user finishes: a flag file (`/tmp/complete|failed`
//! inside the image root when jailed, `/mnt/image/complete|failed` otherwise) or
//! `ims jobs complete|fail` (the heartbeat brings the request).

use crate::context::JobContext;
use crate::error::{Context, Error, Result};
use crate::sshd;
use ims_client::Resource;
use ims_core::{JobStatus, SshStatus, UserRequest};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// At most this much of sshd's own log (logins, refused keys) goes into the job's log.
const SSHD_LOG_KEPT: u64 = 1024 * 1024;

/// An open session: sshd, and how far its log has gone into the job's log.
pub struct Open {
    ssh: sshd::Session,
    sshd_log: SshdLog,
}

/// Copies sshd's own log into the job's log as it grows (`sshd: …` lines), so refused logins
/// show in `ims jobs logs --follow` while the user tries.
struct SshdLog {
    offset: u64,
    partial: String,
}

impl SshdLog {
    /// Says every complete new line; `all`: the rest too (the session is over).
    fn drain(&mut self, agent: &JobContext, path: &Path, all: bool) {
        use std::io::{Read, Seek, SeekFrom};
        if self.offset >= SSHD_LOG_KEPT {
            return;
        }
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err()
            || f.take(SSHD_LOG_KEPT - self.offset)
                .read_to_end(&mut buf)
                .is_err()
        {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let cut = if all {
            self.partial.len()
        } else {
            self.partial.rfind('\n').map_or(0, |i| i + 1)
        };
        let done: String = self.partial.drain(..cut).collect();
        for line in done.lines().filter(|l| !l.trim().is_empty()) {
            agent.say(&format!("sshd: {line}"));
        }
        if self.offset >= SSHD_LOG_KEPT {
            agent.say(&format!(
                "sshd: (its log passed {} KiB; the rest is left out of the job's log)",
                SSHD_LOG_KEPT >> 10
            ));
        }
    }
}

/// The flag files of a session.
pub struct Flags {
    /// The trusted directory the flags' directory is looked up in: the image root (jailed
    /// sessions: the user writes `/tmp/complete` there) or the job directory (`mnt`).
    root: PathBuf,
    dir: &'static str,
}

impl Flags {
    pub const COMPLETE: &'static str = "complete";
    pub const FAILED: &'static str = "failed";

    pub fn new(job_dir: &Path, image_root: &Path, jail: bool) -> Flags {
        if jail {
            Flags {
                root: image_root.to_path_buf(),
                dir: "tmp",
            }
        } else {
            Flags {
                root: job_dir.to_path_buf(),
                dir: "mnt",
            }
        }
    }

    /// The flags' directory, reached without following a link: the image's `/tmp` may be a link
    /// to anywhere on the host, and is then no place for flags. Opened again on every look (the
    /// user may replace it).
    fn dir(&self) -> Option<ims_rootfs::confined::Dir> {
        ims_rootfs::confined::Root::open(&self.root)
            .ok()?
            .dir(Path::new(self.dir))
            .ok()
    }

    /// Whether the flag `name` is there, whatever it is (never followed).
    fn in_dir(d: &ims_rootfs::confined::Dir, name: &str) -> bool {
        matches!(d.kind(name.as_ref()), Ok(Some(_)))
    }

    /// The flag the user set, `failed` first; one look at the flags' directory.
    fn set(&self) -> Option<Outcome> {
        let d = self.dir()?;
        if Self::in_dir(&d, Self::FAILED) {
            Some(Outcome::Failed)
        } else if Self::in_dir(&d, Self::COMPLETE) {
            Some(Outcome::Complete)
        } else {
            None
        }
    }

    pub fn clear(&self) {
        if let Some(d) = self.dir() {
            for name in [Self::COMPLETE, Self::FAILED] {
                let _ = d.remove_file(name.as_ref());
            }
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
/// /sys and /dev in the image root), checks that a login works, reports its endpoint and host
/// key and sets `waiting_on_user`.
pub async fn open(
    agent: &JobContext,
    jail: bool,
    dkms: bool,
    set_env: Vec<(String, String)>,
) -> Result<Open> {
    let job = &agent.job;
    let public_key = agent
        .api
        .describe(Resource::PublicKeys, &job.public_key_id)
        .await
        .with_context(|| format!("cannot read the job's public key {}", job.public_key_id))?
        .get("public_key")
        .and_then(|k| k.as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::Failed("the job's public key record has no key".into()))?;
    let mut env = vec![("IMS_JOB_ID".to_string(), job.id.clone())];
    env.extend(set_env);
    let spec = sshd::Spec {
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
    let ssh = sshd::start(&spec).await?;
    let mut sshd_log = SshdLog {
        offset: 0,
        partial: String::new(),
    };
    if let Err(e) = sshd::check_login(&spec, &ssh).await {
        sshd_log.drain(agent, &ssh.log, true);
        ssh.stop().await;
        return Err(e);
    }
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
    let announced = async {
        let host_key = ssh.host_public_key()?;
        agent
            .report_ssh(
                &agent.settings.ssh_host,
                ssh.port,
                SshStatus::Running,
                Some(&host_key),
            )
            .await?;
        agent.status(JobStatus::WaitingOnUser).await
    }
    .await;
    if let Err(e) = announced {
        // Ended the same way as a session that ran: sshd stopped, its log in the job's.
        close(agent, Open { ssh, sshd_log }).await;
        return Err(e);
    }
    let (complete, failed) = if jail {
        ("/tmp/complete", "/tmp/failed")
    } else {
        ("/mnt/image/complete", "/mnt/image/failed")
    };
    agent.say(&format!(
        "waiting for the user: touch {complete} (or {failed}), or `ims jobs complete|fail {}`",
        job.id
    ));
    Ok(Open { ssh, sshd_log })
}

/// Stops the session's sshd, copies the rest of its own log into the job's log and reports the
/// endpoint stopped.
pub async fn close(agent: &JobContext, open: Open) {
    let Open { ssh, mut sshd_log } = open;
    let (port, path) = (ssh.port, ssh.log.clone());
    ssh.stop().await;
    sshd_log.drain(agent, &path, true);
    let _ = agent
        .report_ssh(&agent.settings.ssh_host, port, SshStatus::Stopped, None)
        .await;
}

/// Waits until the user sets a flag or asks through the API; an error if the job is cancelled
/// or sshd dies.
pub async fn wait_for_user(agent: &JobContext, flags: &Flags, open: &mut Open) -> Result<Outcome> {
    let mut requests = agent.requests.clone();
    let Open { ssh, sshd_log } = open;
    loop {
        sshd_log.drain(agent, &ssh.log, false);
        if !ssh.running() {
            return Err(Error::Failed(format!(
                "the job's sshd stopped unexpectedly; see {}",
                ssh.log.display()
            )));
        }
        match flags.set() {
            Some(Outcome::Failed) => {
                agent.say("the failed flag is set");
                return Ok(Outcome::Failed);
            }
            Some(Outcome::Complete) => {
                agent.say("the complete flag is set");
                return Ok(Outcome::Complete);
            }
            None => {}
        }
        let request = *requests.borrow();
        match request {
            Some(UserRequest::Complete) => {
                agent.say("completed through the API");
                return Ok(Outcome::Complete);
            }
            Some(UserRequest::Fail) => {
                agent.say("failed through the API");
                return Ok(Outcome::Failed);
            }
            None => {}
        }
        tokio::select! {
            _ = agent.cancel.cancelled() => return Err(Error::Cancelled),
            _ = requests.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Flags, Outcome};

    #[test]
    fn flags_are_found_and_cleared_in_the_real_tmp() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let flags = Flags::new(t.path(), &root, true);
        assert_eq!(flags.set(), None);
        std::fs::write(root.join("tmp/complete"), "").unwrap();
        assert_eq!(flags.set(), Some(Outcome::Complete));
        std::fs::write(root.join("tmp/failed"), "").unwrap();
        assert_eq!(
            flags.set(),
            Some(Outcome::Failed),
            "failed is looked at first"
        );
        flags.clear();
        assert!(!root.join("tmp/complete").exists() && !root.join("tmp/failed").exists());
    }

    #[test]
    fn an_image_tmp_linked_to_the_host_is_neither_read_nor_cleared() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("complete"), "host file").unwrap();
        std::fs::write(host.join("failed"), "host file").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&host, root.join("tmp")).unwrap();
        let flags = Flags::new(t.path(), &root, true);
        assert_eq!(flags.set(), None);
        flags.clear();
        assert!(host.join("complete").exists() && host.join("failed").exists());
    }
}
