//! The integration tests of `ims`: one binary (one harness build and link) whose modules are the suites.
//! Filter one suite with `scripts/test.sh -E 'test(/^api_jobs::/)'`.

#[macro_use]
mod common;
mod qemu;

mod api_auth;
mod api_concurrency;
mod api_connections;
mod api_images;
mod api_jobs;
mod api_openapi;
mod api_protocol;
mod api_public_keys;
mod api_recipes;
mod api_remote_nodes;
mod builtin_s3;
mod cli;
mod cli_artifacts;
mod cli_import;
mod cli_nodes;
mod container_image;
mod durability;
mod durability_artifacts;
mod job_credentials;
mod jobs_aarch64;
mod jobs_create;
mod jobs_customize;
mod jobs_kubernetes;
mod kube_fake;
mod kube_manifests;
mod leases;
mod migrate;
mod node_commands;
mod readme;
mod remote_nodes;
mod remote_rig;
mod s3_backend;
