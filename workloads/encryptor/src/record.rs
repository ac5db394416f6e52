//! Station records as they arrive from Kafka (the protocol's station record,
//! `fleetward_protocol::station`, as the ingestor produces it), checked
//! against what the table holds, and the row stored for each: sensitive
//! fields as Fernet tokens, the rest readable.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use fleetward_keyring::Keyring;
pub use fleetward_protocol::station::Position;
use fleetward_protocol::station::{FIELDS, Station};
use serde_json::Value;

/// Fields that may be stored encrypted (the StationFeed's `sensitiveFields`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Address,
    ContractName,
    Name,
    Position,
}

impl Field {
    pub const ALL: [Field; 4] = [Field::Address, Field::ContractName, Field::Name, Field::Position];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Address => "address",
            Field::ContractName => "contract_name",
            Field::Name => "name",
            Field::Position => "position",
        }
    }
}

impl FromStr for Field {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Field::ALL.into_iter().find(|f| f.as_str() == s.trim()).ok_or_else(|| {
            format!("unknown sensitive field {s:?} (expected one of address, contract_name, name, position)")
        })
    }
}

/// The set of fields to encrypt, from `address,contract_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sensitive(pub BTreeSet<Field>);

impl FromStr for Sensitive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Field::from_str)
            .collect::<Result<_, _>>()
            .map(Sensitive)
    }
}

impl Sensitive {
    pub fn contains(&self, f: Field) -> bool {
        self.0.contains(&f)
    }

    /// Column value of `encrypted_fields`.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|f| f.as_str().to_string()).collect()
    }
}

/// A station record that passed the checks, in the table's column types,
/// before encryption.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedStation {
    pub number: String,
    pub contract_name: String,
    pub name: String,
    pub address: String,
    pub position: Option<Position>,
    pub banking: bool,
    pub bonus: bool,
    pub bike_stands: i32,
    pub available_bike_stands: i32,
    pub available_bikes: i32,
    pub status: String,
    pub last_update: DateTime<Utc>,
}

/// Why a record goes to the dead-letter topic. Made only of fixed text,
/// field names of the record's schema and positions, never of the record's
/// content (it may be sensitive): `code` is the dead letter's reason
/// header, `Display` its detail header and the log line.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    #[error("record has no value")]
    Empty,
    #[error("not JSON: syntax error at line {line} column {column}")]
    NotJson { line: usize, column: usize },
    #[error("required field {} is missing", .0.unwrap_or("(not in the schema)"))]
    MissingField(Option<&'static str>),
    #[error("a field has the wrong type")]
    WrongType,
    #[error("record does not have the expected fields or values")]
    Shape,
    #[error("field {0} is missing, empty, too long or not valid")]
    Field(&'static str),
    #[error("station number is empty or longer than 64 characters")]
    Number,
    #[error("{0} is larger than {max}", max = i32::MAX)]
    TooLarge(&'static str),
    #[error("{0} is not a time between 2000 and 2200")]
    Time(&'static str),
    #[error("text field longer than 4096 bytes")]
    TooLong,
    /// The record does not carry its producer's valid record MAC
    /// (`fleetward_protocol::record::RECORD_MAC_HEADER`): it was not
    /// produced by the gateway or ingestor, or was changed after.
    #[error("record is not signed by its producer")]
    Unsigned,
}

impl Invalid {
    /// Every reason code, as the dead-letter topic's reason header carries it.
    pub const CODES: [&'static str; 11] = [
        "empty",
        "not_json",
        "missing_field",
        "wrong_type",
        "wrong_shape",
        "invalid_field",
        "invalid_number",
        "too_large",
        "invalid_time",
        "too_long",
        "unsigned",
    ];

    /// The fixed reason code (one of `CODES`).
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::Empty => "empty",
            Invalid::NotJson { .. } => "not_json",
            Invalid::MissingField(_) => "missing_field",
            Invalid::WrongType => "wrong_type",
            Invalid::Shape => "wrong_shape",
            Invalid::Field(_) => "invalid_field",
            Invalid::Number => "invalid_number",
            Invalid::TooLarge(_) => "too_large",
            Invalid::Time(_) => "invalid_time",
            Invalid::TooLong => "too_long",
            Invalid::Unsigned => "unsigned",
        }
    }

    /// What a serde_json error says about a record, without its text.
    /// serde's messages quote the input (`invalid type: string "…"`,
    /// `unknown field `…``, `invalid value: integer `…``), escaped in ways
    /// no filter reliably undoes, so only the category, the position and
    /// a field name found in `schema` are kept.
    pub(crate) fn from_json(e: &serde_json::Error, schema: &[&'static str]) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => Invalid::NotJson {
                line: e.line(),
                column: e.column(),
            },
            Category::Data => {
                let msg = e.to_string();
                if let Some(rest) = msg.strip_prefix("missing field `") {
                    let name = rest.split('`').next().unwrap_or_default();
                    Invalid::MissingField(schema.iter().copied().find(|f| *f == name))
                } else if msg.starts_with("invalid type: ") {
                    Invalid::WrongType
                } else {
                    Invalid::Shape
                }
            }
        }
    }
}

