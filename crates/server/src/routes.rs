//! Routing: the IMS tree at `/` and again under `/apis/ims/` (the CSM gateway path).
//!
//! * unversioned and `/v2/...`: public keys, recipes, images, jobs with v2 semantics;
//! * `/v3/...`: the same resources with v3 semantics, `deleted/*` and remote build nodes;
//! * `/healthz/{ready,live}`, `/version`, `/openapi.json`.

use crate::auth::Caller;
use crate::error::{ApiResult, problem_response};
use crate::extract::{IdPath, JsonBody};
use crate::service::deleted::Kind;
use crate::service::{self, get_raw, json, list_raw};
use crate::{Api, AppState};
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use ims_core::problem::{DETAIL_BAD_METHOD, DETAIL_NO_ROUTE};
use ims_core::{Problem, Table, input};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

type St = State<AppState>;

fn cascade_of(q: &Option<String>) -> bool {
    let v = q.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == input::CASCADE.name)
            .map(|(_, v)| v.into_owned())
    });
    input::Query::flag(v.as_deref())
}

fn public_keys(api: Api) -> Router<AppState> {
    use service::public_keys as pk;
    Router::new()
        .route(
            "/public-keys",
            get(|State(st): St| async move { list_raw(&*st.store, Table::PublicKeys).await })
                .post(|State(st): St, body: JsonBody| async move {
                    json(StatusCode::CREATED, &pk::create(&st, body.as_ref()).await?)
                })
                .delete(move |State(st): St| async move { pk::delete_all(&st, api).await }),
        )
        .route(
            "/public-keys/{id}",
            get(|State(st): St, IdPath(id): IdPath| async move {
                get_raw(&*st.store, Table::PublicKeys, &id).await
            })
            .delete(move |State(st): St, IdPath(id): IdPath| async move {
                pk::delete_one(&st, api, &id).await
            }),
        )
}

fn recipes(api: Api) -> Router<AppState> {
    use service::recipes as r;
    Router::new()
        .route(
            "/recipes",
            get(|State(st): St| async move { list_raw(&*st.store, Table::Recipes).await })
                .post(|State(st): St, body: JsonBody| async move {
                    json(StatusCode::CREATED, &r::create(&st, body.as_ref()).await?)
                })
                .delete(move |State(st): St, RawQuery(q): RawQuery| async move {
                    r::delete_all(&st, api, cascade_of(&q)).await
                }),
        )
        .route(
            "/recipes/{id}",
            get(|State(st): St, IdPath(id): IdPath| async move {
                get_raw(&*st.store, Table::Recipes, &id).await
            })
            .patch(
                |State(st): St, IdPath(id): IdPath, body: JsonBody| async move {
                    json(StatusCode::OK, &r::patch(&st, &id, body.as_ref()).await?)
                },
            )
            .delete(
                move |State(st): St, IdPath(id): IdPath, RawQuery(q): RawQuery| async move {
                    r::delete_one(&st, api, &id, cascade_of(&q)).await
                },
            ),
        )
}

fn images(api: Api) -> Router<AppState> {
    use service::images as i;
    Router::new()
        .route(
            "/images",
            get(|State(st): St| async move { list_raw(&*st.store, Table::Images).await })
                .post(
                    |State(st): St, caller: Option<Extension<Caller>>, body: JsonBody| async move {
                        // A job's agent registers its one new image only.
                        if let Some(Extension(Caller::Job(job))) = &caller {
                            service::job_creds::check_registration(&st, job, body.as_ref()).await?;
                        }
                        json(StatusCode::CREATED, &i::create(&st, body.as_ref()).await?)
                    },
                )
                .delete(move |State(st): St, RawQuery(q): RawQuery| async move {
                    i::delete_all(&st, api, cascade_of(&q)).await
                }),
        )
        .route(
            "/images/{id}",
            get(|State(st): St, IdPath(id): IdPath| async move {
                get_raw(&*st.store, Table::Images, &id).await
            })
            .patch(
                |State(st): St, IdPath(id): IdPath, body: JsonBody| async move {
                    json(StatusCode::OK, &i::patch(&st, &id, body.as_ref()).await?)
                },
            )
            .delete(
                move |State(st): St, IdPath(id): IdPath, RawQuery(q): RawQuery| async move {
                    i::delete_one(&st, api, &id, cascade_of(&q)).await
                },
            ),
        )
}

