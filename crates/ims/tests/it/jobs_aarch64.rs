//! aarch64 jobs on this x86_64 host under qemu-user emulation (`IMS_JOB_EMULATE_AARCH64`): a
//! tiny aarch64 image root — Debian's arm64 `busybox-static`, downloaded by scripts/test.sh into
//! `IMS_TEST_BUSYBOX_ARM64_DEB` — customized in a jailed session whose shell is the aarch64
//! busybox, run through binfmt_misc's `qemu-aarch64` entry; create jobs for aarch64 recipes (kiwi
//! told the target architecture, a tiny arm64 Debian built from the host's mirror); and the
//! refusals when emulation is off. Needs root (jobs do) and an x86_64 host; skipped otherwise.

use crate::common::jobs::*;
use crate::common::*;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether this host can run the tests: root and x86_64.
fn runnable() -> bool {
    if !is_root() {
        eprintln!("skipped: jobs need root");
        return false;
    }
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipped: aarch64 emulation is tested on x86_64 hosts");
        return false;
    }
    true
}

/// [`runnable`], and the host can emulate aarch64, which it must (`scripts/test.sh` registers
/// qemu-aarch64): a test of the emulated path fails rather than skips without it.
fn emulation_runnable() -> bool {
    if !runnable() {
        return false;
    }
    if let Err(why) = ims_jobs::prereq::arch_support(ims_core::Arch::Aarch64, true) {
        panic!("{why} (scripts/test.sh registers qemu-aarch64)");
    }
    true
}

/// An aarch64 image root: the arm64 busybox-static package unpacked, `/bin/sh` and a few applets
/// linked to it, a file to change, a kernel and an initrd.
fn aarch64_root(dir: &Path) -> PathBuf {
    let Some(deb) = std::env::var_os("IMS_TEST_BUSYBOX_ARM64_DEB") else {
        panic!("IMS_TEST_BUSYBOX_ARM64_DEB is not set: run the tests with scripts/test.sh");
    };
    let root = dir.join("root");
    let o = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let busybox = root.join("bin/busybox");
    let elf = std::fs::read(&busybox).unwrap();
    // e_machine (offset 18, little-endian): 183 is EM_AARCH64.
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "not an aarch64 busybox"
    );
    for applet in ["sh", "cat", "ls", "touch", "uname"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for d in ["boot", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("boot/Image"), "kernel").unwrap();
    std::fs::write(root.join("boot/initrd"), "initrd").unwrap();
    std::fs::write(root.join("etc/motd"), "original\n").unwrap();
    root
}

struct Setup {
    s: Server,
    dir: tempfile::TempDir,
    image: String,
    key: String,
}

async fn setup(emulate: bool) -> Setup {
    let mut b = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_EXECUTOR", "local")
        .env("IMS_JOB_ORPHAN_TIMEOUT", "300s");
    if emulate {
        b = b.env("IMS_JOB_EMULATE_AARCH64", "true");
    }
    let s = b.start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = aarch64_root(dir.path());
    let image = ims(
        &s,
        &[
            "images",
            "import",
            "--arch",
            "aarch64",
            "--kernel-file-name",
            "Image",
            "--initrd-file-name",
            "initrd",
            "busybox-arm64",
            root.to_str().unwrap(),
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = job_keys(&s, dir.path(), &["id_job"]).await;
    Setup { s, dir, image, key }
}

impl Setup {
    /// An aarch64 recipe record whose archive holds the kiwi description `config` (and
    /// `config.sh`, if given).
    async fn recipe(&self, config: &str, script: Option<&str>) -> String {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir_in(self.dir.path()).unwrap();
        let src = src.path();
        std::fs::write(src.join("config.xml"), config).unwrap();
        let mut files = vec!["config.xml"];
        if let Some(script) = script {
            let sh = src.join("config.sh");
            std::fs::write(&sh, script).unwrap();
            std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).unwrap();
            files.push("config.sh");
        }
        let archive = src.join("recipe.tar.gz");
        let o = Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(src)
            .args(&files)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let r = self
            .s
            .post(
                "/v3/recipes",
                &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                    "arch": "aarch64"}),
            )
            .await
            .ok(201);
        let id = r["id"].as_str().unwrap().to_string();
        let key = format!("recipes/{id}/recipe.tar.gz");
        self.s
            .put_artifact("ims", &key, &std::fs::read(&archive).unwrap());
        self.s
            .patch(
                &format!("/v3/recipes/{id}"),
                &json!({"link": {"path": format!("s3://ims/{key}"), "type": "s3"}}),
            )
            .await
            .ok(200);
        id
    }

    fn create_body(&self, recipe: &str) -> Value {
        json!({"job_type": "create", "artifact_id": recipe, "public_key_id": self.key,
            "image_root_archive_name": "built-arm64"})
    }

    fn body(&self) -> Value {
        json!({"job_type": "customize", "artifact_id": self.image,
            "public_key_id": self.key, "image_root_archive_name": "busybox-arm64-custom",
            "ssh_containers": [{"name": "customize", "jail": true}]})
    }

    async fn log(&self, id: &str) -> String {
        job_log(&self.s, id).await
    }

    async fn wait_status(&self, id: &str, want: &str) -> Value {
        // Emulation is slow: packaging and the session's start take longer than natively.
        self.wait_status_for(id, want, Duration::from_secs(180))
            .await
    }

    async fn wait_status_for(&self, id: &str, want: &str, limit: Duration) -> Value {
        wait_for_status(&self.s, id, want, limit).await
    }
}

