//! The artifact journal: how a record change that moves or deletes artifacts survives a crash.
//!
//! A delete, soft delete, undelete or permanent delete first plans its artifact work (the moves,
//! deletes and the deleted manifest to write) and checks what must be refused (409s) before anything
//! changes. The record change and the plan, one journal row per record (an [`Intent`]), are then
//! committed in ONE transaction; the artifact work runs after the commit and the row goes once it is
//! done. Every step is idempotent (a move whose source is gone and destination present is done), so a
//! crash at any point leaves a row that start-up ([`recover`]) or the periodic [`sweep`] drives to
//! completion: each record is either as before with its artifacts, or changed with its artifacts where
//! the new state says.
//!
//! One row per record (key `image/<id>`, `recipe/<id>`) also serialises artifact work per record: an
//! operation on a record whose earlier work is still pending waits for it ([`settle`]), and its own
//! journal row could not be inserted meanwhile (the id is taken). Rows carry an owner and a lease
//! (`IMS_ARTIFACT_LEASE`) renewed while the owner works; another replica (PostgreSQL) takes a row over
//! only once its lease ran out; the embedded SQLite store belongs to one process, so its start-up takes
//! every row.

use crate::AppState;
use crate::error::{ApiResult, artifact_detail};
use ims_artifacts::Location;
use ims_core::manifest::MANIFEST_VERSION;
use ims_core::{ArtifactLink, Deleted, Image, Problem, Recipe, Record, Table, Timestamp};
use ims_store::{Op, StoreError, Versioned, delete_op, insert_op, list, update_op, update_with};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// This process's identity as a journal row owner.
static OWNER: LazyLock<String> = LazyLock::new(ims_core::new_id);

/// One idempotent piece of artifact work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Move an object within its bucket (`s3://` URLs). Done when `from` is gone.
    Move { from: String, to: String },
    /// Delete an object.
    Delete { path: String },
    /// Write a soft-deleted image's deleted manifest: `entries` are the image manifest's entries with
    /// their links already at the new place; each gets the ETag of the object there, and entries
    /// whose object does not exist are left out.
    DeletedManifest {
        path: String,
        created: String,
        entries: Vec<Value>,
    },
    /// Give the record's link (if still `path`) the ETag of the object there now: a server-side copy
    /// may change it.
    LinkEtag {
        record: Linked,
        id: String,
        path: String,
    },
}

/// Which record a [`Step::LinkEtag`] updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Linked {
    Recipe,
    DeletedRecipe,
    Image,
}

/// A journal row: the artifact work one committed record change still owes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// `image/<id>` or `recipe/<id>`.
    pub id: String,
    pub created: Timestamp,
    /// What it is for (logs).
    pub what: String,
    /// The process working on it.
    pub owner: String,
    /// Until when (Unix milliseconds) the owner holds it.
    pub lease_until_ms: u64,
    pub steps: Vec<Step>,
}

impl Record for Intent {
    const TABLE: Table = Table::ArtifactJournal;
    fn id(&self) -> &str {
        &self.id
    }
    fn created(&self) -> Option<Timestamp> {
        Some(self.created)
    }
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The journal key of an image (active or deleted).
pub fn image_key(id: &str) -> String {
    format!("image/{id}")
}

/// The journal key of a recipe (active or deleted).
pub fn recipe_key(id: &str) -> String {
    format!("recipe/{id}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lease_end(st: &AppState) -> u64 {
    now_ms().saturating_add(st.cfg.artifact_lease.as_millis() as u64)
}

/// The artifact work of the record changes one request commits together.
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
    keys: Vec<String>,
}

impl Batch {
    /// Records `steps` (if any) for the record with journal key `key`; the row goes into the same
    /// transaction as the record change ([`Batch::ops`]).
    pub fn add(
        &mut self,
        st: &AppState,
        key: String,
        what: String,
        steps: Vec<Step>,
    ) -> ApiResult<()> {
        if steps.is_empty() {
            return Ok(());
        }
        self.ops.push(insert_op(&Intent {
            id: key.clone(),
            created: Timestamp::now(),
            what,
            owner: OWNER.clone(),
            lease_until_ms: lease_end(st),
            steps,
        })?);
        self.keys.push(key);
        Ok(())
    }

