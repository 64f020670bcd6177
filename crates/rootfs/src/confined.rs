//! The one way IMS touches an untrusted tree (an image root, a recipe): every path is walked one
//! component at a time from a directory descriptor, so nothing the tree holds can lead outside it.
//!
//! The attacker owns the tree: symbolic links to `/` or to host files, `..` chains, links swapped
//! in while we work, FIFOs, device nodes, huge files. The rules:
//!
//! * A [`Root`] is opened once by its (trusted) host path; everything else is reached from its
//!   descriptor. Names given to a [`Dir`] are single components (no `/`, no `.`/`..`, no NUL).
//! * **No link is ever followed** by the write and read operations ([`Root::dir`],
//!   [`Root::create_dirs`], [`Dir::create_new`], [`Dir::read_regular`], [`Dir::replace_file`]…):
//!   each step opens with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
//!   | RESOLVE_NO_XDEV)`, so a link — even one swapped in after it was checked — fails the step
//!   (`ELOOP`, or `ENOTDIR` where a directory is opened), and so does a mount point inside the
//!   tree (`EXDEV`).
//! * [`Root::resolve`] follows links **inside the root only**, as a chroot would (an absolute
//!   target starts again at the root) but stricter: a `..` that would climb above the root is
//!   [`ResolveError::Escapes`] rather than being clamped, more than 40 links is
//!   [`ResolveError::Loop`]. Each link is read with `readlinkat` and its target walked by the same
//!   single-component steps; `..` pops a stack of descriptors already opened, it is never looked
//!   up in the file system. (`openat2`'s own `RESOLVE_IN_ROOT` clamps `..` silently, which would
//!   hide an escaping link instead of reporting it.)
//! * Reading: only regular files (a FIFO never blocks — `O_NONBLOCK`; a device node is refused
//!   before it is opened and again after, by `fstat`), and never more than the caller's limit.
//!
//! Fallback: where `openat2` does not exist (Linux before 5.6, or a seccomp filter answering
//! `ENOSYS` or `EPERM` for it), each step is `openat(O_NOFOLLOW)` instead: links and `..` are confined exactly as
//! above (the walk is the same), but mount points inside the tree are not detected. The choice is
//! made once per process by probing; [`Root::without_openat2`] forces the fallback (for tests).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
pub use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

/// Links followed at most while resolving one path (Linux's limit).
pub const MAX_LINKS: usize = 40;

/// Why [`Root::resolve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A `..` (in the path or in a link's target) would climb above the root.
    #[error("{} is a link to `{target}`, which leaves the root", link.display())]
    Escapes {
        /// The link (its path inside the root, `/`-rooted), or the path itself when no link
        /// was involved.
        link: PathBuf,
        target: String,
    },
    /// More than [`MAX_LINKS`] links.
    #[error("too many levels of symbolic links while resolving {}", path.display())]
    Loop { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What [`Root::resolve`] found.
#[derive(Debug)]
pub struct Resolved {
    /// Its path inside the root, free of links (`boot/vmlinuz-6.1`; empty for the root).
    pub rel: PathBuf,
    /// What it is (never a link).
    pub kind: FileType,
}

impl Resolved {
    pub fn is_file(&self) -> bool {
        self.kind == FileType::RegularFile
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }
}

fn openat2_works() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        !matches!(
            rustix::fs::openat2(
                rustix::fs::CWD,
                ".",
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH,
            ),
            Err(Errno::NOSYS | Errno::PERM)
        )
    })
}

/// A single component: not empty, no `/`, not `.` or `..`, no NUL.
fn check_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a plain file name", name.to_string_lossy()),
        ));
    }
    Ok(name)
}

