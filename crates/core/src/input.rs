//! Request contracts: every POST/PATCH body and query parameter, declared once with the original's
//! rules (defaults, enums, `{key,value}` metadata conversion, blank checks, unknown fields → 422).
//!
//! Each body is a [`Shape`] (see [`crate::validate`]): the server reads requests with it and the
//! OpenAPI document describes them with it. The typed request values below are what a read body
//! turns into.

use crate::problem::Problem;
use crate::records::*;
use crate::validate::{Absent, Custom, Field, Kind, MSG_STRING, Shape, WHITESPACE_CLASS};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use utoipa::openapi::schema::{AnyOfBuilder, Object, ObjectBuilder, Schema, Type};

/// `Some(value)` for a present field, `null` included (`Some(None)`): a PATCH's "set to null".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

const ARCH: Field = Field::choice("arch", Arch::NAMES, "Arch");

/// An `ArtifactLink` in a request.
pub const LINK: Shape = Shape {
    name: "ArtifactLinkInput",
    fields: &[
        Field::nonblank("path").required(),
        Field::text("etag").nullable(),
        Field::choice("type", LINK_TYPES, "Type").required(),
    ],
    check: None,
};

/// One `{key, value}` pair of a recipe's `template_dictionary`.
pub const KEY_VALUE: Shape = Shape {
    name: "KeyValueInput",
    fields: &[
        Field::text("key").required(),
        Field::text("value").required(),
    ],
    check: None,
};

const TEMPLATE_DICTIONARY: Field = Field::new(
    "template_dictionary",
    Kind::List {
        item: &KEY_VALUE,
        max_items: None,
    },
)
.nullable();

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NewPublicKey {
    pub name: String,
    pub public_key: String,
}

pub const PUBLIC_KEY_CREATE: Shape = Shape {
    name: "PublicKeyCreate",
    fields: &[
        Field::nonblank("name").required(),
        Field::nonblank("public_key")
            .required()
            .describe("One OpenSSH public key line"),
    ],
    check: Some(|read, errors| {
        // Only a well-formed OpenSSH public key is kept (the message never repeats the input: it
        // may be a private key pasted by mistake).
        if let Some(Value::String(k)) = read.get("public_key")
            && let Err(e) = crate::sshkey::check_public_key(k)
        {
            errors.add(
                "public_key",
                format!("public_key field is not an OpenSSH public key: {e}"),
            );
        }
    }),
};

