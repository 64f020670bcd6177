//! Process primitives shared by the executors that start job agents (the server's local executor)
//! and by the node commands that run agents on remote build nodes (`ims agent node-*`): who an
//! agent is (pid and start time, so a recycled pid is never mistaken for it), signalling its
//! process group, the stop sequence, and why it failed (from its output file).
//!
//! The only I/O of this crate: `/proc`, signals, and reading an agent's output file.

use std::path::Path;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

/// How long [`stop_group`] waits for the agent to be gone after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(10);
/// The longest grace period [`stop_group`] gives (a longer one is cut to it).
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// A live process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`); `None`
/// for no process or a zombie (dead, only not yet reaped by its parent).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The start time in the text of a `/proc/<pid>/stat`; `None` for a zombie or a malformed text.
fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

/// Whether the process `pid` is alive and is the one that started at `started` (not a recycled
/// pid). Without a recorded start time, any live process `pid` counts.
pub fn same_process(pid: u32, started: Option<u64>) -> bool {
    match (start_time(pid), started) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Sends `sig` to the process group `pid` (an agent is its group's leader); errors (no such
/// group) are ignored.
pub fn signal_group(pid: u32, sig: Signal) {
    if let Some(group) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(group, sig);
    }
}

/// Kills what is left of the agent's process group once the agent itself is gone, unless the
/// pid now names another process (then the pid was free to be reused, which the kernel does only
/// once no process is left in the group: there is nothing to kill, and the new process's group
/// must not be hit).
pub fn kill_leftovers(pid: u32) {
    if start_time(pid).is_none() {
        signal_group(pid, Signal::KILL);
    }
}

/// The agent `pid` (started at `started`) would not die.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the job agent (pid {pid}) did not stop within {} s of SIGKILL", KILL_WAIT.as_secs())]
pub struct StillRunning {
    pub pid: u32,
}

/// Stops the agent `pid` that started at `started` and its process group: SIGTERM to the group,
/// up to `grace` (at most [`MAX_GRACE`]) for the agent to end, SIGKILL to the group, up to [`KILL_WAIT`] for it to be
/// gone; then whatever is left in the group is killed ([`kill_leftovers`]). Returns whether the
/// agent was running. Blocks the calling thread (polls every 50–100 ms).
pub fn stop_group(pid: u32, started: Option<u64>, grace: Duration) -> Result<bool, StillRunning> {
    let running = same_process(pid, started);
    if running {
        signal_group(pid, Signal::TERM);
        let deadline = Instant::now() + grace.min(MAX_GRACE);
        while same_process(pid, started) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_group(pid, Signal::KILL);
        let deadline = Instant::now() + KILL_WAIT;
        while same_process(pid, started) {
            if Instant::now() > deadline {
                return Err(StillRunning { pid });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Whatever the agent started in its group goes too.
    kill_leftovers(pid);
    Ok(running)
}

/// The reason an agent gave for failing: the last error line of its output (`agent.out`: its log
/// lines and its own start-up messages), else its last line; cut to 2000 characters.
pub fn failure_reason(out: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut f = std::fs::File::open(out).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    f.take(TAIL).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains(" error: ") || l.starts_with("error: ") || l.starts_with("ims agent:"))
        .or(lines.last())?;
    // Lines longer than a log line should be are cut (on a character boundary).
    Some(line.chars().take(2000).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_reason_is_the_last_error_line() {
        let out = std::env::temp_dir().join(format!("ims-agent-out-{}", std::process::id()));
        let _ = std::fs::remove_file(&out);
        assert_eq!(failure_reason(&out), None);
        std::fs::write(
            &out,
            "2026-01-01T00:00:00Z status: fetching_image\n\
             2026-01-01T00:00:01Z error: cannot write ./x/image.sqsh: No such file or directory\n\
             2026-01-01T00:00:01Z status: error\n\n",
        )
        .unwrap();
        assert_eq!(
            failure_reason(&out).unwrap(),
            "2026-01-01T00:00:01Z error: cannot write ./x/image.sqsh: No such file or directory"
        );
        std::fs::write(&out, "ims agent: IMS_URL is not set\n").unwrap();
        assert_eq!(
            failure_reason(&out).unwrap(),
            "ims agent: IMS_URL is not set"
        );
        std::fs::write(&out, "something else\n").unwrap();
        assert_eq!(failure_reason(&out).unwrap(), "something else");
        std::fs::write(&out, "x".repeat(5000)).unwrap();
        assert_eq!(failure_reason(&out).unwrap().len(), 2000);
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn the_start_time_is_field_22_after_the_command_name() {
        // A command name with spaces and parentheses.
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(parse_start_time(stat), Some(777));
        let zombie = "42 (a) Z 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(parse_start_time(zombie), None);
        assert_eq!(parse_start_time("42 (a"), None);
        assert_eq!(parse_start_time("42 (a) S 1"), None);
    }

    #[test]
    fn processes_are_recognised() {
        let me = std::process::id();
        let t = start_time(me).expect("this process");
        assert!(same_process(me, Some(t)));
        assert!(same_process(me, None));
        assert!(!same_process(me, Some(t + 1)), "a recycled pid");
        // A zombie is not alive.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while start_time(pid).is_some() {
            assert!(
                Instant::now() < deadline,
                "the exited child still counts as alive"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
    }

    /// A child in a process group of its own (so that signalling the group hits nothing else).
    fn group_leader(script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Reaps `child` in the background, as its parent would, so that it does not stay a zombie.
    fn reap(mut child: std::process::Child) -> std::thread::JoinHandle<std::process::ExitStatus> {
        std::thread::spawn(move || child.wait().unwrap())
    }

    #[test]
    fn stop_group_ends_a_group_with_sigterm_and_then_sigkill() {
        use std::os::unix::process::ExitStatusExt;
        // Ends on SIGTERM.
        let child = group_leader("sleep 30");
        let pid = child.id();
        let started = start_time(pid);
        let waiter = reap(child);
        let t = Instant::now();
        assert_eq!(stop_group(pid, started, Duration::MAX), Ok(true));
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        assert_eq!(waiter.join().unwrap().signal(), Some(15));
        // Ignores SIGTERM: SIGKILL after the grace period, and its group's other member too.
        let child = group_leader("trap '' TERM; sleep 30 & while :; do sleep 0.05; done");
        let pid = child.id();
        let started = start_time(pid);
        let waiter = reap(child);
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        assert_eq!(
            stop_group(pid, started, Duration::from_millis(500)),
            Ok(true)
        );
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(waiter.join().unwrap().signal(), Some(9));
        let deadline = Instant::now() + Duration::from_secs(5);
        while rustix::process::test_kill_process_group(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
        )
        .is_ok()
        {
            assert!(Instant::now() < deadline, "the group's sleep survived");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not running (a recorded start time that is not the live process's): nothing is sent.
        let child = group_leader("sleep 30");
        let pid = child.id();
        let started = start_time(pid).unwrap();
        assert_eq!(
            stop_group(pid, Some(started + 1), Duration::ZERO),
            Ok(false)
        );
        assert!(
            same_process(pid, Some(started)),
            "another process was signalled"
        );
        signal_group(pid, Signal::KILL);
        reap(child).join().unwrap();
    }
}
