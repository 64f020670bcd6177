//! The file-system side of the endpoint.
//!
//! Objects are plain files at `<root>/<bucket>/<key>`, so other code (the IMS server through
//! `object_store`'s `LocalFileSystem`) sees and writes the same tree. Everything else lives under
//! the state directory, outside the key namespace:
//!
//! ```text
//! <state>/tmp/<random>                        uploads being received, assembled objects, metadata being written
//! <state>/meta/<bucket>/<hh>/<sha256(key)>.json  ETag, content headers and user metadata of an object,
//!                                                with the size/inode/mtime of the file they describe
//! <state>/uploads/<upload-id>/upload.json      a multipart upload: bucket, key, headers
//! <state>/uploads/<upload-id>/part-NNNNN.json  a part: its data file, size and MD5 (saved at UploadPart)
//! <state>/uploads/<upload-id>/part-NNNNN-<rnd> a part's data
//! ```
//!
//! A metadata file is used only while the object file still has the size, inode and
//! modification time recorded in it, so an object replaced by another writer never shows stale
//! metadata. Objects without (valid) metadata get an ETag computed on first access (MD5 up to
//! [`LAZY_MD5_MAX`], cached) or, above that, a stable non-MD5 ETag derived from the file's identity.
//! Other code that renames or deletes object files can report it ([`Store::object_moved`],
//! [`Store::object_deleted`]) so that the metadata follows the file or goes with it.

use crate::util::{LOWER_HEX, check_key, hex, random_string};
use s3s::crypto::{Checksum as _, Md5, Sha256};
use s3s::{S3Error, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Objects up to this size without metadata get their MD5 computed (once, then cached); larger
/// ones get a stable ETag without reading them.
pub(crate) const LAZY_MD5_MAX: u64 = 64 << 20;
/// Read/hash buffer size.
pub(crate) const IO_CHUNK: usize = 1 << 20;
/// Multipart uploads untouched this long are removed at start-up.
const STALE_UPLOAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// The identity of an object file's content: metadata recorded for one stamp is not used for
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    pub size: u64,
    pub ino: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl Stamp {
    pub fn of(md: &fs::Metadata) -> Stamp {
        Stamp {
            size: md.len(),
            ino: md.ino(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        }
    }
}

/// What is kept about an object besides its bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// User metadata (`x-amz-meta-*`), names lower-case without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    key: String,
    stamp: Stamp,
    etag: String,
    #[serde(flatten)]
    headers: Headers,
}

/// What HEAD, GET and listings tell about an object.
#[derive(Clone, Debug)]
pub(crate) struct ObjectInfo {
    pub size: u64,
    pub modified: SystemTime,
    /// Without quotes.
    pub etag: String,
    pub headers: Headers,
}

/// A file under `<state>/tmp`, removed on drop unless it was moved into place.
pub(crate) struct TempFile {
    pub path: PathBuf,
    pub file: File,
    armed: bool,
}

impl TempFile {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub(crate) struct Store {
    root: PathBuf,
    tmp: PathBuf,
    meta: PathBuf,
    uploads: PathBuf,
    locks: Box<[Mutex<()>]>,
}

pub(crate) fn io_err(e: io::Error) -> S3Error {
    tracing::error!(error = %e, "S3 backend I/O error");
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            s3_error!(InternalError, "The server is out of storage space")
        }
        Some(libc::ENAMETOOLONG) => s3_error!(KeyTooLongError, "Your key is too long"),
        _ => S3Error::internal_error(e),
    }
}

fn no_such_key() -> S3Error {
    s3_error!(NoSuchKey, "The specified key does not exist.")
}

fn no_such_bucket() -> S3Error {
    s3_error!(NoSuchBucket, "The specified bucket does not exist")
}

pub(crate) fn no_such_upload() -> S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified multipart upload does not exist. The upload ID might be invalid, or the upload might have been aborted or completed."
    )
}

fn parent_is_object() -> S3Error {
    s3_error!(
        InvalidArgument,
        "The key conflicts with an existing object: an object cannot also be a prefix of other keys (a/b next to a) on this store"
    )
}

fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsync of directory failed");
    }
}

fn same_or_inside(a: &Path, b: &Path) -> bool {
    a.starts_with(b)
}

