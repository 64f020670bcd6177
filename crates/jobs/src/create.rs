//! The create pipeline, with the original's statuses: `fetching_recipe` → `waiting_for_repos` →
//! `building_image` → `packaging_artifacts` → `success`, or `error` with the reason in the job's
//! log (after a debug shell into the failed build when the job has `enable_debug`).
//!
//! Layout in the job directory `J` (mode 0700); `J/mnt` is what a debug shell sees as
//! `/mnt/image`, as in the original:
//!
//! ```text
//! J/recipe.tar.gz            the downloaded archive (md5 checked against its `md5sum` metadata)
//! J/mnt/recipe/              the recipe, unpacked safely and templated
//! J/mnt/build/image-root/    kiwi's root tree, packaged as the new image
//! J/mnt/kiwi.log             kiwi's own log file
//! J/kiwi/{tmp,cache}        kiwi's scratch space and (when the shared one is busy or not
//!                            configured) package cache; its keyring home is a short-named
//!                            directory in the host's temporary directory (gpg-agent's socket)
//! ```
//!
//! kiwi runs as `kiwi-ng system prepare`: IMS needs only the root tree, not the archive of it
//! that `system build` would compress. Another architecture's recipe (aarch64 on an x86_64 host,
//! under qemu-user emulation) adds `--target-arch` and, for apt recipes, a debootstrap told the
//! architecture; every built root must hold programs of the recipe's architecture. Its output is the job's log as it happens; it runs in a
//! process group of its own that stopping the job kills.

use crate::context::JobContext;
use crate::error::{Context, Error, Result};
use crate::package::{CREATE_ZSTD_LEVEL, package};
use crate::recipe::{self, Limits};
use crate::repos;
use crate::rootfiles::{add_to_trust_store, install_ca};
use crate::user_session::{self, Flags, Outcome};
use ims_client::Resource;
use ims_client::s3::{Ctx, key_path, s3_error, split_s3};
use ims_core::records::Recipe;
use ims_core::{Arch, JobStatus};
use object_store::{Attribute, GetOptions, ObjectStore};
use std::collections::VecDeque;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// How often the repositories are probed (the original's interval).
const REPO_PROBE_EVERY: Duration = Duration::from_secs(10);
/// Lines of kiwi's output kept to find the reason of a failed build in.
const TAIL_LINES: usize = 400;
/// Lines of it that make the reason at most.
const REASON_LINES: usize = 40;
/// Longest line of kiwi's output passed on whole.
const MAX_LINE: usize = 16 * 1024;
/// How long kiwi gets to clean up (unmount, remove its temporary files) when the job is stopped:
/// less than the local executor gives the agent (10 s) before it kills the agent's process group,
/// which kiwi's own group is not part of.
const KIWI_STOP_GRACE: Duration = Duration::from_secs(5);
/// The Debian archive keyring: the default signing key of apt recipes.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// What kiwi leaves in the root for config.sh that has no place in a node's image: its copy of
/// the description (`/image`: the recipe, perhaps with credentials in its templated URLs) and
/// its profile variables.
const KIWI_LEFTOVERS: [&str; 3] = ["image", ".kconfig", ".profile"];

