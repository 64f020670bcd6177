//! # ims-jobs
//!
//! The job agent, `ims agent run <job-id>`: the worker an executor starts for each job (a child
//! process of `ims serve` with the local executor). It talks to the server **only** through the
//! public API (with its job token, which can act on its own job only) and the artifact store (S3
//! credentials from STS), exactly as the original's job pods do, so other executors only have to
//! start it somewhere else.
//!
//! Modules from the top down (each uses only those below it):
//!
//! * [`runner`]: the process frame every pipeline runs in — the heartbeat (which also carries the
//!   user's `complete`/`fail` requests and notices a job deleted or ended by someone else),
//!   signals and the orphan guard, `error` with the reason when anything fails.
//! * [`customize`]: fetch the source image's rootfs (md5/sha256 checked while it downloads),
//!   prepare the image root, wait for the user, package and publish the new image.
//! * [`create`]: fetch and unpack the recipe, wait for its repositories, build the root tree with
//!   `kiwi-ng system prepare` (its output as the job's log), a debug shell after a failed build
//!   with `enable_debug`, the site CA, package and publish the new image.
//! * [`package`]: packaging shared by both pipelines (kernel/initrd rule, mksquashfs, register-last
//!   publishing); [`user_session`]: the SSH session with the user (customize, and create's debug
//!   shell), on [`sshd`]: the job's sandboxed OpenSSH server; [`rootfiles`]: writing into an image
//!   root without following its links, the trust store.
//! * [`imageroot`]: the image root of a customize job: an overlay over the loop-mounted squashfs
//!   (fast; nothing unpacked) or, where that is impossible, a full `unsquashfs`.
//! * [`recipe`]: a create job's recipe archive unpacked safely (no member outside the recipe, no
//!   write through a link, size/count/ratio limits, empty again on any error), and its templates
//!   rendered with the job's `template_dictionary`.
//! * [`repos`]: the kiwi description's package repositories, probed until each answers
//!   (`waiting_for_repos`).
//! * [`context`]: what a pipeline works with ([`context::JobContext`]: the job, the settings, the
//!   API client, the log shipped to the server in order, status changes, the SSH report).
//! * [`agent`]: the agent's settings from the environment, and its process set-up.
//! * [`node`]: `ims agent node-probe|node-run|node-stop`, the commands the server's remote
//!   executor runs on a remote build node over SSH to look at it, start an agent there and stop
//!   it.
//!
//! The agent runs in a private mount namespace ([`agent::enter_private_mount_namespace`], before
//! any thread exists), so every mount it makes disappears with it, however it ends.

pub mod agent;
pub mod context;
pub mod create;
pub mod customize;
pub mod error;
pub mod imageroot;
pub mod node;
pub mod package;
pub mod prereq;
pub mod recipe;
pub mod repos;
pub mod rootfiles;
pub mod runner;
pub mod seccomp;
pub mod sshd;
pub mod user_session;
