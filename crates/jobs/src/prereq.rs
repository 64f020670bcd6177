//! What the agent needs on the host it runs on, per job type: one declaration, checked by the
//! server at start-up and before it accepts a job (local executor), and by the agent itself when
//! it starts (wherever an executor put it), so a job that cannot work says why at once instead of
//! reaching `waiting_on_user` with a session nobody can log in to.

use ims_core::JobType;
use std::path::{Path, PathBuf};

/// A program the agent runs, and the Debian package that provides it.
struct Tool {
    name: &'static str,
    package: &'static str,
}

const fn tool(name: &'static str, package: &'static str) -> Tool {
    Tool { name, package }
}

/// Every job: the image root (loop mounts, overlay, private mount namespace) and packaging.
const COMMON: &[Tool] = &[
    tool("mount", "mount"),
    tool("umount", "mount"),
    tool("mksquashfs", "squashfs-tools"),
    tool("unsquashfs", "squashfs-tools"),
];

/// A session with the user (customize jobs; create jobs' debug shell): sshd in a bubblewrap
/// sandbox with its capabilities cut by setpriv and a network of its own (slirp4netns); ssh-keygen makes its host key and the ssh
/// client checks that a login works before the job says it waits for its user. (Absolute paths
/// where the session runs them so.)
const SESSION: &[Tool] = &[
    tool("bwrap", "bubblewrap"),
    tool("/usr/sbin/sshd", "openssh-server"),
    tool("/usr/bin/setpriv", "util-linux"),
    tool("slirp4netns", "slirp4netns"),
    tool("ssh-keygen", "openssh-client"),
    tool("ssh", "openssh-client"),
];

/// Capabilities the agent uses (bit numbers of `linux/capability.h`): mounts and namespaces
/// (SYS_ADMIN), the session's sshd (SETUID, SETGID, SYS_CHROOT, SETPCAP for its bounding set),
/// and root's work on the image (CHOWN, DAC_OVERRIDE, FOWNER, MKNOD, SETFCAP).
const CAPABILITIES: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (18, "CAP_SYS_CHROOT"),
    (21, "CAP_SYS_ADMIN"),
    (27, "CAP_MKNOD"),
    (31, "CAP_SETFCAP"),
];

/// Where to look for programs named without a path: `path` (a `PATH` value).
fn find(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
}

/// The effective capabilities of this process (`CapEff` of /proc/self/status).
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What a host lacks for a kind of job.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Check {
    /// What stops the jobs, each with how to fix it.
    pub missing: Vec<String>,
    /// What makes them slower or weaker but does not stop them.
    pub warnings: Vec<String>,
}

/// Checks this host for jobs of `job_type`; `session`: the job opens
/// an SSH session (every customize job; a create job with `enable_debug`). `path` is the `PATH`
/// the agent gets; `kiwi` the kiwi-ng program create jobs run.
pub fn check(job_type: JobType, session: bool, path: &str, kiwi: &Path) -> Check {
    let mut c = Check::default();
    if !rustix::process::geteuid().is_root() {
        c.missing.push(
            "root: the agent mounts the image, and the session's sshd logs users in as root \
             (it refuses keys that root does not own); run `ims serve` as root"
                .to_string(),
        );
    } else if let Some(eff) = effective_capabilities() {
        let lacking: Vec<&str> = CAPABILITIES
            .iter()
            .filter(|(bit, _)| eff & (1u64 << bit) == 0)
            .map(|(_, name)| *name)
            .collect();
        if !lacking.is_empty() {
            c.missing.push(format!(
                "capabilities {} (a container or unit file removed them)",
                lacking.join(", ")
            ));
        }
    }
    if job_type == JobType::Create && find(&kiwi.to_string_lossy(), path).is_none() {
        c.missing.push(format!(
            "{} (install kiwi, or set IMS_AGENT_KIWI to kiwi-ng's path)",
            kiwi.display()
        ));
    }
    let session_tools: &[Tool] = if session { SESSION } else { &[] };
    c.missing.extend(
        COMMON
            .iter()
            .chain(session_tools)
            .filter(|t| find(t.name, path).is_none())
            .map(|t| format!("{} (install {})", t.name, t.package)),
    );
    if job_type == JobType::Customize && !overlay_available() {
        c.warnings.push(
            "the overlay filesystem is not available (`modprobe overlay`): customize jobs \
             unpack each image instead, which is slower"
                .to_string(),
        );
    }
    c
}

/// Whether the kernel has overlayfs (built in or loaded), or can load it.
fn overlay_available() -> bool {
    if std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| {
        f.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    }) {
        return true;
    }
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    Path::new("/lib/modules")
        .join(release.trim())
        .join("kernel/fs/overlayfs")
        .exists()
}

impl Check {
    /// One line saying what is missing, for logs and errors; `None` when nothing is.
    pub fn explain(&self, job_type: JobType) -> Option<String> {
        (!self.missing.is_empty()).then(|| {
            format!(
                "{job_type} jobs cannot run on this host; missing: {}",
                self.missing.join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_or_by_their_path() {
        assert!(find("sh", "/nonexistent:/usr/bin:/bin").is_some());
        assert!(find("sh", "/nonexistent").is_none());
        assert!(find("/bin/sh", "").is_some());
        assert!(find("/etc/passwd", "").is_none(), "not executable");
        assert!(find("/etc", "").is_none(), "a directory");
    }

    #[test]
    fn a_missing_tool_is_named_with_its_package() {
        let c = check(
            JobType::Customize,
            true,
            "/nonexistent",
            Path::new("kiwi-ng"),
        );
        let m = &c.missing;
        assert!(
            m.iter().any(|l| l == "mksquashfs (install squashfs-tools)"),
            "{m:?}"
        );
        assert!(m.iter().any(|l| l == "bwrap (install bubblewrap)"), "{m:?}");
        assert!(
            m.iter().any(|l| l == "slirp4netns (install slirp4netns)"),
            "{m:?}"
        );
        assert!(!m.iter().any(|l| l.contains("kiwi")), "{m:?}");
        let c = check(
            JobType::Create,
            false,
            "/nonexistent",
            Path::new("/nonexistent/kiwi-ng"),
        );
        assert!(
            c.missing.iter().any(|l| l.contains("IMS_AGENT_KIWI")),
            "{c:?}"
        );
        assert!(
            !c.missing.iter().any(|l| l.contains("bwrap")),
            "no session, no sandbox: {c:?}"
        );
        assert!(
            c.explain(JobType::Create)
                .unwrap()
                .starts_with("create jobs cannot run on this host; missing: ")
        );
        // On the test machine everything is there (the suite runs as root with the packages).
        if rustix::process::geteuid().is_root() {
            let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
            let c = check(JobType::Customize, true, path, Path::new("kiwi-ng"));
            assert_eq!(c.explain(JobType::Customize), None, "{c:?}");
        }
    }
}