pub async fn run(agent: &JobContext) -> Result<()> {
    let job = &agent.job;
    let started = Instant::now();
    let dir = agent.settings.dir.clone();
    let mnt = dir.join("mnt");
    let recipe_dir = mnt.join("recipe");
    let build_dir = mnt.join("build");
    let root = build_dir.join("image-root");
    for d in [&mnt, &recipe_dir, &build_dir] {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }

    agent.status(JobStatus::FetchingRecipe).await?;
    let rec: Recipe = match agent
        .api
        .describe_as(Resource::Recipes, &job.artifact_id)
        .await
    {
        Ok(r) => r,
        Err(ims_client::Error::Decode { source, .. }) => {
            return Err(Error::Json {
                context: format!("the recipe record {} cannot be read", job.artifact_id),
                source,
            });
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the recipe {}", job.artifact_id));
        }
    };
    same_arch(rec.arch, job.arch)?;
    let link = rec
        .link
        .as_ref()
        .map(|l| l.path.as_str())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::Refused(format!("the recipe {} has no archive (no link)", rec.id)))?;
    let ctx = agent.s3().await?;
    fetch_recipe(agent, &ctx, link, &dir, &recipe_dir).await?;
    template(agent, &rec, &recipe_dir)?;

    agent.status(JobStatus::WaitingForRepos).await?;
    let description = repos::description_file(&recipe_dir)?;
    let config = std::fs::read_to_string(&description)
        .with_context(|| format!("cannot read {}", description.display()))?;
    let repositories = repos::repositories(&config)?;
    if repositories.is_empty() {
        agent.say("the recipe names no repositories");
    }
    let waited = Instant::now();
    {
        let say = |l: &str| agent.say(l);
        let wait = repos::wait_for_repos(
            &repositories,
            agent.settings.ca_cert.as_deref(),
            agent.settings.repo_timeout,
            REPO_PROBE_EVERY,
            &say,
        );
        tokio::select! {
            r = wait => r?,
            _ = agent.cancel.cancelled() => return Err(Error::Cancelled),
        }
    }
    if !repositories.is_empty() {
        agent.say(&format!(
            "repositories ready after {:.1} s",
            waited.elapsed().as_secs_f64()
        ));
    }

    agent.status(JobStatus::BuildingImage).await?;
    let apt = package_manager(&config).as_deref() == Some("apt");
    let keys = signing_keys(agent, apt)?;
    let kiwi_started = Instant::now();
    let built = build(agent, &dir, &recipe_dir, &root, &keys, rec.arch, apt).await;
    let kiwi_took = kiwi_started.elapsed();
    if let Err(e) = built {
        if e.is_cancelled() {
            return Err(e);
        }
        if job.enable_debug {
            agent.say(&format!("the build failed: {e}"));
            debug_shell(agent, &dir).await?;
            return Err(e.context("the build failed (after the debug shell)"));
        }
        return Err(e.context("the build failed"));
    }
    agent.say(&format!(
        "kiwi-ng finished in {:.1} s",
        kiwi_took.as_secs_f64()
    ));
    let r = root.clone();
    let cache = agent.settings.kiwi_cache.clone();
    let notes = tokio::task::spawn_blocking(move || finish_root(&r, cache.as_deref())).await??;
    for n in notes {
        agent.say(&n);
    }
    // What kiwi built must be the recipe's architecture: an image labelled aarch64 holding
    // x86_64 programs would only fail when its nodes boot.
    match root_machine(&root) {
        Ok(m) if m == elf_machine(rec.arch) => {}
        Ok(m) => {
            return Err(Error::Failed(format!(
                "kiwi-ng built an image root for {} (its /bin/sh), not for the recipe's {}",
                machine_name(m),
                rec.arch
            )));
        }
        Err(why) => agent.say(&format!(
            "the image root's architecture is not checked: {why}"
        )),
    }
    if let Some(ca) = &agent.settings.ca_cert {
        install_ca(&root, ca)?;
        match add_to_trust_store(&root, ca)? {
            Some(s) => agent.say(&format!(
                "CA certificate {} installed at /etc/cray/ca/certificate_authority.crt and in the \
                 {} trust store (/{})",
                ca.display(),
                s.family,
                s.anchors
            )),
            None => agent.say(&format!(
                "CA certificate {} installed at /etc/cray/ca/certificate_authority.crt (the image \
                 has no known trust store tool)",
                ca.display()
            )),
        }
    }

    agent.status(JobStatus::PackagingArtifacts).await?;
    let packaging = Instant::now();
    // Fresh credentials: a build can outlast the first ones.
    let ctx = agent.s3().await?;
    let image_id = package(agent, &ctx, &root, rec.arch, Some(CREATE_ZSTD_LEVEL)).await?;
    agent.result(&image_id).await?;
    let total = started.elapsed();
    agent.say(&format!(
        "packaged in {:.2} s; the job took {:.1} s, kiwi-ng {:.1} s of it ({:.1} s IMS's own work \
         and waiting)",
        packaging.elapsed().as_secs_f64(),
        total.as_secs_f64(),
        kiwi_took.as_secs_f64(),
        total.saturating_sub(kiwi_took).as_secs_f64()
    ));
    agent.status(JobStatus::Success).await?;
    Ok(())
}

