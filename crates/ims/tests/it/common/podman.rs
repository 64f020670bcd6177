//! The container image of IMS-rs (`scripts/build-image.sh`) under test, and `podman` as the container
//! runtime that starts a [`ContainerLaunch`] the way a kubelet starts a pod's container.
//!
//! # The image
//!
//! [`image`] builds the image once per test run from the `ims` binary under test ([`ims_bin`], a
//! debug build: the same code, no release build in CI) and `podman load`s it as
//! `localhost/ims-rs-test:<key>`, `<key>` a hash of that binary and of the build script. The OCI
//! archive is cached as `/var/tmp/ims-test-cache/ims-image-<key>.oci.tar` (`IMS_TEST_CACHE`), the
//! script caches its Debian root there too: an unchanged binary costs nothing, a changed one
//! about 30 s. Test processes build under a lock, so parallel tests build once.
//!
//! # Running a container
//!
//! [`run`] starts `podman run` in the foreground (the returned child lives as long as the
//! container; SIGTERM to it is forwarded to the container) with what the contract's pod spec says
//! (`docs`: the kubernetes executor's pod): the pod's network namespace, `runAsUser: 0`,
//! `capabilities: {drop, add}`, `privileged`, `seccompProfile: Unconfined`, the volume mounts,
//! the environment (passed by name, so the job token is not on a command line), the working
//! directory, and `command`+`args` as entry point and arguments. [`stop`] stops it (SIGTERM, then
//! SIGKILL after a grace period), [`remove`] removes it at once; [`Removed`] does that on drop;
//! all three take [`container_name`].
//!
//! The runtime is `runc`: this machine's cgroups are a v1/v2 hybrid with a controller on the v2
//! hierarchy, which `crun` (podman's default) refuses. The container's `nofile` and `nproc`
//! limits are this process's hard limits (`nproc` at most `kernel.pid_max`): podman's defaults
//! are higher, and raising a limit needs CAP_SYS_RESOURCE, which a CI container may lack.
//!
//! # A network for a pod
//!
//! [`PodNet`] is a network namespace `imsib<k>n` for one pod, reachable from the host only: a
//! veth (`imsib<k>h` on a bridge `imsib<k>` with `10.215.<k>.1/24`, `eth0` with `10.215.<k>.2/24`
//! inside), no default route. A server under test listens on [`PodNet::host_addr`]; the pod's
//! address is [`PodNet::pod_addr`]. `k` is taken under the remote node rig's lock; a network whose
//! owner died is removed by the next [`PodNet::new`].
#![allow(dead_code)]

use super::ims_bin;
use super::nodes::{RigLock, owner_alias, owner_alive, parse_k, run as checked};
use super::pod::ContainerLaunch;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The capabilities the agent needs in its container (added after dropping ALL): the pod spec's
/// own list (`ims_kubernetes::objects::CAPABILITIES`, where the measurement is written down).
pub const AGENT_CAPS: &[&str] = ims_kubernetes::objects::CAPABILITIES;

/// podman's default seccomp profile (Debian's containers-common).
pub const PODMAN_DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// The image's name in podman's storage (the tag is the key of the binary and script).
pub const IMAGE_NAME: &str = "localhost/ims-rs-test";

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

fn cache_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("IMS_TEST_CACHE").unwrap_or_else(|| "/var/tmp/ims-test-cache".into()),
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-image.sh")
}

/// The image's key: a hash of the `ims` binary and the build script.
fn key() -> io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for f in [PathBuf::from(ims_bin()), script()] {
        let bytes = std::fs::read(&f).map_err(|e| other(format!("{}: {e}", f.display())))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The image of the binary under test, built and loaded if need be (once per test process;
/// panics if that fails). Its reference, as a pod's `image`.
pub fn image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| build_and_load().unwrap_or_else(|e| panic!("the ims image: {e}")))
}

fn build_and_load() -> io::Result<String> {
    let key = key()?;
    let reference = format!("{IMAGE_NAME}:{key}");
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join("ims-image.lock"))?;
    lock.lock()?;
    if podman_ok(&["image", "exists", &reference]) {
        return Ok(reference);
    }
    let archive = cache.join(format!("ims-image-{key}.oci.tar"));
    if !archive.is_file() {
        let t = std::time::Instant::now();
        checked(
            Command::new("bash")
                .arg(script())
                .args([
                    "--binary",
                    ims_bin(),
                    "--name",
                    "ims-rs-test",
                    "--tag",
                    &key,
                ])
                .arg("--output")
                .arg(&archive),
        )?;
        eprintln!(
            "podman: built {} in {:.1}s",
            archive.display(),
            t.elapsed().as_secs_f64()
        );
        prune(&cache, &archive);
    }
    checked(
        Command::new("podman")
            .args(["load", "-q", "-i"])
            .arg(&archive),
    )?;
    if !podman_ok(&["image", "exists", &reference]) {
        return Err(other(format!(
            "{} did not hold {reference}",
            archive.display()
        )));
    }
    Ok(reference)
}