impl CheckedStation {
    pub fn parse(payload: Option<&[u8]>) -> Result<Self, Invalid> {
        let bytes = payload.filter(|p| !p.is_empty()).ok_or(Invalid::Empty)?;
        // One pass for a valid record; a refused one is parsed again in two
        // steps, so that a syntax error anywhere wins over a field's error
        // (the reason must not depend on which came first).
        let r: Station = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(_) => {
                let value: Value = serde_json::from_slice(bytes).map_err(|e| Invalid::from_json(&e, &FIELDS))?;
                serde_json::from_value(value).map_err(|e| Invalid::from_json(&e, &FIELDS))?
            }
        };
        let number = r.number.to_string();
        if number.is_empty() || number.len() > 64 {
            return Err(Invalid::Number);
        }
        let int = |v: u32, what| i32::try_from(v).map_err(|_| Invalid::TooLarge(what));
        if !r.has_plausible_time() {
            return Err(Invalid::Time("last_update"));
        }
        if [&r.contract_name, &r.name, &r.address, &r.status]
            .iter()
            .any(|s| s.len() > 4096)
        {
            return Err(Invalid::TooLong);
        }
        Ok(CheckedStation {
            number,
            contract_name: r.contract_name,
            name: r.name,
            address: r.address,
            position: r.position,
            banking: r.banking,
            bonus: r.bonus,
            bike_stands: int(r.bike_stands, "bike_stands")?,
            available_bike_stands: int(r.available_bike_stands, "available_bike_stands")?,
            available_bikes: int(r.available_bikes, "available_bikes")?,
            status: r.status,
            last_update: DateTime::from_timestamp_millis(r.last_update).ok_or(Invalid::Time("last_update"))?,
        })
    }

    /// The row to store: each sensitive field becomes a Fernet token made
    /// with the keyring's primary key.
    pub fn seal(self, keyring: &Keyring, sensitive: &Sensitive) -> Row {
        let protect = |f: Field, plain: String| {
            if sensitive.contains(f) {
                keyring.encrypt(plain.as_bytes())
            } else {
                plain
            }
        };
        let position = self
            .position
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("position serializes"));
        Row {
            contract_index: contract_index(keyring, &self.contract_name),
            number: self.number,
            last_update: self.last_update,
            contract_name: protect(Field::ContractName, self.contract_name),
            name: protect(Field::Name, self.name),
            address: protect(Field::Address, self.address),
            position: position.map(|p| protect(Field::Position, p)),
            banking: self.banking,
            bonus: self.bonus,
            bike_stands: self.bike_stands,
            available_bike_stands: self.available_bike_stands,
            available_bikes: self.available_bikes,
            status: self.status,
        }
    }
}