/// Downloads the recipe archive (md5 checked against the object's `md5sum` metadata when it has
/// one), unpacks it safely into `dest` and removes the archive.
async fn fetch_recipe(
    agent: &JobContext,
    ctx: &Ctx,
    link: &str,
    dir: &Path,
    dest: &Path,
) -> Result<()> {
    let (bucket, key) = split_s3(link).map_err(Error::s3)?;
    let head = ctx
        .store(&bucket)
        .map_err(Error::s3)?
        .get_opts(
            &key_path(&key).map_err(Error::s3)?,
            GetOptions {
                head: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::s3(s3_error(&bucket, &key, e)))?;
    let want = head.attributes.iter().find_map(|(k, v)| match k {
        Attribute::Metadata(n) if n.eq_ignore_ascii_case("md5sum") => Some(v.to_string()),
        _ => None,
    });
    let archive = dir.join("recipe.tar.gz");
    agent.say(&format!("downloading {link}"));
    let (md5, _) = agent.download(ctx, &bucket, &key, &archive).await?;
    match want.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
        Some(w) if !w.eq_ignore_ascii_case(&md5) => {
            return Err(Error::Refused(format!(
                "the recipe archive is corrupt: its md5 is {md5}, its md5sum metadata says {w}"
            )));
        }
        Some(_) => agent.say(&format!("md5 {md5} matches the archive's md5sum metadata")),
        None => agent.say(&format!(
            "md5 {md5}; the archive has no md5sum metadata: not checked"
        )),
    }
    let (a, d) = (archive.clone(), dest.to_path_buf());
    let done = tokio::task::spawn_blocking(move || recipe::extract(&a, &d, &Limits::default()))
        .await?
        .context("the recipe archive is refused")?;
    let _ = std::fs::remove_file(&archive);
    agent.say(&format!(
        "recipe unpacked: {} files, {} directories, {} links, {} bytes",
        done.files, done.dirs, done.links, done.bytes
    ));
    Ok(())
}

/// Renders the recipe's `template_dictionary` into the files its template list names.
fn template(agent: &JobContext, rec: &Recipe, recipe_dir: &Path) -> Result<()> {
    let dict: Vec<(String, String)> = rec
        .template_dictionary
        .iter()
        .flatten()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    if recipe::has_template_list(recipe_dir) {
        let files = recipe::render_templates(recipe_dir, &dict).context("templating the recipe")?;
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        agent.say(&format!(
            "rendered {} template variable(s) into {}",
            dict.len(),
            names.join(", ")
        ));
    } else if !dict.is_empty() {
        agent.say(&format!(
            "warning: the recipe has a template_dictionary but no {}: nothing rendered",
            recipe::TEMPLATE_LIST
        ));
    }
    Ok(())
}

/// The description's `<preferences><packagemanager>` (the first one given).
fn package_manager(config: &str) -> Option<String> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(config, opts).ok()?;
    doc.descendants()
        .find(|n| n.has_tag_name("packagemanager"))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
}

/// The `--signing-key` files: the configured ones (a directory stands for the files in it), else
/// the Debian archive keyring for apt recipes when the host has it.
fn signing_keys(agent: &JobContext, apt: bool) -> Result<Vec<PathBuf>> {
    let Some(configured) = &agent.settings.signing_keys else {
        let debian = Path::new(DEBIAN_KEYRING);
        return Ok(if apt && debian.is_file() {
            vec![debian.to_path_buf()]
        } else {
            vec![]
        });
    };
    let mut keys = vec![];
    for p in configured {
        let m = std::fs::metadata(p).with_context(|| format!("signing key {}", p.display()))?;
        if m.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("signing keys {}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file())
                .collect();
            files.sort();
            keys.extend(files);
        } else {
            keys.push(p.clone());
        }
    }
    Ok(keys)
}

/// The shared package cache, locked for this build, or a private one when it is busy.
struct Cache {
    dir: PathBuf,
    _lock: Option<std::fs::File>,
}

