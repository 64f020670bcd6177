//! Kernel and initrd detection on the layouts distributions write, and on hostile links.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use ims_rootfs::{RootfsError, find_boot_artifacts};

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&p, rel.as_bytes()).expect("write");
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    symlink(target, &p).expect("symlink");
}

fn debian(root: &Path) {
    for v in ["6.1.0-9-amd64", "6.1.0-13-amd64", "5.10.0-26-amd64"] {
        touch(root, &format!("boot/vmlinuz-{v}"));
        touch(root, &format!("boot/initrd.img-{v}"));
        touch(root, &format!("boot/config-{v}"));
        touch(root, &format!("boot/System.map-{v}"));
    }
}

#[test]
fn debian_links_in_root_win() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    debian(root);
    // The / links point at the older kernel (e.g. after a downgrade): they win over version sort.
    link(root, "vmlinuz", "boot/vmlinuz-6.1.0-9-amd64");
    link(root, "initrd.img", "/boot/initrd.img-6.1.0-9-amd64"); // absolute: inside the root
    link(root, "vmlinuz.old", "boot/vmlinuz-5.10.0-26-amd64");
    let b = find_boot_artifacts(root, "x86_64", None, None).expect("found");
    assert_eq!(b.kernel, root.join("boot/vmlinuz-6.1.0-9-amd64"));
    assert_eq!(b.initrd, Some(root.join("boot/initrd.img-6.1.0-9-amd64")));
}

#[test]
fn debian_without_links_takes_the_newest_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    debian(root);
    touch(root, "boot/vmlinuz-6.1.0-13-amd64.old");
    touch(root, "boot/initrd.img-6.1.0-14-amd64"); // no kernel of that version: the kernel's own initrd wins
    let b = find_boot_artifacts(root, "x86_64", None, None).expect("found");
    assert_eq!(b.kernel, root.join("boot/vmlinuz-6.1.0-13-amd64"));
    assert_eq!(b.initrd, Some(root.join("boot/initrd.img-6.1.0-13-amd64")));
}

#[test]
fn suse_boot_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    for v in [
        "5.14.21-150500.55.19-default",
        "5.14.21-150500.55.28-default",
    ] {
        touch(root, &format!("boot/vmlinuz-{v}"));
        touch(root, &format!("boot/initrd-{v}"));
    }
    link(root, "boot/vmlinuz", "vmlinuz-5.14.21-150500.55.19-default");
    link(root, "boot/initrd", "initrd-5.14.21-150500.55.19-default");
    let b = find_boot_artifacts(root, "x86_64", None, None).expect("found");
    assert_eq!(
        b.kernel,
        root.join("boot/vmlinuz-5.14.21-150500.55.19-default")
    );
    assert_eq!(
        b.initrd,
        Some(root.join("boot/initrd-5.14.21-150500.55.19-default"))
    );
}

#[test]
fn fedora_style_initramfs_and_no_initrd() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    touch(root, "boot/vmlinuz-6.5.6-300.fc39.x86_64");
    touch(root, "boot/vmlinuz-0-rescue-0123456789abcdef");
    touch(root, "boot/initramfs-6.5.6-300.fc39.x86_64.img");
    touch(root, "boot/initramfs-0-rescue-0123456789abcdef.img");
    let b = find_boot_artifacts(root, "x86_64", None, None).expect("found");
    assert_eq!(b.kernel, root.join("boot/vmlinuz-6.5.6-300.fc39.x86_64"));
    assert_eq!(
        b.initrd,
        Some(root.join("boot/initramfs-6.5.6-300.fc39.x86_64.img"))
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    touch(tmp.path(), "boot/vmlinuz-6.1.0-13-amd64");
    let b = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect("found");
    assert_eq!(b.initrd, None);
}

