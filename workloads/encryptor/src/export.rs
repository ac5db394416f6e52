//! `fleetward-stations export`: the rows of a contract (optionally one
//! station) in an ISO-8601 time range, decrypted, as JSON or CSV. Seed 000's
//! missing `decrypt.py` and seed 002's CSV export.
//!
//! Access control is the keyring: whoever can read the keyring Secret (or
//! was handed its file) can decrypt; the database alone reveals neither the
//! sensitive fields nor which contract a row belongs to.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fleetward_keyring::{Keyring, KeyringError};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::db::{self, Selection, StoredRow, TableName};
use crate::keys::{self, KeySourceError};
use crate::record::{Position, contract_index};

#[derive(Parser, Debug)]
#[command(
    name = "fleetward-stations",
    version,
    about = "Reads a StationFeed's stored station rows, decrypted"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a contract's rows in a time range, decrypted, as JSON or CSV.
    Export(ExportArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A JSON array of station objects (JCDecaux v1 field names).
    Json,
    /// CSV with a header row; times in ISO-8601 (UTC).
    Csv,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// `postgres://` URL. Never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, env = "STATIONS_TABLE", default_value = "stations")]
    pub table: TableName,
    /// Contract (city), case-insensitive, e.g. `Dublin`.
    #[arg(long)]
    pub contract: String,
    /// Only this station number.
    #[arg(long)]
    pub station: Option<String>,
    /// Start of the range, inclusive: ISO-8601 with offset
    /// (`2026-02-06T22:00:00Z`) or a date (`2026-02-06`, midnight UTC).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// End of the range, exclusive; same forms as --from.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// The keyring file (`keyring.json` of the feed's keyring Secret).
    #[arg(long, required_unless_present = "keyring_secret", conflicts_with = "keyring_secret")]
    pub keyring_file: Option<PathBuf>,
    /// The keyring Secret as NAMESPACE/NAME, read with KUBECONFIG's credentials.
    #[arg(long)]
    pub keyring_secret: Option<String>,
}

/// Accepts RFC 3339 / ISO-8601 with an offset, or a plain date (UTC). A
/// time without an offset is refused: guessing a zone would shift the range.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").is_ok() {
        return Err(format!("{s:?} has no UTC offset; add one, e.g. {s}Z or {s}+01:00"));
    }
    Err(format!(
        "{s:?} is not an ISO-8601 time (e.g. 2026-02-06T22:00:00Z) or date (2026-02-06)"
    ))
}

#[derive(thiserror::Error, Debug)]
pub enum ExportError {
    #[error("empty time range: --from {from} is not before --to {to}")]
    EmptyRange { from: String, to: String },
    #[error(transparent)]
    Keyring(#[from] KeySourceError),
    #[error(
        "rows in this range were encrypted with key id(s) {missing:?}, which the keyring does not contain \
         (it has {have:?}); use the keyring of the feed that wrote them"
    )]
    UnknownKeyIds { missing: Vec<String>, have: Vec<String> },
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("station {number} at {last_update}: field {field}: {source}")]
    Decrypt {
        number: String,
        last_update: String,
        field: &'static str,
        #[source]
        source: KeyringError,
    },
    #[error("station {number} at {last_update}: position is not {{lat,lng}} JSON")]
    Position { number: String, last_update: String },
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
}

/// One exported station: the source's field names and values, plus the
/// key id the row was encrypted with.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Exported {
    pub number: Value,
    pub contract_name: String,
    pub name: String,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    pub banking: bool,
    pub bonus: bool,
    pub bike_stands: i32,
    pub available_bike_stands: i32,
    pub available_bikes: i32,
    pub status: String,
    /// Milliseconds since the Unix epoch, as JCDecaux sends it.
    pub last_update: i64,
    pub key_id: String,
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Decrypts the fields the row lists as encrypted.
pub fn open_row(keyring: &Keyring, row: StoredRow) -> Result<Exported, ExportError> {
    let when = time_text(row.last_update);
    let encrypted = |f: &str| row.encrypted_fields.iter().any(|e| e == f);
    let open = |field: &'static str, value: String| -> Result<String, ExportError> {
        if !encrypted(field) {
            return Ok(value);
        }
        keyring
            .decrypt(&row.key_id, &value)
            .map_err(|source| ExportError::Decrypt {
                number: row.number.clone(),
                last_update: when.clone(),
                field,
                source,
            })
            .and_then(|b| {
                String::from_utf8(b).map_err(|_| ExportError::Decrypt {
                    number: row.number.clone(),
                    last_update: when.clone(),
                    field,
                    source: KeyringError::Decrypt(row.key_id.clone()),
                })
            })
    };
    let position = match row.position.clone() {
        None => None,
        Some(p) => {
            let text = open("position", p)?;
            Some(serde_json::from_str(&text).map_err(|_| ExportError::Position {
                number: row.number.clone(),
                last_update: when.clone(),
            })?)
        }
    };
    Ok(Exported {
        number: row
            .number
            .parse::<u64>()
            .ok()
            .filter(|n| n.to_string() == row.number)
            .map_or_else(|| Value::String(row.number.clone()), Value::from),
        contract_name: open("contract_name", row.contract_name.clone())?,
        name: open("name", row.name.clone())?,
        address: open("address", row.address.clone())?,
        position,
        banking: row.banking,
        bonus: row.bonus,
        bike_stands: row.bike_stands,
        available_bike_stands: row.available_bike_stands,
        available_bikes: row.available_bikes,
        status: row.status.clone(),
        last_update: row.last_update.timestamp_millis(),
        key_id: row.key_id.clone(),
    })
}

