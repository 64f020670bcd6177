//! The client commands' arguments, named exactly like `cray ims` (`clients.md` §4).

use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand, ValueEnum};
use ims_core::records::{
    ARCHES, JOB_STATUSES, JOB_TYPES, LINK_TYPES, LINUX_DISTRIBUTIONS, RECIPE_TYPES,
};
use std::path::PathBuf;

/// Options of the client commands, accepted anywhere on the command line.
#[derive(Args, Clone, Debug, Default)]
pub struct Globals {
    /// Output format of client commands: toml (default), json, yaml or table.
    #[arg(long, global = true, value_enum)]
    pub format: Option<Format>,
    /// IMS server URL for client commands. Default: IMS_URL, then the client config file
    /// (`ims config set url=…`), then http://127.0.0.1:9000.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token for client commands, or a file holding it (as cray's `--token`: the token, or
    /// a JSON object with `access_token`). Default: IMS_TOKEN, then the client config file.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print every API request (`REQUEST: GET to URL`) on stderr.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// No progress bars or progress lines on stderr; results, warnings and errors still show.
    #[arg(long, global = true)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Toml,
    Json,
    Yaml,
    /// A human table (lists: one row a record with its id, name, arch, status, created…).
    Table,
}

/// `true/false/1/0/yes/no`, as cray's BOOLEAN options (case-insensitive).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!(
            "{s:?} is not a valid boolean (use true/false, 1/0 or yes/no)"
        )),
    }
}

fn choices(values: &'static [&'static str]) -> PossibleValuesParser {
    PossibleValuesParser::new(values.iter().copied())
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Image records (`/v3/images`).
    Images {
        #[command(subcommand)]
        verb: ImagesVerb,
    },
    /// Recipe records (`/v3/recipes`).
    Recipes {
        #[command(subcommand)]
        verb: RecipesVerb,
    },
    /// Public key records (`/v3/public-keys`).
    PublicKeys {
        #[command(subcommand)]
        verb: PublicKeysVerb,
    },
    /// Job records (`/v3/jobs`).
    Jobs {
        #[command(subcommand)]
        verb: JobsVerb,
    },
    /// Remote build nodes (`/v3/remote-build-nodes`) and their status.
    RemoteBuildNodes {
        #[command(subcommand)]
        verb: NodesVerb,
    },
    /// Soft-deleted records (`/v3/deleted/...`): list, inspect, undelete, purge.
    Deleted {
        #[command(subcommand)]
        what: DeletedWhat,
    },
    /// The server's version (`/apis/ims/version`). `ims version list` works too, as with cray.
    Version {
        #[command(subcommand)]
        verb: Option<VersionVerb>,
    },
    /// S3 artifacts, through STS like `cray artifacts`.
    Artifacts {
        #[command(subcommand)]
        verb: ArtifactsVerb,
    },
    /// The client configuration file (server URL and token).
    Config {
        #[command(subcommand)]
        op: ConfigOp,
    },
}

#[derive(Subcommand, Debug)]
pub enum VersionVerb {
    /// Show the server's version.
    List,
}

