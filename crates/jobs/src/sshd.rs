//! The SSH session of a job: one OpenSSH `sshd` per job, in a bubblewrap sandbox.
//!
//! The sandbox is the isolation boundary (measured in docs/research/job-sandbox.md):
//!
//! * new mount, pid, ipc, uts, cgroup and network namespaces. The network is a user-mode stack,
//!   `slirp4netns`, attached to the sandbox's namespace: outbound TCP and UDP are NATed through
//!   the agent's own sockets (package mirrors, CFS; DNS at 10.0.2.3 goes to the host's resolvers),
//!   but the host's loopback is not reachable (`--disable-host-loopback`), so neither the API nor
//!   the S3 endpoint on 127.0.0.1 is. sshd listens inside on 10.0.2.100:2222 and slirp4netns
//!   forwards the session's port on the host (`listen`, a port of `ports`) to it; sshd sees every
//!   connection coming from 10.0.2.2, the gateway. slirp4netns runs in a sandbox and seccomp
//!   filter of its own, and exits when the agent's end of its exit pipe closes (the agent stops
//!   the session or dies);
//! * its root is built from read-only binds of the host's `/usr` (tools, and `sshd` itself), a
//!   generated `/etc` (users, the sshd configuration, fresh host keys, the job's public key only),
//!   private `/tmp` and `/run`, a minimal `/dev`, a `/proc` of its own with `/proc/sys` read-only,
//!   and the job's `mnt` directory at `/mnt/image` (holding `image-root`). Nothing else of the host
//!   — not the data directory, not other jobs — exists inside;
//! * capabilities are cut to what sshd and root customization need (the bounding set too, with
//!   `setpriv`), and the [`crate::seccomp`] filter refuses user namespaces, keyrings, mounts,
//!   module loading and the like; the environment is empty;
//! * `jail: true` adds `ChrootDirectory /mnt/image/image-root` with the image root's own `/dev`
//!   (the sandbox's, shared so ptys work) and `/proc` mounted inside the sandbox only — the image
//!   root outside, and so the packaged image, never sees them. sshd needs `CAP_SYS_CHROOT` for
//!   the chroot, so the session's login shell is a small static program
//!   (`shell/ims-session-shell.c`, bound at `/dev/.ims/shell`, in the sandbox's `/dev` only) that
//!   drops `CAP_SYS_CHROOT` and `CAP_SETPCAP` and then runs the image's `/bin/bash` (or
//!   `/bin/sh`): root in a jailed session cannot `chroot` out of the image root. sshd is the
//!   sandbox's pid 1 (`--as-pid-1`, no capability-less bwrap reaper), so every process outside
//!   the chroot holds a capability the session lacks and the kernel refuses the session its
//!   `/proc/PID/root` (the ptrace access rule).
//!
//! `--die-with-parent`: if the agent dies, the sandbox and every session process die with it.
//!
//! An aarch64 image on an x86_64 host (`IMS_JOB_EMULATE_AARCH64`): the image's shell and every
//! program in the session are aarch64 programs the kernel runs through binfmt_misc's
//! `qemu-aarch64` entry. Its F flag (checked by [`crate::prereq`]) makes the kernel open the
//! interpreter when it is registered, so it needs no path in the chroot or the sandbox, and
//! no_new_privs does not stop it; qemu makes the host's system calls, which the seccomp filter
//! judges as any other x86_64 process's (the integration test `jobs_aarch64` runs such a session).

use crate::error::{Context, Error, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Capabilities kept: what sshd needs (SETUID, SETGID, SYS_CHROOT; CHOWN and AUDIT_WRITE for
/// ptys) and what root needs to customize an image (DAC_OVERRIDE, FOWNER, FSETID, KILL, SETFCAP).
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SYS_CHROOT",
    "CAP_SETFCAP",
    "CAP_AUDIT_WRITE",
];

/// What a session needs.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The job directory (its `mnt` holds `image-root`).
    pub job_dir: PathBuf,
    pub jail: bool,
    /// The one public key accepted (an OpenSSH `authorized_keys` line).
    pub public_key: String,
    /// Address the session's port is on (IPv4: slirp4netns forwards it to sshd in the sandbox).
    pub listen: std::net::IpAddr,
    /// Ports the session's port may be (a firewall's range); `None`: any free port.
    pub ports: Option<PortRange>,
    /// Environment for sessions (`SetEnv`), e.g. `IMS_JOB_ID`.
    pub set_env: Vec<(String, String)>,
    /// How long sshd may take to accept connections.
    pub ready_timeout: Duration,
    /// `require_dkms`: `/proc`, `/sys` (read-only) and `/dev` mounted inside the image root for the
    /// session (in the sandbox only: packaging never sees them), so module builds work.
    pub dkms: bool,
    /// `enable_debug`: sshd logs verbosely.
    pub debug: bool,
}

