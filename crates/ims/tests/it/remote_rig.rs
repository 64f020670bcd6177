//! The test rig of remote build nodes (`common::nodes`): each node a separate host reachable over
//! its veth network only, with its own scratch space, pinned host keys, faults on demand, and a
//! teardown that leaves nothing. Needs root (skipped otherwise).

use crate::common::nodes::{self, Rig, RigLock};
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// The trimmed stdout of `o`, which must have succeeded.
#[track_caller]
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}: {}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts `sleep 1000` detached from an SSH session on `n`; its pid (in the node's PID namespace).
fn detached_sleep(n: &nodes::Node) -> String {
    let t = Instant::now();
    let pid = ok(n.ssh("setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the session did not end"
    );
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    // `$!` is known before the child has become `sleep` (bash, then setsid, exec in turn).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sleeps(n, &pid) {
        assert!(Instant::now() < deadline, "{pid} did not become sleep");
        std::thread::sleep(Duration::from_millis(20));
    }
    pid
}

/// Whether process `pid` (of the node's PID namespace) runs `sleep` on `n`.
fn sleeps(n: &nodes::Node, pid: &str) -> bool {
    n.exec(&format!("cat /proc/{pid}/comm"))
        .stdout
        .starts_with(b"sleep")
}

/// `(pid, start time)` of the host processes in `n`'s network namespace.
fn processes(n: &nodes::Node) -> Vec<(u32, u64)> {
    n.pids()
        .into_iter()
        .filter_map(|p| Some((p, nodes::start_time(p)?)))
        .collect()
}

#[test]
fn rig_sizes_and_names_are_checked() {
    for n in [0, nodes::MAX_NODES + 1] {
        let e = Rig::new(n).err().expect("refused");
        assert!(e.to_string().contains("1 to 100 nodes"), "{e}");
    }
    for (name, prefix, node, tail, want) in [
        ("ims5n0", "ims", true, "", Some(5)),
        ("ims250n12h", "ims", true, "h", Some(250)),
        ("imsbr17", "imsbr", false, "", Some(17)),
        ("ims-rig3", "ims-rig", false, "", Some(3)),
        ("ims5n0h", "ims", true, "", None),
        ("ims5n0", "ims", true, "h", None),
        ("ims05n0", "ims", true, "", None),
        ("ims251n0", "ims", true, "", None),
        ("ims0n0", "ims", true, "", None),
        ("ims5n", "ims", true, "", None),
        ("ims5x0", "ims", true, "", None),
        ("imsbr", "imsbr", false, "", None),
        ("imsbr5x", "imsbr", false, "", None),
        ("imsbr5", "ims", true, "", None),
    ] {
        assert_eq!(nodes::parse_k(name, prefix, node, tail), want, "{name}");
    }
    fn shareable<T: Send + Sync>() {}
    shareable::<Rig>();
    let me = nodes::owner_alias().unwrap();
    assert!(nodes::owner_alive(&me), "{me}");
    let pid = std::process::id();
    for dead in [
        format!("ims-test-rig pid={pid} start=1"),
        format!("ims-test-rig pid={pid}"),
        format!("other pid={pid} start={}", nodes::start_time(pid).unwrap()),
        String::new(),
        "ims-test-rig pid=x start=y".into(),
    ] {
        assert!(!nodes::owner_alive(&dead), "{dead}");
    }
}

#[test]
fn nodes_are_hosts_with_their_own_addresses_and_pinned_keys() {
    let Some(rig) = Rig::start(2) else { return };
    let k = rig.k();
    assert_eq!(rig.host_addr(), Ipv4Addr::new(10, 213, k, 1));
    assert_eq!(
        rig.addresses_setting(),
        format!("x3000c0s0b0n0=10.213.{k}.10,x3000c0s1b0n0=10.213.{k}.11")
    );
    let mode = std::fs::metadata(rig.client_key())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let pinned = std::fs::read_to_string(rig.known_hosts_file()).unwrap();
    assert_eq!(pinned.lines().count(), 2);
    for (i, n) in rig.nodes().iter().enumerate() {
        assert_eq!(n.addr(), Ipv4Addr::new(10, 213, k, 10 + i as u8));
        let out =
            ok(n.ssh("id -un; hostname; hostname -I; ip -4 -o addr show | awk '{print $2, $4}'"));
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "root",
                n.xname(),
                &n.addr().to_string(),
                "lo 127.0.0.1/8",
                &format!("eth0 {}/24", n.addr()),
            ],
            "{out}"
        );
        // The pinned line is what ssh-keyscan reports for the address.
        let line = n.known_hosts_line().unwrap();
        assert!(pinned.lines().any(|l| l == line), "{line} not in {pinned}");
        let scan = ok(std::process::Command::new("ssh-keyscan")
            .args(["-T", "5", "-t", "ed25519", &n.addr().to_string()])
            .output()
            .unwrap());
        assert_eq!(scan, line);
        // A node's processes are its own (own PID namespace and /proc).
        assert_eq!(ok(n.exec("cat /proc/1/comm")), "sshd");
        assert_eq!(ok(n.exec("hostname")), n.xname());
    }
}

