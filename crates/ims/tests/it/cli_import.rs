//! `ims images import NAME ROOTFS`, driven as a subprocess against a real `ims serve` (SQLite) and
//! its built-in S3 endpoint, through STS: directory, tar archive and squashfs inputs, explicit
//! choices, bad input, and failures mid-upload (server killed, Ctrl-C) leaving nothing behind.
//!
//! The image-root fixture holds a file capability, a `user.*` xattr, a device node and a file owned
//! by another user, so building it needs root (as IMS jobs run); those tests print a message and
//! return when not run as root.

use crate::common::*;
use md5::{Digest, Md5};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

impl Cli {
    /// `ims images import NAME ROOTFS EXTRA… --format json`: the printed record.
    fn import(&self, name: &str, rootfs: &Path, extra: &[&str]) -> Value {
        let mut a = vec!["images", "import", name, rootfs.to_str().unwrap()];
        a.extend(extra);
        let r = self.json(&a);
        self.assert_no_work_dir();
        r
    }

    /// Every work directory was removed.
    fn assert_no_work_dir(&self) {
        let left: Vec<_> = std::fs::read_dir(self.tmp())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    }
}

fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", Md5::digest(data))
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: this test builds image roots with capabilities, device nodes and other owners, which needs root");
            return;
        }
    };
}

