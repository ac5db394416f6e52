//! PostgreSQL: migrations, the per-feed station tables and per-gateway
//! telemetry tables, batched idempotent inserts and the export query.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use fleetward_partitions::{Key, Partitioned, WEEK};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use crate::record::Row;
use crate::telemetry::TelemetryRow;

/// The encryptor's migrations, tracked in a table of their own: the
/// database is shared with other fleetward workloads, whose migrators would
/// otherwise see ours as unknown ("previously applied but missing") and
/// refuse to run.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name("_fleetward_encryptor_migrations");
    m
}

/// A station table name. The only way table names reach SQL text, so it
/// is the SQL-injection boundary: `^[a-z_][a-z0-9_]{0,62}$` (the CRD's
/// rule), and always double-quoted in SQL anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName(String);

impl FromStr for TableName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let ok = matches!(chars.next(), Some('a'..='z' | '_'))
            && s.len() <= 63
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "invalid table name {s:?}: use 1-63 characters a-z, 0-9 and _, not starting with a digit"
            ))
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quoted: a name that happens to be a keyword (`user`) still works.
        write!(f, "\"{}\"", self.0)
    }
}

impl TableName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(30))
        .connect(url)
        .await
}

/// Runs the migrations, then creates `table` (of the given kind) if needed.
pub async fn prepare(pool: &PgPool, kind: RecordKind, table: &TableName) -> Result<(), crate::error::Error> {
    migrator().run(pool).await?;
    let ensure = match kind {
        RecordKind::Stations => "SELECT fleetward_ensure_station_table($1)",
        RecordKind::Telemetry => "SELECT fleetward_ensure_telemetry_table($1)",
    };
    sqlx::query(ensure).bind(table.as_str()).execute(pool).await?;
    Ok(())
}

/// How a station or telemetry table is partitioned: by week, on its
/// `last_update` (stations) or `received_at` (telemetry) column.
pub fn partitioned(table: &TableName) -> Partitioned {
    Partitioned::new(None, table.as_str(), Key::Timestamptz, WEEK)
}

/// What the records of a topic are, and so which table they go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Station records from an ingestor (a StationFeed).
    Stations,
    /// Device telemetry from a gateway (a Gateway's spec.storage).
    Telemetry,
}

impl FromStr for RecordKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stations" => Ok(Self::Stations),
            "telemetry" => Ok(Self::Telemetry),
            other => Err(format!(
                "unknown record kind {other:?} (expected stations or telemetry)"
            )),
        }
    }
}

/// PostgreSQL's binary `COPY` encoding of the rows the encryptor writes
/// (no text escaping, no parsing on the server's side).
pub struct CopyBuf(Vec<u8>);

/// PostgreSQL's epoch (2000-01-01) in microseconds after the Unix epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// The `text` type's OID, for array elements.
const TEXT_OID: i32 = 25;

impl Default for CopyBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyBuf {
    pub fn new() -> Self {
        let mut b = b"PGCOPY\n\xff\r\n\0".to_vec();
        b.extend_from_slice(&0i32.to_be_bytes()); // flags
        b.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self(b)
    }

    fn columns(&mut self, n: i16) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    fn timestamptz(&mut self, t: &DateTime<Utc>) {
        self.field(&(t.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes());
    }

    /// A one-dimensional `text[]` (or the empty array).
    fn text_array(&mut self, items: &[String]) {
        let mut a = Vec::new();
        let dims = if items.is_empty() { 0i32 } else { 1 };
        for v in [dims, 0, TEXT_OID] {
            a.extend_from_slice(&v.to_be_bytes());
        }
        if !items.is_empty() {
            a.extend_from_slice(&(items.len() as i32).to_be_bytes());
            a.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            for item in items {
                a.extend_from_slice(&(item.len() as i32).to_be_bytes());
                a.extend_from_slice(item.as_bytes());
            }
        }
        self.field(&a);
    }

    /// A station row, in `STATION_COLUMNS` order.
    pub fn station(&mut self, key_id: &str, encrypted_fields: &[String], r: &Row) {
        self.columns(15);
        self.text(&r.contract_index);
        self.text(&r.number);
        self.timestamptz(&r.last_update);
        self.text(key_id);
        self.text_array(encrypted_fields);
        self.text(&r.contract_name);
        self.text(&r.name);
        self.text(&r.address);
        match &r.position {
            Some(p) => self.text(p),
            None => self.null(),
        }
        self.field(&[r.banking as u8]);
        self.field(&[r.bonus as u8]);
        self.field(&r.bike_stands.to_be_bytes());
        self.field(&r.available_bike_stands.to_be_bytes());
        self.field(&r.available_bikes.to_be_bytes());
        self.text(&r.status);
    }

    /// A telemetry row, in `TELEMETRY_COLUMNS` order.
    pub fn telemetry(&mut self, key_id: &str, r: &TelemetryRow) {
        self.columns(9);
        self.text(&r.namespace);
        self.text(&r.gateway);
        self.text(&r.device_id);
        self.text(&r.message_id);
        self.text(&r.category);
        self.timestamptz(&r.device_time);
        self.timestamptz(&r.received_at);
        self.text(key_id);
        self.text(&r.payload);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

/// The station table's columns the encryptor writes, in `CopyBuf::station` order.
pub const STATION_COLUMNS: &str = "contract_index, number, last_update, key_id, encrypted_fields, contract_name, \
                                   name, address, position, banking, bonus, bike_stands, available_bike_stands, \
                                   available_bikes, status";
/// The telemetry table's columns the encryptor writes, in `CopyBuf::telemetry` order.
pub const TELEMETRY_COLUMNS: &str =
    "namespace, gateway, device_id, message_id, category, device_time, received_at, key_id, payload";

/// Writes `data` (a finished `CopyBuf`) into `columns` of `table` with one
/// binary COPY; returns the rows written. A row whose key is already stored
/// fails the whole COPY (SQLSTATE 23505), and with it the transaction.
pub async fn copy_rows(
    tx: &mut Transaction<'_, Postgres>,
    table: &TableName,
    columns: &str,
    data: Vec<u8>,
) -> Result<u64, sqlx::Error> {
    let mut copy = tx
        .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)"))
        .await?;
    copy.send(data).await?;
    copy.finish().await
}

/// The error of a COPY that met a row already stored.
pub fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Inserts telemetry rows like `insert_batch` inserts stations: one
/// statement, rows already stored (same device and message id) skipped.
pub async fn insert_telemetry_batch(
    tx: &mut Transaction<'_, Postgres>,
    table: &TableName,
    key_id: &str,
    rows: &[TelemetryRow],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO {table} ({TELEMETRY_COLUMNS}) \
         SELECT ns, gw, dev, mid, cat, dt, ra, $9, pl \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], \
                     $7::timestamptz[], $8::text[]) AS t(ns, gw, dev, mid, cat, dt, ra, pl) \
         ON CONFLICT (namespace, gateway, device_id, message_id, received_at) DO NOTHING"
    );
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    let res = sqlx::query(AssertSqlSafe(sql))
        .bind(col!(namespace))
        .bind(col!(gateway))
        .bind(col!(device_id))
        .bind(col!(message_id))
        .bind(col!(category))
        .bind(col!(device_time))
        .bind(col!(received_at))
        .bind(col!(payload))
        .bind(key_id)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected())
}