fn cache_for_build(agent: &JobContext, job_kiwi: &Path) -> Result<Cache> {
    let private = Cache {
        dir: job_kiwi.join("cache"),
        _lock: None,
    };
    let Some(shared) = &agent.settings.kiwi_cache else {
        return Ok(private);
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(shared)
        .with_context(|| format!("cannot create the kiwi cache {}", shared.display()))?;
    let lock_path = shared.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        agent.say(&format!(
            "the shared kiwi cache {} is in use by another build: this build uses its own",
            shared.display()
        ));
        return Ok(private);
    }
    Ok(Cache {
        dir: shared.clone(),
        _lock: Some(lock),
    })
}

/// Runs `kiwi-ng system prepare` into `root`, its output into the job's log line by line. On
/// failure the error carries the end of its output.
/// The host was checked for the job's arch (natively or under emulation) when the job was posted
/// and when the agent started: the recipe (`recipe`) must not have changed it since (`job`).
fn same_arch(recipe: Arch, job: Arch) -> Result<()> {
    if recipe != job {
        return Err(Error::Refused(format!(
            "the recipe is for {recipe} now, the job was created for {job} (create a new job)"
        )));
    }
    Ok(())
}

/// The ELF machine (`e_machine`) of an architecture's programs.
fn elf_machine(arch: Arch) -> u16 {
    match arch {
        Arch::X86_64 => 62,
        Arch::Aarch64 => 183,
    }
}

fn machine_name(m: u16) -> String {
    [Arch::X86_64, Arch::Aarch64]
        .into_iter()
        .find(|a| elf_machine(*a) == m)
        .map_or_else(|| format!("ELF machine {m}"), |a| a.to_string())
}

/// The ELF machine of the image root's `/bin/sh` (its links followed inside the root); `Err`:
/// why there is none.
fn root_machine(root: &Path) -> std::result::Result<u16, String> {
    use std::io::Read;
    let tree = ims_rootfs::confined::Root::open(root).map_err(|e| e.to_string())?;
    let found = tree
        .resolve(Path::new("/bin/sh"))
        .map_err(|e| e.to_string())?
        .filter(|r| r.is_file())
        .ok_or("the image root has no /bin/sh")?;
    let name = found
        .rel
        .file_name()
        .ok_or("/bin/sh resolves to the root")?;
    let parent = found.rel.parent().unwrap_or(Path::new(""));
    let mut head = Vec::with_capacity(20);
    tree.dir(parent)
        .and_then(|d| d.open_regular(name))
        .and_then(|f| f.take(20).read_to_end(&mut head))
        .map_err(|e| format!("cannot read /bin/sh: {e}"))?;
    if !head.starts_with(b"\x7fELF") {
        return Err("/bin/sh is not an ELF program".into());
    }
    if head.len() < 20 {
        return Err("/bin/sh is a truncated ELF program".into());
    }
    let m = [head[18], head[19]];
    // EI_DATA: 1 little-endian, 2 big-endian.
    Ok(match head[5] {
        2 => u16::from_be_bytes(m),
        _ => u16::from_le_bytes(m),
    })
}

/// kiwi's `--target-arch` for a recipe of `arch` built on a `host` machine: only for another
/// architecture's build.
fn target_arch(arch: Arch, host: &str) -> Option<&'static str> {
    (arch.as_str() != host).then_some(arch.as_str())
}

/// Debian's name of an architecture (dpkg, debootstrap).
fn debian_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "amd64",
        Arch::Aarch64 => "arm64",
    }
}

