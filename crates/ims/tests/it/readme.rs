//! The README's walk-through, run as written: `ims serve` with its defaults (relative `./ims-data`,
//! ports 9000 and 9001) in a fresh directory, the bash block verbatim, a new HOME (no SSH key yet).

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first ```bash block after `heading` in the README.
fn block_after(readme: &str, heading: &str) -> String {
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the README"));
    let rest = &readme[at..];
    let start = rest.find("```bash\n").expect("a bash block") + "```bash\n".len();
    let len = rest[start..].find("\n```").expect("the block's end");
    rest[start..start + len].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_runs_as_written() {
    if !crate::common::jobs::is_root() {
        eprintln!("skipped: the walk-through is written for root (ims serve's jobs)");
        return;
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = block_after(&readme, "## Five-minute walk-through");
    let clone = tempfile::tempdir().unwrap();
    let home = clone.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let bin_dir = std::path::Path::new(ims_bin())
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `ims serve` exactly as scripts/serve.sh runs it: no options.
    let mut server = Command::new(ims_bin())
        .arg("serve")
        .current_dir(clone.path())
        .env_remove("IMS_CONFIG")
        .env_remove("IMS_DATA_DIR")
        .env_remove("IMS_LISTEN")
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = client
            .get("http://127.0.0.1:9000/healthz/ready")
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ims serve did not become ready on 127.0.0.1:9000"
        );
        if let Ok(Some(st)) = server.try_wait() {
            panic!("ims serve exited: {st:?} (is port 9000 or 9001 in use?)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (clone_dir, home2) = (clone.path().to_path_buf(), home.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block])
            .current_dir(&clone_dir)
            .env("HOME", &home2)
            .env("PATH", &path)
            .env_remove("IMS_URL")
            .env_remove("IMS_TOKEN")
            .env_remove("IMS_CLIENT_CONFIG")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the walk-through failed:\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("Error:"), "{stderr}");
    // What it shows: the imported image, the verification, the 422, the STS answer, the document.
    for want in [
        "\"name\":\"demo-",
        "\"errors\"",
        "SessionToken",
        "\"components\"",
    ] {
        assert!(stdout.contains(want), "{want:?} not shown:\n{stdout}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("true") && l.contains("/rootfs ")),
        "the rootfs was not verified:\n{stdout}"
    );
    // All state went to the relative default data directory.
    assert!(clone.path().join("ims-data/ims.db").exists());
    assert!(clone.path().join("ims-data/artifacts/boot-images").is_dir());
}

/// The shipped systemd unit keeps jobs running across a server restart (only the server process
/// is stopped: agents and their sessions outlive it, as `jobs_customize`'s restart test shows).
#[test]
fn systemd_unit_spares_running_jobs() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/systemd/ims.service"
    ))
    .unwrap();
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    assert!(settings.contains(&"KillMode=process"), "{unit}");
    assert!(
        settings
            .iter()
            .any(|l| l.starts_with("ExecStart=") && l.contains(" serve ")),
        "{unit}"
    );
}
