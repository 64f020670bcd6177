//! `ims images import NAME ROOTFS`: the whole "Import an External Image to IMS" procedure in one
//! command, all or nothing.
//!
//! 1. Everything local is checked first (ROOTFS judged by content, explicit files readable), then
//!    the server and STS are asked for credentials, so that a typo or an unreachable server costs
//!    nothing.
//! 2. ROOTFS becomes a squashfs image: used as is, converted from a tar archive
//!    (`mksquashfs - -tar`, nothing extracted) or built from a directory (`mksquashfs`), keeping
//!    xattrs, ownership and device nodes. The kernel and initrd are found in the image root by the
//!    rules of [`ims_rootfs::kernel`] (for an image file, only `boot/` and the `/` links are
//!    extracted, into a private work directory).
//! 3. **Register last.** The client picks the image id, uploads `rootfs`, `kernel`, `initrd`,
//!    `boot_parameters` to `s3://BUCKET/<id>/` (each read once: md5 and sha256 computed while it is
//!    sent), sets each object's `md5sum` metadata (CopyObject onto itself, metadata only), writes
//!    `<id>/manifest.json` (v1.0 as the original writes it, plus `sha256` per artifact) and only
//!    then `POST /images {id, name, arch, link}`. Until that POST succeeds no record exists, so a
//!    failure anywhere — including the server dying mid-upload — leaves nothing registered.
//! 4. On failure or Ctrl-C the uploaded objects are removed. The one exception is a POST whose
//!    answer was lost: if the server cannot say whether the image exists, its objects are kept and
//!    the error says so, because deleting them could break a registered image.

use super::args::{Format, Globals, ImportArgs};
use super::print;
use super::s3_ctx;
use super::terminal::{interrupt_token, runtime};
use ims_client::publish::{Artifact, Failure, NewImage, publish, remove_uploads};

use ims_core::manifest::{MIME_BOOT_PARAMETERS, MIME_INITRD, MIME_KERNEL, MIME_ROOTFS};
use ims_rootfs::{ArchiveFormat, BootFiles, Compression, RootfsError, SquashfsOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What ROOTFS is, judged by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Directory,
    Squashfs,
    Archive(ArchiveFormat),
}

fn classify(path: &Path) -> Result<Source, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read ROOTFS {shown}: {e}"))?;
    if meta.is_dir() {
        return Ok(Source::Directory);
    }
    if !meta.is_file() {
        return Err(format!(
            "ROOTFS {shown} is neither a regular file nor a directory"
        ));
    }
    if ims_rootfs::is_squashfs(path).map_err(|e| e.to_string())? {
        ims_rootfs::ensure_squashfs(path).map_err(|e| e.to_string())?;
        return Ok(Source::Squashfs);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if [".sqsh", ".squashfs", ".sqfs", ".squash"]
        .iter()
        .any(|ext| name.ends_with(ext))
    {
        return Err(RootfsError::NotSquashfs {
            path: path.to_path_buf(),
        }
        .to_string());
    }
    match ims_rootfs::archive::detect_format(path) {
        Ok(f) => Ok(Source::Archive(f)),
        Err(e) => Err(format!(
            "ROOTFS must be a squashfs image, a tar archive (.tar, .tgz, .txz, .tar.zst) or an image-root directory: {e}"
        )),
    }
}

/// A file given on the command line: must be a readable regular file.
fn check_file(what: &str, path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the {what} {shown} is not a regular file"));
    }
    std::fs::File::open(path).map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    Ok(())
}

/// The boot files to upload (host paths) and where they were found.
#[derive(Default)]
struct Boot {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    /// The kernel parameters file (the boot_parameters artifact).
    params: Option<PathBuf>,
}

/// Whether the image root must be looked into: for the kernel, the initrd or the kernel parameters
/// file, unless each is given on the host (or only the root file system is imported).
fn needs_root(a: &ImportArgs) -> bool {
    let all_given = a.kernel.is_some() && a.initrd.is_some() && a.kernel_parameters.is_some();
    !(a.rootfs_only || all_given)
}

