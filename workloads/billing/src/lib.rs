//! fleetward billing (seed 001): electricity meters read remotely instead
//! of house to house. Per Tariff, this workload
//! - stores the meters' readings from the gateway's Kafka topic
//!   (`ingest`), idempotently, offsets committed after the rows;
//! - on its schedule or on request, asks every selected meter for its
//!   register through the gateway's command API and waits for the answers
//!   (`read`), then bills the month (`run`, with the arithmetic in `bill`
//!   and `money`);
//! - serves bills, payments, defaulters, accounts and tenancies over a
//!   bearer-authenticated, rate-limited HTTP API (`api`), with an HTML page
//!   per bill and CSV of a period (`render`);
//! - reports its runs into the Tariff's `status.billing` (`kube`).

pub mod api;
pub mod bill;
pub mod db;
pub mod fleet;
pub mod ingest;
pub mod metrics;
pub mod money;
pub mod read;
pub mod render;
pub mod run;
pub mod service;
pub mod store;
