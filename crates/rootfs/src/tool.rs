//! Running the external tools: spawn with a closed stdin, capture stdout/stderr, turn failures into
//! [`RootfsError`]s that carry the end of the tool's standard error.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use crate::error::{Result, RootfsError};

/// An external tool and the Debian package that ships it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

pub(crate) const MKSQUASHFS: Tool = Tool {
    name: "mksquashfs",
    package: "squashfs-tools",
};
pub(crate) const UNSQUASHFS: Tool = Tool {
    name: "unsquashfs",
    package: "squashfs-tools",
};
pub(crate) const TAR: Tool = Tool {
    name: "tar",
    package: "tar",
};
pub(crate) const GZIP: Tool = Tool {
    name: "gzip",
    package: "gzip",
};
pub(crate) const XZ: Tool = Tool {
    name: "xz",
    package: "xz-utils",
};
pub(crate) const ZSTD: Tool = Tool {
    name: "zstd",
    package: "zstd",
};

/// How much of a tool's standard error is quoted in an error.
const STDERR_TAIL_LINES: usize = 12;
const STDERR_TAIL_BYTES: usize = 2048;

impl Tool {
    pub fn command(self) -> Command {
        let mut cmd = Command::new(self.name);
        cmd.stdin(Stdio::null()).env("LC_ALL", "C");
        cmd
    }

    pub fn spawn_error(self, e: std::io::Error, action: &str) -> RootfsError {
        if e.kind() == std::io::ErrorKind::NotFound {
            RootfsError::ToolMissing {
                tool: self.name,
                package: self.package,
            }
        } else {
            RootfsError::ToolFailed {
                tool: self.name,
                action: action.to_string(),
                status: "could not be started".to_string(),
                stderr_tail: e.to_string(),
            }
        }
    }

    pub fn spawn(self, cmd: &mut Command, action: &str) -> Result<Child> {
        cmd.spawn().map_err(|e| self.spawn_error(e, action))
    }

    /// Runs to completion, capturing stdout and stderr; a non-zero exit is an error.
    pub fn run(self, cmd: &mut Command, action: &str) -> Result<Output> {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| self.spawn_error(e, action))?;
        self.check(out.status, &out.stderr, action)?;
        Ok(out)
    }

    pub fn check(self, status: ExitStatus, stderr: &[u8], action: &str) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        Err(self.failed(status, stderr, action))
    }

    pub fn failed(self, status: ExitStatus, stderr: &[u8], action: &str) -> RootfsError {
        RootfsError::ToolFailed {
            tool: self.name,
            action: action.to_string(),
            status: describe_status(status),
            stderr_tail: stderr_tail(stderr),
        }
    }
}

pub(crate) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// The last lines of a tool's standard error, as text, for an error message.
pub(crate) fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "(it wrote nothing on standard error)".to_string();
    }
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let mut tail = lines[start..].join(" | ");
    if tail.len() > STDERR_TAIL_BYTES {
        let mut cut = tail.len() - STDERR_TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("…{}", &tail[cut..]);
    }
    tail
}

/// Reads a child's pipe to the end on a thread (so that two pipes cannot dead-lock each other).
pub(crate) fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only shortens the diagnostic text; the exit status decides success.
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

pub(crate) fn join_drain(h: Option<std::thread::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}