#[test]
fn explicit_names_win_and_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    debian(root);
    link(root, "vmlinuz", "boot/vmlinuz-6.1.0-13-amd64");
    touch(root, "boot/custom/kernel");
    let b = find_boot_artifacts(
        root,
        "x86_64",
        Some("vmlinuz-5.10.0-26-amd64"),
        Some("initrd.img-6.1.0-9-amd64"),
    )
    .expect("found");
    assert_eq!(b.kernel, root.join("boot/vmlinuz-5.10.0-26-amd64"));
    assert_eq!(b.initrd, Some(root.join("boot/initrd.img-6.1.0-9-amd64")));
    let b = find_boot_artifacts(root, "x86_64", Some("custom/kernel"), None).expect("found");
    assert_eq!(b.kernel, root.join("boot/custom/kernel"));

    let err = find_boot_artifacts(root, "x86_64", Some("vmlinuz-9.9"), None).expect_err("missing");
    assert!(
        matches!(err, RootfsError::BootFileNotFound { what: "kernel", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("vmlinuz-9.9"), "{err}");
    let err =
        find_boot_artifacts(root, "x86_64", None, Some("initrd-missing")).expect_err("missing");
    assert!(
        matches!(err, RootfsError::BootFileNotFound { what: "initrd", .. }),
        "{err}"
    );
    for bad in ["../etc/passwd", "/etc/passwd", "a/../../x", ""] {
        let err = find_boot_artifacts(root, "x86_64", Some(bad), None).expect_err("invalid");
        assert!(
            matches!(err, RootfsError::InvalidFileName { .. }),
            "{bad}: {err}"
        );
    }
    // A directory is not a kernel.
    let err = find_boot_artifacts(root, "x86_64", Some("custom"), None).expect_err("a directory");
    assert!(matches!(err, RootfsError::BootFileNotFound { .. }), "{err}");
}

#[test]
fn aarch64_image() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    touch(root, "boot/Image-5.14.21-150500.55.19-default");
    touch(root, "boot/Image-5.14.21-150500.55.7-default");
    touch(root, "boot/initrd-5.14.21-150500.55.19-default");
    let b = find_boot_artifacts(root, "aarch64", None, None).expect("found");
    assert_eq!(
        b.kernel,
        root.join("boot/Image-5.14.21-150500.55.19-default")
    );
    assert_eq!(
        b.initrd,
        Some(root.join("boot/initrd-5.14.21-150500.55.19-default"))
    );
    link(root, "boot/Image", "Image-5.14.21-150500.55.7-default");
    let b = find_boot_artifacts(root, "aarch64", None, None).expect("found");
    assert_eq!(
        b.kernel,
        root.join("boot/Image-5.14.21-150500.55.7-default")
    );
    // x86_64 names do not match an aarch64 kernel.
    let err = find_boot_artifacts(root, "x86_64", None, None).expect_err("no x86_64 kernel");
    assert!(matches!(err, RootfsError::NoKernel { .. }), "{err}");
}

#[test]
fn links_never_leave_the_root() {
    // `..` climbing above the root.
    let tmp = tempfile::tempdir().expect("tempdir");
    link(tmp.path(), "vmlinuz", "../../../../etc/passwd");
    let err = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect_err("escapes");
    assert!(matches!(err, RootfsError::LinkEscapesRoot { .. }), "{err}");
    assert!(err.to_string().contains("../../../../etc/passwd"), "{err}");

    // An absolute target names a file inside the root; the host's /etc/hostname is never used.
    let tmp = tempfile::tempdir().expect("tempdir");
    link(tmp.path(), "boot/vmlinuz", "/etc/hostname");
    let err = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect_err("not in the root");
    assert!(matches!(err, RootfsError::NoKernel { .. }), "{err}");
    // ... and once the root has one, that one is used.
    touch(tmp.path(), "etc/hostname");
    let b = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect("inside the root");
    assert_eq!(b.kernel, tmp.path().join("etc/hostname"));

    // A /boot that is a link to the host's /boot is the root's own /boot (itself): a loop, not the host's kernels.
    let tmp = tempfile::tempdir().expect("tempdir");
    symlink("/boot", tmp.path().join("boot")).expect("symlink");
    let err = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect_err("loop");
    assert!(matches!(err, RootfsError::LinkLoop { .. }), "{err}");

    // An explicit name through an escaping link.
    let tmp = tempfile::tempdir().expect("tempdir");
    link(tmp.path(), "boot/kernel", "../../outside");
    let err = find_boot_artifacts(tmp.path(), "x86_64", Some("kernel"), None).expect_err("escapes");
    assert!(matches!(err, RootfsError::LinkEscapesRoot { .. }), "{err}");
}

#[test]
fn link_loops_and_dangling_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    link(tmp.path(), "boot/vmlinuz", "vmlinuz2");
    link(tmp.path(), "boot/vmlinuz2", "/boot/vmlinuz");
    let err = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect_err("loop");
    assert!(matches!(err, RootfsError::LinkLoop { .. }), "{err}");

    // A dangling link is skipped and the next rule applies.
    let tmp = tempfile::tempdir().expect("tempdir");
    link(tmp.path(), "vmlinuz", "boot/vmlinuz-gone");
    touch(tmp.path(), "boot/vmlinuz-6.1.0-13-amd64");
    let b = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect("found");
    assert_eq!(b.kernel, tmp.path().join("boot/vmlinuz-6.1.0-13-amd64"));
}

#[test]
fn no_kernel_at_all() {
    let tmp = tempfile::tempdir().expect("tempdir");
    touch(tmp.path(), "boot/config-6.1.0-13-amd64");
    touch(tmp.path(), "boot/initrd.img-6.1.0-13-amd64");
    let err = find_boot_artifacts(tmp.path(), "x86_64", None, None).expect_err("no kernel");
    let msg = err.to_string();
    assert!(matches!(err, RootfsError::NoKernel { .. }), "{msg}");
    assert!(
        msg.contains("/boot/vmlinuz")
            && msg.contains("/vmlinuz")
            && msg.contains("vmlinuz-<version>"),
        "{msg}"
    );

    let err = find_boot_artifacts(&tmp.path().join("missing"), "x86_64", None, None)
        .expect_err("no root");
    assert!(err.to_string().contains("missing"), "{err}");
}