/// One step below `dir`, never through a link (see the module documentation).
fn step(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    mode: u32,
    openat2: bool,
) -> io::Result<OwnedFd> {
    let name = check_name(name)?;
    let mut flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if !flags.contains(OFlags::PATH) {
        // (openat2 refuses any flag but these three beside O_PATH.)
        flags |= OFlags::NOCTTY;
    }
    let mode = Mode::from_raw_mode(mode);
    if openat2 {
        let how = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        // EAGAIN: a concurrent rename somewhere in the file system; the kernel asks to retry.
        for _ in 0..16 {
            match rustix::fs::openat2(dir, name, flags, mode, how) {
                Err(Errno::AGAIN) => continue,
                r => return Ok(r?),
            }
        }
        return Err(Errno::AGAIN.into());
    }
    Ok(rustix::fs::openat(dir, name, flags, mode)?)
}

/// A tree that is not trusted, opened by a trusted host path.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    top: Dir,
}

/// A directory inside a [`Root`], reached without following any link.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// Its path inside the root (empty for the root).
    rel: PathBuf,
    openat2: bool,
}

/// The components of a relative path inside a root: plain names only (`.` and empty ones
/// dropped; `..` and absolute paths refused).
fn plain_components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(check_name(n)?),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad path {:?} (relative, without `..`)", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

