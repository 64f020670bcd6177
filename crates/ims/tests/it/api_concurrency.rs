//! Concurrent updates over HTTP: no lost update in one server (both backends), nor between two
//! `ims serve` processes sharing one PostgreSQL database (the scale-out path of the design; the
//! original could only run one single-threaded pod, §8).

use crate::common::*;
use futures::future::join_all;
use serde_json::{Value, json};

const N: usize = 20;

async fn new_image(s: &Server) -> String {
    s.post("/v3/images", &json!({"name": "busy"})).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// PATCHes metadata key `k<i>` = `v<i>` for every i in `range`, spread over `servers`, all at once.
async fn patch_all(servers: &[&Server], id: &str, range: std::ops::Range<usize>) {
    let futs = range.map(|i| {
        let s = servers[i % servers.len()];
        let path = format!("/v2/images/{id}");
        async move {
            let r = s
                .patch(
                    &path,
                    &json!({"metadata": {"operation": "set", "key": format!("k{i}"), "value": format!("v{i}")}}),
                )
                .await;
            (i, r)
        }
    });
    for (i, r) in join_all(futs).await {
        let rec = r.ok(200);
        assert_eq!(rec["metadata"][format!("k{i}")], format!("v{i}"), "{rec}");
    }
}

/// PATCHes `n` distinct metadata keys, `width` requests in flight at a time, spread over `servers`:
/// every one must answer 200 with the full record including its key (no 409: the updates queue on
/// the record's lock, and `cray`-style clients do not retry).
async fn patch_many(servers: &[&Server], id: &str, n: usize, width: usize) {
    use futures::stream::{self, StreamExt};
    let results: Vec<(usize, Resp)> = stream::iter(0..n)
        .map(|i| {
            let s = servers[i % servers.len()];
            let path = format!("/v3/images/{id}");
            async move {
                let body = json!({"metadata": {"operation": "set", "key": format!("k{i}"), "value": format!("v{i}")}});
                (i, s.patch(&path, &body).await)
            }
        })
        .buffer_unordered(width)
        .collect()
        .await;
    for (i, r) in results {
        let rec = r.ok(200);
        assert_eq!(rec["metadata"][format!("k{i}")], format!("v{i}"));
        assert_eq!(rec["id"], id);
    }
}

fn assert_all_keys(rec: &Value, n: usize) {
    let m = rec["metadata"].as_object().unwrap();
    for i in 0..n {
        assert_eq!(
            m.get(&format!("k{i}")),
            Some(&json!(format!("v{i}"))),
            "lost k{i}: {rec}"
        );
    }
    assert_eq!(m.len(), n, "{rec}");
}

async fn concurrent_metadata_patches(db: Db) {
    let s = start(db).await;
    let id = new_image(&s).await;
    patch_all(&[&s], &id, 0..N).await;
    assert_all_keys(&s.get(&format!("/v3/images/{id}")).await.ok(200), N);
    // Concurrent removes and sets of different keys as well.
    let futs = (0..N).map(|i| {
        let s = &s;
        let id = &id;
        async move {
            let body = if i % 2 == 0 {
                json!({"metadata": {"operation": "remove", "key": format!("k{i}")}})
            } else {
                json!({"metadata": {"operation": "set", "key": format!("k{i}"), "value": "changed"}})
            };
            s.patch(&format!("/v3/images/{id}"), &body).await.ok(200);
        }
    });
    join_all(futs).await;
    let rec = s.get(&format!("/v3/images/{id}")).await.ok(200);
    let m = rec["metadata"].as_object().unwrap();
    assert_eq!(m.len(), N / 2, "{rec}");
    for i in (1..N).step_by(2) {
        assert_eq!(m[&format!("k{i}")], "changed");
    }
    // The record survives a restart unchanged.
    let s = s.restart().await;
    assert_eq!(s.get(&format!("/v3/images/{id}")).await.ok(200), rec);
}

/// Concurrent job status PATCHes and a concurrent image PATCH on a different record: every request
/// answers 200 and the final state is one of the values sent.
/// Issue 11 item 9: 400 metadata PATCHes of one image, 8 at a time, all succeed and all keys stay.
async fn many_patches_of_one_record_all_succeed(db: Db) {
    let s = start(db).await;
    let id = new_image(&s).await;
    patch_many(&[&s], &id, 400, 8).await;
    assert_all_keys(&s.get(&format!("/v3/images/{id}")).await.ok(200), 400);
}

async fn concurrent_job_patches(db: Db) {
    let s = start(db).await;
    let key = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let img_id = uuid::Uuid::new_v4().to_string();
    let link = s.put_image_artifacts(&img_id);
    let img = s
        .post("/v3/images", &json!({"name": "i", "link": link}))
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "customize", "artifact_id": img, "public_key_id": key,
                "image_root_archive_name": "x"}),
        )
        .await
        .ok(201);
    let id = job["id"].as_str().unwrap().to_string();
    let rid = uuid::Uuid::new_v4().to_string();
    let statuses = ["fetching_image", "waiting_on_user", "packaging_artifacts"];
    let futs = (0..N).map(|i| {
        let s = &s;
        let id = &id;
        let rid = &rid;
        async move {
            let body = if i == 0 {
                json!({"resultant_image_id": rid})
            } else {
                json!({"status": statuses[i % statuses.len()]})
            };
            s.patch(&format!("/jobs/{id}"), &body).await.ok(200);
        }
    });
    join_all(futs).await;
    let got = s.get(&format!("/v3/jobs/{id}")).await.ok(200);
    assert_eq!(
        got["resultant_image_id"], rid,
        "the resultant_image_id PATCH was not lost"
    );
    assert!(statuses.contains(&got["status"].as_str().unwrap()), "{got}");
}