/// Runs a tool; it must succeed. Returns its stdout.
fn sh(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tool(name: &str, args: &[&str]) -> String {
    sh(Command::new(name).args(args))
}

const K9: &str = "6.1.0-9-amd64";
const K10: &str = "6.1.0-10-amd64";

fn kernel_bytes(v: &str) -> Vec<u8> {
    format!("kernel {v}\n").repeat(50).into_bytes()
}

fn initrd_bytes(v: &str) -> Vec<u8> {
    format!("initrd {v}\n").repeat(70).into_bytes()
}

/// An image root `<parent>/<name>` with every kind of file the squashfs must keep, two versioned
/// kernels and initrds in /boot and, with `vmlinuz_link`, `/vmlinuz -> boot/vmlinuz-6.1.0-9-amd64`
/// (the older one).
fn make_root(parent: &Path, name: &str, vmlinuz_link: bool) -> PathBuf {
    let r = parent.join(name);
    for d in ["boot", "usr/bin", "dev", "etc"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ping = r.join("usr/bin/ping");
    std::fs::copy("/bin/true", &ping).unwrap();
    tool("setcap", &["cap_net_raw+ep", ping.to_str().unwrap()]);
    let motd = r.join("etc/motd");
    std::fs::write(&motd, "hello\n").unwrap();
    tool(
        "setfattr",
        &[
            "-n",
            "user.test",
            "-v",
            "hello-xattr",
            motd.to_str().unwrap(),
        ],
    );
    tool(
        "mknod",
        &[r.join("dev/null").to_str().unwrap(), "c", "1", "3"],
    );
    std::fs::write(r.join("etc/hard-a"), "shared content\n").unwrap();
    std::fs::hard_link(r.join("etc/hard-a"), r.join("etc/hard-b")).unwrap();
    std::os::unix::fs::symlink("motd", r.join("etc/motd-link")).unwrap();
    let secret = r.join("etc/secret");
    std::fs::write(&secret, "secret\n").unwrap();
    std::os::unix::fs::chown(&secret, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    for v in [K9, K10] {
        std::fs::write(r.join(format!("boot/vmlinuz-{v}")), kernel_bytes(v)).unwrap();
        std::fs::write(r.join(format!("boot/initrd.img-{v}")), initrd_bytes(v)).unwrap();
    }
    if vmlinuz_link {
        std::os::unix::fs::symlink(format!("boot/vmlinuz-{K9}"), r.join("vmlinuz")).unwrap();
    }
    r
}

/// An unpacked image root holds everything [`make_root`] put there.
fn check_tree(t: &Path) {
    let getcap = tool("getcap", &[t.join("usr/bin/ping").to_str().unwrap()]);
    assert!(getcap.contains("cap_net_raw=ep"), "getcap: {getcap:?}");
    let x = tool(
        "getfattr",
        &[
            "--only-values",
            "-n",
            "user.test",
            t.join("etc/motd").to_str().unwrap(),
        ],
    );
    assert_eq!(x, "hello-xattr");
    let dev = std::fs::symlink_metadata(t.join("dev/null")).unwrap();
    assert!(dev.file_type().is_char_device(), "{dev:?}");
    let rdev = dev.rdev();
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    assert_eq!((major, minor), (1, 3));
    let a = std::fs::metadata(t.join("etc/hard-a")).unwrap();
    let b = std::fs::metadata(t.join("etc/hard-b")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link broken");
    assert_eq!(a.nlink(), 2);
    assert_eq!(
        std::fs::read_link(t.join("etc/motd-link")).unwrap(),
        Path::new("motd")
    );
    let s = std::fs::symlink_metadata(t.join("etc/secret")).unwrap();
    assert_eq!((s.uid(), s.gid()), (1234, 5678));
    assert_eq!(s.mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(t.join("etc/secret")).unwrap(), b"secret\n");
    assert_eq!(
        std::fs::read_link(t.join("vmlinuz")).unwrap(),
        PathBuf::from(format!("boot/vmlinuz-{K9}"))
    );
}

/// `unsquashfs -lln` of an image: the device node and the other owner's file, listed.
fn check_listing(image: &Path) {
    let l = tool("unsquashfs", &["-lln", image.to_str().unwrap()]);
    let line = |suffix: &str| -> Vec<String> {
        l.lines()
            .find(|x| x.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not listed: {l}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let dev = line("squashfs-root/dev/null");
    assert!(dev[0].starts_with('c'), "{dev:?}");
    assert_eq!(
        (dev[1].as_str(), dev[2].as_str(), dev[3].as_str()),
        ("0/0", "1,", "3")
    );
    let secret = line("squashfs-root/etc/secret");
    assert_eq!(
        (secret[0].as_str(), secret[1].as_str()),
        ("-rw-r-----", "1234/5678")
    );
}

/// Extracts only a few paths of an image (cheap) and checks the capability and the xattr.
fn check_caps(image: &Path, scratch: &Path) {
    let out = scratch.join("partial");
    let _ = std::fs::remove_dir_all(&out);
    tool(
        "unsquashfs",
        &[
            "-no-progress",
            "-d",
            out.to_str().unwrap(),
            image.to_str().unwrap(),
            "usr/bin/ping",
            "etc/motd",
        ],
    );
    let getcap = tool("getcap", &[out.join("usr/bin/ping").to_str().unwrap()]);
    assert!(getcap.contains("cap_net_raw=ep"), "getcap: {getcap:?}");
    let x = tool(
        "getfattr",
        &[
            "--only-values",
            "-n",
            "user.test",
            out.join("etc/motd").to_str().unwrap(),
        ],
    );
    assert_eq!(x, "hello-xattr");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Every regular file under `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn boot_image_files(s: &Server) -> Vec<PathBuf> {
    files_under(&s.data.path().join("artifacts/boot-images"))
}

/// Multipart uploads the S3 endpoint still holds (neither completed nor aborted): their
/// directories under `<data>/s3-state/uploads`.
fn pending_uploads(s: &Server) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(s.data.path().join("s3-state/uploads")) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Parts of multipart uploads the S3 endpoint has received (`part-*` files).
fn received_parts(s: &Server) -> Vec<PathBuf> {
    files_under(&s.data.path().join("s3-state/uploads"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect()
}

/// What an import stored: the manifest and each artifact's key, type and bytes.
struct Stored {
    id: String,
    manifest: Value,
    /// name (`rootfs`, `kernel`, …) → (MIME type, stored bytes)
    artifacts: Vec<(String, String, Vec<u8>)>,
}

impl Stored {
    fn get(&self, name: &str) -> &[u8] {
        &self
            .artifacts
            .iter()
            .find(|a| a.0 == name)
            .unwrap_or_else(|| panic!("no {name} artifact in {}", self.manifest))
            .2
    }

    fn names(&self) -> Vec<&str> {
        self.artifacts.iter().map(|a| a.0.as_str()).collect()
    }
}

/// Checks the printed record and the manifest it links to (hashes against the stored bytes), the
/// `md5sum` metadata of every object, and that `ims images verify` passes.
fn check_import(s: &Server, cli: &Cli, rec: &Value, name: &str, arch: &str) -> Stored {
    let id = rec["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{rec}"))
        .to_string();
    assert!(is_uuid4(&id), "{rec}");
    assert_eq!(rec["name"], json!(name), "{rec}");
    assert_eq!(rec["arch"], json!(arch), "{rec}");
    let mkey = format!("{id}/manifest.json");
    assert_eq!(
        rec["link"]["path"],
        json!(format!("s3://boot-images/{mkey}")),
        "{rec}"
    );
    assert_eq!(rec["link"]["type"], "s3", "{rec}");
    // The registered record is the printed one.
    assert_eq!(&cli.json(&["images", "describe", &id]), rec);

    let raw = s.read_artifact("boot-images", &mkey);
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(text.starts_with("{\n    \"artifacts\": [\n"), "{text}");
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["version"], "1.0", "{manifest}");
    let created = manifest["created"].as_str().unwrap();
    assert_eq!(created.len(), 19, "{created}");
    let md = cli.json(&["artifacts", "describe", "boot-images", &mkey]);
    let metag = md["artifact"]["ETag"].as_str().unwrap().trim_matches('"');
    assert!(!metag.is_empty(), "{md}");
    assert_eq!(rec["link"]["etag"], json!(metag), "{rec} vs {md}");
    assert_eq!(
        md["artifact"]["Metadata"]["md5sum"],
        json!(md5_hex(&raw)),
        "{md}"
    );

    let mut artifacts = vec![];
    for a in manifest["artifacts"].as_array().unwrap() {
        let path = a["link"]["path"].as_str().unwrap();
        let key = path
            .strip_prefix("s3://boot-images/")
            .unwrap_or_else(|| panic!("{a}"));
        let (dir, art) = key.split_once('/').unwrap();
        assert_eq!(dir, id, "{a}");
        let mime = a["type"].as_str().unwrap();
        let want = match art {
            "rootfs" => "application/vnd.cray.image.rootfs.squashfs",
            "kernel" => "application/vnd.cray.image.kernel",
            "initrd" => "application/vnd.cray.image.initrd",
            "boot_parameters" => "application/vnd.cray.image.parameters.boot",
            other => panic!("unexpected artifact {other}: {manifest}"),
        };
        assert_eq!(mime, want, "{a}");
        assert_eq!(a["link"]["type"], "s3", "{a}");
        assert!(
            !a["link"]["etag"].as_str().unwrap().is_empty(),
            "empty etag: {a}"
        );
        let data = s.read_artifact("boot-images", key);
        assert_eq!(a["md5"], json!(md5_hex(&data)), "{a}");
        assert_eq!(a["sha256"], json!(sha256_hex(&data)), "{a}");
        let d = cli.json(&["artifacts", "describe", "boot-images", key]);
        let meta = &d["artifact"]["Metadata"];
        assert_eq!(meta["md5sum"], json!(md5_hex(&data)), "{d}");
        assert_eq!(meta["x-shasta-ims-image-name"], json!(name), "{d}");
        assert_eq!(meta["x-shasta-ims-image-id"], json!(id), "{d}");
        artifacts.push((art.to_string(), mime.to_string(), data));
    }

    let v = cli.json(&["images", "verify", &id]);
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), artifacts.len(), "{v:?}");
    assert!(v.iter().all(|x| x["ok"] == json!(true)), "{v:?}");
    Stored {
        id,
        manifest,
        artifacts,
    }
}

fn assert_nothing_registered(s: &Server, cli: &Cli) {
    assert_eq!(cli.json(&["images", "list"]), json!([]));
    assert_eq!(boot_image_files(s), Vec::<PathBuf>::new());
}

/// 1. A directory: built into a squashfs keeping capabilities, xattrs, devices, hard links,
///    symbolic links and owners; boot files found by the documented rule; everything hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_import_end_to_end() {
    require_root!();
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = make_root(cli.dir.path(), "root", true);
    let params = cli.file("params");
    std::fs::write(&params, "console=ttyS0,115200 rd.shell\n").unwrap();

    let rec = cli.import(
        "dir-image",
        &root,
        &["--kernel-parameters", params.to_str().unwrap()],
    );
    let st = check_import(&s, &cli, &rec, "dir-image", "x86_64");
    assert_eq!(
        st.names(),
        ["rootfs", "kernel", "initrd", "boot_parameters"],
        "{}",
        st.manifest
    );
    // The rule (crates/rootfs/src/kernel.rs): the `/vmlinuz` link (3) comes before the newest
    // versioned file (4), so the link's older 6.1.0-9 kernel wins over 6.1.0-10, and the initrd is
    // the one of the chosen kernel's version.
    assert_eq!(st.get("kernel"), kernel_bytes(K9));
    assert_eq!(st.get("initrd"), initrd_bytes(K9));
    assert_eq!(st.get("boot_parameters"), std::fs::read(&params).unwrap());
    assert_eq!(cli.json(&["images", "list"]).as_array().unwrap().len(), 1);

    // The rootfs, downloaded and unpacked, holds the whole tree.
    let got = cli.file("rootfs.sqsh");
    let key = format!("{}/rootfs", st.id);
    assert_eq!(
        cli.json(&[
            "artifacts",
            "get",
            "boot-images",
            &key,
            got.to_str().unwrap()
        ]),
        Value::Null
    );
    assert!(std::fs::read(&got).unwrap() == st.get("rootfs"));
    let sq = tool("unsquashfs", &["-s", got.to_str().unwrap()]);
    assert!(sq.contains("Compression zstd"), "{sq}");
    let tree = cli.file("unpacked");
    tool(
        "unsquashfs",
        &[
            "-no-progress",
            "-d",
            tree.to_str().unwrap(),
            got.to_str().unwrap(),
        ],
    );
    check_tree(&tree);
    assert_eq!(
        std::fs::read(tree.join(format!("boot/vmlinuz-{K10}"))).unwrap(),
        kernel_bytes(K10)
    );
}

/// 2. Tar archives (plain, gzip, xz, zstd, and a gzip one with a misleading name), judged by
///    content: each converts and keeps capabilities, xattrs and device nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_imports_by_content() {
    require_root!();
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = make_root(cli.dir.path(), "root", true);
    let tar = cli.file("root.tar");
    tool(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    let pack = |out: &str, prog: &str, args: &[&str]| {
        let f = std::fs::File::create(cli.file(out)).unwrap();
        let st = Command::new(prog)
            .args(args)
            .arg(&tar)
            .stdout(f)
            .status()
            .unwrap();
        assert!(st.success(), "{prog}");
    };
    pack("root.tgz", "gzip", &["-c"]);
    pack("root.txz", "xz", &["-c"]);
    pack("root.tar.zst", "zstd", &["-q", "-c"]);
    std::fs::copy(cli.file("root.tgz"), cli.file("image.bin")).unwrap();

    let mut ids = vec![];
    for (i, f) in [
        "root.tar",
        "root.tgz",
        "root.txz",
        "root.tar.zst",
        "image.bin",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("from-{f}");
        let rec = cli.import(&name, &cli.file(f), &[]);
        let st = check_import(&s, &cli, &rec, &name, "x86_64");
        assert_eq!(st.names(), ["rootfs", "kernel", "initrd"], "{f}");
        // Found inside the converted image, by the same rule as for a directory.
        assert_eq!(st.get("kernel"), kernel_bytes(K9), "{f}");
        assert_eq!(st.get("initrd"), initrd_bytes(K9), "{f}");
        let image = s.artifact_path("boot-images", &format!("{}/rootfs", st.id));
        check_listing(&image);
        check_caps(&image, cli.dir.path());
        if f == "root.tar.zst" {
            let tree = cli.file(&format!("tree-{i}"));
            tool(
                "unsquashfs",
                &[
                    "-no-progress",
                    "-d",
                    tree.to_str().unwrap(),
                    image.to_str().unwrap(),
                ],
            );
            check_tree(&tree);
            // A converted archive's `/` is 0755 root:root.
            let m = std::fs::metadata(&tree).unwrap();
            assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 0, 0));
        }
        ids.push(st.id);
    }
    let list = cli.json(&["images", "list"]);
    let mut listed: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids, "{list}");
}

/// 3. A squashfs image is uploaded as it is; the kernel and initrd are found inside it (here with
///    no `/vmlinuz` link: the newest by version sort, 6.1.0-10 before 6.1.0-9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squashfs_import_is_byte_identical() {
    require_root!();
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = make_root(cli.dir.path(), "root", false);
    let sqsh = cli.file("root.sqsh");
    tool(
        "mksquashfs",
        &[
            root.to_str().unwrap(),
            sqsh.to_str().unwrap(),
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            "xz",
        ],
    );
    let input = std::fs::read(&sqsh).unwrap();

    // --compression does not apply to an image uploaded as is: a warning, and the bytes unchanged.
    // --quiet hides the progress lines, not the warning.
    let o = cli.run(&[
        "images",
        "import",
        "from-sqsh",
        sqsh.to_str().unwrap(),
        "--compression",
        "gzip",
        "--format",
        "json",
        "--quiet",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.stderr.trim(),
        format!(
            "warning: --compression is ignored: {} is a squashfs image and is uploaded as it is",
            sqsh.display()
        ),
        "{o:?}"
    );
    cli.assert_no_work_dir();
    let rec: Value = serde_json::from_str(&o.stdout).unwrap();
    let st = check_import(&s, &cli, &rec, "from-sqsh", "x86_64");
    assert_eq!(st.names(), ["rootfs", "kernel", "initrd"]);
    assert!(
        st.get("rootfs") == input.as_slice(),
        "rootfs differs from the input"
    );
    assert_eq!(st.get("kernel"), kernel_bytes(K10));
    assert_eq!(st.get("initrd"), initrd_bytes(K10));
    // The input was not touched.
    assert!(std::fs::read(&sqsh).unwrap() == input);
}

/// 4. `--kernel/--initrd FILE`, `--kernel-file-name`, `--rootfs-only`, `--compression`, `--arch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_choices() {
    require_root!();
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = make_root(cli.dir.path(), "root", true);

    // Files given: uploaded instead of the image root's.
    let (k, i) = (cli.file("my-kernel"), cli.file("my-initrd"));
    std::fs::write(&k, b"my own kernel").unwrap();
    std::fs::write(&i, b"my own initrd").unwrap();
    let rec = cli.import(
        "given",
        &root,
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
        ],
    );
    let st = check_import(&s, &cli, &rec, "given", "x86_64");
    assert_eq!(st.names(), ["rootfs", "kernel", "initrd"]);
    assert_eq!(st.get("kernel"), b"my own kernel");
    assert_eq!(st.get("initrd"), b"my own initrd");

    // A kernel named: it wins over the /vmlinuz link; the initrd follows its version.
    let name = format!("vmlinuz-{K10}");
    let rec = cli.import("named", &root, &["--kernel-file-name", &name]);
    let st = check_import(&s, &cli, &rec, "named", "x86_64");
    assert_eq!(st.get("kernel"), kernel_bytes(K10));
    assert_eq!(st.get("initrd"), initrd_bytes(K10));

    // The root file system alone (a root with no kernel at all), for another arch.
    let bare = cli.file("bare");
    std::fs::create_dir_all(bare.join("etc")).unwrap();
    std::fs::write(bare.join("etc/motd"), "no kernel here\n").unwrap();
    let rec = cli.import(
        "rootfs-only",
        &bare,
        &["--rootfs-only", "--arch", "aarch64"],
    );
    let st = check_import(&s, &cli, &rec, "rootfs-only", "aarch64");
    assert_eq!(st.names(), ["rootfs"], "{}", st.manifest);
    assert_eq!(st.manifest["artifacts"].as_array().unwrap().len(), 1);

    // Only a kernel given, for a root that has none: no initrd, with a warning.
    let o = cli.run(&[
        "images",
        "import",
        "kernel-only",
        bare.to_str().unwrap(),
        "--kernel",
        k.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("warning: no initrd found"), "{o:?}");
    let rec: Value = serde_json::from_str(&o.stdout).unwrap();
    let st = check_import(&s, &cli, &rec, "kernel-only", "x86_64");
    assert_eq!(st.names(), ["rootfs", "kernel"]);
    assert_eq!(st.get("kernel"), b"my own kernel");

    // gzip instead of the default zstd.
    let rec = cli.import("gzip", &root, &["--compression", "gzip"]);
    let st = check_import(&s, &cli, &rec, "gzip", "x86_64");
    let image = s.artifact_path("boot-images", &format!("{}/rootfs", st.id));
    let info = tool("unsquashfs", &["-s", image.to_str().unwrap()]);
    assert!(info.contains("Compression gzip"), "{info}");
    check_caps(&image, cli.dir.path());
    assert_eq!(cli.json(&["images", "list"]).as_array().unwrap().len(), 5);
}

/// 4b. The kernel parameters come from the image root's `/boot/kernel-parameters` (or the file
///     `--kernel-parameters-file-name` names) as customize and create jobs take them, for a
///     directory and for an image file (also when the kernel and initrd are given on the host);
///     `--kernel-parameters FILE` on the host wins; `--rootfs-only` takes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_parameters_from_the_image_root() {
    require_root!();
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = make_root(cli.dir.path(), "root", true);
    std::fs::write(
        root.join("boot/kernel-parameters"),
        "console=ttyS0 from-root\n",
    )
    .unwrap();
    std::fs::write(root.join("boot/site-params"), "site=params\n").unwrap();

    let o = cli.run(&[
        "images",
        "import",
        "dir",
        root.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stderr
            .contains("Kernel parameters: /boot/kernel-parameters of the image root"),
        "{o:?}"
    );
    let st = check_import(
        &s,
        &cli,
        &serde_json::from_str(&o.stdout).unwrap(),
        "dir",
        "x86_64",
    );
    assert_eq!(
        st.names(),
        ["rootfs", "kernel", "initrd", "boot_parameters"]
    );
    assert_eq!(st.get("boot_parameters"), b"console=ttyS0 from-root\n");

    let rec = cli.import(
        "named",
        &root,
        &["--kernel-parameters-file-name", "site-params"],
    );
    let st = check_import(&s, &cli, &rec, "named", "x86_64");
    assert_eq!(st.get("boot_parameters"), b"site=params\n");

    let host = cli.file("host-params");
    std::fs::write(&host, "from=host\n").unwrap();
    let rec = cli.import(
        "host",
        &root,
        &["--kernel-parameters", host.to_str().unwrap()],
    );
    let st = check_import(&s, &cli, &rec, "host", "x86_64");
    assert_eq!(st.get("boot_parameters"), b"from=host\n");

    // An image file, with the kernel and initrd given on the host: /boot is still looked into.
    let sqsh = cli.file("root.sqsh");
    tool(
        "mksquashfs",
        &[
            root.to_str().unwrap(),
            sqsh.to_str().unwrap(),
            "-noappend",
            "-quiet",
            "-no-progress",
        ],
    );
    let (k, i) = (cli.file("k"), cli.file("i"));
    std::fs::write(&k, b"kernel").unwrap();
    std::fs::write(&i, b"initrd").unwrap();
    let rec = cli.import(
        "sqsh",
        &sqsh,
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
        ],
    );
    let st = check_import(&s, &cli, &rec, "sqsh", "x86_64");
    assert_eq!(
        st.names(),
        ["rootfs", "kernel", "initrd", "boot_parameters"]
    );
    assert_eq!(st.get("boot_parameters"), b"console=ttyS0 from-root\n");

    // A name that is not a regular file in /boot: no boot_parameters, as in jobs.
    std::fs::create_dir(root.join("boot/a-dir")).unwrap();
    let rec = cli.import(
        "dir-named",
        &root,
        &["--kernel-parameters-file-name", "a-dir"],
    );
    let st = check_import(&s, &cli, &rec, "dir-named", "x86_64");
    assert_eq!(st.names(), ["rootfs", "kernel", "initrd"]);

    let rec = cli.import("bare", &root, &["--rootfs-only"]);
    let st = check_import(&s, &cli, &rec, "bare", "x86_64");
    assert_eq!(st.names(), ["rootfs"]);
}

/// 5. Bad input: exit 2, `Error: …` naming the problem, nothing registered, nothing stored,
///    nothing written outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_leaves_nothing() {
    require_root!();
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = make_root(cli.dir.path(), "root", true);
    let p = |n: &str| cli.file(n).to_str().unwrap().to_string();

    // A truncated .txz (of a root with some bulk, so the cut is inside the data).
    std::fs::write(
        root.join("etc/bulk"),
        (0..200_000u32)
            .map(|x| (x.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let tar = cli.file("root.tar");
    tool(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    let txz = std::fs::File::create(cli.file("full.txz")).unwrap();
    assert!(
        Command::new("xz")
            .arg("-c")
            .arg(&tar)
            .stdout(txz)
            .status()
            .unwrap()
            .success()
    );
    let full = std::fs::read(cli.file("full.txz")).unwrap();
    std::fs::write(cli.file("cut.txz"), &full[..full.len() / 2]).unwrap();
    // Not a squashfs, whatever its name; and a real one cut short.
    std::fs::write(cli.file("x.sqsh"), vec![0u8; 8192]).unwrap();
    let sqsh = cli.file("real.sqsh");
    tool(
        "mksquashfs",
        &[
            root.to_str().unwrap(),
            sqsh.to_str().unwrap(),
            "-noappend",
            "-quiet",
            "-no-progress",
        ],
    );
    let whole = std::fs::read(&sqsh).unwrap();
    std::fs::write(cli.file("cut.sqsh"), &whole[..whole.len() / 2]).unwrap();
    // A root with no kernel.
    let bare = cli.file("bare");
    std::fs::create_dir_all(bare.join("etc")).unwrap();
    std::fs::write(bare.join("etc/motd"), "no kernel\n").unwrap();
    // A tar with a `../escape` member (GNU tar keeps it with -P).
    let evil = cli.file("evil");
    std::fs::create_dir_all(evil.join("inner/boot")).unwrap();
    std::fs::write(evil.join("inner/boot/vmlinuz-1"), "k").unwrap();
    std::fs::write(evil.join("escape"), "outside").unwrap();
    tool(
        "tar",
        &[
            "-P",
            "-C",
            evil.join("inner").to_str().unwrap(),
            "-cf",
            &p("evil.tar"),
            ".",
            "../escape",
        ],
    );
    let listed = tool("tar", &["-tf", &p("evil.tar")]);
    assert!(listed.lines().any(|l| l == "../escape"), "{listed}");
    std::fs::remove_file(evil.join("escape")).unwrap();

    let root_s = root.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (vec![p("missing")], &["cannot read ROOTFS", "missing"]),
        (
            vec![root_s.clone(), "--kernel".into(), p("no-such-kernel")],
            &["cannot read the kernel", "no-such-kernel"],
        ),
        (vec![p("cut.txz")], &["cut.txz is corrupt or truncated"]),
        (vec![p("x.sqsh")], &["x.sqsh is not a squashfs image"]),
        (
            vec![p("cut.sqsh")],
            &["cut.sqsh is a truncated squashfs image"],
        ),
        (
            vec![p("bare")],
            &["no kernel found", "--kernel", "--rootfs-only"],
        ),
        (
            vec![
                root_s.clone(),
                "--kernel-file-name".into(),
                "vmlinuz-9.9".into(),
            ],
            &["vmlinuz-9.9", "not found"],
        ),
        (vec![p("evil.tar")], &["unsafe member `../escape`"]),
    ];
    for (args, want) in &cases {
        let mut a = vec!["images", "import", "bad"];
        a.extend(args.iter().map(String::as_str));
        let o = cli.run(&a);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert_eq!(o.stdout, "", "{args:?}: {o:?}");
        let last = o.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("Error: "), "{args:?}: {o:?}");
        for w in *want {
            assert!(last.contains(w), "{args:?}: want {w:?} in {o:?}");
        }
        assert!(
            !o.stderr.contains("Uploading"),
            "{args:?}: an upload started: {o:?}"
        );
        assert_nothing_registered(&s, &cli);
        cli.assert_no_work_dir();
    }
    // Nothing written outside: no `escape` next to the work directories, the CLI's cwd or the
    // archive.
    for d in [cli.tmp(), cli.dir.path().to_path_buf(), evil.clone()] {
        assert!(!d.join("escape").exists(), "{}", d.display());
    }

    // An unknown --arch: clap refuses it before anything runs.
    let o = cli.run(&["images", "import", "bad", &root_s, "--arch", "sparc"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr
            .starts_with("error: invalid value 'sparc' for '--arch"),
        "{o:?}"
    );
    assert_nothing_registered(&s, &cli);
    assert_eq!(pending_uploads(&s), Vec::<PathBuf>::new());
}

/// The server refuses the registration (its manifest size limit is below the manifest's size):
/// the uploaded objects are removed. A blank name is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registration_removes_uploads() {
    let s = builder(Db::Sqlite)
        .await
        .env("MAX_IMAGE_MANIFEST_SIZE_BYTES", "200")
        .start()
        .await;
    let cli = Cli::of(&s);
    let root = cli.file("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz-1.0"), "k").unwrap();
    std::fs::write(root.join("boot/initrd.img-1.0"), "i").unwrap();
    let o = cli.run(&["images", "import", " ", root.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(
        o.stderr.trim(),
        "Error: the image name must not be blank",
        "{o:?}"
    );
    let o = cli.run(&["images", "import", "img", root.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("Uploading"), "{o:?}");
    let last = o.stderr.lines().last().unwrap();
    assert!(last.starts_with("Error: registering image "), "{o:?}");
    assert!(
        last.ends_with("the uploaded objects were removed and nothing was registered"),
        "{o:?}"
    );
    assert_nothing_registered(&s, &cli);
    assert_eq!(pending_uploads(&s), Vec::<PathBuf>::new());
    cli.assert_no_work_dir();
}

/// An image root with `mib` MiB of incompressible data and a kernel.
fn big_root(cli: &Cli, mib: usize) -> PathBuf {
    let root = cli.file("big");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("boot/vmlinuz-1.0"), "k").unwrap();
    std::fs::write(root.join("boot/initrd.img-1.0"), "i").unwrap();
    let out = std::fs::File::create(root.join("data/random")).unwrap();
    let st = Command::new("head")
        .args(["-c", &format!("{mib}M"), "/dev/urandom"])
        .stdout(out)
        .status()
        .unwrap();
    assert!(st.success());
    root
}

/// A running import whose stderr is read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(cli: &Cli, args: &[&str]) -> Running {
        let mut child = cli
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ims");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: vec![],
        }
    }

    /// Waits for a stderr line matching `f`.
    fn wait_line(&mut self, f: impl Fn(&str) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = f(&l);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    panic!("no such line ({e:?}); stderr so far: {:?}", self.seen);
                }
            }
        }
    }

    /// Waits for the process to end (killing it after `timeout`); its exit code and whole stderr.
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("ims did not exit in {timeout:?}; stderr: {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader ends at EOF, i.e. when the process (and anything holding its stderr) is gone.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(l);
        }
        (status.code(), self.seen.join("\n"))
    }
}

fn is_rootfs_upload(l: &str) -> bool {
    l.starts_with("Uploading ") && l.ends_with("/rootfs ...")
}

/// Waits until the S3 endpoint holds at least one received part of a multipart upload.
fn wait_for_a_part(s: &Server, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while received_parts(s).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no part was uploaded in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 6. The server is killed (SIGKILL) during the rootfs upload: the CLI fails with a clear error and,
///    once the server is back, nothing is registered and no manifest exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_registers_nothing() {
    let mut s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = big_root(&cli, 300);
    let mut run = Running::start(
        &cli,
        &[
            "images",
            "import",
            "doomed",
            root.to_str().unwrap(),
            "--compression",
            "lz4",
        ],
    );
    run.wait_line(is_rootfs_upload, Duration::from_secs(60));
    wait_for_a_part(&s, Duration::from_secs(30));
    // SIGKILL; the zombie is reaped by `restart` below, so its pid cannot be reused meanwhile.
    s.child.kill().unwrap();
    let (code, stderr) = run.finish(Duration::from_secs(120));
    eprintln!("ims stderr:\n{stderr}");
    assert_eq!(code, Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("Error: "), "{stderr}");
    assert!(last.contains("/rootfs"), "{stderr}");
    assert!(last.contains("nothing was registered"), "{stderr}");
    assert!(!stderr.contains("\"id\""), "{stderr}");
    cli.assert_no_work_dir();

    let s = s.restart().await;
    let cli = Cli {
        url: Some(s.url.clone()),
        ..cli
    };
    assert_eq!(cli.json(&["images", "list"]), json!([]));
    let manifests: Vec<_> = boot_image_files(&s)
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .collect();
    assert_eq!(manifests, Vec::<PathBuf>::new());
    // The rootfs never completed, so no object exists at all.
    assert_eq!(boot_image_files(&s), Vec::<PathBuf>::new());
    // (The parts received before the crash stay in the endpoint's state directory until its
    // stale-upload sweep: a dead server cannot be asked to abort.)
}

/// 7. Ctrl-C (SIGINT) during the rootfs upload: exit 2, nothing registered, and what was started is
///    removed — including the multipart upload under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_is_cleaned_up() {
    let s = start(Db::Sqlite).await;
    let cli = Cli::of(&s);
    let root = big_root(&cli, 300);
    let mut run = Running::start(
        &cli,
        &[
            "images",
            "import",
            "interrupted",
            root.to_str().unwrap(),
            "--compression",
            "lz4",
        ],
    );
    run.wait_line(is_rootfs_upload, Duration::from_secs(60));
    wait_for_a_part(&s, Duration::from_secs(30));
    unsafe_kill(run.child.id(), "INT");
    let (code, stderr) = run.finish(Duration::from_secs(60));
    eprintln!("ims stderr:\n{stderr}");
    assert_eq!(code, Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("Error: interrupted"), "{stderr}");
    assert!(last.contains("nothing was registered"), "{stderr}");
    cli.assert_no_work_dir();
    assert_nothing_registered(&s, &cli);
    // The multipart upload of the rootfs was started: it must be aborted too, not left holding
    // the parts already sent.
    let left = pending_uploads(&s);
    assert!(
        left.is_empty(),
        "the interrupted rootfs multipart upload was not aborted: {left:?} still holds {:?}",
        files_under(&s.data.path().join("s3-state/uploads"))
    );
}
