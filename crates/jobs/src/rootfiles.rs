//! Files IMS writes into an image root: never through a symbolic link (an image root is
//! untrusted: its links could point anywhere on the host), the site CA certificate, and the
//! distribution's trust store.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use ims_rootfs::confined::{Dir, Root};

use crate::error::{Context, Error, Result};

/// Where the site CA goes in every image, as in the original.
pub const CA_PATH: &str = "etc/cray/ca/certificate_authority.crt";
/// Its name in a distribution's trust store.
const CA_NAME: &str = "cray_certificate_authority.crt";

fn open_root(root: &Path) -> Result<Root> {
    Root::open(root).with_context(|| format!("image root {}", root.display()))
}

/// The directory `rel` (plain components) inside the image root, created as needed; refuses to
/// pass through anything that is not a real directory (a link could lead out of the image root).
fn root_dir(root: &Root, rel: &str) -> Result<Dir> {
    root.create_dirs(Path::new(rel), 0o755, |_| {})
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR | libc::ELOOP) => Error::Refused(format!(
                "/{rel} in the image root is not a directory (a link?)"
            )),
            _ => Error::Io {
                context: format!("cannot create /{rel} in {}", root.path().display()),
                source: e,
            },
        })
}

/// The directories `rels` (plain components) inside `root`, created as needed; refuses to pass
/// through anything that is not a real directory (a link could lead out of the image root).
pub fn dirs_in_root(root: &Path, rels: &[&str]) -> Result<()> {
    let root = open_root(root)?;
    for rel in rels {
        root_dir(&root, rel)?;
    }
    Ok(())
}

/// Writes `data` as a new regular file at `p` with `mode`, atomically (replacing whatever entry
/// was there, a link included, never writing through it).
pub fn replace_file(p: &Path, data: &[u8], mode: u32) -> Result<()> {
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(Error::Failed(format!(
            "cannot write {}: not a file name",
            p.display()
        )));
    };
    Root::open(dir)
        .and_then(|d| d.top().replace_file(name, data, mode))
        .with_context(|| format!("cannot write {}", p.display()))
}

/// Writes `data` as the regular file `/dir/name` (mode 0644) inside the image root `root`, as
/// [`replace_file`] does; the directories are created as needed, never through a link.
fn replace_in_root(root: &Path, dir: &str, name: &str, data: &[u8]) -> Result<()> {
    root_dir(&open_root(root)?, dir)?
        .replace_file(OsStr::new(name), data, 0o644)
        .with_context(|| format!("cannot write /{dir}/{name} in {}", root.display()))
}

/// Writes `data` as `/dir/name` (mode 0644) inside the image root `root`, the image's own entry
/// (whatever it is, a link included) set aside as `/dir/saved` for [`put_back`].
pub fn replace_keeping(root: &Path, dir: &str, name: &str, saved: &str, data: &[u8]) -> Result<()> {
    let d = root_dir(&open_root(root)?, dir)?;
    let (name, saved_name) = (OsStr::new(name), OsStr::new(saved));
    if matches!(d.kind(name), Ok(Some(_))) {
        // A rename moves a link as a link.
        d.rename(name, saved_name)
            .with_context(|| format!("cannot set aside /{dir}/{}", name.display()))?;
    }
    d.replace_file(name, data, 0o644).with_context(|| {
        format!(
            "cannot write /{dir}/{} in {}",
            name.display(),
            root.display()
        )
    })
}

/// Undoes [`replace_keeping`]: `/dir/saved` back as `/dir/name` (or no `/dir/name` when the image
/// had none).
pub fn put_back(root: &Path, dir: &str, name: &str, saved: &str) -> Result<()> {
    let d = root_dir(&open_root(root)?, dir)?;
    let (name, saved_name) = (OsStr::new(name), OsStr::new(saved));
    let _ = d.remove_file(name);
    if matches!(d.kind(saved_name), Ok(Some(_))) {
        d.rename(saved_name, name)
            .with_context(|| format!("cannot restore /{dir}/{}", name.display()))?;
    }
    Ok(())
}

/// Puts the site CA certificate `ca` at `/etc/cray/ca/certificate_authority.crt`.
pub fn install_ca(root: &Path, ca: &Path) -> Result<()> {
    let data = read_ca(ca)?;
    replace_in_root(root, "etc/cray/ca", "certificate_authority.crt", &data)
}

fn read_ca(ca: &Path) -> Result<Vec<u8>> {
    std::fs::read(ca).with_context(|| format!("cannot read the CA certificate {}", ca.display()))
}

/// A distribution's trust store: where anchors go and what rebuilds the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustStore {
    pub family: &'static str,
    pub anchors: &'static str,
    pub update: &'static [&'static str],
}

