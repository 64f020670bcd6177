//! The error of the agent's steps: what failed, its cause kept as the error's `source` (not
//! flattened into a string), and a stopped job as a kind of its own rather than something to
//! re-check afterwards.
//!
//! Its message is the one the job's log and the job's `error` reason show. Code that still
//! returns `Result<_, String>` takes it through `?` (`From<Error> for String`).

use std::fmt::Display;

/// What went wrong in a step of a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job was stopped (deleted, or ended by someone else) while the step ran.
    #[error("the job was stopped")]
    Cancelled,
    /// What the job was given (a recipe archive, a template, a kiwi description) is refused; the
    /// message says why.
    #[error("{0}")]
    Refused(String),
    /// A step failed, and the message is all there is to tell (a tool's own report, a timeout).
    #[error("{0}")]
    Failed(String),
    /// A system call failed, and its own message says all.
    #[error(transparent)]
    Os(std::io::Error),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Image-root tools and lookups (squashfs, kernel and initrd).
    #[error(transparent)]
    Rootfs(#[from] ims_rootfs::RootfsError),
    /// An error of an inner step, with what was being done.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the job was stopped (through any context around it).
    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled => true,
            Error::Context { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }

    /// The same error, with what was being done in front of its message.
    pub fn context(self, context: impl Display) -> Error {
        Error::Context {
            context: context.to_string(),
            source: Box::new(self),
        }
    }
}

impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

/// `.context(…)` on results whose error becomes an [`Error`].
pub trait Context<T> {
    /// The error, with what was being done (`context`) in front of its message.
    fn context(self, context: impl Display) -> Result<T>;
    /// As [`Context::context`], the context made only on an error.
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| e.context(context))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.context(context()))
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context.to_string(),
            source,
        })
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context().to_string(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, ims_rootfs::RootfsError> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| Error::from(e).context(context))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::from(e).context(context()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_context_and_sources_their_cause() {
        let io: std::result::Result<(), _> =
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        let e = io
            .context("cannot write /etc/x")
            .context("step")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "step: cannot write /etc/x: permission denied"
        );
        let inner = std::error::Error::source(&e).unwrap();
        let io = std::error::Error::source(inner).unwrap();
        assert!(io.downcast_ref::<std::io::Error>().is_some());
        assert!(!e.is_cancelled());
        assert_eq!(String::from(Error::Refused("no".into())), "no");
    }

    #[test]
    fn a_stopped_job_is_told_through_any_context() {
        let e = Error::Cancelled.context("packaging").context("customize");
        assert!(e.is_cancelled());
        assert_eq!(e.to_string(), "customize: packaging: the job was stopped");
        assert!(!Error::Failed("x".into()).context("y").is_cancelled());
    }
}
