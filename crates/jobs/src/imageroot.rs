//! The image root of a customize job.
//!
//! Layout in the job directory `J` (mode 0700):
//!
//! ```text
//! J/image.sqsh        the downloaded rootfs
//! J/lower/            the squashfs, mounted read-only from a loop device      (fast path)
//! J/ovl/{upper,work}  the overlay's writable layer, outside what a session sees (fast path)
//! J/mnt/image-root/   the image root: the overlay, or the unsquashed tree      (both paths)
//! ```
//!
//! `J/mnt` is what a non-jailed session sees as `/mnt/image`. The fast path costs milliseconds
//! whatever the image's size and reads only what is used; it needs squashfs, loop devices and
//! overlayfs, and is chosen automatically. If any of them fails, the image is unpacked with
//! `unsquashfs` instead (xattrs, owners and devices kept) and the reason is reported. The mounts
//! live in the agent's private mount namespace: they vanish with the agent, however it ends.
//!
//! **Hard links.** A plain overlay copies a changed file up to a new inode, so the file's other
//! names would keep the old content and the packaged image two unrelated files. The overlay is
//! therefore mounted with its inode index (`index=on`): the names of one lower inode stay one
//! overlay inode (a change through one name shows through all, the link count is kept) and
//! `mksquashfs` of the overlay writes them as one hard-linked file, exactly as from an unpacked
//! tree. The kernel turns the index off, silently, when a layer cannot give file handles (a
//! squashfs built with `-no-exports`, an upper file system without them or without trusted
//! xattrs); that is read back from the mount table. Without the index the overlay is kept only for
//! an image without multiply-linked files; otherwise the image is unpacked, which keeps them.

use std::path::{Path, PathBuf};
use std::process::Command;

use ims_rootfs::confined::{FileType, Root};

use crate::error::{Context, Error, Result};

/// How the image root was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// overlayfs over the loop-mounted squashfs.
    Overlay,
    /// A full `unsquashfs`.
    Unsquashed,
}

/// A prepared image root.
#[derive(Debug)]
pub struct ImageRoot {
    /// The image root (`J/mnt/image-root`).
    pub path: PathBuf,
    pub method: Method,
    /// The read-only squashfs mount under the overlay (fast path only).
    pub lower: Option<PathBuf>,
    /// How the fast path keeps hard links (for the job's log; empty otherwise).
    pub links: String,
    /// Mount points to undo, innermost first.
    mounts: Vec<PathBuf>,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "{what}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )))
    }
}

fn mkdirs(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    Ok(())
}

/// Makes the image root of `image` (a squashfs file) in the job directory `dir`. With
/// `prefer_overlay` false the image is always unpacked. Returns the root and, when the fast path
/// could not be used, why.
pub fn prepare(
    dir: &Path,
    image: &Path,
    prefer_overlay: bool,
) -> Result<(ImageRoot, Option<String>)> {
    let root = dir.join("mnt").join("image-root");
    let why_not = if prefer_overlay {
        match overlay(dir, image, &root) {
            Ok(r) => return Ok((r, None)),
            Err(e) => Some(e.to_string()),
        }
    } else {
        Some("the agent has no private mount namespace".to_string())
    };
    // The fallback: a real tree. `root` may hold a half-made overlay's empty directory.
    let _ = std::fs::remove_dir(&root);
    mkdirs(&[&dir.join("mnt")])?;
    ims_rootfs::unsquashfs(image, &root)?;
    // The download is not needed any more; the tree may be large.
    let _ = std::fs::remove_file(image);
    Ok((
        ImageRoot {
            path: root,
            method: Method::Unsquashed,
            lower: None,
            links: String::new(),
            mounts: vec![],
        },
        why_not,
    ))
}

fn overlay(dir: &Path, image: &Path, root: &Path) -> Result<ImageRoot> {
    let lower = dir.join("lower");
    let upper = dir.join("ovl").join("upper");
    let work = dir.join("ovl").join("work");
    mkdirs(&[&lower, &upper, &work, root])?;
    run(
        Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro,nodev"])
            .arg(image)
            .arg(&lower),
        "mounting the squashfs image",
    )?;
    let mut opts = std::ffi::OsString::from("lowerdir=");
    opts.push(&lower);
    opts.push(",upperdir=");
    opts.push(&upper);
    opts.push(",workdir=");
    opts.push(&work);
    // Keeps hard links (see the module documentation).
    opts.push(",index=on");
    if let Err(e) = run(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(&opts)
            .arg(root),
        "mounting the overlay",
    ) {
        let _ = run(Command::new("umount").arg(&lower), "unmounting");
        return Err(e);
    }
    let mut r = ImageRoot {
        path: root.to_path_buf(),
        method: Method::Overlay,
        lower: Some(lower.clone()),
        links: String::new(),
        mounts: vec![root.to_path_buf(), lower.clone()],
    };
    if overlay_index_on(root) {
        r.links = "the overlay's inode index keeps hard links".to_string();
        return Ok(r);
    }
    const NO_INDEX: &str = "the kernel turned the overlay's inode index off (the squashfs has no \
         export table, or the job directory's file system lacks file handles or trusted xattrs)";
    match multiply_linked(&lower) {
        None => {
            r.links = format!("the image has no hard-linked files; {NO_INDEX}");
            Ok(r)
        }
        // `r` goes: both mounts are undone.
        Some(p) => Err(Error::Failed(format!(
            "the image has hard-linked files (/{} among them) and {NO_INDEX}, which a change would \
             split",
            p.strip_prefix(&lower).unwrap_or(&p).display()
        ))),
    }
}