#[derive(Subcommand, Debug)]
pub enum ConfigOp {
    /// Write settings: `ims config set url=http://host:9000 [token=…]` (an empty value removes one).
    Set {
        /// Settings: url=… and token=….
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Show the settings (the token masked), or one setting's value.
    Get {
        /// One setting's name (url or token).
        #[arg(value_name = "KEY")]
        key: Option<String>,
    },
}

#[derive(Args, Debug, Default)]
pub struct Link {
    /// Artifact link path (`link.path`), e.g. s3://boot-images/ID/manifest.json.
    #[arg(long)]
    pub link_path: Option<String>,
    /// Artifact link etag (`link.etag`).
    #[arg(long)]
    pub link_etag: Option<String>,
    /// Artifact link type (`link.type`).
    #[arg(long, value_parser = choices(LINK_TYPES))]
    pub link_type: Option<String>,
}

#[derive(Args, Debug)]
pub struct Id {
    /// The record's id, or its name where no other record has that name.
    pub id: String,
}

/// `deleteall`'s confirmation.
#[derive(Args, Debug, Default, Clone, Copy)]
pub struct Confirm {
    /// Do not ask for confirmation (asked only when stdin is a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum ImagesVerb {
    /// List all images.
    List,
    /// Show one image.
    Describe(Id),
    /// Register an image.
    Create {
        /// The image's name (need not be unique).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        link: Link,
        /// Architecture: x86_64 (default on the server) or aarch64.
        #[arg(long, value_parser = choices(ARCHES))]
        arch: Option<String>,
        /// Metadata key (sent as `metadata.key`).
        #[arg(long)]
        metadata_key: Option<String>,
        /// Metadata value (sent as `metadata.value`).
        #[arg(long)]
        metadata_value: Option<String>,
    },
    /// Change an image's link, arch or metadata.
    Update {
        /// The image's id.
        id: String,
        #[command(flatten)]
        link: Link,
        /// Architecture: x86_64 (default on the server) or aarch64.
        #[arg(long, value_parser = choices(ARCHES))]
        arch: Option<String>,
        /// What to do with the metadata key: set (with --metadata-value) or remove.
        #[arg(long, value_parser = choices(&["set", "remove"]))]
        metadata_operation: Option<String>,
        /// The metadata key to set or remove.
        #[arg(long)]
        metadata_key: Option<String>,
        /// The metadata value to set.
        #[arg(long)]
        metadata_value: Option<String>,
    },
    /// Delete an image (soft delete: see `ims deleted images`).
    Delete(Id),
    /// Delete all images.
    Deleteall(Confirm),
    /// Re-read every artifact of an image and check it against its manifest's md5 (and sha256).
    Verify(Id),
    /// Import an image in one step ("Import an External Image to IMS"): converts ROOTFS to squashfs
    /// if needed, finds the kernel and initrd in its /boot, uploads every artifact to
    /// s3://BUCKET/<id>/ with its md5 and sha256, writes the manifest and registers the image.
    /// All or nothing: on any failure nothing is registered and the uploaded objects are removed.
    Import(ImportArgs),
    /// Customize an image in an interactive shell, in one command (the seed's customize
    /// procedure): creates the customize job, waits for its session, connects as root with your
    /// SSH key (sshd's host key pinned from the API), and when the shell exits completes the job,
    /// follows packaging and prints the new image. Ctrl-C while waiting, or a lost connection,
    /// leaves the job (`ims jobs complete|fail|delete ID`, or `--job ID` to connect again).
    Shell(ShellArgs),
}

#[derive(Args, Debug)]
pub struct ShellArgs {
    /// The image to customize: its id, or its name when one image has it.
    #[arg(value_name = "NAME|ID", required_unless_present = "job")]
    pub image: Option<String>,
    /// Not jailed: the shell runs on the job's host tools with the image root at
    /// /mnt/image/image-root (as `--ssh-containers-jail False`).
    #[arg(long)]
    pub no_jail: bool,
    /// The new image's name (default: the source image's).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Your private SSH key (default: ~/.ssh/id_ed25519, id_ecdsa or id_rsa, the first that has
    /// its .pub). Its public half is found among the public key records, or registered.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Use this public key record instead of finding or registering the identity's.
    #[arg(long, value_name = "ID")]
    pub public_key_id: Option<String>,
    /// When the shell exits non-zero, fail the job (no new image) and exit 1.
    #[arg(long)]
    pub fail_on_error: bool,
    /// Connect to this job's waiting session instead of creating a job.
    #[arg(long, value_name = "JOB_ID", conflicts_with_all = ["image", "no_jail", "name", "public_key_id"])]
    pub job: Option<String>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The image's name.
    pub name: String,
    /// A squashfs image, a tar archive (.tar, .tgz, .txz, .tar.zst; judged by content) or an
    /// image-root directory.
    #[arg(value_name = "ROOTFS")]
    pub rootfs: PathBuf,
    /// Kernel file to upload instead of the image root's.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initrd file to upload instead of the image root's.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel parameters file on this host, uploaded as the image's boot_parameters artifact
    /// instead of the image root's /boot/<kernel-parameters-file-name>.
    #[arg(long, value_name = "FILE")]
    pub kernel_parameters: Option<PathBuf>,
    /// Name of the kernel parameters file in the image root's /boot, uploaded as the image's
    /// boot_parameters artifact when present (as customize and create jobs do).
    #[arg(long, value_name = "NAME", conflicts_with = "kernel_parameters",
          default_value = ims_core::records::DEFAULT_KERNEL_PARAMETERS_FILE_NAME)]
    pub kernel_parameters_file_name: String,
    /// Name of the kernel in the image root's /boot (default: found by the rules of
    /// docs/architecture.md: boot/vmlinuz link, /vmlinuz link, newest versioned kernel).
    #[arg(long, value_name = "NAME", conflicts_with = "kernel")]
    pub kernel_file_name: Option<String>,
    /// Name of the initrd in the image root's /boot (default: found like the kernel).
    #[arg(long, value_name = "NAME", conflicts_with = "initrd")]
    pub initrd_file_name: Option<String>,
    /// The image's architecture.
    #[arg(long, value_parser = choices(ARCHES), default_value = "x86_64")]
    pub arch: String,
    /// squashfs compression when ROOTFS is converted (an archive or a directory): zstd (default),
    /// gzip, xz, lz4 or lzo.
    #[arg(long, value_parser = choices(&["zstd", "gzip", "xz", "lz4", "lzo"]))]
    pub compression: Option<String>,
    /// Import the root file system only: no kernel, no initrd.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "kernel_file_name", "initrd_file_name"])]
    pub rootfs_only: bool,
    /// Bucket of the image's artifacts.
    #[arg(long, default_value = "boot-images")]
    pub bucket: String,
    /// Where the converted squashfs is written while it is uploaded (default: TMPDIR or /tmp);
    /// it needs room for the compressed image.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Default)]