/// The `PATH` kiwi runs with.
const KIWI_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes `bin/debootstrap`, which runs the host's debootstrap for `arch`: kiwi 9 (Debian 12's)
/// runs `--target-arch` builds of apt recipes with a plain `debootstrap`, which bootstraps the
/// host's architecture (the packages installed later, chrooted, follow the bootstrapped dpkg).
/// `bin` then goes first in kiwi's `PATH`.
fn debootstrap_for(bin: &Path, arch: Arch) -> Result<()> {
    let real = crate::prereq::find("debootstrap", KIWI_PATH)
        .ok_or_else(|| Error::Failed("debootstrap not found (install debootstrap)".to_string()))?;
    let real = real.to_string_lossy();
    let bin_s = bin.to_string_lossy();
    if real.contains(['\'', '\n']) || bin_s.contains([':', '\n']) {
        return Err(Error::Refused(format!(
            "cannot wrap {real} in {bin_s} (a quote, colon or line break in a path)"
        )));
    }
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(bin)
        .with_context(|| format!("cannot create {}", bin.display()))?;
    crate::rootfiles::replace_file(
        &bin.join("debootstrap"),
        format!(
            "#!/bin/sh\n# {}: another architecture's bootstrap (see ims create jobs)\nexec '{real}' --arch={} \"$@\"\n",
            arch,
            debian_arch(arch)
        )
        .as_bytes(),
        0o755,
    )
}

async fn build(
    agent: &JobContext,
    dir: &Path,
    recipe_dir: &Path,
    root: &Path,
    keys: &[PathBuf],
    arch: Arch,
    apt: bool,
) -> Result<()> {
    let kiwi_dir = dir.join("kiwi");
    let tmp = kiwi_dir.join("tmp");
    let gnupg = GnupgHome::new()?;
    for d in [&kiwi_dir, &tmp] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }
    let cache = cache_for_build(agent, &kiwi_dir)?;
    let logfile = dir.join("mnt").join("kiwi.log");
    let mut cmd = tokio::process::Command::new(&agent.settings.kiwi);
    cmd.arg("--logfile")
        .arg(&logfile)
        .arg("--shared-cache-dir")
        .arg(&cache.dir)
        .arg("--temp-dir")
        .arg(&tmp);
    let mut path = KIWI_PATH.to_string();
    if let Some(a) = target_arch(arch, std::env::consts::ARCH) {
        // Another architecture's build (under emulation: the agent checked binfmt_misc).
        cmd.args(["--target-arch", a]);
        if apt {
            let bin = kiwi_dir.join("bin");
            debootstrap_for(&bin, arch)?;
            agent.say(&format!(
                "debootstrap runs with --arch={} (kiwi-ng does not pass its target architecture \
                 to it)",
                debian_arch(arch)
            ));
            path = format!("{}:{path}", bin.display());
        }
    }
    // Every command kiwi runs and its output (apt's included) in the log as it happens: the
    // build's progress, and what an admin needs when it fails.
    cmd.arg("--debug");
    cmd.args(["system", "prepare", "--description"])
        .arg(recipe_dir)
        .arg("--root")
        .arg(root);
    for k in keys {
        cmd.arg("--signing-key").arg(k);
    }
    // A clean environment: nothing of the agent's (its job token) reaches the recipe's scripts.
    // kiwi passes it on to what it runs chrooted in the image root (package scripts, config.sh),
    // so it names no host path but the keyring home and, for another architecture's apt
    // recipe, the directory of its debootstrap (no TMPDIR: dracut and mktemp in the chroot would
    // look for it there).
    cmd.env_clear()
        .env("PATH", &path)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", "/root")
        .env("GNUPGHOME", &gnupg.0)
        .current_dir(&kiwi_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let shown: Vec<String> = std::iter::once(agent.settings.kiwi.display().to_string())
        .chain(
            cmd.as_std()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned()),
        )
        .collect();
    agent.say(&format!("running {}", shown.join(" ")));
    let mut child = cmd.spawn().map_err(|e| {
        Error::Failed(format!(
            "cannot run {}: {e} (is kiwi-ng installed? Debian: apt-get install kiwi rsync)",
            agent.settings.kiwi.display()
        ))
    })?;
    let pgid = child.id().map(|p| p as i32);
    let tail = std::sync::Mutex::new(VecDeque::with_capacity(TAIL_LINES));
    let pass_on = |line: String| {
        agent.say(&line);
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    };
    let out = child
        .stdout
        .take()
        .ok_or_else(|| Error::Failed("kiwi-ng has no stdout".into()))?;
    let err = child
        .stderr
        .take()
        .ok_or_else(|| Error::Failed("kiwi-ng has no stderr".into()))?;
    let read_all = async {
        tokio::join!(lines(out, &pass_on), lines(err, &pass_on));
        child.wait().await
    };
    let status = tokio::select! {
        s = read_all => s.context("waiting for kiwi-ng")?,
        _ = agent.cancel.cancelled() => {
            if let Some(g) = pgid {
                stop_group(g).await;
            }
            return Err(Error::Failed("the job was stopped during the build".into()).stopped());
        }
    };
    drop(cache);
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_inner().unwrap_or_default().into();
    Err(Error::Failed(format!(
        "kiwi-ng {status}:\n{}",
        failure_reason(&tail)
    )))
}

