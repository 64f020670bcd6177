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
    // The names are plain, but the second member would be written through the first: refused in our words.
    let err = check_members(&archive).expect_err("written through a link");
    assert!(
        err.to_string()
            .contains("`link/pwned` (written through the symbolic link `link`"),
        "{err}"
    );

    let out = tmp.path().join("dest");
    let _ = unpack(&archive, &out); // GNU tar may refuse or extract; either way nothing may land outside.
    assert!(
        entries(&outside).is_empty(),
        "written through a link: {:?}",
        entries(&outside)
    );

    let image = tmp.path().join("through.sqsh");
    let err = tar_to_squashfs(&archive, &image, &SquashfsOptions::default())
        .expect_err("written through a link");
    assert!(
        matches!(&err, RootfsError::UnsafeArchiveMember { member, .. } if member == "link/pwned"),
        "not in the import's words: {err}"
    );
    assert!(!image.exists(), "an image was left behind");
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

/// Hard links whose target is not an earlier member of the archive: `/etc/shadow`, `../../etc/shadow` (GNU tar
/// strips the `/` or `../` and links to whatever the image holds there, mksquashfs drops them silently) and a
/// relative name the archive does not hold. All are refused by both ways in, naming the member and the target,
/// and nothing is written; a hard link to an earlier member is kept.
#[test]
fn hard_links_out_of_the_archive_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gnu_tar = |name: &str, link: &str| -> std::path::PathBuf {
        // A tar with `etc/` (dir), `etc/a` (file) and `etc/h` hard-linked to `link`, written by hand: GNU tar
        // itself never records such a link.
        let mut out = Vec::new();
        let header = |out: &mut Vec<u8>, name: &str, kind: u8, size: usize, link: &str| {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(if kind == b'5' { b"0000755" } else { b"0000644" });
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = kind;
            h[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
        };
        header(&mut out, "etc/", b'5', 0, "");
        header(&mut out, "etc/a", b'0', 3, "");
        let mut data = [0u8; 512];
        data[..3].copy_from_slice(b"old");
        out.extend_from_slice(&data);
        header(&mut out, "etc/h", b'1', 0, link);
        out.extend_from_slice(&[0u8; 1024]);
        let p = tmp.path().join(name);
        fs::write(&p, out).expect("write");
        p
    };
    let good = gnu_tar("good.tar", "etc/a");
    assert_eq!(
        check_members(&good).expect("a link to an earlier member"),
        3
    );
    let image = tmp.path().join("good.sqsh");
    tar_to_squashfs(&good, &image, &SquashfsOptions::default()).expect("good");

    for (name, link, says) in [
        (
            "abs.tar",
            "/etc/shadow",
            "outside the image (absolute path)",
        ),
        (
            "dotdot.tar",
            "../../etc/shadow",
            "outside the image (`..` path segment)",
        ),
        (
            "missing.tar",
            "etc/nothere",
            "not an earlier member of the archive",
        ),
    ] {
        let archive = gnu_tar(name, link);
        let err = check_members(&archive).expect_err(name);
        let text = err.to_string();
        assert!(
            matches!(&err, RootfsError::UnsafeArchiveMember { member, .. } if member == "etc/h"),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("hard link to `{link}`")) && text.contains(says),
            "{name}: {text}"
        );
        let out = tmp.path().join(format!("dest-{name}"));
        assert!(
            matches!(
                unpack(&archive, &out),
                Err(RootfsError::UnsafeArchiveMember { .. })
            ),
            "{name}"
        );
        assert!(!out.exists(), "{name}: something was extracted");
        let image = tmp.path().join(format!("{name}.sqsh"));
        let err = tar_to_squashfs(&archive, &image, &SquashfsOptions::default()).expect_err(name);
        assert!(err.to_string().contains(says), "{name}: {err}");
        assert!(!image.exists(), "{name}: an image was left behind");
    }
}

/// Converting an archive reports the tar stream read so far: growing, ending at the whole stream
/// (a plain tar's size; more than a compressed one's), and the image is the same as without.
#[test]
fn conversion_progress_is_the_tar_stream_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    for i in 0..64 {
        fs::write(root.join(format!("f{i}")), vec![i as u8; 64 * 1024]).expect("write");
    }
    for (name, compression) in [("p.tar", None), ("p.tar.zst", Some("--zstd"))] {
        let archive = tmp.path().join(name);
        make_archive(&root, &archive, compression);
        let image = tmp.path().join(format!("{name}.sqsh"));
        let mut seen = vec![];
        ims_rootfs::tar_to_squashfs_with_progress(
            &archive,
            &image,
            &SquashfsOptions::default(),
            &mut |b| seen.push(b),
        )
        .expect("convert");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        let last = *seen.last().expect("reported at the end");
        let size = fs::metadata(&archive).expect("archive").len();
        if compression.is_none() {
            assert_eq!(last, size, "{seen:?}");
        } else {
            assert!(last > size && last > 64 * 64 * 1024, "{last} vs {size}");
        }
        let out = tmp.path().join(format!("{name}.out"));
        ims_rootfs::unsquashfs(&image, &out).expect("unsquashfs");
        assert_eq!(
            fs::read(out.join("f9")).expect("read"),
            vec![9u8; 64 * 1024]
        );
    }
}