impl Store {
    /// Creates the state directories, checks that the state lives outside the artifact root and on
    /// the same file system (objects are renamed into place), empties `<state>/tmp` and removes
    /// abandoned multipart uploads.
    pub fn open(root: &Path, state: &Path) -> io::Result<Store> {
        fs::create_dir_all(root)?;
        fs::create_dir_all(state)?;
        let root = fs::canonicalize(root)?;
        let state = fs::canonicalize(state)?;
        if same_or_inside(&state, &root) || same_or_inside(&root, &state) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the S3 state directory {} must be outside the artifact root {} (and not contain it)",
                    state.display(),
                    root.display()
                ),
            ));
        }
        if fs::metadata(&root)?.dev() != fs::metadata(&state)?.dev() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the S3 state directory {} must be on the same file system as the artifact root {} (objects are renamed into place)",
                    state.display(),
                    root.display()
                ),
            ));
        }
        let store = Store {
            tmp: state.join("tmp"),
            meta: state.join("meta"),
            uploads: state.join("uploads"),
            root,
            locks: (0..64).map(|_| Mutex::new(())).collect(),
        };
        for d in [&store.tmp, &store.meta, &store.uploads] {
            fs::create_dir_all(d)?;
        }
        for e in fs::read_dir(&store.tmp)? {
            let e = e?;
            let _ = fs::remove_file(e.path());
        }
        let now = SystemTime::now();
        for e in fs::read_dir(&store.uploads)? {
            let e = e?;
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_UPLOAD);
            if old {
                tracing::info!(upload = ?e.file_name(), "removing abandoned multipart upload");
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A lock stripe for one name pair (object key, or upload id and part number). Held only by
    /// blocking code, briefly, around renames and metadata writes.
    pub fn lock(&self, a: &str, b: &str) -> MutexGuard<'_, ()> {
        self.lock_stripe(self.stripe(a, b))
    }

    fn stripe(&self, a: &str, b: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (a, b).hash(&mut h);
        (h.finish() % self.locks.len() as u64) as usize
    }

    fn lock_stripe(&self, i: usize) -> MutexGuard<'_, ()> {
        self.locks[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The locks of two keys of a bucket, taken in stripe order (one lock if they share a
    /// stripe). Everything else holds one lock at a time, so this cannot deadlock.
    fn lock_two(
        &self,
        bucket: &str,
        a: &str,
        b: &str,
    ) -> (MutexGuard<'_, ()>, Option<MutexGuard<'_, ()>>) {
        let (i, j) = (self.stripe(bucket, a), self.stripe(bucket, b));
        if i == j {
            return (self.lock_stripe(i), None);
        }
        let first = self.lock_stripe(i.min(j));
        (first, Some(self.lock_stripe(i.max(j))))
    }

    // ---- buckets ---------------------------------------------------------------------------

    /// The bucket's directory; `None` if it is not a real directory (symlinks are not buckets).
    pub fn bucket_dir(&self, bucket: &str) -> Option<PathBuf> {
        if !ims_core::s3name::valid_bucket(bucket) {
            return None;
        }
        let dir = self.root.join(bucket);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Some(dir),
            _ => None,
        }
    }

    pub fn require_bucket(&self, bucket: &str) -> S3Result<PathBuf> {
        self.bucket_dir(bucket).ok_or_else(no_such_bucket)
    }

    /// Valid bucket names among the root's directories, sorted, with their modification times.
    pub fn list_buckets(&self) -> S3Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err)? {
            let e = e.map_err(io_err)?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && ims_core::s3name::valid_bucket(&name) {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((name, t));
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn create_bucket(&self, bucket: &str) -> S3Result<()> {
        if !ims_core::s3name::valid_bucket(bucket) {
            return Err(s3_error!(InvalidBucketName));
        }
        let dir = self.root.join(bucket);
        match fs::create_dir(&dir) {
            Ok(()) => {
                sync_dir(&self.root);
                // Metadata left from an earlier bucket of that name is meaningless now.
                let _ = fs::remove_dir_all(self.meta.join(bucket));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it."
            )),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Deletes a bucket that holds no object (empty directories left inside are removed).
    pub fn delete_bucket(&self, bucket: &str) -> S3Result<()> {
        let dir = self.require_bucket(bucket)?;
        if has_file(&dir).map_err(io_err)? {
            return Err(s3_error!(
                BucketNotEmpty,
                "The bucket you tried to delete is not empty"
            ));
        }
        // Bottom-up `remove_dir` only removes empty directories, so an object written meanwhile
        // stops the deletion instead of being lost.
        fn remove_empty(dir: &Path) -> io::Result<()> {
            for e in fs::read_dir(dir)? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    remove_empty(&e.path())?;
                }
            }
            fs::remove_dir(dir)
        }
        match remove_empty(&dir) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                return Err(s3_error!(
                    BucketNotEmpty,
                    "The bucket you tried to delete is not empty"
                ));
            }
            Err(e) => return Err(io_err(e)),
        }
        sync_dir(&self.root);
        let _ = fs::remove_dir_all(self.meta.join(bucket));
        Ok(())
    }

    // ---- objects -----------------------------------------------------------------------------

    /// Checks that every parent of the key inside the bucket is a real directory.
    fn parents_are_dirs(bucket_dir: &Path, key: &str) -> bool {
        let mut cur = bucket_dir.to_path_buf();
        let mut segs = key.split('/').peekable();
        while let Some(seg) = segs.next() {
            if segs.peek().is_none() {
                break;
            }
            cur.push(seg);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                _ => return false,
            }
        }
        true
    }

    /// Opens an object for reading: a regular file reached without symlinks.
    pub fn open_object(&self, bucket: &str, key: &str) -> S3Result<(File, fs::Metadata)> {
        check_key(key)?;
        let dir = self.require_bucket(bucket)?;
        if !Self::parents_are_dirs(&dir, key) {
            return Err(no_such_key());
        }
        let opened = OpenOptions::new()
            .read(true)
            // No symlink as the last component, and no blocking on a FIFO.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join(key));
        let file = match opened {
            Ok(f) => f,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || matches!(
                        e.raw_os_error(),
                        Some(libc::ELOOP | libc::ENOTDIR | libc::ENXIO)
                    ) =>
            {
                return Err(no_such_key());
            }
            Err(e) => return Err(io_err(e)),
        };
        let md = file.metadata().map_err(io_err)?;
        if !md.is_file() {
            return Err(no_such_key());
        }
        Ok((file, md))
    }

    fn meta_path(&self, bucket: &str, key: &str) -> PathBuf {
        let h = hex(&Sha256::checksum(key.as_bytes()));
        self.meta
            .join(bucket)
            .join(&h[..2])
            .join(format!("{h}.json"))
    }

    /// The object's metadata if it was written for exactly this file content.
    fn read_meta(&self, bucket: &str, key: &str, stamp: &Stamp) -> Option<MetaFile> {
        let data = fs::read(self.meta_path(bucket, key)).ok()?;
        let m: MetaFile = serde_json::from_slice(&data).ok()?;
        (m.key == key && m.stamp == *stamp).then_some(m)
    }

    fn write_meta(&self, bucket: &str, m: &MetaFile) -> io::Result<()> {
        let path = self.meta_path(bucket, &m.key);
        let dir = path.parent().unwrap_or(&self.meta);
        fs::create_dir_all(dir)?;
        let mut tmp = self.temp_file()?;
        let json = serde_json::to_vec(m).map_err(io::Error::other)?;
        tmp.file.write_all(&json)?;
        tmp.file.sync_all()?;
        fs::rename(&tmp.path, &path)?;
        tmp.disarm();
        sync_dir(dir);
        Ok(())
    }

    fn remove_meta(&self, bucket: &str, key: &str) {
        let _ = fs::remove_file(self.meta_path(bucket, key));
    }

    /// HEAD information for an open object file.
    pub fn info(
        &self,
        bucket: &str,
        key: &str,
        file: &File,
        md: &fs::Metadata,
    ) -> S3Result<ObjectInfo> {
        let stamp = Stamp::of(md);
        let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let info = |m: MetaFile| ObjectInfo {
            size: stamp.size,
            modified,
            etag: m.etag,
            headers: m.headers,
        };
        if let Some(m) = self.read_meta(bucket, key, &stamp) {
            return Ok(info(m));
        }
        if stamp.size > LAZY_MD5_MAX {
            return Ok(ObjectInfo {
                size: stamp.size,
                modified,
                etag: etag_without_meta(file, &stamp)?,
                headers: Headers::default(),
            });
        }
        // Written by someone else: compute the MD5 once and remember it while the file stays.
        let m = MetaFile {
            key: key.to_owned(),
            stamp,
            etag: etag_without_meta(file, &stamp)?,
            headers: Headers::default(),
        };
        let unchanged = file.metadata().is_ok_and(|now| Stamp::of(&now) == stamp);
        if unchanged {
            let _g = self.lock(bucket, key);
            if let Some(current) = self.read_meta(bucket, key, &stamp) {
                return Ok(info(current));
            }
            let still_there = fs::symlink_metadata(self.root.join(bucket).join(key))
                .is_ok_and(|now| Stamp::of(&now) == stamp);
            if still_there && let Err(e) = self.write_meta(bucket, &m) {
                tracing::warn!(error = %e, "could not cache an object's ETag");
            }
        }
        Ok(info(m))
    }

    /// Replaces an object's content headers and user metadata without touching its bytes: the
    /// file keeps its inode, size and modification time, and the object its ETag (CopyObject onto
    /// itself with `x-amz-metadata-directive: REPLACE`, which clients use to add `md5sum` to
    /// large objects). `check` sees the object as it is before the change (the copy-source
    /// conditions) and can refuse it. Returns the object as it is afterwards.
    pub fn replace_headers(
        &self,
        bucket: &str,
        key: &str,
        headers: Headers,
        check: impl FnOnce(&ObjectInfo) -> S3Result<()>,
    ) -> S3Result<ObjectInfo> {
        // Held from reading the current metadata to writing the new one, so that a concurrent
        // commit or metadata replacement through this endpoint is not undone. (`info` takes the
        // same lock to cache an ETag, so it is not called here; the ETag is computed the same way.)
        let _g = self.lock(bucket, key);
        let (file, md) = self.open_object(bucket, key)?;
        let stamp = Stamp::of(&md);
        let current = match self.read_meta(bucket, key, &stamp) {
            Some(m) => ObjectInfo {
                size: stamp.size,
                modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                etag: m.etag,
                headers: m.headers,
            },
            None => ObjectInfo {
                size: stamp.size,
                modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                etag: etag_without_meta(&file, &stamp)?,
                headers: Headers::default(),
            },
        };
        check(&current)?;
        // Another writer (not through this endpoint) may have replaced or modified the file since
        // it was opened: metadata for the old stamp would not apply to what is there now.
        let still_there = fs::symlink_metadata(self.root.join(bucket).join(key))
            .is_ok_and(|now| Stamp::of(&now) == stamp);
        if !still_there {
            return Err(s3_error!(
                InternalError,
                "The object changed while its metadata was replaced; try again"
            ));
        }
        let m = MetaFile {
            key: key.to_owned(),
            stamp,
            etag: current.etag,
            headers,
        };
        self.write_meta(bucket, &m).map_err(io_err)?;
        Ok(ObjectInfo {
            etag: m.etag,
            headers: m.headers,
            ..current
        })
    }

    /// Listing information for an object found by a directory walk.
    pub fn info_for_listing(
        &self,
        bucket: &str,
        key: &str,
        md: &fs::Metadata,
    ) -> S3Result<ObjectInfo> {
        let stamp = Stamp::of(md);
        if let Some(m) = self.read_meta(bucket, key, &stamp) {
            return Ok(ObjectInfo {
                size: stamp.size,
                modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                etag: m.etag,
                headers: m.headers,
            });
        }
        let (file, md) = self.open_object(bucket, key)?;
        self.info(bucket, key, &file, &md)
    }

    // ---- objects moved or deleted by other code -------------------------------------------

    /// The size/inode/mtime of the object file at `bucket/key` now: `None` unless it is a regular
    /// file reached without symlinks.
    fn current_stamp(&self, bucket: &str, key: &str) -> io::Result<Option<Stamp>> {
        let Some(dir) = self.bucket_dir(bucket) else {
            return Ok(None);
        };
        if !Self::parents_are_dirs(&dir, key) {
            return Ok(None);
        }
        match fs::symlink_metadata(dir.join(key)) {
            Ok(m) if m.is_file() => Ok(Some(Stamp::of(&m))),
            Ok(_) => Ok(None),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The metadata recorded for `key`, whatever file it was written for; `None` if there is
    /// none or it does not parse or names another key.
    fn recorded_meta(&self, bucket: &str, key: &str) -> io::Result<Option<MetaFile>> {
        let data = match fs::read(self.meta_path(bucket, key)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(serde_json::from_slice::<MetaFile>(&data)
            .ok()
            .filter(|m| m.key == key))
    }

    /// Removes the metadata recorded for `key` unless it describes the object file there now.
    /// Returns whether a file was removed. The caller holds the key's lock.
    fn drop_stale_meta_locked(&self, bucket: &str, key: &str) -> io::Result<bool> {
        // Garbage (unparsable, another key's) is removed too.
        let keep = match self.recorded_meta(bucket, key)? {
            Some(m) => self.current_stamp(bucket, key)? == Some(m.stamp),
            None => false,
        };
        if keep {
            return Ok(false);
        }
        match fs::remove_file(self.meta_path(bucket, key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Other code renamed the object file `bucket/from` to `bucket/to` (rename(2): same inode,
    /// size and modification time). The metadata recorded for `from` is written for `to` if it
    /// describes the file now at `to`, and the metadata left at `from` is removed (unless it
    /// describes a file written there since). Returns whether metadata was carried.
    ///
    /// Both keys' locks are held throughout, so a concurrent upload, metadata replacement or
    /// ETag caching through the endpoint on either key is neither undone nor carried wrongly.
    /// A crash in between leaves at worst metadata that no longer matches its file (ignored, as
    /// always) or none (the object is then served like one written by other code).
    pub fn object_moved(&self, bucket: &str, from: &str, to: &str) -> io::Result<bool> {
        if !ims_core::s3name::valid_bucket(bucket)
            || check_key(from).is_err()
            || check_key(to).is_err()
            || from == to
        {
            // Nothing the endpoint can have metadata for.
            return Ok(false);
        }
        let _g = self.lock_two(bucket, from, to);
        let carry = match self.recorded_meta(bucket, from)? {
            Some(m) if self.current_stamp(bucket, to)? == Some(m.stamp) => Some(m),
            _ => None,
        };
        let carried = match carry {
            Some(m) => {
                self.write_meta(
                    bucket,
                    &MetaFile {
                        key: to.to_owned(),
                        ..m
                    },
                )?;
                true
            }
            None => {
                // Whatever `to` had described an earlier file.
                self.drop_stale_meta_locked(bucket, to)?;
                false
            }
        };
        self.drop_stale_meta_locked(bucket, from)?;
        Ok(carried)
    }

    /// Other code deleted the object file `bucket/key`: its metadata goes too (unless it
    /// describes a file written there since). Returns whether a metadata file was removed.
    pub fn object_deleted(&self, bucket: &str, key: &str) -> io::Result<bool> {
        if !ims_core::s3name::valid_bucket(bucket) || check_key(key).is_err() {
            return Ok(false);
        }
        let _g = self.lock(bucket, key);
        self.drop_stale_meta_locked(bucket, key)
    }

    /// A new empty file under `<state>/tmp`.
    pub fn temp_file(&self) -> io::Result<TempFile> {
        let path = self.tmp.join(random_string(LOWER_HEX, 24)?);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile {
            path,
            file,
            armed: true,
        })
    }

    /// Creates the key's parent directories inside the bucket (no symlinks followed).
    /// `Ok(false)` if a directory on the way vanished meanwhile (a concurrent delete pruned it):
    /// the caller tries again.
    fn make_parents(&self, bucket_dir: &Path, key: &str) -> S3Result<bool> {
        let mut cur = bucket_dir.to_path_buf();
        let mut segs = key.split('/').peekable();
        while let Some(seg) = segs.next() {
            if segs.peek().is_none() {
                break;
            }
            cur.push(seg);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(parent_is_object()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
            match fs::create_dir(&cur) {
                Ok(()) => {
                    if let Some(p) = cur.parent() {
                        sync_dir(p);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    match fs::symlink_metadata(&cur) {
                        Ok(m) if m.is_dir() => {}
                        // Pruned by a delete between the two calls: start again.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                        _ => return Err(parent_is_object()),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(parent_is_object()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(true)
    }

    /// Moves a complete, fsynced temporary file into place as `bucket/key` and records its
    /// metadata. The rename is atomic: readers see the old or the new object, never a mix.
    /// `create_only` (`If-None-Match: *`) refuses to replace an existing object.
    pub fn commit(
        &self,
        mut tmp: TempFile,
        bucket: &str,
        key: &str,
        etag: String,
        headers: Headers,
        create_only: bool,
    ) -> S3Result<ObjectInfo> {
        check_key(key)?;
        let dir = self.require_bucket(bucket)?;
        let dest = dir.join(key);
        let _g = self.lock(bucket, key);
        if create_only && fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file()) {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > 20 {
                return Err(s3_error!(
                    InternalError,
                    "The object's directory kept disappearing while it was written; try again"
                ));
            }
            // A bucket deleted meanwhile is not recreated by the loop below.
            self.require_bucket(bucket)?;
            if !self.make_parents(&dir, key)? {
                continue;
            }
            match fs::rename(&tmp.path, &dest) {
                Ok(()) => break,
                // A parent directory was pruned by a concurrent delete: create it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // An (empty) directory where the object goes.
                Err(e)
                    if e.kind() == io::ErrorKind::IsADirectory
                        || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
                {
                    if fs::remove_dir(&dest).is_err() {
                        return Err(parent_is_object());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(parent_is_object()),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    return Err(s3_error!(
                        InternalError,
                        "The bucket directory is on another file system than the S3 state directory"
                    ));
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        tmp.disarm();
        if let Some(p) = dest.parent() {
            sync_dir(p);
        }
        let md = fs::symlink_metadata(&dest).map_err(io_err)?;
        let stamp = Stamp::of(&md);
        let m = MetaFile {
            key: key.to_owned(),
            stamp,
            etag,
            headers,
        };
        self.write_meta(bucket, &m).map_err(io_err)?;
        Ok(ObjectInfo {
            size: stamp.size,
            modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            etag: m.etag,
            headers: m.headers,
        })
    }

    /// Deletes an object (no error if it does not exist) and the directories it leaves empty.
    pub fn delete_object(&self, bucket: &str, key: &str) -> S3Result<()> {
        check_key(key)?;
        let dir = self.require_bucket(bucket)?;
        if !Self::parents_are_dirs(&dir, key) {
            return Ok(());
        }
        let path = dir.join(key);
        {
            let _g = self.lock(bucket, key);
            if let Ok(m) = fs::symlink_metadata(&path)
                && m.is_file()
            {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(e)),
                }
            }
            self.remove_meta(bucket, key);
        }
        let mut p = path;
        while p.pop() && p.starts_with(&dir) && p != dir {
            if fs::remove_dir(&p).is_err() {
                break;
            }
        }
        Ok(())
    }

    // ---- multipart uploads -------------------------------------------------------------------

    pub fn new_upload_dir(&self) -> io::Result<(String, PathBuf)> {
        loop {
            let id = random_string(LOWER_HEX, 32)?;
            let dir = self.uploads.join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => return Ok((id, dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The directory of an upload id (which must look like one we issued).
    pub fn upload_dir(&self, id: &str) -> S3Result<PathBuf> {
        let ok = id.len() == 32 && id.bytes().all(|c| LOWER_HEX.contains(&c));
        if !ok {
            return Err(no_such_upload());
        }
        Ok(self.uploads.join(id))
    }

    /// Writes a small JSON file atomically (temp + fsync + rename).
    pub fn write_json(&self, path: &Path, value: &impl Serialize) -> io::Result<()> {
        let mut tmp = self.temp_file()?;
        tmp.file
            .write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
        tmp.file.sync_all()?;
        fs::rename(&tmp.path, path)?;
        tmp.disarm();
        Ok(())
    }

    /// Moves a received part into its upload directory under a fresh name; returns the name.
    pub fn place_part(
        &self,
        mut tmp: TempFile,
        upload_dir: &Path,
        number: i32,
    ) -> S3Result<String> {
        let name = format!(
            "part-{number:05}-{}",
            random_string(LOWER_HEX, 12).map_err(io_err)?
        );
        match fs::rename(&tmp.path, upload_dir.join(&name)) {
            Ok(()) => {
                tmp.disarm();
                Ok(name)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(no_such_upload()),
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Whether a directory tree holds at least one regular file (symlinks are ignored).
pub(crate) fn has_file(dir: &Path) -> io::Result<bool> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_file() || (ft.is_dir() && has_file(&e.path())?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The ETag of a large object that has no metadata: stable while the file is unchanged, and not
/// mistakable for an MD5 (it has a `-`, like multipart ETags).
fn stable_etag(s: &Stamp) -> String {
    let id = format!("{}:{}:{}:{}", s.ino, s.size, s.mtime, s.mtime_nsec);
    format!("{}-1", hex(&Md5::checksum(id.as_bytes())))
}

/// The ETag of an object file that has no (valid) metadata: its MD5 up to [`LAZY_MD5_MAX`],
/// [`stable_etag`] above.
fn etag_without_meta(file: &File, stamp: &Stamp) -> S3Result<String> {
    if stamp.size > LAZY_MD5_MAX {
        return Ok(stable_etag(stamp));
    }
    Ok(hex(&hash_range(file, 0, stamp.size).map_err(io_err)?))
}

/// MD5 of `len` bytes of a file from `offset` (positional reads; the file offset is untouched).
pub(crate) fn hash_range(file: &File, offset: u64, len: u64) -> io::Result<[u8; 16]> {
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let want = usize::try_from((end - pos).min(IO_CHUNK as u64)).unwrap_or(IO_CHUNK);
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "object shrank while being read",
            ));
        }
        md5.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(md5.finalize())
}

/// Copies `len` bytes of `src` from `offset` to the end of `dst`, returning their MD5.
pub(crate) fn copy_hashed(
    src: &File,
    offset: u64,
    len: u64,
    dst: &mut File,
) -> io::Result<[u8; 16]> {
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let want = usize::try_from((end - pos).min(IO_CHUNK as u64)).unwrap_or(IO_CHUNK);
        let n = src.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shrank while being copied",
            ));
        }
        md5.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(md5.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("root"), &d.path().join("state")).unwrap();
        (d, s)
    }

    fn put(s: &Store, bucket: &str, key: &str, data: &[u8]) -> S3Result<ObjectInfo> {
        let mut t = s.temp_file().unwrap();
        t.file.write_all(data).unwrap();
        s.commit(
            t,
            bucket,
            key,
            hex(&Md5::checksum(data)),
            Headers::default(),
            false,
        )
    }

    #[test]
    fn state_must_be_outside_root() {
        let d = tempfile::tempdir().unwrap();
        assert!(Store::open(d.path(), &d.path().join("state")).is_err());
        assert!(Store::open(&d.path().join("r"), d.path()).is_err());
    }

    #[test]
    fn put_read_replace_delete() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        assert_eq!(
            s.create_bucket("bkt").unwrap_err().code(),
            &s3s::S3ErrorCode::BucketAlreadyOwnedByYou
        );
        let i = put(&s, "bkt", "a/b/c", b"hello").unwrap();
        assert_eq!(i.etag, "5d41402abc4b2a76b9719d911017c592");
        let (f, md) = s.open_object("bkt", "a/b/c").unwrap();
        assert_eq!(s.info("bkt", "a/b/c", &f, &md).unwrap().etag, i.etag);
        // Another writer replaces the file: the metadata no longer applies.
        fs::write(d.path().join("root/bkt/a/b/c"), b"other!").unwrap();
        let (f, md) = s.open_object("bkt", "a/b/c").unwrap();
        let j = s.info("bkt", "a/b/c", &f, &md).unwrap();
        assert_eq!(j.etag, hex(&Md5::checksum(b"other!")));
        assert_eq!(j.size, 6);
        // A file where a directory is needed, and the reverse.
        assert_eq!(
            put(&s, "bkt", "a/b/c/d", b"x").unwrap_err().code(),
            &s3s::S3ErrorCode::InvalidArgument
        );
        assert_eq!(
            put(&s, "bkt", "a/b", b"x").unwrap_err().code(),
            &s3s::S3ErrorCode::InvalidArgument
        );
        s.delete_object("bkt", "a/b/c").unwrap();
        s.delete_object("bkt", "a/b/c").unwrap();
        assert!(
            !d.path().join("root/bkt/a").exists(),
            "emptied directories pruned"
        );
        assert_eq!(
            s.open_object("bkt", "a/b/c").unwrap_err().code(),
            &s3s::S3ErrorCode::NoSuchKey
        );
        assert_eq!(
            s.open_object("nob", "x").unwrap_err().code(),
            &s3s::S3ErrorCode::NoSuchBucket
        );
        // Nothing but the bucket directory in the root; temp files are gone.
        assert_eq!(fs::read_dir(d.path().join("root/bkt")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(d.path().join("state/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_writers_and_deletes_in_one_directory() {
        let (_d, s) = store();
        s.create_bucket("bkt").unwrap();
        let s = std::sync::Arc::new(s);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let data = format!("{t}-{i}");
                        // Writers race the pruning of emptied directories by deletes.
                        put(&s, "bkt", &format!("d/e/k{t}"), data.as_bytes()).unwrap();
                        put(&s, "bkt", "d/e/shared", data.as_bytes()).unwrap();
                        s.delete_object("bkt", &format!("d/e/k{t}")).unwrap();
                        s.delete_object("bkt", "d/e/shared").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        put(&s, "bkt", "d/e/shared", b"last").unwrap();
        let (f, md) = s.open_object("bkt", "d/e/shared").unwrap();
        assert_eq!(
            s.info("bkt", "d/e/shared", &f, &md).unwrap().etag,
            hex(&Md5::checksum(b"last"))
        );
    }

    #[test]
    fn symlinks_are_not_objects() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), d.path().join("root/bkt/link"))
            .unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("root/bkt/dirlink")).unwrap();
        assert!(s.open_object("bkt", "link").is_err());
        assert!(s.open_object("bkt", "dirlink/secret").is_err());
        assert!(put(&s, "bkt", "dirlink/x", b"x").is_err());
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn delete_bucket_only_when_empty() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        put(&s, "bkt", "k", b"1").unwrap();
        fs::create_dir_all(d.path().join("root/bkt/empty/dirs")).unwrap();
        assert_eq!(
            s.delete_bucket("bkt").unwrap_err().code(),
            &s3s::S3ErrorCode::BucketNotEmpty
        );
        s.delete_object("bkt", "k").unwrap();
        s.delete_bucket("bkt").unwrap();
        assert!(!d.path().join("root/bkt").exists());
    }

    #[test]
    fn replace_headers_changes_only_the_metadata() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        let path = d.path().join("root/bkt/img/rootfs");
        let put_info = put(&s, "bkt", "img/rootfs", b"rootfs bytes").unwrap();
        let before = fs::symlink_metadata(&path).unwrap();
        let headers = Headers {
            content_type: Some("application/x-squashfs".into()),
            metadata: BTreeMap::from([("md5sum".into(), "abc".into())]),
            ..Headers::default()
        };
        let mut seen = None;
        let i = s
            .replace_headers("bkt", "img/rootfs", headers.clone(), |cur| {
                seen = Some(cur.clone());
                Ok(())
            })
            .unwrap();
        // The check saw the object before the change.
        assert_eq!(seen.unwrap().headers, Headers::default());
        assert_eq!(i.etag, put_info.etag);
        assert_eq!(i.size, 12);
        assert_eq!(i.headers, headers);
        let after = fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            Stamp::of(&after),
            Stamp::of(&before),
            "size, inode, mtime kept"
        );
        assert_eq!(fs::read(&path).unwrap(), b"rootfs bytes");
        let (f, md) = s.open_object("bkt", "img/rootfs").unwrap();
        let j = s.info("bkt", "img/rootfs", &f, &md).unwrap();
        assert_eq!(
            (j.etag, j.headers, j.modified),
            (i.etag, headers.clone(), i.modified)
        );

        // A refused condition changes nothing.
        let other = Headers {
            metadata: BTreeMap::from([("md5sum".into(), "zzz".into())]),
            ..Headers::default()
        };
        let e = s
            .replace_headers("bkt", "img/rootfs", other, |_| {
                Err(s3_error!(PreconditionFailed))
            })
            .unwrap_err();
        assert_eq!(e.code(), &s3s::S3ErrorCode::PreconditionFailed);
        let j = s.info("bkt", "img/rootfs", &f, &md).unwrap();
        assert_eq!(j.headers.metadata["md5sum"], "abc");

        // Objects written by other code keep the ETag `info` gives them (MD5, or the stable one
        // above the lazy-MD5 limit).
        fs::write(d.path().join("root/bkt/foreign"), b"foreign").unwrap();
        let big = File::create(d.path().join("root/bkt/big")).unwrap();
        big.set_len(LAZY_MD5_MAX + 1).unwrap();
        drop(big);
        for key in ["foreign", "big"] {
            let before = fs::symlink_metadata(d.path().join("root/bkt").join(key)).unwrap();
            let etag = match key {
                "foreign" => hex(&Md5::checksum(b"foreign")),
                _ => stable_etag(&Stamp::of(&before)),
            };
            let i = s
                .replace_headers("bkt", key, headers.clone(), |cur| {
                    assert_eq!(cur.etag, etag, "{key}");
                    Ok(())
                })
                .unwrap();
            assert_eq!(i.etag, etag, "{key}");
            let after = fs::symlink_metadata(d.path().join("root/bkt").join(key)).unwrap();
            assert_eq!(Stamp::of(&after), Stamp::of(&before), "{key}");
            let (f, md) = s.open_object("bkt", key).unwrap();
            let j = s.info("bkt", key, &f, &md).unwrap();
            assert_eq!((j.etag, j.headers), (etag, headers.clone()), "{key}");
        }

        // Missing objects, buckets, symlinks and directories are not objects.
        std::os::unix::fs::symlink(&path, d.path().join("root/bkt/link")).unwrap();
        for (bucket, key, code) in [
            ("bkt", "nosuch", s3s::S3ErrorCode::NoSuchKey),
            ("bkt", "img", s3s::S3ErrorCode::NoSuchKey),
            ("bkt", "link", s3s::S3ErrorCode::NoSuchKey),
            ("nob", "img/rootfs", s3s::S3ErrorCode::NoSuchBucket),
        ] {
            let e = s
                .replace_headers(bucket, key, headers.clone(), |_| Ok(()))
                .unwrap_err();
            assert_eq!(e.code(), &code, "{bucket}/{key}");
        }
        assert!(!d.path().join("root/bkt/nosuch").exists());
        assert_eq!(fs::read_dir(d.path().join("state/tmp")).unwrap().count(), 0);
    }

    fn headers(md5sum: &str) -> Headers {
        Headers {
            content_type: Some("application/vnd.cray.image.rootfs.squashfs".into()),
            metadata: BTreeMap::from([("md5sum".into(), md5sum.into())]),
            ..Headers::default()
        }
    }

    fn head(s: &Store, bucket: &str, key: &str) -> ObjectInfo {
        let (f, md) = s.open_object(bucket, key).unwrap();
        s.info(bucket, key, &f, &md).unwrap()
    }

    #[test]
    fn metadata_follows_a_rename_by_other_code() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        let root = d.path().join("root/bkt");
        // A small object, and one above the lazy-MD5 limit whose ETag (a multipart one) could
        // not be recomputed.
        let mut t = s.temp_file().unwrap();
        t.file.write_all(b"rootfs bytes").unwrap();
        let small = s
            .commit(
                t,
                "bkt",
                "img/rootfs",
                "e1".repeat(16),
                headers("aaa"),
                false,
            )
            .unwrap();
        let t = s.temp_file().unwrap();
        t.file.set_len(LAZY_MD5_MAX + 1).unwrap();
        let big = s
            .commit(t, "bkt", "img/big", "f00-3".into(), headers("bbb"), false)
            .unwrap();
        for (key, before) in [("img/rootfs", &small), ("img/big", &big)] {
            let to = format!("deleted/{key}");
            fs::create_dir_all(root.join("deleted/img")).unwrap();
            fs::rename(root.join(key), root.join(&to)).unwrap();
            assert!(s.object_moved("bkt", key, &to).unwrap(), "{key}");
            let after = head(&s, "bkt", &to);
            assert_eq!(
                (&after.etag, &after.headers, after.size),
                (&before.etag, &before.headers, before.size),
                "{key}"
            );
            assert!(
                !s.meta_path("bkt", key).exists(),
                "{key}: old metadata removed"
            );
            // And back (undelete).
            fs::rename(root.join(&to), root.join(key)).unwrap();
            assert!(s.object_moved("bkt", &to, key).unwrap(), "{key}");
            let back = head(&s, "bkt", key);
            assert_eq!(
                (back.etag, back.headers),
                (before.etag.clone(), before.headers.clone())
            );
            assert!(!s.meta_path("bkt", &to).exists(), "{key}");
        }
        assert_eq!(fs::read_dir(d.path().join("state/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_move_carries_only_metadata_that_describes_the_file() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        let root = d.path().join("root/bkt");

        // The file at the new key is not the one the metadata was written for (rewritten after
        // the move): nothing is carried, and the old metadata is gone.
        let mut t = s.temp_file().unwrap();
        t.file.write_all(b"first").unwrap();
        s.commit(t, "bkt", "a", "e1".repeat(16), headers("aaa"), false)
            .unwrap();
        fs::rename(root.join("a"), root.join("b")).unwrap();
        fs::write(root.join("b"), b"rewritten").unwrap();
        assert!(!s.object_moved("bkt", "a", "b").unwrap());
        assert!(!s.meta_path("bkt", "b").exists());
        assert!(!s.meta_path("bkt", "a").exists());
        let i = head(&s, "bkt", "b");
        assert_eq!(
            (i.etag, i.headers),
            (hex(&Md5::checksum(b"rewritten")), Headers::default())
        );

        // No metadata for the old key (written by other code): nothing is written for the new
        // one, and metadata left there by an earlier object is removed.
        fs::write(root.join("c"), b"foreign").unwrap();
        let mut t = s.temp_file().unwrap();
        t.file.write_all(b"earlier").unwrap();
        s.commit(t, "bkt", "d", "e2".repeat(16), headers("ddd"), false)
            .unwrap();
        fs::rename(root.join("c"), root.join("d")).unwrap();
        assert!(!s.object_moved("bkt", "c", "d").unwrap());
        assert!(!s.meta_path("bkt", "c").exists());
        assert!(!s.meta_path("bkt", "d").exists(), "stale metadata removed");
        assert_eq!(head(&s, "bkt", "d").headers, Headers::default());

        // An object uploaded at the old key after the move keeps its own metadata, and the moved
        // one still gets its own.
        let mut t = s.temp_file().unwrap();
        t.file.write_all(b"moved").unwrap();
        s.commit(t, "bkt", "e", "e3".repeat(16), headers("eee"), false)
            .unwrap();
        fs::rename(root.join("e"), root.join("f")).unwrap();
        let meta_e = fs::read(s.meta_path("bkt", "e")).unwrap();
        let mut t = s.temp_file().unwrap();
        t.file.write_all(b"new e").unwrap();
        s.commit(t, "bkt", "e", "e4".repeat(16), headers("new"), false)
            .unwrap();
        // (The new object's metadata replaced the moved one's, which is therefore lost.)
        assert_ne!(fs::read(s.meta_path("bkt", "e")).unwrap(), meta_e);
        assert!(!s.object_moved("bkt", "e", "f").unwrap());
        assert_eq!(head(&s, "bkt", "e").headers, headers("new"));
        assert_eq!(head(&s, "bkt", "f").headers, Headers::default());

        // Keys the endpoint cannot have metadata for are ignored.
        assert!(!s.object_moved("bkt", "../x", "y").unwrap());
        assert!(!s.object_moved("b", "x", "y").unwrap());
        assert!(!s.object_moved("bkt", "x", "x").unwrap());
    }

    #[test]
    fn a_delete_by_other_code_removes_the_metadata() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        let root = d.path().join("root/bkt");
        put(&s, "bkt", "k/a", b"a").unwrap();
        assert!(s.meta_path("bkt", "k/a").exists());
        fs::remove_file(root.join("k/a")).unwrap();
        assert!(s.object_deleted("bkt", "k/a").unwrap());
        assert!(!s.meta_path("bkt", "k/a").exists());
        assert!(!s.object_deleted("bkt", "k/a").unwrap(), "nothing left");
        // Written again through the endpoint since: its metadata stays.
        put(&s, "bkt", "k/a", b"again").unwrap();
        assert!(!s.object_deleted("bkt", "k/a").unwrap());
        assert!(s.meta_path("bkt", "k/a").exists());
        // Garbage is removed.
        fs::write(s.meta_path("bkt", "k/a"), b"not json").unwrap();
        fs::remove_file(root.join("k/a")).unwrap();
        assert!(s.object_deleted("bkt", "k/a").unwrap());
    }

    #[test]
    fn two_key_locks_never_deadlock() {
        let (_d, s) = store();
        // Keys sharing a stripe take it once; others in a fixed order.
        let same = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| k != "k0" && s.stripe("bkt", k) == s.stripe("bkt", "k0"))
            .unwrap();
        drop(s.lock_two("bkt", "k0", &same));
        let s = std::sync::Arc::new(s);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let (a, b) = (format!("a{}", i % 7), format!("b{}", i % 11));
                        let _g = if t % 2 == 0 {
                            s.lock_two("bkt", &a, &b)
                        } else {
                            s.lock_two("bkt", &b, &a)
                        };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn large_foreign_objects_get_a_stable_etag() {
        let (d, s) = store();
        s.create_bucket("bkt").unwrap();
        let f = File::create(d.path().join("root/bkt/big")).unwrap();
        f.set_len(LAZY_MD5_MAX + 1).unwrap();
        let (f, md) = s.open_object("bkt", "big").unwrap();
        let a = s.info("bkt", "big", &f, &md).unwrap().etag;
        let b = s.info("bkt", "big", &f, &md).unwrap().etag;
        assert_eq!(a, b);
        assert!(a.ends_with("-1"));
    }
}
