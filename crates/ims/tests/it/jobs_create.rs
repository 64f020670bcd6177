//! Create jobs run for real by the local executor: the recipe fetched through STS and S3 and
//! unpacked safely, its repositories waited for, kiwi-ng building the root tree, packaging and
//! register-last publishing. The Debian example recipe is built from the host's Debian mirror and
//! the new image net-boots in QEMU to a login prompt, its rootfs fetched over HTTP from the
//! built-in S3 endpoint by a presigned URL. Needs root (kiwi, mounts), as jobs do; skipped
//! otherwise.

use crate::common::jobs::*;
use crate::common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Setup {
    s: Server,
    dir: tempfile::TempDir,
    key: String,
}

async fn setup(env: &[(&str, &str)]) -> Option<Setup> {
    if !is_root() {
        eprintln!("skipped: create jobs need root");
        return None;
    }
    // Started as the README does: from another directory with a relative data directory.
    let mut b = builder(Db::Sqlite)
        .await
        .env("IMS_JOB_EXECUTOR", "local")
        .relative_data_dir();
    // A long data directory, as sites have: paths under it (gpg-agent's sockets in kiwi's keyring
    // home once broke the build) must not hit the 107-byte Unix socket limit.
    b.data = tempfile::Builder::new()
        .prefix("ims-test-data-directory-with-a-long-name-like-sites-use-")
        .tempdir()
        .unwrap();
    for (k, v) in env {
        b = b.env(k, v);
    }
    let s = b.start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = job_keys(&s, dir.path(), &["id_job"]).await;
    Some(Setup { s, dir, key })
}

