//! Device categories (seed 002's five plus the electricity meter used by
//! billing): each has a payload schema the gateway enforces, a default
//! cadence, and a generator the simulator uses.
//!
//! Schemas are strict: the payload is a JSON object, required fields must be
//! present with the right type and within range, and unknown fields are
//! refused (a compromised device cannot smuggle extra data through).
//! A command acknowledgement (`{"ack": "<command message_id>", "result":
//! "ok"|"rejected"}`) is accepted from every category.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The `action` of a command that asks a meter for its reading now
/// (`{"action": "read_meter"}`); the meter answers on its data topic with
/// its register and `reply_to` = the command's message id.
pub const READ_METER: &str = "read_meter";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Category {
    WeatherStation,
    IndoorThermometer,
    IpCamera,
    AirQualityProbe,
    SmartLock,
    ElectricityMeter,
}

enum Kind {
    Number { min: f64, max: f64 },
    Integer { min: i64, max: i64 },
    Bool,
    OneOf(&'static [&'static str]),
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn num(name: &'static str, min: f64, max: f64, required: bool) -> Field {
    Field {
        name,
        kind: Kind::Number { min, max },
        required,
    }
}

const WEATHER: &[Field] = &[
    num("temperature", -80.0, 60.0, true),
    num("humidity", 0.0, 100.0, true),
    num("pressure", 850.0, 1100.0, true),
    num("wind_speed", 0.0, 120.0, true),
    num("rain_mm", 0.0, 500.0, false),
];
const THERMOMETER: &[Field] = &[
    num("temperature", -20.0, 60.0, true),
    num("humidity", 0.0, 100.0, false),
    num("battery", 0.0, 100.0, false),
];
const CAMERA: &[Field] = &[
    Field {
        name: "motion",
        kind: Kind::Bool,
        required: true,
    },
    Field {
        name: "fps",
        kind: Kind::Integer { min: 0, max: 120 },
        required: true,
    },
    num("storage_free_mb", 0.0, 1.0e9, true),
    Field {
        name: "recording",
        kind: Kind::Bool,
        required: false,
    },
];
const AIR: &[Field] = &[
    num("pm25", 0.0, 1000.0, true),
    num("pm10", 0.0, 2000.0, true),
    num("co2", 0.0, 10000.0, true),
    num("voc", 0.0, 10000.0, false),
];
const LOCK: &[Field] = &[
    Field {
        name: "locked",
        kind: Kind::Bool,
        required: true,
    },
    num("battery", 0.0, 100.0, true),
    Field {
        name: "event",
        kind: Kind::OneOf(&["none", "lock", "unlock", "tamper", "jam"]),
        required: false,
    },
];
const METER: &[Field] = &[
    // Cumulative register reading; billing takes differences.
    num("kwh_total", 0.0, 1.0e12, true),
    num("voltage", 0.0, 500.0, false),
    num("power_w", 0.0, 1.0e6, false),
    // Set on the reading that answers a `read_meter` command: the command's
    // message id, so the billing run matches answers to its questions.
    Field {
        name: "reply_to",
        kind: Kind::OneOf(&[]),
        required: false,
    },
];
const ACK: &[Field] = &[
    Field {
        name: "ack",
        kind: Kind::OneOf(&[]),
        required: true,
    },
    Field {
        name: "result",
        kind: Kind::OneOf(&["ok", "rejected"]),
        required: true,
    },
];

impl Category {
    pub const ALL: [Category; 6] = [
        Category::WeatherStation,
        Category::IndoorThermometer,
        Category::IpCamera,
        Category::AirQualityProbe,
        Category::SmartLock,
        Category::ElectricityMeter,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::WeatherStation => "weatherStation",
            Self::IndoorThermometer => "indoorThermometer",
            Self::IpCamera => "ipCamera",
            Self::AirQualityProbe => "airQualityProbe",
            Self::SmartLock => "smartLock",
            Self::ElectricityMeter => "electricityMeter",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// How often a device of this category reports by default.
    pub fn default_cadence(&self) -> Duration {
        Duration::from_secs(match self {
            Self::WeatherStation => 60,
            Self::IndoorThermometer => 30,
            Self::IpCamera => 10,
            Self::AirQualityProbe => 60,
            Self::SmartLock => 300,
            Self::ElectricityMeter => 900,
        })
    }

    fn fields(&self) -> &'static [Field] {
        match self {
            Self::WeatherStation => WEATHER,
            Self::IndoorThermometer => THERMOMETER,
            Self::IpCamera => CAMERA,
            Self::AirQualityProbe => AIR,
            Self::SmartLock => LOCK,
            Self::ElectricityMeter => METER,
        }
    }

    /// Checks a payload (its JSON text) against this category's schema.
    pub fn validate(&self, payload: &str) -> Result<(), String> {
        let value: Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        let Value::Object(map) = value else {
            return Err("payload must be a JSON object".into());
        };
        if map.contains_key("ack") {
            return check(&map, ACK);
        }
        check(&map, self.fields())
    }

    /// The reading a meter sends in answer to a `read_meter` command: its
    /// register as it stands, with the command's id. Other categories have
    /// no such answer.
    pub fn answer_read(&self, state: &SampleState, command_id: &str) -> Option<Value> {
        (*self == Self::ElectricityMeter).then(|| {
            json!({
                "kwh_total": (state.kwh_total * 1000.0).round() / 1000.0,
                "reply_to": command_id,
            })
        })
    }

