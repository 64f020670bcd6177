//! The customize pipeline, with the original's statuses: `fetching_image` → `waiting_on_user` →
//! `packaging_artifacts` → `success` (or `error` with the reason in the job's log).
//!
//! 1. **Fetch**: the source image's manifest names its rootfs; it is downloaded into the job
//!    directory with its md5 and sha256 computed in the same pass and checked against the manifest.
//! 2. **Image root**: [`crate::imageroot::prepare`] (overlay fast path or `unsquashfs`).
//! 3. **Site setup**: the site CA certificate at `/etc/cray/ca/certificate_authority.crt`, and the
//!    host's `/etc/resolv.conf` in place of the image's for the session (the image's is put back
//!    before packaging). Paths inside the image root are never followed through symbolic links.
//! 4. **Wait for the user**: the flag files (`/tmp/complete|failed` inside the image root when
//!    jailed, `/mnt/image/complete|failed` otherwise) or `ims jobs complete|fail`.
//! 5. **Package**: kernel and initrd from the image root's `/boot` (the job's names when they are
//!    not the defaults, else found by `ims_rootfs::kernel`'s rule), the kernel parameters file if
//!    present, `mksquashfs` of the image root, then [`ims_client::publish`]: uploaded with md5 and
//!    sha256, manifest, and the new image registered last (name = `image_root_archive_name`, arch
//!    of the source); `resultant_image_id`; `success`.

use crate::agent::Agent;
use crate::imageroot::{self, Method};
use crate::session;
use ims_client::Resource;
use ims_client::publish::{Artifact, Failure, NewImage, publish, remove_uploads};
use ims_client::s3::{Ctx, download_hashed, key_path, s3_error, split_s3};
use ims_core::manifest::{MIME_BOOT_PARAMETERS, MIME_INITRD, MIME_KERNEL, MIME_ROOTFS, job_rootfs};
use object_store::ObjectStore;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Largest manifest read.
const MAX_MANIFEST: usize = 1024 * 1024;
/// Where the image's own resolv.conf waits during the session.
const SAVED_RESOLV: &str = "etc/.resolv.conf.ims-saved";
/// How much of the end of sshd's own log goes into the job's log when the session ends.
const SSHD_LOG_KEPT: u64 = 64 * 1024;

/// The flag files of a session.
pub struct Flags {
    pub complete: PathBuf,
    pub failed: PathBuf,
}

impl Flags {
    pub fn new(job_dir: &Path, image_root: &Path, jail: bool) -> Flags {
        let base = if jail {
            image_root.join("tmp")
        } else {
            job_dir.join("mnt")
        };
        Flags {
            complete: base.join("complete"),
            failed: base.join("failed"),
        }
    }

    /// Whether a flag is there, whatever it is (never followed).
    fn present(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok()
    }

