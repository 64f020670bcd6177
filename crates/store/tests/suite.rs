//! One store test suite, run against both backends.

use ims_core::{Image, PublicKey, Table, Timestamp};
use ims_store::Store as _;
use ims_store::{
    DynStore, Op, StoreError, delete_op, get, insert, insert_op, list, row_of, testing,
    update_with, upsert_op,
};
use std::collections::BTreeMap;

fn key(name: &str) -> PublicKey {
    PublicKey {
        created: Timestamp::now(),
        id: ims_core::new_id(),
        name: name.into(),
        public_key: "ssh-ed25519 AAAA".into(),
    }
}

fn image(name: &str, link: Option<&str>) -> Image {
    Image {
        arch: ims_core::Arch::X86_64,
        created: Timestamp::now(),
        id: ims_core::new_id(),
        link: link.map(|p| ims_core::ArtifactLink::s3(p, "")),
        metadata: BTreeMap::new(),
        name: name.into(),
    }
}

async fn insert_get_list(s: DynStore) {
    let a = key("a");
    let mut b = key("b");
    b.created = Timestamp::parse("2000-01-01T00:00:00Z").unwrap();
    insert(&*s, &a).await.unwrap();
    insert(&*s, &b).await.unwrap();
    let got = get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap();
    assert_eq!(got.record, a);
    assert_eq!(got.version, 1);
    let all = list::<PublicKey>(&*s).await.unwrap();
    let names: Vec<_> = all.iter().map(|v| v.record.name.as_str()).collect();
    assert_eq!(names, ["b", "a"], "oldest first");
    let json: serde_json::Value =
        serde_json::from_slice(&s.list_json(Table::PublicKeys).await.unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([b, a]),
        "the JSON array is in the same order"
    );
    assert_eq!(&s.list_json(Table::Images).await.unwrap()[..], b"[]");
    assert!(get::<PublicKey>(&*s, "nope").await.unwrap().is_none());
    // Stored JSON is the wire JSON.
    let row = s.get(Table::PublicKeys, &a.id).await.unwrap().unwrap();
    assert_eq!(row.data, serde_json::to_string(&a).unwrap());
}

async fn duplicate_insert_conflicts(s: DynStore) {
    let a = key("a");
    insert(&*s, &a).await.unwrap();
    assert!(matches!(insert(&*s, &a).await, Err(StoreError::Conflict)));
    // upsert replaces and bumps the version
    let mut a2 = a.clone();
    a2.name = "renamed".into();
    s.apply(vec![upsert_op(&a2).unwrap()]).await.unwrap();
    let got = get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap();
    assert_eq!(got.record.name, "renamed");
    assert_eq!(got.version, 2);
}

async fn stale_update_conflicts(s: DynStore) {
    let a = key("a");
    insert(&*s, &a).await.unwrap();
    let v1 = get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap();
    let mut x = v1.record.clone();
    x.name = "x".into();
    s.apply(vec![ims_store::update_op(&x, v1.version).unwrap()])
        .await
        .unwrap();
    let mut y = v1.record.clone();
    y.name = "y".into();
    let r = s
        .apply(vec![ims_store::update_op(&y, v1.version).unwrap()])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)));
    assert_eq!(
        get::<PublicKey>(&*s, &a.id)
            .await
            .unwrap()
            .unwrap()
            .record
            .name,
        "x"
    );
    // a versioned delete at a stale version conflicts too
    assert!(matches!(
        s.apply(vec![delete_op(&v1)]).await,
        Err(StoreError::Conflict)
    ));
}