impl Setup {
    /// A recipe record whose archive is `archive` (stored as is, without md5 metadata).
    async fn recipe(&self, archive: &[u8]) -> String {
        let r = self
            .s
            .post(
                "/v3/recipes",
                &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}),
            )
            .await
            .ok(201);
        let id = r["id"].as_str().unwrap().to_string();
        let key = format!("recipes/{id}/recipe.tar.gz");
        self.s.put_artifact("ims", &key, archive);
        self.s
            .patch(
                &format!("/v3/recipes/{id}"),
                &json!({"link": {"path": format!("s3://ims/{key}"), "type": "s3"}}),
            )
            .await
            .ok(200);
        id
    }

    async fn job(&self, recipe: &str, debug: bool) -> String {
        let body = json!({"job_type": "create", "artifact_id": recipe,
            "public_key_id": self.key, "image_root_archive_name": "new-image",
            "enable_debug": debug});
        let j = self.s.post("/v3/jobs", &body).await.ok(201);
        j["id"].as_str().unwrap().to_string()
    }

    /// Waits for status `want`, collecting every status seen on the way.
    async fn wait_status(&self, id: &str, want: &str, limit: Duration) -> (Value, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut seen: Vec<String> = vec![];
        loop {
            let j = self.s.get(&format!("/v3/jobs/{id}")).await.ok(200);
            let st = j["status"].as_str().unwrap_or("").to_string();
            if seen.last() != Some(&st) {
                seen.push(st.clone());
            }
            if st == want {
                return (j, seen);
            }
            assert!(
                Instant::now() < deadline && !(st == "error" && want != "error"),
                "job {id} is {st} (waiting for {want}; seen {seen:?}); log:\n{}",
                self.log(id).await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn log(&self, id: &str) -> String {
        String::from_utf8_lossy(&self.s.get(&format!("/v3/jobs/{id}/log")).await.body).into_owned()
    }

    /// The job ends in error with `want` in its log, and no image was registered.
    async fn fails_with(&self, archive: &[u8], want: &str) -> String {
        let recipe = self.recipe(archive).await;
        let id = self.job(&recipe, false).await;
        let (j, _) = self
            .wait_status(&id, "error", Duration::from_secs(120))
            .await;
        let log = self.log(&id).await;
        assert!(log.contains(want), "log of job {id} lacks {want:?}:\n{log}");
        assert!(j["resultant_image_id"].is_null(), "{j}");
        let images = self.s.get("/v3/images").await.ok(200);
        assert_eq!(images, json!([]), "an image was registered");
        log
    }
}

// ---- tar archives written byte by byte (nothing checked on the way) ----

fn header(name: &str, kind: u8, size: usize, link: &str, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}", w = len - 1);
        h[at..at + len - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, mode as u64);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if kind == b'3' {
        octal(&mut h, 329, 8, 4);
        octal(&mut h, 337, 8, 1);
    }
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn member(mut self, name: &str, kind: u8, data: &[u8], link: &str, mode: u32) -> Tar {
        self.0
            .extend_from_slice(&header(name, kind, data.len(), link, mode));
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Tar {
        self.member(name, b'0', data, "", 0o644)
    }
    fn gz(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        gzip(&self.0)
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut c = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let o = c.wait_with_output().unwrap();
    w.join().unwrap();
    assert!(o.status.success());
    o.stdout
}

/// A kiwi description whose build fails at once, for real: its only repository is a local
/// directory that does not exist (kiwi skips it, then debootstrap has no repository).
pub(crate) const BROKEN_CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="7.5" name="broken">
    <description type="system">
        <author>IMS tests</author>
        <contact>noreply@example.invalid</contact>
        <specification>a build that cannot succeed</specification>
    </description>
    <preferences>
        <version>1.0.0</version>
        <packagemanager>apt</packagemanager>
        <type image="tbz"/>
    </preferences>
    <repository type="apt-deb" alias="local" distribution="bookworm" components="main" use_for_bootstrap="true">
        <source path="dir:///nonexistent-ims-test-repo"/>
    </repository>
    <packages type="image">
        <package name="ims-test-no-such-package"/>
    </packages>
    <packages type="bootstrap">
        <package name="ims-test-no-such-package"/>
    </packages>
</image>
"#;

/// Every kind of hostile recipe archive ends its job in error with the reason, writes nothing
/// outside the job's recipe directory and registers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_recipe_archives_are_refused() {
    let Some(st) = setup(&[]).await else { return };
    let victim = st.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let v = victim.display().to_string();
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "absolute path",
            Tar::default()
                .file("config.xml", b"<image/>")
                .file(&format!("{v}/abs"), b"x")
                .gz(),
            "absolute path".into(),
        ),
        (
            "dot-dot",
            Tar::default()
                .file("config.xml", b"<image/>")
                .file("a/../../../../../../../../../../tmp/ims-dotdot", b"x")
                .gz(),
            "leaves the recipe directory".into(),
        ),
        (
            "absolute symlink, then a write through it",
            Tar::default()
                .member("out", b'2', b"", &v, 0o777)
                .file("out/written", b"x")
                .gz(),
            "points outside the recipe".into(),
        ),
        (
            "relative symlink climbing out",
            Tar::default()
                .member("up", b'2', b"", "../../../../../../../../..", 0o777)
                .gz(),
            "points outside the recipe".into(),
        ),
        (
            "hard link to a host file",
            Tar::default()
                .member("shadow", b'1', b"", "/etc/shadow", 0o644)
                .gz(),
            "hard link to".into(),
        ),
        (
            "device node",
            Tar::default().member("tty", b'3', b"", "", 0o600).gz(),
            "character devices are not allowed".into(),
        ),
        (
            "archive bomb",
            Tar::default().file("config.xml", &vec![0u8; 64 << 20]).gz(),
            "times the archive's size".into(),
        ),
        (
            "corrupt archive",
            b"\x1f\x8b this is not gzip data at all".to_vec(),
            "the recipe archive is refused".into(),
        ),
    ];
    for (what, archive, want) in cases {
        eprintln!("case: {what}");
        let log = st.fails_with(&archive, &want).await;
        assert!(log.contains("status: fetching_recipe"), "{what}: {log}");
        assert!(!log.contains("status: waiting_for_repos"), "{what}: {log}");
        assert!(
            std::fs::read_dir(&victim).unwrap().next().is_none(),
            "{what}: written outside"
        );
        assert!(!Path::new("/tmp/ims-dotdot").exists(), "{what}");
    }
    // A recipe whose md5sum metadata does not match what is stored.
    let good = Tar::default()
        .file("config.xml", BROKEN_CONFIG.as_bytes())
        .gz();
    let f = st.dir.path().join("recipe.tar.gz");
    std::fs::write(&f, &good).unwrap();
    let recipe = st.recipe(b"placeholder").await;
    let key = format!("recipes/{recipe}/recipe.tar.gz");
    ims(
        &st.s,
        &["artifacts", "create", "ims", &key, f.to_str().unwrap()],
    );
    // Bit rot: one byte changed in place, size and modification time kept (so the store still
    // serves the md5sum metadata written for the original bytes).
    {
        use std::os::unix::fs::FileExt;
        let p = st.s.artifact_path("ims", &key);
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let at = (good.len() / 2) as u64;
        f.write_all_at(&[good[at as usize] ^ 0xff], at).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let id = st.job(&recipe, false).await;
    st.wait_status(&id, "error", Duration::from_secs(60)).await;
    let log = st.log(&id).await;
    assert!(log.contains("the recipe archive is corrupt"), "{log}");
}

/// A repository that never answers ends the job after the configured timeout, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_repository_times_out() {
    let Some(st) = setup(&[("IMS_JOB_REPO_TIMEOUT", "3s")]).await else {
        return;
    };
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = BROKEN_CONFIG.replace(
        "dir:///nonexistent-ims-test-repo",
        &format!("http://127.0.0.1:{port}/debian"),
    );
    let archive = Tar::default().file("config.xml", config.as_bytes()).gz();
    let recipe = st.recipe(&archive).await;
    let id = st.job(&recipe, false).await;
    let started = Instant::now();
    let (_, seen) = st.wait_status(&id, "error", Duration::from_secs(60)).await;
    assert!(
        seen.contains(&"waiting_for_repos".to_string()) || {
            let log = st.log(&id).await;
            log.contains("status: waiting_for_repos")
        }
    );
    let log = st.log(&id).await;
    assert!(
        log.contains("repositories not reachable after 3 s: local"),
        "{log}"
    );
    assert!(!log.contains("status: building_image"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(50));
}

/// A failing kiwi build without enable_debug ends in error at once, with the end of kiwi's log
/// as the reason; nothing is registered and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_build_ends_in_error_with_kiwis_reason() {
    let Some(st) = setup(&[]).await else { return };
    let archive = Tar::default()
        .file("config.xml", BROKEN_CONFIG.as_bytes())
        .gz();
    let log = st
        .fails_with(&archive, "No main distribution repository is configured")
        .await;
    assert!(log.contains("status: building_image"), "{log}");
    assert!(!log.contains("status: waiting_on_user"), "{log}");
    // The reason, right before the final status, is kiwi's error message.
    let at = log
        .find("error: the build failed: kiwi-ng exit status: 1:\n")
        .unwrap_or_else(|| panic!("no reason in:\n{log}"));
    let reason = &log[at..log[at..]
        .find("status: error")
        .map(|e| at + e)
        .unwrap_or(log.len())];
    assert!(
        reason.contains("KiwiDebootstrapError: No main distribution repository is configured"),
        "{reason}"
    );
    assert!(!reason.contains("[ DEBUG"), "{reason}");
    // The executor removes the job's directory once the agent has exited.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(st.s.data.path().join("jobs"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "a job directory is left");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With enable_debug a failed build opens the debug shell (not jailed) into the failed build,
/// then the job ends in error whatever the user says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_build_with_debug_opens_a_shell_then_errors() {
    let Some(st) = setup(&[]).await else { return };
    let archive = Tar::default()
        .file("config.xml", BROKEN_CONFIG.as_bytes())
        .gz();
    let recipe = st.recipe(&archive).await;
    let id = st.job(&recipe, true).await;
    let (j, seen) = st
        .wait_status(&id, "waiting_on_user", Duration::from_secs(120))
        .await;
    assert!(seen.iter().all(|s| s != "packaging_artifacts"), "{seen:?}");
    let info = &j["ssh_containers"][0]["connection_info"]["cluster.local"];
    let port = info["port"].as_u64().unwrap().to_string();
    let o = ssh_as_root(
        &port,
        &st.dir.path().join("id_job"),
        "grep -c 'No main distribution repository' /mnt/image/kiwi.log && \
         test -f /mnt/image/recipe/config.xml && test -d /mnt/image/build/image-root/etc && \
         touch /mnt/image/complete",
    );
    assert!(o.status.success(), "{o:?}\n{}", st.log(&id).await);
    st.wait_status(&id, "error", Duration::from_secs(60)).await;
    let log = st.log(&id).await;
    assert!(log.contains("the complete flag is set"), "{log}");
    assert!(
        log.contains("the build failed (after the debug shell)"),
        "{log}"
    );
    assert_eq!(st.s.get("/v3/images").await.ok(200), json!([]));
}

