//! fleetward's MQTT security gateway: subscribes to every device's data
//! topic on the gateway's Mosquitto, checks each message (identity, size,
//! freshness, replay, HMAC, rate, schema), forwards valid ones to the HTTP
//! backend and/or Kafka, audits every refusal, and signs commands.

pub mod audit;
pub mod bucket;
pub mod checks;
pub mod command;
pub mod config;
pub mod crl;
pub mod device_status;
pub mod forward;
pub mod http;
pub mod limits;
pub mod liveness;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod refusal;
pub mod registry;
pub mod replay_store;