/// Removes the archives of other binaries (their images stay loaded) and test images unused for a
/// day; what fails to go (an image a container uses) stays.
fn prune(cache: &Path, keep: &Path) {
    if let Ok(d) = std::fs::read_dir(cache) {
        for e in d.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ims-image-") && name.ends_with(".oci.tar") && e.path() != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let old = Command::new("podman")
        .args(["images", "-q", "--filter"])
        .arg(format!("reference={IMAGE_NAME}"))
        .args(["--filter", "until=24h"])
        .output();
    if let Ok(o) = old {
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("podman")
                .args(["rmi", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn podman_ok(args: &[&str]) -> bool {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A hard limit of this process (`/proc/self/limits`, the line starting with `name`).
fn hard_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().nth(1)?.parse().ok()
}

/// `podman run` options every container of the tests gets: the runtime, limits it can set (see
/// the module's documentation), no image pulls.
pub fn base_args() -> Vec<String> {
    let mut a: Vec<String> = ["--runtime", "runc", "run", "--pull", "never"]
        .map(String::from)
        .to_vec();
    if let Some(n) = hard_limit("Max open files") {
        a.push(format!("--ulimit=nofile={n}:{n}"));
    }
    let pid_max: Option<u64> = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if let Some(n) = hard_limit("Max processes") {
        let n = pid_max.map_or(n, |m| n.min(m));
        a.push(format!("--ulimit=nproc={n}:{n}"));
    }
    a
}

/// The name of `c`'s container: `ims-test-<pod>-<container>` in the characters podman accepts.
pub fn container_name(c: &ContainerLaunch) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || "_.-".contains(ch) {
                    ch
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!("ims-test-{}-{}", clean(&c.pod), clean(&c.name))
}

/// The `podman run` command that starts `c` (see the module's documentation); stdin is null,
/// stdout and stderr (the container's) are inherited unless the caller sets them.
pub fn command(c: &ContainerLaunch) -> io::Result<Command> {
    command_with_seccomp(c, "unconfined")
}

/// [`command`] with podman's `--security-opt seccomp=<profile>` (`unconfined`, as the contract's
/// pod; a profile's path; or [`PODMAN_DEFAULT_SECCOMP`] to measure with podman's default).
pub fn command_with_seccomp(c: &ContainerLaunch, profile: &str) -> io::Result<Command> {
    let (entrypoint, args) = c.argv.split_first().ok_or_else(|| {
        other(format!(
            "pod {}: container {} has no command",
            c.pod, c.name
        ))
    })?;
    let mut cmd = Command::new("podman");
    cmd.args(base_args())
        .args(["--rm", "--name", &container_name(c)])
        .arg(format!("--network=ns:{}", c.netns.display()))
        // A kubelet makes the pod's hostname its name (at most 63 characters).
        .arg(format!(
            "--hostname={}",
            &c.pod[..c.pod.len().min(63)].trim_end_matches('-')
        ))
        // The contract's securityContext: runAsUser 0, seccompProfile Unconfined.
        .args(["--user", "0", "--security-opt"])
        .arg(format!("seccomp={profile}"));
    for cap in &c.cap_drop {
        cmd.arg(format!("--cap-drop={cap}"));
    }
    for cap in &c.cap_add {
        cmd.arg(format!("--cap-add={cap}"));
    }
    if c.privileged {
        cmd.arg("--privileged");
    }
    for m in &c.mounts {
        let host = m.host_dir.to_str().ok_or_else(|| {
            other(format!(
                "volume {} is not UTF-8: podman cannot take it",
                m.host_dir.display()
            ))
        })?;
        if host.contains(':') || m.container_path.contains(':') {
            return Err(other(format!(
                "volume {host} at {}: a colon would split podman's -v",
                m.container_path
            )));
        }
        let ro = if m.read_only { ":ro" } else { "" };
        cmd.arg(format!("--volume={host}:{}{ro}", m.container_path));
    }
    // By name: podman takes each value from its own environment, so no value (the job token)
    // appears on a command line.
    for (k, v) in &c.env {
        if k.is_empty() || k.contains('=') {
            return Err(other(format!("pod {}: bad variable name {k:?}", c.pod)));
        }
        cmd.arg(format!("--env={k}")).env(k, v);
    }
    if let Some(w) = &c.working_dir {
        cmd.arg(format!("--workdir={w}"));
    }
    cmd.arg(format!("--entrypoint={entrypoint}"))
        .arg(&c.image)
        .args(args)
        .stdin(Stdio::null());
    Ok(cmd)
}

/// Starts `c` (see [`command`]); the child is `podman run`, which ends when the container does,
/// with the container's exit status. The container's output goes to `c.log_file` (the pod's log).
pub fn run(c: &ContainerLaunch) -> io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log_file)?;
    command(c)?.stdout(log.try_clone()?).stderr(log).spawn()
}

/// Whether podman can be used here (installed, and root for its storage and the pods' networks).
pub fn available() -> bool {
    crate::common::jobs::is_root()
        && Command::new("podman")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Stops the container named `name` (see [`container_name`]) as a kubelet does: SIGTERM to its
/// PID 1, SIGKILL after `grace` (whole seconds). Done if it is gone.
pub fn stop(name: &str, grace: Duration) -> io::Result<()> {
    let grace = grace.as_secs().to_string();
    checked(Command::new("podman").args(["stop", "--ignore", "-t", &grace, name])).map(drop)
}

/// Removes the container named `name` at once (SIGKILL); done if it is gone.
pub fn remove(name: &str) -> io::Result<()> {
    checked(Command::new("podman").args(["rm", "--force", "--ignore", "-t", "0", name])).map(drop)
}

/// Removes the container of this name when dropped (a test that panics leaves none).
pub struct Removed(pub String);

impl Drop for Removed {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.0) {
            eprintln!("podman: removing {}: {e}", self.0);
        }
    }
}

/// A network namespace for one pod (see the module's documentation).
pub struct PodNet {
    k: u8,
}

fn bridge(k: u8) -> String {
    format!("imsib{k}")
}
fn netns(k: u8) -> String {
    format!("imsib{k}n")
}
fn veth(k: u8) -> String {
    format!("imsib{k}h")
}

fn ip(args: &[&str]) -> io::Result<Output> {
    checked(Command::new("ip").args(args))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Removes what there is of network `k`; the first failure.
fn remove_net(k: u8) -> io::Result<()> {
    let mut first = None;
    let mut note = |r: io::Result<()>| {
        if let Err(e) = r
            && first.is_none()
        {
            first = Some(e);
        }
    };
    if Path::new("/run/netns").join(netns(k)).exists() {
        note(ip(&["netns", "del", &netns(k)]).map(drop));
    }
    // Deleting the namespace deletes the veth pair, in the kernel's own time.
    for l in [veth(k), bridge(k)] {
        match ip(&["link", "del", &l]) {
            Err(_) if !link_exists(&l) => {}
            r => note(r.map(drop)),
        }
    }
    first.map_or(Ok(()), Err)
}

impl PodNet {
    /// A new network (needs root).
    pub fn new() -> io::Result<PodNet> {
        let k = {
            let _lock = RigLock::acquire()?;
            // Leftovers of test processes that died without removing theirs.
            let mut ks = std::collections::BTreeSet::new();
            for d in ["/sys/class/net", "/run/netns"] {
                for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if let Some(k) = parse_k(&n, "imsib", false, "")
                        .or(parse_k(&n, "imsib", false, "h"))
                        .or(parse_k(&n, "imsib", false, "n"))
                    {
                        ks.insert(k);
                    }
                }
            }
            for k in ks {
                let alias =
                    std::fs::read_to_string(format!("/sys/class/net/{}/ifalias", bridge(k)))
                        .unwrap_or_default();
                if !owner_alive(alias.trim())
                    && let Err(e) = remove_net(k)
                {
                    eprintln!("podman: removing the stale pod network {k}: {e}");
                }
            }
            let alias = owner_alias()?;
            let addrs =
                String::from_utf8_lossy(&ip(&["-4", "-o", "addr", "show"])?.stdout).into_owned();
            let free = (1..=250u8).find(|&k| {
                !link_exists(&bridge(k))
                    && !Path::new("/run/netns").join(netns(k)).exists()
                    && !addrs.contains(&format!(" 10.215.{k}."))
            });
            let k = free.ok_or_else(|| other("no free pod network in 1..=250".into()))?;
            ip(&["link", "add", &bridge(k), "type", "bridge"])?;
            if let Err(e) = ip(&["link", "set", &bridge(k), "alias", &alias]) {
                let _ = remove_net(k);
                return Err(e);
            }
            k
        };
        // From here on, dropping `net` removes whatever was made.
        let net = PodNet { k };
        net.set_up()?;
        Ok(net)
    }

    fn set_up(&self) -> io::Result<()> {
        let (k, br, ns, v) = (self.k, bridge(self.k), netns(self.k), veth(self.k));
        let write = |path: String, value: &str| -> io::Result<()> {
            if Path::new(&path).exists() {
                std::fs::write(&path, value).map_err(|e| other(format!("{path}: {e}")))?;
            }
            Ok(())
        };
        write(format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6"), "1")?;
        write(format!("/proc/sys/net/ipv4/conf/{br}/forwarding"), "0")?;
        ip(&["addr", "add", &format!("10.215.{k}.1/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        write(format!("/proc/sys/net/ipv6/conf/{v}/disable_ipv6"), "1")?;
        ip(&["link", "set", &v, "master", &br, "up"])?;
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend_from_slice(args);
            ip(&a)
        };
        inside(&["addr", "add", &format!("10.215.{k}.2/24"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `/run/netns/imsib<k>n`, as a [`ContainerLaunch::netns`].
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(netns(self.k))
    }

    /// The host's address on the pod's network (`10.215.<k>.1`).
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 215, self.k, 1)
    }

    /// The pod's address (`10.215.<k>.2`).
    pub fn pod_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 215, self.k, 2)
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        if let Err(e) = remove_net(self.k) {
            eprintln!("podman: removing pod network {}: {e}", self.k);
        }
    }
}