/// A running session.
pub struct Session {
    /// bwrap (sshd is its child, the sandbox's pid 1).
    child: tokio::process::Child,
    /// The sandbox's network.
    net: tokio::process::Child,
    /// Our end of slirp4netns's exit pipe: closed when the session is dropped or the agent dies,
    /// which ends slirp4netns.
    _net_exit: std::os::fd::OwnedFd,
    pub port: u16,
    pub log: PathBuf,
}

/// A known-hosts line for `key` at `ip`:`port`, as OpenSSH looks it up: the bare address for port
/// 22 (a pod's session port), `[address]:port` otherwise.
fn known_hosts_line(ip: std::net::IpAddr, port: u16, key: &str) -> String {
    if port == 22 {
        format!("{ip} {key}\n")
    } else {
        format!("[{ip}]:{port} {key}\n")
    }
}

fn write(path: &Path, data: &str, mode: u32) -> Result<()> {
    crate::rootfiles::replace_file(path, data.as_bytes(), mode)
}

/// A line of `sshd_config` or `authorized_keys` must not smuggle in another line.
fn one_line(what: &str, s: &str) -> Result<()> {
    if s.contains(['\n', '\r', '\0']) {
        return Err(Error::Refused(format!("the {what} spans several lines")));
    }
    Ok(())
}

/// Where sshd listens inside the sandbox's network namespace (slirp4netns's guest address).
const GUEST_ADDR: &str = "10.0.2.100";
const GUEST_PORT: u16 = 2222;
/// slirp4netns's DNS forwarder, for hosts whose resolvers are on their loopback.
const GUEST_DNS: &str = "10.0.2.3";
/// The login shell of jailed sessions, in the sandbox's `/dev` (which is the jail's).
const JAIL_SHELL: &str = "/dev/.ims/shell";
/// [`JAIL_SHELL`]'s program (`shell/ims-session-shell.c`, built static by `build.rs`).
const JAIL_SHELL_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ims-session-shell"));

/// `penalties`: sshd has `PerSourcePenalties` (OpenSSH 9.8 and later), which must be off: every
/// connection comes from slirp4netns's gateway address, so one client's penalty (the readiness
/// probe's is "no authentication") would lock every user out.
fn sshd_config(spec: &Spec, penalties: bool) -> Result<String> {
    let mut c = format!("Port {GUEST_PORT}\nListenAddress {GUEST_ADDR}\n");
    if penalties {
        c.push_str("PerSourcePenalties no\n");
    }
    c.push_str(
        "HostKey /etc/ssh/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
AllowUsers root
PubkeyAuthentication yes
AuthorizedKeysFile /etc/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
Subsystem sftp internal-sftp
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTunnel no
",
    );
    c.push_str(if spec.debug {
        "LogLevel VERBOSE\n"
    } else {
        "LogLevel INFO\n"
    });
    if !spec.set_env.is_empty() {
        c.push_str("SetEnv");
        for (k, v) in &spec.set_env {
            one_line("session environment", v)?;
            if !k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                || v.contains([' ', '"'])
            {
                return Err(Error::Refused(format!(
                    "bad session environment variable {k}={v:?}"
                )));
            }
            c.push_str(&format!(" {k}={v}"));
        }
        c.push('\n');
    }
    if spec.jail {
        c.push_str("ChrootDirectory /mnt/image/image-root\n");
    }
    Ok(c)
}

/// Ports sessions may listen on: part of the agent's contract.
pub use ims_core::agent_env::PortRange;

/// A free TCP port on `ip`, in `ports` when given (sshd binds it right after; a lost race is
/// retried by the caller). In a range the search starts at a different place for each process,
/// so concurrent jobs rarely try the same port.
fn free_port(ip: std::net::IpAddr, ports: Option<PortRange>) -> Result<u16> {
    let Some(r) = ports else {
        return std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .with_context(|| format!("cannot find a free port on {ip}"));
    };
    let n = u32::from(r.last - r.first) + 1;
    let start = (std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()))
        % n;
    (0..n)
        .map(|i| r.first + ((start + i) % n) as u16)
        .find(|p| std::net::TcpListener::bind((ip, *p)).is_ok())
        .ok_or_else(|| {
            Error::Failed(format!(
                "no free port in the session port range {r} on {ip}"
            ))
        })
}

