//! The audit database against the real PostgreSQL (`./deploy.sh dev-up`):
//! gateways starting together against a database that has never seen one
//! all come up (a plain CREATE SCHEMA IF NOT EXISTS raced, and one of them
//! exited with a duplicate key in pg_namespace).

use fleetward_gateway::audit::{SCHEMA, connect_pool};
use fleetward_testkit::{env, rand_u32};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_starting_at_once_on_a_new_database_all_migrate() {
    let url = env("DATABASE_URL");
    let admin_opts: PgConnectOptions = url.parse().expect("DATABASE_URL");
    let mut admin = admin_opts
        .connect()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL is not reachable ({e}); run `./deploy.sh dev-up`"));
    let db = format!("fw_audit_race_{:08x}", rand_u32());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .expect("create a scratch database");
    let db_url = admin_opts.clone().database(&db).to_url_lossy().to_string();

    // Hold back every schema creation (inserts into pg_namespace wait; reads
    // do not) until all the gateways are past their "does it exist?" check,
    // so they really do start at once rather than by luck of timing.
    let mut holder = admin_opts.clone().database(&db).connect().await.unwrap();
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
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {db}")))
        .execute(&mut admin)
        .await
        .expect("drop the scratch database");
    admin.close().await.ok();
}