/// The end to end path: a jailed customize session on an aarch64 image, whose shell is the
/// image's aarch64 busybox exec'd through binfmt_misc inside the sandbox (bubblewrap, the seccomp
/// filter, no_new_privs, the chroot), changes the root; the packaged image keeps the change and
/// is aarch64; the job's log warns about emulation.
#[tokio::test]
async fn a_jailed_session_on_an_aarch64_image_runs_under_emulation() {
    if !emulation_runnable() {
        return;
    }
    let st = setup(true).await;
    let j = st.s.post("/v3/jobs", &st.body()).await.ok(201);
    assert_eq!(j["arch"], "aarch64");
    assert_eq!(j["require_dkms"], true, "aarch64 jobs always have dkms");
    let id = j["id"].as_str().unwrap().to_string();
    let job = st.wait_status(&id, "waiting_on_user").await;
    let info = &job["ssh_containers"][0]["connection_info"]["cluster.local"];
    let port = info["port"].as_u64().unwrap().to_string();
    let key = st.dir.path().join("id_job");
    // The login shell is the image's /bin/sh, the aarch64 busybox (the image has no other
    // program): its `uname -m` is the emulated machine's.
    let o = ssh_as_root(
        &port,
        &key,
        "echo hello > /etc/motd && uname -m && cat /etc/motd",
    );
    assert!(o.status.success(), "{o:?}\nlog:\n{}", st.log(&id).await);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out, "aarch64\nhello\n", "{o:?}");
    let o = ssh_as_root(&port, &key, "touch /tmp/complete");
    assert!(o.status.success(), "{o:?}");
    let done = st.wait_status(&id, "success").await;
    let log = st.log(&id).await;
    assert!(
        log.contains(
            "warning: aarch64 image on an x86_64 host: running under qemu-user emulation, about \
             13x slower than native"
        ),
        "{log}"
    );
    let new = done["resultant_image_id"].as_str().unwrap();
    let img = st.s.get(&format!("/v3/images/{new}")).await.ok(200);
    assert_eq!(img["arch"], "aarch64", "{img}");
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("new");
    unsquash(&st.s, &img, &root);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert!(!root.join("tmp/complete").exists(), "the flag was packaged");
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
}

/// A create job for an aarch64 recipe runs kiwi-ng for the target architecture under emulation
/// (not refused as another architecture's build): the recipe here names no usable repository, so
/// kiwi fails fast, after it was started with `--target-arch aarch64`.
#[tokio::test]
async fn an_aarch64_create_job_runs_kiwi_for_its_target_arch() {
    if !emulation_runnable() {
        return;
    }
    let st = setup(true).await;
    let recipe = st.recipe(crate::jobs_create::BROKEN_CONFIG, None).await;
    let j =
        st.s.post("/v3/jobs", &st.create_body(&recipe))
            .await
            .ok(201);
    assert_eq!(j["arch"], "aarch64");
    let id = j["id"].as_str().unwrap();
    st.wait_status(id, "error").await;
    let log = st.log(id).await;
    assert!(
        log.contains(
            "warning: aarch64 recipe on an x86_64 host: running under qemu-user emulation"
        ),
        "{log}"
    );
    assert!(log.contains("status: building_image"), "{log}");
    // kiwi's apt backend bootstraps with a debootstrap told the architecture.
    assert!(log.contains("debootstrap runs with --arch=arm64"), "{log}");
    assert!(
        log.lines().any(|l| l.contains(" running kiwi-ng ")
            && l.contains(" --target-arch aarch64 ")
            && l.contains(" system prepare --description ")),
        "{log}"
    );
    assert!(
        log.contains("No main distribution repository is configured"),
        "kiwi did not get as far as the repositories:\n{log}"
    );
}

