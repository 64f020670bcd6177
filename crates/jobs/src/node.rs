//! The node side of remote build nodes: commands of this binary that the server's remote executor
//! runs over SSH, as root, on a registered node (`<base>/bin/ims-<sha256> agent node-…`). The
//! answers are [`ims_core::node_wire`]'s types.
//!
//! Every command takes `--base DIR` (default [`DEFAULT_BASE`], `/var/lib/ims-node`); each job has
//! its scratch directory `DIR/jobs/<job-id>` there. Job ids must be canonical UUIDs
//! ([`check_job_id`]): anything else is refused, since ids become path components. On success a
//! command prints **one line of JSON** on stdout and exits 0; on failure it exits non-zero with one
//! line `ims agent: <reason>` on stderr. Exit status 2: the input was refused (a bad job id, bad
//! stdin, an unknown variable; also clap's usage errors); 1: the work failed. Nothing else is ever
//! written to stdout. Links under the base are never followed; the base and its `jobs` directory
//! must be real directories owned by root and writable by nobody else.
//!
//! * `ims agent node-probe [--base B]` →
//!   `{"arch":"x86_64","cores":8,"memory_bytes":N,"cannot_run":{"create":null|"why",
//!   "create_debug":null|"why","customize":null|"why"},"jobs":[{"id":"<uuid>","running":bool}],
//!   "version":"<ims version>"}` ([`NodeProbe`]): the binary's architecture (the node's: only
//!   matching builds are installed), the available parallelism, `MemTotal` of `/proc/meminfo`,
//!   what the node lacks for each kind of job (`ims_jobs::prereq` with the agent's `PATH`,
//!   [`AGENT_PATH`], and kiwi-ng looked up there), and every job directory with whether its agent
//!   is alive (its [`PID_FILE`] names a live process with the recorded start time). A missing
//!   base is no error: no jobs.
//! * `ims agent node-run [--base B] JOB_ID`, with `{"env":{"IMS_URL":"…","IMS_TOKEN":"…",…}}` on
//!   stdin ([`NodeRunInput`], read whole first — to its end, so the caller closes it — at most
//!   1 MiB; only the variables of
//!   [`agent_env::ALL`] but [`agent_env::DIR`], which node-run sets; checked as the agent reads
//!   them) → `{"pid":P,"start":S}` ([`AgentPid`]). It creates `B` and `B/jobs` (0700) if missing
//!   and `B/jobs/JOB_ID` (0700; an existing one is refused: `job directory exists` — the server
//!   never reuses an id, and node-stop removes leftovers), then starts the agent, `ims agent run
//!   JOB_ID` of this very binary (`/proc/self/exe`): environment cleared but `PATH` =
//!   [`AGENT_PATH`], the given variables and `IMS_AGENT_DIR=B/jobs/JOB_ID`; working directory that
//!   directory; stdin `/dev/null`, stdout and stderr appended to its [`OUT_FILE`]; in a **new
//!   session** (so it is its own process group, pgid = pid, and survives the SSH session: no
//!   SIGHUP, nothing holds the session's stdout open). Its pid and start time go to [`PID_FILE`]
//!   (written atomically) and to stdout; node-run does not wait for the agent, but an agent that
//!   ends within [`EXIT_WATCH`] (a bad setting, an unusable URL) is a failure that gives the
//!   agent's last (error) line, and its directory is removed. The token reaches the agent only:
//!   it is never in an argument, a file, or the environment of node-run.
//! * `ims agent node-stop [--base B] [--grace SECS] JOB_ID...` →
//!   `{"stopped":[{"id":"…","was_running":bool,"removed":bool}]}` ([`NodeStopReport`]), one entry
//!   per id in order. For each: an agent that is alive is stopped with its process group
//!   (`ims_core::process::stop_group`: SIGTERM, up to `--grace` seconds (default 10), SIGKILL, up to
//!   10 s more); whatever is mounted at or under the job directory is unmounted (deepest first,
//!   lazily if busy; an agent killed before it could clean up may leave its image root's mounts
//!   when it had no private mount namespace); then the directory is removed without following a
//!   link or entering a mount. An absent directory is success (`removed: false`), so the command
//!   is idempotent. When something could not be stopped or removed, the report is still printed,
//!   the reasons go to stderr (one line) and the exit status is 1.

