//! A refused message, as the checks produce it and the audit trail records
//! it: its own module, so the audit (which the registry uses) does not
//! import the checks (which use the registry).

use fleetward_protocol::Rejection;

/// A refused message, with what is known about it for the audit trail.
#[derive(Debug)]
pub struct Refused {
    pub rejection: Rejection,
    /// The TLS identity (from the topic), when the topic had one.
    pub device_id: Option<String>,
    pub message_id: Option<String>,
}