/// Finds the boot files the user did not give in the image root `root` (not read when
/// [`needs_root`] is false; `shown` names ROOTFS in errors). The kernel parameters file follows
/// the jobs' rule ([`ims_rootfs::kernel::kernel_parameters_file`]).
fn find_boot(a: &ImportArgs, root: &Path, shown: &Path) -> Result<Boot, String> {
    let mut boot = Boot {
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        params: a.kernel_parameters.clone(),
    };
    if !needs_root(a) {
        return Ok(boot);
    }
    if boot.params.is_none() {
        boot.params =
            ims_rootfs::kernel::kernel_parameters_file(root, &a.kernel_parameters_file_name);
    }
    if boot.kernel.is_some() && boot.initrd.is_some() {
        return Ok(boot);
    }
    let found = ims_rootfs::find_boot_artifacts(
        root,
        &a.arch,
        a.kernel_file_name.as_deref(),
        a.initrd_file_name.as_deref(),
    );
    match found {
        Ok(BootFiles { kernel, initrd }) => {
            boot.kernel.get_or_insert(kernel);
            if boot.initrd.is_none() {
                boot.initrd = initrd;
            }
        }
        // The kernel was given: only the initrd was looked for.
        Err(RootfsError::NoKernel { .. }) if boot.kernel.is_some() => {}
        Err(RootfsError::NoKernel { looked_for, .. }) => {
            return Err(format!(
                "no kernel found in the image root of {} (looked for {looked_for}): give one with --kernel FILE or --kernel-file-name NAME, or import the root file system alone with --rootfs-only",
                shown.display()
            ));
        }
        Err(RootfsError::BootFileNotFound { what, name, .. }) => {
            return Err(format!(
                "the {what} `{name}` was not found as a regular file in the /boot of {}",
                shown.display()
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    if boot.initrd.is_none() {
        eprintln!(
            "warning: no initrd found in the image root of {}; the image will have none (give one with --initrd FILE)",
            shown.display()
        );
    }
    Ok(boot)
}

/// Paths of an image's `/` extracted to find its boot files.
const BOOT_PATHS: &[&str] = &["boot", "vmlinuz", "initrd.img", "Image", "initrd"];

/// Runs a blocking step on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

/// Runs a conversion on a blocking thread, with a spinner of the bytes it reports (`what`: `done`)
/// on a terminal.
async fn with_spinner(
    what: &str,
    done: &str,
    convert: impl FnOnce(&mut (dyn FnMut(u64) + Send)) -> ims_rootfs::Result<()> + Send + 'static,
) -> Result<(), String> {
    let bar = super::terminal::bytes_progress(what, done);
    let shown = bar.clone();
    blocking(move || convert(&mut |b| shown.set_position(b)).map_err(|e| e.to_string())).await?;
    bar.finish_and_clear();
    Ok(())
}

/// Produces the squashfs image and the boot files, in `work` when anything must be written.
async fn prepare(a: &ImportArgs, source: Source, work: &Path) -> Result<(PathBuf, Boot), String> {
    let compression: Compression = match &a.compression {
        Some(c) => c
            .parse()
            .map_err(|e: ims_core::compression::UnknownCompression| e.to_string())?,
        None => Compression::default(),
    };
    if source == Source::Squashfs && a.compression.is_some() {
        eprintln!(
            "warning: --compression is ignored: {} is a squashfs image and is uploaded as it is",
            a.rootfs.display()
        );
    }
    let opts = SquashfsOptions {
        compression,
        processors: None,
        level: None,
    };
    let rootfs = a.rootfs.clone();
    let image = match source {
        Source::Squashfs => rootfs.clone(),
        Source::Directory => {
            // Before the long conversion: a missing kernel fails at once.
            let boot = find_boot(a, &rootfs, &rootfs)?;
            let out = work.join("rootfs.squashfs");
            if !super::terminal::quiet() {
                eprintln!(
                    "Building a squashfs image ({compression}) from {} ...",
                    rootfs.display()
                );
            }
            let (src, dst) = (rootfs.clone(), out.clone());
            // The image's bytes written so far.
            with_spinner("mksquashfs", "written", move |progress| {
                ims_rootfs::mksquashfs_with_progress(&src, &dst, &opts, progress)
            })
            .await?;
            return Ok((out, boot));
        }
        Source::Archive(_) => {
            let out = work.join("rootfs.squashfs");
            if !super::terminal::quiet() {
                eprintln!(
                    "Converting {} to a squashfs image ({compression}) ...",
                    rootfs.display()
                );
            }
            let (src, dst) = (rootfs.clone(), out.clone());
            // The archive's (uncompressed) tar stream read so far.
            with_spinner("converting", "of tar read", move |progress| {
                ims_rootfs::tar_to_squashfs_with_progress(&src, &dst, &opts, progress)
            })
            .await?;
            out
        }
    };
    // An image file: extract only what the boot files can be found in.
    let boot = if !needs_root(a) {
        find_boot(a, work, &rootfs)?
    } else {
        let root = work.join("boot-root");
        let (img, dst) = (image.clone(), root.clone());
        blocking(move || {
            ims_rootfs::unsquashfs_paths_without_xattrs(&img, &dst, BOOT_PATHS)
                .map_err(|e| e.to_string())
        })
        .await?;
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        find_boot(a, &root, &rootfs)?
    };
    Ok((image, boot))
}

pub fn run(a: ImportArgs, g: &Globals, format: Format) -> Result<ExitCode, String> {
    if a.name.trim().is_empty() {
        return Err("the image name must not be blank".to_string());
    }
    let source = classify(&a.rootfs)?;
    for (what, f) in [
        ("kernel", &a.kernel),
        ("initrd", &a.initrd),
        ("kernel parameters file", &a.kernel_parameters),
    ] {
        if let Some(f) = f {
            check_file(what, f)?;
        }
    }
    let rt = runtime()?;
    let v = rt.block_on(async {
        // Fail fast: the server and STS answer before anything long starts.
        s3_ctx(g).await?;
        let work_parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        // Private (0700), removed on every exit path.
        let work = tempfile::Builder::new()
            .prefix("ims-import-")
            .tempdir_in(&work_parent)
            .map_err(|e| {
                format!(
                    "cannot create a work directory in {}: {e}",
                    work_parent.display()
                )
            })?;
        let cancel = interrupt_token();
        let (image, boot) = tokio::select! {
            r = prepare(&a, source, work.path()) => r?,
            _ = cancel.cancelled() => return Err("interrupted; nothing was uploaded".to_string()),
        };
        let mut artifacts = vec![Artifact {
            name: "rootfs",
            mime: MIME_ROOTFS,
            file: image,
        }];
        if let Some(k) = boot.kernel {
            artifacts.push(Artifact {
                name: "kernel",
                mime: MIME_KERNEL,
                file: k,
            });
        }
        if let Some(i) = boot.initrd {
            artifacts.push(Artifact {
                name: "initrd",
                mime: MIME_INITRD,
                file: i,
            });
        }
        if let Some(p) = boot.params {
            if !super::terminal::quiet() && a.kernel_parameters.is_none() {
                eprintln!(
                    "Kernel parameters: /boot/{} of the image root",
                    a.kernel_parameters_file_name
                );
            }
            artifacts.push(Artifact {
                name: "boot_parameters",
                mime: MIME_BOOT_PARAMETERS,
                file: p,
            });
        }
        // Fresh credentials: the conversion may have outlived the first ones.
        let ctx = s3_ctx(g).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let mut sent = vec![];
        // Not cut short from outside: an interruption makes the running upload abort itself
        // (no multipart parts left behind), then the clean-up below runs.
        let img = NewImage {
            id: &id,
            name: &a.name,
            arch: a.arch.parse()?,
            job_id: None,
        };
        let say = |line: &str| {
            if !super::terminal::quiet() {
                eprintln!("{line}");
            }
        };
        let outcome = publish(&ctx, &a.bucket, img, &artifacts, &mut sent, &cancel, &say).await;
        match outcome {
            Ok(v) => Ok(v),
            Err(Failure::Unknown(msg)) => Err(msg),
            Err(Failure::Before(mut msg)) => {
                let left = remove_uploads(&ctx, &a.bucket, &sent).await;
                if left.is_empty() {
                    if !sent.is_empty() {
                        msg.push_str(
                            "; the uploaded objects were removed and nothing was registered",
                        );
                    } else {
                        msg.push_str("; nothing was registered");
                    }
                } else {
                    msg.push_str(&format!(
                        "; nothing was registered, but removing the uploaded objects failed: {}",
                        left.join("; ")
                    ));
                }
                Err(msg)
            }
        }
    })?;
    print(&v, format)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_is_judged_by_content() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(classify(d.path()).unwrap(), Source::Directory);
        let fake = d.path().join("image.sqsh");
        std::fs::write(&fake, vec![0u8; 4096]).unwrap();
        let e = classify(&fake).unwrap_err();
        assert!(e.contains("is not a squashfs image"), "{e}");
        let other = d.path().join("image.bin");
        std::fs::write(&other, b"hello").unwrap();
        let e = classify(&other).unwrap_err();
        assert!(
            e.contains("ROOTFS must be a squashfs image, a tar archive"),
            "{e}"
        );
        let e = classify(&d.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot read ROOTFS"), "{e}");
    }
}