    pub fn clear(&self) {
        for p in [&self.complete, &self.failed] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How the user ended the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Failed,
}

pub async fn run(agent: &Agent) -> Result<(), String> {
    let job = &agent.job;
    let dir = agent.settings.dir.clone();
    agent.status("fetching_image").await?;
    let ctx = Ctx::new(&agent.settings.api_url, agent.settings.token.clone()).await?;
    let source = agent
        .api
        .describe(Resource::Images, &job.artifact_id)
        .await
        .map_err(|e| format!("cannot read the source image {}: {e}", job.artifact_id))?;
    let arch = source
        .get("arch")
        .and_then(|a| a.as_str())
        .unwrap_or("x86_64")
        .to_string();
    let link = source
        .pointer("/link/path")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("the source image {} has no manifest link", job.artifact_id))?;
    let (mbucket, mkey) = split_s3(link)?;
    let manifest = ctx
        .store(&mbucket)?
        .get(&key_path(&mkey)?)
        .await
        .map_err(|e| s3_error(&mbucket, &mkey, e))?
        .bytes()
        .await
        .map_err(|e| s3_error(&mbucket, &mkey, e))?;
    if manifest.len() > MAX_MANIFEST {
        return Err(format!(
            "the manifest {link} is larger than {MAX_MANIFEST} bytes"
        ));
    }
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| format!("the manifest {link} is not JSON: {e}"))?;
    let rootfs = job_rootfs(&manifest)
        .map_err(|p| format!("the manifest {link}: {}", p.detail.unwrap_or_default()))?;
    let (bucket, key) = split_s3(&rootfs.link.path)?;
    let image = dir.join("image.sqsh");
    agent.say(&format!("downloading s3://{bucket}/{key}"));
    let started = std::time::Instant::now();
    let (md5, sha256) = download_hashed(&ctx, &bucket, &key, &image, &agent.cancel).await?;
    let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    agent.say(&format!(
        "downloaded {size} bytes in {:.2} s; md5 {md5}, sha256 {sha256}",
        started.elapsed().as_secs_f64()
    ));
    match &rootfs.md5 {
        Some(want) if !want.eq_ignore_ascii_case(&md5) => {
            return Err(format!(
                "the rootfs is corrupt: its md5 is {md5}, the manifest says {want}"
            ));
        }
        Some(_) => agent.say("md5 matches the manifest"),
        None => agent.say("the manifest records no md5: not checked"),
    }
    if let Some(want) = &rootfs.sha256 {
        if !want.eq_ignore_ascii_case(&sha256) {
            return Err(format!(
                "the rootfs is corrupt: its sha256 is {sha256}, the manifest says {want}"
            ));
        }
        agent.say("sha256 matches the manifest");
    }

    let (img, dir2) = (image.clone(), dir.clone());
    let overlay = agent.settings.private_mounts;
    let (mut root, why_not) =
        tokio::task::spawn_blocking(move || imageroot::prepare(&dir2, &img, overlay))
            .await
            .map_err(|e| e.to_string())??;
    match (root.method, why_not) {
        (Method::Overlay, _) => agent.say(&format!(
            "image root: overlay over the loop-mounted squashfs at {}",
            root.path.display()
        )),
        (Method::Unsquashed, why) => agent.say(&format!(
            "image root: unsquashed into {} (the overlay fast path was not possible: {})",
            root.path.display(),
            why.unwrap_or_default()
        )),
    }
    if let Some(ca) = &agent.settings.ca_cert {
        install_ca(&root.path, ca)?;
        agent.say(&format!(
            "CA certificate {} installed at /etc/cray/ca/certificate_authority.crt",
            ca.display()
        ));
    }
    let resolv = swap_resolv_conf(&root.path);
    match &resolv {
        Ok(true) => agent.say("the host's /etc/resolv.conf is in place for the session"),
        Ok(false) => {}
        Err(e) => agent.say(&format!("warning: resolv.conf not replaced: {e}")),
    }

    let jail = job
        .ssh_containers
        .as_ref()
        .and_then(|c| c.first())
        .map(|c| c.jail)
        .unwrap_or(false);
    let flags = Flags::new(&dir, &root.path, jail);
    flags.clear();
    let public_key = agent
        .api
        .describe(Resource::PublicKeys, &job.public_key_id)
        .await
        .map_err(|e| {
            format!(
                "cannot read the job's public key {}: {e}",
                job.public_key_id
            )
        })?
        .get("public_key")
        .and_then(|k| k.as_str())
        .map(str::to_string)
        .ok_or("the job's public key record has no key")?;
    let spec = session::Spec {
        job_dir: dir.clone(),
        jail,
        public_key,
        listen: agent.settings.ssh_listen,
        set_env: vec![
            ("IMS_JOB_ID".into(), job.id.clone()),
            ("IMS_ARCH".into(), arch.clone()),
            ("IMS_DKMS_ENABLED".into(), job.require_dkms.to_string()),
        ],
        ready_timeout: Duration::from_secs(30),
        dkms: job.require_dkms,
        debug: job.enable_debug,
    };
    if job.require_dkms {
        agent.say(
            "dkms: /proc, /sys (read-only) and /dev are mounted in the image root for the session",
        );
    }
    let mut ssh = session::start(&spec).await?;
    agent.say(&format!(
        "sshd accepts connections on {}:{} ({}; root login with the job's key only)",
        agent.settings.ssh_host,
        ssh.port,
        if jail {
            "jailed: chrooted into the image root"
        } else {
            "the image root is at /mnt/image/image-root"
        }
    ));
    agent
        .report_ssh(&agent.settings.ssh_host, ssh.port, "running")
        .await?;
    agent.status("waiting_on_user").await?;
    agent.say(&format!(
        "waiting for the user: touch {} (or {}), or `ims jobs complete|fail {}`",
        if jail {
            "/tmp/complete"
        } else {
            "/mnt/image/complete"
        },
        if jail {
            "/tmp/failed"
        } else {
            "/mnt/image/failed"
        },
        job.id
    ));
    // The session's idle time warms the page cache for packaging (fast path only).
    let preread_stop = Arc::new(AtomicBool::new(false));
    let preread = root.lower.clone().map(|lower| {
        let stop = preread_stop.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            (imageroot::preread(&lower, &stop), started.elapsed())
        })
    });
    let outcome = wait_for_user(agent, &flags, &mut ssh).await;
    preread_stop.store(true, Ordering::Relaxed);
    if let Some(Ok((p, took))) = preread.map(|t| t.join()) {
        agent.say(&format!(
            "{} {} MiB in {} files of the image at idle priority in {:.1} s, for packaging",
            if p.stopped {
                "the session ended after pre-reading"
            } else {
                "pre-read"
            },
            p.bytes >> 20,
            p.files,
            took.as_secs_f64()
        ));
    }
    let (port, sshd_log) = (ssh.port, ssh.log.clone());
    ssh.stop().await;
    for line in session::log_tail(&sshd_log, SSHD_LOG_KEPT) {
        agent.say(&format!("sshd: {line}"));
    }
    let _ = agent
        .report_ssh(&agent.settings.ssh_host, port, "stopped")
        .await;
    let outcome = outcome?;
    flags.clear();
    if matches!(resolv, Ok(true)) {
        restore_resolv_conf(&root.path)?;
    }
    if outcome == Outcome::Failed {
        return Err("the customization was marked as failed".to_string());
    }

    agent.status("packaging_artifacts").await?;
    let packaging = std::time::Instant::now();
    // Fresh S3 credentials: the session may have outlived the first ones (or the server, and
    // with it the S3 endpoint's address, may have restarted meanwhile).
    let ctx = Ctx::new(&agent.settings.api_url, agent.settings.token.clone()).await?;
    let result = package(agent, &ctx, &root.path, &arch).await;
    root.release();
    let image_id = result?;
    agent.result(&image_id).await?;
    agent.say(&format!(
        "packaged in {:.2} s",
        packaging.elapsed().as_secs_f64()
    ));
    agent.status("success").await?;
    Ok(())
}

