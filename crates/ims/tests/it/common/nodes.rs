//! A rig of remote build nodes for the tests: each node a separate host on this machine, reachable
//! only over a private veth network, running its own OpenSSH `sshd`.
//!
//! # What a rig is
//!
//! * **Network.** A Linux bridge `imsbr<k>` in the root namespace with `10.213.<k>.1/24` (the
//!   server under test listens there: [`Rig::host_addr`]). Per node `i`: a network namespace
//!   `ims<k>n<i>`, a veth pair (`ims<k>n<i>h` on the bridge, `eth0` inside) and
//!   `10.213.<k>.<10+i>/24` on `eth0`, `lo` up. `k` (1..=250) is unique among live rigs: it is
//!   taken by creating the bridge under a lock (`/run/ims-test-rig/lock`, which the rig creates),
//!   so parallel test processes never collide.
//!
//!   A node has **no default route**, only its on-link /24: it can reach the host's bridge
//!   address and nothing else, so neither this machine's forwarding setting nor its firewall
//!   rules decide whether a node's packets leave the test network (they cannot). The bridge's
//!   own IPv4 forwarding is off as well, and IPv6 is disabled on every rig interface (no
//!   link-local chatter). Traffic between nodes is not needed and not arranged for. A host firewall
//!   that drops input on the bridge would break the rig: the rig installs none and needs none.
//! * **A host of its own.** Each node's `sshd` runs as PID 1 of its own PID namespace (with its
//!   own `/proc`), in its own UTS namespace (`hostname` is the xname) and its own mount namespace
//!   (propagation private, so nothing it mounts reaches the host):
//!   - `/var/lib/ims-node` is the node's scratch space: a bind of a per-node host directory
//!     ([`Node::state_dir`], to inspect from the test), invisible to the other nodes and to the
//!     server. The host's `/var/lib` is **not touched**: inside the namespace a tmpfs becomes
//!     `/var/lib`, holding bind mounts of every host entry of `/var/lib` plus `ims-node`, so
//!     everything else under `/var/lib` is still the host's and `/var/lib/ims-node` need not exist
//!     on the host.
//!   - `/run` is a fresh tmpfs (a host's own `/run`: `sshd` needs `/run/sshd`, which the host may
//!     lack); the node's `sshd` files are bound read-only at `/run/ims-rig`.
//!   - The rig's directory (client key, the other nodes' files) is covered by an empty read-only
//!     tmpfs.
//!   - `/root` is an empty tmpfs: this machine's root start-up files (which bash runs for every
//!     SSH command) are not a node's.
//!   - Everything else (`/usr`, `/etc`, `/tmp`, `/dev`) is the host's. `/sys` is the
//!     node's network namespace's sysfs (as `ip netns exec` mounts it; no cgroup tree under it).
//!
//!   Every process started on the node (SSH sessions, what they leave running, processes in
//!   sandboxes with their own network namespaces) lives in the node's PID namespace, so killing
//!   its `sshd` (PID 1 there) kills them all: that is [`Node::power_off`] and the teardown.
//! * **sshd.** `/usr/sbin/sshd -D -e -f /run/ims-rig/sshd_config` on `10.213.<k>.<10+i>:22`,
//!   with a per-node ed25519 host key made by the rig; root logs in with the rig's client key
//!   only ([`Rig::client_key`]); `UsePAM no`; no `AcceptEnv`; `StrictModes no` (the rig's files
//!   live under the world-writable temporary directory, which `StrictModes` refuses; the rig makes
//!   them 0600/0700 itself); SFTP (so `scp` works). Processes a session leaves running (`setsid
//!   … &`) survive the session. Its log (`-e`, verbose) is [`Node::sshd_log`], printed for every
//!   node when a test panics with the rig alive.
//! * **Names.** Node `i` is `x3000c0s<i>b0n0`; [`Rig::addresses_setting`] is the server's
//!   `IMS_REMOTE_BUILD_NODE_ADDRESSES` value (`XNAME=ADDR,...`).
//! * **Host keys.** [`Rig::known_hosts_file`] pins every node's key as made at start-up;
//!   [`Node::known_hosts_line`] is the node's current key as `ssh-keyscan` prints it;
//!   [`Node::regenerate_host_key`] gives the node a new key (its `sshd` re-executes on SIGHUP, the
//!   node's processes keep running), so the pinned file no longer matches.
//! * **Teardown.** `Drop` kills every process of every node, deletes the namespaces, veths and
//!   bridge, and removes the rig's directory — also when a test panics. A rig whose process died
//!   without dropping it (killed, aborted) is removed by the sweep the next [`Rig::new`] runs: the
//!   bridge's alias records the owner (`ims-test-rig pid=<pid> start=<start time>`); leftovers of
//!   a `k` whose owner is not alive (same pid *and* start time) are removed; a live owner's rig is
//!   never touched.
//!
//! # API
//!
//! Everything is blocking (it runs `ip`, `ssh`, `nsenter`); call it from `spawn_blocking` in async
//! tests when the runtime must keep running meanwhile (a `std::process::Command` becomes a
//! `tokio::process::Command` with `From`).
//!
//! ```ignore
//! let Some(rig) = nodes::Rig::start(2) else { return }; // None (printed reason) when not root
//! let n = rig.node(0);
//! n.addr(); n.xname(); n.state_dir();            // 10.213.k.10, "x3000c0s0b0n0", host path
//! n.ssh("hostname");                              // Output; host key pinned, client key
//! n.ssh_command(&["-o", "ConnectTimeout=2"]).arg("true").output(); // options first win
//! n.exec("ls /var/lib/ims-node");                 // Output; `sh -c` inside the node's namespaces
//! n.cut()?; n.restore()?;                         // link down/up on the host side
//! n.power_off()?; n.power_on()?;                  // all node processes killed / sshd again
//! n.regenerate_host_key()?;                       // differs from rig.known_hosts_file() now
//! rig.host_addr(); rig.client_key(); rig.known_hosts_file(); rig.addresses_setting();
//! ```

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the rig keeps its lock (created on first use).
pub const LOCK_DIR: &str = "/run/ims-test-rig";
/// The most nodes one rig has (addresses `.10` to `.109`).
pub const MAX_NODES: usize = 100;
/// The marker in a bridge's alias that names the rig's owner.
const ALIAS_PREFIX: &str = "ims-test-rig";
/// The PATH of processes the rig starts on a node.
const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a node's `sshd` has to listen after its start (or its re-execution).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What runs as the node's PID 1 (bash, then `sshd`): `$1` xname, `$2` the node's directory, `$3`
/// the rig's directory. Mounts happen in the node's private mount namespace only.
const NODE_INIT: &str = r#"set -euo pipefail
xname=$1 dir=$2 rig=$3
printf '%s\n' "$xname" >/proc/sys/kernel/hostname
mount -t tmpfs -o mode=0755,nosuid,nodev ims-node-run /run
mkdir -m 0755 /run/sshd /run/ims-rig /run/ims-varlib
mkdir -m 1777 /run/lock
mount --bind "$dir/etc" /run/ims-rig
mount -o remount,bind,ro /run/ims-rig
stage=/run/ims-varlib
mount -t tmpfs -o mode=0755 ims-node-varlib "$stage"
while IFS= read -r -d '' name; do
  [ "$name" = ims-node ] && continue
  src=/var/lib/$name dst=$stage/$name
  if [ -L "$src" ]; then
    ln -s -- "$(readlink -- "$src")" "$dst"
  elif [ -d "$src" ]; then
    mkdir -- "$dst"
    mount --rbind -- "$src" "$dst"
  else
    : >"$dst"
    mount --bind -- "$src" "$dst"
  fi
