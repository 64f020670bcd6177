//! mksquashfs → unsquashfs keeps xattrs, devices, ownership, hard and symbolic links (real squashfs-tools).

mod common;

use std::fs;

use common::{build_image_root, check_image_root, is_root};
use ims_rootfs::squashfs::{
    Compression, SquashfsOptions, ensure_squashfs, is_squashfs, mksquashfs,
    mksquashfs_with_progress, unsquashfs,
};
use ims_rootfs::{RootfsError, find_boot_artifacts};

#[test]
fn round_trip_keeps_everything() {
    assert!(
        is_root(),
        "these tests run as root (device nodes, ownership, security xattrs)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    build_image_root(&root);
    for compression in [Compression::Zstd, Compression::Gzip, Compression::Lz4] {
        let image = tmp.path().join(format!("image-{compression}.sqsh"));
        let opts = SquashfsOptions {
            compression,
            processors: std::num::NonZeroUsize::new(1),
            level: compression.levels().map(|_| 3),
        };
        mksquashfs(&root, &image, &opts).expect("mksquashfs");
        assert!(is_squashfs(&image).expect("readable"));
        let out = tmp.path().join(format!("out-{compression}"));
        unsquashfs(&image, &out).expect("unsquashfs");
        check_image_root(&out);
        let boot = find_boot_artifacts(&out, "x86_64", None, None).expect("kernel");
        assert_eq!(boot.kernel, out.join("boot/vmlinuz-6.1.0-13-amd64"));
    }
}

#[test]
fn replaces_an_existing_image_and_extracts_into_an_empty_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    fs::write(root.join("f"), b"new").expect("write");
    let image = tmp.path().join("image.squashfs");
    fs::write(&image, b"old contents that are not an image").expect("write");
    mksquashfs(&root, &image, &SquashfsOptions::default()).expect("mksquashfs");
    ensure_squashfs(&image).expect("an image");
    let out = tmp.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    unsquashfs(&image, &out).expect("unsquashfs into an empty dir");
    assert_eq!(fs::read(out.join("f")).expect("read"), b"new");
    // Not into a non-empty one.
    let err = unsquashfs(&image, &out).expect_err("not empty");
    assert!(matches!(err, RootfsError::BadDestination { .. }), "{err}");
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Missing source.
    let err = mksquashfs(
        &tmp.path().join("missing"),
        &tmp.path().join("x.sqsh"),
        &SquashfsOptions::default(),
    )
    .expect_err("missing source");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(!tmp.path().join("x.sqsh").exists());
    // Destination directory does not exist: mksquashfs never runs, nothing is created.
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    let err = mksquashfs(
        &src,
        &tmp.path().join("nodir/x.sqsh"),
        &SquashfsOptions::default(),
    )
    .expect_err("no dir");
    assert!(err.to_string().contains("nodir"), "{err}");
    // A non-squashfs file named .sqsh.
    let fake = tmp.path().join("image.sqsh");
    fs::write(&fake, vec![b'x'; 4096]).expect("write");
    assert!(!is_squashfs(&fake).expect("readable"));
    let err = unsquashfs(&fake, &tmp.path().join("out")).expect_err("not squashfs");
    assert!(matches!(err, RootfsError::NotSquashfs { .. }), "{err}");
    assert!(err.to_string().contains("image.sqsh"), "{err}");
    assert!(!tmp.path().join("out").exists());
    // A truncated real image: the magic is right, the superblock's size is not.
    let mut noise = vec![0u8; 300_000];
    std::io::Read::read_exact(
        &mut fs::File::open("/dev/urandom").expect("urandom"),
        &mut noise,
    )
    .expect("read");
    fs::write(src.join("f"), &noise).expect("write");
    let image = tmp.path().join("real.sqsh");
    mksquashfs(&src, &image, &SquashfsOptions::default()).expect("mksquashfs");
    let bytes = fs::read(&image).expect("read");
    fs::write(&image, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = unsquashfs(&image, &tmp.path().join("out2")).expect_err("truncated");
    assert!(
        matches!(err, RootfsError::TruncatedSquashfs { .. }),
        "{err}"
    );
    assert!(!tmp.path().join("out2").exists());
}

/// Progress is the image's bytes written so far: sizes that change, ending at the image's size,
/// and the image is the same as without progress.
#[test]
fn progress_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    for i in 0..200 {
        fs::write(root.join(format!("f{i}")), vec![i as u8; 20_000]).expect("write");
    }
    let image = tmp.path().join("p.sqsh");
    let mut seen = vec![];
    mksquashfs_with_progress(&root, &image, &SquashfsOptions::default(), &mut |b| {
        seen.push(b)
    })
    .expect("mksquashfs");
    let size = fs::metadata(&image).expect("image").len();
    assert_eq!(seen.last(), Some(&size), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "one call per change: {seen:?}"
    );
    let out = tmp.path().join("out");
    unsquashfs(&image, &out).expect("unsquashfs");
    assert_eq!(fs::read(out.join("f7")).expect("read"), vec![7u8; 20_000]);
    // A failing build is still an error with mksquashfs's words, and leaves no image.
    let err = mksquashfs_with_progress(
        &root,
        &tmp.path().join("missing-dir/p.sqsh"),
        &SquashfsOptions::default(),
        &mut |_| {},
    )
    .expect_err("no such directory");
    assert!(err.to_string().contains("missing-dir"), "{err}");
}