/// Inserts a batch in the caller's transaction with one statement (arrays
/// unnested server-side: one round trip whatever the batch size). Rows
/// whose natural key is already stored are skipped. Returns rows inserted.
pub async fn insert_batch(
    tx: &mut Transaction<'_, Postgres>,
    table: &TableName,
    key_id: &str,
    encrypted_fields: &[String],
    rows: &[Row],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO {table} ({STATION_COLUMNS}) \
         SELECT ci, n, lu, $4, $5, cn, nm, ad, po, ba, bo, bs, abs, ab, st \
         FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[], \
                     $10::bool[], $11::bool[], $12::int4[], $13::int4[], $14::int4[], $15::text[]) \
              AS t(ci, n, lu, cn, nm, ad, po, ba, bo, bs, abs, ab, st) \
         ON CONFLICT (contract_index, number, last_update) DO NOTHING"
    );
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    let res = sqlx::query(AssertSqlSafe(sql))
        .bind(col!(contract_index))
        .bind(col!(number))
        .bind(col!(last_update))
        .bind(key_id)
        .bind(encrypted_fields)
        .bind(col!(contract_name))
        .bind(col!(name))
        .bind(col!(address))
        .bind(col!(position))
        .bind(col!(banking))
        .bind(col!(bonus))
        .bind(col!(bike_stands))
        .bind(col!(available_bike_stands))
        .bind(col!(available_bikes))
        .bind(col!(status))
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected())
}

/// A stored row as read back for export (sensitive fields still sealed).
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct StoredRow {
    pub number: String,
    pub last_update: DateTime<Utc>,
    pub key_id: String,
    pub encrypted_fields: Vec<String>,
    pub contract_name: String,
    pub name: String,
    pub address: String,
    pub position: Option<String>,
    pub banking: bool,
    pub bonus: bool,
    pub bike_stands: i32,
    pub available_bike_stands: i32,
    pub available_bikes: i32,
    pub status: String,
}

/// Which rows to export.
#[derive(Clone, Debug)]
pub struct Selection {
    pub contract_index: String,
    pub station: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

const WHERE: &str = "WHERE contract_index = $1 AND ($2::text IS NULL OR number = $2) \
                     AND ($3::timestamptz IS NULL OR last_update >= $3) \
                     AND ($4::timestamptz IS NULL OR last_update < $4)";

/// Key ids used by the selected rows (checked against the keyring before
/// anything is printed).
pub async fn key_ids(pool: &PgPool, table: &TableName, sel: &Selection) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!("SELECT DISTINCT key_id FROM {table} {WHERE} ORDER BY key_id");
    sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(&sel.contract_index)
        .bind(&sel.station)
        .bind(sel.from)
        .bind(sel.to)
        .fetch_all(pool)
        .await
}

pub fn select_rows<'a>(
    pool: &'a PgPool,
    table: &TableName,
    sel: &'a Selection,
) -> impl futures::Stream<Item = Result<StoredRow, sqlx::Error>> + 'a {
    let sql = format!(
        "SELECT number, last_update, key_id, encrypted_fields, contract_name, name, address, position, banking, \
         bonus, bike_stands, available_bike_stands, available_bikes, status FROM {table} {WHERE} \
         ORDER BY last_update, number"
    );
    sqlx::query_as::<_, StoredRow>(AssertSqlSafe(sql))
        .bind(&sel.contract_index)
        .bind(&sel.station)
        .bind(sel.from)
        .bind(sel.to)
        .fetch(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_that_could_inject_sql_are_refused() {
        for bad in [
            "",
            "Stations",
            "1stations",
            "stations; DROP TABLE users",
            "stations\"--",
            "st ations",
            "stätions",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<TableName>().is_err(), "{bad:?} accepted");
        }
        for good in ["stations", "_x", "dublin_2026", &"a".repeat(63)] {
            assert_eq!(good.parse::<TableName>().unwrap().as_str(), good);
        }
        assert_eq!("user".parse::<TableName>().unwrap().to_string(), "\"user\"");
    }
}