/// The image root's trust store, told by the tool that rebuilds it (`None`: no known one).
pub fn trust_store(root: &Path) -> Option<TrustStore> {
    let root = Root::open(root).ok()?;
    // Links are followed inside the image root only; one that leaves it names nothing.
    let has = |rel: &str| {
        root.resolve(Path::new(rel))
            .ok()
            .flatten()
            .is_some_and(|r| r.is_file())
    };
    if has("usr/sbin/update-ca-certificates") {
        if has("etc/debian_version") {
            return Some(TrustStore {
                family: "Debian",
                anchors: "usr/local/share/ca-certificates",
                update: &["/usr/sbin/update-ca-certificates"],
            });
        }
        // SUSE's update-ca-certificates (p11-kit) reads the pki anchors.
        return Some(TrustStore {
            family: "SUSE",
            anchors: "usr/share/pki/trust/anchors",
            update: &["/usr/sbin/update-ca-certificates"],
        });
    }
    for tool in ["usr/bin/update-ca-trust", "usr/sbin/update-ca-trust"] {
        if has(tool) {
            return Some(TrustStore {
                family: "Red Hat",
                anchors: "etc/pki/ca-trust/source/anchors",
                update: if tool.starts_with("usr/bin") {
                    &["/usr/bin/update-ca-trust", "extract"]
                } else {
                    &["/usr/sbin/update-ca-trust", "extract"]
                },
            });
        }
    }
    None
}

/// Adds the CA certificate `ca` to the image root's trust store and rebuilds the bundle with the
/// image's own tool (chrooted, clean environment). `Ok(None)`: the image has no known trust
/// store (only `/etc/cray/ca` has the certificate then).
pub fn add_to_trust_store(root: &Path, ca: &Path) -> Result<Option<TrustStore>> {
    let Some(store) = trust_store(root) else {
        return Ok(None);
    };
    let data = read_ca(ca)?;
    replace_in_root(root, store.anchors, CA_NAME, &data)?;
    let out = Command::new("chroot")
        .arg(root)
        .args(store.update)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run chroot")?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "{} in the image root failed ({}): {}",
            store.update.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Some(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_the_image_root_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path();
        std::os::unix::fs::symlink(outside.path(), root.join("etc")).unwrap();
        let e = dirs_in_root(root, &["etc/cray/ca"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        // A link where the file goes is replaced, not written through.
        std::fs::remove_file(root.join("etc")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, root.join("etc/resolv.conf")).unwrap();
        replace_file(
            &root.join("etc/resolv.conf"),
            b"nameserver 1.1.1.1\n",
            0o644,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(
            std::fs::symlink_metadata(root.join("etc/resolv.conf"))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn a_replaced_file_is_put_back_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("etc/resolv.conf")).unwrap();
        replace_keeping(
            root,
            "etc",
            "resolv.conf",
            ".saved",
            b"nameserver 10.0.2.3\n",
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\n"
        );
        assert_eq!(std::fs::read_link(root.join("etc/.saved")).unwrap(), victim);
        put_back(root, "etc", "resolv.conf", ".saved").unwrap();
        assert_eq!(
            std::fs::read_link(root.join("etc/resolv.conf")).unwrap(),
            victim
        );
        assert!(std::fs::symlink_metadata(root.join("etc/.saved")).is_err());
        // An image without one has none again; an /etc that is a link is refused.
        std::fs::remove_file(root.join("etc/resolv.conf")).unwrap();
        replace_keeping(root, "etc", "resolv.conf", ".saved", b"x").unwrap();
        put_back(root, "etc", "resolv.conf", ".saved").unwrap();
        assert!(
            std::fs::read_dir(root.join("etc"))
                .unwrap()
                .next()
                .is_none()
        );
        std::fs::remove_dir(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("etc")).unwrap();
        let e = replace_keeping(root, "etc", "resolv.conf", ".saved", b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn trust_stores_are_told_by_their_tool() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert_eq!(trust_store(root), None);
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("usr/sbin/update-ca-certificates"), "#!/bin/sh\n").unwrap();
        assert_eq!(trust_store(root).unwrap().family, "SUSE");
        std::fs::write(root.join("etc/debian_version"), "12.8\n").unwrap();
        let s = trust_store(root).unwrap();
        assert_eq!(
            (s.family, s.anchors),
            ("Debian", "usr/local/share/ca-certificates")
        );
        // A tool that is a link out of the image root is not taken for the image's own.
        std::fs::remove_file(root.join("usr/sbin/update-ca-certificates")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../bin/sh",
            root.join("usr/sbin/update-ca-certificates"),
        )
        .unwrap();
        assert_eq!(trust_store(root), None);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/update-ca-trust"), "#!/bin/sh\n").unwrap();
        let s = trust_store(root).unwrap();
        assert_eq!(s.update, ["/usr/bin/update-ca-trust", "extract"]);
    }
}
