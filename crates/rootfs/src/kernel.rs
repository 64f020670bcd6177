//! Finding the kernel and the initrd in an image root.
//!
//! The rule, in order (the first that yields a regular file wins):
//!
//! 1. **explicit names** (the job's `kernel_file_name` / `initrd_file_name`, the import's `--kernel`), relative to
//!    `<root>/boot`; an explicit name that is missing is an error, never a fall-back;
//! 2. the `boot/` links: `boot/vmlinuz` (and `boot/Image` on aarch64), `boot/initrd`, `boot/initrd.img`;
//! 3. the distribution's links in `/`: `/vmlinuz`, `/initrd.img` (Debian, Ubuntu), `/Image` on aarch64;
//! 4. the newest versioned file by version sort: `boot/vmlinuz-*` (and `boot/Image-*` on aarch64); for the
//!    initrd first the one of the chosen kernel's version, then the newest of `boot/initrd.img-*`,
//!    `boot/initrd-*`, `boot/initramfs-*`. Rescue and kdump images and `.old`/`.bak`/`.sig`/`.hmac` files are
//!    never chosen.
//!
//! Every path is resolved **inside the image root**, like a chroot: an absolute link target `/boot/vmlinuz-6.1`
//! means `<root>/boot/vmlinuz-6.1`. A link whose `..` would climb above the root is an error
//! ([`RootfsError::LinkEscapesRoot`]), as is a link loop ([`RootfsError::LinkLoop`]); a host file is never read.
//! A link that leads nowhere inside the root simply does not match, and the next rule is tried.
//!
//! The image root must not change while this runs (it is a job's own copy).

use std::cmp::Ordering;
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::confined::{ResolveError, Root};
use crate::error::{Result, RootfsError, io_err};

/// Where the kernel and the initrd of an image root are, as host paths of regular files inside the root (no
/// symbolic link left in them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
}

/// Finds the kernel (required) and the initrd (optional) of the image root `image_root` for `arch`
/// (`x86_64` or `aarch64`; other values are looked up with both sets of names). See the module documentation
/// for the rule.
pub fn find_boot_artifacts(
    image_root: &Path,
    arch: &str,
    explicit_kernel: Option<&str>,
    explicit_initrd: Option<&str>,
) -> Result<BootFiles> {
    let meta =
        fs::metadata(image_root).map_err(io_err("cannot read the image root", image_root))?;
    if !meta.is_dir() {
        return Err(RootfsError::Io {
            action: "the image root is not a directory:",
            path: image_root.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    let names = Names::for_arch(arch);
    let root = Root::open(image_root).map_err(io_err("cannot read the image root", image_root))?;

    let kernel = match explicit_kernel {
        Some(name) => explicit(&root, "kernel", name)?,
        None => find_kernel(&root, &names)?,
    };
    let initrd = match explicit_initrd {
        Some(name) => Some(explicit(&root, "initrd", name)?),
        None => find_initrd(&root, &kernel)?,
    };
    Ok(BootFiles { kernel, initrd })
}

struct Names {
    links: Vec<&'static str>,
    prefixes: Vec<&'static str>,
}

impl Names {
    fn for_arch(arch: &str) -> Names {
        match arch.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86-64" => Names {
                links: vec!["boot/vmlinuz", "vmlinuz"],
                prefixes: vec!["vmlinuz-"],
            },
            "aarch64" | "arm64" => Names {
                links: vec!["boot/Image", "boot/vmlinuz", "Image", "vmlinuz"],
                prefixes: vec!["Image-", "vmlinuz-"],
            },
            _ => Names {
                links: vec!["boot/vmlinuz", "boot/Image", "vmlinuz", "Image"],
                prefixes: vec!["vmlinuz-", "Image-"],
            },
        }
    }
}

const INITRD_LINKS: [&str; 5] = [
    "boot/initrd",
    "boot/initrd.img",
    "boot/initramfs.img",
    "initrd.img",
    "initrd",
];
const INITRD_PREFIXES: [&str; 3] = ["initrd.img-", "initrd-", "initramfs-"];

fn find_kernel(root: &Root, names: &Names) -> Result<PathBuf> {
    for link in &names.links {
        if let Some(p) = resolve_file(root, Path::new(link))? {
            return Ok(p);
        }
    }
    if let Some((p, _)) = newest_versioned(root, &names.prefixes, None)? {
        return Ok(p);
    }
    let mut looked_for: Vec<String> = names.links.iter().map(|l| format!("/{l}")).collect();
    looked_for.extend(names.prefixes.iter().map(|p| format!("/boot/{p}<version>")));
    Err(RootfsError::NoKernel {
        root: root.path().to_path_buf(),
        looked_for: looked_for.join(", "),
    })
}

fn find_initrd(root: &Root, kernel: &Path) -> Result<Option<PathBuf>> {
    for link in INITRD_LINKS {
        if let Some(p) = resolve_file(root, Path::new(link))? {
            return Ok(Some(p));
        }
    }
    // The initrd of the chosen kernel's version, when the kernel's file name carries one.
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| {
            n.strip_prefix("vmlinuz-")
                .or_else(|| n.strip_prefix("Image-"))
        })
        .filter(|v| !v.is_empty());
    if let Some((p, _)) = newest_versioned(root, &INITRD_PREFIXES, version)? {
        return Ok(Some(p));
    }
    Ok(newest_versioned(root, &INITRD_PREFIXES, None)?.map(|(p, _)| p))
}

