//! Shared by the job tests (customize and create): root check, the `ims` CLI against a test
//! server, a job key pair registered with the server.

use super::{Server, ims_bin};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `ims ARGS --url … --format json` against `s`.
pub fn ims_raw(s: &Server, args: &[&str]) -> std::process::Output {
    Command::new(ims_bin())
        .args(args)
        .args(["--url", &s.url, "--format", "json"])
        .env_remove("IMS_URL")
        .env_remove("IMS_TOKEN")
        .env("IMS_CLIENT_CONFIG", s.data.path().join("client.toml"))
        .output()
        .unwrap()
}

/// Like [`ims_raw`], which must succeed; its JSON output.
pub fn ims(s: &Server, args: &[&str]) -> Value {
    let o = ims_raw(s, args);
    assert!(o.status.success(), "{args:?}: {o:?}");
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// Makes ed25519 key pairs `dir/<name>` (+ `.pub`) and registers the first with `s`; its id.
pub async fn job_keys(s: &Server, dir: &Path, names: &[&str]) -> String {
    for name in names {
        let o = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    let public = std::fs::read_to_string(dir.join(format!("{}.pub", names[0]))).unwrap();
    s.post(
        "/v3/public-keys",
        &json!({"name": "k", "public_key": public.trim()}),
    )
    .await
    .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs `cmd` over SSH as root@127.0.0.1:`port` with the private key `key` (batch mode, host key
/// not checked).
pub fn ssh_as_root(port: &str, key: &Path, cmd: &str) -> std::process::Output {
    Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-p",
            port,
            "-i",
        ])
        .arg(key)
        .arg("root@127.0.0.1")
        .arg(cmd)
        .output()
        .unwrap()
}