pub fn public_key_create(body: Option<&Value>) -> Result<NewPublicKey, Problem> {
    PUBLIC_KEY_CREATE.parse(body)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NewRecipe {
    pub name: String,
    pub recipe_type: String,
    pub linux_distribution: String,
    pub link: Option<ArtifactLink>,
    pub template_dictionary: Option<Vec<KeyValue>>,
    pub require_dkms: bool,
    pub arch: Arch,
}

pub const RECIPE_CREATE: Shape = Shape {
    name: "RecipeCreate",
    fields: &[
        Field::nonblank("name").required(),
        Field::choice("recipe_type", RECIPE_TYPES, "Recipe type").required(),
        Field::choice(
            "linux_distribution",
            LINUX_DISTRIBUTIONS,
            "Linux distribution",
        )
        .required(),
        Field::new("link", Kind::Object(&LINK)).nullable(),
        TEMPLATE_DICTIONARY.absent(Absent::EmptyList),
        Field::new("require_dkms", Kind::Bool).absent(Absent::Bool(true)),
        ARCH.absent(Absent::Text(DEFAULT_ARCH)),
    ],
    check: None,
};

pub fn recipe_create(body: Option<&Value>) -> Result<NewRecipe, Problem> {
    RECIPE_CREATE.parse(body)
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct RecipePatch {
    pub link: Option<ArtifactLink>,
    pub arch: Option<Arch>,
    pub require_dkms: Option<bool>,
    /// `Some(None)` sets `null`.
    #[serde(default, deserialize_with = "present")]
    pub template_dictionary: Option<Option<Vec<KeyValue>>>,
}

pub const RECIPE_PATCH: Shape = Shape {
    name: "RecipePatch",
    fields: &[
        Field::new("link", Kind::Object(&LINK)),
        ARCH,
        Field::new("require_dkms", Kind::Bool),
        TEMPLATE_DICTIONARY,
    ],
    check: None,
};

pub fn recipe_patch(body: Option<&Value>) -> Result<RecipePatch, Problem> {
    RECIPE_PATCH.parse(body)
}

/// An image POST body; also what `ims_client::publish` sends to register an image (fields in the
/// wire's sorted order; those at their absent value are left out).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NewImage {
    pub arch: Arch,
    /// The id the client chose (an extension: the original refuses the field); the server picks
    /// one otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<ArtifactLink>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub name: String,
}

/// An image's `metadata` on create: a string map, or the `{key, value}` form (what `cray ims
/// images create --metadata-key K --metadata-value V` sends), read as a map of one entry.
const METADATA_MAP: Custom = Custom {
    read: |v| match v {
        Value::Object(m) if m.contains_key("key") => match (m.get("key"), m.get("value")) {
            (Some(Value::String(k)), None | Some(Value::Null)) => {
                Ok(Value::Object(Map::from_iter([(k.clone(), json!(""))])))
            }
            (Some(Value::String(k)), Some(Value::String(v))) => {
                Ok(Value::Object(Map::from_iter([(k.clone(), json!(v))])))
            }
            _ => Err(json!({"key": [MSG_STRING]})),
        },
        Value::Object(m) => {
            let mut errors = Map::new();
            for (k, v) in m {
                if !v.is_string() {
                    errors.insert(k.clone(), json!({"value": [MSG_STRING]}));
                }
            }
            if errors.is_empty() {
                Ok(v.clone())
            } else {
                Err(Value::Object(errors))
            }
        }
        _ => Err(json!(["Not a valid mapping type."])),
    },
    schema: || {
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property("key", Object::with_type(Type::String))
                    .property(
                        "value",
                        Object::with_type([Type::String, Type::Null].into_iter().collect::<utoipa::openapi::schema::SchemaType>()),
                    )
                    .required("key"),
            )
            .description(Some(
                "A string map, or the `{key, value}` form of `cray ims images create --metadata-key/--metadata-value`",
            ))
            .build()
            .into()
    },
};

pub const IMAGE_CREATE: Shape = Shape {
    name: "ImageCreate",
    fields: &[
        Field::new("id", Kind::Uuid).describe(
            "Extension: the new image's id, chosen by the client (for register-last uploads); 409 if an image or deleted image has it",
        ),
        Field::nonblank("name").required(),
        Field::new("link", Kind::Object(&LINK)).nullable(),
        ARCH.absent(Absent::Text(DEFAULT_ARCH)),
        Field::new("metadata", Kind::Custom(&METADATA_MAP)).absent(Absent::EmptyMap),
    ],
    check: None,
};

pub fn image_create(body: Option<&Value>) -> Result<NewImage, Problem> {
    IMAGE_CREATE.parse(body)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "operation", rename_all = "lowercase")]
pub enum MetadataOp {
    Set {
        key: String,
        #[serde(default)]
        value: String,
    },
    Remove {
        key: String,
    },
}

/// An image PATCH's `metadata`: one set or remove operation.
pub const METADATA_OP: Shape = Shape {
    name: "MetadataOperation",
    fields: &[
        Field::choice("operation", &["set", "remove"], "Operation").required(),
        Field::text("key").required(),
        Field::text("value"),
    ],
    check: None,
};

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ImagePatch {
    pub link: Option<ArtifactLink>,
    pub arch: Option<Arch>,
    pub metadata: Option<MetadataOp>,
}

pub const IMAGE_PATCH: Shape = Shape {
    name: "ImagePatch",
    fields: &[
        Field::new("link", Kind::Object(&LINK)),
        ARCH,
        Field::new("metadata", Kind::Object(&METADATA_OP)),
    ],
    check: None,
};

pub fn image_patch(body: Option<&Value>) -> Result<ImagePatch, Problem> {
    IMAGE_PATCH.parse(body)
}

