//! Unpacking a recipe archive into a directory, confined to it: see [`extract`] and the
//! documentation of [`super`].

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use ims_rootfs::confined::{Dir, FileType, Root};

use super::{components, join, shown};
use crate::error::{Context, Error, Result};

/// Compression ratios are judged only past this many bytes, so tiny archives (a tar pads to
/// 10 KiB of zeros) are never refused for compressing well.
const RATIO_FLOOR: u64 = 1024 * 1024;
/// Headers and extension data (long names, pax records, sparse maps, skipped data of
/// non-files) read between two members.
const META_BUDGET: u64 = 1024 * 1024;
/// Symbolic links followed while resolving one link target (the kernel's limit).
const MAX_HOPS: usize = ims_rootfs::confined::MAX_LINKS;
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
pub fn extract(archive: &Path, dest: &Path, limits: &Limits) -> Result<Extracted> {
    let dest_err = || format!("recipe directory {}", dest.display());
    let root = Root::open(dest).with_context(dest_err)?;
    if !root.top().list().with_context(dest_err)?.is_empty() {
        return Err(Error::Refused(format!(
            "recipe directory {} is not empty",
            dest.display()
        )));
    }
    match unpack(archive, &root, limits) {
        Ok(done) => Ok(done),
        Err(e) => match root.top().remove_contents() {
            Ok(()) => Err(e),
            Err(c) => Err(Error::Failed(format!(
                "{e} (and removing what was unpacked failed: {c})"
            ))),
        },
    }
}