async fn batches_are_atomic(s: DynStore) {
    let a = key("a");
    let b = key("b");
    let r = s
        .apply(vec![
            insert_op(&a).unwrap(),
            Op::Delete {
                table: Table::PublicKeys,
                id: "missing".into(),
                version: None,
            },
            insert_op(&b).unwrap(),
        ])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)));
    assert!(
        list::<PublicKey>(&*s).await.unwrap().is_empty(),
        "nothing half-applied"
    );
    // a move between tables in one batch
    insert(&*s, &a).await.unwrap();
    let cur = get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap();
    let d = ims_core::Deleted {
        record: a.clone(),
        deleted: Timestamp::now(),
    };
    s.apply(vec![delete_op(&cur), insert_op(&d).unwrap()])
        .await
        .unwrap();
    assert!(get::<PublicKey>(&*s, &a.id).await.unwrap().is_none());
    let back = get::<ims_core::DeletedPublicKey>(&*s, &a.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.record, d);
    s.apply(vec![Op::DeleteAll(Table::DeletedPublicKeys)])
        .await
        .unwrap();
    assert!(s.list(Table::DeletedPublicKeys).await.unwrap().is_empty());
}

async fn link_lookup(s: DynStore) {
    let a = image("a", Some("s3://boot-images/a/manifest.json"));
    let b = image("b", None);
    insert(&*s, &a).await.unwrap();
    insert(&*s, &b).await.unwrap();
    assert!(
        s.link_in_use(Table::Images, "s3://boot-images/a/manifest.json", None)
            .await
            .unwrap()
    );
    assert!(
        !s.link_in_use(
            Table::Images,
            "s3://boot-images/a/manifest.json",
            Some(&a.id)
        )
        .await
        .unwrap()
    );
    assert!(
        !s.link_in_use(Table::Images, "s3://x/y", None)
            .await
            .unwrap()
    );
    // A link belongs to one record: the database refuses a second one.
    let dup = image("dup", Some("s3://boot-images/a/manifest.json"));
    assert!(matches!(insert(&*s, &dup).await, Err(StoreError::Conflict)));
    let row = row_of(&a).unwrap();
    assert_eq!(
        row.link_path.as_deref(),
        Some("s3://boot-images/a/manifest.json")
    );
}