/// Why a job's boot file name cannot name a file under the image root's `/boot`, if it cannot:
/// an absolute path, a `..` segment, a NUL. (Blank names are refused by the field's own check.)
fn boot_file_name_problem(name: &str) -> Option<&'static str> {
    if name.starts_with('/') {
        Some("must name a file under the image's /boot, not an absolute path")
    } else if name.split('/').any(|seg| seg == "..") {
        Some("must name a file under the image's /boot (no `..`)")
    } else if name.contains('\0') {
        Some("must not contain NUL characters")
    } else {
        None
    }
}

/// The same rule as [`boot_file_name_problem`], for the document: `/`-separated segments, none
/// of them `..`, the first not empty (no leading `/`), no NUL. A test holds the two together.
const BOOT_FILE_NAME_PATTERN: &str = concat!(
    r"^(?:",
    r"(?:[^/.\u0000][^/\u0000]*|\.(?:[^/.\u0000][^/\u0000]*)?|\.\.[^/\u0000]+)",
    r"(?:/(?:[^/.\u0000][^/\u0000]*|\.(?:[^/.\u0000][^/\u0000]*)?|\.\.[^/\u0000]+)?)*",
    r")?$"
);

/// The most `ssh_containers` a job may have (the service answers 400 above it, in the original's
/// order of checks).
pub const MAX_SSH_CONTAINERS: usize = 1;

/// One entry of a job's `ssh_containers` input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SshContainerInput {
    pub name: Option<String>,
    pub jail: bool,
}

pub const SSH_CONTAINER: Shape = Shape {
    name: "SshContainerInput",
    fields: &[
        Field::text("name"),
        Field::new("jail", Kind::Bool).absent(Absent::Bool(false)),
    ],
    check: None,
};

/// A validated job POST body. Presence flags keep what the resolution rules need to know.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NewJob {
    pub job_type: JobType,
    pub artifact_id: String,
    pub public_key_id: String,
    pub image_root_archive_name: String,
    pub enable_debug: bool,
    pub build_env_size: Option<i64>,
    pub job_mem_size: Option<i64>,
    /// `None` or `""` → the arch default.
    pub kernel_file_name: Option<String>,
    pub initrd_file_name: String,
    pub kernel_parameters_file_name: String,
    /// `None` when absent or `null`.
    pub ssh_containers: Option<Vec<SshContainerInput>>,
    /// `None` when the client did not send it.
    pub require_dkms: Option<bool>,
}

/// The job fields naming a file under the image root's `/boot`.
const BOOT_FILE_FIELDS: [&str; 3] = [
    "kernel_file_name",
    "initrd_file_name",
    "kernel_parameters_file_name",
];

pub const JOB_CREATE: Shape = Shape {
    name: "JobCreate",
    fields: &[
        Field::choice("job_type", JobType::NAMES, "Job type").required(),
        Field::new("artifact_id", Kind::Uuid).required(),
        Field::new("public_key_id", Kind::Uuid).required(),
        Field::nonblank("image_root_archive_name").required(),
        Field::new("enable_debug", Kind::Bool).absent(Absent::Bool(false)),
        Field::new("build_env_size", Kind::Count),
        Field::new("job_mem_size", Kind::Count),
        Field::text("kernel_file_name").pattern(BOOT_FILE_NAME_PATTERN),
        Field::nonblank("initrd_file_name")
            .pattern(BOOT_FILE_NAME_PATTERN)
            .absent(Absent::Text("initrd")),
        Field::nonblank("kernel_parameters_file_name")
            .pattern(BOOT_FILE_NAME_PATTERN)
            .absent(Absent::Text(DEFAULT_KERNEL_PARAMETERS_FILE_NAME)),
        Field::new(
            "ssh_containers",
            Kind::List {
                item: &SSH_CONTAINER,
                max_items: Some(MAX_SSH_CONTAINERS),
            },
        )
        .nullable(),
        Field::new("require_dkms", Kind::Bool),
    ],
    check: Some(|read, errors| {
        // The boot files are looked up under the image root's /boot at packaging, after the
        // user's whole session: a name that cannot be there is refused now, not then.
        for field in BOOT_FILE_FIELDS {
            if let Some(Value::String(v)) = read.get(field)
                && let Some(why) = boot_file_name_problem(v)
            {
                errors.add(field, format!("{field} {why}"));
            }
        }
    }),
};