done < <(find /var/lib -mindepth 1 -maxdepth 1 -printf '%f\0')
mkdir -m 0755 "$stage/ims-node"
mount --bind "$dir/state" "$stage/ims-node"
mount --move "$stage" /var/lib
rmdir "$stage"
mount -t tmpfs -o ro,mode=0700,size=4k ims-node-mask "$rig"
# A home of the node's own: root's shell start-up files on this machine (pyenv, cargo) are not a
# node's, and bash runs them for every SSH command.
mount -t tmpfs -o mode=0700,size=64m ims-node-root /root
exec /usr/sbin/sshd -D -e -f /run/ims-rig/sshd_config
"#;

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Runs `cmd`, which must succeed; its output.
pub fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| other(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(other(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(out)
}

pub fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

/// Writes a sysctl-like file under `/proc/sys` if it exists (IPv6 may be compiled out).
pub fn set_proc(path: &str, value: &str) -> io::Result<()> {
    if Path::new(path).exists() {
        fs::write(path, value).map_err(|e| other(format!("{path}: {e}")))?;
    }
    Ok(())
}

/// The start time (clock ticks after boot) of process `pid`, if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses): state is field 3, start time 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The alias that marks a bridge as owned by this process.
pub fn owner_alias() -> io::Result<String> {
    let pid = std::process::id();
    let start = start_time(pid).ok_or_else(|| other("no start time of this process".into()))?;
    Ok(format!("{ALIAS_PREFIX} pid={pid} start={start}"))
}

/// Whether a bridge's alias names a live owner (a process with that pid and start time).
pub fn owner_alive(alias: &str) -> bool {
    let mut words = alias.split_whitespace();
    if words.next() != Some(ALIAS_PREFIX) {
        return false;
    }
    let (mut pid, mut start) = (None, None);
    for w in words {
        if let Some(v) = w.strip_prefix("pid=") {
            pid = v.parse::<u32>().ok();
        } else if let Some(v) = w.strip_prefix("start=") {
            start = v.parse::<u64>().ok();
        }
    }
    match (pid, start) {
        (Some(pid), Some(start)) => start_time(pid) == Some(start),
        _ => false,
    }
}

/// `k` of a rig name `<prefix><k><suffix>` where the suffix is `n<digits>` + `tail`
/// (`ims<k>n<i>`, `ims<k>n<i>h`) or exactly `tail` when `node` is false (`imsbr<k>`, `ims-rig<k>`).
pub fn parse_k(name: &str, prefix: &str, node: bool, tail: &str) -> Option<u8> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (k, rest) = rest.split_at(digits);
    let k: u8 = k.parse().ok()?;
    if !(1..=250).contains(&k) || k.to_string().len() != digits {
        return None;
    }
    let rest = if node {
        let r = rest.strip_prefix('n')?;
        let d = r.len() - r.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if d == 0 {
            return None;
        }
        &r[d..]
    } else {
        rest
    };
    (rest == tail).then_some(k)
}

/// One kind of private test network on this machine (the rig's, the fake cluster's): a bridge
/// `<bridge><k>` in the root namespace with `10.<octet>.<k>.1/24`, per host `i` a network namespace
/// `<host><k>n<i>` with a veth pair (`<host><k>n<i>h` on the bridge, `eth0` inside) and
/// `10.<octet>.<k>.<10+i>/24`, and a directory `$TMPDIR/<dir><k>`. `k` (1..=250) is taken by
/// creating the bridge under the rigs' lock ([`RigLock`]), whose alias names the owning process:
/// the network of a dead owner is swept. IPv6 is off on every interface, the bridge does not
/// forward, and hosts have no default route.
pub struct TestNet {
    pub bridge: &'static str,
    pub host: &'static str,
    pub dir: &'static str,
    pub octet: u8,
    /// What it is, for messages.
    pub what: &'static str,
}

/// The rig's network: `imsbr<k>`, `ims<k>n<i>`, `10.213.<k>.0/24`, `$TMPDIR/ims-rig<k>`.
pub const RIG_NET: TestNet = TestNet {
    bridge: "imsbr",
    host: "ims",
    dir: "ims-rig",
    octet: 213,
    what: "test rig",
};

impl TestNet {
    pub fn bridge_name(&self, k: u8) -> String {
        format!("{}{k}", self.bridge)
    }
    pub fn ns_name(&self, k: u8, i: usize) -> String {
        format!("{}{k}n{i}", self.host)
    }
    pub fn veth_name(&self, k: u8, i: usize) -> String {
        format!("{}{k}n{i}h", self.host)
    }
    pub fn dir(&self, k: u8) -> PathBuf {
        std::env::temp_dir().join(format!("{}{k}", self.dir))
    }
    /// The host's address on network `k` (`10.<octet>.<k>.1`).
    pub fn gateway(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, k, 1)
    }
    /// Host `i`'s address (`10.<octet>.<k>.<10+i>`).
    pub fn host_addr(&self, k: u8, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, k, 10 + i as u8)
    }

    /// Removes everything of network `k`: processes, namespaces, veths, its directory, and the
    /// bridge last (the bridge is what marks `k` as taken). Goes on after an error and reports
    /// the first.
    pub fn remove(&self, k: u8) -> io::Result<()> {
        let mut first: Option<io::Error> = None;
        let mut note = |r: io::Result<()>| {
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(e);
            }
        };
        let namespaces: Vec<String> = netns_names()
            .into_iter()
            .filter(|ns| parse_k(ns, self.host, true, "") == Some(k))
            .collect();
        for ns in &namespaces {
            note(kill_netns(ns));
        }
        // The veths first (both ends go): a deleted namespace takes its end, and so the pair,
        // with it only later, in the background.
        for link in link_names() {
            if parse_k(&link, self.host, true, "h") == Some(k) {
                note(del_link(&link));
            }
        }
        for ns in &namespaces {
            note(ip(&["netns", "del", ns]).map(drop));
        }
        note(remove_dir(&self.dir(k)));
        note(del_link(&self.bridge_name(k)));
        first.map_or(Ok(()), Err)
    }

    /// `k`s with something of a network of this kind (bridge, namespace, veth, directory) whose
    /// owner is not alive.
    fn stale(&self) -> Vec<u8> {
        let mut ks = std::collections::BTreeSet::new();
        for l in link_names() {
            if let Some(k) =
                parse_k(&l, self.bridge, false, "").or(parse_k(&l, self.host, true, "h"))
            {
                ks.insert(k);
            }
        }
        for ns in netns_names() {
            if let Some(k) = parse_k(&ns, self.host, true, "") {
                ks.insert(k);
            }
        }
        if let Ok(d) = fs::read_dir(std::env::temp_dir()) {
            for e in d.flatten() {
                if let Some(k) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| parse_k(n, self.dir, false, ""))
                {
                    ks.insert(k);
                }
            }
        }
        ks.into_iter()
            .filter(|&k| {
                let alias =
                    fs::read_to_string(format!("/sys/class/net/{}/ifalias", self.bridge_name(k)))
                        .unwrap_or_default();
                !owner_alive(alias.trim())
            })
            .collect()
    }

    /// Removes the networks of this kind whose owning process is gone (crashed earlier runs);
    /// their numbers. One of a live process is never touched.
    pub fn sweep(&self, _lock: &RigLock) -> io::Result<Vec<u8>> {
        let stale = self.stale();
        for &k in &stale {
            self.remove(k)?;
        }
        Ok(stale)
    }

    /// Takes a free `k` under the lock (sweeping stale networks first) and makes its bridge, owned
    /// by this process, with the host's address, and its directory (mode 0700).
    pub fn allocate(&self) -> io::Result<u8> {
        let lock = RigLock::acquire()?;
        if let Err(e) = self.sweep(&lock) {
            // What is left keeps its number taken; another is free.
            eprintln!("{}: removing a stale one: {e}", self.what);
        }
        let alias = owner_alias()?;
        let addrs =
            String::from_utf8_lossy(&ip(&["-4", "-o", "addr", "show"])?.stdout).into_owned();
        for k in 1..=250u8 {
            let br = self.bridge_name(k);
            if link_exists(&br)
                || addrs.contains(&format!(" 10.{}.{k}.", self.octet))
                || self.dir(k).exists()
            {
                continue;
            }
            if let Err(e) = ip(&["link", "add", &br, "type", "bridge"]) {
                if link_exists(&br) {
                    continue; // taken by something that does not take the lock
                }
                return Err(e);
            }
            let set_up = || -> io::Result<()> {
                ip(&["link", "set", &br, "alias", &alias])?;
                set_proc(&format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6"), "1")?;
                set_proc(&format!("/proc/sys/net/ipv4/conf/{br}/forwarding"), "0")?;
                let cidr = format!("{}/24", self.gateway(k));
                ip(&["addr", "add", &cidr, "dev", &br])?;
                ip(&["link", "set", &br, "up"])?;
                fs::DirBuilder::new().mode(0o700).create(self.dir(k))?;
                Ok(())
            };
            if let Err(e) = set_up() {
                let _ = self.remove(k);
                return Err(e);
            }
            return Ok(k);
        }
        Err(other(format!("no free {} number in 1..=250", self.what)))
    }

    /// Host `i` of network `k`: its namespace, its veth pair on the bridge, its address, `lo` up.
    pub fn add_host(&self, k: u8, i: usize) -> io::Result<()> {
        let (ns, veth) = (self.ns_name(k, i), self.veth_name(k, i));
        let (ns, veth) = (ns.as_str(), veth.as_str());
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        set_proc(&format!("/proc/sys/net/ipv6/conf/{veth}/disable_ipv6"), "1")?;
        ip(&["link", "set", veth, "master", &self.bridge_name(k), "up"])?;
        // /proc/sys/net is the reading process's network namespace's.
        run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do [ -e \"$f\" ] && echo 1 >\"$f\"; done; true",
        ]))?;
        let cidr = format!("{}/24", self.host_addr(k, i));
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Removes host `i` of network `k` (its processes, veth and namespace); what is gone already
    /// is no error.
    pub fn remove_host(&self, k: u8, i: usize) -> io::Result<()> {
        let ns = self.ns_name(k, i);
        let r1 = kill_netns(&ns);
        let r2 = del_link(&self.veth_name(k, i));
        let r3 = if netns_names().contains(&ns) {
            ip(&["netns", "del", &ns]).map(drop)
        } else {
            Ok(())
        };
        r1.and(r2).and(r3)
    }
}

