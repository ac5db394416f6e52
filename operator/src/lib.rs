//! fleetward operator: CRD types, one reconciler per kind, the PKI they
//! share, leader election, and the metrics/health endpoint.

pub mod aws_iot;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controllers;
pub mod crd;
pub mod crl;
pub mod error;
pub mod http;
pub mod leader;
pub mod merge_patch;
pub mod metrics;
pub mod mosquitto;
pub mod ownership;
pub mod pki;

pub use error::{Error, Result};
