//! The one error type of this crate. Messages are written for the sysadmin who reads them in a job log or on
//! the terminal: they name the file, the tool and what to do.

use std::path::PathBuf;

/// Everything that can go wrong in `ims-rootfs`.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// An external tool is not installed (or not on `PATH`).
    #[error("`{tool}` was not found on this host: install the Debian package `{package}`")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },

    /// An external tool ran and failed.
    #[error("`{tool}` failed ({status}) while {action}: {stderr_tail}")]
    ToolFailed {
        tool: &'static str,
        /// What we asked the tool to do, e.g. "building /var/tmp/x.squashfs from /var/tmp/root".
        action: String,
        /// "exit status 1", "killed by signal 9", ...
        status: String,
        /// The last lines the tool wrote on its standard error (or a note that it wrote nothing).
        stderr_tail: String,
    },

    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that should be a squashfs image is not one.
    #[error("{} is not a squashfs image (no `hsqs` version 4 superblock at its start), whatever its name says", path.display())]
    NotSquashfs { path: PathBuf },

    /// A squashfs image shorter than its superblock says.
    #[error("{} is a truncated squashfs image: {size} bytes, its superblock says {expected}", path.display())]
    TruncatedSquashfs {
        path: PathBuf,
        size: u64,
        expected: u64,
    },

    /// A file is neither a tar archive nor a compressed one we can read.
    #[error(
        "{} is not a supported archive: expected a tar archive, plain or compressed with gzip, xz or zstd ({detail})",
        path.display()
    )]
    UnsupportedArchive { path: PathBuf, detail: String },

    /// The archive could not be read to its end (truncated, corrupt, wrong compression).
    #[error("{} is corrupt or truncated: {detail}", path.display())]
    CorruptArchive { path: PathBuf, detail: String },

    /// The archive holds a member that would land outside the destination, link to something
    /// outside the archive or be written through a symbolic link.
    #[error(
        "{} holds the unsafe member `{member}` ({reason}); nothing was extracted",
        archive.display()
    )]
    UnsafeArchiveMember {
        archive: PathBuf,
        member: String,
        reason: String,
    },

    /// The destination of an extraction is not usable.
    #[error("cannot extract into {}: {reason}", path.display())]
    BadDestination { path: PathBuf, reason: &'static str },

    /// A file name given by the user (kernel, initrd) is not a plain name under `boot/`.
    #[error("invalid {what} file name `{name}`: {reason}")]
    InvalidFileName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },

    /// A symbolic link inside the image root points outside it.
    #[error(
        "{} in the image root is a link to `{target}`, which leaves the image root; refusing to follow it",
        link.display()
    )]
    LinkEscapesRoot { link: PathBuf, target: String },

    /// Too many symbolic links (a loop) while resolving a path inside the image root.
    #[error("too many levels of symbolic links (a link loop?) while resolving {} in the image root", path.display())]
    LinkLoop { path: PathBuf },

    /// An explicitly named boot file does not exist (or is not a regular file) in the image root.
    #[error("the {what} `{name}` was not found as a regular file in {}", root.join("boot").display())]
    BootFileNotFound {
        what: &'static str,
        name: String,
        root: PathBuf,
    },

    /// No kernel was found at all.
    #[error("no kernel found in the image root {}: looked for {looked_for}", root.display())]
    NoKernel { root: PathBuf, looked_for: String },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = RootfsError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.into();
    move |source| RootfsError::Io {
        action,
        path,
        source,
    }
}
