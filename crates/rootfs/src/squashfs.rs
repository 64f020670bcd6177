//! SquashFS images through squashfs-tools (`mksquashfs`, `unsquashfs`) as subprocesses.
//!
//! Extended attributes (`security.capability`, `user.*`, ACLs), ownership (numeric uid/gid), permissions,
//! device nodes, FIFOs, hard links and symbolic links are always kept: these are the rootfs an HPC node boots.
//!
//! ## Streaming
//!
//! `mksquashfs` cannot write to a pipe: it seeks back to write the superblock and the tables at the end. So
//! [`mksquashfs`] writes a file, and a caller that uploads the image reads that finished file once, computing its
//! checksums (md5, sha256) in the same pass as the upload. Put the file in a temporary directory on the same
//! filesystem as the data (e.g. `tempfile::tempdir_in(dir)`) so that nothing is copied across filesystems, and
//! remove it after the upload. [`mksquashfs`] removes a half-written file itself when it fails.
//!
//! All functions block (they wait for a subprocess); async callers run them with `tokio::task::spawn_blocking`.

use std::fs;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::Path;
use std::process::Command;

use crate::error::{Result, RootfsError, io_err};
use crate::tool::{MKSQUASHFS, UNSQUASHFS};

/// The squashfs magic, `hsqs` as the bytes appear in a little-endian image.
pub const SQUASHFS_MAGIC: [u8; 4] = *b"hsqs";
/// Size of a squashfs 4.0 superblock.
const SUPERBLOCK_LEN: usize = 96;
/// Offset of `s_major` (u16, little-endian) in the superblock.
const MAJOR_OFFSET: usize = 28;
/// Offset of `bytes_used` (u64, little-endian): the size of the image without its padding.
const BYTES_USED_OFFSET: usize = 40;

/// squashfs compression: declared in `ims_core` (one list of names, shared with the job agent's
/// environment and the server's configuration).
pub use ims_core::compression::Compression;

/// Options of [`mksquashfs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SquashfsOptions {
    /// Compression; zstd by default.
    pub compression: Compression,
    /// `-processors N`: at most this many compressor threads (default: every CPU).
    pub processors: Option<NonZeroUsize>,
    /// `-Xcompression-level N` (see [`Compression::levels`]); `None`: mksquashfs's default
    /// (zstd 15, gzip 9).
    pub level: Option<u32>,
}

impl SquashfsOptions {
    /// The mksquashfs options shared by a directory source and a tar source.
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-noappend",    // replace the destination, never append to an existing image
            "-xattrs",      // keep extended attributes (the default, said explicitly)
            "-quiet",       // no summary on stdout
            "-no-progress", // no progress bar
            "-comp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(self.compression.as_str().to_string());
        if let Some(l) = self.level {
            args.push("-Xcompression-level".to_string());
            args.push(l.to_string());
        }
        if let Some(n) = self.processors {
            args.push("-processors".to_string());
            args.push(n.to_string());
        }
        args
    }
}

/// Builds the squashfs image `dest_file` from the directory `source_dir` (which becomes the image's `/`).
///
/// Runs `mksquashfs SOURCE DEST -noappend -xattrs -quiet -no-progress -comp C [-processors N]`. Ownership and
/// device nodes are stored as they are on disk, so building an image root that holds other users' files and
/// `security.*` xattrs needs root (as the jobs run). An existing `dest_file` is replaced; on failure no
/// `dest_file` is left behind.
pub fn mksquashfs(source_dir: &Path, dest_file: &Path, opts: &SquashfsOptions) -> Result<()> {
    mksquashfs_inner(source_dir, dest_file, opts, None)
}

