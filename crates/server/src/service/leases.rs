//! Leader election through the records store: several `ims serve` replicas on one PostgreSQL elect
//! one to run a duty, so that the background work (the job reconciler, the remote executor's
//! passes, the Kubernetes executor's watches) runs once.
//!
//! A lease is a row of the internal `leases` table ([`Lease`]; its id is the duty's name). Every
//! replica runs a [`Leadership`] task that tries, every quarter of the lease's time to live (TTL):
//! * to **insert** the row when there is none (the primary key lets one insert win);
//! * to **renew** it when it holds it: a conditional update at the version it just read;
//! * to **take it over** when the row has not changed for a whole TTL (the holder's, as the row
//!   says) by this replica's own monotonic clock: the holder stopped renewing (it crashed, hangs, or
//!   lost the database). Also a conditional update at the version read, so of several contenders
//!   exactly one wins.
//!
//! **Clock skew.** No wall-clock time is compared across hosts. The holder counts itself leader for
//! half a TTL from the moment it *started* its last successful renewal; a contender waits a whole
//! TTL from the moment it *first read* that renewal's version, which is after the renewal
//! committed. So the old holder has stepped down by its own clock at least half a TTL before anyone
//! can take over, whatever the hosts' wall clocks say (only their rates must agree, within far
//! more than any real clock drifts). The row's times (`renewed`, `expires`) are for people
//! reading the table.
//!
//! **Stepping down.** A store error, or an attempt that does not finish within a quarter TTL, makes
//! this replica not the leader at once (the row may still name it: its next successful renewal
//! resumes without a hand-over, as no one can take the row within a TTL). [`Leadership::is_leader`]
//! checks the validity itself, so a replica whose task stalls stops counting as the leader on time.
//!
//! **Hand-over.** [`Leadership::release`] (at shutdown) deletes the row at the version it holds, so
//! another replica takes over at its next attempt (within a quarter TTL) rather than after a TTL.
//!
//! **The embedded store** (SQLite) belongs to one process (its data directory is locked), so there
//! the lease is always taken at once, also from a holder that crashed before this process started.
//!
//! **Seen by users**: the leader logs `this replica is the leader now (lease …)` and, when it
//! loses the role, `this replica is no longer the leader (lease …)` with the reason; the row names
//! the holder as `<host>/<pid>/<random>`.

use crate::AppState;
use ims_core::{Lease, Timestamp};
use ims_store::{DynStore, StoreError, delete_op, get, insert, update_op};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The lease of the background work: the job reconciler, the remote executor's passes, the
/// Kubernetes executor's watches.
pub const BACKGROUND: &str = "background";

/// This process's holder id: host name, process id and a random part (a restarted process with
/// a recycled pid is another holder).
fn holder_id() -> String {
    let id = ims_core::new_id();
    format!(
        "{}/{}/{}",
        crate::executor::local::hostname(),
        std::process::id(),
        &id[..8]
    )
}

/// This process's part in the election of one lease: a handle on a task that contends for it and
/// renews it. Clones share the task; dropping the last one stops it without releasing the lease
/// (as a crash would: another replica takes over after a TTL); [`Leadership::release`] hands it
/// over at once.
#[derive(Clone)]
pub struct Leadership(Arc<Handle>);

struct Handle {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    store: DynStore,
    name: String,
    holder: String,
    ttl: Duration,
    /// Any holder is taken over at once (the embedded store: one process).
    exclusive: bool,
    /// Until when this process counts as the leader (`None`: it does not).
    until: Mutex<Option<Instant>>,
    leading: watch::Sender<bool>,
}

/// A version of the row as first read by this process.
struct Seen {
    holder: String,
    version: i64,
    since: Instant,
}

impl Leadership {
    /// Contends for the lease `name` with this server's records store and `IMS_LEADER_LEASE`.
    pub fn spawn(st: &AppState, name: &str) -> Leadership {
        Leadership::start(
            st.store.clone(),
            name,
            st.cfg.leader_lease,
            st.store.engine() == "sqlite",
        )
    }

    /// Contends for the lease `name` in `store` with time to live `ttl`; `exclusive`: this process
    /// owns the store alone, so it takes the lease from any holder at once (then one contender per
    /// name in the process: two exclusive ones would take it from each other).
    pub fn start(store: DynStore, name: &str, ttl: Duration, exclusive: bool) -> Leadership {
        let ttl = ttl.max(Duration::from_millis(400));
        let state = Arc::new(State {
            store,
            name: name.to_string(),
            holder: holder_id(),
            ttl,
            exclusive,
            until: Mutex::new(None),
            leading: watch::Sender::new(false),
        });
        let task = tokio::spawn(run(state.clone()));
        Leadership(Arc::new(Handle { state, task }))
    }

    /// Whether this process holds the lease now (and has renewed it recently enough that no other
    /// process can have taken it over).
    pub fn is_leader(&self) -> bool {
        self.0.state.valid()
    }