#[test]
fn scratch_space_is_private_to_each_node() {
    let existed = Path::new("/var/lib/ims-node").exists();
    let Some(rig) = Rig::start(2) else { return };
    let (n0, n1) = (rig.node(0), rig.node(1));
    assert_eq!(
        ok(n0.ssh("echo zero >/var/lib/ims-node/marker && cat /var/lib/ims-node/marker")),
        "zero"
    );
    // The test sees it from outside…
    assert_eq!(
        std::fs::read_to_string(n0.state_dir().join("marker")).unwrap(),
        "zero\n"
    );
    // …node 1 and the host do not.
    assert_eq!(
        ok(n1.ssh("test -d /var/lib/ims-node && ls -A /var/lib/ims-node | wc -l")),
        "0"
    );
    assert!(!Path::new("/var/lib/ims-node/marker").exists());
    assert_eq!(
        Path::new("/var/lib/ims-node").exists(),
        existed,
        "the rig must not touch the host's /var/lib"
    );
    // SFTP works (scp), e.g. to copy a binary there.
    let o = std::process::Command::new("scp")
        .args([
            "-F",
            "/dev/null",
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            rig.known_hosts_file().display()
        ))
        .arg("-i")
        .arg(rig.client_key())
        .arg(rig.known_hosts_file())
        .arg(format!("root@{}:/var/lib/ims-node/copied", n0.addr()))
        .output()
        .unwrap();
    ok(o);
    assert_eq!(
        std::fs::read(n0.state_dir().join("copied")).unwrap(),
        std::fs::read(rig.known_hosts_file()).unwrap()
    );
    // The rest of /var/lib is the host's, and so is /tmp.
    for e in std::fs::read_dir("/var/lib").unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if name != "ims-node" {
            ok(n1.exec(&format!(
                "test -e '/var/lib/{name}' || test -L '/var/lib/{name}'"
            )));
        }
    }
    let shared = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(shared.path(), "host file").unwrap();
    assert_eq!(
        ok(n1.ssh(&format!("cat {}", shared.path().display()))),
        "host file"
    );
    // The rig's own files (the client key, the other nodes' state) are hidden from nodes.
    let o = n1.ssh(&format!(
        "ls -A {} | wc -l; test -e {} || test -e {}",
        rig.dir().display(),
        rig.client_key().display(),
        n0.state_dir().join("marker").display()
    ));
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
}

#[test]
fn processes_outlive_their_session() {
    let Some(rig) = Rig::start(1) else { return };
    let n = rig.node(0);
    let pid = detached_sleep(n);
    assert!(sleeps(n, &pid));
    assert_eq!(ok(n.ssh(&format!("cat /proc/{pid}/comm"))), "sleep");
    // Nothing but sshd, the detached process and this shell (builtins only) runs on the node.
    let names = ok(
        n.exec("for p in /proc/[0-9]*; do read -r c <$p/comm 2>/dev/null && echo $c; done; true")
    );
    let names: std::collections::BTreeSet<&str> = names.lines().collect();
    assert_eq!(names, ["sh", "sleep", "sshd"].into(), "{names:?}");
}

#[test]
fn unknown_or_changed_host_keys_are_refused() {
    let Some(rig) = Rig::start(2) else { return };
    let (n0, n1) = (rig.node(0), rig.node(1));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let o = n0
        .ssh_command(&["-o", &format!("UserKnownHostsFile={}", empty.display())])
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    assert!(stderr(&o).contains("Host key verification failed"), "{o:?}");

    let pid = detached_sleep(n0);
    let old = n0.known_hosts_line().unwrap();
    rig.regenerate_host_key(0).unwrap();
    let new = n0.known_hosts_line().unwrap();
    assert_ne!(old, new);
    let o = n0.ssh("true");
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    assert!(
        stderr(&o).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{o:?}"
    );
    // The new key, once pinned, is accepted; the node kept running; node 1 is unaffected.
    let accepted = dir.path().join("accepted");
    std::fs::write(&accepted, format!("{new}\n")).unwrap();
    let o = n0
        .ssh_command(&["-o", &format!("UserKnownHostsFile={}", accepted.display())])
        .arg("hostname")
        .output()
        .unwrap();
    assert_eq!(ok(o), n0.xname());
    assert!(sleeps(n0, &pid));
    assert_eq!(ok(n1.ssh("hostname")), n1.xname());
}