/// A mount point as `/proc/self/mountinfo` writes it (space, tab, newline and backslash in octal).
fn mountinfo_escape(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Whether the overlay mounted at `mount_point` (the last mount there) has its inode index on:
/// its super options say `index=on` only when the kernel kept it.
fn overlay_index_on(mount_point: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mountinfo_escape(mount_point);
    info.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))
        // After the optional fields: " - TYPE SOURCE SUPER-OPTIONS".
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|rest| rest.split(' ').nth(2))
        .is_some_and(|opts| opts.split(',').any(|o| o == "index=on"))
}

/// The first file under `dir` (links not followed) with more than one name, if any.
fn multiply_linked(dir: &Path) -> Option<PathBuf> {
    let root = Root::open(dir).ok()?;
    let mut dirs = vec![root.top().try_clone().ok()?];
    while let Some(d) = dirs.pop() {
        let Ok(names) = d.list() else {
            continue;
        };
        for name in names {
            let Ok(st) = d.stat(&name) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                if let Ok(sub) = d.open_dir(&name) {
                    dirs.push(sub);
                }
            } else if st.st_nlink > 1 {
                return Some(root.host_path(&d.rel().join(name)));
            }
        }
    }
    None
}

impl ImageRoot {
    /// Unmounts what [`prepare`] mounted (lazily if something still holds it). The agent's mount
    /// namespace would drop them anyway when it ends; this frees the loop device earlier.
    pub fn release(&mut self) {
        for m in self.mounts.drain(..) {
            if run(Command::new("umount").arg(&m), "unmounting").is_err() {
                let _ = run(
                    Command::new("umount").arg("-l").arg(&m),
                    "unmounting lazily",
                );
            }
        }
    }
}

impl Drop for ImageRoot {
    fn drop(&mut self) {
        self.release();
    }
}

/// What [`preread`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Preread {
    pub files: u64,
    pub bytes: u64,
    /// Stopped before the end (`stop` was set).
    pub stopped: bool,
}

/// Reads every regular file under `dir` (the squashfs mount of the fast path) once and throws the
/// bytes away, at idle CPU and I/O priority, so the kernel has decompressed the image into the
/// page cache by the time packaging reads it: a cold squashfs costs mksquashfs's single reader
/// thread the decompression while the compressor threads hold the cores (6.2 s against 2.1 s warm
/// for a 1 GiB image root here). Meant for the session's idle time; links are not followed, and
/// it stops between reads when `stop` is set. Runs on the calling thread.
pub fn preread(dir: &Path, stop: &std::sync::atomic::AtomicBool) -> Preread {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    idle_priority();
    let mut done = Preread::default();
    let Ok(root) = Root::open(dir) else {
        return done;
    };
    let mut buf = vec![0u8; 1 << 20];
    let Ok(top) = root.top().try_clone() else {
        return done;
    };
    let mut dirs = vec![top];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = d.entries() else {
            continue;
        };
        for (name, kind) in entries {
            if stop.load(Ordering::Relaxed) {
                done.stopped = true;
                return done;
            }
            match kind {
                FileType::Directory => {
                    if let Ok(sub) = d.open_dir(&name) {
                        dirs.push(sub);
                    }
                }
                FileType::RegularFile => {
                    let Ok(mut f) = d.open_regular(&name) else {
                        continue;
                    };
                    done.files += 1;
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            done.stopped = true;
                            return done;
                        }
                        match f.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => done.bytes += n as u64,
                        }
                    }
                }
                _ => {}
            }
        }
    }
    done
}

/// Puts the calling thread at idle CPU priority (`SCHED_IDLE`) and in the idle I/O class, so it
/// only uses what nothing else wants. Best effort.
fn idle_priority() {
    // SAFETY: plain system calls on the calling thread with valid arguments.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
        // ioprio_set(IOPRIO_WHO_PROCESS, 0 = this thread, IOPRIO_CLASS_IDLE << 13)
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << 13,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_escaped_as_the_kernel_does() {
        assert_eq!(mountinfo_escape(Path::new("/a b\\c")), "/a\\040b\\134c");
        assert_eq!(
            mountinfo_escape(Path::new("/j/mnt/image-root")),
            "/j/mnt/image-root"
        );
    }

    #[test]
    fn multiply_linked_files_are_found() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/sub")).unwrap();
        std::fs::write(d.path().join("etc/a"), "x").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("etc/l")).unwrap();
        assert_eq!(multiply_linked(d.path()), None);
        std::fs::hard_link(d.path().join("etc/a"), d.path().join("etc/sub/b")).unwrap();
        let found = multiply_linked(d.path()).unwrap();
        assert!(
            found.ends_with("etc/a") || found.ends_with("etc/sub/b"),
            "{found:?}"
        );
    }
}