    /// Follows [`Leadership::is_leader`]: `true` while this process leads (changes are sent as
    /// they happen; a stalled renewal is noticed when its validity ends).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.state.leading.subscribe()
    }

    /// This process's holder id (`<host>/<pid>/<random>`), as the lease's row names it.
    pub fn holder(&self) -> &str {
        &self.0.state.holder
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.0.state.name
    }

    /// Stops contending and gives the lease up if this process holds it (at shutdown), so that
    /// another replica takes over at its next attempt.
    pub async fn release(&self) {
        let st = &self.0.state;
        self.0.task.abort();
        st.stop_leading();
        match get::<Lease>(&*st.store, &st.name).await {
            Ok(Some(v)) if v.record.holder == st.holder => {
                match st.store.apply(vec![delete_op(&v)]).await {
                    Ok(()) => tracing::info!(lease = %st.name, "released the lease"),
                    Err(e) => {
                        tracing::warn!(lease = %st.name, error = %e, "could not release the lease; another replica takes it over when it expires")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(lease = %st.name, error = %e, "could not release the lease; another replica takes it over when it expires")
            }
        }
    }

    /// Stops renewing without giving the lease up or saying so, as a process that hangs: the
    /// lease lapses ([`Leadership::is_leader`] turns false within half a TTL) and another replica
    /// takes it over after a TTL. For tests.
    pub fn stop_renewing(&self) {
        self.0.task.abort();
    }
}

impl State {
    fn valid(&self) -> bool {
        self.until
            .lock()
            .map(|u| u.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }

    fn until(&self) -> Option<Instant> {
        self.until.lock().ok().and_then(|u| *u)
    }

    fn lead(&self, until: Instant) {
        if until <= Instant::now() {
            // The renewal committed, but too late to count on it.
            return self.step_down("the lease was renewed too slowly");
        }
        if let Ok(mut u) = self.until.lock() {
            *u = Some(until);
        }
        self.leading.send_if_modified(|l| {
            let changed = !*l;
            if changed {
                tracing::info!(lease = %self.name, holder = %self.holder, "this replica is the leader now (lease {})", self.name);
            }
            *l = true;
            changed
        });
    }

    /// Not the leader any more, for `why` (logged when it was).
    fn step_down(&self, why: &str) {
        if self.stop_leading() {
            tracing::warn!(lease = %self.name, holder = %self.holder, "this replica is no longer the leader (lease {}): {why}", self.name);
        }
    }

    /// Not the leader any more; whether it was.
    fn stop_leading(&self) -> bool {
        if let Ok(mut u) = self.until.lock() {
            *u = None;
        }
        self.leading.send_replace(false)
    }

    /// The lease as this process writes it now (`acquired`: when it took it).
    fn lease(&self, created: Timestamp, acquired: Timestamp) -> Lease {
        let now = Timestamp::now();
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        Lease {
            id: self.name.clone(),
            created,
            holder: self.holder.clone(),
            acquired,
            renewed: now,
            expires: Timestamp(now.0.checked_add_signed(ttl).unwrap_or(now.0)),
            ttl_ms: self.ttl.as_millis() as u64,
        }
    }

    /// One attempt to take or renew the lease: whether this process holds it now.
    async fn attempt(&self, seen: &mut Option<Seen>) -> Result<bool, StoreError> {
        let now = Instant::now();
        let Some(cur) = get::<Lease>(&*self.store, &self.name).await? else {
            let t = Timestamp::now();
            return match insert(&*self.store, &self.lease(t, t)).await {
                Ok(()) => Ok(true),
                // Another replica inserted it first.
                Err(StoreError::Conflict) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let mine = cur.record.holder == self.holder;
        let since = match seen {
            Some(s) if s.holder == cur.record.holder && s.version == cur.version => s.since,
            _ => {
                *seen = Some(Seen {
                    holder: cur.record.holder.clone(),
                    version: cur.version,
                    since: now,
                });
                now
            }
        };
        // The holder's TTL: what it counts its own validity by.
        let lapsed = now.duration_since(since) >= Duration::from_millis(cur.record.ttl_ms);
        if !(mine || lapsed || self.exclusive) {
            return Ok(false);
        }
        let acquired = if mine {
            cur.record.acquired
        } else {
            Timestamp::now()
        };
        let next = self.lease(cur.record.created, acquired);
        match self.store.apply(vec![update_op(&next, cur.version)?]).await {
            Ok(()) => {
                if !mine {
                    tracing::info!(lease = %self.name, from = %cur.record.holder, "took the lease over from a holder that stopped renewing it");
                }
                Ok(true)
            }
            // Another contender took it first (or the holder renewed it just now).
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The contender's loop: an attempt every quarter TTL, each bounded by a quarter TTL.
async fn run(st: Arc<State>) {
    let every = st.ttl / 4;
    let mut seen = None;
    loop {
        let started = Instant::now();
        let attempt = tokio::time::timeout(every, st.attempt(&mut seen));
        tokio::pin!(attempt);
        let outcome = loop {
            // Step down exactly when the validity ends, even while an attempt still runs.
            let lapse = st.until();
            tokio::select! {
                o = &mut attempt => break o,
                _ = tokio::time::sleep_until(lapse.unwrap_or(started + every).into()), if lapse.is_some() => {
                    st.step_down("the lease was not renewed in time");
                }
            }
        };
        match outcome {
            // Valid for half a TTL from the start of this attempt (see the module's documentation).
            Ok(Ok(true)) => st.lead(started + st.ttl / 2),
            Ok(Ok(false)) => st.step_down("another replica holds the lease"),
            Ok(Err(e)) => st.step_down(&format!("the records store failed: {e}")),
            Err(_) => st.step_down(&format!(
                "the records store did not answer within {} ms",
                every.as_millis()
            )),
        }
        tokio::time::sleep_until((started + every).into()).await;
    }
}