/// Contract names are matched case-insensitively (JCDecaux answers for
/// `contract=Dublin` with `"contract_name":"dublin"`).
pub fn contract_index(keyring: &Keyring, contract: &str) -> String {
    keyring.blind_index(&contract.to_lowercase())
}

/// One stored row (the columns of the station table, minus `key_id` and
/// `encrypted_fields`, which are the same for a whole batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub contract_index: String,
    pub number: String,
    pub last_update: DateTime<Utc>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({"number": 42, "contract_name": "dublin", "name": "SMITHFIELD NORTH", "address": "Smithfield North",
            "position": {"lat": 53.349562, "lng": -6.278198}, "banking": false, "bonus": false, "bike_stands": 30,
            "available_bike_stands": 15, "available_bikes": 15, "status": "OPEN", "last_update": 1770418469000_i64})
    }

    #[test]
    fn seals_only_the_sensitive_fields() {
        let ring = Keyring::generate();
        let st = CheckedStation::parse(Some(record().to_string().as_bytes())).unwrap();
        let row = st.seal(&ring, &"address,contract_name".parse().unwrap());
        let id = ring.primary_id();
        assert_eq!(ring.decrypt(id, &row.address).unwrap(), b"Smithfield North");
        assert_eq!(ring.decrypt(id, &row.contract_name).unwrap(), b"dublin");
        assert_eq!(row.name, "SMITHFIELD NORTH");
        assert_eq!(row.position.as_deref(), Some(r#"{"lat":53.349562,"lng":-6.278198}"#));
        assert_eq!(row.number, "42");
        assert_eq!(row.last_update.timestamp_millis(), 1770418469000);
        assert_eq!(row.contract_index, contract_index(&ring, "Dublin"));

        let st = CheckedStation::parse(Some(record().to_string().as_bytes())).unwrap();
        let row = st.seal(&ring, &"position".parse().unwrap());
        assert_eq!(row.address, "Smithfield North");
        let pos: Position =
            serde_json::from_slice(&ring.decrypt(id, row.position.as_deref().unwrap()).unwrap()).unwrap();
        assert_eq!(
            pos,
            Position {
                lat: 53.349562,
                lng: -6.278198
            }
        );
    }

    /// What the ingestor writes is what the encryptor reads: every Dublin
    /// station and a GBFS one, through the ingestor's own parsing and
    /// Kafka encoding, come out of `parse` with every field unchanged.
    #[test]
    fn reads_every_field_the_ingestor_writes() {
        use fleetward_ingestor::station::{StationNumber, from_gbfs, from_jcdecaux, kafka_record};
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/stations/jcdecaux-v1-dublin.json"
        );
        let dublin: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut written: Vec<_> = dublin
            .into_iter()
            .map(|v| from_jcdecaux(v, "Dublin").unwrap())
            .collect();
        assert_eq!(written.len(), 114);
        let card_only = json!({"number": 900, "contract_name": "dublin", "name": "CARD ONLY", "address": "Quay",
            "position": {"lat": 53.3, "lng": -6.2}, "banking": true, "bonus": true, "bike_stands": 10,
            "available_bike_stands": 0, "available_bikes": 10, "status": "CLOSED", "last_update": 1770418469000_i64});
        written.push(from_jcdecaux(card_only, "Dublin").unwrap());
        let info = json!({"data": {"stations": [{"station_id": "hub-a", "name": "Hub A", "capacity": 9}]}});
        let status = json!({"data": {"stations": [{"station_id": "hub-a", "num_bikes_available": 4,
            "num_docks_available": 5, "is_renting": false, "last_reported": 1770418469}]}});
        let (gbfs, skipped) = from_gbfs(&info, &status, "Quayside");
        assert_eq!((gbfs.len(), skipped.len()), (1, 0));
        assert_eq!(gbfs[0].number, StationNumber::Text("hub-a".into()));
        written.extend(gbfs);
        for w in &written {
            let (key, value) = kafka_record(w);
            let r = CheckedStation::parse(Some(&value)).unwrap_or_else(|e| panic!("station {key}: {e}"));
            assert_eq!(r.number, key);
            assert_eq!(r.number, w.number.to_string());
            assert_eq!(
                (&r.contract_name, &r.name, &r.address, &r.status),
                (&w.contract_name, &w.name, &w.address, &w.status)
            );
            assert_eq!(r.position, w.position);
            assert_eq!((r.banking, r.bonus), (w.banking, w.bonus));
            assert_eq!(
                (r.bike_stands, r.available_bike_stands, r.available_bikes),
                (
                    w.bike_stands as i32,
                    w.available_bike_stands as i32,
                    w.available_bikes as i32
                )
            );
            assert_eq!(r.last_update.timestamp_millis(), w.last_update);
        }
        assert!(
            written.iter().any(|w| w.position.is_none()),
            "a station without position is covered"
        );
        assert!(written.iter().any(|w| w.banking && w.bonus), "true flags are covered");
    }

    #[test]
    fn unknown_sensitive_fields_are_refused() {
        assert!("address,bikes".parse::<Sensitive>().is_err());
        assert_eq!("".parse::<Sensitive>().unwrap().0.len(), 0);
        assert_eq!(
            " name , position".parse::<Sensitive>().unwrap().names(),
            vec!["name".to_string(), "position".to_string()]
        );
    }

    #[test]
    fn malformed_records_are_rejected_without_quoting_values() {
        let parse = |v: Value| CheckedStation::parse(Some(v.to_string().as_bytes()));
        assert_eq!(
            CheckedStation::parse(Some(b"{\"address\": \"Secret Lane\", x}")),
            Err(Invalid::NotJson { line: 1, column: 28 })
        );
        assert!(matches!(
            CheckedStation::parse(Some(b"{\"address\": \"Secret Lane")),
            Err(Invalid::NotJson { .. })
        ));
        assert_eq!(CheckedStation::parse(None), Err(Invalid::Empty));
        let mut r = record();
        r.as_object_mut().unwrap().remove("number");
        assert_eq!(parse(r), Err(Invalid::MissingField(Some("number"))));
        let mut r = record();
        r["position"] = json!({"lat": 53.3});
        assert_eq!(parse(r), Err(Invalid::MissingField(Some("lng"))));
        let mut r = record();
        r["last_update"] = json!(1770418469);
        assert_eq!(parse(r), Err(Invalid::Time("last_update")));
        let mut r = record();
        r["bike_stands"] = json!(3_000_000_000_u64);
        assert_eq!(parse(r), Err(Invalid::TooLarge("bike_stands")));
        let mut r = record();
        r["available_bikes"] = json!(-5);
        assert_eq!(parse(r), Err(Invalid::Shape));
        let mut r = record();
        r["number"] = json!({"Secret": "Lane"});
        assert_eq!(parse(r), Err(Invalid::Shape));
        // A wrongly typed sensitive value, with the escaped quotes that
        // once fooled a filter of serde's message: nothing of it remains.
        let mut r = record();
        r["bike_stands"] = json!("x\" Smithfield North 12 \"y");
        let err = parse(r).unwrap_err();
        assert_eq!(err, Invalid::WrongType);
        assert!(!format!("{err} {err:?}").contains("Smithfield"));
    }

    #[test]
    fn every_reason_has_one_of_the_fixed_codes() {
        let all = [
            Invalid::Empty,
            Invalid::NotJson { line: 1, column: 2 },
            Invalid::MissingField(None),
            Invalid::WrongType,
            Invalid::Shape,
            Invalid::Field("status"),
            Invalid::Number,
            Invalid::TooLarge("bike_stands"),
            Invalid::Time("last_update"),
            Invalid::TooLong,
            Invalid::Unsigned,
        ];
        let codes: Vec<_> = all.iter().map(Invalid::code).collect();
        assert_eq!(codes, Invalid::CODES);
        assert_eq!(
            Invalid::MissingField(None).to_string(),
            "required field (not in the schema) is missing"
        );
    }
}
