//! `ims remote-build-nodes` and its IMS-rs extensions (capacity, drained, host keys), driven as a
//! subprocess against a real `ims serve` (SQLite). The servers have no SSH key for the nodes: the
//! host-key calls only need `ssh-keyscan`.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn node_server(env: &[(&str, &str)]) -> Server {
    let mut b = builder(Db::Sqlite)
        .await
        .env("IMS_REMOTE_BUILD_NODE_SSH_KEY", "");
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start().await
}

fn toml_of(text: &str) -> Value {
    let t: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    serde_json::to_value(t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_and_drained() {
    let s = node_server(&[]).await;
    let cli = Cli::of(&s);
    let x = "x3000c0s1b0n0";
    let node = |cli: &Cli| cli.json(&["remote-build-nodes", "describe", x]);

    let n = cli.json(&[
        "remote-build-nodes",
        "create",
        "--xname",
        x,
        "--capacity",
        "3",
        "--drained",
        "true",
    ]);
    assert_eq!(n, json!({"xname": x, "capacity": 3, "drained": true}));
    // Registering again keeps what is not given.
    let n = cli.json(&["remote-build-nodes", "create", "--xname", x]);
    assert_eq!(n, json!({"xname": x, "capacity": 3, "drained": true}));
    assert_eq!(node(&cli), n);

    // update: each option alone, the answer is the node.
    let n = cli.json(&["remote-build-nodes", "update", x, "--capacity", "8"]);
    assert_eq!(n, json!({"xname": x, "capacity": 8, "drained": true}));
    let n = cli.json(&["remote-build-nodes", "update", x, "--drained", "no"]);
    assert_eq!(n, json!({"xname": x, "capacity": 8}));
    let n = cli.json(&["remote-build-nodes", "update", x, "--capacity-default"]);
    assert_eq!(n, json!({"xname": x}));
    assert_eq!(node(&cli), n);

    // drain / undrain print the node (toml by default) and show in the status.
    let o = cli.run(&["remote-build-nodes", "drain", x]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(toml_of(&o.stdout), json!({"xname": x, "drained": true}));
    let st = cli.json(&["remote-build-nodes", "status", "describe", x]);
    assert_eq!(st["drained"], true, "{st}");
    assert_eq!(st["reservedSlots"], 0, "{st}");
    let n = cli.json(&["remote-build-nodes", "undrain", x]);
    assert_eq!(n, json!({"xname": x}));
    let st = cli.json(&["remote-build-nodes", "status", "describe", x]);
    assert_eq!(st["drained"], false, "{st}");

    // No option: refused before anything is sent.
    cli.json(&["remote-build-nodes", "update", x, "--capacity", "2"]);
    let e = cli.fails(&["remote-build-nodes", "update", x]);
    assert!(
        e.starts_with("Error: nothing to change for x3000c0s1b0n0"),
        "{e}"
    );
    assert!(e.contains("nothing was sent"), "{e}");
    // --capacity and --capacity-default together: clap's refusal.
    let e = cli.fails(&[
        "remote-build-nodes",
        "update",
        x,
        "--capacity",
        "4",
        "--capacity-default",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    assert_eq!(node(&cli), json!({"xname": x, "capacity": 2}));

    // Out of range: the server's message, exit 2, nothing changed.
    for bad in ["0", "1025", "-1"] {
        for args in [
            vec!["remote-build-nodes", "update", x, "--capacity", bad],
            vec![
                "remote-build-nodes",
                "create",
                "--xname",
                x,
                "--capacity",
                bad,
            ],
        ] {
            let e = cli.fails(&args);
            assert!(
                e.contains("capacity must be a whole number from 1 to 1024"),
                "{args:?}: {e}"
            );
        }
    }
    // Not a number: refused by the option's parser.
    let e = cli.fails(&["remote-build-nodes", "update", x, "--capacity", "x"]);
    assert!(
        e.contains("invalid value 'x' for '--capacity <INT>'"),
        "{e}"
    );
    let e = cli.fails(&["remote-build-nodes", "update", x, "--drained", "maybe"]);
    assert!(e.contains("not a valid boolean"), "{e}");
    assert_eq!(node(&cli), json!({"xname": x, "capacity": 2}));

    // An unknown node: the server's 404.
    for args in [
        &["remote-build-nodes", "update", "x9", "--capacity", "1"][..],
        &["remote-build-nodes", "drain", "x9"],
        &["remote-build-nodes", "host-key", "show", "x9"],
    ] {
        let e = cli.fails(args);
        assert!(e.starts_with("Error: Not Found"), "{args:?}: {e}");
    }
}

/// A node that cannot be reached: `show` prints the answer with its `error` (exit 1, the reason
/// on stderr too); `accept` fails with the server's 502 message (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_of_an_unreachable_node() {
    let s = node_server(&[]).await;
    let cli = Cli::of(&s);
    let x = "nonexistent.invalid";
    cli.json(&["remote-build-nodes", "create", "--xname", x]);

    let api = s
        .get(&format!("/v3/remote-build-nodes/{x}/host-key"))
        .await
        .ok(200);
    assert!(
        api["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{api}"
    );

    let o = cli.run(&[
        "remote-build-nodes",
        "host-key",
        "show",
        x,
        "--format",
        "json",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["xname"], x);
    assert_eq!(v["presented"], json!([]));
    assert_eq!(v["accepted"], json!([]));
    let err = v["error"].as_str().unwrap();
    assert!(err.contains(x), "{err}");
    assert!(
        o.stderr
            .contains(&format!("ims: the keys {x} presents could not be read: ")),
        "{o:?}"
    );

    // The default format: toml, with the error.
    let o = cli.run(&["remote-build-nodes", "host-key", "show", x]);
    assert_eq!(o.code, 1, "{o:?}");
    let t = toml_of(&o.stdout);
    assert_eq!(t["xname"], x);
    assert_eq!(t["presented"], json!([]));
    assert!(t["error"].as_str().is_some_and(|e| e.contains(x)), "{t}");
    // --quiet: the answer only.
    let o = cli.run(&["remote-build-nodes", "host-key", "show", x, "--quiet"]);
    assert_eq!((o.code, o.stderr.as_str()), (1, ""), "{o:?}");
    // table: just the header (no key known).
    let o = cli.run(&[
        "remote-build-nodes",
        "host-key",
        "show",
        x,
        "--format",
        "table",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(
        o.stdout.split_whitespace().collect::<Vec<_>>(),
        ["TYPE", "FINGERPRINT", "PRESENTED", "ACCEPTED"]
    );

    let fp = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let e = cli.fails(&[
        "remote-build-nodes",
        "host-key",
        "accept",
        x,
        "--fingerprint",
        fp,
    ]);
    assert!(
        e.contains(&format!("The host key of {x} could not be read: ")),
        "{e}"
    );
    // A fingerprint that is not one: refused before sending.
    let e = cli.fails(&[
        "remote-build-nodes",
        "host-key",
        "accept",
        x,
        "--fingerprint",
        "6Cejvj+Qz2g/zZs85IFYSK9/OG2Vz32mR/dMYRRrS1s",
    ]);
    assert!(e.contains("is not a SHA256 fingerprint"), "{e}");
    assert!(e.contains("nothing was sent"), "{e}");
    assert_eq!(
        cli.json(&["remote-build-nodes", "describe", x]),
        json!({"xname": x})
    );
}

/// A host key made with ssh-keygen, and its fingerprint as `ssh-keygen -l` prints it.
fn host_key(dir: &std::path::Path, kind: &str, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8(out.stdout).unwrap();
    let fp = fp.split_whitespace().nth(1).unwrap().to_string();
    assert!(fp.starts_with("SHA256:"), "{fp}");
    (path, fp)
}

/// sshd on port 22 of `addr` with these host keys, up and listening.
async fn sshd(addr: &str, keys: &[&std::path::Path]) -> KillOnDrop {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let mut c = std::process::Command::new("/usr/sbin/sshd");
    c.args(["-D", "-e", "-f", "/dev/null", "-o", "PidFile=none", "-o"])
        .arg(format!("ListenAddress={addr}:22"));
    for k in keys {
        c.arg("-h").arg(k);
    }
    let child = KillOnDrop(
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sshd"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((addr, 22)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sshd does not listen on {addr}:22"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child
}

/// `(type, fingerprint, accepted)` of a list of shown keys, sorted.
fn shown(v: &Value) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["type"].as_str().unwrap().to_string(),
                k["fingerprint"].as_str().unwrap().to_string(),
                k["accepted"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A real sshd (port 22 of a loopback address of its own, so root only) with an ed25519 and an
/// ecdsa key: `show` lists them with the fingerprints `ssh-keygen -l` prints and says none is
/// accepted; a wrong fingerprint is refused (409, exit 2); one right one is accepted, and `show`
/// then exits 0 with nothing more to do. The node's ed25519 key then changes: `show` warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_accept_from_a_real_sshd() {
    if !crate::common::jobs::is_root() {
        eprintln!("skipped: needs root to run sshd on port 22");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ed, ed_fp) = host_key(dir.path(), "ed25519", "ed");
    let (ec, ec_fp) = host_key(dir.path(), "ecdsa", "ec");
    // A loopback address of this test's own (pid-derived) so that port 22 is free there.
    let addr = format!(
        "127.77.{}.{}",
        (std::process::id() >> 8) % 250 + 1,
        std::process::id() % 250 + 1
    );
    let sshd1 = sshd(&addr, &[&ed, &ec]).await;

    let x = "x3000c0s9b0n0";
    let s = node_server(&[("IMS_REMOTE_BUILD_NODE_ADDRESSES", &format!("{x}={addr}"))]).await;
    let cli = Cli::of(&s);
    cli.json(&["remote-build-nodes", "create", "--xname", x]);
    let ed_row = |acc: bool| ("ssh-ed25519".to_string(), ed_fp.clone(), acc);
    let ec_row = |acc: bool| ("ecdsa-sha2-nistp256".to_string(), ec_fp.clone(), acc);

    let o = cli.run(&["remote-build-nodes", "host-key", "show", x]);
    assert_eq!(o.code, 0, "{o:?}");
    let t = toml_of(&o.stdout);
    assert_eq!(
        shown(&t["presented"]),
        [ec_row(false), ed_row(false)],
        "{t}"
    );
    assert_eq!(t["accepted"], json!([]), "{t}");
    assert!(
        o.stderr.contains(&format!(
            "ims: none of the 2 key(s) {x} presents is accepted."
        )),
        "{o:?}"
    );
    assert!(
        o.stderr
            .contains(&format!("host-key accept {x} --fingerprint SHA256:…")),
        "{o:?}"
    );
    let o = cli.run(&[
        "remote-build-nodes",
        "host-key",
        "show",
        x,
        "--format",
        "table",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let mut rows: Vec<Vec<&str>> = o
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["TYPE", "FINGERPRINT", "PRESENTED", "ACCEPTED"]);
    rows[1..].sort();
    assert_eq!(
        rows[1..],
        [
            ["ecdsa-sha2-nistp256", ec_fp.as_str(), "yes", "no"],
            ["ssh-ed25519", ed_fp.as_str(), "yes", "no"]
        ]
    );

    // A fingerprint the node does not present: the server's 409.
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let e = cli.fails(&[
        "remote-build-nodes",
        "host-key",
        "accept",
        x,
        "--fingerprint",
        wrong,
    ]);
    assert!(
        e.contains(&format!(
            "{x} does not present a host key with fingerprint {wrong}"
        )),
        "{e}"
    );
    assert_eq!(
        cli.json(&["remote-build-nodes", "describe", x]),
        json!({"xname": x})
    );

    // Accept one: the answer shows it accepted; nothing more to do (the other type is not
    // needed).
    let v = cli.json(&[
        "remote-build-nodes",
        "host-key",
        "accept",
        x,
        "--fingerprint",
        &ed_fp,
    ]);
    assert_eq!(shown(&v["presented"]), [ec_row(false), ed_row(true)], "{v}");
    assert_eq!(shown(&v["accepted"]), [ed_row(true)], "{v}");
    let o = cli.run(&["remote-build-nodes", "host-key", "show", x]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{o:?}");
    let st = cli.json(&["remote-build-nodes", "status", "describe", x]);
    assert_eq!(st["hostKeyPinned"], true, "{st}");

    // The node comes back with another ed25519 key: a warning naming both fingerprints.
    drop(sshd1);
    let (ed2, ed2_fp) = host_key(dir.path(), "ed25519", "ed2");
    let _sshd2 = sshd(&addr, &[&ed2]).await;
    let o = cli.run(&["remote-build-nodes", "host-key", "show", x]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stderr.contains(&format!(
            "ims: WARNING: {x} presents a ssh-ed25519 key ({ed2_fp}) other than the accepted one ({ed_fp})"
        )),
        "{o:?}"
    );
    let v = cli.json(&[
        "remote-build-nodes",
        "host-key",
        "accept",
        x,
        "--fingerprint",
        &ed2_fp,
    ]);
    assert_eq!(
        shown(&v["accepted"]),
        [("ssh-ed25519".to_string(), ed2_fp.clone(), true)],
        "{v}"
    );
}