pub fn netns_names() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn link_names() -> Vec<String> {
    fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes link `name`; done if it is gone already (or meanwhile).
pub fn del_link(name: &str) -> io::Result<()> {
    match ip(&["link", "del", name]) {
        Err(_) if !link_exists(name) => Ok(()),
        r => r.map(drop),
    }
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Host pids of the processes in network namespace `ns` (empty if it does not exist).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn kill(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Whether process `pid` that started at `start` is alive: it has not finished exiting (a zombie
/// has; killed processes whose parent died with them are reaped by the host's init in its own time).
pub fn running(pid: u32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    start_time(pid) == Some(start) && !matches!(state, Some("Z" | "X") | None)
}

/// Kills every process in network namespace `ns` until none is left, and waits until they are
/// all gone: a dying PID-namespace init leaves the network namespace before it has finished
/// exiting (it waits for the rest of its namespace). Bounded.
pub fn kill_netns(ns: &str) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen: Vec<(u32, u64)> = vec![];
    loop {
        let pids = netns_pids(ns);
        for &p in &pids {
            if let Some(start) = start_time(p)
                && !seen.contains(&(p, start))
            {
                seen.push((p, start));
            }
            kill(p, rustix::process::Signal::KILL);
        }
        seen.retain(|&(p, start)| running(p, start));
        if pids.is_empty() && seen.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(other(format!(
                "processes {pids:?} {seen:?} of {ns} do not die"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount points (host namespace) at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    ims_rootfs::mounts::deepest_first(ims_rootfs::mounts::mounts_under(dir).unwrap_or_default())
}

/// Removes `dir` after unmounting whatever the host namespace has mounted under it; refuses to
/// remove it while a mount remains (it could be someone's data).
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for m in mounts_under(dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .stdin(Stdio::null())
            .output();
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        return Err(other(format!(
            "mounts remain under {}: {left:?}",
            dir.display()
        )));
    }
    fs::remove_dir_all(dir).map_err(|e| other(format!("remove {}: {e}", dir.display())))
}

/// The rigs' lock (`/run/ims-test-rig/lock`), held while sweeping and allocating. A test that
/// must see the rigs' names settle (nobody allocating meanwhile) holds it; releasing is dropping it.
pub struct RigLock(#[allow(dead_code)] fs::File);

impl RigLock {
    /// Waits for the lock.
    pub fn acquire() -> io::Result<RigLock> {
        fs::create_dir_all(LOCK_DIR)?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(Path::new(LOCK_DIR).join("lock"))?;
        f.lock()?;
        Ok(RigLock(f))
    }

    /// Removes the rigs whose owning process is gone (crashed earlier runs); their numbers. A rig
    /// of a live process is never touched.
    pub fn sweep(&self) -> io::Result<Vec<u8>> {
        RIG_NET.sweep(self)
    }
}

/// [`RigLock::sweep`] under the lock; [`Rig::new`] does this first.
pub fn sweep() -> io::Result<Vec<u8>> {
    RigLock::acquire()?.sweep()
}

/// A rig of remote build nodes (see the module's documentation).
pub struct Rig {
    k: u8,
    dir: PathBuf,
    client_key: PathBuf,
    known_hosts: PathBuf,
    nodes: Vec<Node>,
}

/// One node of a [`Rig`].
pub struct Node {
    index: usize,
    ns: String,
    veth: String,
    addr: Ipv4Addr,
    xname: String,
    /// The node's host directory: `etc/` (sshd's files), `state/`, `sshd.log`.
    dir: PathBuf,
    rig_dir: PathBuf,
    client_key: PathBuf,
    known_hosts: PathBuf,
    sshd: Mutex<Option<Sshd>>,
}

/// A running node: `ip netns exec … unshare …` (the child) and the node's PID 1 (`sshd`).
struct Sshd {
    child: Child,
    init: u32,
}

impl Rig {
    /// A rig of `n` nodes, or `None` (with the reason printed) when not root. Panics if the rig
    /// cannot be set up.
    pub fn start(n: usize) -> Option<Rig> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: the remote build node rig (network namespaces, sshd) needs root");
            return None;
        }
        Some(Rig::new(n).unwrap_or_else(|e| panic!("remote build node rig: {e}")))
    }

    /// A rig of `n` (1..=[`MAX_NODES`]) nodes, each `sshd` listening when this returns.
    pub fn new(n: usize) -> io::Result<Rig> {
        if !(1..=MAX_NODES).contains(&n) {
            return Err(other(format!("a rig has 1 to {MAX_NODES} nodes, not {n}")));
        }
        let k = RIG_NET.allocate()?;
        let dir = RIG_NET.dir(k);
        let client = dir.join("client");
        let mut rig = Rig {
            k,
            client_key: client.join("id_ed25519"),
            known_hosts: client.join("known_hosts"),
            dir,
            nodes: vec![],
        };
        // From here on, a failure drops `rig`, which removes whatever was made.
        rig.set_up(n)?;
        Ok(rig)
    }

    fn set_up(&mut self, n: usize) -> io::Result<()> {
        let k = self.k;
        let client = self.dir.join("client");
        fs::DirBuilder::new().mode(0o700).create(&client)?;
        keygen(&self.client_key, "ims-test-rig-client")?;
        let client_pub = fs::read_to_string(self.client_key.with_extension("pub"))?;

        for i in 0..n {
            let node = Node {
                index: i,
                ns: RIG_NET.ns_name(k, i),
                veth: RIG_NET.veth_name(k, i),
                addr: RIG_NET.host_addr(k, i),
                xname: format!("x3000c0s{i}b0n0"),
                dir: self.dir.join(format!("n{i}")),
                rig_dir: self.dir.clone(),
                client_key: self.client_key.clone(),
                known_hosts: self.known_hosts.clone(),
                sshd: Mutex::new(None),
            };
            self.nodes.push(node);
            let node = &self.nodes[i];
            node.make_files(&client_pub)?;
            RIG_NET.add_host(k, i)?;
        }
        let mut pinned = String::new();
        for node in &self.nodes {
            pinned.push_str(&node.known_hosts_line()?);
            pinned.push('\n');
        }
        write_private(&self.known_hosts, &pinned)?;
        for node in &self.nodes {
            node.power_on()?;
        }
        Ok(())
    }

    /// The rig's number: its names are `imsbr<k>`, `ims<k>n<i>`, its network `10.213.<k>.0/24`.
    pub fn k(&self) -> u8 {
        self.k
    }

    /// The bridge's name (`imsbr<k>`).
    pub fn bridge(&self) -> String {
        RIG_NET.bridge_name(self.k)
    }

    /// The host's address on the nodes' network (`10.213.<k>.1`): the server under test listens here.
    pub fn host_addr(&self) -> Ipv4Addr {
        RIG_NET.gateway(self.k)
    }

    /// The rig's directory on the host (`$TMPDIR/ims-rig<k>`, 0700): `client/` (`id_ed25519`,
    /// `known_hosts`) and per node `n<i>/` with `etc/` (`sshd_config`, host key,
    /// `authorized_keys`: the node sees it as `/run/ims-rig`), `state/` (its `/var/lib/ims-node`)
    /// and `sshd.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i` (panics when out of range).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The private key (ed25519, 0600) every node's root accepts.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// A known-hosts file with every node's host key as made at start-up (not updated by
    /// [`Node::regenerate_host_key`]).
    pub fn known_hosts_file(&self) -> &Path {
        &self.known_hosts
    }

    /// `IMS_REMOTE_BUILD_NODE_ADDRESSES`: `x3000c0s0b0n0=10.213.<k>.10,...`.
    pub fn addresses_setting(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.xname, n.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Gives node `i` a new host key (see [`Node::regenerate_host_key`]).
    pub fn regenerate_host_key(&self, i: usize) -> io::Result<()> {
        self.node(i).regenerate_host_key()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = n.sshd_log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- sshd log of node {} ({}), last lines:", n.index, n.addr);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for n in &self.nodes {
            if let Err(e) = n.power_off() {
                eprintln!("rig {}: node {}: {e}", self.k, n.index);
            }
        }
        if let Err(e) = RIG_NET.remove(self.k) {
            eprintln!("rig {}: teardown: {e}", self.k);
        }
    }
}

fn keygen(path: &Path, comment: &str) -> io::Result<()> {
    for p in [path.to_path_buf(), path.with_extension("pub")] {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path))?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

impl Node {
    fn make_files(&self, client_pub: &str) -> io::Result<()> {
        let etc = self.dir.join("etc");
        fs::DirBuilder::new().mode(0o700).create(&self.dir)?;
        fs::DirBuilder::new().mode(0o700).create(&etc)?;
        fs::DirBuilder::new().mode(0o755).create(self.state_dir())?;
        fs::set_permissions(self.state_dir(), fs::Permissions::from_mode(0o755))?;
        keygen(&etc.join("ssh_host_ed25519_key"), &self.xname)?;
        write_private(&etc.join("authorized_keys"), client_pub)?;
        // Paths as the node sees them (its files are bound at /run/ims-rig).
        let config = format!(
            "# sshd of test node {xname} ({addr}); made by the test rig\n\
             ListenAddress {addr}:22\n\
             HostKey /run/ims-rig/ssh_host_ed25519_key\n\
             AuthorizedKeysFile /run/ims-rig/authorized_keys\n\
             PidFile /run/sshd.pid\n\
             PermitRootLogin prohibit-password\n\
             AuthenticationMethods publickey\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitUserEnvironment no\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             X11Forwarding no\n\
             MaxStartups 64\n\
             MaxSessions 64\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            xname = self.xname,
            addr = self.addr
        );
        write_private(&etc.join("sshd_config"), &config)?;
        Ok(())
    }

    /// The node's index in its rig.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `10.213.<k>.<10+i>`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `x3000c0s<i>b0n0` (also the node's `hostname`).
    pub fn xname(&self) -> &str {
        &self.xname
    }

    /// The network namespace (`ims<k>n<i>`).
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The host side of the node's veth (`ims<k>n<i>h`), on the bridge.
    pub fn host_veth(&self) -> &str {
        &self.veth
    }

    /// The host directory that the node sees as `/var/lib/ims-node`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The node's current host key as `ssh-keyscan` prints it: `<addr> ssh-ed25519 AAAA…`.
    pub fn known_hosts_line(&self) -> io::Result<String> {
        let p = self.dir.join("etc/ssh_host_ed25519_key.pub");
        let text = fs::read_to_string(&p)?;
        let mut w = text.split_whitespace();
        match (w.next(), w.next()) {
            (Some(t), Some(key)) => Ok(format!("{} {t} {key}", self.addr)),
            _ => Err(other(format!("{}: not a public key", p.display()))),
        }
    }

    /// The node's `sshd` log (all its starts).
    pub fn sshd_log(&self) -> String {
        fs::read(self.dir.join("sshd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `ssh` to `root@<addr>` with the rig's client key, host key pinned to
    /// [`Rig::known_hosts_file`] (`StrictHostKeyChecking=yes`), batch mode, `ConnectTimeout=5`, a
    /// session silent for 15 s (e.g. a cut node) ends, no ssh config files. `extra` options come first, so they win over these (ssh takes an
    /// option's first value), e.g. `["-o", "UserKnownHostsFile=/other"]`. Add the remote command.
    pub fn ssh_command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null"])
            .args(extra)
            .arg("-i")
            .arg(&self.client_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "UpdateHostKeys=no",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "LogLevel=ERROR",
                "-l",
                "root",
            ])
            .arg(self.addr.to_string())
            .stdin(Stdio::null());
        c
    }

    /// Runs `cmd` on the node over SSH ([`Node::ssh_command`]).
    pub fn ssh(&self, cmd: &str) -> Output {
        self.ssh_command(&[]).arg(cmd).output().expect("run ssh")
    }

    /// The host pid of the node's PID 1 (its `sshd`), `None` when powered off.
    pub fn init_pid(&self) -> Option<u32> {
        self.sshd.lock().unwrap().as_ref().map(|s| s.init)
    }

    /// A command that runs `program` inside the node (its network, mount, UTS and PID
    /// namespaces, a clean environment, cwd `/`), not over SSH. Panics when the node is powered off.
    pub fn command(&self, program: &str) -> Command {
        let init = self
            .init_pid()
            .unwrap_or_else(|| panic!("node {} is powered off", self.index));
        let mut c = Command::new("nsenter");
        c.args(["-t", &init.to_string(), "-n", "-m", "-u", "-p", "--"])
            .arg(program)
            .env_clear()
            .env("PATH", NODE_PATH)
            .env("HOME", "/root")
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    /// Runs `sh -c cmd` inside the node ([`Node::command`]). Panics when the node is powered off.
    pub fn exec(&self, cmd: &str) -> Output {
        self.command("sh")
            .args(["-c", cmd])
            .output()
            .expect("run nsenter")
    }

    /// Host pids of the processes in the node's network namespace.
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.ns)
    }

    /// Pulls the node's cable: its veth's host side goes down. The node's processes keep running.
    pub fn cut(&self) -> io::Result<()> {
        ip(&["link", "set", &self.veth, "down"]).map(drop)
    }

    /// Plugs the cable back in.
    pub fn restore(&self) -> io::Result<()> {
        ip(&["link", "set", &self.veth, "up"]).map(drop)
    }

    /// Kills every process of the node (its PID namespace, and anything else in its network
    /// namespace). The network and the node's files stay; [`Node::power_on`] boots it again.
    /// Nothing happens when it is off already.
    pub fn power_off(&self) -> io::Result<()> {
        let mut guard = self.sshd.lock().unwrap();
        if let Some(mut s) = guard.take() {
            // The node's init exits (after everything in its PID namespace), then `unshare`.
            kill(s.init, rustix::process::Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while s.child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = s.child.kill();
                    s.child.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        kill_netns(&self.ns)
    }

    /// Starts the node's `sshd` (a fresh PID, UTS and mount namespace on the same network and
    /// files) and waits until it accepts connections. An error if it runs already.
    pub fn power_on(&self) -> io::Result<()> {
        let mut guard = self.sshd.lock().unwrap();
        if guard.is_some() {
            return Err(other(format!("node {} is running already", self.index)));
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.dir.join("sshd.log"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args([
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "/bin/bash",
                "-c",
                NODE_INIT,
                "ims-node-init",
                &self.xname,
            ])
            .arg(&self.dir)
            .arg(&self.rig_dir)
            .env_clear()
            .env("PATH", NODE_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        match self.wait_listening(&mut child, None) {
            Ok(init) => {
                *guard = Some(Sshd { child, init });
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = kill_netns(&self.ns);
                Err(e)
            }
        }
    }

    /// Waits until the node's sshd accepts TCP connections on port 22 (from the host, over the
    /// bridge) and, with `key`, offers that host key; the host pid of the node's PID 1.
    fn wait_listening(&self, child: &mut Child, key: Option<&str>) -> io::Result<u32> {
        let deadline = Instant::now() + START_TIMEOUT;
        let sa = SocketAddr::from((self.addr, 22));
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(other(format!(
                    "node {}: sshd exited ({status}); its log:\n{}",
                    self.index,
                    self.sshd_log()
                )));
            }
            let up = match key {
                None => TcpStream::connect_timeout(&sa, Duration::from_millis(500)).is_ok(),
                Some(want) => self.scan_key().is_some_and(|k| k == want),
            };
            if up && let Some(init) = self.find_init() {
                return Ok(init);
            }
            if Instant::now() > deadline {
                return Err(other(format!(
                    "node {}: sshd not ready on {sa} after {START_TIMEOUT:?}; its log:\n{}",
                    self.index,
                    self.sshd_log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host pid of the node's PID 1: in its network namespace, the process whose pid in its
    /// own (child) PID namespace is 1.
    fn find_init(&self) -> Option<u32> {
        netns_pids(&self.ns).into_iter().find(|p| {
            fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .map(|v| v.split_whitespace().collect::<Vec<_>>() == [&p.to_string(), "1"])
                })
                .unwrap_or(false)
        })
    }

    /// The ed25519 host key the node offers now (`<addr> ssh-ed25519 AAAA…`), by `ssh-keyscan`.
    fn scan_key(&self) -> Option<String> {
        let o = Command::new("ssh-keyscan")
            .args(["-T", "2", "-t", "ed25519"])
            .arg(self.addr.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.trim().to_string())
    }

    /// Gives the node a new ed25519 host key; a running `sshd` re-executes (SIGHUP) and offers it
    /// when this returns. The node's processes and sessions keep running. The rig's known-hosts
    /// file keeps the old key; [`Node::known_hosts_line`] is the new one.
    pub fn regenerate_host_key(&self) -> io::Result<()> {
        let mut guard = self.sshd.lock().unwrap();
        keygen(&self.dir.join("etc/ssh_host_ed25519_key"), &self.xname)?;
        let Some(s) = guard.as_mut() else {
            return Ok(());
        };
        let want = self.known_hosts_line()?;
        kill(s.init, rustix::process::Signal::HUP);
        let now = self.wait_listening(&mut s.child, Some(&want))?;
        if now != s.init {
            return Err(other(format!(
                "node {}: PID 1 changed from {} to {now} on SIGHUP",
                self.index, s.init
            )));
        }
        Ok(())
    }
}