/// Many concurrent read-modify-writes of one record lose nothing.
async fn concurrent_updates_lose_nothing(s: DynStore, other: DynStore) {
    let img = image("counter", None);
    insert(&*s, &img).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let st = if i % 2 == 0 { s.clone() } else { other.clone() };
        let id = img.id.clone();
        tasks.push(tokio::spawn(async move {
            update_with::<Image, StoreError, _>(&*st, &id, |mut r| {
                r.metadata.insert(format!("k{i:02}"), i.to_string());
                Ok(r)
            })
            .await
            .unwrap()
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = get::<Image>(&*s, &img.id).await.unwrap().unwrap();
    assert_eq!(got.record.metadata.len(), 40);
    assert_eq!(got.version, 41);
}

/// A transaction taken in batches (`ims migrate import`) is all or nothing, and once committed it
/// is what every read sees, the collection array included.
async fn batched_transactions(s: DynStore) {
    let a = key("a");
    let mut b = key("b");
    b.created = Timestamp::parse("2000-01-01T00:00:00Z").unwrap();
    // Loaded before the transaction: what it commits must replace what was cached.
    assert_eq!(&s.list_json(Table::PublicKeys).await.unwrap()[..], b"[]");
    {
        let mut t = s.begin().await.unwrap();
        t.apply(vec![insert_op(&a).unwrap()]).await.unwrap();
        t.apply(vec![insert_op(&b).unwrap()]).await.unwrap();
        // dropped without commit
    }
    assert!(list::<PublicKey>(&*s).await.unwrap().is_empty());
    {
        let mut t = s.begin().await.unwrap();
        t.apply(vec![insert_op(&a).unwrap()]).await.unwrap();
        let dup = t.apply(vec![insert_op(&a).unwrap()]).await;
        assert!(matches!(dup, Err(StoreError::Conflict)), "{dup:?}");
    }
    assert!(list::<PublicKey>(&*s).await.unwrap().is_empty());
    assert_eq!(&s.list_json(Table::PublicKeys).await.unwrap()[..], b"[]");
    let mut t = s.begin().await.unwrap();
    t.apply(vec![insert_op(&a).unwrap()]).await.unwrap();
    t.apply(vec![insert_op(&b).unwrap()]).await.unwrap();
    t.commit().await.unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&s.list_json(Table::PublicKeys).await.unwrap()).unwrap();
    assert_eq!(json, serde_json::json!([b, a]));
    assert_eq!(
        get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap().record,
        a
    );
    // Writes after the transaction are mirrored as before.
    insert(&*s, &key("c")).await.unwrap();
    assert_eq!(list::<PublicKey>(&*s).await.unwrap().len(), 3);
}

/// A collection larger than one streamed chunk (PostgreSQL) or one rendered piece (embedded) is
/// one valid array with every record once, in list order.
async fn large_collections_are_whole(s: DynStore) {
    let keys: Vec<_> = (0..1500)
        .map(|i| {
            let mut k = key(&format!("k{i:04}-{}", "x".repeat(200)));
            k.created =
                Timestamp::parse(&format!("2020-01-01T00:{:02}:{:02}Z", i / 60 % 60, i % 60))
                    .unwrap();
            k
        })
        .collect();
    s.apply(keys.iter().map(|k| insert_op(k).unwrap()).collect())
        .await
        .unwrap();
    let body = s.list_json(Table::PublicKeys).await.unwrap();
    assert!(body.len() > 256 * 1024, "{} bytes", body.len());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let listed: Vec<_> = list::<PublicKey>(&*s)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.record)
        .collect();
    assert_eq!(listed.len(), 1500);
    assert_eq!(v, serde_json::json!(listed));
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, url) = testing::sqlite_url();
                    let s = ims_store::open(&url).await.unwrap();
                    assert_eq!(s.engine(), "sqlite");
                    suite!(@call $name, s, url);
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if testing::skip_postgres() { return; }
                    let url = testing::postgres_url().await;
                    let s = ims_store::open(&url).await.unwrap();
                    assert_eq!(s.engine(), "postgres");
                    suite!(@call $name, s, url);
                }
            )*
        }
    };
    (@call concurrent_updates_lose_nothing, $s:ident, $url:ident) => {{
        // PostgreSQL: a second, independent connection pool, like a second `ims serve` process.
        // SQLite belongs to one process (it is locked), so there the writers share the store.
        let other = if $s.engine() == "postgres" {
            ims_store::open(&$url).await.unwrap()
        } else {
            $s.clone()
        };
        super::concurrent_updates_lose_nothing($s, other).await
    }};
    (@call $name:ident, $s:ident, $url:ident) => {{ let _ = &$url; super::$name($s).await }};
}

suite!(
    insert_get_list,
    duplicate_insert_conflicts,
    stale_update_conflicts,
    batches_are_atomic,
    link_lookup,
    concurrent_updates_lose_nothing,
    batched_transactions,
    large_collections_are_whole,
);

#[tokio::test]
async fn bad_url_is_a_clear_error() {
    let e = ims_store::open("mysql://x").await.err().unwrap();
    assert!(e.to_string().contains("unsupported database URL"));
}

