//! Booting a built image in QEMU (Debian's `qemu-system-x86`) the way a compute node net-boots:
//! kernel and initrd given to the machine, the rootfs fetched over HTTP by the initrd. KVM when
//! `/dev/kvm` exists and really runs a guest (a nested or partial KVM can start QEMU and then
//! hang, or abort on a CPU register), TCG otherwise.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the host's loopback is seen from a guest on QEMU's user network.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// A presigned GET URL of `s3://bucket/key` on the built-in S3 endpoint of the server at
/// `api_url`, signed for the address a QEMU guest reaches it at.
pub async fn presigned_rootfs_url(api_url: &str, bucket: &str, key: &str) -> String {
    use object_store::signer::Signer;
    let r = reqwest::Client::new()
        .put(format!("{api_url}/apis/sts/token"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "STS: {}", r.status());
    let v: serde_json::Value = r.json().await.unwrap();
    let c = &v["Credentials"];
    let mut endpoint = reqwest::Url::parse(c["EndpointURL"].as_str().unwrap()).unwrap();
    endpoint.set_host(Some(HOST_FROM_GUEST)).unwrap();
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint.as_str().trim_end_matches('/'))
        .with_bucket_name(bucket)
        .with_access_key_id(c["AccessKeyId"].as_str().unwrap())
        .with_secret_access_key(c["SecretAccessKey"].as_str().unwrap())
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false);
    if let Some(t) = c["SessionToken"].as_str().filter(|t| !t.is_empty()) {
        b = b.with_token(t);
    }
    let store = b.build().unwrap();
    store
        .signed_url(
            reqwest::Method::GET,
            &object_store::path::Path::from(key),
            Duration::from_secs(3600),
        )
        .await
        .unwrap()
        .to_string()
}

/// A running QEMU whose serial console is read into a buffer; killed when dropped.
struct Vm {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Vm {
    fn start(accel: &str, kernel: &Path, initrd: Option<&Path>, cmdline: &str, mem: &str) -> Vm {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", accel, "-m", mem, "-smp", "2"])
            .args([
                "-nodefaults",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
            ])
            .args(["-netdev", "user,id=n0"])
            // No option ROM: the kernel is given directly, nothing boots from the network card.
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .arg("-kernel")
            .arg(kernel);
        if let Some(i) = initrd {
            cmd.arg("-initrd").arg(i);
        }
        cmd.arg("-append").arg(cmdline);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Vm { child, out }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until the console shows `want` (`Ok`), QEMU exits or `limit` passes (`Err`).
    fn wait_for(&mut self, want: &str, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if self.text().contains(want) {
                return Ok(started.elapsed());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("QEMU exited ({st}) before {want:?}"));
            }
            if started.elapsed() > limit {
                return Err(format!("no {want:?} within {} s", limit.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kvm` if a guest really runs under KVM here (the kernel prints its banner within 20 s),
/// else `tcg`; with the reason.
fn accelerator(kernel: &Path) -> (&'static str, String) {
    if let Ok(a) = std::env::var("IMS_TEST_QEMU_ACCEL") {
        return if a == "kvm" {
            ("kvm", "IMS_TEST_QEMU_ACCEL".into())
        } else {
            ("tcg", "IMS_TEST_QEMU_ACCEL".into())
        };
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return ("tcg", "no usable /dev/kvm".into());
    }
    let mut vm = Vm::start(
        "kvm",
        kernel,
        None,
        "console=ttyS0 panic=-1 root=/dev/ims-none",
        "256",
    );
    match vm.wait_for("Linux version", Duration::from_secs(20)) {
        Ok(_) => ("kvm", "/dev/kvm runs a guest".into()),
        Err(e) => (
            "tcg",
            format!("/dev/kvm exists but a KVM guest does not run: {e}"),
        ),
    }
}

/// Boots `kernel` + `initrd` with `cmdline` (2 GiB, 2 vCPUs, user network) until a login prompt
/// appears on the serial console; returns how long that took. The console goes to `console_log`
/// either way; an error carries its end.
pub fn boot_to_login(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    limit: Duration,
    console_log: &Path,
) -> Result<Duration, String> {
    let (accel, why) = accelerator(kernel);
    eprintln!("qemu: {accel} ({why})");
    let mut vm = Vm::start(accel, kernel, Some(initrd), cmdline, "2048");
    let r = vm.wait_for("login:", limit);
    let text = vm.text();
    let _ = std::fs::write(console_log, &text);
    r.map_err(|e| {
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("{e} ({accel}); the console ended with:\n{tail}")
    })
}