    /// The journal rows to insert with the record change.
    pub fn ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// After the commit: does the work. A failure leaves the row for the sweeper (the change itself
    /// is committed) and answers 500 saying so.
    pub async fn complete(self, st: &AppState) -> ApiResult<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let keys: HashSet<String> = self.keys.into_iter().collect();
        let mut failed = Vec::new();
        let mut done = Vec::new();
        for v in list::<Intent>(&*st.store).await? {
            // Another owner means taken over (our lease ran out): the new owner finishes it.
            if !keys.contains(&v.record.id) || v.record.owner != *OWNER {
                continue;
            }
            match run_steps(st, v).await {
                Ok(row) => done.push(row),
                Err(e) => failed.push(e),
            }
        }
        // The rows of a bulk operation go in one transaction.
        if let Err(e) = remove(st, done).await {
            failed.push(e);
        }
        if failed.is_empty() {
            return Ok(());
        }
        Err(Problem::internal(format!(
            "The change was saved, but moving or deleting its artifacts did not finish ({}); the service retries it in the background.",
            failed.join("; ")
        ))
        .into())
    }
}

/// Waits until no artifact work is pending for these journal keys, doing (taking over) any whose
/// owner's lease ran out. Called before planning an operation on these records, so that the plan
/// sees their artifacts where their records say.
pub async fn settle(st: &AppState, keys: &HashSet<String>) -> ApiResult<()> {
    // Long enough for a live owner to finish, or for its lease to run out and the work to be
    // taken over here.
    let give_up = Instant::now() + (st.cfg.artifact_lease * 2).max(Duration::from_secs(30));
    loop {
        let pending: Vec<Versioned<Intent>> = list::<Intent>(&*st.store)
            .await?
            .into_iter()
            .filter(|v| keys.contains(&v.record.id))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut busy = None;
        for v in pending {
            let id = v.record.id.clone();
            match claim(st, v, false).await? {
                Some(mine) => {
                    if let Err(e) = execute(st, mine).await {
                        return Err(Problem::internal(format!(
                            "An earlier change of {id} could not finish moving its artifacts ({e}); nothing was changed now. Try again later."
                        ))
                        .into());
                    }
                }
                None => busy = Some(id),
            }
        }
        if let Some(id) = busy {
            if Instant::now() > give_up {
                return Err(Problem::new(
                    503,
                    format!("An earlier change of {id} is still moving its artifacts; nothing was changed. Try again later."),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Takes a row over when its lease ran out (or always, with `force`): `None` when it is held by a
/// live owner or another process took it first.
async fn claim(
    st: &AppState,
    v: Versioned<Intent>,
    force: bool,
) -> ApiResult<Option<Versioned<Intent>>> {
    if !force && v.record.lease_until_ms > now_ms() {
        return Ok(None);
    }
    let mut rec = v.record;
    rec.owner = OWNER.clone();
    rec.lease_until_ms = lease_end(st);
    match st.store.apply(vec![update_op(&rec, v.version)?]).await {
        Ok(()) => Ok(Some(Versioned {
            record: rec,
            version: v.version + 1,
        })),
        Err(StoreError::Conflict) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Start-up: drives every unfinished row to completion; `exclusive` (the store belongs to this
/// process alone) takes every row, otherwise only those whose lease ran out. Failures are logged
/// and left for the sweeper. Returns how many rows were completed.
pub async fn recover(st: &AppState, exclusive: bool) -> usize {
    let rows = match list::<Intent>(&*st.store).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the artifact journal");
            return 0;
        }
    };
    let mut done = 0;
    for v in rows {
        let what = v.record.what.clone();
        match claim(st, v, exclusive).await {
            Ok(Some(mine)) => match execute(st, mine).await {
                Ok(()) => {
                    tracing::info!(%what, "completed unfinished artifact work");
                    done += 1;
                }
                Err(e) => {
                    tracing::error!(%what, error = %e, "unfinished artifact work failed again; retried later")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%what, error = ?e, "cannot take over unfinished artifact work")
            }
        }
    }
    done
}

/// Periodic: takes over and completes rows whose owner stopped working on them.
pub async fn sweep(st: &AppState) -> usize {
    recover(st, false).await
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a row's steps, then removes it. `Err` (a message) when a step failed or another process
/// took the row over; the row then stays.
async fn execute(st: &AppState, v: Versioned<Intent>) -> Result<(), String> {
    let row = run_steps(st, v).await?;
    remove(st, vec![row]).await
}

/// Removes the rows of completed work (at the versions this process holds); a row another process
/// has taken over meanwhile stays for it.
async fn remove(st: &AppState, rows: Vec<Versioned<Intent>>) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let many = rows.len() > 1;
    match st.store.apply(rows.iter().map(delete_op).collect()).await {
        Ok(()) => return Ok(()),
        Err(StoreError::Conflict) if many => {}
        Err(StoreError::Conflict) => return Ok(()),
        Err(e) => return Err(format!("work done, but its journal rows stay: {e}")),
    }
    // One was taken over: the others one by one.
    for row in &rows {
        match st.store.apply(vec![delete_op(row)]).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => {
                return Err(format!(
                    "{}: done, but its journal row stays: {e}",
                    row.record.what
                ));
            }
        }
    }
    Ok(())
}

/// Runs a row's steps, renewing its lease meanwhile. Returns the row at the version this process
/// holds; `Err` (a message) when a step failed or another process took the row over.
async fn run_steps(st: &AppState, v: Versioned<Intent>) -> Result<Versioned<Intent>, String> {
    let steps = v.record.steps.clone();
    let what = v.record.what.clone();
    // `None` once another process has taken the row over.
    let held = Arc::new(tokio::sync::Mutex::new(Some(v)));
    let _renew = {
        let held = held.clone();
        let st = st.clone();
        AbortOnDrop(tokio::spawn(async move {
            let every = (st.cfg.artifact_lease / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                let mut g = held.lock().await;
                let Some(cur) = g.as_mut() else { break };
                let mut next = cur.record.clone();
                next.lease_until_ms = lease_end(&st);
                let res = match update_op(&next, cur.version) {
                    Ok(op) => st.store.apply(vec![op]).await,
                    Err(e) => Err(e),
                };
                match res {
                    Ok(()) => {
                        cur.record = next;
                        cur.version += 1;
                    }
                    Err(StoreError::Conflict) => {
                        *g = None;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew an artifact journal lease"),
                }
            }
        }))
    };
    for step in &steps {
        if held.lock().await.is_none() {
            return Err(format!("{what}: taken over by another process"));
        }
        run_step(st, step)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let mut g = held.lock().await;
    g.take()
        .ok_or_else(|| format!("{what}: taken over by another process"))
}

fn parse(path: &str) -> Result<Location, String> {
    Location::parse(path).map_err(|e| e.to_string())
}

async fn run_step(st: &AppState, step: &Step) -> Result<(), String> {
    match step {
        Step::Move { from, to } => {
            let (from, to) = (parse(from)?, parse(to)?);
            if st
                .artifacts
                .complete_move(&from, &to)
                .await
                .map_err(|e| artifact_detail(&e))?
                .is_none()
            {
                tracing::warn!(path = %from, "artifact missing; nothing to move");
            }
        }
        Step::Delete { path } => {
            st.artifacts
                .complete_delete(&parse(path)?)
                .await
                .map_err(|e| artifact_detail(&e))?;
        }
        Step::DeletedManifest {
            path,
            created,
            entries,
        } => {
            let mut listed = Vec::with_capacity(entries.len());
            for e in entries {
                let Some(p) = e.pointer("/link/path").and_then(Value::as_str) else {
                    continue;
                };
                match st
                    .artifacts
                    .head(&parse(p)?)
                    .await
                    .map_err(|e| artifact_detail(&e))?
                {
                    Some(info) => {
                        let mut e = e.clone();
                        e["link"] = json!(ArtifactLink::s3(p, info.etag));
                        listed.push(e);
                    }
                    None => {
                        tracing::warn!(path = %p, "image artifact missing; left out of the deleted manifest")
                    }
                }
            }
            let dm = json!({"version": MANIFEST_VERSION, "created": created, "artifacts": listed});
            let body = serde_json::to_vec(&dm).map_err(|e| e.to_string())?;
            st.artifacts
                .put_small(&parse(path)?, bytes::Bytes::from(body))
                .await
                .map_err(|e| artifact_detail(&e))?;
        }
        Step::LinkEtag { record, id, path } => {
            let Some(info) = st
                .artifacts
                .head(&parse(path)?)
                .await
                .map_err(|e| artifact_detail(&e))?
            else {
                return Ok(());
            };
            let etag = info.etag;
            match record {
                Linked::Recipe => {
                    set_link_etag::<Recipe>(st, id, path, &etag, |r| &mut r.link).await
                }
                Linked::DeletedRecipe => {
                    set_link_etag::<Deleted<Recipe>>(st, id, path, &etag, |r| &mut r.record.link)
                        .await
                }
                Linked::Image => set_link_etag::<Image>(st, id, path, &etag, |r| &mut r.link).await,
            }?;
        }
    }
    Ok(())
}

/// Sets the ETag of a record's link if the link is still `path` and the ETag differs.
async fn set_link_etag<T: Record + Clone>(
    st: &AppState,
    id: &str,
    path: &str,
    etag: &str,
    link: fn(&mut T) -> &mut Option<ArtifactLink>,
) -> Result<(), String> {
    let stale =
        |l: &Option<ArtifactLink>| l.as_ref().is_some_and(|l| l.path == path && l.etag != etag);
    let Some(mut cur) = ims_store::get::<T>(&*st.store, id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    if !stale(link(&mut cur.record)) {
        return Ok(());
    }
    update_with::<T, StoreError, _>(&*st.store, id, |mut r| {
        if let Some(l) = link(&mut r).as_mut()
            && l.path == path
        {
            l.etag = etag.to_string();
        }
        Ok(r)
    })
    .await
    .map(drop)
    .map_err(|e| e.to_string())
}
