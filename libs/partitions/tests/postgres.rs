//! Against the dev services' real PostgreSQL (DATABASE_URL): partitions are
//! made for the rows written, expired ones are dropped with their rows,
//! unexpired rows stay, and new rows still land after a drop.

use fleetward_partitions::{DAY, HOUR, Key, Partitioned, WEEK};
use fleetward_testkit::{env, unique};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&env("DATABASE_URL"))
        .await
        .expect("the dev PostgreSQL")
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn old_partitions_go_unexpired_rows_stay_and_new_rows_land() {
    let pool = pool().await;
    let name = unique("retention_ts");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (id text NOT NULL, at timestamptz NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let t = Partitioned::new(None, &name, Key::Timestamptz, WEEK);
    let now: i64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::bigint")
        .fetch_one(&pool)
        .await
        .unwrap();

    // Rows 60, 20 and 2 days old and one of now: four weeks to make.
    let ages = [60 * DAY, 20 * DAY, 2 * DAY, 0];
    let times: Vec<i64> = ages.iter().map(|a| now - a).collect();
    assert!(t.ensure(&pool, &times).await.unwrap() >= 3);
    assert_eq!(t.ensure(&pool, &times).await.unwrap(), 0, "made once");
    for (i, at) in times.iter().enumerate() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {name} VALUES ($1, to_timestamp($2))"
        )))
        .bind(i.to_string())
        .bind(*at as f64)
        .execute(&pool)
        .await
        .unwrap();
    }
    // Without ensure, a row of a week with no partition is refused: the
    // writers must call it (and do).
    let far = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {name} VALUES ('far', now() + interval '300 days')"
    )))
    .execute(&pool)
    .await;
    assert!(far.is_err(), "no partition, no row");

    // A 30-day retention: the 60-day-old row's week goes, the 20-day-old
    // one stays (its partition still holds an unexpired row).
    let before = t.parts(&pool).await.unwrap().len();
    let done = t.maintain(&pool, now, 30 * DAY, WEEK).await.unwrap();
    assert_eq!(done.dropped.len(), 1, "{done:?}");
    assert_eq!(count(&pool, &name).await, 3);
    let left: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT id FROM {name} ORDER BY id")))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["1", "2", "3"]);
    let parts = t.parts(&pool).await.unwrap();
    assert!(parts.len() >= before - 1 + done.created);
    assert!(parts.iter().all(|p| p.hi.unwrap() > now - 30 * DAY), "{parts:?}");
    // The next week exists already: a write next week needs no DDL.
    assert!(
        parts
            .iter()
            .any(|p| p.lo.unwrap() <= now + WEEK && now + WEEK < p.hi.unwrap())
    );

    // New rows still land, in an existing week and after a second pass.
    t.maintain(&pool, now, 30 * DAY, WEEK).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO {name} VALUES ('new', now())")))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(count(&pool, &name).await, 4);

    // A one-day retention leaves only the weeks holding the last day.
    let done = t.maintain(&pool, now, DAY, WEEK).await.unwrap();
    assert!(!done.dropped.is_empty());
    let kept = count(&pool, &name).await;
    assert!(kept >= 2, "the rows of now stay: {kept}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_from_before_partitioning_is_kept_whole_until_its_newest_row_expires() {
    let pool = pool().await;
    let name = unique("retention_legacy");
    let legacy = format!("{name}_legacy");
    let now: i64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::bigint")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Unix-seconds keys, hour-wide partitions (the replay window's shape);
    // the old rows attached as one partition ending in the middle of an hour.
    let legacy_end = now - 10 * 60;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (id text NOT NULL, expires bigint NOT NULL) PARTITION BY RANGE (expires); \
         CREATE TABLE {legacy} PARTITION OF {name} FOR VALUES FROM (MINVALUE) TO ({legacy_end}); \
         INSERT INTO {name} VALUES ('old', {}), ('last', {})",
        now - 5 * DAY,
        legacy_end - 1
    )))
    .execute(&pool)
    .await
    .unwrap();
    let t = Partitioned::new(None, &name, Key::EpochSeconds, HOUR);
    let parts = t.parts(&pool).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!((parts[0].lo, parts[0].hi), (None, Some(legacy_end)));

    // The next partition starts where the old table ends (the rest of
    // that hour: the first time the old table does not cover).
    t.ensure(&pool, &[legacy_end]).await.unwrap();
    let parts = t.parts(&pool).await.unwrap();
    let next = parts.iter().find(|p| p.name != legacy).unwrap();
    assert_eq!(next.lo, Some(legacy_end));

    // Its newest row (10 minutes old) is unexpired at a 20-minute
    // retention, its oldest (5 days) long expired: it stays whole.
    let done = t.maintain(&pool, now, 20 * 60, 0).await.unwrap();
    assert!(done.dropped.is_empty(), "{done:?}");
    assert_eq!(count(&pool, &name).await, 2);
    // Once that row expired too, it goes.
    let done = t.maintain(&pool, legacy_end + 60, 60, 0).await.unwrap();
    assert_eq!(done.dropped, vec![legacy]);
    assert_eq!(count(&pool, &name).await, 0);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn two_writers_making_the_same_partitions_at_once_both_succeed() {
    let pool = pool().await;
    let name = unique("retention_race");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (at timestamptz NOT NULL) PARTITION BY RANGE (at)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let t = Partitioned::new(None, &name, Key::Timestamptz, WEEK);
    let times: Vec<i64> = (0..10).map(|i| 1_796_601_600 - i * WEEK).collect();
    let (a, b) = tokio::join!(t.ensure(&pool, &times), t.ensure(&pool, &times));
    assert_eq!(a.unwrap() + b.unwrap(), 10);
    assert_eq!(t.parts(&pool).await.unwrap().len(), 10);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
        .execute(&pool)
        .await
        .unwrap();
}
