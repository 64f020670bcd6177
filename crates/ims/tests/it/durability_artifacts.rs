//! Crash safety of the operations that move or delete artifacts (issue 11 item 5): `ims serve`
//! killed with SIGKILL at random points of bulk v3 soft deletes, undeletes and v2 cascade deletes
//! of images with real artifact files; after a restart every record is either as before with its
//! artifacts, or changed with its artifacts where its new state says.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Images created per round.
const IMAGES: usize = 40;
const ROUNDS: usize = 2;
const NAMES: [&str; 3] = ["rootfs", "kernel", "initrd"];

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    /// Seeded from the clock; the seed is printed, to replay a failing run.
    fn seeded() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { files(&p) } else { 1 }
        })
        .sum()
}

/// Sends `method path` and SIGKILLs the server at a random point: when `progress()` (a count of
/// artifact files that have reached their new state) reaches a random target, or after the
/// request ended. Returns whether the request was acknowledged (2xx) before the kill.
async fn run_and_kill(
    s: &mut Server,
    rng: &mut Rng,
    method: &str,
    path: &str,
    body: Option<Value>,
    total: usize,
    progress: impl Fn(&Server) -> usize,
) -> bool {
    let target = rng.below(total as u64 + 2) as usize;
    let client = reqwest::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(m, format!("{}{path}", s.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let task = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    let t = Instant::now();
    // target 0: kill right away (planning); > total: let the request finish first.
    if target > 0 {
        while progress(s) < target.min(total) && !task.is_finished() {
            assert!(t.elapsed() < Duration::from_secs(30), "no progress");
            tokio::task::yield_now().await;
        }
    }
    if target > total {
        while !task.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let acked = matches!(task.await.unwrap(), Ok(st) if (200..300).contains(&st));
    eprintln!("{method} {path}: target {target}/{total}, acknowledged {acked}");
    acked
}

/// The state of one image's artifacts.
#[derive(Debug, PartialEq)]
enum Where {
    Active,
    Deleted,
    Gone,
}

/// Checks every image against its record; returns each image's state.
fn check(
    s: &Server,
    dirs: &HashMap<String, String>,
    active: &Value,
    deleted: &Value,
) -> Result<HashMap<String, Where>, String> {
    let mut out = HashMap::new();
    let active: HashMap<&str, &Value> = active
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    let deleted: HashMap<&str, &Value> = deleted
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    for (id, dir) in dirs {
        let here = |k: &str| s.has_artifact("boot-images", &format!("{dir}/{k}"));
        let there = |k: &str| s.has_artifact("boot-images", &format!("deleted/{dir}/{k}"));
        let content_ok = |key: &str, name: &str| {
            s.read_artifact("boot-images", key) == format!("{name} of {dir}").as_bytes()
        };
        let state = match (active.get(id.as_str()), deleted.get(id.as_str())) {
            (Some(_), Some(_)) => return Err(format!("{id} both active and deleted")),
            (Some(r), None) => {
                if r["link"]["path"] != format!("s3://boot-images/{dir}/manifest.json") {
                    return Err(format!("active {id}: link {}", r["link"]));
                }
                for k in NAMES {
                    if !here(k) || !content_ok(&format!("{dir}/{k}"), k) || there(k) {
                        return Err(format!("active {id}: artifact {k} not (only) in place"));
                    }
                }
                if !here("manifest.json") || there("manifest.json") {
                    return Err(format!("active {id}: manifest not in place"));
                }
                if s.has_artifact(
                    "boot-images",
                    &format!("deleted/{id}/deleted_manifest.json"),
                ) {
                    return Err(format!("active {id}: deleted manifest left"));
                }
                Where::Active
            }
            (None, Some(r)) => {
                let dm_key = format!("deleted/{id}/deleted_manifest.json");
                if r["link"]["path"] != format!("s3://boot-images/{dm_key}") {
                    return Err(format!("deleted {id}: link {}", r["link"]));
                }
                if !s.has_artifact("boot-images", &dm_key) {
                    return Err(format!("deleted {id}: no deleted manifest"));
                }
                let dm: Value = serde_json::from_slice(&s.read_artifact("boot-images", &dm_key))
                    .map_err(|e| format!("deleted {id}: deleted manifest: {e}"))?;
                let paths: HashSet<String> = dm["artifacts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["link"]["path"].as_str().unwrap().to_string())
                    .collect();
                for k in NAMES.iter().chain(&["manifest.json"]) {
                    if here(k) || !there(k) {
                        return Err(format!(
                            "deleted {id}: artifact {k} not (only) under deleted/"
                        ));
                    }
                    if !paths.contains(&format!("s3://boot-images/deleted/{dir}/{k}")) {
                        return Err(format!("deleted {id}: {k} not in the deleted manifest"));
                    }
                }
                for k in NAMES {
                    if !content_ok(&format!("deleted/{dir}/{k}"), k) {
                        return Err(format!("deleted {id}: {k} content changed"));
                    }
                }
                Where::Deleted
            }
            (None, None) => {
                for k in NAMES.iter().chain(&["manifest.json"]) {
                    if here(k) || there(k) {
                        return Err(format!("gone {id}: artifact {k} left"));
                    }
                }
                Where::Gone
            }
        };
        out.insert(id.clone(), state);
    }
    Ok(out)
}

/// What a check of one resource's records against their artifacts is.
type Check =
    fn(&Server, &HashMap<String, String>, &Value, &Value) -> Result<HashMap<String, Where>, String>;

/// Restarts after a kill and checks the invariant for `resource` (`images`, `recipes`) with
/// `check` (on PostgreSQL, work whose lease ran out is taken over by the sweeper, so the check waits
/// for it, boundedly).
async fn restart_and_check(
    s: &mut Server,
    dirs: &HashMap<String, String>,
    resource: &str,
    check: Check,
) -> HashMap<String, Where> {
    *s = reopen(s).await;
    let t = Instant::now();
    loop {
        let active = s.get(&format!("/v3/{resource}")).await.ok(200);
        let deleted = s.get(&format!("/v3/deleted/{resource}")).await.ok(200);
        match check(s, dirs, &active, &deleted) {
            Ok(st) => return st,
            Err(e) if t.elapsed() > Duration::from_secs(15) => panic!("after restart: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn sigkill_during_artifact_moves_leaves_no_broken_record(db: Db) {
    let mut rng = Rng::seeded();
    // A short lease: on PostgreSQL the restarted server takes the killed one's work over soon.
    let mut s = builder(db)
        .await
        .env("IMS_ARTIFACT_LEASE", "1s")
        .start()
        .await;
    let mut dirs: HashMap<String, String> = HashMap::new();
    for round in 0..ROUNDS {
        for i in 0..IMAGES {
            let dir = format!("r{round}-{i}");
            let l = s.put_image_artifacts(&dir);
            let r = s
                .post("/v3/images", &json!({"name": dir, "link": l}))
                .await
                .ok(201);
            dirs.insert(r["id"].as_str().unwrap().to_string(), dir);
        }
        // v3 bulk soft delete: files reach deleted/.
        let before = files(&s.data.path().join("artifacts/boot-images/deleted"));
        let total = IMAGES * 4;
        let acked = run_and_kill(&mut s, &mut rng, "DELETE", "/v3/images", None, total, |s| {
            files(&s.data.path().join("artifacts/boot-images/deleted")).saturating_sub(before)
        })
        .await;
        let st = restart_and_check(&mut s, &dirs, "images", check).await;
        if acked {
            assert!(
                st.values().all(|w| *w != Where::Active),
                "acknowledged soft delete"
            );
        }
        // Undelete of everything deleted: files leave deleted/.
        let under = files(&s.data.path().join("artifacts/boot-images/deleted"));
        let acked = run_and_kill(
            &mut s,
            &mut rng,
            "PATCH",
            "/v3/deleted/images",
            Some(json!({"operation": "undelete"})),
            under,
            move |s| {
                under.saturating_sub(files(&s.data.path().join("artifacts/boot-images/deleted")))
            },
        )
        .await;
        let st = restart_and_check(&mut s, &dirs, "images", check).await;
        if acked {
            assert!(
                st.values().all(|w| *w != Where::Deleted),
                "acknowledged undelete"
            );
        }
        // Half soft-deleted again (so the cascade meets both kinds), then a v2 cascade delete of
        // every active image: files go.
        for (id, _) in st
            .iter()
            .filter(|(_, w)| **w == Where::Active)
            .take(IMAGES / 2)
        {
            s.delete(&format!("/v3/images/{id}")).await.ok(204);
        }
        let present = files(&s.data.path().join("artifacts/boot-images"));
        let acked = run_and_kill(
            &mut s,
            &mut rng,
            "DELETE",
            "/v2/images",
            None,
            present,
            move |s| present.saturating_sub(files(&s.data.path().join("artifacts/boot-images"))),
        )
        .await;
        let st = restart_and_check(&mut s, &dirs, "images", check).await;
        if acked {
            assert!(
                st.values().all(|w| *w != Where::Active),
                "acknowledged cascade delete"
            );
        }
    }
}

/// Checks every recipe against its record: its tarball is where the record says, and only there.
fn check_recipes(
    s: &Server,
    dirs: &HashMap<String, String>,
    active: &Value,
    deleted: &Value,
) -> Result<HashMap<String, Where>, String> {
    let ids = |v: &Value| -> HashMap<String, Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
            .collect()
    };
    let (active, deleted) = (ids(active), ids(deleted));
    let mut out = HashMap::new();
    for (id, dir) in dirs {
        let key = format!("recipes/{dir}/recipe.tgz");
        let here = s.has_artifact("ims", &key);
        let there = s.has_artifact("ims", &format!("deleted/{key}"));
        let (state, want) = match (active.get(id), deleted.get(id)) {
            (Some(_), Some(_)) => return Err(format!("recipe {id} both active and deleted")),
            (Some(r), None) => (Where::Active, (r, key.clone(), true, false)),
            (None, Some(r)) => (Where::Deleted, (r, format!("deleted/{key}"), false, true)),
            (None, None) => {
                if here || there {
                    return Err(format!("gone recipe {id}: tarball left"));
                }
                out.insert(id.clone(), Where::Gone);
                continue;
            }
        };
        let (r, at, h, t) = want;
        if r["link"]["path"] != format!("s3://ims/{at}") || here != h || there != t {
            return Err(format!(
                "{state:?} recipe {id}: link {}, tarball here {here}, under deleted/ {there}",
                r["link"]
            ));
        }
        if s.read_artifact("ims", &at) != format!("tarball of {dir}").as_bytes() {
            return Err(format!("recipe {id}: tarball content changed"));
        }
        out.insert(id.clone(), state);
    }
    Ok(out)
}

/// The same for recipes: soft delete, undelete and cascade delete of recipes with real tarballs.
async fn sigkill_during_recipe_moves_leaves_no_broken_record(db: Db) {
    let mut rng = Rng::seeded();
    let mut s = builder(db)
        .await
        .env("IMS_ARTIFACT_LEASE", "1s")
        .start()
        .await;
    let mut dirs: HashMap<String, String> = HashMap::new();
    let ims = |s: &Server| s.data.path().join("artifacts/ims");
    for round in 0..ROUNDS {
        for i in 0..IMAGES * 2 {
            let dir = format!("r{round}-{i}");
            let key = format!("recipes/{dir}/recipe.tgz");
            s.put_artifact("ims", &key, format!("tarball of {dir}").as_bytes());
            let r = s
                .post(
                    "/v3/recipes",
                    &json!({"name": dir, "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                            "link": {"path": format!("s3://ims/{key}"), "etag": "", "type": "s3"}}),
                )
                .await
                .ok(201);
            dirs.insert(r["id"].as_str().unwrap().to_string(), dir);
        }
        let before = files(&ims(&s).join("deleted"));
        let acked = run_and_kill(
            &mut s,
            &mut rng,
            "DELETE",
            "/v3/recipes",
            None,
            IMAGES * 2,
            |s| files(&ims(s).join("deleted")).saturating_sub(before),
        )
        .await;
        let st = restart_and_check(&mut s, &dirs, "recipes", check_recipes).await;
        if acked {
            assert!(st.values().all(|w| *w != Where::Active));
        }
        let under = files(&ims(&s).join("deleted"));
        let acked = run_and_kill(
            &mut s,
            &mut rng,
            "PATCH",
            "/v3/deleted/recipes",
            Some(json!({"operation": "undelete"})),
            under,
            move |s| under.saturating_sub(files(&ims(s).join("deleted"))),
        )
        .await;
        let st = restart_and_check(&mut s, &dirs, "recipes", check_recipes).await;
        if acked {
            assert!(st.values().all(|w| *w != Where::Deleted));
        }
        let present = files(&ims(&s));
        let acked = run_and_kill(
            &mut s,
            &mut rng,
            "DELETE",
            "/v2/recipes",
            None,
            present,
            move |s| present.saturating_sub(files(&ims(s))),
        )
        .await;
        let st = restart_and_check(&mut s, &dirs, "recipes", check_recipes).await;
        if acked {
            assert!(st.values().all(|w| *w != Where::Active));
        }
    }
}

both_backends!(
    sigkill_during_artifact_moves_leaves_no_broken_record,
    sigkill_during_recipe_moves_leaves_no_broken_record
);