// ---- the Debian example recipe, built for real ----

/// The host's Debian mirror and security mirror (deb822 sources or sources.list), else Debian's.
pub(crate) fn host_mirrors() -> (String, String) {
    let mut main = None;
    let mut security = None;
    let mut texts = vec![];
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in d.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources") {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    for text in &texts {
        for stanza in text.split("\n\n") {
            let field = |k: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                continue;
            };
            let uri = uris.split_whitespace().next().unwrap_or("").to_string();
            let suites: Vec<&str> = suites.split_whitespace().collect();
            if suites.contains(&"bookworm-security") {
                security.get_or_insert(uri);
            } else if suites.contains(&"bookworm") {
                main.get_or_insert(uri);
            }
        }
    }
    for l in std::fs::read_to_string("/etc/apt/sources.list")
        .unwrap_or_default()
        .lines()
    {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 3 && w[0] == "deb" && !w[1].starts_with('[') {
            match w[2] {
                "bookworm-security" | "bookworm/updates" => {
                    security.get_or_insert(w[1].to_string());
                }
                "bookworm" => {
                    main.get_or_insert(w[1].to_string());
                }
                _ => {}
            }
        }
    }
    let trim = |s: String| s.trim_end_matches('/').to_string();
    (
        trim(main.unwrap_or_else(|| "http://deb.debian.org/debian".into())),
        trim(security.unwrap_or_else(|| "http://deb.debian.org/debian-security".into())),
    )
}