pub fn job_create(body: Option<&Value>) -> Result<NewJob, Problem> {
    JOB_CREATE.parse(body)
}

/// A job PATCH body; also what a job's agent sends (its new status, or the image it produced).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct JobPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resultant_image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

pub const JOB_PATCH: Shape = Shape {
    name: "JobPatch",
    fields: &[
        Field::choice("status", JobStatus::NAMES, "Job state"),
        Field::new("resultant_image_id", Kind::Uuid),
    ],
    check: None,
};

pub fn job_patch(body: Option<&Value>) -> Result<JobPatch, Problem> {
    JOB_PATCH.parse(body)
}

/// `{"operation": "undelete"}` on a deleted record or collection.
pub const UNDELETE: Shape = Shape {
    name: "Undelete",
    fields: &[Field::choice("operation", &["undelete"], "Operation").required()],
    check: None,
};

pub fn undelete(body: Option<&Value>) -> Result<(), Problem> {
    UNDELETE.parse::<serde::de::IgnoredAny>(body).map(|_| ())
}

/// A node's capacity (an IMS-rs extension): a JSON integer from 1 to [`MAX_NODE_CAPACITY`];
/// `null` in a PATCH goes back to the probed default.
pub const NODE_CAPACITY: Field = Field::new("capacity", Kind::Custom(&CAPACITY))
    .nullable()
    .describe("Jobs the node runs at once (IMS-rs extension); absent or null: one per 4 cores and per 16 GiB of memory, whichever is fewer");

const CAPACITY: Custom = Custom {
    read: |v| match v.as_u64() {
        Some(n) if (1..=u64::from(MAX_NODE_CAPACITY)).contains(&n) => Ok(v.clone()),
        _ => Err(json!([format!(
            "capacity must be a whole number from 1 to {MAX_NODE_CAPACITY}"
        )])),
    },
    schema: || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(MAX_NODE_CAPACITY))
            .into()
    },
};

const NODE_DRAINED: Field = Field::new("drained", Kind::Bool)
    .describe("A drained node gets no new jobs; its running jobs finish (IMS-rs extension)");

/// The most jobs one node may be given at once.
pub const MAX_NODE_CAPACITY: u32 = 1024;

pub const REMOTE_BUILD_NODE_CREATE: Shape = Shape {
    name: "RemoteBuildNodeCreate",
    fields: &[
        Field::nonblank("xname").required(),
        NODE_CAPACITY,
        NODE_DRAINED,
    ],
    check: None,
};

/// A node registration: the xname, and the extensions when given (`None`: keep what a
/// re-registered node had).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NewRemoteBuildNode {
    pub xname: String,
    /// The extensions the body sets.
    #[serde(flatten)]
    pub set: RemoteBuildNodePatch,
}

pub fn remote_build_node_create(body: Option<&Value>) -> Result<NewRemoteBuildNode, Problem> {
    REMOTE_BUILD_NODE_CREATE.parse(body)
}

