//! The audit database against the real PostgreSQL (`./deploy.sh dev-up`):
//! gateways starting together against a database that has never seen one
//! all come up (a plain CREATE SCHEMA IF NOT EXISTS raced, and one of them
//! exited with a duplicate key in pg_namespace); an older gateway's audit
//! trail survives partitioning, and each gateway's retention is its own.

use fleetward_gateway::audit::{self, SCHEMA, connect_pool};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

mod common;
use common::{drop_db, migrated_up_to, scratch_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_starting_at_once_on_a_new_database_all_migrate() {
    let (admin, db, db_url) = scratch_db("fw_audit_race").await;
    let db_opts: PgConnectOptions = db_url.parse().unwrap();

    // Hold back every schema creation (inserts into pg_namespace wait; reads
    // do not) until all the gateways are past their "does it exist?" check,
    // so they really do start at once rather than by luck of timing.
    let mut holder = db_opts.connect().await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE pg_catalog.pg_namespace IN EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock pg_namespace (the dev database user is its owner)");
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let db_url = db_url.clone();
            tokio::spawn(async move { connect_pool(&db_url).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.ok();
    let mut failures = Vec::new();
    let mut pools = Vec::new();
    for start in starts {
        match start.await.expect("task") {
            Ok(pool) => pools.push(pool),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "gateways failed to start: {failures:#?}");

    // Each pool sees the audit table in the gateway's schema, migrated once.
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pools[0])
        .await
        .expect("migration history in the gateway schema");
    assert_eq!(applied, std::fs::read_dir("migrations").unwrap().count() as i64);
    for pool in &pools {
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('gateway_audit')::text")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(table.as_deref(), Some("gateway_audit"));
    }
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&pools[0])
        .await
        .unwrap();
    assert_eq!(schema.as_deref(), Some(SCHEMA));

    for pool in pools {
        pool.close().await;
    }
    drop_db(admin, &db).await;
}

/// The gateway's audit trail as an older gateway left it (one plain
/// table): the upgrade keeps every row, each gateway's in a partition of
/// its own, and a gateway's retention drops only its own expired weeks —
/// by dropping partitions — while new events still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_survive_the_upgrade_and_each_gateway_keeps_its_own_retention() {
    let (admin, db, url) = scratch_db("fw_audit_retention").await;
    // The migrations before partitioning.
    let pool = migrated_up_to(&url, 3).await;
    // Gateway a: events 60 and 40 days old. Gateway b: 60 days and 2 days.
    sqlx::query(
        "INSERT INTO gateway_audit (at, namespace, gateway, device_id, event) VALUES \
         (now() - interval '60 days', 'ns', 'a', 'd1', 'rejected'), \
         (now() - interval '40 days', 'ns', 'a', 'd1', 'rejected'), \
         (now() - interval '60 days', 'ns', 'b', 'd2', 'rejected'), \
         (now() - interval '2 days', 'ns', 'b', 'd2', 'command_sent')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // The new gateway migrates: nothing is lost.
    let pool = connect_pool(&url).await.unwrap();
    let rows = |gw: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM gateway_audit WHERE gateway = $1")
                .bind(gw)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!((rows("a").await, rows("b").await), (2, 2));
    let kind: String = sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'gateway_audit'::regclass")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kind, "p", "partitioned");

    // A 30-day retention on both: a's old rows all expired, so its old
    // partition goes; b's old partition still holds a 2-day-old event, so
    // it stays whole.
    let now = chrono::Utc::now().timestamp();
    let a = audit::partitioned(&pool, "ns", "a").await.unwrap();
    let b = audit::partitioned(&pool, "ns", "b").await.unwrap();
    let month = 30 * fleetward_partitions::DAY;
    assert_eq!(a.maintain(&pool, now, month, 0).await.unwrap().dropped.len(), 1);
    assert!(b.maintain(&pool, now, month, 0).await.unwrap().dropped.is_empty());
    assert_eq!((rows("a").await, rows("b").await), (0, 2));

    // New events land through the gateway's writer (its first of a week
    // makes the week), for a gateway the database has never seen too.
    let metrics = std::sync::Arc::new(fleetward_gateway::metrics::Metrics::default());
    for gw in ["a", "c"] {
        let audit = audit::Audit::with_pool(pool.clone(), "ns", gw, metrics.clone());
        audit.record(audit::AuditEvent::new("key_reload"));
    }
    fleetward_testkit::wait_until("the new events stored", 30, || async {
        rows("a").await == 1 && rows("c").await == 1
    })
    .await;
    pool.close().await;
    drop_db(admin, &db).await;
}