/// The embedded store keeps tables in memory and in step with every write.
async fn cache_coherence(s: DynStore) {
    let a = key("a");
    insert(&*s, &a).await.unwrap();
    let first = s.list_json(Table::PublicKeys).await.unwrap();
    let second = s.list_json(Table::PublicKeys).await.unwrap();
    assert_eq!(first, second);
    let b = key("b");
    insert(&*s, &b).await.unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&s.list_json(Table::PublicKeys).await.unwrap()).unwrap();
    assert_eq!(v, serde_json::json!([a, b]), "a write is visible at once");
    // a failed write changes nothing
    assert!(insert(&*s, &b).await.is_err());
    // versioned update, upsert and delete are mirrored with the same versions as the database
    let cur = get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap();
    let mut a2 = a.clone();
    a2.name = "a2".into();
    s.apply(vec![ims_store::update_op(&a2, cur.version).unwrap()])
        .await
        .unwrap();
    let got = get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap();
    assert_eq!((got.record.name.as_str(), got.version), ("a2", 2));
    s.apply(vec![upsert_op(&a).unwrap()]).await.unwrap();
    assert_eq!(
        get::<PublicKey>(&*s, &a.id).await.unwrap().unwrap().version,
        3
    );
    let stale = ims_store::update_op(&a2, 2).unwrap();
    assert!(matches!(
        s.apply(vec![stale]).await,
        Err(StoreError::Conflict)
    ));
    s.apply(vec![delete_op(
        &get::<PublicKey>(&*s, &b.id).await.unwrap().unwrap(),
    )])
    .await
    .unwrap();
    assert!(get::<PublicKey>(&*s, &b.id).await.unwrap().is_none());
    let v: serde_json::Value =
        serde_json::from_slice(&s.list_json(Table::PublicKeys).await.unwrap()).unwrap();
    assert_eq!(v, serde_json::json!([a]));
    s.apply(vec![Op::DeleteAll(Table::PublicKeys)])
        .await
        .unwrap();
    assert_eq!(&s.list_json(Table::PublicKeys).await.unwrap()[..], b"[]");
    assert_eq!(&s.list_json(Table::Images).await.unwrap()[..], b"[]");
}

/// The cache agrees with the database it mirrors: compare with a second, uncached store.
#[tokio::test]
async fn sqlite_cache_matches_database() {
    let (_dir, url) = testing::sqlite_url();
    let s = ims_store::open(&url).await.unwrap();
    cache_coherence(s.clone()).await;
    for i in 0..5 {
        insert(&*s, &key(&format!("k{i}"))).await.unwrap();
    }
    let raw =
        ims_store::SqliteStore::open(std::path::Path::new(url.trim_start_matches("sqlite://")))
            .await
            .unwrap();
    assert_eq!(
        s.list_json(Table::PublicKeys).await.unwrap(),
        raw.list_json(Table::PublicKeys).await.unwrap()
    );
    for r in raw.list(Table::PublicKeys).await.unwrap() {
        assert_eq!(s.get(Table::PublicKeys, &r.id).await.unwrap(), Some(r));
    }
}

/// A table over the budget is served by the database, correctly.
#[tokio::test]
async fn sqlite_cache_budget() {
    let (dir, _url) = testing::sqlite_url();
    let inner = ims_store::SqliteStore::open(&dir.path().join("b.db"))
        .await
        .unwrap();
    let s: DynStore = std::sync::Arc::new(ims_store::Cached::with_budget(inner, 300));
    cache_coherence(s.clone()).await;
    for i in 0..10 {
        insert(&*s, &key(&format!("k{i}"))).await.unwrap();
    }
    let v: serde_json::Value =
        serde_json::from_slice(&s.list_json(Table::PublicKeys).await.unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 10);
}