use ims_core::agent_env::{self, AGENT_PATH, AgentEnv};
use ims_core::node_wire::{
    AgentPid, CannotRun, JOBS_DIR, MAX_RUN_INPUT, NodeJob, NodeProbe, NodeRunInput, NodeStopReport,
    NodeStopped, OUT_FILE, PID_FILE,
};
pub use ims_core::node_wire::{DEFAULT_BASE, DEFAULT_STOP_GRACE_SECS, check_job_id};
use ims_core::{JobType, process};
use ims_rootfs::confined::{Dir, FileType, Root};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `node-run` watches the agent it started: one that ends sooner is a failure.
pub const EXIT_WATCH: Duration = Duration::from_millis(200);

/// Why a node command failed, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 2: the input was refused; 1: the work failed.
    pub code: u8,
    pub reason: String,
}

impl Failure {
    fn refused(reason: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            reason: reason.into(),
        }
    }

    fn failed(reason: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            reason: reason.into(),
        }
    }
}

/// Prints a command's outcome as the contract says (one JSON line on stdout, or one line on
/// stderr) and gives its exit status.
fn answer<T: serde::Serialize>(answer: Option<&T>, failure: Option<Failure>) -> u8 {
    use std::io::Write;
    if let Some(a) = answer {
        let line = serde_json::to_string(a).unwrap_or_default();
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            eprintln!("ims agent: cannot write the answer");
            return 1;
        }
    }
    match failure {
        None => 0,
        Some(f) => {
            // One line, whatever the reason holds.
            eprintln!("ims agent: {}", f.reason.replace(['\n', '\r'], " "));
            f.code
        }
    }
}

/// `ims agent node-probe`: prints the answer; the exit status.
pub fn probe_command(base: &Path) -> u8 {
    match probe(base) {
        Ok(p) => answer(Some(&p), None),
        Err(f) => answer::<()>(None, Some(f)),
    }
}

/// `ims agent node-run`: reads stdin, starts the agent, prints the answer; the exit status.
pub fn run_command(base: &Path, job_id: &str) -> u8 {
    match run(base, job_id, std::io::stdin().lock()) {
        Ok(p) => answer(Some(&p), None),
        Err(f) => answer::<()>(None, Some(f)),
    }
}

/// `ims agent node-stop`: stops and removes, prints the report; the exit status.
pub fn stop_command(base: &Path, grace: Duration, job_ids: &[String]) -> u8 {
    match stop(base, grace, job_ids) {
        Ok((report, failure)) => answer(Some(&report), failure),
        Err(f) => answer::<()>(None, Some(f)),
    }
}

/// The base's `jobs` directory, checked and opened: its host path (canonical, as
/// `/proc/self/mountinfo` writes paths) and the directory. `None` when it does not exist and
/// `create` is false.
struct Jobs {
    path: PathBuf,
    root: Root,
}

/// Checks that `path` is a real directory (not a link) owned by root and writable by nobody
/// else, creating it (0700) if it is missing and `create`; `false` if it is missing.
fn checked_dir(path: &Path, create: bool) -> Result<bool, Failure> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
            {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Failure::failed(format!(
                        "cannot create {}: {e}",
                        path.display()
                    )));
                }
            }
            std::fs::symlink_metadata(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        m => m,
    }
    .map_err(|e| Failure::failed(format!("cannot look at {}: {e}", path.display())))?;
    let bad = |why: &str| Err(Failure::failed(format!("{} {why}", path.display())));
    if meta.file_type().is_symlink() {
        return bad("is a symbolic link (refused: nothing under the node's base is followed)");
    }
    if !meta.is_dir() {
        return bad("is not a directory");
    }
    if meta.uid() != 0 {
        return bad("is not owned by root");
    }
    if meta.mode() & 0o022 != 0 {
        return bad("is writable by group or others");
    }
    Ok(true)
}

