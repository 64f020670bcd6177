//! Leader election through the records store (`ims_server::service::leases`), on both backends.
//! On PostgreSQL every contender has a connection pool of its own, as separate `ims serve`
//! processes do; SQLite belongs to one process, so there the contenders share the store.

use async_trait::async_trait;
use ims_core::{Lease, Table};
use ims_server::service::leases::Leadership;
use ims_store::{Batch, DynStore, Row, RowEdit, RowStream, Store, StoreError, testing};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The time to live used here: attempts every 750 ms.
const TTL: Duration = Duration::from_secs(3);
const EVERY: Duration = Duration::from_millis(750);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);
const NAME: &str = "test-duty";

/// A database and a way to open further stores on it.
struct Db {
    _dir: Option<tempfile::TempDir>,
    first: DynStore,
    url: String,
}

impl Db {
    async fn sqlite() -> Db {
        let (dir, url) = testing::sqlite_url();
        let first = ims_store::open(&url).await.unwrap();
        Db {
            _dir: Some(dir),
            first,
            url,
        }
    }

    async fn postgres() -> Db {
        let url = testing::postgres_url().await;
        let first = ims_store::open(&url).await.unwrap();
        Db {
            _dir: None,
            first,
            url,
        }
    }

    /// A store for one more contender (another process's pool on PostgreSQL).
    async fn store(&self) -> DynStore {
        if self.first.engine() == "postgres" {
            ims_store::open(&self.url).await.unwrap()
        } else {
            self.first.clone()
        }
    }
}

fn contend(store: DynStore) -> Leadership {
    Leadership::start(store, NAME, TTL, false)
}

/// Waits until `cond` holds (polling every 10 ms), at most `limit`; how long it took.
async fn until(limit: Duration, what: &str, cond: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.elapsed()
}