/// [`mksquashfs`], calling `progress` with the bytes of the image written so far as they grow
/// (mksquashfs writes its output as it goes; its own progress bar moves only on a terminal), for a
/// progress bar or periodic log lines.
pub fn mksquashfs_with_progress(
    source_dir: &Path,
    dest_file: &Path,
    opts: &SquashfsOptions,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<()> {
    mksquashfs_inner(source_dir, dest_file, opts, Some(progress))
}

fn mksquashfs_inner(
    source_dir: &Path,
    dest_file: &Path,
    opts: &SquashfsOptions,
    progress: Option<&mut (dyn FnMut(u64) + Send)>,
) -> Result<()> {
    let meta =
        fs::metadata(source_dir).map_err(io_err("cannot read the image root", source_dir))?;
    if !meta.is_dir() {
        return Err(RootfsError::Io {
            action: "the image root is not a directory:",
            path: source_dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    check_dest_file(dest_file)?;
    let action = format!(
        "building {} from {}",
        dest_file.display(),
        source_dir.display()
    );
    let mut cmd = MKSQUASHFS.command();
    cmd.arg(source_dir).arg(dest_file).args(opts.args());
    let result = match progress {
        None => MKSQUASHFS.run(&mut cmd, &action).map(|_| ()),
        Some(progress) => run_with_progress(&mut cmd, &action, dest_file, progress),
    };
    if result.is_err() {
        let _ = fs::remove_file(dest_file);
    }
    result
}

/// Runs mksquashfs, reporting the size of `dest` as it grows (polled every 250 ms).
fn run_with_progress(
    cmd: &mut Command,
    action: &str,
    dest: &Path,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<()> {
    use std::process::Stdio;
    let mut child = MKSQUASHFS.spawn(cmd.stdout(Stdio::null()).stderr(Stdio::piped()), action)?;
    let stderr = child.stderr.take().map(crate::tool::drain);
    let mut last = 0;
    let mut report = |progress: &mut (dyn FnMut(u64) + Send)| {
        if let Ok(m) = fs::metadata(dest)
            && m.len() != last
        {
            last = m.len();
            progress(last);
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MKSQUASHFS.spawn_error(e, action));
            }
        }
        report(progress);
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let stderr = crate::tool::join_drain(stderr);
    MKSQUASHFS.check(status, &stderr, action)?;
    report(progress);
    Ok(())
}

/// The destination of a squashfs build must not be a directory, and its parent must exist.
pub(crate) fn check_dest_file(dest_file: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(dest_file)
        && m.is_dir()
    {
        return Err(RootfsError::Io {
            action: "the squashfs destination is a directory:",
            path: dest_file.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::IsADirectory),
        });
    }
    if let Some(parent) = dest_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::metadata(parent).map_err(io_err("cannot use the destination directory", parent))?;
    }
    Ok(())
}

/// Whether `path` is a squashfs (version 4) image, judged by its first bytes — never by its name.
///
/// `Ok(false)` for anything else (including a directory or a file shorter than a superblock); an error only when
/// `path` cannot be read at all (missing, permission denied).
pub fn is_squashfs(path: &Path) -> Result<bool> {
    let meta = fs::metadata(path).map_err(io_err("cannot read", path))?;
    if !meta.is_file() {
        return Ok(false);
    }
    let mut f = fs::File::open(path).map_err(io_err("cannot open", path))?;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    let mut filled = 0;
    while filled < SUPERBLOCK_LEN {
        match f.read(&mut sb[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("cannot read", path)(e)),
        }
    }
    if filled < SUPERBLOCK_LEN || sb[..4] != SQUASHFS_MAGIC {
        return Ok(false);
    }
    let major = u16::from_le_bytes([sb[MAJOR_OFFSET], sb[MAJOR_OFFSET + 1]]);
    Ok(major == 4)
}

/// Like [`is_squashfs`] but an error naming the file when it is not one, and also when the file is shorter than
/// the size its superblock records (`bytes_used`: a truncated copy or upload).
pub fn ensure_squashfs(path: &Path) -> Result<()> {
    if !is_squashfs(path)? {
        return Err(RootfsError::NotSquashfs {
            path: path.to_path_buf(),
        });
    }
    let mut sb = [0u8; SUPERBLOCK_LEN];
    let mut f = fs::File::open(path).map_err(io_err("cannot open", path))?;
    f.read_exact(&mut sb).map_err(io_err("cannot read", path))?;
    let mut used = [0u8; 8];
    used.copy_from_slice(&sb[BYTES_USED_OFFSET..BYTES_USED_OFFSET + 8]);
    let expected = u64::from_le_bytes(used);
    let size = f.metadata().map_err(io_err("cannot read", path))?.len();
    if size < expected {
        return Err(RootfsError::TruncatedSquashfs {
            path: path.to_path_buf(),
            size,
            expected,
        });
    }
    Ok(())
}

/// Extracts the squashfs image `file` into `dest_dir`, keeping xattrs, ownership and device nodes (run as root
/// for those). `dest_dir` must not exist or be an empty directory. Any error of `unsquashfs`, including the
/// "non-fatal" ones (exit status 2, e.g. an xattr that could not be set), is an error here.
pub fn unsquashfs(file: &Path, dest_dir: &Path) -> Result<()> {
    unsquashfs_paths(file, dest_dir, &[])
}

/// Like [`unsquashfs`] but only the given paths of the image (relative to its `/`, e.g. `boot`, `vmlinuz`),
/// with everything below them. An empty `paths` extracts everything. Paths the image does not hold are skipped.
pub fn unsquashfs_paths(file: &Path, dest_dir: &Path, paths: &[&str]) -> Result<()> {
    extract(file, dest_dir, paths, true)
}

/// Like [`unsquashfs_paths`] but without extended attributes, so that it works unprivileged even when the
/// image carries `security.*` xattrs: for reading files out of an image (its kernel and initrd), not for
/// rebuilding it.
pub fn unsquashfs_paths_without_xattrs(file: &Path, dest_dir: &Path, paths: &[&str]) -> Result<()> {
    extract(file, dest_dir, paths, false)
}

fn extract(file: &Path, dest_dir: &Path, paths: &[&str], xattrs: bool) -> Result<()> {
    ensure_squashfs(file)?;
    let force = match fs::symlink_metadata(dest_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err("cannot use the destination", dest_dir)(e)),
        Ok(m) if !m.is_dir() => {
            return Err(RootfsError::BadDestination {
                path: dest_dir.to_path_buf(),
                reason: "it exists and is not a directory",
            });
        }
        Ok(_) => {
            let mut entries = fs::read_dir(dest_dir).map_err(io_err("cannot list", dest_dir))?;
            if entries.next().is_some() {
                return Err(RootfsError::BadDestination {
                    path: dest_dir.to_path_buf(),
                    reason: "it is not empty",
                });
            }
            true
        }
    };
    let action = format!("extracting {} into {}", file.display(), dest_dir.display());
    let mut cmd: Command = UNSQUASHFS.command();
    cmd.args([
        "-no-progress",
        if xattrs { "-xattrs" } else { "-no-xattrs" },
    ]);
    if force {
        cmd.arg("-f");
    }
    cmd.arg("-d").arg(dest_dir).arg(file);
    for p in paths {
        cmd.arg(p);
    }
    UNSQUASHFS.run(&mut cmd, &action).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips() {
        for c in Compression::ALL {
            assert_eq!(c.to_string().parse::<Compression>().ok(), Some(c));
        }
        assert_eq!("ZSTD".parse::<Compression>().ok(), Some(Compression::Zstd));
        assert_eq!("gz".parse::<Compression>().ok(), Some(Compression::Gzip));
        assert_eq!(Compression::default(), Compression::Zstd);
        let err = "bzip2"
            .parse::<Compression>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("bzip2") && err.contains("zstd"), "{err}");
    }

    #[test]
    fn args_carry_options() {
        let opts = SquashfsOptions {
            compression: Compression::Xz,
            processors: NonZeroUsize::new(3),
            level: None,
        };
        let args = opts.args();
        let joined = args.join(" ");
        assert!(joined.contains("-comp xz"), "{joined}");
        assert!(!joined.contains("-Xcompression-level"), "{joined}");
        let zstd = SquashfsOptions {
            compression: Compression::Zstd,
            processors: None,
            level: Some(6),
        };
        assert!(
            zstd.args()
                .join(" ")
                .contains("-comp zstd -Xcompression-level 6"),
            "{:?}",
            zstd.args()
        );
        assert!(Compression::Zstd.check_level(22).is_ok());
        assert_eq!(
            Compression::Gzip.check_level(12).unwrap_err(),
            "gzip levels are 1 to 9, not 12"
        );
        assert_eq!(
            Compression::Xz.check_level(6).unwrap_err(),
            "xz has no compression level"
        );
        assert!(joined.contains("-processors 3"), "{joined}");
        assert!(
            joined.contains("-xattrs") && joined.contains("-noappend"),
            "{joined}"
        );
    }

    #[test]
    fn is_squashfs_judges_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("image.sqsh");
        fs::write(&fake, b"this is not a squashfs image, whatever its name").expect("write");
        assert!(!is_squashfs(&fake).expect("readable"));
        assert!(matches!(
            ensure_squashfs(&fake),
            Err(RootfsError::NotSquashfs { .. })
        ));
        let short = dir.path().join("short");
        fs::write(&short, b"hsqs").expect("write");
        assert!(!is_squashfs(&short).expect("readable"));
        let mut sb = vec![0u8; 96];
        sb[..4].copy_from_slice(b"hsqs");
        sb[28] = 4;
        let ok = dir.path().join("noext");
        fs::write(&ok, &sb).expect("write");
        assert!(is_squashfs(&ok).expect("readable"));
        assert!(!is_squashfs(dir.path()).expect("a directory is not an image"));
        assert!(matches!(
            is_squashfs(&dir.path().join("missing")),
            Err(RootfsError::Io { .. })
        ));
    }
}