fn open_jobs(base: &Path, create: bool) -> Result<Option<Jobs>, Failure> {
    use std::os::unix::fs::MetadataExt;
    let base = std::path::absolute(base)
        .map_err(|e| Failure::failed(format!("bad base {}: {e}", base.display())))?;
    if !checked_dir(&base, create)? {
        return Ok(None);
    }
    let jobs = base.join(JOBS_DIR);
    if !checked_dir(&jobs, create)? {
        return Ok(None);
    }
    // The base's parents are the host's (links there are the administrator's): the canonical
    // path is the one the kernel reports mounts under.
    let path = std::fs::canonicalize(&jobs)
        .map_err(|e| Failure::failed(format!("cannot resolve {}: {e}", jobs.display())))?;
    let root = Root::open(&path)
        .map_err(|e| Failure::failed(format!("cannot open {}: {e}", path.display())))?;
    // The directory opened is the one checked (not one swapped in since).
    let opened = root
        .top()
        .as_file()
        .and_then(|f| f.metadata())
        .map_err(|e| Failure::failed(format!("cannot look at {}: {e}", path.display())))?;
    let checked = std::fs::symlink_metadata(&jobs)
        .map_err(|e| Failure::failed(format!("cannot look at {}: {e}", jobs.display())))?;
    if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
        return Err(Failure::failed(format!(
            "{} changed while it was opened",
            jobs.display()
        )));
    }
    Ok(Some(Jobs { path, root }))
}

