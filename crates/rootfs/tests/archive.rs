//! Tar archives → directory and → squashfs, with GNU tar, gzip, xz, zstd and squashfs-tools.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{build_image_root, check_image_root, run};
use ims_rootfs::archive::{ArchiveFormat, check_members, detect_format, tar_to_squashfs, unpack};
use ims_rootfs::squashfs::{SquashfsOptions, is_squashfs, unsquashfs};
use ims_rootfs::{RootfsError, find_boot_artifacts};

/// (file name, GNU tar compression option, expected format)
const KINDS: [(&str, Option<&str>, ArchiveFormat); 6] = [
    ("root.tar", None, ArchiveFormat::Tar),
    ("root.tgz", Some("--gzip"), ArchiveFormat::TarGzip),
    ("root.tar.gz", Some("--gzip"), ArchiveFormat::TarGzip),
    ("root.txz", Some("--xz"), ArchiveFormat::TarXz),
    ("root.tar.zst", Some("--zstd"), ArchiveFormat::TarZstd),
    // Named like gzip, but zstd inside: the bytes decide.
    ("misnamed.tgz", Some("--zstd"), ArchiveFormat::TarZstd),
];

fn make_archive(root: &Path, dest: &Path, compression: Option<&str>) {
    let mut cmd = Command::new("tar");
    cmd.args([
        "--create",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
    ]);
    if let Some(c) = compression {
        cmd.arg(c);
    }
    cmd.arg("--file")
        .arg(dest)
        .arg("--directory")
        .arg(root)
        .arg(".");
    run(&mut cmd);
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trips_keep_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    build_image_root(&root);
    for (name, compression, format) in KINDS {
        let archive = tmp.path().join(name);
        make_archive(&root, &archive, compression);
        assert_eq!(detect_format(&archive).expect("format"), format, "{name}");
        assert!(check_members(&archive).expect("safe") > 5, "{name}");

        let out = tmp.path().join(format!("unpacked-{name}"));
        unpack(&archive, &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_image_root(&out);

        let image = tmp.path().join(format!("{name}.sqsh"));
        tar_to_squashfs(&archive, &image, &SquashfsOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(is_squashfs(&image).expect("readable"), "{name}");
        let out = tmp.path().join(format!("unsquashed-{name}"));
        unsquashfs(&image, &out).expect("unsquashfs");
        check_image_root(&out);
        let boot = find_boot_artifacts(&out, "x86_64", None, None).expect("kernel");
        assert_eq!(
            boot.initrd,
            Some(out.join("boot/initrd.img-6.1.0-13-amd64"))
        );
    }
}

#[test]
fn corrupt_and_unsupported_archives() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    // Incompressible content so that truncation cuts the data, not only the padding.
    let noise: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("data"), &noise).expect("write");
    fs::write(root.join("more"), &noise).expect("write");
    for (name, compression) in [
        ("c.tgz", Some("--gzip")),
        ("c.txz", Some("--xz")),
        ("c.tar.zst", Some("--zstd")),
        ("c.tar", None),
    ] {
        let archive = tmp.path().join(name);
        make_archive(&root, &archive, compression);
        let bytes = fs::read(&archive).expect("read");
        fs::write(&archive, &bytes[..bytes.len() / 2]).expect("truncate");

        let out = tmp.path().join(format!("out-{name}"));
        let Err(err) = unpack(&archive, &out) else {
            panic!("{name}: a truncated archive was extracted");
        };
        assert!(
            matches!(err, RootfsError::CorruptArchive { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        assert!(
            !out.exists(),
            "{name}: a partial extraction was left behind"
        );

        let image = tmp.path().join(format!("{name}.sqsh"));
        let err =
            tar_to_squashfs(&archive, &image, &SquashfsOptions::default()).expect_err("truncated");
        assert!(
            matches!(
                err,
                RootfsError::CorruptArchive { .. } | RootfsError::ToolFailed { .. }
            ),
            "{name}: {err}"
        );
        assert!(!image.exists(), "{name}: a partial image was left behind");
    }
    // Not an archive at all, whatever the name.
    let fake = tmp.path().join("fake.tgz");
    fs::write(&fake, vec![b'x'; 2048]).expect("write");
    let err = unpack(&fake, &tmp.path().join("out-fake")).expect_err("garbage");
    assert!(
        matches!(err, RootfsError::UnsupportedArchive { .. }),
        "{err}"
    );
    let err = tar_to_squashfs(
        &fake,
        &tmp.path().join("fake.sqsh"),
        &SquashfsOptions::default(),
    )
    .expect_err("garbage");
    assert!(
        matches!(err, RootfsError::UnsupportedArchive { .. }),
        "{err}"
    );
    let err = unpack(&tmp.path().join("missing.tgz"), &tmp.path().join("o")).expect_err("missing");
    assert!(err.to_string().contains("missing.tgz"), "{err}");
}

#[test]
fn unsafe_members_are_rejected_before_anything_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("src");
    fs::create_dir_all(base.join("sub")).expect("mkdir");
    fs::write(base.join("evil"), b"evil").expect("write");
    fs::write(base.join("sub/fine"), b"fine").expect("write");
    let abs_file = tmp.path().join("abs-target");
    fs::write(&abs_file, b"abs").expect("write");

    // `../evil` (from inside src/sub) and an absolute member, stored verbatim with --absolute-names.
    let dotdot = tmp.path().join("dotdot.tar");
    run(Command::new("tar")
        .arg("-P")
        .arg("-cf")
        .arg(&dotdot)
        .arg("fine")
        .arg("../evil")
        .current_dir(base.join("sub")));
    let abs = tmp.path().join("abs.tgz");
    run(Command::new("tar")
        .arg("-P")
        .arg("-czf")
        .arg(&abs)
        .arg(base.join("sub/fine"))
        .arg(&abs_file));
    fs::remove_file(&abs_file).expect("rm");

    for archive in [&dotdot, &abs] {
        let area = tmp.path().join(format!(
            "area-{}",
            archive.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        fs::create_dir(&area).expect("mkdir");
        let out = area.join("dest");
        let err = unpack(archive, &out).expect_err("unsafe");
        assert!(
            matches!(err, RootfsError::UnsafeArchiveMember { .. }),
            "{err}"
        );
        assert!(
            entries(&area).is_empty(),
            "something was written: {:?}",
            entries(&area)
        );
        let image = area.join("image.sqsh");
        let err =
            tar_to_squashfs(archive, &image, &SquashfsOptions::default()).expect_err("unsafe");
        assert!(
            matches!(err, RootfsError::UnsafeArchiveMember { .. }),
            "{err}"
        );
        assert!(
            entries(&area).is_empty(),
            "something was written: {:?}",
            entries(&area)
        );
    }
    assert!(
        !abs_file.exists(),
        "the absolute member was extracted on the host"
    );
    // src, the 2 archives, the 2 (empty) areas: nothing else, and the absolute member's file is gone.
    assert_eq!(entries(tmp.path()).len(), 5, "{:?}", entries(tmp.path()));
}

#[test]
fn a_member_cannot_be_written_through_a_symlink() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    // First member: `link` -> the outside directory; second member: `link/pwned`, a plain relative name.
    let a = tmp.path().join("a");
    fs::create_dir(&a).expect("mkdir");
    symlink(&outside, a.join("link")).expect("symlink");
    let b = tmp.path().join("b");
    fs::create_dir_all(b.join("link")).expect("mkdir");
    fs::write(b.join("link/pwned"), b"pwned").expect("write");
    let archive = tmp.path().join("through.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&a)
        .arg("link"));
    run(Command::new("tar")
        .arg("-rf")
        .arg(&archive)
        .arg("-C")
        .arg(&b)
        .arg("link/pwned"));
    check_members(&archive).expect("the names themselves are plain");

    let out = tmp.path().join("dest");
    let _ = unpack(&archive, &out); // GNU tar may refuse or extract; either way nothing may land outside.
    assert!(
        entries(&outside).is_empty(),
        "written through a link: {:?}",
        entries(&outside)
    );

    let image = tmp.path().join("through.sqsh");
    let _ = tar_to_squashfs(&archive, &image, &SquashfsOptions::default());
    assert!(
        entries(&outside).is_empty(),
        "written through a link: {:?}",
        entries(&outside)
    );
}

#[test]
fn destination_must_be_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    fs::write(root.join("f"), b"f").expect("write");
    let archive = tmp.path().join("r.tar");
    make_archive(&root, &archive, None);
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).expect("mkdir");
    fs::write(dest.join("keep"), b"keep").expect("write");
    let err = unpack(&archive, &dest).expect_err("not empty");
    assert!(matches!(err, RootfsError::BadDestination { .. }), "{err}");
    assert_eq!(fs::read(dest.join("keep")).expect("kept"), b"keep");
    fs::remove_file(dest.join("keep")).expect("rm");
    unpack(&archive, &dest).expect("empty dir is fine");
    assert_eq!(fs::read(dest.join("f")).expect("extracted"), b"f");
}
