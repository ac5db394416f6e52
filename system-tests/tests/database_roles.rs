//! The chart's per-workload PostgreSQL roles (helm/fleetward/files/
//! database-roles.sql, run here with psql as the chart's Job runs it)
//! against the real PostgreSQL of the dev services, in a database of the
//! test's own: each workload migrates and writes as its role, over a
//! database an older release made as the admin; and each role, as an
//! attacker holding one workload's credentials would, tries to reach the
//! others' rows, become more, or run a program on the server, and is
//! refused.

use std::path::Path;
use std::process::Command;

use fleetward_billing::db as billing_db;
use fleetward_encryptor::db::{self as encryptor_db, RecordKind, TableName};
use fleetward_gateway::audit;
use fleetward_testkit::{env, unique};
use reqwest::Url;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};

const ROLES_SQL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../helm/fleetward/files/database-roles.sql"
);

/// A database of this test's own on the dev server, dropped at the end.
struct Scratch {
    admin: Url,
    name: String,
}

impl Scratch {
    async fn new() -> Self {
        let admin: Url = env("DATABASE_URL").parse().expect("DATABASE_URL");
        let name = unique("fleetward_roles");
        let mut c = PgConnection::connect(admin.as_str()).await.expect("the dev PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        Self { admin, name }
    }

    fn admin_url(&self) -> String {
        let mut u = self.admin.clone();
        u.set_path(&self.name);
        u.into()
    }

    fn url_as(&self, role: &str, password: &str) -> String {
        let mut u = self.admin.clone();
        u.set_path(&self.name);
        u.set_username(role).unwrap();
        u.set_password(Some(password)).unwrap();
        u.into()
    }

    async fn pool_as(&self, role: &str, password: &str) -> PgPool {
        PgPool::connect(&self.url_as(role, password)).await.unwrap()
    }

    /// The chart's Job: psql as the admin, passwords from the environment.
    fn make_roles(&self, passwords: &Passwords) {
        assert!(Path::new(ROLES_SQL).exists(), "{ROLES_SQL}");
        let out = Command::new("psql")
            .args(["-X", "-q", "-d", &self.admin_url(), "-f", ROLES_SQL])
            .env("FLEETWARD_GATEWAY_PASSWORD", &passwords.gateway)
            .env("FLEETWARD_ENCRYPTOR_PASSWORD", &passwords.encryptor)
            .env("FLEETWARD_BILLING_PASSWORD", &passwords.billing)
            .output()
            .expect("psql (the dev services' PostgreSQL client)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "database-roles.sql failed: {stderr}");
        for p in [&passwords.gateway, &passwords.encryptor, &passwords.billing] {
            assert!(!stderr.contains(p.as_str()), "a password in psql's output: {stderr}");
        }
    }

    async fn drop(self) {
        let mut c = PgConnection::connect(self.admin.as_str()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.name)))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

struct Passwords {
    gateway: String,
    encryptor: String,
    billing: String,
}

impl Passwords {
    /// Each run sets new ones (the roles are the server's, shared by
    /// every database on it), with a quote to show they are passed as data.
    fn new() -> Self {
        Self {
            gateway: unique("gw'pw"),
            encryptor: unique("enc'pw"),
            billing: unique("bill'pw"),
        }
    }
}

/// The roles belong to the server, not to a database: one test at a time
/// sets their passwords.
static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GATEWAY: &str = "fleetward_gateway_app";
const ENCRYPTOR: &str = "fleetward_encryptor_app";
const BILLING: &str = "fleetward_billing_app";

/// Each workload's migrations and a first row, as one of them would.
async fn migrate_and_write(gateway_url: &str, encryptor: &PgPool, billing: &PgPool, stations: &TableName, tag: &str) {
    let gateway = audit::connect_pool(gateway_url).await.expect("gateway migrations");
    // Each workload makes its tables' time partitions as its own role.
    fleetward_gateway::replay_store::partitioned()
        .ensure(&gateway, &[4102444800])
        .await
        .expect("the gateway makes its replay window's hour");
    sqlx::query(
        "INSERT INTO gateway_replay_batches (namespace, gateway, device_ids, message_ids, expires_at, last_expires) \
         VALUES ('fleet', 'edge', ARRAY['meter-1'], ARRAY[$1], ARRAY[4102444800::bigint], 4102444800)",
    )
    .bind(format!("m-{tag}"))
    .execute(&gateway)
    .await
    .expect("the gateway writes its replay window");
    encryptor_db::prepare(encryptor, RecordKind::Stations, stations)
        .await
        .expect("encryptor migrations and station table");
    encryptor_db::prepare(encryptor, RecordKind::Telemetry, &"telemetry".parse().unwrap())
        .await
        .expect("encryptor telemetry table");
    encryptor_db::partitioned(stations)
        .ensure(encryptor, &[chrono::Utc::now().timestamp()])
        .await
        .expect("the encryptor makes this week's station partition");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {stations} (contract_index, number, last_update, key_id, contract_name, name, address, \
         banking, bonus, bike_stands, available_bike_stands, available_bikes, status) \
         VALUES ('c', $1, now(), 'k', 'token', 'token', 'token', false, false, 10, 5, 5, 'OPEN')"
    )))
    .bind(tag)
    .execute(encryptor)
    .await
    .expect("the encryptor writes a station row");
    billing_db::migrate(billing).await.expect("billing migrations");
    let reading = billing_db::Reading {
        namespace: "fleet".into(),
        device_id: "meter-1".into(),
        message_id: format!("r-{tag}"),
        device_time: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        kwh: "1.5".parse().unwrap(),
        reply_to: None,
    };
    assert_eq!(billing_db::insert_readings(billing, &[reading]).await.unwrap(), 1);
}