/// The newest `boot/<prefix><version>` that resolves to a regular file. With `want_version`, only files of
/// that version (`<prefix><version>` or `<prefix><version>.img`).
fn newest_versioned(
    root: &Root,
    prefixes: &[&str],
    want_version: Option<&str>,
) -> Result<Option<(PathBuf, String)>> {
    let boot_rel = Path::new("boot");
    let Some(boot) = resolve(root, boot_rel)?.filter(|r| r.is_dir()) else {
        return Ok(None);
    };
    let host = root.host_path(&boot.rel);
    let names = match root.dir(&boot.rel).and_then(|d| d.list()) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot list", &host)(e)),
    };
    let mut candidates: Vec<(String, String)> = Vec::new(); // (version, file name)
    for name in names {
        let Some(name) = name.to_str().map(str::to_string) else {
            continue;
        };
        let Some(version) = prefixes.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        if version.is_empty() || excluded(version) {
            continue;
        }
        let version = version.strip_suffix(".img").unwrap_or(version).to_string();
        if let Some(want) = want_version
            && version != want
        {
            continue;
        }
        candidates.push((version, name));
    }
    // Newest first; the file name breaks ties so the choice never depends on directory order.
    candidates.sort_by(|a, b| version_cmp(&b.0, &a.0).then_with(|| b.1.cmp(&a.1)));
    for (version, name) in candidates {
        if let Some(p) = resolve_file(root, &boot_rel.join(&name))? {
            return Ok(Some((p, version)));
        }
    }
    Ok(None)
}

fn excluded(version: &str) -> bool {
    let v = version.to_ascii_lowercase();
    v.contains("rescue")
        || v.contains("kdump")
        || [
            ".old",
            ".bak",
            ".sig",
            ".hmac",
            ".orig",
            ".dpkg-old",
            ".dpkg-new",
            ".dpkg-tmp",
        ]
        .iter()
        .any(|s| v.ends_with(s))
}

/// An explicit file name, relative to `<root>/boot`.
fn explicit(root: &Root, what: &'static str, name: &str) -> Result<PathBuf> {
    let invalid = |reason| RootfsError::InvalidFileName {
        what,
        name: name.to_string(),
        reason,
    };
    if name.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    let rel = Path::new(name);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(
                    "it must not contain `..`: names are relative to /boot",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(
                    "it must be relative to the image's /boot, not absolute",
                ));
            }
        }
    }
    resolve_file(root, &Path::new("boot").join(rel))?.ok_or_else(|| RootfsError::BootFileNotFound {
        what,
        name: name.to_string(),
        root: root.path().to_path_buf(),
    })
}