/// Samples every 10 ms for `d`: never two leaders at once.
async fn never_two(d: Duration, all: &[&Leadership]) -> usize {
    let t = Instant::now();
    let mut samples_with_one = 0;
    while t.elapsed() < d {
        let n = all.iter().filter(|l| l.is_leader()).count();
        assert!(n <= 1, "{n} leaders at once");
        samples_with_one += usize::from(n == 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    samples_with_one
}

async fn row(s: &DynStore) -> Option<Lease> {
    ims_store::get::<Lease>(&**s, NAME)
        .await
        .unwrap()
        .map(|v| v.record)
}

/// Two contenders: exactly one leads, steadily, and the row names it.
async fn two_contenders_one_leader(db: Db) {
    let a = contend(db.store().await);
    let b = contend(db.store().await);
    until(EVERY + SLACK, "a leader", || a.is_leader() || b.is_leader()).await;
    let leader = if a.is_leader() { &a } else { &b };
    let holder = leader.holder().to_string();
    // Over two TTLs the leader renews (a renewal slower than an attempt period on a loaded
    // machine may make it step down for a moment), and the other never leads.
    let samples = never_two(TTL * 2, &[&a, &b]).await;
    let total = (TTL * 2).as_millis() / 10;
    assert!(
        samples as u128 >= total / 2,
        "the leader led in only {samples} of ~{total} samples"
    );
    assert!(leader.is_leader());
    assert!(*leader.watch().borrow());
    let other = if a.is_leader() { &b } else { &a };
    assert!(!*other.watch().borrow());
    let r = row(&db.first).await.unwrap();
    assert_eq!(r.holder, holder);
    assert_eq!(r.ttl_ms, TTL.as_millis() as u64);
    assert!(r.expires > r.renewed);
    assert!(
        holder.contains(&format!("/{}/", std::process::id())),
        "{holder}"
    );
    assert_ne!(a.holder(), b.holder());
}

/// The leader releases: the other takes over within one attempt period, and the row names it.
async fn release_hands_over_at_once(db: Db) {
    let a = contend(db.store().await);
    until(EVERY + SLACK, "a leads", || a.is_leader()).await;
    let b = contend(db.store().await);
    // b's first attempt has run: it found a's lease.
    tokio::time::sleep(EVERY).await;
    assert!(!b.is_leader());
    let mut watch_a = a.watch();
    let t = Instant::now();
    a.release().await;
    assert!(!a.is_leader());
    assert!(!*watch_a.borrow_and_update());
    until(EVERY + SLACK, "b takes over", || b.is_leader()).await;
    assert!(
        t.elapsed() < TTL,
        "b took over after {:?}, as after an expiry",
        t.elapsed()
    );
    assert_eq!(row(&db.first).await.unwrap().holder, b.holder());
    // a stays out.
    never_two(EVERY * 2, &[&a, &b]).await;
    assert!(b.is_leader() && !a.is_leader());
}

/// A leader that stops renewing without releasing (a hung process) loses to the other after the
/// lease lapses, with never two leaders at once; it counted itself leader no longer than half a
/// TTL after its last renewal.
async fn hung_leader_loses_after_expiry(db: Db) {
    let a = contend(db.store().await);
    until(EVERY + SLACK, "a leads", || a.is_leader()).await;
    let b = contend(db.store().await);
    tokio::time::sleep(EVERY).await;
    let t = Instant::now();
    a.stop_renewing();
    let mut b_at = None;
    let mut a_until = None;
    while t.elapsed() < TTL * 2 {
        let (la, lb) = (a.is_leader(), b.is_leader());
        assert!(
            !(la && lb),
            "two leaders at once, {:?} after a hung",
            t.elapsed()
        );
        if !la && a_until.is_none() {
            a_until = Some(t.elapsed());
        }
        if lb && b_at.is_none() {
            b_at = Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a_until = a_until.expect("the hung leader never stopped counting itself leader");
    // (The sampling itself may come a little late.)
    assert!(
        a_until <= TTL / 2 + Duration::from_millis(200),
        "a led until {a_until:?} after its last renewal"
    );
    let b_at = b_at.expect("b never took over");
    // Not before the row stayed unchanged for a TTL (a's last renewal was at most one attempt
    // period before it hung), and soon after.
    assert!(b_at >= TTL - EVERY, "b took over too early: {b_at:?}");
    assert!(b_at <= TTL + EVERY + SLACK, "b took over late: {b_at:?}");
    assert!(b.is_leader());
    assert_eq!(row(&db.first).await.unwrap().holder, b.holder());
}

/// A store that fails every call while `broken` (a database that went away), and never answers
/// reads while `hung` (a database that stopped answering).
struct Flaky {
    inner: DynStore,
    broken: AtomicBool,
    hung: AtomicBool,
}

impl Flaky {
    fn new(inner: DynStore) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            broken: AtomicBool::new(false),
            hung: AtomicBool::new(false),
        })
    }

    fn check(&self) -> ims_store::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Database("connection refused (test)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Flaky {
    fn stream(&self, table: Table) -> RowStream {
        self.inner.stream(table)
    }
    async fn get(&self, table: Table, id: &str) -> ims_store::Result<Option<Row>> {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.check()?;
        self.inner.get(table, id).await
    }
    async fn link_in_use(
        &self,
        table: Table,
        path: &str,
        except_id: Option<&str>,
    ) -> ims_store::Result<bool> {
        self.check()?;
        self.inner.link_in_use(table, path, except_id).await
    }
    async fn begin(&self) -> ims_store::Result<Box<dyn Batch + '_>> {
        self.check()?;
        self.inner.begin().await
    }
    async fn modify(
        &self,
        table: Table,
        id: &str,
        edit: &mut RowEdit<'_>,
    ) -> ims_store::Result<bool> {
        self.check()?;
        self.inner.modify(table, id, edit).await
    }
    async fn ping(&self) -> ims_store::Result<()> {
        self.check()?;
        self.inner.ping().await
    }
    async fn ready(&self) -> ims_store::Result<()> {
        self.check()?;
        self.inner.ready().await
    }
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// A leader whose store fails steps down at its next attempt (its watch says so); a short
/// outage is resumed without a hand-over; a long one loses the lease to the other contender.
async fn store_errors_step_down(db: Db) {
    let flaky = Flaky::new(db.store().await);
    let a = contend(flaky.clone());
    until(EVERY + SLACK, "a leads", || a.is_leader()).await;
    let b = contend(db.store().await);
    tokio::time::sleep(EVERY).await;
    let mut watch = a.watch();
    assert!(*watch.borrow_and_update());
    // A short outage: a steps down at its next attempt, and resumes when the store is back.
    flaky.broken.store(true, Ordering::SeqCst);
    until(EVERY + SLACK, "a steps down", || !a.is_leader()).await;
    tokio::time::timeout(SLACK, watch.wait_for(|l| !*l))
        .await
        .expect("the watch did not say a stepped down")
        .unwrap();
    assert!(!b.is_leader());
    flaky.broken.store(false, Ordering::SeqCst);
    until(EVERY + SLACK, "a resumes", || a.is_leader()).await;
    assert!(!b.is_leader(), "b took over a lease renewed in time");
    // A long outage: b takes over once the row has stayed unchanged for a TTL.
    flaky.broken.store(true, Ordering::SeqCst);
    let t = Instant::now();
    until(EVERY + SLACK, "a steps down", || !a.is_leader()).await;
    let took = until(TTL + EVERY + SLACK, "b takes over", || b.is_leader()).await;
    assert!(t.elapsed() >= TTL - EVERY, "b took over after {took:?}");
    // The store comes back: a finds b's lease and stays out.
    flaky.broken.store(false, Ordering::SeqCst);
    never_two(EVERY * 3, &[&a, &b]).await;
    assert!(b.is_leader() && !a.is_leader());
    assert_eq!(row(&db.first).await.unwrap().holder, b.holder());
}

/// A leader whose store stops answering steps down when its attempt times out (a quarter TTL),
/// before its validity would end, and the other contender takes over after the TTL; never two
/// leaders at once.
async fn a_hung_store_steps_down(db: Db) {
    let flaky = Flaky::new(db.store().await);
    let a = contend(flaky.clone());
    until(EVERY + SLACK, "a leads", || a.is_leader()).await;
    let b = contend(db.store().await);
    tokio::time::sleep(EVERY).await;
    let mut watch = a.watch();
    flaky.hung.store(true, Ordering::SeqCst);
    let t = Instant::now();
    tokio::time::timeout(EVERY * 2 + SLACK, watch.wait_for(|l| !*l))
        .await
        .expect("a did not step down")
        .unwrap();
    assert!(!a.is_leader());
    assert!(t.elapsed() <= TTL / 2 + SLACK, "{:?}", t.elapsed());
    while !b.is_leader() {
        assert!(!a.is_leader(), "two leaders at once");
        assert!(t.elapsed() < TTL * 2 + SLACK, "b did not take over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        t.elapsed() >= TTL - EVERY,
        "b took over after {:?}",
        t.elapsed()
    );
    never_two(EVERY * 2, &[&a, &b]).await;
}

/// A release that cannot reach the store still stops leading at once; the lease then lapses and
/// the other contender takes over after the TTL.
async fn release_without_the_store(db: Db) {
    let flaky = Flaky::new(db.store().await);
    let a = contend(flaky.clone());
    until(EVERY + SLACK, "a leads", || a.is_leader()).await;
    let b = contend(db.store().await);
    tokio::time::sleep(EVERY).await;
    flaky.broken.store(true, Ordering::SeqCst);
    let t = Instant::now();
    a.release().await;
    assert!(!a.is_leader() && !*a.watch().borrow());
    assert_eq!(row(&db.first).await.unwrap().holder, a.holder());
    until(TTL * 2 + SLACK, "b takes over", || b.is_leader()).await;
    assert!(
        t.elapsed() >= TTL - EVERY,
        "b took over after {:?}",
        t.elapsed()
    );
    // Released for good: a no longer contends, also once the store is back.
    flaky.broken.store(false, Ordering::SeqCst);
    never_two(EVERY * 2, &[&a, &b]).await;
    assert!(!a.is_leader());
}

/// The embedded store's single process takes the lease at once, also from a holder that crashed
/// (the row it left names another process).
async fn exclusive_takes_a_stale_lease_at_once(db: Db) {
    let a = contend(db.store().await);
    until(EVERY + SLACK, "a leads", || a.is_leader()).await;
    a.stop_renewing();
    let b = Leadership::start(db.store().await, NAME, TTL, true);
    let took = until(EVERY + SLACK, "b takes over", || b.is_leader()).await;
    assert!(took < TTL / 2, "{took:?}");
    assert_eq!(row(&db.first).await.unwrap().holder, b.holder());
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if ims_store::testing::skip_postgres() { return; }
                    super::$name(super::Db::postgres().await).await
                }
            )*
        }
    };
}

both!(
    two_contenders_one_leader,
    release_hands_over_at_once,
    hung_leader_loses_after_expiry,
    store_errors_step_down,
    a_hung_store_steps_down,
    release_without_the_store,
    exclusive_takes_a_stale_lease_at_once,
);