/// Waits until the user sets a flag or asks through the API; an error if the job is cancelled
/// or sshd dies.
pub async fn wait_for_user(
    agent: &Agent,
    flags: &Flags,
    ssh: &mut session::Session,
) -> Result<Outcome, String> {
    let mut requests = agent.requests.clone();
    loop {
        if !ssh.running() {
            return Err(format!(
                "the job's sshd stopped unexpectedly; see {}",
                ssh.log.display()
            ));
        }
        if Flags::present(&flags.failed) {
            agent.say("the failed flag is set");
            return Ok(Outcome::Failed);
        }
        if Flags::present(&flags.complete) {
            agent.say("the complete flag is set");
            return Ok(Outcome::Complete);
        }
        match requests.borrow().as_deref() {
            Some("complete") => {
                agent.say("completed through the API");
                return Ok(Outcome::Complete);
            }
            Some("fail") => {
                agent.say("failed through the API");
                return Ok(Outcome::Failed);
            }
            _ => {}
        }
        tokio::select! {
            _ = agent.cancel.cancelled() => return Err("the job was stopped".to_string()),
            _ = requests.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The directory `rel` (plain components) inside `root`, created as needed; refuses to pass
/// through anything that is not a real directory (a link could lead out of the image root).
fn dir_in_root(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
        let Component::Normal(name) = c else {
            return Err(format!("bad path {rel:?}"));
        };
        p.push(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "/{} in the image root is not a directory (a link?)",
                    p.strip_prefix(root).unwrap_or(&p).display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&p)
                .map_err(|e| format!("cannot create {}: {e}", p.display()))?,
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
        }
    }
    Ok(p)
}

/// Writes `data` as a new regular file at `p` with `mode` (replacing whatever entry was there, a
/// link included, never writing through it).
pub(crate) fn replace_file(p: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => return Err(format!("{} is a directory", p.display())),
        Ok(_) => {
            std::fs::remove_file(p).map_err(|e| format!("cannot replace {}: {e}", p.display()))?
        }
        Err(_) => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(p)
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    f.write_all(data)
        .map_err(|e| format!("cannot write {}: {e}", p.display()))
}

fn install_ca(root: &Path, ca: &Path) -> Result<(), String> {
    let data = std::fs::read(ca)
        .map_err(|e| format!("cannot read the CA certificate {}: {e}", ca.display()))?;
    let dir = dir_in_root(root, "etc/cray/ca")?;
    replace_file(&dir.join("certificate_authority.crt"), &data, 0o644)
}

/// Puts the host's resolv.conf in place of the image's (kept aside); `false` if the host has none.
fn swap_resolv_conf(root: &Path) -> Result<bool, String> {
    let Ok(host) = std::fs::read("/etc/resolv.conf") else {
        return Ok(false);
    };
    let etc = dir_in_root(root, "etc")?;
    let cur = etc.join("resolv.conf");
    let saved = root.join(SAVED_RESOLV);
    if std::fs::symlink_metadata(&cur).is_ok() {
        // A rename moves a link as a link.
        std::fs::rename(&cur, &saved)
            .map_err(|e| format!("cannot set aside {}: {e}", cur.display()))?;
    }
    replace_file(&etc.join("resolv.conf"), &host, 0o644)?;
    Ok(true)
}

fn restore_resolv_conf(root: &Path) -> Result<(), String> {
    let etc = dir_in_root(root, "etc")?;
    let cur = etc.join("resolv.conf");
    let _ = std::fs::remove_file(&cur);
    let saved = root.join(SAVED_RESOLV);
    if std::fs::symlink_metadata(&saved).is_ok() {
        std::fs::rename(&saved, &cur)
            .map_err(|e| format!("cannot restore {}: {e}", cur.display()))?;
    }
    Ok(())
}

/// The job's boot file name, or `None` when it is the default (then the rule finds the file).
fn explicit_name<'a>(name: &'a str, defaults: &[&str]) -> Option<&'a str> {
    let n = name.trim();
    (!n.is_empty() && !defaults.contains(&n)).then_some(n)
}