#[test]
fn a_cut_node_times_out_and_comes_back() {
    let Some(rig) = Rig::start(2) else { return };
    let (n0, n1) = (rig.node(0), rig.node(1));
    let pid = detached_sleep(n0);
    n0.cut().unwrap();
    let t = Instant::now();
    let o = n0
        .ssh_command(&["-o", "ConnectTimeout=2"])
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    // Only node 0 is gone, and its processes kept running.
    assert_eq!(ok(n1.ssh("hostname")), n1.xname());
    assert!(sleeps(n0, &pid));
    n0.restore().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = n0.ssh("hostname");
        if o.status.success() {
            assert_eq!(ok(o), n0.xname());
            break;
        }
        assert!(Instant::now() < deadline, "node 0 did not come back: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sleeps(n0, &pid));
}

#[test]
fn nodes_reach_the_host_bridge_address_only() {
    let Some(rig) = Rig::start(1) else { return };
    let n = rig.node(0);
    // The server under test listens on the bridge address: reachable, from the node's address.
    let server = TcpListener::bind((rig.host_addr(), 0)).unwrap();
    let port = server.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        let (mut c, peer) = server.accept().unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        (peer.ip(), got)
    });
    let o = n
        .command("bash")
        .args([
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/{port} && echo hello-from-node >&3",
                rig.host_addr()
            ),
        ])
        .output()
        .unwrap();
    ok(o);
    let (peer, got) = accept.join().unwrap();
    assert_eq!(peer, n.addr());
    assert_eq!(got, "hello-from-node\n");

    // The host's loopback is not the node's.
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    lo.set_nonblocking(true).unwrap();
    let lport = lo.local_addr().unwrap().port();
    let o = n
        .command("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{lport}")])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    assert!(stderr(&o).contains("Connection refused"), "{o:?}");
    assert_eq!(
        lo.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );

    // Nothing beyond the rig's /24 is routable from a node (no default route): forwarding and
    // firewall settings of the host cannot let a node's packet out. (`ip route get` sends nothing.)
    assert_eq!(
        ok(n.exec("ip -4 route show")),
        format!(
            "10.213.{}.0/24 dev eth0 proto kernel scope link src {}",
            rig.k(),
            n.addr()
        )
    );
    let o = n.exec("ip route get 192.0.2.1");
    assert!(!o.status.success(), "{o:?}");
    assert!(stderr(&o).contains("unreachable"), "{o:?}");
    assert_eq!(ok(n.exec("ip -6 addr show | wc -l")), "0", "IPv6 is off");
}

#[test]
fn power_off_kills_the_node_and_power_on_keeps_its_disk() {
    let Some(rig) = Rig::start(1) else { return };
    let n = rig.node(0);
    ok(n.ssh("echo kept >/var/lib/ims-node/f"));
    detached_sleep(n);
    let before = processes(n);
    assert!(before.len() >= 2, "{before:?}");
    n.power_off().unwrap();
    assert!(n.pids().is_empty());
    assert!(n.init_pid().is_none());
    for (p, start) in &before {
        assert!(!nodes::running(*p, *start), "process {p} survived");
    }
    let o = n
        .ssh_command(&["-o", "ConnectTimeout=2"])
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| n.exec("true")));
    assert!(e.is_err(), "exec on a node that is off");
    n.power_off().unwrap(); // off already: nothing to do

    n.power_on().unwrap();
    assert_eq!(ok(n.ssh("cat /var/lib/ims-node/f")), "kept");
    let names = ok(
        n.exec("for p in /proc/[0-9]*; do read -r c <$p/comm 2>/dev/null && echo $c; done; true")
    );
    assert!(!names.lines().any(|c| c == "sleep"), "{names}");
    let e = n.power_on().unwrap_err();
    assert!(e.to_string().contains("running already"), "{e}");

    // A new key while off is the one offered after power on.
    n.power_off().unwrap();
    n.regenerate_host_key().unwrap();
    n.power_on().unwrap();
    let o = n.ssh("true");
    assert!(
        stderr(&o).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{o:?}"
    );
    let scan = ok(std::process::Command::new("ssh-keyscan")
        .args(["-T", "5", "-t", "ed25519", &n.addr().to_string()])
        .output()
        .unwrap());
    assert_eq!(scan, n.known_hosts_line().unwrap());

    // An sshd that cannot start is an error that shows its log, and leaves the node off.
    n.power_off().unwrap();
    let config = rig.dir().join("n0/etc/sshd_config");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}NoSuchOption yes\n")).unwrap();
    let e = n.power_on().unwrap_err().to_string();
    assert!(
        e.contains("sshd exited") && e.contains("NoSuchOption"),
        "{e}"
    );
    assert!(n.init_pid().is_none() && n.pids().is_empty());
    std::fs::write(&config, good).unwrap();
    n.power_on().unwrap();
    assert_eq!(ok(n.exec("hostname")), n.xname());
}

