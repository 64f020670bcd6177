//! Packaging, shared by customize and create jobs: kernel and initrd found in the image root
//! (the job's names when they are not the defaults, else [`ims_rootfs::find_boot_artifacts`]'s
//! rule), the kernel parameters file if present, `mksquashfs` of the image root outside it, then
//! [`ims_client::publish`]: uploaded with md5 and sha256 computed while sending, manifest, and
//! the new image registered last (named `image_root_archive_name`, with the id the server chose in
//! the STS answer: the job's credentials may write only below it). Nothing stays registered or
//! uploaded when it fails.

use crate::context::JobContext;
use crate::error::{Context, Error, Result};
use ims_client::publish::{Artifact, Failure, NewImage, publish, remove_uploads};
use ims_client::s3::Ctx;
use ims_core::Arch;
use ims_core::manifest::{MIME_BOOT_PARAMETERS, MIME_INITRD, MIME_KERNEL, MIME_ROOTFS};
use std::path::Path;

/// The zstd level of the images create jobs build, unless configured (`IMS_JOB_COMPRESSION_LEVEL`).
/// On a 706 MB Debian image root here (2 cores): level 15 (mksquashfs's default) 38.1 s → 230.0 MB,
/// level 6 4.1 s → 242.9 MB (+5.6 %), level 3 2.1 s → 256.1 MB (+11 %). Reading the whole image
/// back from a cold page cache: 3.3–4.2 s at level 6, 4.1–4.3 s at level 15. In a create job of
/// the Debian example level 15 made IMS's share of the build 17.7 % instead of 3.9 %
/// (docs/benchmarks.md). A create job's image is usually the base that customize jobs turn into
/// the boot image (the CSM workflow), so it is built fast; customize jobs keep mksquashfs's
/// default (the smaller image the nodes download).
pub const CREATE_ZSTD_LEVEL: u32 = 6;

/// The job's boot file name, or `None` when it is the default (then the rule finds the file).
fn explicit_name<'a>(name: &'a str, defaults: &[&str]) -> Option<&'a str> {
    let n = name.trim();
    (!n.is_empty() && !defaults.contains(&n)).then_some(n)
}

/// Squashes the image root and publishes the new image; returns its id. `zstd_level`: the zstd
/// level when none is configured (`None`: mksquashfs's default).
pub async fn package(
    agent: &JobContext,
    ctx: &Ctx,
    root: &Path,
    arch: Arch,
    zstd_level: Option<u32>,
) -> Result<String> {
    let job = &agent.job;
    let boot = ims_rootfs::find_boot_artifacts(
        root,
        arch.as_str(),
        explicit_name(&job.kernel_file_name, &["vmlinuz", "Image"]),
        explicit_name(&job.initrd_file_name, &["initrd"]),
    )
    .context("packaging")?;
    let initrd = boot.initrd.ok_or_else(|| {
        Error::Failed(format!(
            "packaging: no initrd found in {}",
            root.join("boot").display()
        ))
    })?;
    agent.say(&format!(
        "kernel {}, initrd {}",
        boot.kernel.display(),
        initrd.display()
    ));
    let params = ims_rootfs::kernel::kernel_parameters_file(root, &job.kernel_parameters_file_name);
    // Outside the image root, so the squashfs does not contain itself.
    let sqsh = agent.settings.dir.join("rootfs.squashfs");
    let opts = ims_rootfs::SquashfsOptions {
        compression: agent.settings.compression,
        processors: None,
        level: agent
            .settings
            .compression_level
            .or(zstd_level.filter(|_| agent.settings.compression == ims_rootfs::Compression::Zstd)),
    };
    agent.say(&format!(
        "mksquashfs ({}{}) of the image root",
        opts.compression,
        opts.level
            .map(|l| format!(" level {l}"))
            .unwrap_or_default()
    ));
    let started = std::time::Instant::now();
    let (src, dst) = (root.to_path_buf(), sqsh.clone());
    // Progress in the job's log while it runs (a large root takes minutes): the image's bytes
    // written so far, after 2 s and then every 10 s.
    let mut lines = crate::context::ProgressLines::new(agent.log.clone(), "mksquashfs: written");
    let squash = tokio::task::spawn_blocking(move || {
        ims_rootfs::mksquashfs_with_progress(&src, &dst, &opts, &mut |b| lines.report(b, 0))
    });
    tokio::select! {
        r = squash => r?.context("packaging")?,
        _ = agent.cancel.cancelled() => return Err(Error::Cancelled),
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
    // The server chooses the new image's id (the job's S3 credentials may write only under it);
    // a server that does not say (an older one) leaves the choice to the agent.
    let (id, bucket) = match &ctx.job {
        Some(j) => (j.image_id.clone(), j.bucket.clone()),
        None => (
            uuid::Uuid::new_v4().to_string(),
            agent.settings.boot_images_bucket.clone(),
        ),
    };
    let img = NewImage {
        id: &id,
        name: &job.image_root_archive_name,
        arch,
        job_id: Some(&job.id),
    };
    let log = agent.log.clone();
    let say = move |l: &str| log.line(l);
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
            Err(agent.stopped_or(Error::Failed(format!("publishing the image: {e}"))))
        }
        Err(Failure::Unknown(e)) => {
            Err(agent.stopped_or(Error::Failed(format!("publishing the image: {e}"))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