/// Squashes the image root and publishes the new image; returns its id.
async fn package(agent: &Agent, ctx: &Ctx, root: &Path, arch: &str) -> Result<String, String> {
    let job = &agent.job;
    let boot = ims_rootfs::find_boot_artifacts(
        root,
        arch,
        explicit_name(&job.kernel_file_name, &["vmlinuz", "Image"]),
        explicit_name(&job.initrd_file_name, &["initrd"]),
    )
    .map_err(|e| format!("packaging: {e}"))?;
    let initrd = boot.initrd.ok_or_else(|| {
        format!(
            "packaging: no initrd found in {}",
            root.join("boot").display()
        )
    })?;
    agent.say(&format!(
        "kernel {}, initrd {}",
        boot.kernel.display(),
        initrd.display()
    ));
    let params = ims_rootfs::kernel::resolve_in_root(
        root,
        &Path::new("boot").join(&job.kernel_parameters_file_name),
    )
    .ok()
    .flatten()
    .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
    // Outside the image root, so the squashfs does not contain itself.
    let sqsh = agent.settings.dir.join("rootfs.squashfs");
    let opts = ims_rootfs::SquashfsOptions {
        compression: agent.settings.compression,
        processors: None,
    };
    agent.say(&format!(
        "mksquashfs ({}) of the image root",
        opts.compression
    ));
    let started = std::time::Instant::now();
    let (src, dst) = (root.to_path_buf(), sqsh.clone());
    let squash = tokio::task::spawn_blocking(move || ims_rootfs::mksquashfs(&src, &dst, &opts));
    tokio::select! {
        r = squash => r.map_err(|e| e.to_string())?.map_err(|e| format!("packaging: {e}"))?,
        _ = agent.cancel.cancelled() => return Err("the job was stopped".to_string()),
    }
    agent.say(&format!(
        "squashed in {:.2} s ({} bytes)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&sqsh).map(|m| m.len()).unwrap_or(0)
    ));
    let uploading = std::time::Instant::now();
    let mut artifacts = vec![
        Artifact {
            name: "rootfs",
            mime: MIME_ROOTFS,
            file: sqsh,
        },
        Artifact {
            name: "kernel",
            mime: MIME_KERNEL,
            file: boot.kernel,
        },
        Artifact {
            name: "initrd",
            mime: MIME_INITRD,
            file: initrd,
        },
    ];
    if let Some(p) = params {
        artifacts.push(Artifact {
            name: "boot_parameters",
            mime: MIME_BOOT_PARAMETERS,
            file: p,
        });
    }
    let id = uuid::Uuid::new_v4().to_string();
    let img = NewImage {
        id: &id,
        name: &job.image_root_archive_name,
        arch,
        job_id: Some(&job.id),
    };
    let log = agent.log.clone();
    let say = move |l: &str| log.line(l);
    let bucket = agent.settings.boot_images_bucket.clone();
    let mut sent = vec![];
    match publish(
        ctx,
        &bucket,
        img,
        &artifacts,
        &mut sent,
        &agent.cancel,
        &say,
    )
    .await
    {
        Ok(_) => {
            agent.say(&format!(
                "registered image {id} (upload, hashing and registration {:.2} s)",
                uploading.elapsed().as_secs_f64()
            ));
            Ok(id)
        }
        Err(Failure::Before(e)) => {
            let left = remove_uploads(ctx, &bucket, &sent).await;
            if !left.is_empty() {
                agent.say(&format!(
                    "warning: could not remove uploaded objects: {}",
                    left.join("; ")
                ));
            }
            Err(format!("publishing the image: {e}"))
        }
        Err(Failure::Unknown(e)) => Err(format!("publishing the image: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_the_image_root_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path();
        std::os::unix::fs::symlink(outside.path(), root.join("etc")).unwrap();
        let e = dir_in_root(root, "etc/cray/ca").unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        // A link where the file goes is replaced, not written through.
        std::fs::remove_file(root.join("etc")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, root.join("etc/resolv.conf")).unwrap();
        replace_file(
            &root.join("etc/resolv.conf"),
            b"nameserver 1.1.1.1\n",
            0o644,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(
            std::fs::symlink_metadata(root.join("etc/resolv.conf"))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn default_boot_names_are_not_explicit() {
        assert_eq!(explicit_name("vmlinuz", &["vmlinuz", "Image"]), None);
        assert_eq!(explicit_name("", &["vmlinuz"]), None);
        assert_eq!(
            explicit_name("vmlinuz-6.1", &["vmlinuz"]),
            Some("vmlinuz-6.1")
        );
    }
}