fn unpack(archive: &Path, root: &Root, limits: &Limits) -> Result<Extracted> {
    let mut file =
        File::open(archive).with_context(|| format!("recipe archive {}", archive.display()))?;
    let compressed = file
        .metadata()
        .with_context(|| format!("recipe archive {}", archive.display()))?
        .len()
        .max(1);
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic)
        .with_context(|| format!("recipe archive {}", archive.display()))?;
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
fn create_error(e: io::Error, what: &str) -> Error {
    if e.kind() == io::ErrorKind::AlreadyExists {
        Error::Refused("already exists (members may not replace each other)".to_string())
    } else {
        Error::Io {
            context: what.to_string(),
            source: e,
        }
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
    fn explain(&self, e: io::Error) -> Error {
        match &*self.tripped.borrow() {
            Some(why) => Error::Refused(why.clone()),
            None => Error::Os(e),
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

struct Unpacker<'a> {
    root: &'a Root,
    limits: Limits,
    compressed: u64,
    meter: Rc<Meter>,
    /// Everything created, by normalised path (`a/b/c`).
    kinds: HashMap<Vec<u8>, Kind>,
    done: Extracted,
}

impl Unpacker<'_> {
    fn run<R: Read>(&mut self, stream: Counted<R>) -> Result<()> {
        let mut archive = tar::Archive::new(stream);
        let mut entries = archive
            .entries()
            .map_err(|e| self.meter.explain(e).context("recipe archive"))?;
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
                    let why = self.meter.explain(e);
                    return Err(match &previous {
                        Some(p) => why.context(format!("recipe archive: after member {p}")),
                        None => why.context("recipe archive"),
                    });
                }
            };
            count += 1;
            let raw = entry.path_bytes().into_owned();
            let name = shown(&raw);
            if count > self.limits.max_entries {
                return Err(Error::Refused(format!(
                    "recipe archive: member {name}: more than {} members",
                    self.limits.max_entries
                )));
            }
            self.member(&mut entry, &raw)
                .with_context(|| format!("recipe archive: member {name}"))?;
            previous = Some(name);
        }
    }

    fn member<R: Read>(&mut self, entry: &mut tar::Entry<R>, raw: &[u8]) -> Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader) {
            // pax global records: metadata only.
            return Ok(());
        }
        let comps = components(raw).map_err(|why| Error::Refused(why.into()))?;
        let mode = entry.header().mode().context("bad mode")? & 0o1777;
        let mtime = entry.header().mtime().ok();
        let is_dir = matches!(kind, T::Directory)
            || (matches!(kind, T::Regular) && raw.ends_with(b"/") && entry.size() == 0);
        if comps.is_empty() {
            if is_dir {
                // `./`: the recipe directory itself, which exists already.
                return Ok(());
            }
            return Err(Error::Refused("empty name".into()));
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
                    .ok_or_else(|| Error::Refused("symbolic link without a target".into()))?
                    .into_owned();
                self.symlink(parents, leaf, &comps, &target)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::Refused("hard link without a target".into()))?
                    .into_owned();
                self.hardlink(parents, leaf, &comps, &target)
            }
            T::Char => Err(Error::Refused("character devices are not allowed".into())),
            T::Block => Err(Error::Refused("block devices are not allowed".into())),
            T::Fifo => Err(Error::Refused("FIFOs are not allowed".into())),
            other => Err(Error::Refused(format!(
                "members of type {:?} are not allowed (only directories, files and links)",
                other.as_byte() as char
            ))),
        }
    }

    /// Opens (creating as needed) the directory `comps` below the root, one component at a time,
    /// never through a symbolic link.
    fn parent(&mut self, comps: &[&[u8]]) -> Result<Dir> {
        let mut cur = self.root.top().try_clone().context("recipe directory")?;
        for (i, c) in comps.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            cur = match cur.open_dir(name) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match cur.mkdir(name, 0o700) {
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
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(Error::Io {
                                context: format!("cannot create {}", shown(c)),
                                source: e,
                            });
                        }
                    }
                    cur.open_dir(name)
                        .map_err(|e| not_a_dir(&cur, name, &comps[..=i], e))?
                }
                Err(e) => return Err(not_a_dir(&cur, name, &comps[..=i], e)),
            };
        }
        Ok(cur)
    }

    fn directory(&mut self, comps: &[&[u8]], mode: u32, mtime: Option<u64>) -> Result<()> {
        let (leaf, parents) = comps.split_last().expect("not empty");
        let dir = self.parent(parents)?;
        let name = OsStr::from_bytes(leaf);
        match dir.mkdir(name, 0o700) {
            Ok(()) => self.done.dirs += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Allowed only for a directory that is already there (a repeated entry, or one
                // created for an earlier member's path).
                if !matches!(dir.kind(name), Ok(Some(FileType::Directory))) {
                    return Err(Error::Refused(
                        "already exists and is not a directory".into(),
                    ));
                }
            }
            Err(e) => {
                return Err(Error::Io {
                    context: "cannot create the directory".into(),
                    source: e,
                });
            }
        }
        self.kinds.insert(join(comps), Kind::Dir { mode, mtime });
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        dir: &Dir,
        leaf: &[u8],
        comps: &[&[u8]],
        mode: u32,
        mtime: Option<u64>,
    ) -> Result<()> {
        let size = entry.size();
        let l = self.limits;
        if size > l.max_file_bytes {
            return Err(Error::Refused(format!(
                "is {size} bytes, more than the limit of {} per file",
                l.max_file_bytes
            )));
        }
        if size > l.max_total_bytes.saturating_sub(self.done.bytes) {
            return Err(Error::Refused(format!(
                "is {size} bytes, which takes the recipe over its limit of {} bytes",
                l.max_total_bytes
            )));
        }
        let mut out = dir
            .create_new(OsStr::from_bytes(leaf))
            .map_err(|e| create_error(e, "cannot create"))?;
        self.kinds.insert(join(comps), Kind::File);
        self.done.files += 1;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.meter.explain(e)),
            };
            let n64 = n as u64;
            if got + n64 > l.max_file_bytes {
                return Err(Error::Refused(format!(
                    "more than the limit of {} bytes per file",
                    l.max_file_bytes
                )));
            }
            let total = self.done.bytes + n64;
            if total > l.max_total_bytes {
                return Err(Error::Refused(format!(
                    "the recipe unpacks to more than its limit of {} bytes",
                    l.max_total_bytes
                )));
            }
            if total > RATIO_FLOOR && total > self.compressed.saturating_mul(l.max_ratio) {
                return Err(Error::Refused(format!(
                    "the recipe unpacks to more than {} times the archive's size",
                    l.max_ratio
                )));
            }
            out.write_all(&buf[..n]).context("cannot write")?;
            got += n64;
            self.done.bytes = total;
        }
        if got != size {
            return Err(Error::Refused(format!(
                "the archive ends inside this member ({got} of {size} bytes)"
            )));
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))
            .context("cannot set the mode")?;
        if let Some(t) = mtime.and_then(time_of) {
            let times = std::fs::FileTimes::new().set_modified(t).set_accessed(t);
            out.set_times(times)
                .context("cannot set the modification time")?;
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        parents: &[&[u8]],
        leaf: &[u8],
        comps: &[&[u8]],
        target: &[u8],
    ) -> Result<()> {
        if target.is_empty() {
            return Err(Error::Refused("symbolic link with an empty target".into()));
        }
        if target.contains(&0) {
            return Err(Error::Refused(
                "symbolic link target contains a NUL byte".into(),
            ));
        }
        if target[0] == b'/' {
            return Err(Error::Refused(format!(
                "symbolic link to {} points outside the recipe (absolute target)",
                shown(target)
            )));
        }
        let at: Vec<Vec<u8>> = parents.iter().map(|c| c.to_vec()).collect();
        // Resolved as the kernel would, through the links already there (the whole set is
        // checked again at the end, when every link is known).
        self.resolve(at, target).map_err(|why| {
            Error::Refused(format!(
                "symbolic link to {} points outside the recipe ({why})",
                shown(target)
            ))
        })?;
        let dir = self.parent(parents)?;
        dir.symlink(OsStr::from_bytes(target), OsStr::from_bytes(leaf))
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
    ) -> Result<()> {
        let tcomps = components(target)
            .map_err(|why| Error::Refused(format!("hard link to {}: {why}", shown(target))))?;
        let Some((tleaf, tparents)) = tcomps.split_last() else {
            return Err(Error::Refused(format!(
                "hard link to {}: empty name",
                shown(target)
            )));
        };
        if self.kinds.get(&join(&tcomps)) != Some(&Kind::File) {
            return Err(Error::Refused(format!(
                "hard link to {}, which is not a regular file extracted before it",
                shown(target)
            )));
        }
        // The target's directories exist (it was extracted through them) and are real ones;
        // opening them without following links proves it again.
        let tdir = self.existing_dir(tparents)?;
        let dir = self.parent(parents)?;
        dir.hard_link(&tdir, OsStr::from_bytes(tleaf), OsStr::from_bytes(leaf))
            .map_err(|e| create_error(e, "cannot create the hard link"))?;
        self.kinds.insert(join(comps), Kind::File);
        self.done.links += 1;
        Ok(())
    }

    fn existing_dir(&self, comps: &[&[u8]]) -> Result<Dir> {
        let mut cur = self.root.top().try_clone().context("recipe directory")?;
        for (i, c) in comps.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            cur = cur
                .open_dir(name)
                .map_err(|e| not_a_dir(&cur, name, &comps[..=i], e))?;
        }
        Ok(cur)
    }

    /// Follows `target` from the directory `at` (components below the root) through the
    /// symbolic links extracted so far; an error if it ever climbs above the root.
    fn resolve(&self, at: Vec<Vec<u8>>, target: &[u8]) -> Result<(), &'static str> {
        let mut stack = at;
        let mut pending: VecDeque<Vec<u8>> =
            target.split(|b| *b == b'/').map(|c| c.to_vec()).collect();
        let mut hops = 0usize;
        while let Some(c) = pending.pop_front() {
            match c.as_slice() {
                b"" | b"." => {}
                b".." => {
                    if stack.pop().is_none() {
                        return Err("climbs above the recipe directory");
                    }
                }
                _ => {
                    stack.push(c);
                    let key = stack.join(&b'/');
                    if let Some(Kind::Symlink(next)) = self.kinds.get(&key) {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err("too many levels of symbolic links");
                        }
                        if next.first() == Some(&b'/') {
                            return Err("goes through an absolute link");
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
    fn check_all_links(&self) -> Result<()> {
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
                Error::Refused(format!(
                    "recipe archive: member {}: symbolic link to {} points outside the recipe \
                     ({why})",
                    shown(path),
                    shown(target)
                ))
            })?;
        }
        Ok(())
    }

    /// Directory modes and times, set last (directories stay writable while unpacking, and
    /// entries created inside would change their times).
    fn finish_dirs(&self) -> Result<()> {
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
            let what = || format!("recipe archive: directory {}", shown(path));
            let f = self
                .existing_dir(&comps)
                .and_then(|d| d.as_file().map_err(Error::Os))
                .with_context(what)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(what)?;
            if let Some(t) = mtime.and_then(time_of) {
                let times = std::fs::FileTimes::new().set_modified(t).set_accessed(t);
                f.set_times(times).with_context(what)?;
            }
        }
        Ok(())
    }
}

fn time_of(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Why the directory `name` in `dir` (at `path`) could not be opened.
fn not_a_dir(dir: &Dir, name: &OsStr, path: &[&[u8]], e: io::Error) -> Error {
    let p = shown(&join(path));
    match dir.kind(name) {
        Ok(Some(FileType::Symlink)) => {
            Error::Refused(format!("goes through the symbolic link {p}"))
        }
        Ok(Some(k)) if k != FileType::Directory => {
            Error::Refused(format!("{p} is not a directory"))
        }
        _ => Error::Io {
            context: format!("cannot open the directory {p}"),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
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
            extract(&self.archive, &self.dest, limits).map_err(|e| e.to_string())
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
        let e = s.run(&t, &d()).unwrap_err().to_string();
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
}
