//! Shared by the job tests (customize and create): root check, the `ims` CLI against a test
//! server, a job key pair registered with the server.

use super::{Server, ims_bin};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
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
    ssh_as_root_at("127.0.0.1", port, key, cmd)
}

/// [`ssh_as_root`] at `host`.
pub fn ssh_as_root_at(host: &str, port: &str, key: &Path, cmd: &str) -> std::process::Output {
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
        .arg(format!("root@{host}"))
        .arg(cmd)
        .output()
        .unwrap()
}

/// A command on a pseudo-terminal, as a user runs it in a terminal: its controlling terminal is
/// the pty, everything it writes is collected, and input is typed into it.
pub struct Pty {
    pub child: std::process::Child,
    master: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// The thread copying the terminal's output into `output` (done at the terminal's end).
    reader: std::thread::JoinHandle<()>,
}

impl Pty {
    pub fn spawn(mut cmd: Command) -> Pty {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::process::CommandExt;
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(std::ffi::OsStr::from_bytes(name.as_bytes()))
            .unwrap();
        rustix::termios::tcsetwinsize(
            &slave,
            rustix::termios::Winsize {
                ws_row: 40,
                ws_col: 120,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
        let master = std::fs::File::from(master);
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut reader, out) = (master.try_clone().unwrap(), output.clone());
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // EIO once the last process holding the terminal has gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            master,
            output,
            reader,
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.output().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "{needle:?} did not appear within {timeout:?}; output so far:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Types `s` into the terminal.
    pub fn send(&mut self, s: &str) {
        use std::io::Write;
        self.master.write_all(s.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits for the command to exit.
    pub fn finish(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // What the command wrote last is read once the terminal's last holder is gone
                // (its children may keep it a little longer).
                let read_by = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while !self.reader.is_finished() && std::time::Instant::now() < read_by {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the command did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A small image root: a binary with a file capability, a file to change, kernel and initrd.
pub fn image_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["boot", "bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), "kernel 9").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-9-amd64"), "initrd 9").unwrap();
    std::fs::write(root.join("etc/motd"), "original\n").unwrap();
    std::fs::copy("/bin/true", root.join("bin/true")).unwrap();
    // A shell for jailed sessions: busybox-static and a few applets.
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "touch", "echo", "mount", "id", "chroot"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let o = Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(root.join("bin/true"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    root
}

/// Unpacks the root file system of image record `image` (served by `s`) into `dest`.
pub fn unsquash(s: &Server, image: &Value, dest: &Path) {
    let link = image["link"]["path"].as_str().unwrap();
    let key = link.strip_prefix("s3://boot-images/").unwrap();
    let manifest: Value = serde_json::from_slice(&s.read_artifact("boot-images", key)).unwrap();
    let rootfs = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "application/vnd.cray.image.rootfs.squashfs")
        .unwrap();
    let rkey = rootfs["link"]["path"]
        .as_str()
        .unwrap()
        .strip_prefix("s3://boot-images/")
        .unwrap();
    let o = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(dest)
        .arg(s.artifact_path("boot-images", rkey))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

/// Job `id`'s log as its users read it.
pub async fn job_log(s: &Server, id: &str) -> String {
    String::from_utf8_lossy(&s.get(&format!("/v3/jobs/{id}/log")).await.body).into_owned()
}

/// Waits up to `within` for job `id` to reach status `want`; an `error` on the way fails the test,
/// with the job's log.
pub async fn wait_for_status(
    s: &Server,
    id: &str,
    want: &str,
    within: std::time::Duration,
) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let j = s.get(&format!("/v3/jobs/{id}")).await.ok(200);
        if j["status"] == want {
            return j;
        }
        assert!(
            std::time::Instant::now() < deadline && !(j["status"] == "error" && want != "error"),
            "job {id} is {} (waiting for {want}); log:\n{}",
            j["status"],
            job_log(s, id).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Waits for job `id`'s first successful `ssh root@… true` at the address users get
/// (`GET …/session`: a node's address, a Service's load-balancer address), with the job's key
/// `keys/id_job`, polling every 50 ms (the benchmarks' "login"); the job then. An `error` on the
/// way fails the test, with the job's log.
pub async fn wait_for_login(s: &Server, id: &str, keys: &Path) -> Value {
    loop {
        let j = s.get(&format!("/v3/jobs/{id}")).await.ok(200);
        assert_ne!(j["status"], "error", "{}", job_log(s, id).await);
        if j["status"] == "waiting_on_user" {
            let session = s.get(&format!("/v3/jobs/{id}/session")).await.ok(200);
            let o = ssh_as_root_at(
                session["host"].as_str().unwrap(),
                &session["port"].as_u64().unwrap().to_string(),
                &keys.join("id_job"),
                "true",
            );
            if o.status.success() {
                return j;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The test image root imported as `base` and a registered key pair (`dir/id_job`): an image to
/// customize and the key its sessions accept.
pub async fn image_and_key(s: &Server, dir: &Path) -> (String, String) {
    let root = image_root(dir);
    let image = ims(s, &["images", "import", "base", root.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = job_keys(s, dir, &["id_job"]).await;
    (image, key)
}