    /// A plausible reading; `state` carries cumulative values between calls.
    pub fn sample(&self, state: &mut SampleState) -> Value {
        let mut rng = rand::rng();
        match self {
            Self::WeatherStation => json!({
                "temperature": round(rng.random_range(-5.0..30.0)),
                "humidity": round(rng.random_range(30.0..95.0)),
                "pressure": round(rng.random_range(980.0..1040.0)),
                "wind_speed": round(rng.random_range(0.0..20.0)),
            }),
            Self::IndoorThermometer => json!({
                "temperature": round(rng.random_range(17.0..26.0)),
                "humidity": round(rng.random_range(30.0..60.0)),
            }),
            Self::IpCamera => json!({
                "motion": rng.random_bool(0.2),
                "fps": 25,
                "storage_free_mb": round(rng.random_range(1000.0..64000.0)),
            }),
            Self::AirQualityProbe => json!({
                "pm25": round(rng.random_range(2.0..60.0)),
                "pm10": round(rng.random_range(5.0..90.0)),
                "co2": round(rng.random_range(400.0..1500.0)),
            }),
            Self::SmartLock => {
                if rng.random_bool(0.1) {
                    state.locked = !state.locked;
                }
                json!({
                    "locked": state.locked,
                    "battery": round(rng.random_range(40.0..100.0)),
                    "event": if state.locked { "lock" } else { "unlock" },
                })
            }
            Self::ElectricityMeter => {
                state.kwh_total += rng.random_range(0.05..0.6);
                json!({
                    "kwh_total": (state.kwh_total * 1000.0).round() / 1000.0,
                    "voltage": round(rng.random_range(225.0..240.0)),
                })
            }
        }
    }
}

/// Cumulative values a simulated device carries between readings.
#[derive(Debug, Default, Clone)]
pub struct SampleState {
    pub kwh_total: f64,
    pub locked: bool,
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn check(map: &Map<String, Value>, fields: &[Field]) -> Result<(), String> {
    for key in map.keys() {
        if !fields.iter().any(|f| f.name == key) {
            // Named for the audit, but never more of it than a short prefix.
            let shown: String = key.chars().take(32).collect();
            return Err(format!("unknown field {shown:?}"));
        }
    }
    for f in fields {
        let Some(v) = map.get(f.name) else {
            if f.required {
                return Err(format!("missing field {:?}", f.name));
            }
            continue;
        };
        let ok = match &f.kind {
            Kind::Number { min, max } => v.as_f64().is_some_and(|x| x >= *min && x <= *max),
            Kind::Integer { min, max } => v.as_i64().is_some_and(|x| x >= *min && x <= *max),
            Kind::Bool => v.is_boolean(),
            // An empty list means "any non-empty string".
            Kind::OneOf([]) => v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 128),
            Kind::OneOf(allowed) => v.as_str().is_some_and(|s| allowed.contains(&s)),
        };
        if !ok {
            return Err(format!("field {:?} has a wrong type or is out of range", f.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_satisfy_their_own_schema() {
        let mut state = SampleState::default();
        for c in Category::ALL {
            for _ in 0..50 {
                let p = c.sample(&mut state).to_string();
                assert_eq!(c.validate(&p), Ok(()), "{c:?}: {p}");
            }
        }
    }

    #[test]
    fn schema_refuses_wrong_shapes() {
        let w = Category::WeatherStation;
        assert!(w.validate("[]").is_err());
        assert!(w.validate(r#"{"temperature":20}"#).unwrap_err().contains("missing"));
        let full = r#"{"temperature":20,"humidity":50,"pressure":1000,"wind_speed":3}"#;
        assert_eq!(w.validate(full), Ok(()));
        assert!(
            w.validate(&full.replace("20", "\"20\"")).is_err(),
            "string for a number"
        );
        assert!(w.validate(&full.replace("1000", "5000")).is_err(), "out of range");
        assert!(
            w.validate(&full.replace('}', r#","cmd":"rm -rf /"}"#))
                .unwrap_err()
                .contains("unknown")
        );
        let cam = Category::IpCamera;
        assert!(
            cam.validate(r#"{"motion":true,"fps":2.5,"storage_free_mb":1}"#)
                .is_err(),
            "fps is an integer"
        );
        assert!(
            Category::SmartLock
                .validate(r#"{"locked":true,"battery":5,"event":"explode"}"#)
                .is_err()
        );
    }

    #[test]
    fn acks_are_accepted_from_any_category() {
        for c in Category::ALL {
            assert_eq!(c.validate(r#"{"ack":"c-1","result":"ok"}"#), Ok(()));
            assert!(c.validate(r#"{"ack":"c-1","result":"maybe"}"#).is_err());
        }
    }

    #[test]
    fn names_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }

    #[test]
    fn a_meter_answers_a_read_with_its_register_and_the_command_id() {
        let mut s = SampleState::default();
        let taken = Category::ElectricityMeter.sample(&mut s)["kwh_total"].as_f64().unwrap();
        let answer = Category::ElectricityMeter.answer_read(&s, "cmd-7").unwrap();
        assert_eq!(answer["reply_to"], "cmd-7");
        assert_eq!(answer["kwh_total"].as_f64().unwrap(), taken);
        assert_eq!(Category::ElectricityMeter.validate(&answer.to_string()), Ok(()));
        assert!(Category::SmartLock.answer_read(&s, "cmd-7").is_none());
        assert!(
            Category::ElectricityMeter
                .validate(r#"{"kwh_total":1,"reply_to":""}"#)
                .is_err()
        );
    }

    #[test]
    fn meter_readings_are_cumulative() {
        let mut s = SampleState::default();
        let a = Category::ElectricityMeter.sample(&mut s)["kwh_total"].as_f64().unwrap();
        let b = Category::ElectricityMeter.sample(&mut s)["kwh_total"].as_f64().unwrap();
        assert!(b > a);
    }
}