/// `PATCH /v3/remote-build-nodes/{xname}` (an IMS-rs extension).
pub const REMOTE_BUILD_NODE_PATCH: Shape = Shape {
    name: "RemoteBuildNodePatch",
    fields: &[NODE_CAPACITY, NODE_DRAINED],
    check: None,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RemoteBuildNodePatch {
    /// `Some(None)`: back to the probed default.
    #[serde(default, deserialize_with = "present")]
    pub capacity: Option<Option<u32>>,
    pub drained: Option<bool>,
}

impl RemoteBuildNodePatch {
    /// Sets on `node` what this names (a registration or a PATCH); the rest stays.
    pub fn apply_to(&self, node: &mut RemoteBuildNode) {
        if let Some(c) = self.capacity {
            node.capacity = c;
        }
        if let Some(d) = self.drained {
            node.drained = d;
        }
    }
}

pub fn remote_build_node_patch(body: Option<&Value>) -> Result<RemoteBuildNodePatch, Problem> {
    REMOTE_BUILD_NODE_PATCH.parse(body)
}

/// `POST /v3/remote-build-nodes/{xname}/host-key` (an IMS-rs extension): accept the key the
/// node presents now, if it has this fingerprint.
pub const HOST_KEY_ACCEPT: Shape = Shape {
    name: "HostKeyAccept",
    fields: &[Field::nonblank("fingerprint")
        .required()
        .describe("The fingerprint of the key to accept (`SHA256:…`, as `ssh-keygen -l` prints it on the node)")],
    check: None,
};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HostKeyAccept {
    pub fingerprint: String,
}

pub fn host_key_accept(body: Option<&Value>) -> Result<HostKeyAccept, Problem> {
    HOST_KEY_ACCEPT.parse(body)
}

/// Every request body the API reads (the document lists them under these names).
pub const BODIES: &[&Shape] = &[
    &PUBLIC_KEY_CREATE,
    &RECIPE_CREATE,
    &RECIPE_PATCH,
    &IMAGE_CREATE,
    &IMAGE_PATCH,
    &JOB_CREATE,
    &JOB_PATCH,
    &UNDELETE,
    &REMOTE_BUILD_NODE_CREATE,
    &REMOTE_BUILD_NODE_PATCH,
    &HOST_KEY_ACCEPT,
];

/// What a query parameter's values may be.
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    /// One of the values, in any ASCII case.
    Choice(&'static [&'static str]),
    /// A duration ([`parse_age`]).
    Age,
    /// A non-negative integer ([`Query::index`]).
    Index,
    /// `true|yes|t|1` (any case) is true, any other value false ([`Query::flag`]).
    Flag,
}

/// A query parameter: its name and values, read by the service and described by the document.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub name: &'static str,
    pub kind: QueryKind,
    pub description: &'static str,
}

/// v2 hard deletes: whether the artifacts go too.
pub const CASCADE: Query = Query {
    name: "cascade",
    kind: QueryKind::Flag,
    description: "true|yes|t|1 (any case) deletes the linked artifacts too (the default); any other value keeps them",
};
/// Job-collection DELETE filters.
pub const JOB_STATUS: Query = Query {
    name: "status",
    kind: QueryKind::Choice(JobStatus::NAMES),
    description: "Only jobs in this status (repeatable)",
};
pub const JOB_TYPE: Query = Query {
    name: "job_type",
    kind: QueryKind::Choice(JobType::NAMES),
    description: "Only jobs of this type",
};
pub const JOB_AGE: Query = Query {
    name: "age",
    kind: QueryKind::Age,
    description: "Only jobs at least this old: 30m, 6h, 1d, 2w, long forms (2weeks, 6hours) and combinations (1d12h)",
};
/// Job logs: where to read from, which chunk is appended.
pub const LOG_OFFSET: Query = Query {
    name: "offset",
    kind: QueryKind::Index,
    description: "The byte to read from (default 0)",
};
pub const LOG_SEQ: Query = Query {
    name: "seq",
    kind: QueryKind::Index,
    description: "The chunk's number, from 0",
};

impl Query {
    /// The value of this [`QueryKind::Index`] parameter in a raw query string (absent: 0).
    pub fn index(&self, query: Option<&str>) -> Result<u64, Problem> {
        let Some(q) = query else { return Ok(0) };
        for pair in q.split('&') {
            if let Some(v) = pair
                .strip_prefix(self.name)
                .and_then(|r| r.strip_prefix('='))
            {
                return v.parse::<u64>().map_err(|_| {
                    Problem::bad_request(format!(
                        "{} must be a non-negative integer, not {v:?}.",
                        self.name
                    ))
                });
            }
        }
        Ok(0)
    }

