//! Station records from each source, as the protocol's station record
//! (`fleetward_protocol::station`, JCDecaux VLS v1 field names): a
//! JCDecaux station is read as it is, GBFS stations are mapped onto the
//! same names, so the encryptor handles one format.

pub use fleetward_protocol::station::{Position, Station, StationNumber};
use serde_json::Value;

/// Why one station of a response was skipped (counted, never fatal).
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum Malformed {
    #[error("station is not a JSON object")]
    NotAnObject,
    #[error("station does not match the expected fields: {0}")]
    Fields(String),
    #[error("GBFS station {0:?} has no station_status entry")]
    NoStatus(String),
    #[error("GBFS station {0:?} has no station_information entry")]
    NoInformation(String),
    #[error("GBFS station has no station_id")]
    NoId,
    #[error("last_update {0} is not a plausible time")]
    Time(i64),
}

/// One JCDecaux v1 station object. A station without `contract_name`
/// takes the contract that was asked for.
pub fn from_jcdecaux(mut v: Value, contract: &str) -> Result<Station, Malformed> {
    let obj = v.as_object_mut().ok_or(Malformed::NotAnObject)?;
    obj.entry("contract_name")
        .or_insert_with(|| Value::String(contract.to_string()));
    let s: Station = serde_json::from_value(v).map_err(|e| Malformed::Fields(e.to_string()))?;
    check_time(s)
}

/// The Kafka key (the station number) and value (the record's JSON) the
/// ingestor produces for one station.
pub fn kafka_record(s: &Station) -> (String, Vec<u8>) {
    (s.number.to_string(), serde_json::to_vec(s).expect("station serializes"))
}

/// A station whose time is not plausible (see the protocol's
/// `PLAUSIBLE_LAST_UPDATE_MS`) is skipped.
fn check_time(s: Station) -> Result<Station, Malformed> {
    if s.has_plausible_time() {
        Ok(s)
    } else {
        Err(Malformed::Time(s.last_update))
    }
}

/// GBFS `data.stations` of a feed document.
fn gbfs_stations(doc: &Value) -> Option<&Vec<Value>> {
    doc.get("data")?.get("stations")?.as_array()
}

