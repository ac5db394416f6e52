//! The station record a StationFeed's ingestor produces on Kafka and its
//! encryptor consumes: one JSON object per station with JCDecaux VLS v1
//! field names (seed 000's table), whatever the source. GBFS stations are
//! mapped onto the same names by the ingestor, so the encryptor reads one
//! format. Fields beyond these are ignored when read.
//!
//! This is the only definition of the record: the ingestor serializes
//! [`Station`], the encryptor deserializes [`Station`] and then checks it
//! against what its table can hold.

use std::ops::Range;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Position {
    pub lat: f64,
    pub lng: f64,
}

/// A station id: JCDecaux numbers are integers; GBFS ids are strings
/// (numeric ones are kept as numbers so both sources key alike).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum StationNumber {
    Number(u64),
    Text(String),
}

impl StationNumber {
    pub fn from_id(id: &str) -> Self {
        match id.parse::<u64>() {
            Ok(n) if n.to_string() == id => Self::Number(n),
            _ => Self::Text(id.to_string()),
        }
    }
}

impl std::fmt::Display for StationNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Station {
    pub number: StationNumber,
    pub contract_name: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    #[serde(default)]
    pub banking: bool,
    #[serde(default)]
    pub bonus: bool,
    pub bike_stands: u32,
    pub available_bike_stands: u32,
    pub available_bikes: u32,
    pub status: String,
    /// Milliseconds since the Unix epoch (JCDecaux's unit).
    pub last_update: i64,
}

/// Field names of a station record ([`Station`] and [`Position`]), in
/// declaration order: the only names an error about a record may quote.
pub const FIELDS: [&str; 14] = [
    "number",
    "contract_name",
    "name",
    "address",
    "position",
    "banking",
    "bonus",
    "bike_stands",
    "available_bike_stands",
    "available_bikes",
    "status",
    "last_update",
    "lat",
    "lng",
];

/// The plausible `last_update` values, in milliseconds: from 2000 to 2200.
/// Both sides refuse anything else, which catches seconds given for
/// milliseconds and garbage before it becomes part of a natural key.
pub const PLAUSIBLE_LAST_UPDATE_MS: Range<i64> = 946_684_800_000..7_258_118_400_000;

impl Station {
    /// Whether `last_update` lies in [`PLAUSIBLE_LAST_UPDATE_MS`].
    pub fn has_plausible_time(&self) -> bool {
        PLAUSIBLE_LAST_UPDATE_MS.contains(&self.last_update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn full() -> Station {
        Station {
            number: StationNumber::Number(42),
            contract_name: "dublin".into(),
            name: "SMITHFIELD NORTH".into(),
            address: "Smithfield North".into(),
            position: Some(Position {
                lat: 53.349562,
                lng: -6.278198,
            }),
            banking: true,
            bonus: false,
            bike_stands: 30,
            available_bike_stands: 15,
            available_bikes: 15,
            status: "OPEN".into(),
            last_update: 1_770_418_469_000,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        for s in [
            full(),
            Station {
                number: StationNumber::Text("hub-a".into()),
                position: None,
                ..full()
            },
        ] {
            let bytes = serde_json::to_vec(&s).unwrap();
            assert_eq!(serde_json::from_slice::<Station>(&bytes).unwrap(), s);
        }
    }

    #[test]
    fn the_wire_names_are_jcdecaux_v1s() {
        let v = serde_json::to_value(full()).unwrap();
        let mut names: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        names.extend(v["position"].as_object().unwrap().keys().map(String::as_str));
        let mut expected = FIELDS.to_vec();
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected);
        assert_eq!(v["number"], json!(42));
        // No position: the key is left out, and reads back as none.
        let without = Station {
            position: None,
            ..full()
        };
        let v = serde_json::to_value(&without).unwrap();
        assert_eq!(v.get("position"), None);
        // Optional fields may be absent; extra fields are ignored.
        let minimal = json!({"number": "7", "contract_name": "x", "bike_stands": 3, "available_bike_stands": 1,
            "available_bikes": 2, "status": "OPEN", "last_update": 1_770_418_469_000_i64, "extra": Value::Null});
        let s: Station = serde_json::from_value(minimal).unwrap();
        assert_eq!(s.number, StationNumber::Text("7".into()));
        assert_eq!((s.name.as_str(), s.banking, s.position), ("", false, None));
    }

    #[test]
    fn numeric_ids_key_like_numbers() {
        assert_eq!(StationNumber::from_id("42"), StationNumber::Number(42));
        assert_eq!(StationNumber::from_id("042"), StationNumber::Text("042".into()));
        assert_eq!(StationNumber::from_id("hub-a").to_string(), "hub-a");
        assert_eq!(StationNumber::Number(7).to_string(), "7");
    }

    #[test]
    fn times_outside_2000_to_2200_are_implausible() {
        let at = |last_update| Station { last_update, ..full() }.has_plausible_time();
        assert!(at(1_770_418_469_000));
        assert!(at(946_684_800_000));
        assert!(!at(946_684_799_999));
        assert!(!at(7_258_118_400_000));
        assert!(!at(1_770_418_469), "seconds, not milliseconds");
    }
}