/// `sql` as `pool`'s role fails with PostgreSQL's permission error (42501)
/// or, for server programs and files, its superuser-only refusal.
async fn refused(pool: &PgPool, who: &str, sql: &str) {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(pool).await {
        Ok(_) => panic!("{who} was allowed: {sql}"),
        Err(sqlx::Error::Database(e)) => {
            let code = e.code().unwrap_or_default();
            assert!(
                code == "42501",
                "{who}: {sql}: expected a permission error, got {code}: {}",
                e.message()
            );
        }
        Err(e) => panic!("{who}: {sql}: {e}"),
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_workload_reaches_only_its_own_tables_as_its_own_role() {
    let _one = ROLES.lock().await;
    let db = Scratch::new().await;
    let stations: TableName = "stations".parse().unwrap();
    let admin = PgPool::connect(&db.admin_url()).await.unwrap();

    // An older release: every workload as the admin, billing's migration
    // record in public.
    let mut legacy = billing_db::migrator();
    legacy.dangerous_set_table_name("_fleetward_billing_migrations");
    legacy
        .run(&admin)
        .await
        .expect("billing migrations as an older release ran them");
    migrate_and_write(&db.admin_url(), &admin, &admin, &stations, "before").await;

    let pw = Passwords::new();
    db.make_roles(&pw);
    // Run again, as every upgrade does: nothing changes, nothing fails.
    db.make_roles(&pw);

    let gateway_url = db.url_as(GATEWAY, &pw.gateway);
    let gateway = db.pool_as(GATEWAY, &pw.gateway).await;
    let encryptor = db.pool_as(ENCRYPTOR, &pw.encryptor).await;
    let billing = db.pool_as(BILLING, &pw.billing).await;

    // Each migrates (nothing left to do) and writes as its role, into the
    // tables the admin made; the encryptor also makes a new feed's table.
    migrate_and_write(&gateway_url, &encryptor, &billing, &stations, "after").await;
    encryptor_db::prepare(&encryptor, RecordKind::Stations, &"new_feed".parse().unwrap())
        .await
        .expect("a new feed's table, made by the encryptor's role");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM fleetward_gateway.gateway_replay_batches").await,
        2
    );
    assert_eq!(count(&admin, "SELECT count(*) FROM public.stations").await, 2);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM fleetward_billing.readings").await,
        2
    );
    // Billing's migration record moved into its schema, every migration
    // still recorded once (none ran again).
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM pg_tables WHERE tablename = '_fleetward_billing_migrations'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM fleetward_billing._fleetward_billing_migrations"
        )
        .await,
        billing_db::migrator().iter().count() as i64
    );

    let attacks: [(&PgPool, &str, &[&str]); 3] = [
        // Billing's credentials: the gateway's replay window (emptied,
        // recorded messages replay after a gateway restart), the station
        // rows, a program on the server, a file on it, more rights.
        (
            &billing,
            "billing",
            &[
                "DELETE FROM fleetward_gateway.gateway_replay_batches",
                "SELECT * FROM fleetward_gateway.gateway_audit",
                "UPDATE public.stations SET number = 'x'",
                "DROP TABLE public.telemetry",
                "COPY (SELECT 1) TO PROGRAM 'id'",
                "SELECT pg_read_file('/etc/passwd')",
                "CREATE ROLE intruder LOGIN SUPERUSER",
                "ALTER ROLE fleetward_billing_app SUPERUSER",
                "GRANT pg_execute_server_program TO fleetward_billing_app",
                // A StationFeed's table not made yet, taken by its name.
                "CREATE TABLE public.stations_paris (x int)",
            ],
        ),
        // The encryptor's: bills and the audit trail.
        (
            &encryptor,
            "encryptor",
            &[
                "SELECT * FROM fleetward_billing.readings",
                "DELETE FROM fleetward_gateway.gateway_audit",
                "COPY public.stations TO '/tmp/stations'",
            ],
        ),
        // The gateway's: the stations, the bills, and the encryptor's
        // function (replaced, it would run as whoever calls it next).
        (
            &gateway,
            "gateway",
            &[
                "SELECT * FROM public.stations",
                "INSERT INTO fleetward_billing.readings SELECT * FROM fleetward_billing.readings",
                "CREATE OR REPLACE FUNCTION public.fleetward_ensure_station_table(tbl text) RETURNS void \
                 LANGUAGE sql AS 'SELECT 1'",
                "CREATE TABLE public.planted (x int)",
            ],
        ),
    ];
    for (pool, who, statements) in attacks {
        for sql in statements {
            refused(pool, who, sql).await;
        }
    }
    // Nothing of it happened.
    assert_eq!(
        count(&admin, "SELECT count(*) FROM fleetward_gateway.gateway_replay_batches").await,
        2
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM public.stations WHERE number = 'x'").await,
        0
    );
    for role in [GATEWAY, ENCRYPTOR, BILLING] {
        let (superuser, create_role, create_db): (bool, bool, bool) =
            sqlx::query_as("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1")
                .bind(role)
                .fetch_one(&admin)
                .await
                .unwrap();
        assert!(!superuser && !create_role && !create_db, "{role}");
    }

    for p in [admin, gateway, encryptor, billing] {
        p.close().await;
    }
    db.drop().await;
}

#[tokio::test]
async fn a_new_install_migrates_from_nothing_as_the_roles() {
    let _one = ROLES.lock().await;
    let db = Scratch::new().await;
    let pw = Passwords::new();
    db.make_roles(&pw);
    let encryptor = db.pool_as(ENCRYPTOR, &pw.encryptor).await;
    let billing = db.pool_as(BILLING, &pw.billing).await;
    let stations: TableName = "stations".parse().unwrap();
    migrate_and_write(&db.url_as(GATEWAY, &pw.gateway), &encryptor, &billing, &stations, "new").await;
    // A wrong password is refused (the roles are not trust-authenticated).
    assert!(PgPool::connect(&db.url_as(BILLING, "wrong")).await.is_err());
    encryptor.close().await;
    billing.close().await;
    db.drop().await;
}