/// Where the agent reaches a session listening on `listen`: that address, or loopback for the
/// unspecified one.
fn local_address(listen: std::net::IpAddr) -> std::net::IpAddr {
    if listen.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen
    }
}

/// Connects and reads the SSH banner: only an sshd that serves connections sends it.
async fn serves(ip: std::net::IpAddr, port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let ip = local_address(ip);
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    else {
        return false;
    };
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"SSH-2.0-"
    )
}

/// Whether the host's sshd is OpenSSH 9.8 or later (`PerSourcePenalties`).
fn sshd_has_penalties() -> bool {
    let Ok(out) = std::process::Command::new("/usr/sbin/sshd")
        .arg("-V")
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let Some(v) = text.split("OpenSSH_").nth(1) else {
        return false;
    };
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (9, 8)
}

/// The session's `resolv.conf`: the host's, with its loopback resolvers (a local stub such as
/// systemd-resolved's 127.0.0.53, unreachable from the session's network namespace) replaced by
/// slirp4netns's DNS forwarder, which asks the host's first resolver, and IPv6 resolvers left
/// out (the session has no IPv6 route). `None` if the host has no resolv.conf.
pub fn resolv_conf() -> Option<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .map(|host| session_resolv_conf(&host))
}

fn session_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    let mut forwarder = false;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        match words
            .next()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        {
            Some(std::net::IpAddr::V4(a)) if !a.is_loopback() => {
                out.push_str(&format!("nameserver {a}\n"));
                servers += 1;
            }
            Some(std::net::IpAddr::V4(_)) if !forwarder => {
                out.push_str(&format!("nameserver {GUEST_DNS}\n"));
                forwarder = true;
                servers += 1;
            }
            _ => {}
        }
    }
    if servers == 0 {
        out.push_str(&format!("nameserver {GUEST_DNS}\n"));
    }
    out
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// Generates the session's `/etc` in `<job>/session/etc`.
fn make_etc(spec: &Spec, etc: &Path) -> Result<()> {
    // The login shell: jailed, the capability-dropping one (which runs the image's bash or sh);
    // otherwise bash where the host has it, else sh.
    let shell = if spec.jail {
        JAIL_SHELL
    } else if Path::new("/usr/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    use std::os::unix::fs::DirBuilderExt;
    let ssh = etc.join("ssh");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&ssh)
        .with_context(|| format!("cannot create {}", ssh.display()))?;
    write(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:{shell}\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        0o644,
    )?;
    write(
        &etc.join("group"),
        "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        0o644,
    )?;
    write(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
        0o644,
    )?;
    write(
        &etc.join("hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
        0o644,
    )?;
    if let Some(r) = resolv_conf() {
        write(&etc.join("resolv.conf"), &r, 0o644)?;
    }
    one_line("public key", spec.public_key.trim())?;
    write(
        &ssh.join("authorized_keys"),
        &format!("{}\n", spec.public_key.trim()),
        0o644,
    )?;
    write(
        &ssh.join("sshd_config"),
        &sshd_config(spec, sshd_has_penalties())?,
        0o644,
    )?;
    if !spec.jail {
        host_etc_mount_points(etc)?;
    }
    let key = ssh.join("ssh_host_ed25519_key");
    if !key.exists() {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ims-job", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ssh-keygen (install openssh-client)")?;
        if !out.status.success() {
            return Err(Error::Failed(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// The image root as a chroot: owned by root and not writable by others, as sshd requires (a
/// session may have changed it).
pub fn fix_chroot_modes(job_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for p in [job_dir.join("mnt"), job_dir.join("mnt").join("image-root")] {
        let m = std::fs::symlink_metadata(&p).with_context(|| p.display().to_string())?;
        if !m.is_dir() {
            return Err(Error::Refused(format!(
                "{} is not a directory",
                p.display()
            )));
        }
        std::os::unix::fs::lchown(&p, Some(0), Some(0))
            .with_context(|| format!("cannot chown {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", p.display()))?;
    }
    Ok(())
}

/// What a shell, common scripts and Ansible expect of a host's `/etc`, bound read-only from the
/// host into the sandbox of non-jailed sessions (whose programs are the host's `/usr`): the
/// `alternatives` links (`awk`, `which`, `vi`…), `os-release`, CA certificates (never
/// `/etc/ssl/private`), time zone and shell start-up files. (`true`: a directory.)
const HOST_ETC: &[(&str, bool)] = &[
    ("alternatives", true),
    ("os-release", false),
    ("debian_version", false),
    ("ssl/certs", true),
    ("ca-certificates", true),
    ("localtime", false),
    ("timezone", false),
    ("profile", false),
    ("profile.d", true),
    ("bash.bashrc", false),
    ("inputrc", false),
    ("terminfo", true),
    ("ld.so.cache", false),
    ("ld.so.conf", false),
    ("ld.so.conf.d", true),
    ("environment", false),
];

/// Mount points in the generated `/etc` for [`HOST_ETC`] entries the host has (bwrap cannot
/// create them inside the read-only `/etc`).
fn host_etc_mount_points(etc: &Path) -> Result<()> {
    for (name, dir) in HOST_ETC {
        let host = Path::new("/etc").join(name);
        if !host.exists() {
            continue;
        }
        let p = etc.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let made = if *dir {
            std::fs::create_dir_all(&p)
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
                .map(drop)
        };
        made.with_context(|| format!("cannot create {}", p.display()))?;
    }
    Ok(())
}

/// The descriptors bwrap gets: the seccomp filter, and what it waits on before it starts sshd
/// (the network being ready).
#[derive(Debug, Clone, Copy)]
struct Fds {
    seccomp: Option<i32>,
    block: i32,
}

/// bwrap's arguments; `jail_shell`: the host file bound at [`JAIL_SHELL`]. bwrap starts in the
/// session's network namespace (made by [`start`]; bwrap's own `--unshare-net` would set up the
/// loopback interface at the same time as slirp4netns does, and the two race).
fn bwrap_args(spec: &Spec, etc: &Path, jail_shell: &Path, fds: Fds) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![];
    let mut push = |s: &str| a.push(s.into());
    for s in [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        // sshd is pid 1: bwrap's reaper would be a process outside the jail without capabilities,
        // whose /proc/1/root a capability-less session could enter.
        "--as-pid-1",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--block-fd",
        &fds.block.to_string(),
        "--hostname",
        "ims-job",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/sbin",
        "/sbin",
    ] {
        push(s);
    }
    if Path::new("/usr/lib64").exists() {
        for s in ["--symlink", "usr/lib64", "/lib64"] {
            push(s);
        }
    }
    a.push("--ro-bind".into());
    a.push(etc.into());
    a.push("/etc".into());
    if !spec.jail {
        for (name, _) in HOST_ETC {
            let host = Path::new("/etc").join(name);
            a.push("--ro-bind-try".into());
            a.push(host.clone().into());
            a.push(host.into());
        }
    }
    let mut push = |s: &str| a.push(s.into());
    for s in [
        "--proc",
        "/proc",
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        "--ro-bind-try",
        "/proc/sysrq-trigger",
        "/proc/sysrq-trigger",
        "--size",
        "536870912",
        "--tmpfs",
        "/tmp",
        "--size",
        "16777216",
        "--tmpfs",
        "/run",
        "--perms",
        "0755",
        "--dir",
        "/run/sshd",
        "--perms",
        "0700",
        "--dir",
        "/root",
    ] {
        push(s);
    }
    a.push("--bind".into());
    a.push(spec.job_dir.join("mnt").into());
    a.push("/mnt/image".into());
    let mut push = |s: &str| a.push(s.into());
    if spec.jail {
        // One /dev (and devpts) shared by sshd and the chrooted session, so ptys work; it lives in
        // the sandbox's mount namespace only.
        for s in [
            "--dev",
            "/mnt/image/image-root/dev",
            "--symlink",
            "/mnt/image/image-root/dev",
            "/dev",
            "--proc",
            "/mnt/image/image-root/proc",
            "--ro-bind",
            "/proc/sys",
            "/mnt/image/image-root/proc/sys",
        ] {
            push(s);
        }
        a.push("--ro-bind".into());
        a.push(jail_shell.into());
        a.push(format!("/mnt/image/image-root{JAIL_SHELL}").into());
    } else {
        for s in ["--dev", "/dev"] {
            push(s);
        }
        if spec.dkms {
            for s in [
                "--dev",
                "/mnt/image/image-root/dev",
                "--proc",
                "/mnt/image/image-root/proc",
                "--ro-bind",
                "/proc/sys",
                "/mnt/image/image-root/proc/sys",
            ] {
                push(s);
            }
        }
    }
    let mut push = |s: &str| a.push(s.into());
    if spec.dkms {
        for s in ["--ro-bind", "/sys", "/mnt/image/image-root/sys"] {
            push(s);
        }
    }
    push("--cap-drop");
    push("ALL");
    for c in CAPS.iter().chain(["CAP_SETPCAP"].iter()) {
        push("--cap-add");
        push(c);
    }
    let mut push = |s: &str| a.push(s.into());
    if let Some(fd) = fds.seccomp {
        push("--seccomp");
        push(&fd.to_string());
    }
    let bounding: Vec<String> = CAPS
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    push("/usr/bin/setpriv");
    push("--inh-caps=-all");
    a.push(format!("--bounding-set=-all,{}", bounding.join(",")).into());
    let mut push = |s: &str| a.push(s.into());
    for s in [
        "--",
        "/usr/sbin/sshd",
        "-D",
        "-e",
        "-f",
        "/etc/ssh/sshd_config",
    ] {
        push(s);
    }
    a
}

/// A pipe, both ends close-on-exec (a child gets its end through [`inherit`]).
fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(std::io::Error::from)
        .context("cannot make a pipe")
}

/// Lets a child started by `cmd` inherit `fds` at their own numbers (they are close-on-exec in
/// the agent, so no other child gets them).
fn inherit(cmd: &mut tokio::process::Command, fds: Vec<i32>) {
    // SAFETY: fcntl is async-signal-safe; it only clears the close-on-exec flag in the child.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Reads what a child writes into `fd` until `done` says it is complete, the writer closes its
/// end (`Ok` with what came), or `limit` passes.
async fn read_pipe(
    fd: std::os::fd::OwnedFd,
    limit: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(Error::Os)?;
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 512];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if done(&got) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(Error::Os(e)),
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(r) => r.map(|()| got),
        Err(_) => Err(Error::Failed(format!(
            "nothing within {} s",
            limit.as_secs()
        ))),
    }
}

/// The sandbox's network: `slirp4netns` attached to the network namespace of process `pid`
/// (bwrap), configured (lo up, (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3), without
/// access to the host's loopback; its API socket is `dir/slirp.sock`. Returns once the network is
/// configured, with our end of its exit pipe.
async fn start_network(
    dir: &Path,
    pid: u32,
) -> Result<(tokio::process::Child, std::os::fd::OwnedFd)> {
    use std::os::fd::AsRawFd;
    let log = dir.join("slirp4netns.log");
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone().map_err(Error::Os)?;
    let _ = std::fs::remove_file(dir.join("slirp.sock"));
    let (exit_r, exit_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let mut cmd = tokio::process::Command::new("slirp4netns");
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        // Relative to its working directory: a socket's path is limited to 107 bytes.
        "--api-socket=slirp.sock",
        "--enable-sandbox",
        "--enable-seccomp",
    ])
    .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
    .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
    .arg(pid.to_string())
    .arg("tap0")
    .current_dir(dir)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err)
    .kill_on_drop(true);
    inherit(&mut cmd, vec![exit_r.as_raw_fd(), ready_w.as_raw_fd()]);
    let mut child = cmd
        .spawn()
        .context("cannot run slirp4netns (install slirp4netns)")?;
    drop((exit_r, ready_w));
    let ready = read_pipe(ready_r, Duration::from_secs(10), |b| !b.is_empty()).await;
    if !matches!(ready.as_deref(), Ok(b) if b.starts_with(b"1")) {
        let _ = child.kill().await;
        return Err(Error::Failed(format!(
            "the session's network (slirp4netns) did not come up: {}",
            tail(&log)
        )));
    }
    Ok((child, exit_w))
}