/// What explains a failed build: kiwi's last `[ ERROR ]` message and what follows it (the failed
/// command's output), without kiwi's debug lines; else the end of its output.
fn failure_reason(tail: &[String]) -> String {
    let from = tail
        .iter()
        .rposition(|l| l.starts_with("[ ERROR"))
        .unwrap_or(0);
    let lines: Vec<&str> = tail[from..]
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("[ DEBUG"))
        .collect();
    let lines = if from == 0 {
        &lines[lines.len().saturating_sub(REASON_LINES)..]
    } else {
        &lines[..lines.len().min(REASON_LINES)]
    };
    lines.join("\n")
}

/// kiwi's keyring home (`GNUPGHOME`): a fresh directory with a short path — gpg-agent's sockets
/// live in it and a Unix socket path has at most 107 bytes, which a job directory under a long data
/// directory exceeds (gpg then fails to start its agent). Removed, its agent stopped, when dropped.
struct GnupgHome(PathBuf);

impl GnupgHome {
    fn new() -> Result<GnupgHome> {
        let p = std::env::temp_dir().join(format!("ims-gnupg-{}", uuid::Uuid::new_v4().simple()));
        // mkdir never follows a link and fails if the name exists.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("cannot create {}", p.display()))?;
        Ok(GnupgHome(p))
    }
}

impl Drop for GnupgHome {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.0)
            .args(["--kill", "all"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Passes every line of `r` (lossily decoded, cut at [`MAX_LINE`]) to `f`.
async fn lines(r: impl tokio::io::AsyncRead + Unpin, f: &impl Fn(String)) {
    let mut r = tokio::io::BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let end = buf.len().min(MAX_LINE);
                let line = String::from_utf8_lossy(&buf[..end]);
                f(line.trim_end_matches(['\n', '\r']).to_string());
            }
        }
    }
}

/// SIGTERM to kiwi's process group, SIGKILL after a grace period.
async fn stop_group(pgid: i32) {
    use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
    // A process group this agent created; a stale id is harmless (ESRCH).
    let Some(group) = Pid::from_raw(pgid) else {
        return;
    };
    let _ = kill_process_group(group, Signal::TERM);
    let deadline = Instant::now() + KIWI_STOP_GRACE;
    while Instant::now() < deadline && test_kill_process_group(group).is_ok() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = kill_process_group(group, Signal::KILL);
}

/// The debug shell into a failed build: not jailed, the job's files at `/mnt/image` (the failed
/// tree at `/mnt/image/build/image-root`, kiwi's log at `/mnt/image/kiwi.log`). Returns when the
/// user finishes either way.
async fn debug_shell(agent: &JobContext, dir: &Path) -> Result<()> {
    let flags = Flags::new(
        dir,
        &dir.join("mnt").join("build").join("image-root"),
        false,
    );
    flags.clear();
    let env = vec![("IMS_ARCH".to_string(), std::env::consts::ARCH.to_string())];
    let mut ssh = user_session::open(agent, false, false, env).await?;
    agent.say(
        "debug shell: the failed build root is at /mnt/image/build/image-root, the recipe at \
         /mnt/image/recipe, kiwi's log at /mnt/image/kiwi.log; the job ends in error either way",
    );
    let outcome = user_session::wait_for_user(agent, &flags, &mut ssh).await;
    user_session::close(agent, ssh).await;
    match outcome? {
        Outcome::Complete | Outcome::Failed => Ok(()),
    }
}