/// Everything the rig made for `k` that still exists: namespaces, links, directory, mounts.
fn leftovers(k: u8, dir: &Path) -> Vec<String> {
    let mut left = vec![];
    let netns = ok(std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap());
    for l in netns.lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        if nodes::parse_k(name, "ims", true, "") == Some(k) {
            left.push(format!("netns {name}"));
        }
    }
    let links = ok(std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap());
    for l in links.lines() {
        let name = l
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap();
        if nodes::parse_k(name, "ims", true, "h") == Some(k)
            || nodes::parse_k(name, "imsbr", false, "") == Some(k)
        {
            left.push(format!("link {name}"));
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    let d = dir.to_str().unwrap();
    for m in std::fs::read_to_string("/proc/mounts").unwrap().lines() {
        if m.contains(d) || m.contains(&format!("/run/netns/ims{k}n")) {
            left.push(format!("mount {m}"));
        }
    }
    left
}

/// The mount namespace (`mnt:[…]`) of process `pid`.
fn mount_ns(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Whether some process is in mount namespace `ns`.
fn mount_ns_used(ns: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read_link(e.path().join("ns/mnt")).is_ok_and(|l| l.to_string_lossy() == ns)
    })
}

#[test]
fn dropping_the_rig_leaves_nothing() {
    let Some(rig) = Rig::start(2) else { return };
    let (k, dir) = (rig.k(), rig.dir().to_path_buf());
    detached_sleep(rig.node(0));
    let procs: Vec<(u32, u64)> = rig.nodes().iter().flat_map(processes).collect();
    assert!(procs.len() >= 3, "{procs:?}");
    let mounts: Vec<String> = rig
        .nodes()
        .iter()
        .map(|n| mount_ns(n.init_pid().unwrap()))
        .collect();
    assert!(leftovers(k, &dir).len() >= 5);
    // Nobody allocates a rig while the lock is held, so `k`'s names must all be gone.
    // Something the host mounted under the rig's directory is unmounted, not deleted.
    let precious = tempfile::tempdir().unwrap();
    std::fs::write(precious.path().join("keep"), "data").unwrap();
    let under = rig.node(1).state_dir().join("mounted");
    std::fs::create_dir(&under).unwrap();
    ok(std::process::Command::new("mount")
        .arg("--bind")
        .arg(precious.path())
        .arg(&under)
        .output()
        .unwrap());
    let lock = RigLock::acquire().unwrap();
    drop(rig);
    assert_eq!(leftovers(k, &dir), Vec::<String>::new());
    drop(lock);
    assert_eq!(
        std::fs::read_to_string(precious.path().join("keep")).unwrap(),
        "data"
    );
    for (p, start) in procs {
        assert!(!nodes::running(p, start), "process {p} survived");
    }
    for m in mounts {
        assert!(!mount_ns_used(&m), "a process is still in the node's {m}");
    }
}

#[test]
fn the_sweep_removes_dead_owners_rigs_only() {
    let Some(live) = Rig::start(1) else { return };
    let crashed = Rig::new(1).unwrap();
    let (k, dir) = (crashed.k(), crashed.dir().to_path_buf());
    detached_sleep(crashed.node(0));
    let procs = processes(crashed.node(0));
    // As if its owner had died and its pid were reused: same pid, another start time. (Under the
    // lock, or a parallel test's sweep could be first.)
    let lock = RigLock::acquire().unwrap();
    let alias = format!("ims-test-rig pid={} start=1", std::process::id());
    ok(std::process::Command::new("ip")
        .args(["link", "set", &crashed.bridge(), "alias", &alias])
        .output()
        .unwrap());
    std::mem::forget(crashed); // no Drop: what a killed test process leaves
    let swept = lock.sweep().unwrap();
    assert!(swept.contains(&k), "{swept:?}");
    assert!(!swept.contains(&live.k()), "{swept:?}");
    assert_eq!(leftovers(k, &dir), Vec::<String>::new());
    drop(lock);
    for (p, start) in procs {
        assert!(!nodes::running(p, start), "process {p} survived");
    }
    assert_eq!(ok(live.node(0).ssh("hostname")), live.node(0).xname());
}
