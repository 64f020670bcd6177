//! The SSH session of a job: one OpenSSH `sshd` per job, in a bubblewrap sandbox.
//!
//! The sandbox is the isolation boundary (measured in docs/research/job-sandbox.md):
//!
//! * new mount, pid, ipc, uts and cgroup namespaces; the host's network (the port must be
//!   reachable, and customization installs packages);
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
//!   root outside, and so the packaged image, never sees them.
//!
//! `--die-with-parent`: if the agent dies, the sandbox and every session process die with it.

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
    /// Address sshd listens on.
    pub listen: std::net::IpAddr,
    /// Ports sshd may listen on (a firewall's range); `None`: any free port.
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
    child: tokio::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

fn write(path: &Path, data: &str, mode: u32) -> Result<(), String> {
    crate::rootfiles::replace_file(path, data.as_bytes(), mode)
}

/// A line of `sshd_config` or `authorized_keys` must not smuggle in another line.
fn one_line(what: &str, s: &str) -> Result<(), String> {
    if s.contains(['\n', '\r', '\0']) {
        return Err(format!("the {what} spans several lines"));
    }
    Ok(())
}

fn sshd_config(port: u16, spec: &Spec) -> Result<String, String> {
    let mut c = format!(
        "Port {port}\nListenAddress {}\n",
        match spec.listen {
            std::net::IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        }
    );
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
                return Err(format!("bad session environment variable {k}={v:?}"));
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

/// The ports sessions may listen on (`IMS_JOB_SSH_PORTS=40000-40999`, or one port `40000`), for
/// firewalls that open a range. One declaration for the server's check of the setting and the
/// agent's use of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not a port range (FIRST-LAST, e.g. 40000-40999, or one port)");
        let (a, b) = s.trim().split_once('-').unwrap_or((s.trim(), s.trim()));
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A free TCP port on `ip`, in `ports` when given (sshd binds it right after; a lost race is
/// retried by the caller). In a range the search starts at a different place for each process,
/// so concurrent jobs rarely try the same port.
fn free_port(ip: std::net::IpAddr, ports: Option<PortRange>) -> Result<u16, String> {
    let Some(r) = ports else {
        return std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("cannot find a free port on {ip}: {e}"));
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
        .ok_or_else(|| format!("no free port in the session port range {r} on {ip}"))
}

/// Connects and reads the SSH banner: only an sshd that serves connections sends it.
async fn serves(ip: std::net::IpAddr, port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let ip = if ip.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        ip
    };
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

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// Generates the session's `/etc` in `<job>/session/etc`.
fn make_etc(spec: &Spec, etc: &Path, port: u16) -> Result<(), String> {
    // The login shell: bash where the session lands has it, else sh.
    let has_bash = if spec.jail {
        ims_rootfs::kernel::resolve_in_root(
            &spec.job_dir.join("mnt").join("image-root"),
            Path::new("bin/bash"),
        )
        .ok()
        .flatten()
        .is_some()
    } else {
        Path::new("/usr/bin/bash").exists()
    };
    let shell = if has_bash { "/bin/bash" } else { "/bin/sh" };
    use std::os::unix::fs::DirBuilderExt;
    let ssh = etc.join("ssh");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&ssh)
        .map_err(|e| format!("cannot create {}: {e}", ssh.display()))?;
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
    if let Ok(r) = std::fs::read_to_string("/etc/resolv.conf") {
        write(&etc.join("resolv.conf"), &r, 0o644)?;
    }
    one_line("public key", spec.public_key.trim())?;
    write(
        &ssh.join("authorized_keys"),
        &format!("{}\n", spec.public_key.trim()),
        0o644,
    )?;
    write(&ssh.join("sshd_config"), &sshd_config(port, spec)?, 0o644)?;
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
            .map_err(|e| format!("cannot run ssh-keygen (install openssh-client): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// The image root as a chroot: owned by root and not writable by others, as sshd requires (a
/// session may have changed it).
pub fn fix_chroot_modes(job_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for p in [job_dir.join("mnt"), job_dir.join("mnt").join("image-root")] {
        let m = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !m.is_dir() {
            return Err(format!("{} is not a directory", p.display()));
        }
        std::os::unix::fs::lchown(&p, Some(0), Some(0))
            .map_err(|e| format!("cannot chown {}: {e}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", p.display()))?;
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
fn host_etc_mount_points(etc: &Path) -> Result<(), String> {
    for (name, dir) in HOST_ETC {
        let host = Path::new("/etc").join(name);
        if !host.exists() {
            continue;
        }
        let p = etc.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
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
        made.map_err(|e| format!("cannot create {}: {e}", p.display()))?;
    }
    Ok(())
}

fn bwrap_args(spec: &Spec, etc: &Path, seccomp_fd: Option<i32>) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![];
    let mut push = |s: &str| a.push(s.into());
    for s in [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
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
    if let Some(fd) = seccomp_fd {
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

/// Starts the session and returns once sshd serves connections.
pub async fn start(spec: &Spec) -> Result<Session, String> {
    let dir = spec.job_dir.join("session");
    let etc = dir.join("etc");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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
        for d in points {
            let p = root.join(d);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("/{d} in the image root is not a directory")),
                Err(_) => std::fs::create_dir(&p)
                    .map_err(|e| format!("cannot create /{d} in the image root: {e}"))?,
            }
        }
    }
    let seccomp = crate::seccomp::filter();
    let bpf = dir.join("seccomp.bpf");
    if let Some(prog) = &seccomp {
        std::fs::write(&bpf, prog).map_err(|e| format!("cannot write {}: {e}", bpf.display()))?;
    }
    let mut last_err = String::new();
    for _attempt in 0..5 {
        let port = free_port(spec.listen, spec.ports)?;
        make_etc(spec, &etc, port)?;
        let log = dir.join("sshd.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let bpf_file = match &seccomp {
            Some(_) => Some(
                std::fs::File::open(&bpf)
                    .map_err(|e| format!("cannot read {}: {e}", bpf.display()))?,
            ),
            None => None,
        };
        const SECCOMP_FD: i32 = 9;
        let mut cmd = tokio::process::Command::new("bwrap");
        cmd.args(bwrap_args(
            spec,
            &etc,
            bpf_file.as_ref().map(|_| SECCOMP_FD),
        ))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
        if let Some(f) = &bpf_file {
            use std::os::fd::AsRawFd;
            let fd = f.as_raw_fd();
            // SAFETY: dup2 is async-signal-safe; it gives the child the filter at a known
            // descriptor without the close-on-exec flag.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, SECCOMP_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run bwrap (install bubblewrap): {e}"))?;
        // The child has its copy.
        drop(bpf_file);
        let deadline = Instant::now() + spec.ready_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_err = format!("sshd stopped ({status}): {}", tail(&log));
                break;
            }
            if serves(spec.listen, port).await {
                return Ok(Session { child, port, log });
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(format!(
                    "sshd did not accept connections within {} s: {}",
                    spec.ready_timeout.as_secs(),
                    tail(&log)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A port taken meanwhile: try another.
        if !last_err.contains("Address already in use") && !last_err.contains("Cannot bind") {
            break;
        }
    }
    Err(last_err)
}

impl Session {
    /// Ends the session: sshd and every session process (the sandbox's pid namespace) go.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// sshd's public host key (an OpenSSH public key line), which the job publishes so that
    /// clients pin it (`ims images shell`) instead of trusting on first use.
    pub fn host_public_key(&self) -> Result<String, String> {
        let dir = self.log.parent().unwrap_or(Path::new("."));
        let p = dir.join("etc/ssh/ssh_host_ed25519_key.pub");
        std::fs::read_to_string(&p)
            .map(|k| k.trim().to_string())
            .map_err(|e| format!("cannot read sshd's host key {}: {e}", p.display()))
    }

    /// Whether sshd is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Logs in once with a key of the agent's own, as a user would, before the job says it waits for
/// its user: sshd that accepts TCP connections may still refuse every login (a file root does not
/// own, a jailed image without a shell). The probe key is accepted only for this check
/// (`restrict,command="true"`) and removed before anyone else can connect.
pub async fn check_login(spec: &Spec, s: &Session) -> Result<(), String> {
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
        .map_err(|e| format!("cannot run ssh-keygen (install openssh-client): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let probe_pub = std::fs::read_to_string(dir.join("login-check.pub"))
        .map_err(|e| format!("cannot read the login check's key: {e}"))?;
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
    let ip = if spec.listen.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        spec.listen
    };
    let known = dir.join("login-check.known_hosts");
    let host_key = s.host_public_key()?;
    let host = match ip {
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", s.port),
        a => format!("[{a}]:{}", s.port),
    };
    write(&known, &format!("{host} {host_key}\n"), 0o644)?;
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
        Err(_) => Err("a login to the session did not finish within 30 s".to_string()),
        Ok(Err(e)) => Err(format!("cannot run ssh (install openssh-client): {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!(
            "sshd accepts connections but a login fails ({}): {}",
            String::from_utf8_lossy(&o.stderr).trim(),
            tail(&s.log)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = sshd_config(2222, &spec(true)).unwrap();
        assert!(c.starts_with("Port 2222\nListenAddress 0.0.0.0\n"), "{c}");
        assert!(c.contains("ChrootDirectory /mnt/image/image-root\n"));
        assert!(c.contains("SetEnv IMS_JOB_ID=abc\n"));
        assert!(c.contains("PasswordAuthentication no\n"));
        assert!(
            !sshd_config(2222, &spec(false))
                .unwrap()
                .contains("ChrootDirectory")
        );
        let mut s = spec(false);
        s.set_env = vec![("X".into(), "a\nChrootDirectory /".into())];
        assert!(sshd_config(1, &s).is_err());
        assert!(one_line("public key", "ssh-ed25519 AAAA\ncommand=\"x\" ssh-rsa").is_err());
    }

    #[test]
    fn sandbox_arguments() {
        let a: Vec<String> = bwrap_args(&spec(true), Path::new("/j/session/etc"), Some(9))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        for want in [
            "--die-with-parent",
            "--unshare-pid",
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
        let joined: Vec<String> = bwrap_args(&d, Path::new("/e"), None)
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
    }
}
