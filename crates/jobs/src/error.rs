//! The error of the agent's steps: what failed, its cause kept as the error's `source` (not
//! flattened into a string), and a stopped job as a kind of its own rather than something to
//! re-check afterwards.
//!
//! Its message is the one the job's log and the job's `error` reason show. The runner decides
//! on the kind: a job that was stopped ([`Error::is_cancelled`]) and has ended elsewhere is not
//! set to `error` again.

use std::fmt::Display;

/// What went wrong in a step of a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job was stopped (deleted, or ended by someone else) while the step ran.
    #[error("the job was stopped")]
    Cancelled,
    /// The job was stopped while a step ran that tells it in its own words (kiwi stopped, an S3
    /// transfer interrupted): the step's message, and a stop all the same.
    #[error(transparent)]
    Stopped(Box<Error>),
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
    /// A request to the IMS API failed.
    #[error("{context}: {source}")]
    Api {
        context: String,
        #[source]
        source: Box<ims_client::Error>,
    },
    /// An S3 lookup or transfer of the client failed; its message names the object.
    #[error(transparent)]
    S3(Box<dyn std::error::Error + Send + Sync>),
    /// A document (a record, a manifest) is not the JSON expected.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// The agent's settings in its environment cannot be used.
    #[error(transparent)]
    Settings(#[from] ims_core::agent_env::AgentEnvError),
    /// A blocking task of a step failed (panicked).
    #[error(transparent)]
    Worker(#[from] tokio::task::JoinError),
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
            Error::Cancelled | Error::Stopped(_) => true,
            Error::Context { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }

    /// An error of the client's S3 support (a message today, or its typed error).
    pub fn s3(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::S3(e.into())
    }

    /// The same error, as a stop: the step failed because the job was stopped.
    pub fn stopped(self) -> Error {
        match self {
            e @ (Error::Cancelled | Error::Stopped(_)) => e,
            e => Error::Stopped(Box::new(e)),
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

/// `.context(…)` on results whose error becomes an [`Error`].
pub trait Context<T> {
    /// The error, with what was being done (`context`) in front of its message.
    fn context(self, context: impl Display) -> Result<T>
    where
        Self: Sized,
    {
        self.with_context(|| context)
    }
    /// As [`Context::context`], the context made only on an error.
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.context(context()))
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context().to_string(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, ims_client::Error> {
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::Api {
            context: context().to_string(),
            source: Box::new(source),
        })
    }
}

impl<T> Context<T> for std::result::Result<T, serde_json::Error> {
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::Json {
            context: context().to_string(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, ims_rootfs::RootfsError> {
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
        assert_eq!(Error::Refused("no".into()).to_string(), "no");
    }

    #[test]
    fn a_stopped_job_is_told_through_any_context() {
        let e = Error::Cancelled.context("packaging").context("customize");
        assert!(e.is_cancelled());
        assert_eq!(e.to_string(), "customize: packaging: the job was stopped");
        assert!(!Error::Failed("x".into()).context("y").is_cancelled());
        // A step that says it in its own words: its message, a stop all the same.
        let e = Error::s3("interrupted while downloading s3://b/k".to_string()).stopped();
        assert!(e.is_cancelled());
        assert_eq!(e.to_string(), "interrupted while downloading s3://b/k");
        assert!(e.context("fetching").is_cancelled());
        assert!(!Error::s3("s3://b/k: gone".to_string()).is_cancelled());
    }
}
