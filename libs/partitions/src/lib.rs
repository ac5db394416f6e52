//! Retention by time partitions, the one way every fleetward table with
//! rows that expire is kept: the telemetry and station tables, the audit
//! trail, the meter readings and the replay window.
//!
//! A table is `PARTITION BY RANGE` on one time column (a `timestamptz`, or
//! Unix seconds in a `bigint`), cut into partitions of a fixed width on one
//! grid (aligned to Mondays 00:00 UTC, so a week-wide partition is a
//! calendar week). Rows go by dropping a whole partition once its upper
//! bound is older than the retention, never by `DELETE`: no dead tuples,
//! no vacuum, no long lock. A partition is dropped only when every row it
//! can hold is expired (its upper bound at or before `now - retention`),
//! so a row lives at least its retention and at most one width longer.
//!
//! Partitions are made on demand: [`Partitioned::ensure`] before a write
//! makes the ones its rows need (a late or replayed row of an older week
//! still lands), [`Partitioned::maintain`] makes the next ones ahead and
//! drops the expired. A partition that is not on the grid (the whole of a
//! table from before partitioning, attached as one partition) is respected:
//! a new one is cut to fit beside it.
//!
//! The planning ([`missing`], [`expired`]) is pure; [`Partitioned`] reads
//! the bounds from PostgreSQL's catalog and runs the DDL, under an advisory
//! lock so two writers never race on the same partition.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::watch;

/// An hour, a day and a week, in seconds: the widths in use.
pub const HOUR: i64 = 3_600;
pub const DAY: i64 = 86_400;
pub const WEEK: i64 = 7 * DAY;
/// The grid's origin: 1970-01-05, the first Monday after the Unix epoch.
const ORIGIN: i64 = 4 * DAY;

/// The type of the partition key column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A `timestamptz` column.
    Timestamptz,
    /// A `bigint` of Unix seconds.
    EpochSeconds,
}

/// One partition as the catalog gives it: `lo` is `None` for `MINVALUE`,
/// `hi` for `MAXVALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

impl Part {
    fn covers(&self, t: i64) -> bool {
        self.lo.is_none_or(|lo| lo <= t) && self.hi.is_none_or(|hi| t < hi)
    }
}

/// The grid slot `[lo, hi)` of width `width` that holds `t`.
pub fn slot(width: i64, t: i64) -> (i64, i64) {
    let lo = (t - ORIGIN).div_euclid(width) * width + ORIGIN;
    (lo, lo + width)
}

/// The ranges to create so that every time in `times` has a partition:
/// the grid slot of each time not yet covered, cut where it would overlap
/// a partition that exists. Sorted, without duplicates.
pub fn missing(parts: &[Part], width: i64, times: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut out = BTreeSet::new();
    for t in times {
        if parts.iter().any(|p| p.covers(t)) {
            continue;
        }
        let (mut lo, mut hi) = slot(width, t);
        for p in parts {
            match (p.lo, p.hi) {
                // Wholly before t: the new range starts at its end at the earliest.
                (_, Some(phi)) if phi <= t => lo = lo.max(phi),
                // Wholly after t: the new range ends at its start at the latest.
                (Some(plo), _) if plo > t => hi = hi.min(plo),
                _ => {}
            }
        }
        out.insert((lo, hi));
    }
    out.into_iter().collect()
}

/// The partitions whose every row is older than `cutoff` (`now - retention`):
/// an upper bound at or before it. A `MAXVALUE` partition never expires.
pub fn expired(parts: &[Part], cutoff: i64) -> Vec<String> {
    parts
        .iter()
        .filter(|p| p.hi.is_some_and(|hi| hi <= cutoff))
        .map(|p| p.name.clone())
        .collect()
}

/// What a maintenance pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintained {
    pub created: usize,
    /// The partitions dropped, by name.
    pub dropped: Vec<String>,
}

/// A range-partitioned table.
#[derive(Clone, Debug)]
pub struct Partitioned {
    schema: Option<String>,
    table: String,
    key: Key,
    width: i64,
}

