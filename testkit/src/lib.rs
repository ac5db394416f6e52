//! Shared harness for fleetward's integration tests, against the real local
//! services started by `./deploy.sh dev-up` / `./deploy.sh test`
//! (devenv/dev.sh): kube-apiserver, PostgreSQL, Kafka, Mosquitto.
//!
//! Every test works in a namespace of its own, so tests run in parallel.
//! A missing service is an error, never a skip: a test that silently does
//! nothing would pass without testing anything.
//!
//! By what it starts: `cluster` (API server, namespaces), `kafka`,
//! `mosquitto`, `fixtures` (test data, manifests), `workload` (a process
//! under test), `stats` (percentiles for the benches), `memory` (a
//! process's resident memory), and with the `operator` feature `operator`. The helpers every test uses, once for
//! the whole workspace: `net` (ports, HTTP GETs) and `wait` (polling with a
//! deadline).

mod cluster;
mod fixtures;
mod kafka;
mod memory;
mod mosquitto;
mod net;
#[cfg(feature = "operator")]
mod operator;
mod stats;
mod wait;
mod workload;

pub use cluster::*;
pub use fixtures::*;
pub use kafka::*;
pub use memory::rss_mib;
pub use mosquitto::*;
pub use net::*;
#[cfg(feature = "operator")]
pub use operator::*;
pub use stats::percentile;
pub use wait::*;
pub use workload::{Workload, metric_in, workspace_binary};