fn jobs() -> Router<AppState> {
    use service::job_runs as r;
    use service::jobs as j;
    Router::new()
        .route(
            "/jobs/{id}/heartbeat",
            axum::routing::post(
                |State(st): St,
                 caller: Option<Extension<Caller>>,
                 IdPath(id): IdPath,
                 body: JsonBody| async move {
                    let mut answer = r::heartbeat(&st, &id, body.as_ref()).await?;
                    // The job's own agent gets a fresh token with every answer (tokens expire),
                    // while its job runs.
                    if let Some(Extension(Caller::Job(job))) = &caller
                        && *job == id
                        && !answer.status.is_final()
                    {
                        answer.token = Some(st.job_tokens.issue(job));
                    }
                    json(StatusCode::OK, &answer)
                },
            ),
        )
        .route(
            "/jobs/{id}/session",
            get(|State(st): St, IdPath(id): IdPath| async move {
                json(StatusCode::OK, &r::session(&st, &id).await?)
            }),
        )
        .route(
            "/jobs/{id}/complete",
            axum::routing::post(|State(st): St, IdPath(id): IdPath| async move {
                json(StatusCode::OK, &r::request(&st, &id, ims_core::UserRequest::Complete).await?)
            }),
        )
        .route(
            "/jobs/{id}/fail",
            axum::routing::post(|State(st): St, IdPath(id): IdPath| async move {
                json(StatusCode::OK, &r::request(&st, &id, ims_core::UserRequest::Fail).await?)
            }),
        )
        .route(
            "/jobs/{id}/log",
            get(|State(st): St, IdPath(id): IdPath, RawQuery(q): RawQuery| async move {
                r::read_log(&st, &id, input::LOG_OFFSET.index(q.as_deref())?).await
            })
            .post(
                |State(st): St, IdPath(id): IdPath, RawQuery(q): RawQuery, body: bytes::Bytes| async move {
                    let seq = input::LOG_SEQ.index(q.as_deref())?;
                    json(StatusCode::OK, &r::append_log(&st, &id, seq, body).await?)
                },
            ),
        )
        .route(
            "/jobs",
            get(|State(st): St| async move { list_raw(&*st.store, Table::Jobs).await })
                .post(|State(st): St, body: JsonBody| async move {
                    json(StatusCode::CREATED, &j::create(&st, body.as_ref()).await?)
                })
                .delete(|State(st): St, RawQuery(q): RawQuery| async move {
                    j::delete_filtered(&st, q.as_deref()).await
                }),
        )
        .route(
            "/jobs/{id}",
            get(|State(st): St, IdPath(id): IdPath| async move {
                get_raw(&*st.store, Table::Jobs, &id).await
            })
            .patch(
                |State(st): St,
                 caller: Option<Extension<Caller>>,
                 IdPath(id): IdPath,
                 body: JsonBody| async move {
                    if let Some(Extension(Caller::Job(_))) = &caller {
                        service::job_creds::check_result(&st, &id, body.as_ref()).await?;
                    }
                    json(StatusCode::OK, &j::patch(&st, &id, body.as_ref()).await?)
                },
            )
            .delete(
                |State(st): St, IdPath(id): IdPath| async move { j::delete_one(&st, &id).await },
            ),
        )
}

fn deleted(kind: Kind, name: &str) -> Router<AppState> {
    use service::deleted as d;
    Router::new()
        .route(
            &format!("/deleted/{name}"),
            get(move |State(st): St| async move { list_raw(&*st.store, kind.table()).await })
                .delete(move |State(st): St| async move { d::purge(&st, kind, None).await })
                .patch(move |State(st): St, body: JsonBody| async move {
                    d::undelete(&st, kind, None, body.as_ref()).await
                }),
        )
        .route(
            &format!("/deleted/{name}/{{id}}"),
            get(move |State(st): St, IdPath(id): IdPath| async move {
                get_raw(&*st.store, kind.table(), &id).await
            })
            .delete(move |State(st): St, IdPath(id): IdPath| async move {
                d::purge(&st, kind, Some(&id)).await
            })
            .patch(
                move |State(st): St, IdPath(id): IdPath, body: JsonBody| async move {
                    d::undelete(&st, kind, Some(&id), body.as_ref()).await
                },
            ),
        )
}