/// Two `ims serve` processes on one PostgreSQL database: concurrent PATCHes through both lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_one_postgres() {
    if ims_store::testing::skip_postgres() {
        return;
    }
    let a = start(Db::Postgres).await;
    let b = Builder {
        db: Db::Postgres,
        data: tempfile::tempdir().unwrap(),
        db_url: a.db_url.clone(),
        env: vec![],
        seed: vec![],
    }
    .start()
    .await;
    assert_ne!(a.url, b.url);
    // A record made through one is visible through the other.
    let id = new_image(&a).await;
    b.get(&format!("/v3/images/{id}")).await.ok(200);
    patch_all(&[&a, &b], &id, 0..2 * N).await;
    let ra = a.get(&format!("/v3/images/{id}")).await.ok(200);
    let rb = b.get(&format!("/v3/images/{id}")).await.ok(200);
    assert_eq!(ra, rb);
    assert_all_keys(&ra, 2 * N);
    // Concurrent creates through both: every acknowledged record is listed by both.
    let futs = (0..N).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        async move {
            s.post(
                "/v3/public-keys",
                &json!({"name": format!("k{i}"), "public_key": PUBLIC_KEY}),
            )
            .await
            .ok(201)["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    });
    let mut ids = join_all(futs).await;
    ids.sort();
    for s in [&a, &b] {
        let mut listed: Vec<String> = s
            .get("/v3/public-keys")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect();
        listed.sort();
        assert_eq!(listed, ids);
    }
    // A soft delete through one and an undelete through the other.
    a.delete(&format!("/v3/public-keys/{}", ids[0]))
        .await
        .ok(204);
    b.get(&format!("/v3/deleted/public-keys/{}", ids[0]))
        .await
        .ok(200);
    b.patch(
        &format!("/v3/deleted/public-keys/{}", ids[0]),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    a.get(&format!("/v3/public-keys/{}", ids[0])).await.ok(200);
}

/// Issue 11 item 9 with two replicas on one PostgreSQL database: 400 PATCHes of one image through
/// both, 8 at a time, all succeed and all keys stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_patches_through_two_postgres_replicas_all_succeed() {
    if ims_store::testing::skip_postgres() {
        return;
    }
    let a = start(Db::Postgres).await;
    let b = Builder {
        db: Db::Postgres,
        data: tempfile::tempdir().unwrap(),
        db_url: a.db_url.clone(),
        env: vec![],
        seed: vec![],
    }
    .start()
    .await;
    let id = new_image(&a).await;
    patch_many(&[&a, &b], &id, 400, 8).await;
    let ra = a.get(&format!("/v3/images/{id}")).await.ok(200);
    assert_eq!(ra, b.get(&format!("/v3/images/{id}")).await.ok(200));
    assert_all_keys(&ra, 400);
}

both_backends!(
    concurrent_metadata_patches,
    concurrent_job_patches,
    many_patches_of_one_record_all_succeed
);
