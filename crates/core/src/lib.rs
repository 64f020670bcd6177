//! `ims-core`: the IMS wire format — records, enums, request validation, problem errors and the image
//! manifest. No I/O (but [`process`], the agents' process primitives: `/proc` and signals): every
//! other crate builds on these types and nothing re-declares a field.

#![forbid(unsafe_code)]

pub mod agent_env;
pub mod compression;
pub mod input;
pub mod job_wire;
#[cfg(test)]
mod layers;
pub mod manifest;
pub mod node_wire;
pub mod problem;
pub mod process;
pub mod records;
pub mod s3name;
pub mod sshkey;
pub mod sts;
pub mod time;
pub mod validate;

pub use problem::Problem;
pub use records::*;
pub use time::Timestamp;
