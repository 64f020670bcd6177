//! The OpenAPI 3 document served at `/openapi.json` (and `/apis/ims/openapi.json`).
//!
//! Response schemas come from the record types themselves (`utoipa::ToSchema` on the `ims-core`
//! types), so the document cannot drift from the wire format. Request schemas come from the
//! declarations the server reads requests with (`ims_core::input`: bodies and query parameters),
//! so the document and the validator cannot disagree. The operations come from [`OPERATIONS`],
//! the table of every route; a test sends a request for each documented operation to a real server
//! and checks that it is routed, so the table cannot drift from the router either.

use ims_core::input::{self, CASCADE, JOB_AGE, JOB_STATUS, JOB_TYPE, LOG_OFFSET, LOG_SEQ, Query};
use ims_core::{
    ArtifactLink, ConnectionInfo, Image, Job, KeyValue, Problem, PublicKey, Recipe,
    RemoteBuildNode, RemoteBuildNodeStatus, SshContainer,
};
use std::sync::OnceLock;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr,
    Required, ResponseBuilder, ServerBuilder,
};

/// Which URL families serve an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Unversioned and `/v2` (v2 semantics).
    V2,
    /// `/v3`.
    V3,
    /// Both of the above.
    All,
    /// Only at the root (`/healthz`, `/version`).
    Root,
}

/// What a successful response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Empty,
    /// `text/plain` (job logs).
    Text,
    One(&'static str),
    Many(&'static str),
    Object,
}

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub family: Family,
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub body: Option<&'static str>,
    pub status: u16,
    pub out: Out,
    pub query: &'static [&'static Query],
    pub errors: &'static [u16],
}

#[allow(clippy::too_many_arguments)] // a row of the OPERATIONS table
const fn op(
    family: Family,
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    status: u16,
    out: Out,
    errors: &'static [u16],
) -> Operation {
    Operation {
        family,
        method,
        path,
        summary,
        body,
        status,
        out,
        query: &[],
        errors,
    }
}

/// A `text/plain` request body (not a schema name).
pub const TEXT_BODY: &str = "text/plain";

const fn q(mut o: Operation, query: &'static [&'static Query]) -> Operation {
    o.query = query;
    o
}

use Family::*;
use Out::*;