    /// A value of this [`QueryKind::Choice`] parameter (any case), as the type its values name.
    pub fn choice<T: std::str::FromStr>(&self, v: &str) -> Result<T, Problem> {
        let values = match self.kind {
            QueryKind::Choice(values) => values,
            _ => &[],
        };
        let s = v.to_ascii_lowercase();
        if let Some(t) = values
            .contains(&s.as_str())
            .then(|| s.parse().ok())
            .flatten()
        {
            Ok(t)
        } else {
            Err(Problem::bad_request(format!(
                "Invalid {} {v:?}; must be one of: {}.",
                self.name,
                values.join(", ")
            )))
        }
    }

    /// A value of this [`QueryKind::Age`] parameter, in seconds.
    pub fn age(&self, v: &str) -> Result<i64, Problem> {
        parse_age(v).ok_or_else(|| {
            Problem::bad_request(format!(
                "Invalid {} {v:?}; use a duration such as 30m, 6h, 1d or 2w.",
                self.name
            ))
        })
    }

    /// The value of this [`QueryKind::Flag`] parameter (absent: true).
    pub fn flag(value: Option<&str>) -> bool {
        value.is_none_or(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "yes" | "t" | "1"))
    }

    /// The values this parameter accepts, as a JSON Schema.
    pub fn schema(&self) -> Schema {
        let b = match self.kind {
            QueryKind::Choice(values) => ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(values.iter().copied())),
            QueryKind::Age => ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .pattern(Some(age_pattern())),
            QueryKind::Index => ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u64::MAX)),
            QueryKind::Flag => ObjectBuilder::new().schema_type(Type::String),
        };
        b.description(Some(self.description)).build().into()
    }
}

/// The units of an `age`, with their length in seconds.
const AGE_UNITS: &[(&[&str], i64)] = &[
    (&["w", "wk", "wks", "week", "weeks"], 7 * 86400),
    (&["d", "day", "days"], 86400),
    (&["h", "hr", "hrs", "hour", "hours"], 3600),
    (&["m", "min", "mins", "minute", "minutes"], 60),
    (&["s", "sec", "secs", "second", "seconds"], 1),
];

/// What [`parse_age`] reads, as a regular expression: one or more numbers with a unit, in any ASCII
/// case, whitespace around and between them. Numbers have at most 12 digits here (a sum that
/// overflows cannot be stated as a pattern; 12 digits of weeks are far from it).
fn age_pattern() -> String {
    let units: Vec<String> = AGE_UNITS
        .iter()
        .flat_map(|(names, _)| names.iter())
        .map(|u| {
            u.chars()
                .map(|c| format!("[{c}{}]", c.to_ascii_uppercase()))
                .collect()
        })
        .collect();
    format!(
        "^[{ws}]*(?:[0-9]{{1,12}}[{ws}]*(?:{})[{ws}]*)+$",
        units.join("|"),
        ws = WHITESPACE_CLASS
    )
}

