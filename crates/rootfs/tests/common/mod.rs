//! A small image root with everything a rootfs must keep, and the checks that it was kept.
//! Uses the real tools (setcap/getcap, setfattr/getfattr, mknod); the tests run as root.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

pub const KVER: &str = "6.1.0-13-amd64";

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn build_image_root(root: &Path) {
    fs::create_dir_all(root.join("bin")).expect("mkdir bin");
    fs::create_dir_all(root.join("dev")).expect("mkdir dev");
    fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    fs::create_dir_all(root.join("boot")).expect("mkdir boot");
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod root");

    let ping = root.join("bin/ping");
    fs::copy("/bin/true", &ping).expect("copy a binary");
    run(Command::new("setcap").arg("cap_net_raw+ep").arg(&ping));
    run(Command::new("setfattr")
        .args(["-n", "user.ims-test", "-v", "kept"])
        .arg(&ping));

    run(Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));

    fs::write(root.join("etc/owned"), b"owned by 1234\n").expect("write");
    std::os::unix::fs::chown(root.join("etc/owned"), Some(1234), Some(1234)).expect("chown");
    fs::hard_link(root.join("etc/owned"), root.join("etc/hardlink")).expect("hard link");
    symlink("owned", root.join("etc/symlink")).expect("symlink");

    fs::write(root.join(format!("boot/vmlinuz-{KVER}")), b"kernel").expect("write");
    fs::write(root.join(format!("boot/initrd.img-{KVER}")), b"initrd").expect("write");
    symlink(format!("boot/vmlinuz-{KVER}"), root.join("vmlinuz")).expect("symlink");
    symlink(format!("boot/initrd.img-{KVER}"), root.join("initrd.img")).expect("symlink");
}

pub fn check_image_root(root: &Path) {
    let ping = root.join("bin/ping");
    let caps = run(Command::new("getcap").arg(&ping));
    assert!(
        caps.contains("cap_net_raw=ep"),
        "security.capability lost: {caps:?}"
    );
    let user = run(Command::new("getfattr")
        .args(["--only-values", "-n", "user.ims-test"])
        .arg(&ping));
    assert_eq!(user, "kept", "user xattr lost");

    let dev = fs::symlink_metadata(root.join("dev/null")).expect("device node");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        dev.file_type().is_char_device(),
        "dev/null is not a character device"
    );
    assert_eq!(dev.rdev(), libc_makedev(1, 3), "device numbers changed");

    let owned = fs::symlink_metadata(root.join("etc/owned")).expect("owned file");
    assert_eq!((owned.uid(), owned.gid()), (1234, 1234), "ownership lost");
    assert_eq!(owned.nlink(), 2, "hard link lost");
    let hard = fs::symlink_metadata(root.join("etc/hardlink")).expect("hard link");
    assert_eq!(hard.ino(), owned.ino(), "hard link is a copy");

    assert_eq!(
        fs::read_link(root.join("etc/symlink"))
            .expect("symlink")
            .to_str(),
        Some("owned")
    );
    assert_eq!(
        fs::read_link(root.join("vmlinuz"))
            .expect("symlink")
            .to_str(),
        Some(&*format!("boot/vmlinuz-{KVER}"))
    );
    assert_eq!(
        fs::read(root.join(format!("boot/vmlinuz-{KVER}"))).expect("kernel"),
        b"kernel"
    );

    let mode = fs::symlink_metadata(root).expect("root").mode() & 0o7777;
    assert_eq!(mode, 0o755, "the image's / has mode {mode:o}");
}

/// Linux's `makedev` for small numbers.
pub fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
}

pub fn is_root() -> bool {
    run(Command::new("id").arg("-u")).trim() == "0"
}