/// Every route of the API.
pub const OPERATIONS: &[Operation] = &[
    op(
        Root,
        "get",
        "/healthz/ready",
        "Readiness (checks the records store)",
        None,
        200,
        Object,
        &[503],
    ),
    op(
        Root,
        "get",
        "/healthz/live",
        "Liveness",
        None,
        200,
        Object,
        &[],
    ),
    op(
        Root,
        "get",
        "/version",
        "Service version",
        None,
        200,
        Object,
        &[],
    ),
    op(
        Root,
        "get",
        "/openapi.json",
        "This document",
        None,
        200,
        Object,
        &[],
    ),
    // public keys
    op(
        All,
        "get",
        "/public-keys",
        "List public keys",
        None,
        200,
        Many("PublicKey"),
        &[],
    ),
    op(
        All,
        "post",
        "/public-keys",
        "Create a public key",
        Some(input::PUBLIC_KEY_CREATE.name),
        201,
        One("PublicKey"),
        &[400, 413, 415, 422],
    ),
    op(
        V2,
        "delete",
        "/public-keys",
        "Delete all public keys (hard)",
        None,
        204,
        Empty,
        &[],
    ),
    op(
        V3,
        "delete",
        "/public-keys",
        "Soft-delete all public keys",
        None,
        204,
        Empty,
        &[],
    ),
    op(
        All,
        "get",
        "/public-keys/{id}",
        "Get a public key",
        None,
        200,
        One("PublicKey"),
        &[404],
    ),
    op(
        V2,
        "delete",
        "/public-keys/{id}",
        "Delete a public key (hard)",
        None,
        204,
        Empty,
        &[404],
    ),
    op(
        V3,
        "delete",
        "/public-keys/{id}",
        "Soft-delete a public key",
        None,
        204,
        Empty,
        &[404],
    ),
    // recipes
    op(
        All,
        "get",
        "/recipes",
        "List recipes",
        None,
        200,
        Many("Recipe"),
        &[],
    ),
    op(
        All,
        "post",
        "/recipes",
        "Create a recipe (link validated against S3)",
        Some(input::RECIPE_CREATE.name),
        201,
        One("Recipe"),
        &[400, 413, 415, 422],
    ),
    q(
        op(
            V2,
            "delete",
            "/recipes",
            "Delete all recipes (hard; cascade deletes tarballs)",
            None,
            204,
            Empty,
            &[],
        ),
        &[&CASCADE],
    ),
    op(
        V3,
        "delete",
        "/recipes",
        "Soft-delete all recipes (tarballs moved under deleted/)",
        None,
        204,
        Empty,
        &[],
    ),
    op(
        All,
        "get",
        "/recipes/{id}",
        "Get a recipe",
        None,
        200,
        One("Recipe"),
        &[404],
    ),
    op(
        All,
        "patch",
        "/recipes/{id}",
        "Update a recipe",
        Some(input::RECIPE_PATCH.name),
        200,
        One("Recipe"),
        &[400, 404, 409, 422],
    ),
    q(
        op(
            V2,
            "delete",
            "/recipes/{id}",
            "Delete a recipe (hard)",
            None,
            204,
            Empty,
            &[404],
        ),
        &[&CASCADE],
    ),
    op(
        V3,
        "delete",
        "/recipes/{id}",
        "Soft-delete a recipe",
        None,
        204,
        Empty,
        &[404],
    ),
    // images
    op(
        All,
        "get",
        "/images",
        "List images",
        None,
        200,
        Many("Image"),
        &[],
    ),
    op(
        All,
        "post",
        "/images",
        "Create an image (manifest validated)",
        Some(input::IMAGE_CREATE.name),
        201,
        One("Image"),
        &[400, 409, 413, 415, 422],
    ),
    q(
        op(
            V2,
            "delete",
            "/images",
            "Delete all images (hard; cascade deletes artifacts)",
            None,
            204,
            Empty,
            &[],
        ),
        &[&CASCADE],
    ),
    op(
        V3,
        "delete",
        "/images",
        "Soft-delete all images (artifacts moved under deleted/)",
        None,
        204,
        Empty,
        &[],
    ),
    op(
        All,
        "get",
        "/images/{id}",
        "Get an image",
        None,
        200,
        One("Image"),
        &[404],
    ),
    op(
        All,
        "patch",
        "/images/{id}",
        "Update an image (link, arch, metadata set/remove)",
        Some(input::IMAGE_PATCH.name),
        200,
        One("Image"),
        &[400, 404, 409, 422],
    ),
    q(
        op(
            V2,
            "delete",
            "/images/{id}",
            "Delete an image (hard)",
            None,
            204,
            Empty,
            &[404],
        ),
        &[&CASCADE],
    ),
    op(
        V3,
        "delete",
        "/images/{id}",
        "Soft-delete an image",
        None,
        204,
        Empty,
        &[404],
    ),
    // jobs
    op(
        All,
        "get",
        "/jobs",
        "List jobs",
        None,
        200,
        Many("Job"),
        &[],
    ),
    op(
        All,
        "post",
        "/jobs",
        "Create a job",
        Some(input::JOB_CREATE.name),
        201,
        One("Job"),
        &[400, 422, 500],
    ),
    q(
        op(
            All,
            "delete",
            "/jobs",
            "Delete jobs matching status/job_type/age",
            None,
            204,
            Empty,
            &[400, 500],
        ),
        &[&JOB_STATUS, &JOB_TYPE, &JOB_AGE],
    ),
    op(
        All,
        "get",
        "/jobs/{id}",
        "Get a job",
        None,
        200,
        One("Job"),
        &[404],
    ),
    op(
        All,
        "patch",
        "/jobs/{id}",
        "Update a job's status or resultant image (job agents)",
        Some(input::JOB_PATCH.name),
        200,
        One("Job"),
        &[400, 404, 422, 500],
    ),
    op(
        All,
        "delete",
        "/jobs/{id}",
        "Stop and delete a job",
        None,
        204,
        Empty,
        &[404, 500],
    ),
    op(
        All,
        "post",
        "/jobs/{id}/heartbeat",
        "Extension (job agents): report being alive, optionally with {\"phase\"}; answers the job's status, the user's request (complete/fail) and, to the job's own agent while the job runs, a fresh job token (\"token\")",
        Some("Heartbeat"),
        200,
        Object,
        &[400, 401, 403, 404, 422],
    ),
    op(
        All,
        "get",
        "/jobs/{id}/session",
        "Extension: the job's SSH session as clients reach it: job_status, status, jail, host, port and sshd's public host_key (null until the agent reports it), to pin in known_hosts",
        None,
        200,
        Object,
        &[404],
    ),
    op(
        All,
        "post",
        "/jobs/{id}/complete",
        "Extension: end a waiting_on_user session successfully (as touching the complete flag)",
        None,
        200,
        One("Job"),
        &[404, 409],
    ),
    op(
        All,
        "post",
        "/jobs/{id}/fail",
        "Extension: end a waiting_on_user session as failed (as touching the failed flag)",
        None,
        200,
        One("Job"),
        &[404, 409],
    ),
    q(
        op(
            All,
            "get",
            "/jobs/{id}/log",
            "Extension: the job agent's log from byte `offset`; headers x-ims-log-offset (next offset) and x-ims-log-complete",
            None,
            200,
            Text,
            &[400, 404],
        ),
        &[&LOG_OFFSET],
    ),
    q(
        op(
            All,
            "post",
            "/jobs/{id}/log",
            "Extension (job agents): append log chunk number `seq` (in order; a repeated chunk is ignored)",
            Some(TEXT_BODY),
            200,
            Object,
            &[400, 401, 403, 404, 409, 413],
        ),
        &[&LOG_SEQ],
    ),
    // deleted records
    op(
        V3,
        "get",
        "/deleted/public-keys",
        "List deleted public keys",
        None,
        200,
        Many("DeletedPublicKey"),
        &[],
    ),
    op(
        V3,
        "patch",
        "/deleted/public-keys",
        "Undelete all public keys",
        Some(input::UNDELETE.name),
        204,
        Empty,
        &[400, 409, 422],
    ),
    op(
        V3,
        "delete",
        "/deleted/public-keys",
        "Permanently delete all deleted public keys",
        None,
        204,
        Empty,
        &[],
    ),
    op(
        V3,
        "get",
        "/deleted/public-keys/{id}",
        "Get a deleted public key",
        None,
        200,
        One("DeletedPublicKey"),
        &[404],
    ),
    op(
        V3,
        "patch",
        "/deleted/public-keys/{id}",
        "Undelete a public key",
        Some(input::UNDELETE.name),
        204,
        Empty,
        &[400, 404, 409, 422],
    ),
    op(
        V3,
        "delete",
        "/deleted/public-keys/{id}",
        "Permanently delete a deleted public key",
        None,
        204,
        Empty,
        &[404],
    ),
    op(
        V3,
        "get",
        "/deleted/recipes",
        "List deleted recipes",
        None,
        200,
        Many("DeletedRecipe"),
        &[],
    ),
    op(
        V3,
        "patch",
        "/deleted/recipes",
        "Undelete all recipes",
        Some(input::UNDELETE.name),
        204,
        Empty,
        &[400, 409, 422],
    ),
    op(
        V3,
        "delete",
        "/deleted/recipes",
        "Permanently delete all deleted recipes",
        None,
        204,
        Empty,
        &[],
    ),
    op(
        V3,
        "get",
        "/deleted/recipes/{id}",
        "Get a deleted recipe",
        None,
        200,
        One("DeletedRecipe"),
        &[404],
    ),
    op(
        V3,
        "patch",
        "/deleted/recipes/{id}",
        "Undelete a recipe",
        Some(input::UNDELETE.name),
        204,
        Empty,
        &[400, 404, 409, 422],
    ),
    op(
        V3,
        "delete",
        "/deleted/recipes/{id}",
        "Permanently delete a deleted recipe",
        None,
        204,
        Empty,
        &[404],
    ),
    op(
        V3,
        "get",
        "/deleted/images",
        "List deleted images",
        None,
        200,
        Many("DeletedImage"),
        &[],
    ),
    op(
        V3,
        "patch",
        "/deleted/images",
        "Undelete all images",
        Some(input::UNDELETE.name),
        204,
        Empty,
        &[400, 409, 422],
    ),
    op(
        V3,
        "delete",
        "/deleted/images",
        "Permanently delete all deleted images",
        None,
        204,
        Empty,
        &[422],
    ),
    op(
        V3,
        "get",
        "/deleted/images/{id}",
        "Get a deleted image",
        None,
        200,
        One("DeletedImage"),
        &[404],
    ),
    op(
        V3,
        "patch",
        "/deleted/images/{id}",
        "Undelete an image",
        Some(input::UNDELETE.name),
        204,
        Empty,
        &[400, 404, 409, 422],
    ),
    op(
        V3,
        "delete",
        "/deleted/images/{id}",
        "Permanently delete a deleted image",
        None,
        204,
        Empty,
        &[404, 422],
    ),
    // remote build nodes
    op(
        V3,
        "get",
        "/remote-build-nodes",
        "List remote build nodes",
        None,
        200,
        Many("RemoteBuildNode"),
        &[],
    ),
    op(
        V3,
        "post",
        "/remote-build-nodes",
        "Register a remote build node",
        Some(input::REMOTE_BUILD_NODE_CREATE.name),
        201,
        One("RemoteBuildNode"),
        &[400, 422],
    ),
    op(
        V3,
        "delete",
        "/remote-build-nodes",
        "Remove all remote build nodes",
        None,
        204,
        Empty,
        &[409],
    ),
    op(
        V3,
        "get",
        "/remote-build-nodes/status",
        "Probe every remote build node",
        None,
        200,
        Many("RemoteBuildNodeStatus"),
        &[],
    ),
    op(
        V3,
        "delete",
        "/remote-build-nodes/status",
        "Remove the remote build node named \"status\" (the original's router falls through to /remote-build-nodes/{xname} for the methods the status route lacks)",
        None,
        204,
        Empty,
        &[404],
    ),
    op(
        V3,
        "patch",
        "/remote-build-nodes/status",
        "Change the remote build node named \"status\" (as DELETE: the status route falls through to /remote-build-nodes/{xname})",
        Some(input::REMOTE_BUILD_NODE_PATCH.name),
        200,
        One("RemoteBuildNode"),
        &[400, 404, 422],
    ),
    op(
        V3,
        "get",
        "/remote-build-nodes/status/{xname}",
        "Probe one remote build node",
        None,
        200,
        One("RemoteBuildNodeStatus"),
        &[404],
    ),
    op(
        V3,
        "get",
        "/remote-build-nodes/{xname}",
        "Get a remote build node",
        None,
        200,
        One("RemoteBuildNode"),
        &[404],
    ),
    op(
        V3,
        "patch",
        "/remote-build-nodes/{xname}",
        "Change a remote build node's capacity or drained flag (IMS-rs extension)",
        Some(input::REMOTE_BUILD_NODE_PATCH.name),
        200,
        One("RemoteBuildNode"),
        &[400, 404, 422],
    ),
    op(
        V3,
        "delete",
        "/remote-build-nodes/{xname}",
        "Remove a remote build node (refused while jobs run on it)",
        None,
        204,
        Empty,
        &[404, 409],
    ),
    op(
        V3,
        "get",
        "/remote-build-nodes/{xname}/host-key",
        "The SSH host keys the node presents now and those accepted (IMS-rs extension)",
        None,
        200,
        One("HostKeys"),
        &[404],
    ),
    op(
        V3,
        "post",
        "/remote-build-nodes/{xname}/host-key",
        "Accept the host key the node presents now with the given fingerprint (IMS-rs extension)",
        Some(input::HOST_KEY_ACCEPT.name),
        200,
        One("HostKeys"),
        &[400, 404, 409, 422, 502],
    ),
];