/// Parses a job-collection DELETE `age` (`30m`, `6h`, `1d`, `2w`, long forms such as `2weeks`,
/// `1day`, `6hours`, `30min`, and combinations such as `1d12h`) into seconds. Unlike the original,
/// text that is not such a duration is an error instead of "age 0" (which deleted everything).
pub fn parse_age(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = s.as_str();
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let letters = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let word = &rest[..letters];
        let (_, unit) = AGE_UNITS.iter().find(|(names, _)| names.contains(&word))?;
        rest = rest[letters..].trim_start();
        total = total.checked_add(n.checked_mul(*unit)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_parsing() {
        assert_eq!(parse_age("1d"), Some(86400));
        assert_eq!(parse_age("2w"), Some(14 * 86400));
        assert_eq!(parse_age("1h30m"), Some(5400));
        assert_eq!(parse_age("2weeks"), Some(14 * 86400));
        assert_eq!(parse_age("1day"), Some(86400));
        assert_eq!(parse_age("6 hours"), Some(6 * 3600));
        assert_eq!(parse_age("30min"), Some(1800));
        assert_eq!(parse_age("1D"), Some(86400));
        assert_eq!(parse_age("1x"), None);
        assert_eq!(parse_age("d"), None);
        assert_eq!(parse_age("garbage"), None);
        assert_eq!(parse_age("12"), None);
        assert_eq!(parse_age(""), None);
        assert_eq!(parse_age("99999999999999999999w"), None);
    }

    #[test]
    fn image_metadata_key_value_form() {
        let b = json!({"name": "i", "metadata": {"key": "k", "value": "v"}});
        assert_eq!(image_create(Some(&b)).unwrap().metadata["k"], "v");
        let b = json!({"name": "i", "metadata": {"a": "1"}});
        assert_eq!(image_create(Some(&b)).unwrap().metadata["a"], "1");
        let b = json!({"name": "i", "metadata": {"a": 1}});
        assert_eq!(image_create(Some(&b)).unwrap_err().status, 422);
    }

    #[test]
    fn recipe_defaults() {
        let b = json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "debian12"});
        let r = recipe_create(Some(&b)).unwrap();
        assert!(r.require_dkms);
        assert_eq!(r.arch, "x86_64");
        assert_eq!(r.template_dictionary, Some(vec![]));
        let b = json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "windows"});
        let e = recipe_create(Some(&b)).unwrap_err();
        assert!(e.errors.unwrap().get("linux_distribution").is_some());
    }

    #[test]
    fn link_errors_are_nested() {
        let b = json!({"name": "r", "link": {"path": "", "type": "ftp", "x": 1}});
        let e = image_create(Some(&b)).unwrap_err().errors.unwrap();
        assert!(e["link"]["path"].is_array());
        assert!(e["link"]["type"].is_array());
        assert!(e["link"]["x"].is_array());
    }

    /// The bytes the agent sent when it built its job updates with `json!`.
    #[test]
    fn agent_job_updates_serialise_as_before() {
        let u = JobPatch {
            status: Some(JobStatus::WaitingOnUser),
            ..JobPatch::default()
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"status":"waiting_on_user"}"#
        );
        let u = JobPatch {
            resultant_image_id: Some("i".into()),
            ..JobPatch::default()
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"resultant_image_id":"i"}"#
        );
    }

    /// The bodies clients send with these types are read back by the server as the same values.
    #[test]
    fn the_server_reads_what_clients_send() {
        let u = JobPatch {
            resultant_image_id: Some("4e78488d-4d92-4675-9d83-97adfc17cb19".into()),
            status: Some(JobStatus::Success),
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(job_patch(Some(&v)).unwrap(), u);
        let i = NewImage {
            arch: Arch::Aarch64,
            id: Some("4e78488d-4d92-4675-9d83-97adfc17cb19".into()),
            link: Some(ArtifactLink::s3("s3://b/i/manifest.json", "e")),
            metadata: BTreeMap::new(),
            name: "n".into(),
        };
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(image_create(Some(&v)).unwrap(), i);
    }

    /// A body with every declared field set to an acceptable value.
    fn sample(shape: &Shape) -> Value {
        let mut m = Map::new();
        for f in shape.fields {
            let v = match f.kind {
                Kind::Text { .. } => json!("x"),
                Kind::Choice { values, .. } => json!(values[0]),
                Kind::Uuid => json!("4e78488d-4d92-4675-9d83-97adfc17cb19"),
                Kind::Bool => json!(true),
                Kind::Count => json!(2),
                Kind::Object(s) => sample(s),
                Kind::List { item, .. } => json!([sample(item)]),
                Kind::Custom(_) => json!({"a": "b"}),
            };
            m.insert(f.name.into(), v);
        }
        Value::Object(m)
    }

    #[test]
    fn every_declared_field_reaches_its_request_type() {
        let mut pk = sample(&PUBLIC_KEY_CREATE);
        pk["public_key"] = json!(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMHcrBAKqXIvSdnVXEGDk43qhGflqc1mzQUR37MsZKx5 t@ims"
        );
        public_key_create(Some(&pk)).unwrap();
        let r = recipe_create(Some(&sample(&RECIPE_CREATE))).unwrap();
        assert_eq!(r.template_dictionary.unwrap()[0].key, "x");
        let p = recipe_patch(Some(&sample(&RECIPE_PATCH))).unwrap();
        assert!(p.link.is_some() && p.arch.is_some() && p.require_dkms.is_some());
        assert!(matches!(p.template_dictionary, Some(Some(_))));
        let i = image_create(Some(&sample(&IMAGE_CREATE))).unwrap();
        assert_eq!(i.metadata["a"], "b");
        assert!(i.id.is_some() && i.link.is_some());
        let p = image_patch(Some(&sample(&IMAGE_PATCH))).unwrap();
        assert_eq!(
            p.metadata,
            Some(MetadataOp::Set {
                key: "x".into(),
                value: "x".into()
            })
        );
        let j = job_create(Some(&sample(&JOB_CREATE))).unwrap();
        assert_eq!(j.build_env_size, Some(2));
        assert_eq!(j.ssh_containers.unwrap()[0].name.as_deref(), Some("x"));
        assert_eq!(j.require_dkms, Some(true));
        let p = job_patch(Some(&sample(&JOB_PATCH))).unwrap();
        assert!(p.status.is_some() && p.resultant_image_id.is_some());
        undelete(Some(&sample(&UNDELETE))).unwrap();
        for shape in [&REMOTE_BUILD_NODE_CREATE, &REMOTE_BUILD_NODE_PATCH] {
            let mut n = sample(shape);
            n["capacity"] = json!(2);
            if shape.name == REMOTE_BUILD_NODE_CREATE.name {
                let n = remote_build_node_create(Some(&n)).unwrap();
                assert_eq!((n.set.capacity, n.set.drained), (Some(Some(2)), Some(true)));
            } else {
                let p = remote_build_node_patch(Some(&n)).unwrap();
                assert_eq!((p.capacity, p.drained), (Some(Some(2)), Some(true)));
            }
        }
        host_key_accept(Some(&sample(&HOST_KEY_ACCEPT))).unwrap();
        assert_eq!(BODIES.len(), 11);
    }

    #[test]
    fn node_capacity_is_bounded_and_null_resets_it() {
        let n = remote_build_node_create(Some(&json!({"xname": "x1"}))).unwrap();
        assert_eq!((n.set.capacity, n.set.drained), (None, None));
        let n = remote_build_node_create(Some(&json!({"xname": "x1", "capacity": 1024}))).unwrap();
        assert_eq!(n.set.capacity, Some(Some(1024)));
        let n = remote_build_node_create(Some(&json!({"xname": "x1", "capacity": null}))).unwrap();
        assert_eq!(
            n.set.capacity,
            Some(None),
            "null, through the flattened fields"
        );
        let p = remote_build_node_patch(Some(&json!({"capacity": null}))).unwrap();
        assert_eq!(p.capacity, Some(None));
        for bad in [
            json!(0),
            json!(1025),
            json!(9223372036854775806u64),
            json!("x"),
        ] {
            let e = remote_build_node_patch(Some(&json!({"capacity": bad}))).unwrap_err();
            assert_eq!(e.status, 422, "{bad}");
        }
    }

    #[test]
    fn patterns_state_the_checks() {
        let boot = regex::Regex::new(BOOT_FILE_NAME_PATTERN).unwrap();
        for name in [
            "", "vmlinuz", "a/b", "a/", "a//b", ".", "..a", "...", "a/.b", "/x", "/", "..", "../x",
            "a/..", "a/../b", "x\0y", "\0", ". .", "a/./b",
        ] {
            assert_eq!(
                boot.is_match(name),
                boot_file_name_problem(name).is_none(),
                "{name:?}"
            );
        }
        let age = regex::Regex::new(&age_pattern()).unwrap();
        for a in [
            "1d",
            "2w",
            "1h30m",
            "2weeks",
            "1DAY",
            " 6 hours ",
            "30min",
            "1d12h",
            "1x",
            "d",
            "",
            "12",
            "1dd",
            "1 d 2",
            "1d-",
            "1\u{2003}d",
            "٣d",
        ] {
            assert_eq!(age.is_match(a), parse_age(a).is_some(), "{a:?}");
        }
    }
}
