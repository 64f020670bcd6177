//! The customize pipeline, with the original's statuses: `fetching_image` → `waiting_on_user` →
//! `packaging_artifacts` → `success` (or `error` with the reason in the job's log).
//!
//! 1. **Fetch**: the source image's manifest names its rootfs; it is downloaded into the job
//!    directory with its md5 and sha256 computed in the same pass and checked against the manifest.
//! 2. **Image root**: [`crate::imageroot::prepare`] (overlay fast path or `unsquashfs`).
//! 3. **Site setup**: the site CA certificate at `/etc/cray/ca/certificate_authority.crt`, and the
//!    host's resolvers (`sshd::resolv_conf`) in place of the image's resolv.conf for the session (the image's is put back
//!    before packaging). Paths inside the image root are never followed through symbolic links.
//! 4. **Wait for the user**: the flag files (`/tmp/complete|failed` inside the image root when
//!    jailed, `/mnt/image/complete|failed` otherwise) or `ims jobs complete|fail`.
//! 5. **Package**: kernel and initrd from the image root's `/boot` (the job's names when they are
//!    not the defaults, else found by `ims_rootfs::kernel`'s rule), the kernel parameters file if
//!    present, `mksquashfs` of the image root, then [`ims_client::publish`]: uploaded with md5 and
//!    sha256, manifest, and the new image registered last (name = `image_root_archive_name`, arch
//!    of the source); `resultant_image_id`; `success`.

use crate::context::JobContext;
use crate::error::{Context, Error, Result};
use crate::imageroot::{self, Method};
use crate::package::package;
use crate::rootfiles::{install_ca, put_back, replace_keeping};
use crate::user_session::{self, Flags, Outcome};
use ims_client::Resource;
use ims_client::s3::{key_path, s3_error, split_s3};
use ims_core::manifest::job_rootfs;
use ims_core::{Image, JobStatus};
use object_store::ObjectStore;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest manifest read.
const MAX_MANIFEST: usize = 1024 * 1024;
/// Where the image's own resolv.conf waits during the session.
const SAVED_RESOLV: &str = ".resolv.conf.ims-saved";

pub async fn run(agent: &JobContext) -> Result<()> {
    let job = &agent.job;
    let dir = agent.settings.dir.clone();
    agent.status(JobStatus::FetchingImage).await?;
    let ctx = agent.s3().await?;
    let source: Image = agent
        .api
        .describe_as(Resource::Images, &job.artifact_id)
        .await
        .with_context(|| format!("cannot read the source image {}", job.artifact_id))?;
    let arch = source.arch;
    let link = source
        .link
        .as_ref()
        .map(|l| l.path.as_str())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            Error::Refused(format!(
                "the source image {} has no manifest link",
                job.artifact_id
            ))
        })?;
    let (mbucket, mkey) = split_s3(link).map_err(Error::s3)?;
    let manifest = ctx
        .store(&mbucket)
        .map_err(Error::s3)?
        .get(&key_path(&mkey).map_err(Error::s3)?)
        .await
        .map_err(|e| Error::s3(s3_error(&mbucket, &mkey, e)))?
        .bytes()
        .await
        .map_err(|e| Error::s3(s3_error(&mbucket, &mkey, e)))?;
    if manifest.len() > MAX_MANIFEST {
        return Err(Error::Refused(format!(
            "the manifest {link} is larger than {MAX_MANIFEST} bytes"
        )));
    }
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .with_context(|| format!("the manifest {link} is not JSON"))?;
    let rootfs = job_rootfs(&manifest).map_err(|p| {
        Error::Refused(format!(
            "the manifest {link}: {}",
            p.detail.unwrap_or_default()
        ))
    })?;
    let (bucket, key) = split_s3(&rootfs.link.path).map_err(Error::s3)?;
    let image = dir.join("image.sqsh");
    agent.say(&format!("downloading s3://{bucket}/{key}"));
    let started = std::time::Instant::now();
    let (md5, sha256) = agent.download(&ctx, &bucket, &key, &image).await?;
    let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    agent.say(&format!(
        "downloaded {size} bytes in {:.2} s; md5 {md5}, sha256 {sha256}",
        started.elapsed().as_secs_f64()
    ));
    match &rootfs.md5 {
        Some(want) if !want.eq_ignore_ascii_case(&md5) => {
            return Err(Error::Refused(format!(
                "the rootfs is corrupt: its md5 is {md5}, the manifest says {want}"
            )));
        }
        Some(_) => agent.say("md5 matches the manifest"),
        None => agent.say("the manifest records no md5: not checked"),
    }
    if let Some(want) = &rootfs.sha256 {
        if !want.eq_ignore_ascii_case(&sha256) {
            return Err(Error::Refused(format!(
                "the rootfs is corrupt: its sha256 is {sha256}, the manifest says {want}"
            )));
        }
        agent.say("sha256 matches the manifest");
    }

    let (img, dir2) = (image.clone(), dir.clone());
    let overlay = agent.settings.private_mounts;
    let (mut root, why_not) =
        tokio::task::spawn_blocking(move || imageroot::prepare(&dir2, &img, overlay)).await??;
    match (root.method, why_not) {
        (Method::Overlay, _) => agent.say(&format!(
            "image root: overlay over the loop-mounted squashfs at {} ({})",
            root.path.display(),
            root.links
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
    if job.require_dkms {
        agent.say(
            "dkms: /proc, /sys (read-only) and /dev are mounted in the image root for the session",
        );
    }
    let env = vec![
        ("IMS_ARCH".into(), arch.to_string()),
        ("IMS_DKMS_ENABLED".into(), job.require_dkms.to_string()),
    ];
    let mut ssh = user_session::open(agent, jail, job.require_dkms, env).await?;
    // The session's idle time warms the page cache for packaging (fast path only).
    let preread_stop = Arc::new(AtomicBool::new(false));
    let preread = root.lower.clone().map(|lower| {
        let stop = preread_stop.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            (imageroot::preread(&lower, &stop), started.elapsed())
        })
    });
    let outcome = user_session::wait_for_user(agent, &flags, &mut ssh).await;
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
    user_session::close(agent, ssh).await;
    let outcome = outcome?;
    flags.clear();
    if matches!(resolv, Ok(true)) {
        restore_resolv_conf(&root.path)?;
    }
    if outcome == Outcome::Failed {
        return Err(Error::Failed(
            "the customization was marked as failed".into(),
        ));
    }

    agent.status(JobStatus::PackagingArtifacts).await?;
    let packaging = std::time::Instant::now();
    // Fresh S3 credentials: the session may have outlived the first ones (or the server, and
    // with it the S3 endpoint's address, may have restarted meanwhile).
    let ctx = agent.s3().await?;
    let result = package(agent, &ctx, &root.path, arch, None).await;
    root.release();
    let image_id = result?;
    agent.result(&image_id).await?;
    agent.say(&format!(
        "packaged in {:.2} s",
        packaging.elapsed().as_secs_f64()
    ));
    agent.status(JobStatus::Success).await?;
    Ok(())
}

/// Puts the session's resolv.conf (the host's resolvers, as the session's network reaches them) in
/// place of the image's (kept aside); `false` if the host has none.
fn swap_resolv_conf(root: &Path) -> Result<bool> {
    let Some(host) = crate::sshd::resolv_conf() else {
        return Ok(false);
    };
    replace_keeping(root, "etc", "resolv.conf", SAVED_RESOLV, host.as_bytes())?;
    Ok(true)
}

fn restore_resolv_conf(root: &Path) -> Result<()> {
    put_back(root, "etc", "resolv.conf", SAVED_RESOLV)
}
