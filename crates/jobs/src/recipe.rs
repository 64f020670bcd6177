//! The recipe of a create job: the archive unpacked safely, then optionally templated.
//!
//! * [`extract`] unpacks `recipe.tar.gz` (or a plain tar; gzip is told by its magic bytes, not by
//!   the name) into an existing empty directory, in Rust, checking every member before anything is
//!   written: relative names without `..`, symbolic links that stay inside the recipe (resolved
//!   the way the kernel would, through the links extracted before them and after), hard links only
//!   to regular files extracted before, nothing but directories, files and links, no write ever
//!   through a link (every directory is opened component by component without following links,
//!   every file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`), limits on sizes, member count and
//!   compression ratio counted on the bytes really read and written. Setuid/setgid bits are
//!   dropped, ownership is not restored. Any error leaves the directory empty. (The original runs
//!   `tarfile.extractall` unfiltered, so a recipe could write anywhere.)
//! * [`render_templates`] renders the files listed in `.ims_recipe_template.yaml` with the job's
//!   `template_dictionary` (Jinja2 syntax, via minijinja; an undefined variable is an error, no
//!   auto-escaping even for `.xml`, one trailing newline dropped as Jinja2 does), in place,
//!   atomically, keeping each file's mode. Includes and imports load only files inside the recipe.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The file that lists the recipe's templates (relative to the recipe).
pub const TEMPLATE_LIST: &str = ".ims_recipe_template.yaml";

/// Compression ratios are judged only past this many bytes, so tiny archives (a tar pads to
/// 10 KiB of zeros) are never refused for compressing well.
const RATIO_FLOOR: u64 = 1024 * 1024;
/// Headers and extension data (long names, pax records, sparse maps, skipped data of
/// non-files) read between two members.
const META_BUDGET: u64 = 1024 * 1024;
/// Symbolic links followed while resolving one link target (the kernel's limit).
const MAX_HOPS: u32 = 40;
/// Largest template file rendered.
const MAX_TEMPLATE: u64 = 64 * 1024 * 1024;

/// Limits on what an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All regular files together, in bytes.
    pub max_total_bytes: u64,
    /// Members of the archive, of any kind.
    pub max_entries: u64,
    /// One regular file, in bytes.
    pub max_file_bytes: u64,
    /// Unpacked bytes per byte of the archive file.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_total_bytes: 1 << 30,
            max_entries: 100_000,
            max_file_bytes: 512 << 20,
            max_ratio: 200,
        }
    }
}

/// What [`extract`] unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files (hard links not included).
    pub files: u64,
    /// Directories created (listed or implied by a member's path).
    pub dirs: u64,
    /// Symbolic and hard links.
    pub links: u64,
    /// Bytes written into regular files.
    pub bytes: u64,
}

/// Unpacks the recipe archive `archive` into `dest`, an existing empty directory. On any error
/// everything written inside `dest` is removed again (`dest` itself stays, empty).
pub fn extract(archive: &Path, dest: &Path, limits: &Limits) -> Result<Extracted, String> {
    let root =
        open_path_dir(dest).map_err(|e| format!("recipe directory {}: {e}", dest.display()))?;
    let mut listing =
        std::fs::read_dir(dest).map_err(|e| format!("recipe directory {}: {e}", dest.display()))?;
    if listing.next().is_some() {
        return Err(format!("recipe directory {} is not empty", dest.display()));
    }
    match unpack(archive, root, limits) {
        Ok(done) => Ok(done),
        Err(e) => match empty_dir(dest) {
            Ok(()) => Err(e),
            Err(c) => Err(format!("{e} (and removing what was unpacked failed: {c})")),
        },
    }
}

fn unpack(archive: &Path, root: OwnedFd, limits: &Limits) -> Result<Extracted, String> {
    let mut file =
        File::open(archive).map_err(|e| format!("recipe archive {}: {e}", archive.display()))?;
    let compressed = file
        .metadata()
        .map_err(|e| format!("recipe archive {}: {e}", archive.display()))?
        .len()
        .max(1);
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic)
        .map_err(|e| format!("recipe archive {}: {e}", archive.display()))?;
    let head = io::Cursor::new(magic[..got].to_vec());
    let raw = head.chain(io::BufReader::with_capacity(256 * 1024, file));
    let stream: Box<dyn Read> = if got == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let meter = Rc::new(Meter::new(compressed, limits.max_ratio));
    let counted = Counted {
        inner: stream,
        meter: meter.clone(),
    };
    let mut unpacker = Unpacker {
        root,
        limits: *limits,
        compressed,
        meter,
        kinds: HashMap::new(),
        done: Extracted::default(),
    };
    unpacker.run(counted)?;
    unpacker.check_all_links()?;
    unpacker.finish_dirs()?;
    Ok(unpacker.done)
}

/// The message for a member that could not be created: a name taken by an earlier member is
/// refused as such (members never replace each other).
fn create_error(e: io::Error, what: &str) -> String {
    if e.raw_os_error() == Some(libc::EEXIST) {
        "already exists (members may not replace each other)".to_string()
    } else {
        format!("{what}: {e}")
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Counts the bytes of the (decompressed) tar stream, and stops it when a limit is passed.
struct Meter {
    read: std::cell::Cell<u64>,
    /// Stream position up to which the headers before the next member may read.
    budget_end: std::cell::Cell<u64>,
    ratio_cap: u64,
    max_ratio: u64,
    /// Why the stream was stopped, for the error message.
    tripped: std::cell::RefCell<Option<String>>,
}

impl Meter {
    fn new(compressed: u64, max_ratio: u64) -> Meter {
        Meter {
            read: 0.into(),
            budget_end: u64::MAX.into(),
            ratio_cap: compressed.saturating_mul(max_ratio),
            max_ratio,
            tripped: None.into(),
        }
    }

    fn trip(&self, why: String) -> io::Error {
        let e = io::Error::other(why.clone());
        *self.tripped.borrow_mut() = Some(why);
        e
    }

    /// The reason a read failed: the limit that stopped it, or the error itself.
    fn explain(&self, e: &io::Error) -> String {
        match &*self.tripped.borrow() {
            Some(why) => why.clone(),
            None => e.to_string(),
        }
    }
}

struct Counted<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        if m.tripped.borrow().is_some() {
            return Err(io::Error::other("stopped"));
        }
        let n = self.inner.read(buf)?;
        let total = m.read.get() + n as u64;
        m.read.set(total);
        if total > m.budget_end.get() {
            return Err(m.trip(format!(
                "more than {META_BUDGET} bytes of headers, extension records or skipped data \
                 before the next member"
            )));
        }
        if total > RATIO_FLOOR && total > m.ratio_cap {
            return Err(m.trip(format!(
                "the recipe unpacks to more than {} times the archive's size",
                m.max_ratio
            )));
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir { mode: u32, mtime: Option<u64> },
    File,
    Symlink(Vec<u8>),
}

struct Unpacker {
    root: OwnedFd,
    limits: Limits,
    compressed: u64,
    meter: Rc<Meter>,
    /// Everything created, by normalised path (`a/b/c`).
    kinds: HashMap<Vec<u8>, Kind>,
    done: Extracted,
}

/// A member's name as shown in errors.
fn shown(raw: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(raw))
}

/// Splits a member name into its components: relative, no `..`, no NUL; `.` and empty
/// components (a `./` prefix, `a//b`, a trailing `/`) dropped.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    if raw[0] == b'/' {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("leaves the recipe directory"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn cstr(b: &[u8]) -> CString {
    // Callers checked for NUL bytes already.
    CString::new(b).unwrap_or_default()
}