fn remote_build_nodes() -> Router<AppState> {
    use service::remote_nodes as n;
    Router::new()
        .route(
            "/remote-build-nodes",
            get(|State(st): St| async move { list_raw(&*st.store, Table::RemoteBuildNodes).await })
                .post(|State(st): St, body: JsonBody| async move {
                    json(StatusCode::CREATED, &n::create(&st, body.as_ref()).await?)
                })
                .delete(|State(st): St| async move { n::delete_all(&st).await }),
        )
        .route(
            "/remote-build-nodes/status",
            get(|State(st): St| async move { json(StatusCode::OK, &n::status_all(&st).await?) })
                // The original's router falls through to `/{xname}` for methods the status route
                // lacks, so a node registered as "status" can still be deleted.
                .delete(|State(st): St| async move { n::delete_one(&st, "status").await })
                .patch(|State(st): St, body: JsonBody| async move {
                    json(
                        StatusCode::OK,
                        &n::patch(&st, "status", body.as_ref()).await?,
                    )
                }),
        )
        .route(
            "/remote-build-nodes/status/{xname}",
            get(|State(st): St, IdPath(x): IdPath| async move {
                json(StatusCode::OK, &n::status_one(&st, &x).await?)
            }),
        )
        .route(
            "/remote-build-nodes/{xname}",
            get(|State(st): St, IdPath(x): IdPath| async move {
                get_raw(&*st.store, Table::RemoteBuildNodes, &x).await
            })
            .patch(
                |State(st): St, IdPath(x): IdPath, body: JsonBody| async move {
                    json(StatusCode::OK, &n::patch(&st, &x, body.as_ref()).await?)
                },
            )
            .delete(|State(st): St, IdPath(x): IdPath| async move { n::delete_one(&st, &x).await }),
        )
        .route(
            "/remote-build-nodes/{xname}/host-key",
            get(|State(st): St, IdPath(x): IdPath| async move {
                json(StatusCode::OK, &n::host_keys(&st, &x).await?)
            })
            .post(
                |State(st): St, IdPath(x): IdPath, body: JsonBody| async move {
                    json(
                        StatusCode::OK,
                        &n::accept_host_key(&st, &x, body.as_ref()).await?,
                    )
                },
            ),
        )
}

fn v2_resources() -> Router<AppState> {
    Router::new()
        .merge(public_keys(Api::V2))
        .merge(recipes(Api::V2))
        .merge(images(Api::V2))
        .merge(jobs())
}

fn v3_resources() -> Router<AppState> {
    Router::new()
        .merge(public_keys(Api::V3))
        .merge(recipes(Api::V3))
        .merge(images(Api::V3))
        .merge(jobs())
        .merge(deleted(Kind::PublicKeys, "public-keys"))
        .merge(deleted(Kind::Recipes, "recipes"))
        .merge(deleted(Kind::Images, "images"))
        .merge(remote_build_nodes())
}

async fn ready(State(st): St) -> ApiResult<Response> {
    // Ready only while a write can commit (a full disk or a read-only database is not ready).
    st.store.ready().await?;
    json(StatusCode::OK, &serde_json::json!({}))
}