/// The agent recorded in a job directory, if its pid file can be read.
fn read_pid(job: &Dir) -> Option<AgentPid> {
    let (data, _) = job.read_regular(OsStr::new(PID_FILE), 4096).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Whether the agent recorded in `job` is alive.
fn agent_running(job: &Dir) -> Option<AgentPid> {
    read_pid(job).filter(|p| process::same_process(p.pid, Some(p.start)))
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

/// What `node-probe` answers (see the module documentation).
pub fn probe(base: &Path) -> Result<NodeProbe, Failure> {
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
        .ok_or_else(|| Failure::failed("cannot read MemTotal from /proc/meminfo"))?;
    let cores = std::thread::available_parallelism()
        .map_err(|e| Failure::failed(format!("cannot count the cores: {e}")))?
        .get() as u64;
    let kiwi = Path::new(agent_env::DEFAULT_KIWI);
    let cannot = |job_type: JobType, session: bool| {
        crate::prereq::check(job_type, None, false, session, AGENT_PATH, kiwi).explain(job_type)
    };
    let mut jobs = vec![];
    if let Some(j) = open_jobs(base, false)? {
        let entries = j
            .root
            .top()
            .entries()
            .map_err(|e| Failure::failed(format!("cannot list {}: {e}", j.path.display())))?;
        for (name, kind) in entries {
            let Some(id) = name.to_str().filter(|n| check_job_id(n).is_ok()) else {
                continue;
            };
            if kind != FileType::Directory {
                continue;
            }
            let running = j
                .root
                .top()
                .open_dir(&name)
                .ok()
                .and_then(|d| agent_running(&d))
                .is_some();
            jobs.push(NodeJob {
                id: id.to_string(),
                running,
            });
        }
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Ok(NodeProbe {
        arch: std::env::consts::ARCH.to_string(),
        cores,
        memory_bytes,
        cannot_run: CannotRun {
            create: cannot(JobType::Create, false),
            create_debug: cannot(JobType::Create, true),
            customize: cannot(JobType::Customize, true),
        },
        jobs,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Reads and checks `node-run`'s input: the agent's variables (without [`agent_env::DIR`]).
fn read_input(mut input: impl Read) -> Result<Vec<(String, String)>, Failure> {
    let mut data = Vec::new();
    input
        .by_ref()
        .take(MAX_RUN_INPUT as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| Failure::refused(format!("cannot read the input: {e}")))?;
    if data.len() > MAX_RUN_INPUT {
        return Err(Failure::refused(format!(
            "the input is larger than {} bytes",
            MAX_RUN_INPUT
        )));
    }
    let input: NodeRunInput = serde_json::from_slice(&data).map_err(|e| {
        Failure::refused(format!(
            "the input is not {{\"env\":{{\"NAME\":\"value\",…}}}}: {e}"
        ))
    })?;
    for (k, v) in &input.env {
        if k == agent_env::DIR {
            return Err(Failure::refused(format!(
                "{k} is set by node-run, it cannot be given"
            )));
        }
        if !agent_env::ALL.contains(&k.as_str()) {
            return Err(Failure::refused(format!(
                "unknown variable {k:?} (the agent's are {})",
                agent_env::ALL.join(", ")
            )));
        }
        if v.contains('\0') {
            return Err(Failure::refused(format!("{k} holds a NUL byte")));
        }
    }
    // Checked as the agent will read them (its directory aside), so a bad setting is refused
    // before anything is made.
    AgentEnv::from_lookup(|k| {
        Ok(if k == agent_env::DIR {
            Some("/".to_string())
        } else {
            input.env.get(k).cloned()
        })
    })
    .map_err(|e| Failure::refused(format!("the agent's environment: {e}")))?;
    Ok(input.env.into_iter().collect())
}

/// What `node-run` does (see the module documentation), `input` being its stdin.
pub fn run(base: &Path, job_id: &str, input: impl Read) -> Result<AgentPid, Failure> {
    check_job_id(job_id).map_err(Failure::refused)?;
    let env = read_input(input)?;
    let jobs = open_jobs(base, true)?.ok_or_else(|| Failure::failed("the base is missing"))?;
    let name = OsStr::new(job_id);
    let dir_path = jobs.path.join(job_id);
    match jobs.root.top().mkdir(name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Failure::failed(format!(
                "job directory exists: {}",
                dir_path.display()
            )));
        }
        Err(e) => {
            return Err(Failure::failed(format!(
                "cannot create {}: {e}",
                dir_path.display()
            )));
        }
    }
    let remove = || {
        let _ = jobs.root.top().remove_all(name);
    };
    match start_agent(&jobs, job_id, &dir_path, env) {
        Ok(p) => Ok(p),
        Err(f) => {
            remove();
            Err(f)
        }
    }
}

/// Starts the agent in its (new, empty) directory `dir_path` and watches it for [`EXIT_WATCH`].
fn start_agent(
    jobs: &Jobs,
    job_id: &str,
    dir_path: &Path,
    env: Vec<(String, String)>,
) -> Result<AgentPid, Failure> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let failed = |what: &str, e: std::io::Error| Failure::failed(format!("{what}: {e}"));
    let dir = jobs
        .root
        .top()
        .open_dir(OsStr::new(job_id))
        .map_err(|e| failed(&format!("cannot open {}", dir_path.display()), e))?;
    // Whatever the umask.
    dir.as_file()
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| failed(&format!("cannot set the mode of {}", dir_path.display()), e))?;
    let out = dir
        .create_new(OsStr::new(OUT_FILE))
        .map_err(|e| failed("cannot create the agent's output file", e))?;
    let err = out
        .try_clone()
        .map_err(|e| failed("cannot create the agent's output file", e))?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    // What `ps` shows: the binary's own path rather than /proc/self/exe.
    cmd.arg0(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ims")))
        .args(["agent", "run", job_id])
        .env_clear()
        .env("PATH", AGENT_PATH)
        .envs(env)
        .env(agent_env::DIR, dir_path)
        .current_dir(dir_path)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: between fork and exec the child only makes system calls (setsid, close_range),
    // which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own: no controlling terminal, no SIGHUP when the SSH session
            // ends, and its own process group (pgid = pid) for node-stop to signal.
            rustix::process::setsid()?;
            // Nothing node-run inherited (beyond stdin/stdout/stderr, which are replaced) goes
            // on to the agent. Best effort: close_range is Linux 5.11 and later (called as a
            // system call: glibc has a wrapper only since 2.34, and nodes may be older).
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed("cannot start the agent (/proc/self/exe agent run)", e))?;
    let pid = child.id();
    let kill = |child: &mut std::process::Child| {
        process::signal_group(pid, process::Signal::KILL);
        let _ = child.wait();
    };
    let Some(start) = process::start_time(pid) else {
        let status = child
            .wait()
            .map_err(|e| failed("cannot wait for the agent", e))?;
        return Err(exited_at_once(pid, dir_path, status));
    };
    let record = AgentPid { pid, start };
    let data = serde_json::to_vec(&record).unwrap_or_default();
    if let Err(e) = dir.replace_file(OsStr::new(PID_FILE), &data, 0o600) {
        kill(&mut child);
        return Err(failed("cannot write the agent's pid file", e));
    }
    let deadline = Instant::now() + EXIT_WATCH;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(exited_at_once(pid, dir_path, status)),
            Ok(None) if Instant::now() >= deadline => break,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill(&mut child);
                return Err(failed("cannot wait for the agent", e));
            }
        }
    }
    // Not waited for: it outlives node-run (its parent becomes init, or the node's subreaper).
    drop(child);
    Ok(record)
}