/// Writes whose callers go away at any point (a client that disconnects mid-request) leave the
/// cache in step with the database: each write is either fully done and mirrored or not done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cache_survives_cancelled_writes() {
    let (_dir, url) = testing::sqlite_url();
    let s = ims_store::open(&url).await.unwrap();
    let img = image("cancelled", None);
    insert(&*s, &img).await.unwrap();
    for i in 0..1000usize {
        let st = s.clone();
        let id = img.id.clone();
        let mut f = Box::pin(async move {
            update_with::<Image, StoreError, _>(&*st, &id, |mut r| {
                r.metadata.insert(format!("k{i:04}"), i.to_string());
                Ok(r)
            })
            .await
        });
        // Let it run a varying number of steps, then drop it (cancel).
        for _ in 0..(i % 40) {
            if futures::poll!(f.as_mut()).is_ready() {
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(f);
    }
    // Later updates succeed (the cached version is the stored one), and cache and database agree.
    update_with::<Image, StoreError, _>(&*s, &img.id, |mut r| {
        r.name = "after".into();
        Ok(r)
    })
    .await
    .unwrap()
    .unwrap();
    let raw =
        ims_store::SqliteStore::open(std::path::Path::new(url.trim_start_matches("sqlite://")))
            .await
            .unwrap();
    assert_eq!(
        s.get(Table::Images, &img.id).await.unwrap(),
        raw.get(Table::Images, &img.id).await.unwrap()
    );
}

/// Lists while records change: every array is whole and valid, single reads see each write at
/// once, and in the end the cache (records re-pointed into rendered arrays) equals the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cache_lists_during_writes() {
    let (_dir, url) = testing::sqlite_url();
    let s = ims_store::open(&url).await.unwrap();
    // Enough records for several rendered pieces (ims_store::cache::PIECE records each).
    let keys: Vec<_> = (0..1200).map(|i| key(&format!("k{i}"))).collect();
    s.apply(keys.iter().map(|k| insert_op(k).unwrap()).collect())
        .await
        .unwrap();
    let listers: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..30 {
                    let body = s.list_json(Table::PublicKeys).await.unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert!(v.as_array().unwrap().len() >= 1100, "whole arrays only");
                }
            })
        })
        .collect();
    let mut kept = Vec::new();
    for (n, v) in list::<PublicKey>(&*s)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        match n % 3 {
            0 if n % 9 == 0 || n > 1000 => {
                let mut r = v.record.clone();
                r.name = format!("{}-renamed-with-a-longer-name", r.name);
                s.apply(vec![ims_store::update_op(&r, v.version).unwrap()])
                    .await
                    .unwrap();
                let got = get::<PublicKey>(&*s, &r.id).await.unwrap().unwrap();
                assert_eq!(got.record, r, "a write is visible at once");
                kept.push(r);
            }
            1 if !(150..=1100).contains(&n) => s.apply(vec![delete_op(&v)]).await.unwrap(),
            _ => kept.push(v.record),
        }
        if n % 50 == 0 {
            let fresh = key(&format!("new{n}"));
            insert(&*s, &fresh).await.unwrap();
            kept.push(fresh);
        }
    }
    for l in listers {
        l.await.unwrap();
    }
    // Appends that make the last piece grow past twice its size (it is split when rendered).
    let more: Vec<_> = (0..600).map(|i| key(&format!("more{i}"))).collect();
    s.apply(more.iter().map(|k| insert_op(k).unwrap()).collect())
        .await
        .unwrap();
    kept.extend(more);
    let _ = s.list_json(Table::PublicKeys).await.unwrap();
    let last = key("last");
    insert(&*s, &last).await.unwrap();
    kept.push(last);
    s.apply(vec![delete_op(
        &get::<PublicKey>(&*s, &kept[0].id).await.unwrap().unwrap(),
    )])
    .await
    .unwrap();
    kept.remove(0);
    kept.sort_by(|a, b| (a.created.to_wire(), &a.id).cmp(&(b.created.to_wire(), &b.id)));
    let v: serde_json::Value =
        serde_json::from_slice(&s.list_json(Table::PublicKeys).await.unwrap()).unwrap();
    assert_eq!(v, serde_json::json!(kept));
    let raw =
        ims_store::SqliteStore::open(std::path::Path::new(url.trim_start_matches("sqlite://")))
            .await
            .unwrap();
    assert_eq!(
        s.list_json(Table::PublicKeys).await.unwrap(),
        raw.list_json(Table::PublicKeys).await.unwrap()
    );
    for r in raw.list(Table::PublicKeys).await.unwrap() {
        assert_eq!(s.get(Table::PublicKeys, &r.id).await.unwrap(), Some(r));
    }
}