/// A name as SQL text, double-quoted.
struct Ident<'a>(&'a str);

impl fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl Partitioned {
    /// `table` (in `schema`, or the connection's search path), partitioned
    /// on a column of type `key`, in partitions `width` seconds wide.
    pub fn new(schema: Option<&str>, table: &str, key: Key, width: i64) -> Self {
        // Partition names carry their start's hour: two starts in one hour
        // would be one name.
        assert!(width >= HOUR && width % HOUR == 0, "a width of whole hours");
        Self {
            schema: schema.map(str::to_string),
            table: table.to_string(),
            key,
            width,
        }
    }

    /// The table's name as SQL text.
    pub fn qualified(&self) -> String {
        self.qualify(&self.table)
    }

    fn qualify(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", Ident(s), Ident(name)),
            None => Ident(name).to_string(),
        }
    }

    /// The name of the partition starting at `lo`: the table's name (cut,
    /// with a hash of the whole, when long) and the start's UTC hour, at
    /// most 63 bytes.
    pub fn partition_name(&self, lo: i64) -> String {
        let base = if self.table.len() <= 48 {
            self.table.clone()
        } else {
            let hash = hex::encode(&Sha256::digest(self.table.as_bytes())[..4]);
            format!("{}_{hash}", &self.table[..39])
        };
        let stamp = chrono::DateTime::from_timestamp(lo, 0)
            .map(|t| t.format("%Y%m%d%H").to_string())
            .unwrap_or_else(|| "min".to_string());
        format!("{base}_p{stamp}")
    }

    fn literal(&self, t: i64) -> String {
        match self.key {
            Key::EpochSeconds => t.to_string(),
            Key::Timestamptz => {
                let ts = chrono::DateTime::from_timestamp(t, 0).expect("a time in chrono's range");
                format!("'{}'", ts.to_rfc3339())
            }
        }
    }

    /// The table's partitions and their bounds, from the catalog. A
    /// `DEFAULT` partition is left out: it covers no range of its own.
    pub async fn parts<'e, E>(&self, db: E) -> Result<Vec<Part>, sqlx::Error>
    where
        E: sqlx::PgExecutor<'e>,
    {
        // pg_get_expr writes a bound as the key type's literal in this
        // session's settings; casting it back in the same session reads it
        // the same way.
        let bound = |i: u8| match self.key {
            Key::Timestamptz => format!(
                "CASE WHEN b[{i}] IN ('MINVALUE', 'MAXVALUE') THEN NULL \
                 ELSE extract(epoch FROM btrim(b[{i}], '''')::timestamptz)::bigint END"
            ),
            Key::EpochSeconds => {
                format!("CASE WHEN b[{i}] IN ('MINVALUE', 'MAXVALUE') THEN NULL ELSE btrim(b[{i}], '''')::bigint END")
            }
        };
        let sql = format!(
            "SELECT name, {}, {} FROM ( \
               SELECT c.relname::text AS name, \
                      regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\((.*)\\) TO \\((.*)\\)') AS b \
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
               WHERE i.inhparent = to_regclass($1)) AS p \
             WHERE b IS NOT NULL",
            bound(1),
            bound(2)
        );
        let rows: Vec<(String, Option<i64>, Option<i64>)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(self.qualified())
            .fetch_all(db)
            .await?;
        Ok(rows.into_iter().map(|(name, lo, hi)| Part { name, lo, hi }).collect())
    }

    /// Makes the partitions that rows at `times` (Unix seconds) need;
    /// returns how many it made. Cheap when they exist (one catalog read).
    pub async fn ensure(&self, pool: &PgPool, times: &[i64]) -> Result<usize, sqlx::Error> {
        let parts = self.parts(pool).await?;
        if missing(&parts, self.width, times.iter().copied()).is_empty() {
            return Ok(0);
        }
        let mut tx = pool.begin().await?;
        self.lock(&mut tx).await?;
        // Again under the lock: another writer may have made them.
        let parts = self.parts(&mut *tx).await?;
        let ranges = missing(&parts, self.width, times.iter().copied());
        for &(lo, hi) in &ranges {
            let sql = format!(
                "CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})",
                self.qualify(&self.partition_name(lo)),
                self.qualified(),
                self.literal(lo),
                self.literal(hi)
            );
            sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ranges.len())
    }

    /// One pass: the partitions for now and the next `ahead` seconds are
    /// made, and those whose rows are all older than `retention` seconds
    /// before `now` are dropped.
    pub async fn maintain(
        &self,
        pool: &PgPool,
        now: i64,
        retention: i64,
        ahead: i64,
    ) -> Result<Maintained, sqlx::Error> {
        let times: Vec<i64> = (0..=ahead.max(0) / self.width).map(|i| now + i * self.width).collect();
        let created = self.ensure(pool, &times).await?;
        let mut tx = pool.begin().await?;
        self.lock(&mut tx).await?;
        let parts = self.parts(&mut *tx).await?;
        let dropped = expired(&parts, now - retention);
        for name in &dropped {
            let sql = format!("DROP TABLE {}", self.qualify(name));
            sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Maintained { created, dropped })
    }

    async fn lock(&self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('fleetward_partitions:' || $1))")
            .bind(self.qualified())
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// Whether a write failed because a row's time has no partition (SQLSTATE
/// 23514, "no partition of relation ... found for row").
fn is_no_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("23514") && d.message().starts_with("no partition of relation"))
}