/// Forwards `listen:port` on the host to sshd in the sandbox (slirp4netns's `add_hostfwd`);
/// `Err((in_use, why))`.
async fn forward(dir: &Path, listen: std::net::IpAddr, port: u16) -> Result<(), (bool, Error)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = serde_json::json!({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": listen.to_string(), "host_port": port,
        "guest_addr": GUEST_ADDR, "guest_port": GUEST_PORT}});
    // Through the directory's descriptor: the socket's full path may be too long for connect(2).
    let d = std::fs::File::open(dir)
        .with_context(|| dir.display().to_string())
        .map_err(|e| (false, e))?;
    let path = format!(
        "/proc/self/fd/{}/slirp.sock",
        std::os::fd::AsRawFd::as_raw_fd(&d)
    );
    let talk = async {
        let mut s = tokio::net::UnixStream::connect(&path).await?;
        s.write_all(request.to_string().as_bytes()).await?;
        s.shutdown().await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(Duration::from_secs(10), talk).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err((false, Error::Os(e).context("slirp4netns's API"))),
        Err(_) => {
            return Err((
                false,
                Error::Failed("slirp4netns's API does not answer".into()),
            ));
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .with_context(|| {
            format!(
                "slirp4netns's API answered {:?}",
                String::from_utf8_lossy(&answer)
            )
        })
        .map_err(|e| (false, e))?;
    if v.get("return").is_some() {
        return Ok(());
    }
    let why = v["error"]["desc"]
        .as_str()
        .map_or_else(|| v.to_string(), str::to_string);
    // libslirp reports a failed bind(2) this way; anything else about the port is no race.
    let in_use = why.contains("bind") || why.contains("in use");
    Err((
        in_use,
        Error::Failed(format!(
            "cannot forward {listen}:{port} to the session: {why}"
        )),
    ))
}

/// Starts the session and returns once sshd serves connections.
pub async fn start(spec: &Spec) -> Result<Session> {
    use std::os::fd::AsRawFd;
    if spec.listen.is_ipv6() {
        return Err(Error::Refused(format!(
            "sessions listen on IPv4 addresses only (slirp4netns forwards IPv4), not {}: set IMS_JOB_SSH_LISTEN to one",
            spec.listen
        )));
    }
    let dir = spec.job_dir.join("session");
    let etc = dir.join("etc");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if spec.jail {
        fix_chroot_modes(&spec.job_dir)?;
    }
    if spec.jail || spec.dkms {
        // The mount points of the session's /dev, /proc (and /sys) in the image.
        let root = spec.job_dir.join("mnt").join("image-root");
        let points: &[&str] = if spec.dkms {
            &["dev", "proc", "sys"]
        } else {
            &["dev", "proc"]
        };
        crate::rootfiles::dirs_in_root(&root, points)?;
    }
    let jail_shell = dir.join("ims-session-shell");
    if spec.jail {
        crate::rootfiles::replace_file(&jail_shell, JAIL_SHELL_PROGRAM, 0o755)?;
    }
    let seccomp = crate::seccomp::filter();
    let bpf = dir.join("seccomp.bpf");
    if let Some(prog) = &seccomp {
        std::fs::write(&bpf, prog).with_context(|| format!("cannot write {}", bpf.display()))?;
    }
    make_etc(spec, &etc)?;
    let log = dir.join("sshd.log");
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone().map_err(Error::Os)?;
    let bpf_file = match &seccomp {
        // Opened close-on-exec, as Rust does: only bwrap gets it.
        Some(_) => Some(
            std::fs::File::open(&bpf).with_context(|| format!("cannot read {}", bpf.display()))?,
        ),
        None => None,
    };
    let (block_r, block_w) = pipe()?;
    let fds = Fds {
        seccomp: bpf_file.as_ref().map(|f| f.as_raw_fd()),
        block: block_r.as_raw_fd(),
    };
    let mut cmd = tokio::process::Command::new("bwrap");
    cmd.args(bwrap_args(spec, &etc, &jail_shell, fds))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    inherit(
        &mut cmd,
        [fds.block].into_iter().chain(fds.seccomp).collect(),
    );
    // SAFETY: unshare is async-signal-safe: bwrap starts in a network namespace of its own (with
    // only a loopback interface, down), which the sandbox inherits.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot run bwrap (install bubblewrap)")?;
    // The child has its copies; it waits for `block_w` before it starts sshd.
    drop((bpf_file, block_r));
    let Some(pid) = child.id() else {
        return Err(Error::Failed(format!(
            "the sandbox did not start: {}",
            tail(&log)
        )));
    };
    let (mut net, net_exit) = match start_network(&dir, pid).await {
        Ok(n) => n,
        Err(e) => {
            let _ = child.kill().await;
            return Err(e);
        }
    };
    // The network is up: sshd may start (and bind the guest address).
    let go = std::fs::File::from(block_w);
    if let Err(e) = std::io::Write::write_all(&mut &go, b"1") {
        let _ = child.kill().await;
        let _ = net.kill().await;
        return Err(Error::Failed(format!(
            "cannot start the sandbox's sshd ({e}): {}",
            tail(&log)
        )));
    }
    drop(go);
    let mut last_err = Error::Failed(String::new());
    for _attempt in 0..5 {
        let port = free_port(spec.listen, spec.ports)?;
        match forward(&dir, spec.listen, port).await {
            Ok(()) => {}
            // A port taken meanwhile: try another.
            Err((true, e)) => {
                last_err = e;
                continue;
            }
            Err((false, e)) => {
                last_err = e;
                break;
            }
        }
        let deadline = Instant::now() + spec.ready_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_err = Error::Failed(format!("sshd stopped ({status}): {}", tail(&log)));
                break;
            }
            if let Ok(Some(status)) = net.try_wait() {
                last_err = Error::Failed(format!(
                    "the session's network (slirp4netns) stopped ({status}): {}",
                    tail(&dir.join("slirp4netns.log"))
                ));
                break;
            }
            if serves(spec.listen, port).await {
                return Ok(Session {
                    child,
                    net,
                    _net_exit: net_exit,
                    port,
                    log,
                });
            }
            if Instant::now() > deadline {
                last_err = Error::Failed(format!(
                    "sshd did not accept connections within {} s: {}",
                    spec.ready_timeout.as_secs(),
                    tail(&log)
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        break;
    }
    let _ = child.kill().await;
    let _ = net.kill().await;
    Err(last_err)
}

impl Session {
    /// Ends the session: sshd and every session process (the sandbox's pid namespace) go, and
    /// its network.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.net.kill().await;
    }

    /// sshd's public host key (an OpenSSH public key line), which the job publishes so that
    /// clients pin it (`ims images shell`) instead of trusting on first use.
    pub fn host_public_key(&self) -> Result<String> {
        let dir = self.log.parent().unwrap_or(Path::new("."));
        let p = dir.join("etc/ssh/ssh_host_ed25519_key.pub");
        std::fs::read_to_string(&p)
            .map(|k| k.trim().to_string())
            .with_context(|| format!("cannot read sshd's host key {}", p.display()))
    }

    /// Whether sshd and the session's network are still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && matches!(self.net.try_wait(), Ok(None))
    }
}

/// Logs in once with a key of the agent's own, as a user would, before the job says it waits for
/// its user: sshd that accepts TCP connections may still refuse every login (a file root does not
/// own, a jailed image without a shell). The probe key is accepted only for this check
/// (`restrict,command="true"`) and removed before anyone else can connect.
pub async fn check_login(spec: &Spec, s: &Session) -> Result<()> {
    let dir = s.log.parent().unwrap_or(Path::new(".")).to_path_buf();
    let probe = dir.join("login-check");
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(dir.join("login-check.pub"));
    let out = tokio::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ims-login-check",
            "-f",
        ])
        .arg(&probe)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run ssh-keygen (install openssh-client)")?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let probe_pub = std::fs::read_to_string(dir.join("login-check.pub"))
        .context("cannot read the login check's key")?;
    let authorized = dir.join("etc/ssh/authorized_keys");
    let user_line = format!("{}\n", spec.public_key.trim());
    write(
        &authorized,
        &format!(
            "{user_line}restrict,command=\"true\" {}\n",
            probe_pub.trim()
        ),
        0o644,
    )?;
    let ip = local_address(spec.listen);
    let known = dir.join("login-check.known_hosts");
    let host_key = s.host_public_key()?;
    write(&known, &known_hosts_line(ip, s.port, &host_key), 0o644)?;
    let mut known_opt = std::ffi::OsString::from("UserKnownHostsFile=");
    known_opt.push(&known);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-T", "-o"])
            .arg(known_opt)
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(&probe)
            .args([
                "-p",
                &s.port.to_string(),
                "-l",
                "root",
                "--",
                &ip.to_string(),
                "true",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    // Only the user's key from here on, whatever the outcome.
    let restored = write(&authorized, &user_line, 0o644);
    for p in [probe.clone(), dir.join("login-check.pub"), known] {
        let _ = std::fs::remove_file(p);
    }
    restored?;
    match result {
        Err(_) => Err(Error::Failed(
            "a login to the session did not finish within 30 s".into(),
        )),
        Ok(Err(e)) => Err(Error::Io {
            context: "cannot run ssh (install openssh-client)".into(),
            source: e,
        }),
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(Error::Failed(format!(
            "sshd accepts connections but a login fails ({}): {}",
            String::from_utf8_lossy(&o.stderr).trim(),
            tail(&s.log)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines_name_the_port_as_openssh_looks_it_up() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            known_hosts_line(ip, 22, "ssh-ed25519 AAAA"),
            "127.0.0.1 ssh-ed25519 AAAA\n"
        );
        assert_eq!(
            known_hosts_line(ip, 2222, "ssh-ed25519 AAAA"),
            "[127.0.0.1]:2222 ssh-ed25519 AAAA\n"
        );
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "40000-40999".parse::<PortRange>(),
            Ok(PortRange {
                first: 40000,
                last: 40999
            })
        );
        assert_eq!(
            " 2222 ".parse::<PortRange>(),
            Ok(PortRange {
                first: 2222,
                last: 2222
            })
        );
        for bad in ["", "0-10", "10-5", "a-b", "1-70000", "-5"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
        assert_eq!(PortRange { first: 1, last: 2 }.to_string(), "1-2");
    }

    fn spec(jail: bool) -> Spec {
        Spec {
            job_dir: "/j".into(),
            jail,
            public_key: "ssh-ed25519 AAAA k".into(),
            listen: [0, 0, 0, 0].into(),
            ports: None,
            set_env: vec![("IMS_JOB_ID".into(), "abc".into())],
            ready_timeout: Duration::from_secs(1),
            dkms: false,
            debug: false,
        }
    }

    #[test]
    fn configuration() {
        let c = sshd_config(&spec(true), false).unwrap();
        assert!(
            c.starts_with("Port 2222\nListenAddress 10.0.2.100\n"),
            "{c}"
        );
        assert!(!c.contains("PerSourcePenalties"), "{c}");
        assert!(
            sshd_config(&spec(true), true)
                .unwrap()
                .contains("PerSourcePenalties no\n")
        );
        assert!(c.contains("ChrootDirectory /mnt/image/image-root\n"));
        assert!(c.contains("SetEnv IMS_JOB_ID=abc\n"));
        assert!(c.contains("PasswordAuthentication no\n"));
        assert!(
            !sshd_config(&spec(false), false)
                .unwrap()
                .contains("ChrootDirectory")
        );
        let mut s = spec(false);
        s.set_env = vec![("X".into(), "a\nChrootDirectory /".into())];
        assert!(sshd_config(&s, false).is_err());
        assert!(one_line("public key", "ssh-ed25519 AAAA\ncommand=\"x\" ssh-rsa").is_err());
    }

    #[test]
    fn sandbox_arguments() {
        let fds = Fds {
            seccomp: Some(9),
            block: 6,
        };
        let shell = Path::new("/j/session/ims-session-shell");
        let a: Vec<String> = bwrap_args(&spec(true), Path::new("/j/session/etc"), shell, fds)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        for want in [
            "--die-with-parent",
            "--unshare-pid --as-pid-1",
            "--block-fd 6",
            "--ro-bind /j/session/ims-session-shell /mnt/image/image-root/dev/.ims/shell",
            "--ro-bind /proc/sys /proc/sys",
            "--ro-bind /j/session/etc /etc",
            "--bind /j/mnt /mnt/image",
            "--dev /mnt/image/image-root/dev",
            "--cap-drop ALL",
            "--seccomp 9",
            "--bounding-set=-all,+chown,",
            "/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
        assert!(!joined.contains("--bind / "), "{joined}");
        assert!(
            !joined.contains("--ro-bind /sys "),
            "sysfs without dkms: {joined}"
        );
        let mut d = spec(false);
        d.dkms = true;
        let fds = Fds {
            seccomp: None,
            ..fds
        };
        let joined: Vec<String> = bwrap_args(&d, Path::new("/e"), shell, fds)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = joined.join(" ");
        for want in [
            "--proc /mnt/image/image-root/proc",
            "--dev /mnt/image/image-root/dev",
            "--ro-bind /sys /mnt/image/image-root/sys",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
        assert!(!joined.contains("ims-session-shell"), "{joined}");
    }

    #[test]
    fn resolvers_reachable_from_the_session() {
        // A loopback stub (systemd-resolved) becomes slirp4netns's forwarder; IPv6 resolvers
        // (no route) go; others and the other lines stay.
        assert_eq!(
            session_resolv_conf("# x\nnameserver 127.0.0.53\noptions edns0\nsearch example.org\n"),
            "# x\nnameserver 10.0.2.3\noptions edns0\nsearch example.org\n"
        );
        assert_eq!(
            session_resolv_conf(
                "nameserver 192.0.2.53\nnameserver ::1\nnameserver fd00::53\nnameserver 127.0.0.1\nnameserver 127.0.0.2\n"
            ),
            "nameserver 192.0.2.53\nnameserver 10.0.2.3\n"
        );
        assert_eq!(
            session_resolv_conf("nameserver fd00::53\n"),
            "nameserver 10.0.2.3\n"
        );
    }
}
