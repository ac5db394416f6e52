//! What every fleetward binary shares at run time, so the gateway, the
//! ingestor, the encryptor, billing, the simulator and the operator start,
//! log, report and stop the same way:
//!
//! - [`logging`]: the tracing subscriber (`RUST_LOG`, text or JSON lines);
//! - [`shutdown`]: SIGTERM (what Kubernetes sends) or SIGINT, and a drain
//!   with a deadline;
//! - [`http`]: `/metrics` (the binary's registry plus `process_*` and
//!   `fleetward_build_info`) and `/health`;
//! - [`backoff`]: the one wait between retries of anything that fails;
//! - [`bearer`]: the bearer-key check of the HTTP APIs.
//!
//! It touches no resource of the project: no Kafka, database or cluster.

pub mod backoff;
pub mod bearer;
pub mod http;
pub mod logging;
pub mod shutdown;