/// GBFS v3 names are localized (`[{"text","language"}]`); v2 names are strings.
fn gbfs_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .first()
            .and_then(|i| i.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// `last_reported`: seconds (GBFS v1/v2) or RFC 3339 (v3) → milliseconds.
fn gbfs_time(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().map(|s| s * 1000),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

fn gbfs_u32(v: Option<&Value>) -> Option<u32> {
    v?.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn gbfs_flag(v: Option<&Value>, default: bool) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        _ => default,
    }
}

/// Joins GBFS `station_information` and `station_status` by `station_id`.
/// Returns the stations and, for each one skipped, why.
pub fn from_gbfs(information: &Value, status: &Value, system_name: &str) -> (Vec<Station>, Vec<Malformed>) {
    let mut skipped = Vec::new();
    let infos = gbfs_stations(information).cloned().unwrap_or_default();
    let statuses = gbfs_stations(status).cloned().unwrap_or_default();
    let id = |v: &Value| match v.get("station_id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let mut by_id = std::collections::HashMap::new();
    for s in statuses {
        match id(&s) {
            Some(i) => {
                by_id.insert(i, s);
            }
            None => skipped.push(Malformed::NoId),
        }
    }
    let mut out = Vec::new();
    for info in infos {
        let Some(sid) = id(&info) else {
            skipped.push(Malformed::NoId);
            continue;
        };
        let Some(st) = by_id.remove(&sid) else {
            skipped.push(Malformed::NoStatus(sid));
            continue;
        };
        let Some(last_update) = gbfs_time(st.get("last_reported")) else {
            skipped.push(Malformed::Fields(format!("station {sid:?}: no usable last_reported")));
            continue;
        };
        let bikes = gbfs_u32(st.get("num_bikes_available"));
        let docks = gbfs_u32(st.get("num_docks_available"));
        let (Some(bikes), Some(docks)) = (bikes, docks) else {
            skipped.push(Malformed::Fields(format!(
                "station {sid:?}: num_bikes_available/num_docks_available missing"
            )));
            continue;
        };
        let open = gbfs_flag(st.get("is_installed"), true) && gbfs_flag(st.get("is_renting"), true);
        let position = match (
            info.get("lat").and_then(Value::as_f64),
            info.get("lon").and_then(Value::as_f64),
        ) {
            (Some(lat), Some(lng)) => Some(Position { lat, lng }),
            _ => None,
        };
        let station = Station {
            number: StationNumber::from_id(&sid),
            contract_name: system_name.to_string(),
            name: gbfs_text(info.get("name")),
            address: gbfs_text(info.get("address")),
            position,
            banking: false,
            bonus: false,
            bike_stands: gbfs_u32(info.get("capacity")).unwrap_or(bikes.saturating_add(docks)),
            available_bike_stands: docks,
            available_bikes: bikes,
            status: if open { "OPEN" } else { "CLOSED" }.into(),
            last_update,
        };
        match check_time(station) {
            Ok(s) => out.push(s),
            Err(e) => skipped.push(e),
        }
    }
    // Status entries left over have no information entry.
    let mut orphans: Vec<_> = by_id.into_keys().collect();
    orphans.sort();
    skipped.extend(orphans.into_iter().map(Malformed::NoInformation));
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jcdecaux_dublin_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/stations/jcdecaux-v1-dublin.json"
        );
        let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(all.len(), 114);
        let parsed: Vec<Station> = all
            .iter()
            .map(|v| from_jcdecaux(v.clone(), "Dublin").unwrap())
            .collect();
        let s = parsed.iter().find(|s| s.number == StationNumber::Number(42)).unwrap();
        assert_eq!(s.address, "Smithfield North");
        assert_eq!(s.contract_name, "dublin");
        assert_eq!(s.last_update, 1770418469000);
        // Serializing gives back the source's fields and values.
        for (src, s) in all.iter().zip(&parsed) {
            assert_eq!(&serde_json::to_value(s).unwrap(), src);
        }
    }

    #[test]
    fn malformed_jcdecaux_stations_are_refused() {
        let good = json!({"number": 1, "contract_name": "x", "bike_stands": 3, "available_bike_stands": 1,
            "available_bikes": 2, "status": "OPEN", "last_update": 1770418469000_i64});
        assert!(from_jcdecaux(good.clone(), "x").is_ok());
        let mut no_number = good.clone();
        no_number.as_object_mut().unwrap().remove("number");
        let mut null_time = good.clone();
        null_time["last_update"] = Value::Null;
        let mut seconds = good.clone();
        seconds["last_update"] = json!(1770418469);
        let mut negative = good.clone();
        negative["available_bikes"] = json!(-1);
        for bad in [no_number, null_time, negative, json!("station"), json!([1])] {
            assert!(from_jcdecaux(bad.clone(), "x").is_err(), "{bad}");
        }
        assert_eq!(from_jcdecaux(seconds, "x"), Err(Malformed::Time(1770418469)));
        // A missing contract_name is the contract that was asked for.
        let mut no_contract = good;
        no_contract.as_object_mut().unwrap().remove("contract_name");
        assert_eq!(from_jcdecaux(no_contract, "Dublin").unwrap().contract_name, "Dublin");
    }

    #[test]
    fn gbfs_is_joined_by_station_id() {
        let info = json!({"data": {"stations": [
            {"station_id": "7", "name": "Quay", "address": "1 Quay St", "lat": 53.1, "lon": -6.2, "capacity": 20},
            {"station_id": "hub-a", "name": [{"text": "Hub A", "language": "en"}], "lat": 53.2, "lon": -6.3},
            {"station_id": "9", "name": "No status"}
        ]}});
        let status = json!({"data": {"stations": [
            {"station_id": "7", "num_bikes_available": 5, "num_docks_available": 15, "is_installed": true,
             "is_renting": true, "last_reported": 1770418469},
            {"station_id": "hub-a", "num_bikes_available": 1, "num_docks_available": 2, "is_renting": false,
             "last_reported": "2026-02-06T22:54:29Z"},
            {"station_id": "8", "num_bikes_available": 1, "num_docks_available": 1, "last_reported": 1770418469}
        ]}});
        let (stations, skipped) = from_gbfs(&info, &status, "Quayside");
        assert_eq!(stations.len(), 2);
        let s7 = &stations[0];
        assert_eq!(s7.number, StationNumber::Number(7));
        assert_eq!(s7.contract_name, "Quayside");
        assert_eq!(s7.address, "1 Quay St");
        assert_eq!(s7.position, Some(Position { lat: 53.1, lng: -6.2 }));
        assert_eq!(
            (s7.available_bikes, s7.available_bike_stands, s7.bike_stands),
            (5, 15, 20)
        );
        assert_eq!((s7.status.as_str(), s7.last_update), ("OPEN", 1770418469000));
        let hub = &stations[1];
        assert_eq!(hub.number, StationNumber::Text("hub-a".into()));
        assert_eq!(hub.name, "Hub A");
        assert_eq!((hub.status.as_str(), hub.bike_stands), ("CLOSED", 3));
        assert_eq!(hub.last_update, 1770418469000);
        assert_eq!(
            skipped,
            vec![Malformed::NoStatus("9".into()), Malformed::NoInformation("8".into())]
        );
    }
}