/// The whole IMS tree (served at `/` and under `/apis/ims`).
fn api_tree() -> Router<AppState> {
    Router::new()
        .route("/healthz/ready", get(ready))
        .route(
            "/healthz/live",
            get(|| async { json(StatusCode::OK, &serde_json::json!({})) }),
        )
        .route(
            "/version",
            get(|State(st): St| async move {
                json(
                    StatusCode::OK,
                    &serde_json::json!({"version": st.cfg.version}),
                )
            }),
        )
        .route(
            "/openapi.json",
            get(|| async { json(StatusCode::OK, crate::openapi::document()) }),
        )
        .merge(v2_resources())
        .nest("/v2", v2_resources())
        .nest("/v3", v3_resources())
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> Response {
    problem_response(Problem::new(404, DETAIL_NO_ROUTE))
}

async fn method_not_allowed() -> Response {
    problem_response(Problem::new(405, DETAIL_BAD_METHOD))
}

/// Safety net for the "every error is problem+json" rule: an error response produced outside our
/// handlers (a framework rejection) is re-rendered as a problem with the same status, its text as
/// the detail, and its other headers (e.g. `Allow`) kept.
async fn ensure_problem(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_string()
    } else {
        text
    };
    let problem = problem_response(Problem::new(status.as_u16(), detail));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let (p_parts, p_body) = problem.into_parts();
    parts.headers.extend(p_parts.headers);
    Response::from_parts(parts, p_body)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    problem_response(Problem::internal(
        "The server hit an internal error while handling the request.",
    ))
}

/// `PUT /apis/sts/token` (what `cray artifacts` calls first): temporary S3 credentials and the
/// endpoint to use them with.
async fn sts_token(
    State(st): St,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let issuer = st.sts.as_ref().ok_or_else(|| {
        Problem::unavailable("No S3 endpoint is configured, so no S3 credentials can be issued.")
    })?;
    let caller = caller.map(|c| c.0).unwrap_or(Caller::Anonymous);
    if caller == Caller::Anonymous && issuer.hands_out_site_keys() {
        return Err(Problem::new(
            403,
            "With an external S3 store, STS hands out the site's S3 keys: only to an \
             authenticated caller. Configure an administrator token (IMS_API_TOKEN_FILE) and send \
             it (Authorization: Bearer …).",
        )
        .into());
    }
    // The host the client reached the API at: where it can reach the S3 endpoint too, when that
    // listens on every address.
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    // A job's agent: credentials confined to what the job needs (where the issuer can confine
    // them), and the id its new image is to have.
    if let Caller::Job(id) = &caller {
        let job = service::must_get::<ims_core::Job>(&*st.store, id)
            .await?
            .record;
        let image_id = service::job_creds::image_id(&st, &job).await?;
        let scope = service::job_creds::scope(&st, &job, &image_id).await?;
        let credentials = issuer.issue_for_job(host, &scope);
        // The job may have been deleted or ended while they were made (after its revocation):
        // then they are revoked again.
        let live = ims_store::get::<ims_core::Job>(&*st.store, id).await?;
        if live.is_none_or(|j| j.record.status.is_final()) {
            issuer.revoke_job(id);
            return Err(
                Problem::new(401, format!("Job {id} has ended: its token is void.")).into(),
            );
        }
        return json(
            StatusCode::OK,
            &crate::sts::StsResponse {
                credentials,
                job: Some(crate::sts::StsJob {
                    image_id,
                    bucket: scope.write_bucket.clone(),
                    confined: issuer.confines_jobs(),
                }),
            },
        );
    }
    json(
        StatusCode::OK,
        &crate::sts::StsResponse {
            credentials: issuer.issue(host),
            job: None,
        },
    )
}

/// The complete HTTP application. The layers wrap the finished router once (they are not copied
/// into every route), and the state is applied here, so a new connection costs a reference count.
/// `ims serve` serves it with `ims_http::serve` (as a `TowerToHyperService`).
pub fn router(st: AppState) -> Router {
    let limit = st.cfg.max_body_bytes;
    let tree = api_tree();
    let routes = Router::new()
        .merge(tree.clone())
        .nest("/apis/ims", tree)
        .route(
            "/apis/sts/token",
            axum::routing::put(sts_token).post(sts_token),
        )
        .fallback(not_found)
        .with_state(st.clone());
    let app = tower::ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::map_response(ensure_problem))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            st,
            crate::auth::authenticate,
        ))
        .service(routes);
    Router::new().fallback_service(app)
}