/// The agent `pid` ended within [`EXIT_WATCH`] (it has been waited for): anything it started
/// goes too, and its reason is the failure's.
fn exited_at_once(pid: u32, dir_path: &Path, status: std::process::ExitStatus) -> Failure {
    process::kill_leftovers(pid);
    let reason = process::failure_reason(&dir_path.join(OUT_FILE))
        .unwrap_or_else(|| "it wrote nothing".to_string());
    Failure::failed(format!("the agent ended at once ({status}): {reason}"))
}

/// What `node-stop` does (see the module documentation): the report, and what failed if
/// anything did. `Err`: nothing was done (a bad id, an unusable base).
pub fn stop(
    base: &Path,
    grace: Duration,
    job_ids: &[String],
) -> Result<(NodeStopReport, Option<Failure>), Failure> {
    for id in job_ids {
        check_job_id(id).map_err(Failure::refused)?;
    }
    let jobs = open_jobs(base, false)?;
    let mut stopped = vec![];
    let mut problems = vec![];
    for id in job_ids {
        let (entry, problem) = match &jobs {
            Some(jobs) => stop_one(jobs, id, grace),
            None => (
                NodeStopped {
                    id: id.clone(),
                    was_running: false,
                    removed: false,
                },
                None,
            ),
        };
        if let Some(p) = problem {
            problems.push(format!("job {id}: {p}"));
        }
        stopped.push(entry);
    }
    let failure = (!problems.is_empty()).then(|| Failure::failed(problems.join("; ")));
    Ok((NodeStopReport { stopped }, failure))
}

/// Stops one job's agent and removes its directory; what went wrong, if anything.
fn stop_one(jobs: &Jobs, id: &str, grace: Duration) -> (NodeStopped, Option<String>) {
    let mut entry = NodeStopped {
        id: id.to_string(),
        was_running: false,
        removed: false,
    };
    let name = OsStr::new(id);
    let top = jobs.root.top();
    let kind = match top.kind(name) {
        Ok(k) => k,
        Err(e) => return (entry, Some(format!("cannot look at its directory: {e}"))),
    };
    match kind {
        None => return (entry, None),
        Some(FileType::Directory) => {}
        // Not made by node-run: the entry itself goes (a link is not followed).
        Some(_) => {
            return match top.remove_file(name) {
                Ok(()) => {
                    entry.removed = true;
                    (entry, None)
                }
                Err(e) => (entry, Some(format!("cannot remove it: {e}"))),
            };
        }
    }
    let dir_path = jobs.path.join(id);
    // The pid file is read without following links; a directory that is a mount point cannot be
    // opened (with openat2), and is unmounted below.
    if let Some(agent) = top.open_dir(name).ok().and_then(|d| read_pid(&d)) {
        match process::stop_group(agent.pid, Some(agent.start), grace) {
            Ok(was) => entry.was_running = was,
            Err(e) => return (entry, Some(e.to_string())),
        }
    }
    if let Err(e) = unmount_under(&dir_path) {
        return (entry, Some(e));
    }
    match top.remove_all(name) {
        Ok(()) => {
            entry.removed = true;
            (entry, None)
        }
        Err(e) => (
            entry,
            Some(format!("cannot remove {}: {e}", dir_path.display())),
        ),
    }
}

