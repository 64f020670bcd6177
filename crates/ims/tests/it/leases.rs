//! Several `ims serve` replicas on one PostgreSQL elect one to run the background work (the job
//! reconciler, the remote-node passes): exactly one says it leads, a replica killed with SIGKILL
//! is replaced within the lease's time to live, and jobs whose heartbeats stop still end in error.

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY_HEX: &str = "4c6561736573206f6620746865207265636f6e63696c65722c20706c65617365";
/// `IMS_LEADER_LEASE` here: attempts every 500 ms.
const TTL: Duration = Duration::from_secs(2);
/// `IMS_JOB_HEARTBEAT_TIMEOUT` here (the reconciler then runs every second).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);
const LEADS: &str = "this replica is the leader now";

fn logged(s: &Server, needle: &str) -> bool {
    s.log.lock().unwrap().iter().any(|l| l.contains(needle))
}

/// A line that has every one of `needles`.
fn logged_all(s: &Server, needles: &[&str]) -> bool {
    s.log
        .lock()
        .unwrap()
        .iter()
        .any(|l| needles.iter().all(|n| l.contains(n)))
}

fn count_logged(s: &Server, needle: &str) -> usize {
    s.log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

/// A job in `creating` whose agent never reported, written straight into the shared database.
async fn running_job(store: &ims_store::DynStore) -> String {
    let id = ims_core::new_id();
    let job: ims_core::Job = serde_json::from_value(json!({
        "id": id,
        "created": ims_core::Timestamp::now(),
        "job_type": "customize",
        "image_root_archive_name": "lease-test",
        "artifact_id": ims_core::new_id(),
        "public_key_id": ims_core::new_id(),
        "status": "creating",
    }))
    .unwrap();
    ims_store::insert(&**store, &job).await.unwrap();
    id
}

async fn status(s: &Server, id: &str) -> Value {
    s.get(&format!("/v3/jobs/{id}")).await.ok(200)["status"].clone()
}

/// The job's status once it is `error` (the server logs why before it sets it), within 10 s.
async fn ended_in_error(s: &Server, id: &str) {
    let t = Instant::now();
    while status(s, id).await != "error" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "job {id} did not end in error"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn heartbeat(s: &Server, id: &str) {
    let token = job_token(KEY_HEX, id);
    let r = s
        .send_as(
            Some(&token),
            "POST",
            &format!("/v3/jobs/{id}/heartbeat"),
            Some(br#"{"phase": "working"}"#),
            Some("application/json"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_elect_one_reconciler() {
    if ims_store::testing::skip_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("job.key");
    std::fs::write(&key, KEY_HEX).unwrap();
    let env = [
        ("IMS_JOB_EXECUTOR", "local"),
        ("IMS_LEADER_LEASE", "2s"),
        ("IMS_JOB_HEARTBEAT_TIMEOUT", "4s"),
        ("IMS_JOB_TOKEN_KEY_FILE", key.to_str().unwrap()),
    ];
    let with_env = |mut b: Builder| {
        for (k, v) in env {
            b = b.env(k, v);
        }
        b
    };
    let a = with_env(builder(Db::Postgres).await).start().await;
    let mut b = with_env(builder(Db::Postgres).await);
    b.db_url = a.db_url.clone();
    let b = b.start().await;
    let store = ims_store::open(a.db_url.as_deref().unwrap()).await.unwrap();
    // A job nobody heartbeats: the leader fails it, the other replica never tries.
    let silent = running_job(&store).await;

    // Exactly one replica leads, and stays the only one.
    eventually(TTL * 2, "a replica leads", || {
        logged(&a, LEADS) || logged(&b, LEADS)
    })
    .await;
    let t = Instant::now();
    while t.elapsed() < TTL * 2 {
        assert!(
            !(logged(&a, LEADS) && logged(&b, LEADS)),
            "both replicas lead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut leader, follower) = if logged(&a, LEADS) { (a, b) } else { (b, a) };
    let lease = ims_store::get::<ims_core::Lease>(&*store, "background")
        .await
        .unwrap()
        .expect("the lease row")
        .record;
    assert!(
        lease.holder.contains(&format!("/{}/", leader.child.id())),
        "the lease names {} (leader pid {})",
        lease.holder,
        leader.child.id()
    );

    eventually(
        HEARTBEAT_TIMEOUT * 3,
        "the silent job ends in error",
        || logged_all(&leader, &["failing the job", &silent]),
    )
    .await;
    ended_in_error(&follower, &silent).await;
    assert!(
        logged(&leader, "failing the job") && !logged(&follower, "failing the job"),
        "the follower reconciled"
    );

    // A job whose agent heartbeats through the follower is left alone by the leader, longer than
    // the heartbeat timeout.
    let beating = running_job(&store).await;
    let t = Instant::now();
    while t.elapsed() < HEARTBEAT_TIMEOUT + Duration::from_secs(2) {
        heartbeat(&follower, &beating).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(status(&follower, &beating).await, "creating");

    // The leader dies without a word (SIGKILL), and the heartbeats stop with it: the follower
    // takes over within the lease's time to live and fails the job for its silence.
    heartbeat(&follower, &beating).await;
    unsafe_kill(leader.child.id(), "KILL");
    let _ = leader.child.wait();
    let killed = Instant::now();
    let took = eventually(TTL * 3, "the follower takes over", || {
        logged(&follower, LEADS)
    })
    .await;
    // A lease time after the last renewal it saw, an attempt period (500 ms) at most after that,
    // and slack for a loaded machine.
    assert!(
        took <= TTL + Duration::from_secs(3),
        "took over after {took:?}"
    );
    eventually(
        HEARTBEAT_TIMEOUT * 3,
        "the job whose heartbeats stopped ends in error",
        || logged_all(&follower, &["failing the job", &beating]),
    )
    .await;
    assert!(killed.elapsed() >= HEARTBEAT_TIMEOUT, "failed too early");
    ended_in_error(&follower, &beating).await;
    let text =
        String::from_utf8(follower.get(&format!("/v3/jobs/{beating}/log")).await.body).unwrap();
    assert!(text.contains("no heartbeat from the job agent"), "{text}");
    assert_eq!(count_logged(&follower, LEADS), 1);
    let lease = ims_store::get::<ims_core::Lease>(&*store, "background")
        .await
        .unwrap()
        .unwrap()
        .record;
    assert!(lease.holder.contains(&format!("/{}/", follower.child.id())));
}

/// A replica stopped with SIGTERM (a rolling restart) releases the lease: the other replica
/// leads within one attempt period rather than a whole time to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_hands_over_at_once() {
    if ims_store::testing::skip_postgres() {
        return;
    }
    let lease = [("IMS_LEADER_LEASE", "10s")];
    let mut a = builder(Db::Postgres).await.env(lease[0].0, lease[0].1);
    a = a.env("IMS_JOB_EXECUTOR", "local");
    let mut a = a.start().await;
    eventually(Duration::from_secs(5), "a leads", || logged(&a, LEADS)).await;
    let mut b = builder(Db::Postgres)
        .await
        .env(lease[0].0, lease[0].1)
        .env("IMS_JOB_EXECUTOR", "local");
    b.db_url = a.db_url.clone();
    let b = b.start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!logged(&b, LEADS));
    let t = Instant::now();
    a.stop();
    eventually(
        Duration::from_secs(2),
        "a says it released the lease",
        || logged(&a, "released the lease"),
    )
    .await;
    let took = eventually(Duration::from_secs(8), "b takes over", || logged(&b, LEADS)).await;
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "b took over after {took:?}, as after an expiry of the 10 s lease"
    );
}
