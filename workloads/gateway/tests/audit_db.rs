//! The audit database against the real PostgreSQL (`./deploy.sh dev-up`):
//! gateways starting together against a database that has never seen one
//! all come up (a plain CREATE SCHEMA IF NOT EXISTS raced, and one of them
//! exited with a duplicate key in pg_namespace).

use fleetward_gateway::audit::{SCHEMA, connect_pool};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

mod common;
use common::{drop_db, scratch_db};

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