pub struct TemplateDictionary {
    /// Template dictionary keys, comma-separated (zipped with the values).
    #[arg(long, value_delimiter = ',')]
    pub template_dictionary_key: Option<Vec<String>>,
    /// Template dictionary values, comma-separated (zipped with the keys).
    #[arg(long, value_delimiter = ',')]
    pub template_dictionary_value: Option<Vec<String>>,
}

#[derive(Subcommand, Debug)]
pub enum RecipesVerb {
    /// List all recipes.
    List,
    /// Show one recipe.
    Describe(Id),
    /// Register a recipe.
    Create {
        /// The recipe's name.
        #[arg(long)]
        name: String,
        /// The recipe's builder.
        #[arg(long, value_parser = choices(RECIPE_TYPES))]
        recipe_type: String,
        /// The distribution the recipe builds.
        #[arg(long, value_parser = choices(LINUX_DISTRIBUTIONS))]
        linux_distribution: String,
        #[command(flatten)]
        link: Link,
        /// Architecture: x86_64 (default on the server) or aarch64.
        #[arg(long, value_parser = choices(ARCHES))]
        arch: Option<String>,
        /// Whether building the image needs DKMS (kernel modules built in the image): true or false.
        #[arg(long, value_parser = parse_bool, value_name = "BOOLEAN")]
        require_dkms: Option<bool>,
        #[command(flatten)]
        template: TemplateDictionary,
    },
    /// Change a recipe's link, arch, require_dkms or template dictionary.
    Update {
        /// The recipe's id.
        id: String,
        #[command(flatten)]
        link: Link,
        /// Architecture: x86_64 (default on the server) or aarch64.
        #[arg(long, value_parser = choices(ARCHES))]
        arch: Option<String>,
        /// Whether building the image needs DKMS (kernel modules built in the image): true or false.
        #[arg(long, value_parser = parse_bool, value_name = "BOOLEAN")]
        require_dkms: Option<bool>,
        #[command(flatten)]
        template: TemplateDictionary,
    },
    /// Import a kiwi description (a directory with config.xml or *.kiwi, or a .tar.gz): uploads
    /// it to `s3://ims/recipes/<id>/recipe.tar.gz` and registers the recipe, all or nothing.
    Import {
        /// The recipe's name.
        name: String,
        /// A kiwi description directory, or a gzip tar of one.
        #[arg(value_name = "DIR|TGZ")]
        source: PathBuf,
        /// The recipe's builder.
        #[arg(long, value_parser = choices(RECIPE_TYPES), default_value = "kiwi-ng")]
        recipe_type: String,
        /// The distribution the recipe builds.
        #[arg(long, value_parser = choices(LINUX_DISTRIBUTIONS))]
        linux_distribution: String,
        /// Architecture: x86_64 (default on the server) or aarch64.
        #[arg(long, value_parser = choices(ARCHES))]
        arch: Option<String>,
        /// Whether building the image needs DKMS (kernel modules built in the image): true or false.
        #[arg(long, value_parser = parse_bool, value_name = "BOOLEAN")]
        require_dkms: Option<bool>,
        #[command(flatten)]
        template: TemplateDictionary,
    },
    /// Delete a recipe (soft delete).
    Delete(Id),
    /// Delete all recipes.
    Deleteall(Confirm),
}