/// Unmounts everything mounted at or under `dir`: deepest first (and the last stacked first),
/// lazily where busy, never following a link at the mount point.
fn unmount_under(dir: &Path) -> Result<(), String> {
    use rustix::io::Errno;
    use rustix::mount::{UnmountFlags, unmount};
    // A pass unmounts every mount seen; mounts under a lazily detached one go with it. Later
    // passes catch mounts that propagation or a stack brought back into view.
    for _ in 0..8 {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mut mounts: Vec<(usize, PathBuf)> = ims_rootfs::mounts::under(&info, dir)
            .into_iter()
            .enumerate()
            .collect();
        if mounts.is_empty() {
            return Ok(());
        }
        mounts.sort_by(|(i, a), (j, b)| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then(j.cmp(i))
        });
        for (_, m) in mounts {
            match unmount(&m, UnmountFlags::NOFOLLOW) {
                // Gone already (with a mount above it, or detached).
                Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
                Err(Errno::BUSY) => {
                    match unmount(&m, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH) {
                        Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(format!("cannot unmount {}: {e}", m.display())),
                    }
                }
                Err(e) => return Err(format!("cannot unmount {}: {e}", m.display())),
            }
        }
    }
    Err(format!(
        "file systems stay mounted under {} after unmounting them",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4e3f1b7c-56a2-4c2e-9d8e-0123456789ab";

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn input(env: &[(&str, &str)]) -> Vec<u8> {
        let env: std::collections::BTreeMap<_, _> = env.iter().copied().collect();
        serde_json::to_vec(&serde_json::json!({ "env": env })).unwrap()
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        let m = "MemTotal:       16318252 kB\nMemFree:         1 kB\n";
        assert_eq!(mem_total(m), Some(16318252 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total("MemTotal: 99999999999999999999 kB\n"), None);
    }

    #[test]
    fn the_input_is_checked_before_anything_is_made() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path().join("node");
        let refused = |data: &[u8], id: &str, want: &str| {
            let e = run(&b, id, data).unwrap_err();
            assert_eq!(e.code, 2, "{e:?}");
            assert!(e.reason.contains(want), "{want}: {e:?}");
            assert!(!b.exists(), "nothing is made for a refused input");
        };
        let ok = input(&[("IMS_URL", "http://127.0.0.1:1")]);
        refused(&ok, "../x", "bad job id");
        refused(&ok, "-rf", "bad job id");
        refused(b"", ID, "the input is not");
        refused(b"{\"env\":{},\"more\":1}", ID, "the input is not");
        refused(b"{\"env\":{\"IMS_URL\":1}}", ID, "the input is not");
        refused(
            &input(&[("IMS_URL", "http://x"), ("LD_PRELOAD", "/x.so")]),
            ID,
            "unknown variable \"LD_PRELOAD\"",
        );
        refused(
            &input(&[("IMS_URL", "http://x"), ("IMS_AGENT_DIR", "/")]),
            ID,
            "IMS_AGENT_DIR is set by node-run",
        );
        refused(
            &input(&[("IMS_URL", "http://x"), ("IMS_TOKEN", "a\0b")]),
            ID,
            "NUL",
        );
        refused(&input(&[]), ID, "IMS_URL is not set");
        refused(
            &input(&[("IMS_URL", "http://x"), ("IMS_AGENT_COMPRESSION", "bzip2")]),
            ID,
            "IMS_AGENT_COMPRESSION",
        );
        let mut big = b"{\"env\":{\"IMS_URL\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_RUN_INPUT));
        big.extend(b"\"}}");
        refused(&big, ID, "larger than");
    }

    #[test]
    fn a_linked_or_foreign_base_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root (the base must be owned by root)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let ok = input(&[("IMS_URL", "http://127.0.0.1:1")]);
        for e in [
            run(&link, ID, ok.as_slice()).unwrap_err(),
            probe(&link).unwrap_err(),
            stop(&link, Duration::ZERO, &[ID.to_string()]).unwrap_err(),
        ] {
            assert_eq!(e.code, 1);
            assert!(e.reason.contains("is a symbolic link"), "{e:?}");
        }
        // jobs/ as a link.
        std::fs::create_dir(real.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("elsewhere", real.join("jobs")).unwrap();
        let e = probe(&real).unwrap_err();
        assert!(e.reason.contains("jobs is a symbolic link"), "{e:?}");
        std::fs::remove_file(real.join("jobs")).unwrap();
        // Owned by someone else, or writable by others.
        std::os::unix::fs::chown(&real, Some(65534), None).unwrap();
        let e = run(&real, ID, ok.as_slice()).unwrap_err();
        assert!(e.reason.contains("is not owned by root"), "{e:?}");
        std::os::unix::fs::chown(&real, Some(0), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = probe(&real).unwrap_err();
        assert!(e.reason.contains("writable by group or others"), "{e:?}");
        assert!(!real.join("jobs").exists());
        // A missing base: no jobs, nothing made.
        let p = probe(&t.path().join("none")).unwrap();
        assert!(p.jobs.is_empty());
        assert!(!t.path().join("none").exists());
        let (r, f) = stop(&t.path().join("none"), Duration::ZERO, &[ID.to_string()]).unwrap();
        assert_eq!(f, None);
        assert_eq!(
            r.stopped,
            [NodeStopped {
                id: ID.into(),
                was_running: false,
                removed: false
            }]
        );
    }

    #[test]
    fn the_probe_lists_job_directories_only() {
        if !is_root() {
            eprintln!("skipped: needs root (the base must be owned by root)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let jobs = t.path().join("jobs");
        std::fs::create_dir(&jobs).unwrap();
        let other = "00000000-0000-4000-8000-000000000001";
        std::fs::create_dir(jobs.join(ID)).unwrap();
        std::fs::create_dir(jobs.join(other)).unwrap();
        std::fs::create_dir(jobs.join("not-a-job")).unwrap();
        std::fs::write(jobs.join("00000000-0000-4000-8000-000000000002"), "").unwrap();
        // A live agent: this process; a dead one: a start time that is not its.
        let me = std::process::id();
        let start = process::start_time(me).unwrap();
        std::fs::write(
            jobs.join(ID).join(PID_FILE),
            serde_json::to_vec(&AgentPid { pid: me, start }).unwrap(),
        )
        .unwrap();
        std::fs::write(
            jobs.join(other).join(PID_FILE),
            serde_json::to_vec(&AgentPid {
                pid: me,
                start: start + 1,
            })
            .unwrap(),
        )
        .unwrap();
        let p = probe(t.path()).unwrap();
        assert_eq!(
            p.jobs,
            [
                NodeJob {
                    id: other.into(),
                    running: false
                },
                NodeJob {
                    id: ID.into(),
                    running: true
                }
            ]
        );
        assert_eq!(p.arch, std::env::consts::ARCH);
        assert!(p.cores >= 1 && p.memory_bytes > 0, "{p:?}");
        // A pid file that is a link is not followed.
        std::fs::remove_file(jobs.join(ID).join(PID_FILE)).unwrap();
        let elsewhere = t.path().join("pid");
        std::fs::write(
            &elsewhere,
            serde_json::to_vec(&AgentPid { pid: me, start }).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, jobs.join(ID).join(PID_FILE)).unwrap();
        assert!(probe(t.path()).unwrap().jobs.iter().all(|j| !j.running));
    }
}