pub const CSV_HEADER: [&str; 14] = [
    "number",
    "contract_name",
    "name",
    "address",
    "lat",
    "lng",
    "banking",
    "bonus",
    "bike_stands",
    "available_bike_stands",
    "available_bikes",
    "status",
    "last_update",
    "key_id",
];

fn csv_record(e: &Exported) -> Vec<String> {
    let number = match &e.number {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (lat, lng) = e.position.as_ref().map_or((String::new(), String::new()), |p| {
        (p.lat.to_string(), p.lng.to_string())
    });
    let when = DateTime::from_timestamp_millis(e.last_update)
        .map(time_text)
        .unwrap_or_default();
    vec![
        number,
        e.contract_name.clone(),
        e.name.clone(),
        e.address.clone(),
        lat,
        lng,
        e.banking.to_string(),
        e.bonus.to_string(),
        e.bike_stands.to_string(),
        e.available_bike_stands.to_string(),
        e.available_bikes.to_string(),
        e.status.clone(),
        when,
        e.key_id.clone(),
    ]
}

/// Runs an export, writing to `out`. Returns the number of rows written.
pub async fn export(args: &ExportArgs, out: &mut dyn Write) -> Result<u64, ExportError> {
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from >= to
    {
        return Err(ExportError::EmptyRange {
            from: time_text(from),
            to: time_text(to),
        });
    }
    let keyring = match (&args.keyring_file, &args.keyring_secret) {
        (Some(path), _) => keys::from_file(path)?,
        (None, Some(reference)) => keys::from_secret(reference).await?,
        (None, None) => unreachable!("clap requires one of --keyring-file and --keyring-secret"),
    };
    let pool = db::connect(&args.database_url, 2).await?;
    let sel = Selection {
        contract_index: contract_index(&keyring, &args.contract),
        station: args.station.clone(),
        from: args.from,
        to: args.to,
    };
    // Refuse before printing anything if some rows cannot be decrypted.
    let have = keyring.key_ids();
    let missing: Vec<String> = db::key_ids(&pool, &args.table, &sel)
        .await?
        .into_iter()
        .filter(|id| !have.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(ExportError::UnknownKeyIds { missing, have });
    }

    let mut rows = db::select_rows(&pool, &args.table, &sel);
    let mut n = 0u64;
    match args.format {
        Format::Json => {
            out.write_all(b"[")?;
            while let Some(row) = rows.try_next().await? {
                let e = open_row(&keyring, row)?;
                out.write_all(if n == 0 { b"\n  " } else { b",\n  " })?;
                serde_json::to_writer(&mut *out, &e).map_err(std::io::Error::from)?;
                n += 1;
            }
            out.write_all(if n == 0 { b"]\n" } else { b"\n]\n" })?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut *out);
            w.write_record(CSV_HEADER)?;
            while let Some(row) = rows.try_next().await? {
                w.write_record(csv_record(&open_row(&keyring, row)?))?;
                n += 1;
            }
            w.flush()?;
        }
    }
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_iso_8601() {
        assert_eq!(parse_time("2026-02-06T22:54:29Z").unwrap().timestamp(), 1770418469);
        assert_eq!(parse_time("2026-02-06T23:54:29+01:00").unwrap().timestamp(), 1770418469);
        assert_eq!(parse_time("2026-02-06").unwrap().timestamp(), 1770336000);
        let err = parse_time("2026-02-06T22:54:29").unwrap_err();
        assert!(err.contains("no UTC offset"), "{err}");
        assert!(parse_time("yesterday").unwrap_err().contains("not an ISO-8601"));
        assert!(parse_time("2026-13-01").is_err());
    }

    #[test]
    fn rows_open_only_their_encrypted_fields() {
        let ring = Keyring::generate();
        let row = StoredRow {
            number: "42".into(),
            last_update: DateTime::from_timestamp_millis(1770418469000).unwrap(),
            key_id: ring.primary_id().into(),
            encrypted_fields: vec!["address".into(), "position".into()],
            contract_name: "dublin".into(),
            name: "SMITHFIELD NORTH".into(),
            address: ring.encrypt(b"Smithfield North"),
            position: Some(ring.encrypt(br#"{"lat":53.349562,"lng":-6.278198}"#)),
            banking: false,
            bonus: true,
            bike_stands: 30,
            available_bike_stands: 15,
            available_bikes: 15,
            status: "OPEN".into(),
        };
        let e = open_row(&ring, row.clone()).unwrap();
        assert_eq!(e.number, Value::from(42));
        assert_eq!(e.address, "Smithfield North");
        assert_eq!(e.contract_name, "dublin");
        assert_eq!(
            e.position,
            Some(Position {
                lat: 53.349562,
                lng: -6.278198
            })
        );
        assert_eq!(e.last_update, 1770418469000);
        assert_eq!(
            csv_record(&e),
            [
                "42",
                "dublin",
                "SMITHFIELD NORTH",
                "Smithfield North",
                "53.349562",
                "-6.278198",
                "false",
                "true",
                "30",
                "15",
                "15",
                "OPEN",
                "2026-02-06T22:54:29.000Z",
                &e.key_id
            ]
        );
        // Another keyring's key under the same id: refused, no plaintext.
        let mut forged = row;
        forged.address = Keyring::generate().encrypt(b"elsewhere");
        let err = open_row(&ring, forged).unwrap_err();
        assert!(matches!(err, ExportError::Decrypt { field: "address", .. }), "{err}");
    }
}