/// A tiny arm64 Debian (debootstrap's minbase, nothing else) whose `config.sh` adds a stand-in
/// kernel and initrd. `MIRROR` is the Debian mirror.
const TINY_ARM64_DEBIAN: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="7.5" name="tiny-arm64">
    <description type="system">
        <author>IMS tests</author>
        <contact>noreply@example.invalid</contact>
        <specification>minimal arm64 Debian, built under emulation</specification>
    </description>
    <preferences>
        <version>1.0.0</version>
        <packagemanager>apt</packagemanager>
        <rpm-check-signatures>true</rpm-check-signatures>
        <type image="tbz"/>
    </preferences>
    <repository type="apt-deb" alias="bookworm" distribution="bookworm" components="main" use_for_bootstrap="true">
        <source path="MIRROR"/>
    </repository>
    <packages type="image">
    </packages>
    <packages type="bootstrap">
    </packages>
</image>
"#;

/// kiwi's chroot script, run by the image's (aarch64) bash: the build's own proof of where it ran.
const TINY_CONFIG_SH: &str = "#!/bin/bash
set -e
mkdir -p /boot
echo kernel > /boot/Image
echo initrd > /boot/initrd
echo \"configured on $(uname -m) as $(dpkg --print-architecture)\" > /etc/ims-built-on
";

/// The real thing: kiwi-ng builds an arm64 Debian root under emulation (debootstrap for arm64,
/// then the recipe's config.sh run by the image's aarch64 bash), and the new image records
/// `arch = aarch64` and holds aarch64 programs. Several minutes: debootstrap's second stage runs
/// every maintainer script through qemu.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aarch64_debian_root_is_built_under_emulation() {
    if !emulation_runnable() {
        return;
    }
    let st = setup(true).await;
    let (mirror, _) = crate::jobs_create::host_mirrors();
    let recipe = st
        .recipe(
            &TINY_ARM64_DEBIAN.replace("MIRROR", &mirror),
            Some(TINY_CONFIG_SH),
        )
        .await;
    let j =
        st.s.post("/v3/jobs", &st.create_body(&recipe))
            .await
            .ok(201);
    let id = j["id"].as_str().unwrap();
    let started = Instant::now();
    let done = st
        .wait_status_for(id, "success", Duration::from_secs(20 * 60))
        .await;
    eprintln!(
        "an arm64 Debian minbase built under emulation in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let log = st.log(id).await;
    assert!(log.contains("debootstrap runs with --arch=arm64"), "{log}");
    let new = done["resultant_image_id"].as_str().unwrap();
    let img = st.s.get(&format!("/v3/images/{new}")).await.ok(200);
    assert_eq!(img["arch"], "aarch64", "{img}");
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("new");
    unsquash(&st.s, &img, &root);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/ims-built-on")).unwrap(),
        "configured on aarch64 as arm64\n"
    );
    // dash, the image's /bin/sh, is an aarch64 program.
    let sh = std::fs::canonicalize(root.join("usr/bin/dash")).unwrap();
    let elf = std::fs::read(sh).unwrap();
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183, "not aarch64");
}

/// With emulation off, an aarch64 job on this x86_64 host is refused when it is posted (503,
/// nothing stored), saying what to do; the refusal comes from the image's arch, read from its
/// record.
#[tokio::test]
async fn aarch64_jobs_are_refused_when_emulation_is_off() {
    if !runnable() {
        return;
    }
    let st = setup(false).await;
    let r = st.s.post("/v3/jobs", &st.body()).await;
    let p = r.problem(503, false);
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("customize jobs cannot run on this host; missing: an aarch64 host")
            && detail.contains("aarch64 emulation is off")
            && detail.contains("IMS_JOB_EMULATE_AARCH64=true")
            && detail.contains("apt install qemu-user-static binfmt-support")
            && detail.ends_with("Nothing was stored."),
        "{detail}"
    );
    // A create job for an aarch64 recipe, the same.
    let recipe = st.recipe(crate::jobs_create::BROKEN_CONFIG, None).await;
    let r = st.s.post("/v3/jobs", &st.create_body(&recipe)).await;
    let detail = r.problem(503, false)["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.starts_with("create jobs cannot run on this host; missing: an aarch64 host")
            && detail.ends_with("Nothing was stored."),
        "{detail}"
    );
    assert_eq!(st.s.get("/v3/jobs").await.ok(200), json!([]));
}