impl Root {
    /// Opens the directory `path` (the host's own path to the tree: links in it are the host's
    /// and are followed).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            path: path.to_path_buf(),
            top: Dir {
                fd,
                rel: PathBuf::new(),
                openat2: openat2_works(),
            },
        })
    }

    /// The same root, walked with `openat(O_NOFOLLOW)` steps as where `openat2` is missing.
    pub fn without_openat2(mut self) -> Root {
        self.top.openat2 = false;
        self
    }

    /// The host path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host path of `rel` inside it (for messages and for tools that take paths).
    pub fn host_path(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// The root directory itself.
    pub fn top(&self) -> &Dir {
        &self.top
    }

    /// The existing directory `rel` (plain components, no link on the way).
    pub fn dir(&self, rel: &Path) -> io::Result<Dir> {
        let mut cur = self.top.try_clone()?;
        for c in plain_components(rel)? {
            cur = cur.open_dir(c)?;
        }
        Ok(cur)
    }

    /// The directory `rel`, each missing component created with `mode`; `created` is called
    /// with the path inside the root of each one made. Anything on the way that is not a real
    /// directory (a link, a file) is an error.
    pub fn create_dirs(
        &self,
        rel: &Path,
        mode: u32,
        mut created: impl FnMut(&Path),
    ) -> io::Result<Dir> {
        let mut cur = self.top.try_clone()?;
        for c in plain_components(rel)? {
            cur = match cur.open_dir(c) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match cur.mkdir(c, mode) {
                        Ok(()) => created(&cur.rel.join(c)),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    cur.open_dir(c)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    /// Follows `path` (inside the tree; absolute or relative to its top) through the tree's
    /// links, as if the root were `/`. `Ok(None)`: it names nothing (missing, or a path through
    /// a file). See the module documentation for the rules.
    pub fn resolve(&self, path: &Path) -> Result<Option<Resolved>, ResolveError> {
        // Components still to walk, in reverse order; "" is the root marker.
        let mut queue: Vec<OsString> = Vec::new();
        push_components(&mut queue, path);
        // Directories opened below the top: (descriptor, name).
        let mut stack: Vec<Dir> = Vec::new();
        let mut links = 0usize;
        let mut last_link: Option<(PathBuf, String)> = None;
        let in_root = |stack: &[Dir], name: &OsStr| {
            let base = stack.last().map_or(Path::new(""), |d| d.rel.as_path());
            Path::new("/").join(base).join(name)
        };
        while let Some(c) = queue.pop() {
            if c.is_empty() {
                stack.clear();
                continue;
            }
            if c == "." {
                continue;
            }
            if c == ".." {
                if stack.pop().is_none() {
                    let (link, target) = last_link
                        .clone()
                        .unwrap_or_else(|| (Path::new("/").join(path), path.display().to_string()));
                    return Err(ResolveError::Escapes { link, target });
                }
                continue;
            }
            let parent = stack.last().unwrap_or(&self.top);
            let io = |source: io::Error| ResolveError::Io {
                path: in_root(&stack, &c),
                source,
            };
            let st = match parent.stat(&c) {
                Ok(st) => st,
                Err(e) if gone(&e) => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            let kind = FileType::from_raw_mode(st.st_mode);
            if kind == FileType::Symlink {
                links += 1;
                if links > MAX_LINKS {
                    return Err(ResolveError::Loop {
                        path: in_root(&stack, &c),
                    });
                }
                let target = match parent.read_link(&c) {
                    Ok(t) => t,
                    // Replaced by something else meanwhile: look at it again.
                    Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                        queue.push(c);
                        continue;
                    }
                    Err(e) if gone(&e) => return Ok(None),
                    Err(e) => return Err(io(e)),
                };
                last_link = Some((in_root(&stack, &c), target.display().to_string()));
                push_components(&mut queue, &target);
                continue;
            }
            if kind == FileType::Directory {
                match parent.open_dir_path(&c) {
                    Ok(d) => stack.push(d),
                    // Removed, or swapped for a link or a file, since the stat.
                    Err(e) if gone(&e) => return Ok(None),
                    Err(e) => return Err(io(e)),
                }
            } else if queue.iter().any(|q| q != ".") {
                // A path through a file names nothing.
                return Ok(None);
            } else {
                // Only `.` may follow (a root marker starts a link's target, never follows a
                // name): this file is what the path names.
                let rel = stack
                    .last()
                    .map_or(PathBuf::new(), |d| d.rel.clone())
                    .join(&c);
                return Ok(Some(Resolved { rel, kind }));
            }
        }
        Ok(Some(Resolved {
            rel: stack.last().map_or(PathBuf::new(), |d| d.rel.clone()),
            kind: FileType::Directory,
        }))
    }
}

/// Missing, or a path through something that is not a directory.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Pushes the components of `p` onto the reverse-ordered queue (an absolute path starts with
/// the root marker "").
fn push_components(queue: &mut Vec<OsString>, p: &Path) {
    let mut comps: Vec<OsString> = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => comps.push(OsString::new()),
            Component::CurDir => comps.push(OsString::from(".")),
            Component::ParentDir => comps.push(OsString::from("..")),
            Component::Normal(n) => comps.push(n.to_os_string()),
        }
    }
    queue.extend(comps.into_iter().rev());
}

/// How [`Dir::create_new`] makes a file.
const NEW_FILE: u32 = 0o600;

impl Dir {
    /// Its path inside the root (empty for the root).
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    fn child(&self, name: &OsStr, fd: OwnedFd) -> Dir {
        Dir {
            fd,
            rel: self.rel.join(name),
            openat2: self.openat2,
        }
    }

    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            rel: self.rel.clone(),
            openat2: self.openat2,
        })
    }

    /// The directory `name` below this one (`ENOTDIR` for a link or anything else that is not
    /// a directory, `EXDEV` for a mount point where `openat2` is used).
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = step(
            self.fd.as_fd(),
            name,
            OFlags::RDONLY | OFlags::DIRECTORY,
            0,
            self.openat2,
        )?;
        Ok(self.child(name, fd))
    }

    /// As [`Dir::open_dir`], but only for walking further (an `O_PATH` descriptor).
    fn open_dir_path(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = step(
            self.fd.as_fd(),
            name,
            OFlags::PATH | OFlags::DIRECTORY,
            0,
            self.openat2,
        )?;
        Ok(self.child(name, fd))
    }

    /// `lstat` of `name` (a link is described, not followed).
    pub fn stat(&self, name: &OsStr) -> io::Result<Stat> {
        Ok(rustix::fs::statat(
            &self.fd,
            check_name(name)?,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// What `name` is, `None` if nothing is there.
    pub fn kind(&self, name: &OsStr) -> io::Result<Option<FileType>> {
        match self.stat(name) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The target of the link `name`.
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        let t = rustix::fs::readlinkat(&self.fd, check_name(name)?, Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(t.into_bytes())))
    }

    /// Makes the directory `name` (`EEXIST` if anything is there).
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.fd,
            check_name(name)?,
            Mode::from_raw_mode(mode),
        )?)
    }

    /// Makes the symbolic link `name` → `target` (the target is only stored, never followed).
    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        let target = CString::new(target.as_bytes())?;
        Ok(rustix::fs::symlinkat(&target, &self.fd, check_name(name)?)?)
    }

    /// Makes `name` another name of the file `from_name` in `from` (never following a link).
    pub fn hard_link(&self, from: &Dir, from_name: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            &from.fd,
            check_name(from_name)?,
            &self.fd,
            check_name(name)?,
            AtFlags::empty(),
        )?)
    }

    /// A new regular file `name`, never an existing entry, never through a link (mode 0600
    /// until the caller sets its own).
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        step(
            self.fd.as_fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            NEW_FILE,
            self.openat2,
        )
        .map(File::from)
    }

    /// The existing regular file `name`, open for reading. Anything else (a link, a FIFO, a
    /// device, a directory) is refused with `InvalidInput`; a FIFO swapped in after the check
    /// does not block (`O_NONBLOCK`) and is refused after the open.
    pub fn open_regular(&self, name: &OsStr) -> io::Result<File> {
        let not_regular = |kind: FileType| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                match kind {
                    FileType::Symlink => "is a symbolic link",
                    FileType::Directory => "is a directory",
                    _ => "is not a regular file",
                },
            )
        };
        let before = FileType::from_raw_mode(self.stat(name)?.st_mode);
        if before != FileType::RegularFile {
            return Err(not_regular(before));
        }
        let fd = step(
            self.fd.as_fd(),
            name,
            OFlags::RDONLY | OFlags::NONBLOCK,
            0,
            self.openat2,
        )?;
        let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
        if kind != FileType::RegularFile {
            return Err(not_regular(kind));
        }
        Ok(File::from(fd))
    }

    /// The contents of the regular file `name` (as [`Dir::open_regular`]), at most `max` bytes:
    /// a larger file is an error (`FileTooLarge`), found without reading it all.
    pub fn read_regular(&self, name: &OsStr, max: u64) -> io::Result<(Vec<u8>, Stat)> {
        let f = self.open_regular(name)?;
        let st = rustix::fs::fstat(&f)?;
        let too_large = |size: u64| {
            io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("is {size} bytes, more than {max}"),
            )
        };
        if st.st_size as u64 > max {
            return Err(too_large(st.st_size as u64));
        }
        let mut data = Vec::with_capacity(st.st_size as usize);
        // It may grow meanwhile: never more than the limit is read.
        f.take(max + 1).read_to_end(&mut data)?;
        if data.len() as u64 > max {
            return Err(too_large(data.len() as u64));
        }
        Ok((data, st))
    }

    /// Replaces `name` atomically with a regular file holding `data` with `mode`: a new file
    /// beside it, renamed over it. Whatever was there (a link included) is replaced, never
    /// written through; a directory there is an error.
    pub fn replace_file(&self, name: &OsStr, data: &[u8], mode: u32) -> io::Result<()> {
        let name = check_name(name)?;
        if self.kind(name)? == Some(FileType::Directory) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".ims-new-{}", std::process::id()));
        let _ = self.remove_file(&tmp);
        let mut f = self.create_new(&tmp)?;
        let written = (|| {
            f.write_all(data)?;
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))?;
            f.sync_all()?;
            self.rename(&tmp, name)
        })();
        if written.is_err() {
            let _ = self.remove_file(&tmp);
        }
        written
    }

    /// Renames `old` to `new`, both in this directory (a link is moved as a link).
    pub fn rename(&self, old: &OsStr, new: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(
            &self.fd,
            check_name(old)?,
            &self.fd,
            check_name(new)?,
        )?)
    }

    /// Removes the entry `name` that is not a directory (a link itself, never its target).
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            &self.fd,
            check_name(name)?,
            AtFlags::empty(),
        )?)
    }

    /// Removes the empty directory `name` (not a link to one).
    pub fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            &self.fd,
            check_name(name)?,
            AtFlags::REMOVEDIR,
        )?)
    }

    /// Removes `name` with everything below it, never following a link.
    pub fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        match self.kind(name)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                let d = self.open_dir(name)?;
                d.remove_contents()?;
                self.remove_dir(name)
            }
            Some(_) => self.remove_file(name),
        }
    }

    /// Removes everything inside this directory (it stays), never following a link.
    pub fn remove_contents(&self) -> io::Result<()> {
        for name in self.list()? {
            self.remove_all(&name)?;
        }
        Ok(())
    }

    /// Calls `f` with each entry of this directory (without `.` and `..`) and the type the
    /// directory listing gives (`Unknown` on file systems that do not say).
    fn each_entry(
        &self,
        mut f: impl FnMut(OsString, FileType) -> io::Result<()>,
    ) -> io::Result<()> {
        for e in rustix::fs::Dir::read_from(&self.fd)? {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                f(OsString::from_vec(name.to_vec()), e.file_type())?;
            }
        }
        Ok(())
    }

    /// The names in this directory (without `.` and `..`), in no particular order.
    pub fn list(&self) -> io::Result<Vec<OsString>> {
        let mut out = Vec::new();
        self.each_entry(|name, _| {
            out.push(name);
            Ok(())
        })?;
        Ok(out)
    }

    /// The entries of this directory with what each is (never followed), in no particular order:
    /// the type from the listing itself, a `stat` only where the file system does not give it.
    /// An entry gone before it could be looked at is left out.
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileType)>> {
        let mut out = Vec::new();
        self.each_entry(|name, kind| {
            let kind = match kind {
                FileType::Unknown => match self.kind(&name)? {
                    Some(k) => k,
                    None => return Ok(()),
                },
                k => k,
            };
            out.push((name, kind));
            Ok(())
        })?;
        Ok(out)
    }

    /// This directory as a file (to set its mode and times).
    pub fn as_file(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Each test runs with `openat2` and with the fallback.
    fn roots(p: &Path) -> Vec<Root> {
        vec![
            Root::open(p).unwrap(),
            Root::open(p).unwrap().without_openat2(),
        ]
    }

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn openat2_is_there_on_this_kernel() {
        // CI runs on this machine's kernel (6.x): the main path is the one tested.
        assert!(openat2_works());
    }

    #[test]
    fn links_to_the_host_are_never_followed_for_writes_or_reads() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), "keep").unwrap();
        symlink(outside.path(), d.path().join("etc")).unwrap();
        symlink("/", d.path().join("hostroot")).unwrap();
        symlink(outside.path().join("victim"), d.path().join("file")).unwrap();
        for root in roots(d.path()) {
            for rel in ["etc", "etc/cray", "hostroot/tmp"] {
                // ENOTDIR (O_DIRECTORY is judged first) or ELOOP.
                let link = [Errno::NOTDIR, Errno::LOOP].map(|e| Some(e.raw_os_error()));
                let e = root.dir(Path::new(rel)).unwrap_err();
                assert!(link.contains(&e.raw_os_error()), "{rel}: {e}");
                let e = root.create_dirs(Path::new(rel), 0o755, |_| {}).unwrap_err();
                assert!(link.contains(&e.raw_os_error()), "{rel}: {e}");
            }
            let e = root.top().open_regular(os("file")).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            assert!(root.top().create_new(os("file")).is_err());
            // Replacing a link replaces the link, not its target.
            root.top().replace_file(os("file"), b"new", 0o644).unwrap();
            assert_eq!(
                std::fs::read_to_string(outside.path().join("victim")).unwrap(),
                "keep"
            );
            assert_eq!(std::fs::read(d.path().join("file")).unwrap(), b"new");
            std::fs::remove_file(d.path().join("file")).unwrap();
            symlink(outside.path().join("victim"), d.path().join("file")).unwrap();
        }
        assert!(std::fs::read_dir(outside.path()).unwrap().count() == 1);
    }

    #[test]
    fn names_and_paths_cannot_climb() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        for root in roots(d.path()) {
            for bad in ["..", ".", "a/b", "", "x\0y"] {
                assert!(root.top().open_dir(os(bad)).is_err(), "{bad:?}");
                assert!(root.top().create_new(os(bad)).is_err(), "{bad:?}");
            }
            for bad in ["../x", "a/../../x", "/etc", "a/.."] {
                let e = root.dir(Path::new(bad)).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
            }
            assert_eq!(root.dir(Path::new("./a/.")).unwrap().rel(), Path::new("a"));
        }
    }

    #[test]
    fn resolving_stays_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("boot")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("boot/vmlinuz-1"), "k").unwrap();
        std::fs::write(r.join("etc/hostname"), "h").unwrap();
        symlink("vmlinuz-1", r.join("boot/vmlinuz")).unwrap();
        symlink("/etc/hostname", r.join("boot/abs")).unwrap();
        symlink("../../../../../etc/passwd", r.join("boot/up")).unwrap();
        symlink("/", r.join("boot/top")).unwrap();
        symlink("loop2", r.join("boot/loop1")).unwrap();
        symlink("/boot/loop1", r.join("boot/loop2")).unwrap();
        symlink("/boot", r.join("bootlink")).unwrap();
        for root in roots(r) {
            let res = |p: &str| root.resolve(Path::new(p));
            let found = |p: &str| res(p).unwrap().map(|x| x.rel);
            assert_eq!(found("boot/vmlinuz"), Some(PathBuf::from("boot/vmlinuz-1")));
            assert_eq!(
                found("/boot/vmlinuz"),
                Some(PathBuf::from("boot/vmlinuz-1"))
            );
            // An absolute target is the root's own file, never the host's.
            assert_eq!(found("boot/abs"), Some(PathBuf::from("etc/hostname")));
            assert_eq!(
                found("bootlink/top/bootlink/vmlinuz"),
                Some(PathBuf::from("boot/vmlinuz-1"))
            );
            assert_eq!(found("boot/top").unwrap(), PathBuf::new());
            assert_eq!(res("boot").unwrap().unwrap().kind, FileType::Directory);
            assert_eq!(
                res("boot/vmlinuz").unwrap().unwrap().kind,
                FileType::RegularFile
            );
            assert!(found("boot/missing").is_none());
            assert!(found("boot/vmlinuz-1/x").is_none());
            let e = res("boot/up").unwrap_err();
            assert!(
                matches!(&e, ResolveError::Escapes { target, .. } if target == "../../../../../etc/passwd"),
                "{e}"
            );
            assert!(matches!(res("../etc"), Err(ResolveError::Escapes { .. })));
            assert!(matches!(res("boot/loop1"), Err(ResolveError::Loop { .. })));
        }
    }

    #[test]
    fn fifos_devices_and_directories_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let fifo = CString::new(d.path().join("fifo").as_os_str().as_bytes()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        // A device node needs root to make; a link to one (the host's /dev/zero) is refused
        // as a link, and the device itself as not a regular file.
        symlink("/dev/zero", d.path().join("zero")).unwrap();
        for root in roots(d.path()) {
            // Would block forever if the FIFO were opened for reading without O_NONBLOCK.
            let e = root.top().open_regular(os("fifo")).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
            let e = root.top().open_regular(os("dir")).unwrap_err();
            assert!(e.to_string().contains("directory"), "{e}");
            let e = root.top().open_regular(os("zero")).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        let dev = Root::open(Path::new("/dev")).unwrap();
        let e = dev.top().open_regular(os("null")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = dev.top().read_regular(os("zero"), 10).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn huge_files_are_refused_without_being_read() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join("huge")).unwrap();
        // Sparse: 1 TiB that takes no space.
        f.set_len(1 << 40).unwrap();
        std::fs::write(d.path().join("small"), "12345").unwrap();
        for root in roots(d.path()) {
            let e = root.top().read_regular(os("huge"), 1 << 20).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
            assert_eq!(root.top().read_regular(os("small"), 5).unwrap().0, b"12345");
            let e = root.top().read_regular(os("small"), 4).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
        }
    }

    #[test]
    fn a_link_swapped_in_after_the_check_is_not_followed() {
        // A directory checked, then replaced by a link to the outside before the write: the
        // write goes through the descriptor opened before the swap, or fails; never outside.
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        for root in roots(d.path()) {
            let etc = root.dir(Path::new("etc")).unwrap();
            std::fs::rename(d.path().join("etc"), d.path().join("etc.moved")).unwrap();
            symlink(outside.path(), d.path().join("etc")).unwrap();
            etc.replace_file(os("resolv.conf"), b"x", 0o644).unwrap();
            assert!(d.path().join("etc.moved/resolv.conf").is_file());
            assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
            // Walking again finds the link and stops.
            assert!(root.dir(Path::new("etc")).is_err());
            std::fs::remove_file(d.path().join("etc")).unwrap();
            std::fs::rename(d.path().join("etc.moved"), d.path().join("etc")).unwrap();
        }
        // Swapped many times while another thread walks: never a file outside.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let base = d.path().to_path_buf();
        let out = outside.path().to_path_buf();
        let flipper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                    let _ = std::fs::rename(base.join("etc"), base.join("etc.real"));
                    let _ = symlink(&out, base.join("etc"));
                    let _ = std::fs::remove_file(base.join("etc"));
                    let _ = std::fs::rename(base.join("etc.real"), base.join("etc"));
                    n += 1;
                }
            })
        };
        for root in roots(d.path()) {
            for i in 0..200 {
                if let Ok(etc) = root.create_dirs(Path::new("etc"), 0o755, |_| {}) {
                    let _ = etc.replace_file(os(&format!("f{i}")), b"x", 0o644);
                }
                let _ = root.resolve(Path::new("etc/f1"));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn mount_points_inside_are_not_crossed_with_openat2() {
        // /proc is a mount point below /: openat2 refuses to step onto it, the fallback cannot
        // tell.
        let root = Root::open(Path::new("/")).unwrap();
        let e = root.dir(Path::new("proc")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::XDEV.raw_os_error()), "{e}");
        assert!(root.without_openat2().dir(Path::new("proc")).is_ok());
    }

    #[test]
    fn removing_never_follows_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "k").unwrap();
        for root in roots(d.path()) {
            std::fs::create_dir_all(d.path().join("a/b")).unwrap();
            std::fs::write(d.path().join("a/b/f"), "x").unwrap();
            symlink(outside.path(), d.path().join("a/out")).unwrap();
            symlink(outside.path(), d.path().join("top")).unwrap();
            let mut names = root.top().list().unwrap();
            names.sort();
            assert_eq!(names, [os("a"), os("top")]);
            // entries() says what each is without following links.
            let mut entries = root.dir(Path::new("a")).unwrap().entries().unwrap();
            entries.sort_by(|x, y| x.0.cmp(&y.0));
            assert_eq!(
                entries,
                [
                    (os("b").to_owned(), FileType::Directory),
                    (os("out").to_owned(), FileType::Symlink)
                ]
            );
            // remove_dir takes only a real, empty directory, never a link to one.
            std::fs::create_dir(outside.path().join("empty")).unwrap();
            symlink(outside.path().join("empty"), d.path().join("a/empty")).unwrap();
            assert!(
                root.dir(Path::new("a"))
                    .unwrap()
                    .remove_dir(os("empty"))
                    .is_err()
            );
            assert!(root.top().remove_dir(os("a")).is_err());
            root.top().remove_contents().unwrap();
            assert!(root.top().list().unwrap().is_empty());
            assert!(outside.path().join("keep").is_file());
            std::fs::remove_dir(outside.path().join("empty")).unwrap();
        }
    }

    #[test]
    fn created_directories_are_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("file"), "").unwrap();
        let root = Root::open(d.path()).unwrap();
        let mut made = Vec::new();
        let dir = root
            .create_dirs(Path::new("etc/cray/ca"), 0o755, |p| {
                made.push(p.to_path_buf())
            })
            .unwrap();
        assert_eq!(made, [Path::new("etc/cray"), Path::new("etc/cray/ca")]);
        assert_eq!(dir.rel(), Path::new("etc/cray/ca"));
        let e = root
            .create_dirs(Path::new("file/x"), 0o755, |_| {})
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
    }
}