impl Operation {
    /// The concrete paths this operation is served at (without the `/apis/ims` gateway prefix).
    pub fn paths(&self) -> Vec<String> {
        match self.family {
            Root => vec![self.path.to_string()],
            V2 => vec![self.path.to_string(), format!("/v2{}", self.path)],
            V3 => vec![format!("/v3{}", self.path)],
            All => vec![
                self.path.to_string(),
                format!("/v2{}", self.path),
                format!("/v3{}", self.path),
            ],
        }
    }
}

fn string() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}
fn reference(name: &str) -> RefOr<Schema> {
    Ref::from_schema_name(name).into()
}
fn array_of(item: RefOr<Schema>) -> RefOr<Schema> {
    ArrayBuilder::new().items(item).into()
}

/// The request bodies: each from its declaration in `ims_core::input` (the declaration the server
/// reads requests with), and the heartbeat's (the type its agent sends and the server parses).
fn input_schemas() -> Vec<(&'static str, RefOr<Schema>)> {
    let mut schemas: Vec<(&'static str, RefOr<Schema>)> = input::BODIES
        .iter()
        .map(|b| (b.name, RefOr::T(b.schema(true))))
        .collect();
    // The agent's heartbeat: the type both sides use (`ims_core::job_wire`).
    schemas.push((
        "Heartbeat",
        <ims_core::job_wire::Heartbeat as utoipa::PartialSchema>::schema(),
    ));
    schemas
}

/// A deleted record: the record plus `deleted`.
fn deleted_schema(base: &str) -> RefOr<Schema> {
    utoipa::openapi::schema::AllOfBuilder::new()
        .item(reference(base))
        .item(
            ObjectBuilder::new()
                .property(
                    "deleted",
                    ObjectBuilder::new().schema_type(Type::String).format(Some(
                        utoipa::openapi::SchemaFormat::KnownFormat(
                            utoipa::openapi::KnownFormat::DateTime,
                        ),
                    )),
                )
                .required("deleted"),
        )
        .into()
}

fn build() -> OpenApi {
    let mut components = ComponentsBuilder::new()
        .schema_from::<PublicKey>()
        .schema_from::<Recipe>()
        .schema_from::<Image>()
        .schema_from::<Job>()
        .schema_from::<SshContainer>()
        .schema_from::<ConnectionInfo>()
        .schema_from::<ArtifactLink>()
        .schema_from::<KeyValue>()
        .schema_from::<RemoteBuildNode>()
        .schema_from::<RemoteBuildNodeStatus>()
        .schema_from::<crate::service::remote_nodes::HostKeys>()
        .schema_from::<crate::service::remote_nodes::ShownKey>()
        .schema_from::<Problem>()
        .schema_from::<ims_core::Timestamp>()
        .schema("DeletedPublicKey", deleted_schema("PublicKey"))
        .schema("DeletedRecipe", deleted_schema("Recipe"))
        .schema("DeletedImage", deleted_schema("Image"));
    for (name, s) in input_schemas() {
        components = components.schema(name, s);
    }
    let mut paths = Paths::new();
    for o in OPERATIONS {
        let method = match o.method {
            "get" => HttpMethod::Get,
            "post" => HttpMethod::Post,
            "patch" => HttpMethod::Patch,
            "delete" => HttpMethod::Delete,
            _ => HttpMethod::Put,
        };
        for path in o.paths() {
            let family = if path.starts_with("/v3") {
                "v3"
            } else if path.starts_with("/v2") {
                "v2"
            } else if o.family == Root {
                "service"
            } else {
                "unversioned (v2)"
            };
            let mut b = OperationBuilder::new()
                .summary(Some(o.summary))
                .tag(family)
                .operation_id(Some(format!(
                    "{}_{}",
                    o.method,
                    path.replace(['/', '{', '}', '-', '.'], "_")
                )));
            // Record ids are UUIDs; a node's xname is any path segment.
            for (p, schema) in [
                ("id", ims_core::validate::uuid_schema().into()),
                ("xname", string()),
            ] {
                if path.contains(&format!("{{{p}}}")) {
                    b = b.parameter(
                        ParameterBuilder::new()
                            .name(p)
                            .parameter_in(ParameterIn::Path)
                            .required(Required::True)
                            .schema(Some(schema)),
                    );
                }
            }
            for query in o.query {
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(query.name)
                        .parameter_in(ParameterIn::Query)
                        .required(Required::False)
                        .schema(Some(query.schema())),
                );
            }
            if o.body == Some(TEXT_BODY) {
                b = b.request_body(Some(
                    RequestBodyBuilder::new()
                        .content(
                            "text/plain",
                            ContentBuilder::new().schema(Some(string())).build(),
                        )
                        .required(Some(Required::True))
                        .build(),
                ));
            } else if let Some(body) = o.body {
                b = b.request_body(Some(
                    RequestBodyBuilder::new()
                        .content(
                            "application/json",
                            ContentBuilder::new().schema(Some(reference(body))).build(),
                        )
                        .required(Some(Required::True))
                        .build(),
                ));
            }
            let ok = match o.out {
                Empty => ResponseBuilder::new().description("No content"),
                Text => ResponseBuilder::new().description("OK").content(
                    "text/plain",
                    ContentBuilder::new().schema(Some(string())).build(),
                ),
                One(s) => ResponseBuilder::new().description("OK").content(
                    "application/json",
                    ContentBuilder::new().schema(Some(reference(s))).build(),
                ),
                Many(s) => ResponseBuilder::new().description("OK").content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(array_of(reference(s))))
                        .build(),
                ),
                Object => ResponseBuilder::new().description("OK").content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                        .build(),
                ),
            };
            b = b.response(o.status.to_string(), ok.build());
            for e in o.errors {
                b = b.response(
                    e.to_string(),
                    ResponseBuilder::new()
                        .description(ims_core::problem::reason_phrase(*e))
                        .content(
                            "application/problem+json",
                            ContentBuilder::new()
                                .schema(Some(reference("Problem")))
                                .build(),
                        )
                        .build(),
                );
            }
            paths.add_path_operation(&path, vec![method.clone()], b.build());
        }
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Image Management Service")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "IMS-compatible image management service. Every path is also served under /apis/ims (the CSM gateway path).",
                ))
                .build(),
        )
        .servers(Some([
            ServerBuilder::new().url("/").build(),
            ServerBuilder::new().url("/apis/ims").build(),
        ]))
        .paths(paths)
        .components(Some(components.build()))
        .build()
}

/// The document (built once).
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(build()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_documented_with_its_schemas() {
        let d = document();
        assert!(d["openapi"].as_str().unwrap().starts_with("3."));
        for o in OPERATIONS {
            for p in o.paths() {
                assert!(d["paths"][&p][o.method].is_object(), "{} {p}", o.method);
            }
        }
        let schemas = d["components"]["schemas"].as_object().unwrap();
        for s in [
            "PublicKey",
            "Recipe",
            "Image",
            "Job",
            "Problem",
            "ArtifactLink",
            "JobCreate",
        ] {
            assert!(schemas.contains_key(s), "{s}");
        }
        // The job schema comes from the record type: 24 properties.
        assert_eq!(schemas["Job"]["properties"].as_object().unwrap().len(), 24);
    }
}
