//! The gateway end to end: real Mosquitto (TLS, operator-generated config),
//! real Kafka, real PostgreSQL (audit), the real operator's credentials.
//! One test binary; its tests by concern:

mod commands;
mod credentials;
mod forwarding;
mod outages;
mod refusals;
mod replay;

const WEATHER: &str = "weatherStation";
