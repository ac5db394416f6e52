//! A scratch database per test, on the PostgreSQL of `./deploy.sh dev-up`.

use fleetward_gateway::audit::SCHEMA;
use fleetward_testkit::{env, rand_u32};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

/// A database of its own: an admin connection, its name and its URL.
/// `drop_db` removes it.
pub async fn scratch_db(prefix: &str) -> (PgConnection, String, String) {
    let admin_opts: PgConnectOptions = env("DATABASE_URL").parse().expect("DATABASE_URL");
    let mut admin = admin_opts
        .connect()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL is not reachable ({e}); run `./deploy.sh dev-up`"));
    let db = format!("{prefix}_{:08x}", rand_u32());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .expect("create a scratch database");
    let url = admin_opts.database(&db).to_url_lossy().to_string();
    (admin, db, url)
}

pub async fn drop_db(mut admin: PgConnection, db: &str) {
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .expect("drop the scratch database");
    admin.close().await.ok();
}

/// The database at `url` as an older gateway left it: the gateway's
/// migrations up to number `last` only, on a one-connection pool in the
/// gateway's schema (to write that release's rows with).
pub async fn migrated_up_to(url: &str, last: i64) -> PgPool {
    let opts: PgConnectOptions = url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.options([("search_path", SCHEMA)]))
        .await
        .unwrap();
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.create_schema(SCHEMA);
    let old: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= last)
        .cloned()
        .collect();
    migrator.migrations = old.into();
    migrator
        .run(&pool)
        .await
        .unwrap_or_else(|e| panic!("the migrations up to {last}: {e}"));
    pool
}
