//! What the agent needs on the host it runs on, per job type: one declaration, checked by the
//! server at start-up and before it accepts a job (local executor), and by the agent itself when
//! it starts (wherever an executor put it), so a job that cannot work says why at once instead of
//! reaching `waiting_on_user` with a session nobody can log in to.

use ims_core::{Arch, JobType};
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

/// Capabilities a session needs besides: its network (slirp4netns opens a TUN device).
const SESSION_CAPABILITIES: &[(u32, &str)] = &[(12, "CAP_NET_ADMIN")];

/// The device the session's network (slirp4netns) opens.
const TUN: &str = "/dev/net/tun";

/// Where to look for programs named without a path: `path` (a `PATH` value).
pub(crate) fn find(name: &str, path: &str) -> Option<PathBuf> {
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

/// Checks this host for jobs of `job_type`; `arch`: the job's architecture, `None` before it is
/// known (then only what does not depend on it); `emulate`: jobs of another architecture may run
/// under qemu-user emulation (`IMS_JOB_EMULATE_AARCH64`; see [`arch_support`]); `session`: the
/// job opens an SSH session (every customize job; a create job with `enable_debug`). `path` is
/// the `PATH` the agent gets; `kiwi` the kiwi-ng program create jobs run.
pub fn check(
    job_type: JobType,
    arch: Option<Arch>,
    emulate: bool,
    session: bool,
    path: &str,
    kiwi: &Path,
) -> Check {
    let mut c = Check::default();
    if let Some(arch) = arch {
        match arch_support(arch, emulate) {
            Ok(Runs::Native) => {}
            Ok(Runs::Emulated) => c.warnings.push(format!(
                "{arch} {} on an {} host: running under qemu-user emulation, about 13x slower \
                 than native (an {arch} remote build node runs it natively)",
                if job_type == JobType::Create {
                    "recipe"
                } else {
                    "image"
                },
                std::env::consts::ARCH
            )),
            Err(why) => c.missing.push(why),
        }
    }
    if !rustix::process::geteuid().is_root() {
        c.missing.push(
            "root: the agent mounts the image, and the session's sshd logs users in as root \
             (it refuses keys that root does not own); run `ims serve` as root"
                .to_string(),
        );
    } else if let Some(eff) = effective_capabilities() {
        let session_caps: &[(u32, &str)] = if session { SESSION_CAPABILITIES } else { &[] };
        let lacking: Vec<&str> = CAPABILITIES
            .iter()
            .chain(session_caps)
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
    if session && !Path::new(TUN).exists() {
        c.missing.push(format!(
            "the TUN device {TUN} (the session's network; a container needs the host's mounted)"
        ));
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

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";
/// The binfmt_misc entry of aarch64 programs (as Debian's qemu-user-static registers it).
const QEMU_AARCH64: &str = "qemu-aarch64";
/// How to get emulation on Debian.
const EMULATION_INSTALL: &str = "`apt install qemu-user-static binfmt-support`";

/// How this host runs jobs of an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    Native,
    /// Under qemu-user, through binfmt_misc: every program of the image root (the session's shell,
    /// package scripts) is an aarch64 program the kernel hands to the registered interpreter.
    Emulated,
}

/// How this host runs jobs of `arch`: natively when it is the host's own; aarch64 under
/// emulation when `emulate` (the administrator's `IMS_JOB_EMULATE_AARCH64`) and binfmt_misc has
/// `qemu-aarch64` registered, enabled and with the F (fix-binary) flag (the interpreter is
/// opened when it is registered, so it works inside an image root, a chroot or a sandbox that
/// lacks it). The error says what is missing and how to fix it.
pub fn arch_support(arch: Arch, emulate: bool) -> Result<Runs, String> {
    arch_support_in(
        arch,
        std::env::consts::ARCH,
        emulate,
        Path::new(BINFMT_MISC),
    )
}

fn arch_support_in(arch: Arch, host: &str, emulate: bool, binfmt: &Path) -> Result<Runs, String> {
    if arch.as_str() == host {
        return Ok(Runs::Native);
    }
    if arch != Arch::Aarch64 {
        return Err(format!(
            "an {arch} host: this host is {host} and only aarch64 jobs can run under emulation \
             (run {arch} jobs on an {arch} host or remote build node)"
        ));
    }
    if !emulate {
        return Err(format!(
            "an aarch64 host: this host is {host} and aarch64 emulation is off (set \
             IMS_JOB_EMULATE_AARCH64=true, with {EMULATION_INSTALL}, or register an aarch64 \
             remote build node)"
        ));
    }
    match binfmt_problem(binfmt, QEMU_AARCH64) {
        None => Ok(Runs::Emulated),
        Some(why) => Err(format!(
            "aarch64 emulation (IMS_JOB_EMULATE_AARCH64 is on): {why}"
        )),
    }
}

/// A binfmt_misc entry (`/proc/sys/fs/binfmt_misc/NAME`), as far as emulation needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinfmtEntry {
    pub enabled: bool,
    pub interpreter: Option<PathBuf>,
    /// The entry's flags (`F`: fix-binary, `P`: preserve argv[0], `C`: credentials, `O`: open
    /// binary).
    pub flags: String,
}

impl BinfmtEntry {
    /// Reads the kernel's text of an entry: `enabled` or `disabled`, `interpreter PATH`,
    /// `flags: FLAGS`, then offset, magic and mask (ignored).
    pub fn parse(text: &str) -> BinfmtEntry {
        let mut e = BinfmtEntry::default();
        for line in text.lines() {
            let line = line.trim_end();
            if line == "enabled" {
                e.enabled = true;
            } else if let Some(p) = line.strip_prefix("interpreter ") {
                e.interpreter = Some(PathBuf::from(p));
            } else if let Some(f) = line.strip_prefix("flags:") {
                e.flags = f.trim().to_string();
            }
        }
        e
    }

    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}

/// What keeps binfmt_misc under `dir` from running programs through its entry `name`, with how
/// to fix it; `None` when nothing does.
fn binfmt_problem(dir: &Path, name: &str) -> Option<String> {
    let status = dir.join("status");
    match std::fs::read_to_string(&status) {
        Ok(s) if s.trim() == "disabled" => {
            return Some(format!(
                "binfmt_misc is disabled (`echo 1 > {}`)",
                status.display()
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "binfmt_misc is not mounted at {} (`mount -t binfmt_misc binfmt_misc {}`, then \
                 `update-binfmts --enable {name}`)",
                dir.display(),
                dir.display()
            ));
        }
        Err(e) => return Some(format!("cannot read {}: {e}", status.display())),
    }
    let path = dir.join(name);
    let entry = match std::fs::read_to_string(&path) {
        Ok(t) => BinfmtEntry::parse(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{name} is not registered with binfmt_misc (no {}: {EMULATION_INSTALL}, then \
                 `update-binfmts --enable {name}`)",
                path.display()
            ));
        }
        Err(e) => return Some(format!("cannot read {}: {e}", path.display())),
    };
    if !entry.enabled {
        return Some(format!(
            "the binfmt_misc entry {name} is disabled (`update-binfmts --enable {name}`)"
        ));
    }
    if !entry.fix_binary() {
        return Some(format!(
            "the binfmt_misc entry {name} lacks the F (fix-binary) flag (flags {:?}), so its \
             interpreter is not found inside an image root: register it with F, as Debian's \
             qemu-user-static does ({EMULATION_INSTALL})",
            entry.flags
        ));
    }
    match &entry.interpreter {
        Some(i) if i.is_file() => None,
        Some(i) => Some(format!(
            "the interpreter of the binfmt_misc entry {name}, {}, does not exist (reinstall \
             qemu-user-static)",
            i.display()
        )),
        None => Some(format!("the binfmt_misc entry {name} names no interpreter")),
    }
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
            None,
            false,
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
            None,
            false,
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
            let c = check(
                JobType::Customize,
                None,
                false,
                true,
                path,
                Path::new("kiwi-ng"),
            );
            assert_eq!(c.explain(JobType::Customize), None, "{c:?}");
            let host: Arch = std::env::consts::ARCH.parse().unwrap();
            let c = check(
                JobType::Customize,
                Some(host),
                false,
                true,
                path,
                Path::new("kiwi-ng"),
            );
            assert_eq!(c.explain(JobType::Customize), None, "{c:?}");
        }
    }

    /// What Debian 12's qemu-user-static registers (`/proc/sys/fs/binfmt_misc/qemu-aarch64`).
    const QEMU_AARCH64_ENTRY: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn binfmt_entries_are_parsed() {
        let e = BinfmtEntry::parse(QEMU_AARCH64_ENTRY);
        assert_eq!(
            e,
            BinfmtEntry {
                enabled: true,
                interpreter: Some(PathBuf::from("/usr/libexec/qemu-binfmt/aarch64-binfmt-P")),
                flags: "PF".into(),
            }
        );
        assert!(e.fix_binary());
        let e = BinfmtEntry::parse("disabled\ninterpreter /q\nflags: \noffset 0\n");
        assert!(!e.enabled && !e.fix_binary(), "{e:?}");
        assert_eq!(e.interpreter.as_deref(), Some(Path::new("/q")));
        assert_eq!(BinfmtEntry::parse(""), BinfmtEntry::default());
    }

    /// A binfmt_misc directory: `status` (if any) and the `qemu-aarch64` entry (if any), whose
    /// interpreter is `interp` (a file that exists unless `interp_exists` is false).
    fn binfmt(
        status: Option<&str>,
        entry: Option<(&str, &str)>,
        interp_exists: bool,
    ) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let interp = d.path().join("qemu-aarch64-static");
        if interp_exists {
            std::fs::write(&interp, "").unwrap();
        }
        if let Some(s) = status {
            std::fs::write(d.path().join("status"), s).unwrap();
        }
        if let Some((state, flags)) = entry {
            std::fs::write(
                d.path().join("qemu-aarch64"),
                format!(
                    "{state}\ninterpreter {}\nflags: {flags}\noffset 0\n",
                    interp.display()
                ),
            )
            .unwrap();
        }
        d
    }

    #[test]
    fn the_architecture_decides_native_or_emulated_or_refused() {
        let none = Path::new("/nonexistent/binfmt_misc");
        assert_eq!(
            arch_support_in(Arch::X86_64, "x86_64", false, none),
            Ok(Runs::Native)
        );
        assert_eq!(
            arch_support_in(Arch::Aarch64, "aarch64", false, none),
            Ok(Runs::Native)
        );
        let e = arch_support_in(Arch::X86_64, "aarch64", true, none).unwrap_err();
        assert!(
            e.contains("only aarch64 jobs can run under emulation"),
            "{e}"
        );
        let e = arch_support_in(Arch::Aarch64, "x86_64", false, none).unwrap_err();
        assert!(
            e.contains("emulation is off")
                && e.contains("IMS_JOB_EMULATE_AARCH64=true")
                && e.contains("qemu-user-static binfmt-support"),
            "{e}"
        );
        let e = arch_support_in(Arch::Aarch64, "x86_64", true, none).unwrap_err();
        assert!(
            e.contains("binfmt_misc is not mounted") && e.contains("mount -t binfmt_misc"),
            "{e}"
        );

        let ok = binfmt(Some("enabled\n"), Some(("enabled", "PF")), true);
        assert_eq!(
            arch_support_in(Arch::Aarch64, "x86_64", true, ok.path()),
            Ok(Runs::Emulated)
        );
        let cases = [
            (
                binfmt(Some("disabled\n"), Some(("enabled", "PF")), true),
                "binfmt_misc is disabled",
            ),
            (
                binfmt(Some("enabled\n"), None, true),
                "qemu-aarch64 is not registered",
            ),
            (
                binfmt(Some("enabled\n"), Some(("disabled", "PF")), true),
                "update-binfmts --enable qemu-aarch64",
            ),
            (
                binfmt(Some("enabled\n"), Some(("enabled", "P")), true),
                "lacks the F (fix-binary) flag",
            ),
            (
                binfmt(Some("enabled\n"), Some(("enabled", "OCF")), false),
                "does not exist (reinstall qemu-user-static)",
            ),
        ];
        for (dir, want) in cases {
            let e = arch_support_in(Arch::Aarch64, "x86_64", true, dir.path()).unwrap_err();
            assert!(
                e.starts_with("aarch64 emulation (IMS_JOB_EMULATE_AARCH64 is on): "),
                "{e}"
            );
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        let d = binfmt(Some("enabled\n"), None, true);
        std::fs::write(d.path().join("qemu-aarch64"), "enabled\nflags: F\n").unwrap();
        let e = arch_support_in(Arch::Aarch64, "x86_64", true, d.path()).unwrap_err();
        assert!(e.contains("names no interpreter"), "{e}");
    }

    #[test]
    fn a_foreign_architecture_is_missing_or_warned_about() {
        let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let foreign = if std::env::consts::ARCH == "aarch64" {
            Arch::X86_64
        } else {
            Arch::Aarch64
        };
        let c = check(
            JobType::Customize,
            Some(foreign),
            false,
            true,
            path,
            Path::new("kiwi-ng"),
        );
        assert!(c.missing.iter().any(|m| m.contains("emulation")), "{c:?}");
        // Before the arch is known nothing is said about it.
        let c = check(
            JobType::Customize,
            None,
            false,
            true,
            path,
            Path::new("kiwi-ng"),
        );
        assert!(!c.missing.iter().any(|m| m.contains("emulation")), "{c:?}");
        // On an x86_64 host with qemu-user-static registered (the test machine), emulation is
        // usable and says so in a warning.
        if std::env::consts::ARCH == "x86_64"
            && binfmt_problem(Path::new(BINFMT_MISC), QEMU_AARCH64).is_none()
        {
            let c = check(
                JobType::Customize,
                Some(Arch::Aarch64),
                true,
                true,
                path,
                Path::new("kiwi-ng"),
            );
            assert!(!c.missing.iter().any(|m| m.contains("emulation")), "{c:?}");
            assert!(
                c.warnings.iter().any(|w| w.starts_with(
                    "aarch64 image on an x86_64 host: running under qemu-user emulation, about 13x slower"
                )),
                "{c:?}"
            );
        }
    }
}