#[derive(Subcommand, Debug)]
pub enum PublicKeysVerb {
    /// List all public keys.
    List,
    /// Show one public key.
    Describe(Id),
    /// Register a public key read from a file (one OpenSSH public key line; a private key is
    /// refused before anything is sent).
    Create {
        /// The key's name (e.g. user@host).
        #[arg(long)]
        name: String,
        /// File holding the public key (e.g. ~/.ssh/id_rsa.pub).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
    /// Delete a public key (soft delete).
    Delete(Id),
    /// Delete all public keys.
    Deleteall(Confirm),
}

#[derive(Subcommand, Debug)]
pub enum JobsVerb {
    /// List all jobs.
    List,
    /// Show one job.
    Describe(Id),
    /// Start a create or customize job.
    Create {
        /// create: build an image from a recipe; customize: change an image in an SSH session.
        #[arg(long, value_parser = choices(JOB_TYPES))]
        job_type: String,
        /// The recipe (create) or image (customize) id.
        #[arg(long)]
        artifact_id: String,
        /// The public key record whose key may log in to the job's SSH session.
        #[arg(long)]
        public_key_id: String,
        /// The name of the image the job makes.
        #[arg(long)]
        image_root_archive_name: String,
        /// The kernel's file name in the image root's /boot (default: found by the server's
        /// rules, see docs/architecture.md).
        #[arg(long)]
        kernel_file_name: Option<String>,
        /// The initrd's file name in the image root's /boot.
        #[arg(long, default_value = "initrd")]
        initrd_file_name: String,
        /// The kernel parameters file's name in the image root's /boot.
        #[arg(long, default_value = "kernel-parameters")]
        kernel_parameters_file_name: String,
        /// create: keep a debug SSH session open after a failed build; customize: sshd logs
        /// verbosely.
        #[arg(long, value_parser = parse_bool, value_name = "BOOLEAN")]
        enable_debug: Option<bool>,
        /// Build environment size (GiB).
        #[arg(long, value_name = "INT")]
        build_env_size: Option<i64>,
        /// Job memory size (GiB).
        #[arg(long, value_name = "INT")]
        job_mem_size: Option<i64>,
        /// Mount /proc, /sys and /dev in the image root during the session (module builds).
        #[arg(long, value_parser = parse_bool, value_name = "BOOLEAN")]
        require_dkms: Option<bool>,
        /// SSH container names, comma-separated (zipped with --ssh-containers-jail).
        #[arg(long, value_delimiter = ',')]
        ssh_containers_name: Option<Vec<String>>,
        /// SSH container jail flags, comma-separated booleans.
        #[arg(long, value_delimiter = ',', value_parser = parse_bool)]
        ssh_containers_jail: Option<Vec<bool>>,
        /// Return when the job waits on its user (its session's real address and port known),
        /// or when it ends; print the job then (exit 1 if it ended in error).
        #[arg(long)]
        wait: bool,
    },
    /// Delete a job.
    Delete(Id),
    /// End a job's waiting_on_user session successfully (as `touch complete` in the session).
    Complete(Id),
    /// End a job's waiting_on_user session as failed (as `touch failed` in the session).
    Fail(Id),
    /// Show the job agent's log (stdout), optionally following it until the job ends.
    Logs {
        /// The job's id.
        id: String,
        /// Keep printing new lines until the job ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Delete jobs, optionally only those matching the filters.
    Deleteall {
        /// Only jobs in this status.
        #[arg(long, value_parser = choices(JOB_STATUSES))]
        status: Option<String>,
        /// Only jobs of this type.
        #[arg(long, value_parser = choices(JOB_TYPES))]
        job_type: Option<String>,
        /// Minimum age, e.g. 1d, 6h, 1w2d.
        #[arg(long)]
        age: Option<String>,
        #[command(flatten)]
        confirm: Confirm,
    },
}

#[derive(Args, Debug)]
pub struct Xname {
    /// The node's xname.
    pub xname: String,
}

#[derive(Subcommand, Debug)]
pub enum NodesVerb {
    /// List all remote build nodes.
    List,
    /// Show one remote build node.
    Describe(Xname),
    /// Register a remote build node.
    ///
    /// Registering a node again keeps its accepted host keys, and its capacity and drained flag
    /// unless given.
    Create {
        /// The node's xname (its name in the cluster, e.g. x3000c0s1b0n0).
        #[arg(long)]
        xname: String,
        #[command(flatten)]
        capacity: Capacity,
        /// Drained: the node gets no new jobs (IMS-rs extension): true or false.
        #[arg(long, value_parser = parse_bool, value_name = "BOOLEAN")]
        drained: Option<bool>,
    },
    /// Change a node's capacity or drained flag (IMS-rs extension).
    ///
    /// At least one option: with none, nothing is sent.
    Update {
        /// The node's xname.
        xname: String,
        #[command(flatten)]
        capacity: Capacity,
        /// Back to the default capacity (derived from the node's cores and memory).
        #[arg(long, conflicts_with = "capacity")]
        capacity_default: bool,
        /// Drained: the node gets no new jobs; the jobs it runs finish. true or false.
        #[arg(long, value_parser = parse_bool, value_name = "BOOLEAN")]
        drained: Option<bool>,
    },
    /// Drain a node: no new jobs; the jobs it runs finish.
    ///
    /// As `update XNAME --drained true`; prints the node. Once `reservedSlots` is 0
    /// (`ims remote-build-nodes status describe XNAME`), nothing runs there and the node can be
    /// deleted.
    Drain(Xname),
    /// Undrain a node: it gets new jobs again.
    ///
    /// As `update XNAME --drained false`; prints the node.
    Undrain(Xname),
    /// A node's SSH host keys: show the ones it presents, accept one (IMS-rs extension).
    ///
    /// The server connects only to nodes whose host key was accepted (or is in its known-hosts
    /// file).
    HostKey {
        #[command(subcommand)]
        verb: HostKeyVerb,
    },
    /// Remove a remote build node (refused while jobs run on it: drain it first).
    Delete(Xname),
    /// Remove all remote build nodes.
    Deleteall(Confirm),
    /// The nodes' status.
    Status {
        #[command(subcommand)]
        verb: NodesStatusVerb,
    },
}

/// `--capacity` of a node.
#[derive(Args, Debug, Default)]
pub struct Capacity {
    /// Jobs the node runs at once, 1 to 1024 (IMS-rs extension; default: one per 4 cores and
    /// per 16 GiB of memory, whichever is fewer).
    #[arg(long, value_name = "INT", allow_negative_numbers = true)]
    pub capacity: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum HostKeyVerb {
    /// Show the host keys the node presents now and the ones accepted for it.
    ///
    /// The presented keys are read with ssh-keyscan: not trusted yet. Compare their fingerprints
    /// with the node's own (on its console: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)
    /// before accepting one. `--format table`: one line a key with its fingerprint. Exit code 1
    /// when the node could not be reached (`error` says why; the accepted keys still show).
    Show(Xname),
    /// Accept the host key the node presents now with this fingerprint.
    ///
    /// A changed key of the same type replaces the old one. Prints the node's keys as `show`
    /// does. Refused when the node presents no key with that fingerprint.
    Accept {
        /// The node's xname.
        xname: String,
        /// The key's fingerprint as `ssh-keygen -l` prints it on the node: SHA256:….
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodesStatusVerb {
    /// Status of all remote build nodes.
    List,
    /// Status of one remote build node.
    Describe(Xname),
}

#[derive(Subcommand, Debug)]
pub enum DeletedWhat {
    /// Soft-deleted images.
    Images {
        #[command(subcommand)]
        verb: DeletedVerb,
    },
    /// Soft-deleted recipes.
    Recipes {
        #[command(subcommand)]
        verb: DeletedVerb,
    },
    /// Soft-deleted public keys.
    PublicKeys {
        #[command(subcommand)]
        verb: DeletedVerb,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeletedVerb {
    /// List the deleted records.
    List,
    /// Show one deleted record.
    Describe(Id),
    /// Undelete a record (`--operation undelete`).
    Update {
        /// The deleted record's id.
        id: String,
        /// undelete: bring the record (and its artifacts) back.
        #[arg(long, value_parser = choices(&["undelete"]))]
        operation: Option<String>,
    },
    /// Purge a deleted record for good.
    Delete(Id),
    /// Purge all deleted records of this kind.
    Deleteall(Confirm),
}

#[derive(Subcommand, Debug)]
pub enum ArtifactsVerb {
    /// Buckets of the S3 endpoint.
    Buckets {
        #[command(subcommand)]
        verb: BucketsVerb,
    },
    /// List the objects of a bucket.
    List {
        /// The bucket (e.g. boot-images).
        bucket: String,
    },
    /// Show one object's size, etag, content type and metadata (md5sum).
    Describe {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
    },
    /// Upload a file (multipart, parallel), storing its md5 as `x-amz-meta-md5sum`.
    Create {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// The file to upload.
        file: PathBuf,
    },
    /// Download an object to a file (ranged, parallel).
    Get {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// Where to write it.
        file: PathBuf,
    },
    /// Delete an object.
    Delete {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BucketsVerb {
    /// List the buckets.
    List,
}