/// A fresh CA certificate (as a site has), PEM.
fn site_ca(dir: &Path) -> PathBuf {
    let crt = dir.join("site-ca.crt");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=IMS test site CA",
            "-keyout",
        ])
        .arg(dir.join("site-ca.key"))
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    crt
}

fn artifact_key(manifest: &Value, mime: &str) -> String {
    manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == mime)
        .unwrap_or_else(|| panic!("no {mime} in {manifest}"))["link"]["path"]
        .as_str()
        .unwrap()
        .strip_prefix("s3://boot-images/")
        .unwrap()
        .to_string()
}

/// The example recipe becomes an image that boots: `ims recipes import` → create job (every
/// status on the way, progress through `ims jobs logs --follow`) → `success` → the rootfs holds
/// the modules of its kernel, the kernel and initrd artifacts are the files in its /boot, the
/// site CA is in /etc/cray/ca and the trust store, per-node identity is not baked in → QEMU
/// boots the kernel and initrd with the rootfs fetched over HTTP from the built-in S3 endpoint by
/// a presigned URL, to a login prompt on the serial console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_example_recipe_builds_and_boots() {
    if !is_root() {
        eprintln!("skipped: create jobs need root");
        return;
    }
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = site_ca(ca_dir.path());
    let Some(st) = setup(&[("IMS_JOB_CA_CERT", ca.to_str().unwrap())]).await else {
        return;
    };
    let (mirror, security) = host_mirrors();
    eprintln!("building from {mirror} and {security}");
    let recipe_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/debian-12-compute");
    let recipe = ims(
        &st.s,
        &[
            "recipes",
            "import",
            "debian-12-compute",
            recipe_dir.to_str().unwrap(),
            "--linux-distribution",
            "debian12",
            "--arch",
            "x86_64",
            "--template-dictionary-key",
            "debian_mirror,debian_security_mirror",
            "--template-dictionary-value",
            &format!("{mirror},{security}"),
        ],
    );
    let recipe = recipe["id"].as_str().unwrap().to_string();
    let id = st.job(&recipe, false).await;
    // Progress as an admin follows it.
    let follow = Command::new(ims_bin())
        .args(["jobs", "logs", &id, "--follow", "--url", &st.s.url])
        .env_remove("IMS_URL")
        .env_remove("IMS_TOKEN")
        .env("IMS_CLIENT_CONFIG", st.s.data.path().join("client.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (job, seen) = st
        .wait_status(&id, "success", Duration::from_secs(40 * 60))
        .await;
    let followed = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout);
    for phase in [
        "fetching_recipe",
        "waiting_for_repos",
        "building_image",
        "packaging_artifacts",
        "success",
    ] {
        assert!(
            followed.contains(&format!("status: {phase}")),
            "{phase} not followed"
        );
    }
    assert!(
        followed.contains("Installing system (chroot)"),
        "no kiwi log"
    );
    assert!(
        seen.iter().any(|s| s == "building_image"),
        "describe never showed building_image: {seen:?}"
    );
    let log = st.log(&id).await;
    let timing = log
        .lines()
        .find(|l| l.contains("kiwi-ng finished in"))
        .unwrap_or_else(|| panic!("{log}"));
    eprintln!("{timing}");
    if let Some(l) = log.lines().find(|l| l.contains("the job took")) {
        eprintln!("{l}");
    }

    // Offline checks of what was registered.
    let image_id = job["resultant_image_id"].as_str().unwrap().to_string();
    let image = st.s.get(&format!("/v3/images/{image_id}")).await.ok(200);
    assert_eq!(image["name"], "new-image");
    let link = image["link"]["path"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(&st.s.read_artifact(
        "boot-images",
        link.strip_prefix("s3://boot-images/").unwrap(),
    ))
    .unwrap();
    let rootfs_key = artifact_key(&manifest, "application/vnd.cray.image.rootfs.squashfs");
    let kernel = st.s.artifact_path(
        "boot-images",
        &artifact_key(&manifest, "application/vnd.cray.image.kernel"),
    );
    let initrd = st.s.artifact_path(
        "boot-images",
        &artifact_key(&manifest, "application/vnd.cray.image.initrd"),
    );
    let rootfs = st.s.artifact_path("boot-images", &rootfs_key);
    let o = Command::new("unsquashfs")
        .args(["-lc", "-d", ""])
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let files: std::collections::BTreeSet<&str> =
        listing.lines().map(|l| l.trim_start_matches('/')).collect();
    let kver = files
        .iter()
        .find_map(|f| f.strip_prefix("boot/vmlinuz-"))
        .expect("a versioned kernel in /boot")
        .to_string();
    assert!(
        files.contains(format!("usr/lib/modules/{kver}/modules.dep").as_str())
            || files.contains(format!("lib/modules/{kver}/modules.dep").as_str()),
        "no modules for {kver}"
    );
    for gone in [
        "image/config.xml",
        ".kconfig",
        ".profile",
        "etc/ssh/ssh_host_ed25519_key",
    ] {
        assert!(!files.contains(gone), "/{gone} is in the image");
    }
    let x = tempfile::tempdir().unwrap();
    let o = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(x.path().join("r"))
        .arg(&rootfs)
        .args(["boot", "etc/cray", "etc/ssl/certs", "etc/machine-id"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let r = x.path().join("r");
    assert!(
        std::fs::read(&kernel).unwrap()
            == std::fs::read(r.join(format!("boot/vmlinuz-{kver}"))).unwrap(),
        "the kernel artifact is not /boot/vmlinuz-{kver}"
    );
    assert!(
        std::fs::read(&initrd).unwrap()
            == std::fs::read(r.join(format!("boot/initrd.img-{kver}"))).unwrap(),
        "the initrd artifact is not /boot/initrd.img-{kver}"
    );
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    assert_eq!(
        std::fs::read_to_string(r.join("etc/cray/ca/certificate_authority.crt")).unwrap(),
        ca_pem
    );
    let body: String = ca_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    let bundle = std::fs::read_to_string(r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.contains(&body),
        "the site CA is not in the trust store"
    );
    assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");

    // Boot it: the rootfs over HTTP from the built-in S3 endpoint, by a presigned URL signed for
    // the address the guest uses (10.0.2.2 is the host's loopback behind QEMU's user network).
    let url = crate::qemu::presigned_rootfs_url(&st.s.url, "boot-images", &rootfs_key).await;
    let cmdline =
        format!("root=live:{url} rd.live.overlay.overlayfs=1 ip=dhcp rd.neednet=1 console=ttyS0");
    let console = st.dir.path().join("console.log");
    match crate::qemu::boot_to_login(
        &kernel,
        &initrd,
        &cmdline,
        Duration::from_secs(15 * 60),
        &console,
    ) {
        Ok(took) => eprintln!("booted to a login prompt in {:.1} s", took.as_secs_f64()),
        Err(e) => panic!("the image did not boot: {e}"),
    }
}

/// Deleting a job while it builds stops the whole build (kiwi runs in a process group of its own,
/// with children of its own) and leaves no process and no job directory behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_building_job_stops_the_build() {
    let marker = format!("ims-test-build-{}", uuid::Uuid::new_v4());
    let scripts = tempfile::tempdir().unwrap();
    let kiwi = scripts.path().join("kiwi-ng");
    // A stand-in for kiwi-ng with a child that outlives a plain kill of its parent.
    std::fs::write(
        &kiwi,
        format!(
            "#!/bin/sh\necho \"[ INFO    ]: building {marker}\"\nsh -c 'sleep 600; : {marker}' &\nsleep 600\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&kiwi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let Some(st) = setup(&[("IMS_JOB_KIWI", kiwi.to_str().unwrap())]).await else {
        return;
    };
    let archive = Tar::default()
        .file("config.xml", BROKEN_CONFIG.as_bytes())
        .gz();
    let recipe = st.recipe(&archive).await;
    let id = st.job(&recipe, false).await;
    st.wait_status(&id, "building_image", Duration::from_secs(60))
        .await;
    let running = || {
        let o = Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        !o.stdout.is_empty()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running() {
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    st.s.delete(&format!("/v3/jobs/{id}")).await.ok(204);
    let deadline = Instant::now() + Duration::from_secs(30);
    while running() || st.s.data.path().join("jobs").join(&id).exists() {
        assert!(
            Instant::now() < deadline,
            "the build or the job directory outlived the deleted job"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