impl Unpacker {
    fn run<R: Read>(&mut self, stream: Counted<R>) -> Result<(), String> {
        let mut archive = tar::Archive::new(stream);
        let mut entries = archive
            .entries()
            .map_err(|e| format!("recipe archive: {}", self.meter.explain(&e)))?;
        let mut previous: Option<String> = None;
        let mut count = 0u64;
        loop {
            // Between two members only headers and extension records are read.
            self.meter
                .budget_end
                .set(self.meter.read.get().saturating_add(META_BUDGET));
            let next = entries.next();
            self.meter.budget_end.set(u64::MAX);
            let mut entry = match next {
                None => return Ok(()),
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    let why = self.meter.explain(&e);
                    return Err(match &previous {
                        Some(p) => format!("recipe archive: after member {p}: {why}"),
                        None => format!("recipe archive: {why}"),
                    });
                }
            };
            count += 1;
            let raw = entry.path_bytes().into_owned();
            let name = shown(&raw);
            if count > self.limits.max_entries {
                return Err(format!(
                    "recipe archive: member {name}: more than {} members",
                    self.limits.max_entries
                ));
            }
            self.member(&mut entry, &raw)
                .map_err(|why| format!("recipe archive: member {name}: {why}"))?;
            previous = Some(name);
        }
    }

    fn member<R: Read>(&mut self, entry: &mut tar::Entry<R>, raw: &[u8]) -> Result<(), String> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader) {
            // pax global records: metadata only.
            return Ok(());
        }
        let comps = components(raw)?;
        let mode = entry
            .header()
            .mode()
            .map_err(|e| format!("bad mode: {e}"))?
            & 0o1777;
        let mtime = entry.header().mtime().ok();
        let is_dir = matches!(kind, T::Directory)
            || (matches!(kind, T::Regular) && raw.ends_with(b"/") && entry.size() == 0);
        if comps.is_empty() {
            if is_dir {
                // `./`: the recipe directory itself, which exists already.
                return Ok(());
            }
            return Err("empty name".into());
        }
        let (leaf, parents) = comps.split_last().expect("not empty");
        if is_dir {
            return self.directory(&comps, mode, mtime);
        }
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let dir = self.parent(parents)?;
                self.file(entry, &dir, leaf, &comps, mode, mtime)
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or("symbolic link without a target")?
                    .into_owned();
                self.symlink(parents, leaf, &comps, &target)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or("hard link without a target")?
                    .into_owned();
                self.hardlink(parents, leaf, &comps, &target)
            }
            T::Char => Err("character devices are not allowed".into()),
            T::Block => Err("block devices are not allowed".into()),
            T::Fifo => Err("FIFOs are not allowed".into()),
            other => Err(format!(
                "members of type {:?} are not allowed (only directories, files and links)",
                other.as_byte() as char
            )),
        }
    }

    /// Opens (creating as needed) the directory `comps` below the root, one component at a time,
    /// never through a symbolic link.
    fn parent(&mut self, comps: &[&[u8]]) -> Result<OwnedFd, String> {
        let mut cur = dup(self.root.as_fd()).map_err(|e| format!("recipe directory: {e}"))?;
        for (i, c) in comps.iter().enumerate() {
            let name = cstr(c);
            cur = match open_dir_at(cur.as_fd(), &name) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match mkdir_at(cur.as_fd(), &name, 0o700) {
                        Ok(()) => {
                            self.done.dirs += 1;
                            self.kinds.insert(
                                join(&comps[..=i]),
                                Kind::Dir {
                                    mode: 0o755,
                                    mtime: None,
                                },
                            );
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(format!("cannot create {}: {e}", shown(c))),
                    }
                    open_dir_at(cur.as_fd(), &name)
                        .map_err(|e| self.not_a_dir(&cur, &name, &comps[..=i], e))?
                }
                Err(e) => return Err(self.not_a_dir(&cur, &name, &comps[..=i], e)),
            };
        }
        Ok(cur)
    }

    fn not_a_dir(&self, dir: &OwnedFd, name: &CStr, path: &[&[u8]], e: io::Error) -> String {
        let p = shown(&join(path));
        match lstat_at(dir.as_fd(), name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                format!("goes through the symbolic link {p}")
            }
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                format!("{p} is not a directory")
            }
            _ => format!("cannot open the directory {p}: {e}"),
        }
    }

    fn directory(&mut self, comps: &[&[u8]], mode: u32, mtime: Option<u64>) -> Result<(), String> {
        let (leaf, parents) = comps.split_last().expect("not empty");
        let dir = self.parent(parents)?;
        let name = cstr(leaf);
        match mkdir_at(dir.as_fd(), &name, 0o700) {
            Ok(()) => self.done.dirs += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Allowed only for a directory that is already there (a repeated entry, or one
                // created for an earlier member's path).
                match lstat_at(dir.as_fd(), &name) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    _ => return Err("already exists and is not a directory".into()),
                }
            }
            Err(e) => return Err(format!("cannot create the directory: {e}")),
        }
        self.kinds.insert(join(comps), Kind::Dir { mode, mtime });
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        dir: &OwnedFd,
        leaf: &[u8],
        comps: &[&[u8]],
        mode: u32,
        mtime: Option<u64>,
    ) -> Result<(), String> {
        let size = entry.size();
        let l = self.limits;
        if size > l.max_file_bytes {
            return Err(format!(
                "is {size} bytes, more than the limit of {} per file",
                l.max_file_bytes
            ));
        }
        if size > l.max_total_bytes.saturating_sub(self.done.bytes) {
            return Err(format!(
                "is {size} bytes, which takes the recipe over its limit of {} bytes",
                l.max_total_bytes
            ));
        }
        let name = cstr(leaf);
        let mut out =
            create_excl_at(dir.as_fd(), &name).map_err(|e| create_error(e, "cannot create"))?;
        self.kinds.insert(join(comps), Kind::File);
        self.done.files += 1;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.meter.explain(&e)),
            };
            let n64 = n as u64;
            if got + n64 > l.max_file_bytes {
                return Err(format!(
                    "more than the limit of {} bytes per file",
                    l.max_file_bytes
                ));
            }
            let total = self.done.bytes + n64;
            if total > l.max_total_bytes {
                return Err(format!(
                    "the recipe unpacks to more than its limit of {} bytes",
                    l.max_total_bytes
                ));
            }
            if total > RATIO_FLOOR && total > self.compressed.saturating_mul(l.max_ratio) {
                return Err(format!(
                    "the recipe unpacks to more than {} times the archive's size",
                    l.max_ratio
                ));
            }
            out.write_all(&buf[..n])
                .map_err(|e| format!("cannot write: {e}"))?;
            got += n64;
            self.done.bytes = total;
        }
        if got != size {
            return Err(format!(
                "the archive ends inside this member ({got} of {size} bytes)"
            ));
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode: {e}"))?;
        if let Some(t) = mtime.and_then(time_of) {
            let times = std::fs::FileTimes::new().set_modified(t).set_accessed(t);
            out.set_times(times)
                .map_err(|e| format!("cannot set the modification time: {e}"))?;
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        parents: &[&[u8]],
        leaf: &[u8],
        comps: &[&[u8]],
        target: &[u8],
    ) -> Result<(), String> {
        if target.is_empty() {
            return Err("symbolic link with an empty target".into());
        }
        if target.contains(&0) {
            return Err("symbolic link target contains a NUL byte".into());
        }
        if target[0] == b'/' {
            return Err(format!(
                "symbolic link to {} points outside the recipe (absolute target)",
                shown(target)
            ));
        }
        let at: Vec<Vec<u8>> = parents.iter().map(|c| c.to_vec()).collect();
        // Resolved as the kernel would, through the links already there (the whole set is
        // checked again at the end, when every link is known).
        self.resolve(at, target).map_err(|why| {
            format!(
                "symbolic link to {} points outside the recipe ({why})",
                shown(target)
            )
        })?;
        let dir = self.parent(parents)?;
        symlink_at(&cstr(target), dir.as_fd(), &cstr(leaf))
            .map_err(|e| create_error(e, "cannot create the symbolic link"))?;
        self.kinds
            .insert(join(comps), Kind::Symlink(target.to_vec()));
        self.done.links += 1;
        Ok(())
    }

    fn hardlink(
        &mut self,
        parents: &[&[u8]],
        leaf: &[u8],
        comps: &[&[u8]],
        target: &[u8],
    ) -> Result<(), String> {
        let tcomps =
            components(target).map_err(|why| format!("hard link to {}: {why}", shown(target)))?;
        let Some((tleaf, tparents)) = tcomps.split_last() else {
            return Err(format!("hard link to {}: empty name", shown(target)));
        };
        if self.kinds.get(&join(&tcomps)) != Some(&Kind::File) {
            return Err(format!(
                "hard link to {}, which is not a regular file extracted before it",
                shown(target)
            ));
        }
        // The target's directories exist (it was extracted through them) and are real ones;
        // opening them without following links proves it again.
        let tdir = self.existing_dir(tparents)?;
        let dir = self.parent(parents)?;
        link_at(tdir.as_fd(), &cstr(tleaf), dir.as_fd(), &cstr(leaf))
            .map_err(|e| create_error(e, "cannot create the hard link"))?;
        self.kinds.insert(join(comps), Kind::File);
        self.done.links += 1;
        Ok(())
    }

    fn existing_dir(&self, comps: &[&[u8]]) -> Result<OwnedFd, String> {
        let mut cur = dup(self.root.as_fd()).map_err(|e| format!("recipe directory: {e}"))?;
        for (i, c) in comps.iter().enumerate() {
            let name = cstr(c);
            cur = open_dir_at(cur.as_fd(), &name)
                .map_err(|e| self.not_a_dir(&cur, &name, &comps[..=i], e))?;
        }
        Ok(cur)
    }

    /// Follows `target` from the directory `at` (components below the root) through the
    /// symbolic links extracted so far; an error if it ever climbs above the root.
    fn resolve(&self, at: Vec<Vec<u8>>, target: &[u8]) -> Result<(), String> {
        let mut stack = at;
        let mut pending: VecDeque<Vec<u8>> =
            target.split(|b| *b == b'/').map(|c| c.to_vec()).collect();
        let mut hops = 0u32;
        while let Some(c) = pending.pop_front() {
            match c.as_slice() {
                b"" | b"." => {}
                b".." => {
                    if stack.pop().is_none() {
                        return Err("climbs above the recipe directory".into());
                    }
                }
                _ => {
                    stack.push(c);
                    let key = stack.join(&b'/');
                    if let Some(Kind::Symlink(next)) = self.kinds.get(&key) {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err("too many levels of symbolic links".into());
                        }
                        if next.first() == Some(&b'/') {
                            return Err("goes through an absolute link".into());
                        }
                        stack.pop();
                        for part in next.rsplit(|b| *b == b'/') {
                            pending.push_front(part.to_vec());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every link again, now that all of them are known (a link extracted later can change
    /// where an earlier one leads).
    fn check_all_links(&self) -> Result<(), String> {
        let mut links: Vec<(&Vec<u8>, &Vec<u8>)> = self
            .kinds
            .iter()
            .filter_map(|(p, k)| match k {
                Kind::Symlink(t) => Some((p, t)),
                _ => None,
            })
            .collect();
        links.sort();
        for (path, target) in links {
            let mut at: Vec<Vec<u8>> = path.split(|b| *b == b'/').map(|c| c.to_vec()).collect();
            at.pop();
            self.resolve(at, target).map_err(|why| {
                format!(
                    "recipe archive: member {}: symbolic link to {} points outside the recipe \
                     ({why})",
                    shown(path),
                    shown(target)
                )
            })?;
        }
        Ok(())
    }

    /// Directory modes and times, set last (directories stay writable while unpacking, and
    /// entries created inside would change their times).
    fn finish_dirs(&self) -> Result<(), String> {
        let mut dirs: Vec<(&Vec<u8>, u32, Option<u64>)> = self
            .kinds
            .iter()
            .filter_map(|(p, k)| match k {
                Kind::Dir { mode, mtime } => Some((p, *mode, *mtime)),
                _ => None,
            })
            .collect();
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.iter().filter(|b| **b == b'/').count()));
        for (path, mode, mtime) in dirs {
            let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
            let fd = self
                .existing_dir(&comps)
                .map_err(|why| format!("recipe archive: directory {}: {why}", shown(path)))?;
            let f = File::from(fd);
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("recipe archive: directory {}: {e}", shown(path)))?;
            if let Some(t) = mtime.and_then(time_of) {
                let times = std::fs::FileTimes::new().set_modified(t).set_accessed(t);
                f.set_times(times)
                    .map_err(|e| format!("recipe archive: directory {}: {e}", shown(path)))?;
            }
        }
        Ok(())
    }
}

fn time_of(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Removes everything inside `dir` (never following links), leaving `dir` itself.
fn empty_dir(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

// ---- *at() system calls: every path is one component below a directory descriptor ----

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_path_dir(p: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated string; the result is a new descriptor we own.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor and NUL-terminated name; the result is a new descriptor we own.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory below `dir`; fails (`ELOOP`/`ENOTDIR`) on a symbolic link or anything else.
fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// A new file below `dir`, never an existing one, never through a link.
fn create_excl_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    open_at(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )
    .map(File::from)
}

/// An existing regular file below `dir`, for reading (not a link; a FIFO does not block).
fn open_file_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    let f = File::from(open_at(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?);
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid descriptor and NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

fn link_at(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
) -> io::Result<()> {
    // SAFETY: valid descriptors and NUL-terminated names; flags 0 never follows a link.
    cvt(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid descriptor, NUL-terminated name, `st` is written by the call on success.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

fn rename_at(dir: BorrowedFd<'_>, old: &CStr, new: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and NUL-terminated names.
    cvt(unsafe { libc::renameat(dir.as_raw_fd(), old.as_ptr(), dir.as_raw_fd(), new.as_ptr()) })
        .map(drop)
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

// ---- templates ----

/// Whether the recipe has a template list (`.ims_recipe_template.yaml`, in any form: a link
/// there is an error of [`render_templates`], not an absent list).
pub fn has_template_list(recipe: &Path) -> bool {
    std::fs::symlink_metadata(recipe.join(TEMPLATE_LIST)).is_ok()
}

#[derive(serde::Deserialize)]
struct TemplateListFile {
    template_files: Option<Vec<String>>,
}

/// A file inside the recipe, reached without following any link: its directory, and its name.
struct Confined {
    dir: OwnedFd,
    name: CString,
    /// The relative path, normalised (`a/b`).
    rel: String,
}

/// Opens the directory of `rel` inside `recipe` (relative, no `..`, no link on the way).
fn confine(recipe: &Path, rel: &str) -> Result<Confined, String> {
    let comps = components(rel.as_bytes()).map_err(|why| format!("{rel:?}: {why}"))?;
    let Some((leaf, parents)) = comps.split_last() else {
        return Err(format!("{rel:?}: empty name"));
    };
    let mut cur =
        open_path_dir(recipe).map_err(|e| format!("recipe directory {}: {e}", recipe.display()))?;
    for (i, c) in parents.iter().enumerate() {
        let name = cstr(c);
        let shown_path = String::from_utf8_lossy(&join(&comps[..=i])).into_owned();
        cur = match open_dir_at(cur.as_fd(), &name) {
            Ok(fd) => fd,
            Err(e) => {
                return Err(match lstat_at(cur.as_fd(), &name) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                        format!("{rel:?}: goes through the symbolic link {shown_path:?}")
                    }
                    Ok(_) => format!("{rel:?}: {shown_path:?} is not a directory"),
                    Err(_) if e.raw_os_error() == Some(libc::ENOENT) => {
                        format!("{rel:?} does not exist")
                    }
                    Err(_) => format!("{rel:?}: {e}"),
                });
            }
        };
    }
    Ok(Confined {
        dir: cur,
        name: cstr(leaf),
        rel: String::from_utf8_lossy(&join(&comps)).into_owned(),
    })
}

/// Reads a regular file inside the recipe (not a link, not through one). `Ok(None)`: absent.
fn read_confined(recipe: &Path, rel: &str) -> Result<Option<(String, u32, Confined)>, String> {
    let c = confine(recipe, rel)?;
    let f = match open_file_at(c.dir.as_fd(), &c.name) {
        Ok(f) => f,
        Err(e) => {
            return match lstat_at(c.dir.as_fd(), &c.name) {
                Err(_) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    Err(format!("{rel:?} is a symbolic link"))
                }
                Ok(_) => Err(format!("{rel:?} is not a regular file")),
                Err(_) => Err(format!("{rel:?}: {e}")),
            };
        }
    };
    let meta = f.metadata().map_err(|e| format!("{rel:?}: {e}"))?;
    if meta.len() > MAX_TEMPLATE {
        return Err(format!(
            "{rel:?} is {} bytes, more than the {MAX_TEMPLATE} a template may have",
            meta.len()
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_TEMPLATE + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{rel:?}: {e}"))?;
    let text = String::from_utf8(data).map_err(|_| format!("{rel:?} is not UTF-8 text"))?;
    Ok(Some((text, meta.permissions().mode() & 0o7777, c)))
}

/// Renders the files listed in the recipe's `.ims_recipe_template.yaml` in place with
/// `dictionary` (Jinja2 syntax), each replaced atomically with its mode kept; returns them.
///
/// No list: `Ok` with nothing rendered, whatever the dictionary (the caller warns when it was
/// not empty; see [`has_template_list`]). A list with an empty dictionary, a listed file outside
/// the recipe, behind a link or missing, an undefined variable, a syntax error: errors, with
/// nothing changed (every file is rendered before any is written).
pub fn render_templates(
    recipe: &Path,
    dictionary: &[(String, String)],
) -> Result<Vec<PathBuf>, String> {
    if !has_template_list(recipe) {
        return Ok(Vec::new());
    }
    let (list, _, _) = read_confined(recipe, TEMPLATE_LIST)
        .map_err(|e| format!("recipe template list: {e}"))?
        .ok_or_else(|| format!("recipe template list {TEMPLATE_LIST} vanished"))?;
    if dictionary.is_empty() {
        return Err(format!(
            "the recipe has a template list ({TEMPLATE_LIST}) but the recipe record has no \
             template_dictionary values"
        ));
    }
    let files: Vec<String> = if list.trim().is_empty() {
        Vec::new()
    } else {
        let parsed: TemplateListFile = yaml_serde::from_str(&list)
            .map_err(|e| format!("recipe template list {TEMPLATE_LIST}: {e}"))?;
        parsed.template_files.ok_or_else(|| {
            format!("recipe template list {TEMPLATE_LIST}: no template_files list")
        })?
    };

    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let base: Arc<Path> = Arc::from(recipe);
    env.set_loader(move |name: &str| match read_confined(&base, name) {
        Ok(Some((text, _, _))) => Ok(Some(text)),
        Ok(None) => Ok(None),
        Err(why) => Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("cannot load the template {why}"),
        )),
    });
    // Later pairs win, as in a Python dict built from the list.
    let values: BTreeMap<String, String> = dictionary.iter().cloned().collect();
    let ctx = minijinja::Value::from(values);

    let mut rendered = Vec::new();
    for rel in &files {
        let (_, mode, place) = read_confined(recipe, rel)
            .map_err(|e| format!("recipe template {e}"))?
            .ok_or_else(|| format!("recipe template {rel:?} does not exist"))?;
        let tmpl = env
            .get_template(&place.rel)
            .map_err(|e| format!("recipe template {rel:?}: {}", jinja_error(&e)))?;
        let text = tmpl
            .render(ctx.clone())
            .map_err(|e| format!("recipe template {rel:?}: {}", jinja_error(&e)))?;
        rendered.push((place, mode, text));
    }
    let mut out = Vec::new();
    for (place, mode, text) in rendered {
        replace_at(&place, mode, text.as_bytes())
            .map_err(|e| format!("recipe template {:?}: cannot write: {e}", place.rel))?;
        out.push(recipe.join(&place.rel));
    }
    Ok(out)
}

fn jinja_error(e: &minijinja::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Replaces a file atomically: a new file beside it with `mode`, then a rename over it.
fn replace_at(place: &Confined, mode: u32, data: &[u8]) -> io::Result<()> {
    let tmp = cstr(
        format!(
            ".{}.ims-render-{}",
            place.name.to_string_lossy(),
            std::process::id()
        )
        .as_bytes(),
    );
    let _ = unlink_at(place.dir.as_fd(), &tmp);
    let mut f = create_excl_at(place.dir.as_fd(), &tmp)?;
    let written = (|| {
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        rename_at(place.dir.as_fd(), &tmp, &place.name)
    })();
    if written.is_err() {
        let _ = unlink_at(place.dir.as_fd(), &tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use tar::{EntryType, Header};

    // ---- archive building ----

    fn octal(field: &mut [u8], v: u64) {
        let s = format!("{:0w$o}", v, w = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
        field[s.len()..].fill(0);
    }

    /// A GNU header with the name and link name written as given (no checks at all).
    fn header(name: &[u8], kind: EntryType, size: u64, link: &[u8], mode: u32) -> Header {
        let mut h = Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name);
            g.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn block(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(512) * 512, 0);
        v
    }

    struct Tar(Vec<u8>);

    impl Tar {
        fn new() -> Tar {
            Tar(Vec::new())
        }
        fn raw(mut self, h: &Header, data: &[u8]) -> Tar {
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend(block(data));
            self
        }
        fn file(self, name: &str, data: &[u8], mode: u32) -> Tar {
            let h = header(
                name.as_bytes(),
                EntryType::Regular,
                data.len() as u64,
                b"",
                mode,
            );
            self.raw(&h, data)
        }
        fn dir(self, name: &str, mode: u32) -> Tar {
            let h = header(name.as_bytes(), EntryType::Directory, 0, b"", mode);
            self.raw(&h, b"")
        }
        fn link(self, kind: EntryType, name: &str, target: &str, mode: u32) -> Tar {
            let h = header(name.as_bytes(), kind, 0, target.as_bytes(), mode);
            self.raw(&h, b"")
        }
        fn symlink(self, name: &str, target: &str) -> Tar {
            self.link(EntryType::Symlink, name, target, 0o777)
        }
        fn hardlink(self, name: &str, target: &str) -> Tar {
            self.link(EntryType::Link, name, target, 0o644)
        }
        fn pax(self, records: &[(&str, &[u8])]) -> Tar {
            let mut body = Vec::new();
            for (k, v) in records {
                // "<len> <key>=<value>\n", the length counting itself.
                let rest = 1 + k.len() + 1 + v.len() + 1;
                let mut len = rest + 1;
                while len.to_string().len() + rest != len {
                    len += 1;
                }
                body.extend(format!("{len} {k}=").as_bytes());
                body.extend(*v);
                body.push(b'\n');
            }
            let mut h = Header::new_ustar();
            h.set_path("PaxHeaders/x").unwrap();
            h.set_entry_type(EntryType::XHeader);
            h.set_size(body.len() as u64);
            h.set_cksum();
            self.raw(&h, &body)
        }
        fn end(mut self) -> Vec<u8> {
            self.0.extend([0u8; 1024]);
            self.0
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A scratch area: `top/dest` (the recipe directory) and `top/archive`; `top/outside` is
    /// where escapes would land.
    struct Scratch {
        _tmp: tempfile::TempDir,
        top: PathBuf,
        dest: PathBuf,
        archive: PathBuf,
    }

    fn scratch() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().to_path_buf();
        let dest = top.join("dest");
        std::fs::create_dir(&dest).unwrap();
        Scratch {
            archive: top.join("archive"),
            dest,
            top,
            _tmp: tmp,
        }
    }

    impl Scratch {
        fn run(&self, bytes: &[u8], limits: &Limits) -> Result<Extracted, String> {
            std::fs::write(&self.archive, bytes).unwrap();
            extract(&self.archive, &self.dest, limits)
        }

        /// Extraction fails with `want` in the message, `dest` is left empty and nothing but
        /// `dest` and the archive exists beside it.
        fn refused(&self, bytes: &[u8], limits: &Limits, want: &str) -> String {
            let e = self.run(bytes, limits).expect_err("must be refused");
            assert!(e.contains(want), "error {e:?} lacks {want:?}");
            let left: Vec<_> = std::fs::read_dir(&self.dest).unwrap().collect();
            assert!(left.is_empty(), "dest not empty after {e:?}: {left:?}");
            let mut beside: Vec<String> = std::fs::read_dir(&self.top)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            beside.sort();
            assert_eq!(beside, ["archive", "dest"], "written outside dest: {e:?}");
            e
        }
    }

    fn d() -> Limits {
        Limits::default()
    }

    // ---- hostile archives ----

    #[test]
    fn absolute_path_refused() {
        let s = scratch();
        let name = format!("{}/outside", s.top.display());
        let t = Tar::new()
            .file("ok", b"x", 0o644)
            .file(&name, b"evil", 0o644)
            .end();
        let e = s.refused(&t, &d(), "absolute path");
        assert!(e.contains(&format!("member {name:?}")), "{e}");
    }

    #[test]
    fn dotdot_refused() {
        let s = scratch();
        let t = Tar::new().file("../outside", b"evil", 0o644).end();
        let e = s.refused(&t, &d(), "leaves the recipe directory");
        assert_eq!(
            e,
            "recipe archive: member \"../outside\": leaves the recipe directory"
        );
        let t = Tar::new()
            .dir("a/", 0o755)
            .file("a/../../outside", b"evil", 0o644)
            .end();
        s.refused(
            &t,
            &d(),
            "member \"a/../../outside\": leaves the recipe directory",
        );
        // Even a `..` that would stay inside is refused.
        let t = Tar::new().file("a/../b", b"x", 0o644).end();
        s.refused(&t, &d(), "leaves the recipe directory");
    }

    #[test]
    fn empty_and_nul_names_refused() {
        let s = scratch();
        let t = Tar::new().file("", b"x", 0o644).end();
        s.refused(&t, &d(), "empty name");
        let t = Tar::new()
            .pax(&[("path", b"a\0b")])
            .file("x", b"1", 0o644)
            .end();
        s.refused(&t, &d(), "NUL");
        // `./` alone names the recipe directory: fine as a directory, not as a file.
        let t = Tar::new().file("./", b"", 0o644).end();
        assert!(s.run(&t, &d()).is_ok());
        let t = Tar::new().file(".", b"x", 0o644).end();
        s.refused(&t, &d(), "empty name");
    }

    #[test]
    fn pax_path_is_the_path_checked_and_used() {
        let s = scratch();
        // An innocent header name, and a pax record that says otherwise.
        let t = Tar::new()
            .pax(&[("path", b"../outside")])
            .file("innocent", b"evil", 0o644)
            .end();
        s.refused(
            &t,
            &d(),
            "member \"../outside\": leaves the recipe directory",
        );
        let t = Tar::new()
            .pax(&[("path", b"sub/renamed")])
            .file("innocent", b"good", 0o644)
            .end();
        s.run(&t, &d()).unwrap();
        assert_eq!(std::fs::read(s.dest.join("sub/renamed")).unwrap(), b"good");
        assert!(!s.dest.join("innocent").exists());
    }

    #[test]
    fn absolute_symlinks_refused() {
        let s = scratch();
        let t = Tar::new().symlink("etc", "/etc").end();
        s.refused(
            &t,
            &d(),
            "member \"etc\": symbolic link to \"/etc\" points outside the recipe",
        );
        let top = s.top.display().to_string();
        let t = Tar::new()
            .symlink("out", &top)
            .file("out/escaped", b"evil", 0o644)
            .end();
        s.refused(&t, &d(), "points outside the recipe");
    }

    #[test]
    fn relative_symlinks_out_refused() {
        let s = scratch();
        let t = Tar::new()
            .dir("a", 0o755)
            .symlink("a/up", "../../outside")
            .end();
        s.refused(
            &t,
            &d(),
            "member \"a/up\": symbolic link to \"../../outside\" points outside",
        );
        let t = Tar::new()
            .symlink("link", "..")
            .file("link/x", b"evil", 0o644)
            .end();
        s.refused(
            &t,
            &d(),
            "member \"link\": symbolic link to \"..\" points outside",
        );
    }

    #[test]
    fn no_write_through_a_symlink() {
        let s = scratch();
        // `d/link -> ..` is the recipe directory itself: allowed, but never written through.
        let t = Tar::new()
            .dir("d", 0o755)
            .symlink("d/link", "..")
            .file("d/link/x", b"evil", 0o644)
            .end();
        s.refused(
            &t,
            &d(),
            "member \"d/link/x\": goes through the symbolic link \"d/link\"",
        );
        // Nor may a member replace a link (or anything else).
        let t = Tar::new()
            .symlink("cfg", "real")
            .file("cfg", b"evil", 0o644)
            .end();
        s.refused(&t, &d(), "member \"cfg\": already exists");
        let t = Tar::new()
            .file("f", b"1", 0o644)
            .file("f", b"2", 0o644)
            .end();
        s.refused(&t, &d(), "already exists");
        let t = Tar::new().file("f", b"1", 0o644).dir("f", 0o755).end();
        s.refused(&t, &d(), "already exists and is not a directory");
    }

    #[test]
    fn symlink_chains_resolved_like_the_kernel() {
        let s = scratch();
        // Lexically `d/b/..` is `d`, but `d/b` is a link to the recipe directory.
        let t = Tar::new()
            .dir("d", 0o755)
            .symlink("d/b", "..")
            .symlink("d/x", "b/..")
            .end();
        s.refused(
            &t,
            &d(),
            "member \"d/x\": symbolic link to \"b/..\" points outside",
        );
        // The same with the links in the other order: caught once every link is known.
        let t = Tar::new()
            .dir("d", 0o755)
            .symlink("d/x", "b/..")
            .symlink("d/b", "..")
            .end();
        s.refused(
            &t,
            &d(),
            "member \"d/x\": symbolic link to \"b/..\" points outside",
        );
        // A loop is refused, not followed forever.
        let t = Tar::new().symlink("p", "q/x").symlink("q", "p").end();
        s.refused(&t, &d(), "too many levels");
    }

    #[test]
    fn hard_links_out_refused() {
        let s = scratch();
        let t = Tar::new().hardlink("pw", "/etc/passwd").end();
        s.refused(
            &t,
            &d(),
            "member \"pw\": hard link to \"/etc/passwd\": absolute path",
        );
        let t = Tar::new().hardlink("x", "../outside").end();
        s.refused(
            &t,
            &d(),
            "hard link to \"../outside\": leaves the recipe directory",
        );
        // Only to a regular file extracted before it.
        let t = Tar::new()
            .hardlink("x", "later")
            .file("later", b"1", 0o644)
            .end();
        s.refused(&t, &d(), "not a regular file extracted before it");
        let t = Tar::new().dir("dir", 0o755).hardlink("x", "dir").end();
        s.refused(&t, &d(), "not a regular file extracted before it");
        let t = Tar::new()
            .symlink("l", "f")
            .file("f", b"1", 0o644)
            .hardlink("x", "l")
            .end();
        s.refused(&t, &d(), "not a regular file extracted before it");
    }

    #[test]
    fn devices_fifos_and_others_refused() {
        let s = scratch();
        let mut h = header(b"tty", EntryType::Char, 0, b"", 0o666);
        h.set_device_major(4).unwrap();
        h.set_device_minor(1).unwrap();
        h.set_cksum();
        let t = Tar::new().file("ok", b"1", 0o644).raw(&h, b"").end();
        s.refused(
            &t,
            &d(),
            "member \"tty\": character devices are not allowed",
        );
        let h = header(b"disk", EntryType::Block, 0, b"", 0o660);
        s.refused(
            &Tar::new().raw(&h, b"").end(),
            &d(),
            "block devices are not allowed",
        );
        let h = header(b"pipe", EntryType::Fifo, 0, b"", 0o644);
        s.refused(
            &Tar::new().raw(&h, b"").end(),
            &d(),
            "member \"pipe\": FIFOs are not allowed",
        );
        let h = header(b"vol", EntryType::new(b'V'), 0, b"", 0o644);
        s.refused(
            &Tar::new().raw(&h, b"").end(),
            &d(),
            "of type 'V' are not allowed",
        );
    }

    #[test]
    fn sparse_file_over_the_limit_refused_before_writing() {
        let s = scratch();
        // A GNU sparse member of 2 GiB with 512 bytes of data: a small archive.
        let real: u64 = 2 << 30;
        let mut h = header(b"huge", EntryType::GNUSparse, 512, b"", 0o644);
        {
            let g = h.as_gnu_mut().unwrap();
            octal(&mut g.sparse[0].offset, 0);
            octal(&mut g.sparse[0].numbytes, 512);
            octal(&mut g.sparse[1].offset, real);
            octal(&mut g.sparse[1].numbytes, 0);
            g.set_real_size(real);
        }
        h.set_cksum();
        let t = Tar::new().raw(&h, &[7u8; 512]).end();
        s.refused(
            &t,
            &d(),
            "member \"huge\": is 2147483648 bytes, more than the limit",
        );
        // With the per-file limit out of the way, the total still stops it.
        let l = Limits {
            max_file_bytes: u64::MAX,
            max_total_bytes: 1 << 20,
            ..d()
        };
        s.refused(&t, &l, "over its limit of 1048576 bytes");
        // And with both out of the way, the ratio (counted on the bytes written) stops it
        // long before 2 GiB.
        let l = Limits {
            max_file_bytes: u64::MAX,
            max_total_bytes: u64::MAX,
            ..d()
        };
        s.refused(&t, &l, "more than 200 times the archive's size");
    }

    #[test]
    fn gzip_bomb_refused() {
        let s = scratch();
        let zeros = vec![0u8; 16 << 20];
        let t = gz(&Tar::new().file("bomb", &zeros, 0o644).end());
        assert!(t.len() < 200 * 1024, "{}", t.len());
        let e = s.refused(&t, &d(), "times the archive's size");
        assert!(e.contains("member \"bomb\""), "{e}");
        // Nothing near 16 MiB was written: it stopped at the limit (checked by the emptiness
        // above), and a generous ratio lets the same archive through.
        let l = Limits {
            max_ratio: 100_000,
            ..d()
        };
        let done = s.run(&t, &l).unwrap();
        assert_eq!(done.bytes, 16 << 20);
    }

    #[test]
    fn too_many_entries_refused() {
        let s = scratch();
        let mut t = Tar::new();
        for i in 0..11 {
            t = t.file(&format!("f{i}"), b"x", 0o644);
        }
        let l = Limits {
            max_entries: 10,
            ..d()
        };
        s.refused(&t.end(), &l, "member \"f10\": more than 10 members");
    }

    #[test]
    fn size_limits_refused() {
        let s = scratch();
        let l = Limits {
            max_file_bytes: 1000,
            max_total_bytes: 1500,
            ..d()
        };
        let t = Tar::new().file("big", &[1u8; 1001], 0o644).end();
        s.refused(
            &t,
            &l,
            "member \"big\": is 1001 bytes, more than the limit of 1000 per file",
        );
        let t = Tar::new()
            .file("a", &[1u8; 800], 0o644)
            .file("b", &[1u8; 800], 0o644)
            .end();
        s.refused(
            &t,
            &l,
            "member \"b\": is 800 bytes, which takes the recipe over its limit",
        );
    }

    #[test]
    fn lying_sizes_refused() {
        let s = scratch();
        // Claims 1 MiB, the archive ends after 100 bytes.
        let h = header(b"short", EntryType::Regular, 1 << 20, b"", 0o644);
        let mut t = h.as_bytes().to_vec();
        t.extend([5u8; 100]);
        s.refused(
            &t,
            &d(),
            "member \"short\": the archive ends inside this member",
        );
        // Claims 10 bytes and carries 2000: the rest is not a header.
        let h = header(b"long", EntryType::Regular, 10, b"", 0o644);
        let mut t = h.as_bytes().to_vec();
        t.extend([b'A'; 2000]);
        t.extend([0u8; 1024]);
        s.refused(&t, &d(), "after member \"long\": ");
        // The same inside gzip.
        let h = header(b"short", EntryType::Regular, 1 << 20, b"", 0o644);
        let mut t = h.as_bytes().to_vec();
        t.extend([5u8; 100]);
        s.refused(&gz(&t), &d(), "member \"short\"");
        // A truncated gzip stream.
        let good = gz(&Tar::new().file("f", &[3u8; 100_000], 0o644).end());
        s.refused(&good[..good.len() / 2], &d(), "recipe archive");
    }

    #[test]
    fn oversized_extension_records_refused() {
        let s = scratch();
        // A GNU long name of 2 MiB is never read into memory whole.
        let name = vec![b'n'; 2 << 20];
        let h = header(
            b"././@LongLink",
            EntryType::GNULongName,
            name.len() as u64,
            b"",
            0o644,
        );
        let t = Tar::new().raw(&h, &name).file("x", b"1", 0o644).end();
        s.refused(&t, &d(), "more than 1048576 bytes of headers");
    }

    #[test]
    fn dest_must_be_empty_and_is_left_alone_then() {
        let s = scratch();
        std::fs::write(s.dest.join("mine"), b"keep").unwrap();
        let t = Tar::new().file("f", b"1", 0o644).end();
        let e = s.run(&t, &d()).unwrap_err();
        assert!(e.contains("is not empty"), "{e}");
        assert_eq!(std::fs::read(s.dest.join("mine")).unwrap(), b"keep");
    }

    // ---- a good recipe ----

    fn good_recipe() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h.clone(), "./", io::empty()).unwrap();
        b.append_data(&mut h.clone(), "./root/", io::empty())
            .unwrap();
        b.append_data(&mut h.clone(), "./root/etc/", io::empty())
            .unwrap();
        let f = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8], mode: u32| {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_600_000_000);
            b.append_data(&mut h, name, data).unwrap();
        };
        f(&mut b, "./config.xml", b"<image/>\n", 0o644);
        f(&mut b, "./config.sh", b"#!/bin/sh\nexit 0\n", 0o755);
        f(&mut b, "./root/etc/motd", b"hello\n", 0o644);
        f(&mut b, "./root/usr/bin/su-ish", b"#!/bin/sh\n", 0o4755);
        f(&mut b, "./root/etc/sgid", b"x", 0o2775);
        f(&mut b, "./root/tmp-sticky", b"", 0o1777);
        let long = format!("./root/{}/deep.conf", "long-directory-name".repeat(6));
        assert!(long.len() > 100);
        f(&mut b, &long, b"long\n", 0o640);
        let mut l = Header::new_gnu();
        l.set_entry_type(EntryType::Symlink);
        l.set_size(0);
        l.set_mode(0o777);
        b.append_link(&mut l.clone(), "./root/etc/motd.link", "motd")
            .unwrap();
        b.append_link(&mut l.clone(), "./root/etc/up", "../usr/bin/su-ish")
            .unwrap();
        let mut hl = Header::new_gnu();
        hl.set_entry_type(EntryType::Link);
        hl.set_size(0);
        hl.set_mode(0o644);
        b.append_link(&mut hl, "./root/etc/motd.hard", "./root/etc/motd")
            .unwrap();
        // A directory repeated after files were put in it, with a final mode.
        let mut h2 = h.clone();
        h2.set_mode(0o750);
        b.append_data(&mut h2, "./root/etc/", io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn good_recipe_extracted() {
        for compress in [false, true] {
            let s = scratch();
            let plain = good_recipe();
            let bytes = if compress { gz(&plain) } else { plain };
            let done = s.run(&bytes, &d()).unwrap();
            let p = |r: &str| s.dest.join(r);
            let mode = |r: &str| std::fs::symlink_metadata(p(r)).unwrap().mode() & 0o7777;
            assert_eq!(std::fs::read(p("config.xml")).unwrap(), b"<image/>\n");
            assert_eq!(mode("config.sh"), 0o755);
            assert_eq!(mode("config.xml"), 0o644);
            assert_eq!(mode("root/usr/bin/su-ish"), 0o755, "setuid dropped");
            assert_eq!(mode("root/etc/sgid"), 0o775, "setgid dropped");
            assert_eq!(mode("root/tmp-sticky"), 0o1777, "sticky kept");
            assert_eq!(mode("root/etc"), 0o750, "directory mode from its entry");
            assert_eq!(mode("root/usr"), 0o755, "implied directories");
            let long = format!("root/{}/deep.conf", "long-directory-name".repeat(6));
            assert_eq!(std::fs::read(p(&long)).unwrap(), b"long\n");
            assert_eq!(mode(&long), 0o640);
            assert_eq!(
                std::fs::read_link(p("root/etc/motd.link")).unwrap(),
                Path::new("motd")
            );
            assert_eq!(std::fs::read(p("root/etc/up")).unwrap(), b"#!/bin/sh\n");
            let a = std::fs::metadata(p("root/etc/motd")).unwrap();
            let b = std::fs::metadata(p("root/etc/motd.hard")).unwrap();
            assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
            assert_eq!(a.mtime(), 1_600_000_000);
            assert_eq!(
                done,
                Extracted {
                    files: 7,
                    dirs: 5,
                    links: 3,
                    bytes: 9 + 17 + 6 + 10 + 1 + 5,
                }
            );
        }
    }

    // ---- templates ----

    fn recipe_with(files: &[(&str, &str, u32)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (rel, text, mode) in files {
            let p = t.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        t
    }

    fn dict(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const LIST: &str = "# comment\ntemplate_files:\n  - config.xml\n  - ./root/etc/motd\n";

    #[test]
    fn templates_rendered_in_place_with_mode_kept() {
        let r = recipe_with(&[
            (TEMPLATE_LIST, LIST, 0o644),
            (
                "config.xml",
                "<source path=\"{{ mirror }}\"/>{% include 'inc/part.xml' %}\n",
                0o640,
            ),
            ("inc/part.xml", "<p a=\"{{ mirror }}&amp;\"/>", 0o644),
            (
                "root/etc/motd",
                "{% if flavour == 'x' %}X{% endif %}{{ flavour }}{{ nope | default('-') }}\
                 {% if nope is defined %}!{% endif %}\n",
                0o755,
            ),
            ("untouched", "{{ mirror }}", 0o644),
        ]);
        assert!(has_template_list(r.path()));
        let d = dict(&[("mirror", "http://m/a?b=1&c=<2>"), ("flavour", "x")]);
        let done = render_templates(r.path(), &d).unwrap();
        assert_eq!(
            done,
            [r.path().join("config.xml"), r.path().join("root/etc/motd")]
        );
        // No HTML escaping for .xml (Jinja2's default environment has none), and one trailing
        // newline dropped as Jinja2 does.
        assert_eq!(
            std::fs::read_to_string(r.path().join("config.xml")).unwrap(),
            "<source path=\"http://m/a?b=1&c=<2>\"/><p a=\"http://m/a?b=1&c=<2>&amp;\"/>"
        );
        assert_eq!(
            std::fs::read_to_string(r.path().join("root/etc/motd")).unwrap(),
            "Xx-"
        );
        let mode = |rel: &str| {
            std::fs::metadata(r.path().join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("config.xml"), 0o640);
        assert_eq!(mode("root/etc/motd"), 0o755);
        assert_eq!(
            std::fs::read_to_string(r.path().join("untouched")).unwrap(),
            "{{ mirror }}"
        );
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(r.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("ims-render"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn undefined_variable_is_an_error_and_nothing_changes() {
        let r = recipe_with(&[
            (TEMPLATE_LIST, LIST, 0o644),
            ("config.xml", "{{ mirror }}", 0o644),
            ("root/etc/motd", "{{ mirorr }}", 0o644),
        ]);
        let e = render_templates(r.path(), &dict(&[("mirror", "m")])).unwrap_err();
        assert!(
            e.contains("root/etc/motd") && e.contains("undefined"),
            "{e}"
        );
        // The first file was rendered in memory only.
        assert_eq!(
            std::fs::read_to_string(r.path().join("config.xml")).unwrap(),
            "{{ mirror }}"
        );
        let r = recipe_with(&[
            (TEMPLATE_LIST, "template_files: [a]", 0o644),
            ("a", "{% if nope %}x{% endif %}", 0o644),
        ]);
        assert!(render_templates(r.path(), &dict(&[("k", "v")])).is_err());
        let r = recipe_with(&[
            (TEMPLATE_LIST, "template_files: [a]", 0o644),
            ("a", "{% if x %}unclosed", 0o644),
        ]);
        let e = render_templates(r.path(), &dict(&[("x", "v")])).unwrap_err();
        assert!(e.contains("\"a\""), "{e}");
    }

    #[test]
    fn template_paths_confined() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cr3t {{ k }}").unwrap();
        let abs = outside.path().join("secret").display().to_string();
        for (list, want) in [
            (
                "template_files: ['../secret']".to_string(),
                "leaves the recipe directory",
            ),
            (format!("template_files: ['{abs}']"), "absolute path"),
            (
                "template_files: ['a/../x']".to_string(),
                "leaves the recipe directory",
            ),
            (
                "template_files: ['link/secret']".to_string(),
                "goes through the symbolic link",
            ),
            (
                "template_files: ['secret.link']".to_string(),
                "is a symbolic link",
            ),
            (
                "template_files: ['missing.xml']".to_string(),
                "does not exist",
            ),
            (
                "template_files: ['dir']".to_string(),
                "is not a regular file",
            ),
            (
                "template_files: ['x/y']".to_string(),
                "\"x\" is not a directory",
            ),
            ("template_files: ['']".to_string(), "empty name"),
            ("other_key: 1".to_string(), "no template_files list"),
            ("template_files: [a".to_string(), TEMPLATE_LIST),
        ] {
            let r = recipe_with(&[(TEMPLATE_LIST, &list, 0o644), ("x", "{{ k }}", 0o644)]);
            std::fs::create_dir(r.path().join("dir")).unwrap();
            std::os::unix::fs::symlink(outside.path(), r.path().join("link")).unwrap();
            std::os::unix::fs::symlink(outside.path().join("secret"), r.path().join("secret.link"))
                .unwrap();
            let e = render_templates(r.path(), &dict(&[("k", "v")])).unwrap_err();
            assert!(e.contains(want), "{list}: {e:?} lacks {want:?}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "s3cr3t {{ k }}"
        );
    }

    #[test]
    fn template_list_itself_confined() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("list"), "template_files: [x]").unwrap();
        let r = recipe_with(&[("x", "{{ k }}", 0o644)]);
        std::os::unix::fs::symlink(outside.path().join("list"), r.path().join(TEMPLATE_LIST))
            .unwrap();
        assert!(has_template_list(r.path()));
        let e = render_templates(r.path(), &dict(&[("k", "v")])).unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");
    }

    #[test]
    fn includes_cannot_leave_the_recipe() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "s3cr3t").unwrap();
        let recipe_parent = tempfile::tempdir().unwrap();
        std::fs::write(recipe_parent.path().join("sibling"), "SIBLING-TEXT").unwrap();
        let recipe = recipe_parent.path().join("recipe");
        std::fs::create_dir(&recipe).unwrap();
        std::os::unix::fs::symlink(&secret, recipe.join("secret.link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), recipe.join("out")).unwrap();
        for (inc, want) in [
            ("{% include '../sibling' %}", "leaves the recipe directory"),
            (
                &format!("{{% include '{}' %}}", secret.display()) as &str,
                "absolute path",
            ),
            ("{% include 'secret.link' %}", "is a symbolic link"),
            (
                "{% include 'out/secret' %}",
                "goes through the symbolic link",
            ),
            (
                "{% import '../sibling' as m %}",
                "leaves the recipe directory",
            ),
            ("{% extends '../sibling' %}", "leaves the recipe directory"),
            ("{% include 'nope' %}", "not found"),
        ] {
            std::fs::write(recipe.join(TEMPLATE_LIST), "template_files: [t]").unwrap();
            std::fs::write(recipe.join("t"), inc).unwrap();
            let e = render_templates(&recipe, &dict(&[("k", "v")])).unwrap_err();
            assert!(e.contains(want), "{inc}: {e:?} lacks {want:?}");
            assert!(!e.contains("s3cr3t") && !e.contains("SIBLING-TEXT"), "{e}");
            assert_eq!(std::fs::read_to_string(recipe.join("t")).unwrap(), inc);
        }
    }

    #[test]
    fn list_without_dictionary_is_an_error_dictionary_without_list_is_not() {
        let r = recipe_with(&[
            (TEMPLATE_LIST, LIST, 0o644),
            ("config.xml", "{{ a }}", 0o644),
        ]);
        let e = render_templates(r.path(), &[]).unwrap_err();
        assert!(e.contains("no template_dictionary"), "{e}");
        let r = recipe_with(&[("config.xml", "{{ a }}", 0o644)]);
        assert!(!has_template_list(r.path()));
        assert_eq!(
            render_templates(r.path(), &dict(&[("a", "1")])).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            render_templates(r.path(), &[]).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            std::fs::read_to_string(r.path().join("config.xml")).unwrap(),
            "{{ a }}"
        );
    }
}