/// The writers' one way into a partitioned table: runs `write`, and when
/// it failed only because a row's time has no partition yet (the first
/// row of a week, a late one), runs `make` (which makes them, with
/// [`Partitioned::ensure`]) and `write` once more. While the partitions
/// exist, a write costs no catalog read.
pub async fn write_making_partitions<T, W, WF, M, MF>(mut write: W, make: M) -> Result<T, sqlx::Error>
where
    W: FnMut() -> WF,
    WF: Future<Output = Result<T, sqlx::Error>>,
    M: FnOnce() -> MF,
    MF: Future<Output = Result<(), sqlx::Error>>,
{
    match write().await {
        Err(e) if is_no_partition(&e) => {
            make().await?;
            write().await
        }
        other => other,
    }
}

/// How often [`keep`] runs a pass: a week-wide partition expires at most
/// this much later than its last row.
pub const EVERY: Duration = Duration::from_secs(3_600);

/// A retention that never changes, for [`keep`].
pub fn fixed(retention: Duration) -> watch::Receiver<Duration> {
    // The receiver keeps the value after the sender is gone.
    watch::channel(retention).1
}

/// Keeps `tables` for as long as the task runs, each with its retention
/// (read at every pass: one followed live from a resource takes effect at
/// the next): a [`Partitioned::maintain`] pass at once and every
/// [`EVERY`], making the next partition ahead (a week, or the width when
/// wider) and dropping the expired. A failed pass is logged and tried
/// again in a minute; the writers make what they need themselves meanwhile.
pub async fn keep(pool: PgPool, tables: Vec<(Partitioned, watch::Receiver<Duration>)>) {
    loop {
        let mut failed = false;
        for (table, retention) in &tables {
            let now = chrono::Utc::now().timestamp();
            let retention = retention.borrow().as_secs() as i64;
            match table.maintain(&pool, now, retention, table.width.max(WEEK)).await {
                Ok(done) => {
                    if done.created > 0 || !done.dropped.is_empty() {
                        tracing::info!(
                            table = %table.qualified(),
                            created = done.created,
                            dropped = ?done.dropped,
                            retention_days = retention / DAY,
                            "partitions kept"
                        );
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(table = %table.qualified(), error = %e, "partition maintenance failed; retrying in a minute");
                }
            }
        }
        tokio::time::sleep(if failed { Duration::from_secs(60) } else { EVERY }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, lo: Option<i64>, hi: Option<i64>) -> Part {
        Part {
            name: name.into(),
            lo,
            hi,
        }
    }

    /// 2026-12-07 00:00 UTC, a Monday.
    const MONDAY: i64 = 1_796_601_600;

    #[test]
    fn week_slots_start_on_monday_at_midnight_utc() {
        assert_eq!(slot(WEEK, MONDAY), (MONDAY, MONDAY + WEEK));
        assert_eq!(slot(WEEK, MONDAY + WEEK - 1), (MONDAY, MONDAY + WEEK));
        assert_eq!(slot(WEEK, MONDAY - 1), (MONDAY - WEEK, MONDAY));
        assert_eq!(slot(HOUR, MONDAY + 90 * 60), (MONDAY + HOUR, MONDAY + 2 * HOUR));
        // Before the epoch too (a device with a clock at zero).
        assert_eq!(slot(WEEK, -1), (ORIGIN - WEEK, ORIGIN));
    }

    #[test]
    fn a_covered_time_needs_nothing_and_each_slot_is_made_once() {
        let parts = [part("w0", Some(MONDAY), Some(MONDAY + WEEK))];
        assert!(missing(&parts, WEEK, [MONDAY, MONDAY + 5]).is_empty());
        let later = MONDAY + 2 * WEEK;
        assert_eq!(
            missing(&parts, WEEK, [later, later + 10, MONDAY - 3]),
            vec![(MONDAY - WEEK, MONDAY), (later, later + WEEK)]
        );
    }

    #[test]
    fn a_new_slot_is_cut_to_fit_beside_a_partition_off_the_grid() {
        // A table from before partitioning, attached up to Wednesday noon.
        let legacy_end = MONDAY + 2 * DAY + 12 * HOUR;
        let parts = [part("legacy", None, Some(legacy_end))];
        assert_eq!(
            missing(&parts, WEEK, [MONDAY + 3 * DAY]),
            vec![(legacy_end, MONDAY + WEEK)]
        );
        assert!(
            missing(&parts, WEEK, [MONDAY - 100 * WEEK]).is_empty(),
            "MINVALUE covers all before"
        );
        // And a partition that starts inside the slot ends the new one there.
        let parts = [part("odd", Some(MONDAY + DAY), Some(MONDAY + 2 * DAY))];
        assert_eq!(missing(&parts, WEEK, [MONDAY]), vec![(MONDAY, MONDAY + DAY)]);
        assert_eq!(
            missing(&parts, WEEK, [MONDAY + 3 * DAY]),
            vec![(MONDAY + 2 * DAY, MONDAY + WEEK)]
        );
    }

    #[test]
    fn only_partitions_whose_every_row_expired_go() {
        let cutoff = MONDAY;
        let parts = [
            part("old", Some(MONDAY - 2 * WEEK), Some(MONDAY - WEEK)),
            part("ends_at_cutoff", Some(MONDAY - WEEK), Some(MONDAY)),
            part("holds_the_cutoff", Some(MONDAY - DAY), Some(MONDAY + DAY)),
            part("legacy", None, Some(MONDAY + 1)),
            part("open", Some(MONDAY - 9 * WEEK), None),
        ];
        assert_eq!(
            expired(&parts, cutoff),
            vec!["old".to_string(), "ends_at_cutoff".into()]
        );
    }

    #[test]
    fn partition_names_fit_postgres_and_stay_distinct() {
        let p = Partitioned::new(None, "telemetry", Key::Timestamptz, WEEK);
        assert_eq!(p.partition_name(MONDAY), "telemetry_p2026120700");
        let long_a = format!("{}a", "t".repeat(62));
        let long_b = format!("{}b", "t".repeat(62));
        let a = Partitioned::new(None, &long_a, Key::Timestamptz, WEEK).partition_name(MONDAY);
        let b = Partitioned::new(None, &long_b, Key::Timestamptz, WEEK).partition_name(MONDAY);
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn literals_are_the_key_types() {
        let t = Partitioned::new(Some("s"), "x\"y", Key::Timestamptz, WEEK);
        assert_eq!(t.literal(MONDAY), "'2026-12-07T00:00:00+00:00'");
        assert_eq!(t.qualified(), "\"s\".\"x\"\"y\"");
        let e = Partitioned::new(None, "x", Key::EpochSeconds, HOUR);
        assert_eq!(e.literal(MONDAY), MONDAY.to_string());
    }
}
