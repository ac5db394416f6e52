//! The replay window's store against the real PostgreSQL (`./deploy.sh
//! dev-up`): ids written by one gateway process are there for the next,
//! ids an older gateway wrote one row per id are carried over by the
//! migration to one row per batch, and expired hours of batches are
//! dropped as partitions.

use fleetward_gateway::audit::connect_pool;
use fleetward_gateway::replay_store::{ReplayStore, purge};

mod common;
use common::{drop_db, migrated_up_to, scratch_db};

fn histogram() -> prometheus::Histogram {
    prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap()
}

fn sorted(mut v: Vec<(String, String, i64)>) -> Vec<(String, String, i64)> {
    v.sort();
    v
}

async fn remembered(url: &str, ns: &str, gw: &str, now: i64) -> Vec<(String, String, i64)> {
    let pool = connect_pool(url).await.expect("pool");
    let (_, ids) = ReplayStore::open(pool.clone(), ns, gw, now, histogram())
        .await
        .expect("open");
    pool.close().await;
    sorted(
        ids.into_iter()
            .map(|r| (r.device_id, r.message_id, r.expires))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_ids_outlive_the_process_and_expired_hours_are_dropped() {
    let (admin, db, url) = scratch_db("fw_replay").await;
    let pool = connect_pool(&url).await.expect("pool");
    let (mut store, loaded) = ReplayStore::open(pool.clone(), "ns", "gw", 1_000, histogram())
        .await
        .unwrap();
    assert!(loaded.is_empty());
    // Two group commits: the first waits for its write, the second batch
    // holds a redelivered id (stored twice, loaded once) and a later expiry.
    store.record("d1", "m1", 1_100).await;
    let second = [
        store.record("d1", "m2", 1_100),
        store.record("d2", "m1", 8_000),
        store.record("d1", "m1", 1_100),
    ];
    futures::future::join_all(second).await;
    // Another gateway's ids are not this one's.
    let (mut other, _) = ReplayStore::open(pool.clone(), "ns", "gw-2", 1_000, histogram())
        .await
        .unwrap();
    other.record("d9", "m9", 5_000).await;
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway_replay_batches")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        batches >= 2,
        "ids are written one row per batch, not in one row of the process's lifetime"
    );

    let id = |d: &str, m: &str, e: i64| (d.to_string(), m.to_string(), e);
    let all = vec![
        id("d1", "m1", 1_100),
        id("d1", "m1", 1_100),
        id("d1", "m2", 1_100),
        id("d2", "m1", 8_000),
    ];
    assert_eq!(remembered(&url, "ns", "gw", 1_000).await, all);
    // Past an id's expiry it is not loaded, though its batch still holds a live id.
    assert_eq!(remembered(&url, "ns", "gw", 1_500).await, vec![id("d2", "m1", 8_000)]);

    // Batches are kept in hours of their last expiry. At 3,000 the first
    // hour still holds an id of its window (d1/m1 ran to 1,100, but the
    // hour could hold one to 3,599): nothing goes.
    assert_eq!(purge(&pool, 3_000).await.unwrap(), 0);
    // At 3,600 every id of the first hour has expired: it goes whole (the
    // batches of both gateways in it), by dropping a partition.
    let purged = purge(&pool, 3_600).await.unwrap();
    assert_eq!(purged, 1);
    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT gateway, last_expires FROM gateway_replay_batches ORDER BY gateway, last_expires")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, vec![("gw".to_string(), 8_000), ("gw-2".to_string(), 5_000)]);
    // And new ids still land, in an hour made on demand.
    store.record("d3", "m3", 20_000).await;
    assert_eq!(remembered(&url, "ns", "gw", 10_000).await, vec![id("d3", "m3", 20_000)]);

    pool.close().await;
    drop_db(admin, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_the_one_row_per_id_table_are_carried_over_on_upgrade() {
    let (admin, db, url) = scratch_db("fw_replay_up").await;
    // The database as a gateway before the batch table left it.
    let pool = migrated_up_to(&url, 2).await;
    sqlx::query(
        "INSERT INTO gateway_replay (namespace, gateway, device_id, message_id, expires_at) VALUES \
         ('ns', 'gw', 'd1', 'old-1', 3000), ('ns', 'gw', 'd2', 'old-2', 900), ('ns', 'gw-b', 'd3', 'old-3', 3000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // The new gateway migrates and loads what the old one recorded.
    let id = |d: &str, m: &str, e: i64| (d.to_string(), m.to_string(), e);
    assert_eq!(
        remembered(&url, "ns", "gw", 1_000).await,
        vec![id("d1", "old-1", 3_000)]
    );
    assert_eq!(
        remembered(&url, "ns", "gw-b", 1_000).await,
        vec![id("d3", "old-3", 3_000)]
    );
    let pool = connect_pool(&url).await.unwrap();
    let old_table: Option<String> = sqlx::query_scalar("SELECT to_regclass('gateway_replay')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(old_table, None, "the one-row-per-id table is gone");
    pool.close().await;
    drop_db(admin, &db).await;
}