/// `rel` resolved inside `root` (see [`Root::resolve`]), as the image root's errors.
fn resolve(root: &Root, rel: &Path) -> Result<Option<crate::confined::Resolved>> {
    root.resolve(rel).map_err(|e| match e {
        ResolveError::Escapes { link, target } => RootfsError::LinkEscapesRoot { link, target },
        ResolveError::Loop { path } => RootfsError::LinkLoop { path },
        ResolveError::Io { path, source } => {
            let host = root.host_path(path.strip_prefix("/").unwrap_or(&path));
            io_err("cannot read", &host)(source)
        }
    })
}

/// `rel` resolved inside `root`, if it ends on a regular file: its host path (no link in it).
fn resolve_file(root: &Root, rel: &Path) -> Result<Option<PathBuf>> {
    Ok(resolve(root, rel)?
        .filter(|r| r.is_file())
        .map(|r| root.host_path(&r.rel)))
}

/// The kernel parameters file `/boot/<file_name>` of an image root (links followed inside the root), if it is
/// a regular file: what becomes an image's `boot_parameters` artifact, in jobs' packaging and in
/// `ims images import` alike. Anything else there (nothing, a directory, a link out of the root) is no file.
pub fn kernel_parameters_file(root: &Path, file_name: &str) -> Option<PathBuf> {
    let root = Root::open(root).ok()?;
    resolve_file(&root, &Path::new("boot").join(file_name))
        .ok()
        .flatten()
}

/// Version sort, as `sort -V` / `ls -v` order file names: digit runs compare as numbers, other runs
/// character by character with `~` before everything (even the end), letters before other characters.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefix.
        let an = a.iter().take_while(|c| !c.is_ascii_digit()).count();
        let bn = b.iter().take_while(|c| !c.is_ascii_digit()).count();
        let ord = cmp_non_digits(&a[..an], &b[..bn]);
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[an..];
        b = &b[bn..];
        // Digit run, compared as a number of any size.
        let ad = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let bd = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let ord = cmp_numbers(&a[..ad], &b[..bd]);
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[ad..];
        b = &b[bd..];
    }
    Ordering::Equal
}

fn char_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn cmp_non_digits(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let ord = char_order(a.get(i).copied()).cmp(&char_order(b.get(i).copied()));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn cmp_numbers(a: &[u8], b: &[u8]) -> Ordering {
    let a = &a[a.iter().take_while(|&&c| c == b'0').count()..];
    let b = &b[b.iter().take_while(|&&c| c == b'0').count()..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_sort() {
        let mut v = vec![
            "6.1.0-9-amd64",
            "6.1.0-13-amd64",
            "5.10.0-26-amd64",
            "6.1.0-13-amd64~rc1",
            "6.10.0-1-amd64",
            "6.1.0-10-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-26-amd64",
                "6.1.0-9-amd64",
                "6.1.0-10-amd64",
                "6.1.0-13-amd64~rc1",
                "6.1.0-13-amd64",
                "6.10.0-1-amd64"
            ]
        );
        assert_eq!(version_cmp("1.0", "1.0"), Ordering::Equal);
        assert_eq!(
            version_cmp("99999999999999999999999", "100000000000000000000000"),
            Ordering::Less
        );
        assert_eq!(version_cmp("", "1"), Ordering::Less);
    }

    #[test]
    fn excluded_names() {
        assert!(excluded("0-rescue-0123456789abcdef"));
        assert!(excluded("6.1.0-13-amd64.old"));
        assert!(excluded("5.14.21-default-kdump"));
        assert!(!excluded("6.1.0-13-amd64"));
    }
}