/// Makes kiwi's root tree ready to package: nothing mounted in it any more, kiwi's leftovers
/// removed. Returns what it did, for the log.
fn finish_root(root: &Path, shared_cache: Option<&Path>) -> Result<Vec<String>> {
    let mut notes = vec![];
    for m in mounts_under(root)? {
        // kiwi unmounts what it mounted; a mount left behind would be packaged.
        rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH)
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "{} is still mounted after the build and cannot be unmounted",
                    m.display()
                )
            })?;
        notes.push(format!("unmounted {} left by the build", m.display()));
    }
    let tree = ims_rootfs::confined::Root::open(root)
        .with_context(|| format!("image root {}", root.display()))?;
    for name in KIWI_LEFTOVERS {
        let name = std::ffi::OsStr::new(name);
        if !matches!(tree.top().kind(name), Ok(Some(_))) {
            continue;
        }
        tree.top()
            .remove_all(name)
            .with_context(|| format!("cannot remove {}", root.join(name).display()))?;
        notes.push(format!(
            "removed kiwi's /{} from the image root",
            name.display()
        ));
    }
    // kiwi bind-mounts its cache into the root at the host's path, and leaves the empty mount
    // point behind: remove the empty directories it made (never a top-level one).
    if let Some(cache) = shared_cache {
        let rel: Vec<_> = cache
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        for depth in (2..=rel.len()).rev() {
            let parent: PathBuf = rel[..depth - 1].iter().collect();
            let dir = tree.dir(&parent);
            if dir.and_then(|d| d.remove_dir(&rel[depth - 1])).is_err() {
                break;
            }
        }
    }
    Ok(notes)
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let found =
        ims_rootfs::mounts::mounts_under(&dir).context("cannot read /proc/self/mountinfo")?;
    Ok(ims_rootfs::mounts::deepest_first(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_whose_arch_changed_since_the_job_was_created_is_refused() {
        assert!(same_arch(Arch::Aarch64, Arch::Aarch64).is_ok());
        let e = same_arch(Arch::Aarch64, Arch::X86_64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the recipe is for aarch64 now, the job was created for x86_64"),
            "{e}"
        );
    }

    /// An ELF header of machine `m` (little-endian), as much as [`root_machine`] reads.
    fn elf(m: u16) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        h.resize(18, 0);
        h.extend_from_slice(&m.to_le_bytes());
        h.extend_from_slice(&[1, 0, 0, 0]);
        h
    }

    #[test]
    fn the_roots_architecture_is_its_bin_sh() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert_eq!(
            root_machine(root).unwrap_err(),
            "the image root has no /bin/sh"
        );
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        // An absolute link is followed inside the root, not on the host.
        std::os::unix::fs::symlink("/usr/bin/dash", root.join("usr/bin/sh")).unwrap();
        std::fs::write(root.join("usr/bin/dash"), "#!/not/elf\n").unwrap();
        assert_eq!(
            root_machine(root).unwrap_err(),
            "/bin/sh is not an ELF program"
        );
        std::fs::write(root.join("usr/bin/dash"), elf(183)).unwrap();
        assert_eq!(root_machine(root), Ok(183));
        assert_eq!(machine_name(183), "aarch64");
        std::fs::write(root.join("usr/bin/dash"), elf(62)).unwrap();
        assert_eq!(root_machine(root), Ok(elf_machine(Arch::X86_64)));
        assert_eq!(machine_name(40), "ELF machine 40");
        std::fs::write(root.join("usr/bin/dash"), &elf(62)[..10]).unwrap();
        assert_eq!(
            root_machine(root).unwrap_err(),
            "/bin/sh is a truncated ELF program"
        );
        // The host's own shell is the host's architecture.
        let host: Arch = std::env::consts::ARCH.parse().unwrap();
        std::fs::remove_file(root.join("usr/bin/dash")).unwrap();
        std::fs::copy("/bin/sh", root.join("usr/bin/dash")).unwrap();
        assert_eq!(root_machine(root), Ok(elf_machine(host)));
    }

    #[test]
    fn another_architectures_debootstrap_is_wrapped() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        debootstrap_for(&bin, Arch::Aarch64).unwrap();
        let w = std::fs::read_to_string(bin.join("debootstrap")).unwrap();
        assert!(w.starts_with("#!/bin/sh\n"), "{w}");
        assert!(
            w.ends_with("debootstrap' --arch=arm64 \"$@\"\n") && w.contains("exec '/"),
            "{w}"
        );
        let bad = d.path().join("a:b");
        assert!(debootstrap_for(&bad, Arch::Aarch64).is_err());
        assert_eq!(debian_arch(Arch::X86_64), "amd64");
    }

    #[test]
    fn kiwi_is_given_the_target_arch_of_another_architecture_only() {
        assert_eq!(target_arch(Arch::Aarch64, "x86_64"), Some("aarch64"));
        assert_eq!(target_arch(Arch::X86_64, "aarch64"), Some("x86_64"));
        assert_eq!(target_arch(Arch::X86_64, "x86_64"), None);
        assert_eq!(target_arch(Arch::Aarch64, "aarch64"), None);
    }

    #[test]
    fn the_reason_is_kiwis_error() {
        let log: Vec<String> = [
            "[ INFO    ]: 1 | Installing",
            "[ ERROR   ]: 1 | KiwiCommandError: old",
            "[ ERROR   ]: 2 | KiwiInstallPhaseFailed: dpkg failed",
            "dpkg: error processing package x",
            "[ DEBUG   ]: 2 | EXEC: [umount -l /r/proc]",
            "[ INFO    ]: 2 | Cleaning up",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            failure_reason(&log),
            "[ ERROR   ]: 2 | KiwiInstallPhaseFailed: dpkg failed\n\
             dpkg: error processing package x\n[ INFO    ]: 2 | Cleaning up"
        );
        let no_error: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let r = failure_reason(&no_error);
        assert!(r.starts_with("line 60\n") && r.ends_with("line 99"), "{r}");
    }

    #[test]
    fn package_manager_is_read_from_the_description() {
        let c =
            "<image><preferences><packagemanager>\n  apt\n</packagemanager></preferences></image>";
        assert_eq!(package_manager(c).as_deref(), Some("apt"));
        assert_eq!(
            package_manager(
                "<image><preferences><packagemanager>zypper</packagemanager></preferences></image>"
            )
            .as_deref(),
            Some("zypper")
        );
        assert_eq!(package_manager("<image/>"), None);
        let with_dtd = "<?xml version=\"1.0\"?>\n<!DOCTYPE image [<!ENTITY pm \"apt\">]>\n\
                        <image><preferences><packagemanager>&pm;</packagemanager></preferences></image>";
        assert_eq!(package_manager(with_dtd).as_deref(), Some("apt"));
    }

    #[test]
    fn leftovers_are_removed_and_the_cache_mount_point_too() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        for p in ["image/x", "var/lib/ims/kiwi-cache", "var/lib/dpkg", "tmp"] {
            std::fs::create_dir_all(root.join(p)).unwrap();
        }
        std::fs::write(root.join(".kconfig"), "a").unwrap();
        std::fs::write(root.join(".profile"), "b").unwrap();
        let notes = finish_root(&root, Some(Path::new("/var/lib/ims/kiwi-cache"))).unwrap();
        assert_eq!(notes.len(), 3, "{notes:?}");
        for gone in ["image", ".kconfig", ".profile", "var/lib/ims"] {
            assert!(!root.join(gone).exists(), "{gone}");
        }
        assert!(root.join("var/lib/dpkg").is_dir());
        // A cache under /tmp: /tmp itself stays, even empty.
        std::fs::create_dir_all(root.join("tmp/c")).unwrap();
        finish_root(&root, Some(Path::new("/tmp/c"))).unwrap();
        assert!(!root.join("tmp/c").exists());
        assert!(root.join("tmp").is_dir());
        // A link on the way is not followed.
        let outside = d.path().join("outside");
        std::fs::create_dir_all(outside.join("c")).unwrap();
        std::fs::remove_dir(root.join("tmp")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("tmp")).unwrap();
        finish_root(&root, Some(Path::new("/tmp/c"))).unwrap();
        assert!(outside.join("c").is_dir());
    }
}
