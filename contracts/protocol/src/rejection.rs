//! Why a message is refused: one reason per check, the same words in the
//! metrics' `reason` label and the audit log.

/// Why a message was refused. The string forms are the `reason` label of
/// metrics and the reason written to the audit log.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    #[error("topic is not device/<id>/data")]
    BadTopic,
    #[error("device_id does not match the sender's TLS identity")]
    TopicMismatch,
    #[error("unknown device")]
    UnknownDevice,
    #[error("device is disabled")]
    DisabledDevice,
    #[error("message larger than {limit} bytes")]
    Oversize { limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("timestamp too old")]
    StaleTimestamp,
    #[error("timestamp in the future")]
    FutureTimestamp,
    #[error("message_id already seen")]
    Replay,
    #[error("invalid signature")]
    BadSignature,
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("retained messages are not accepted")]
    Retained,
    #[error("waited at the broker longer than the gateway remembers message ids")]
    ExpiredInQueue,
    #[error("payload does not match the {category} schema: {detail}")]
    SchemaViolation { category: &'static str, detail: String },
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadTopic => "bad_topic",
            Rejection::TopicMismatch => "topic_mismatch",
            Rejection::UnknownDevice => "unknown_device",
            Rejection::DisabledDevice => "disabled_device",
            Rejection::Oversize { .. } => "oversize",
            Rejection::Malformed(_) => "malformed",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::FutureTimestamp => "future_timestamp",
            Rejection::Replay => "replay",
            Rejection::BadSignature => "bad_signature",
            Rejection::RateLimited => "rate_limited",
            Rejection::Retained => "retained",
            Rejection::ExpiredInQueue => "expired_in_queue",
            Rejection::SchemaViolation { .. } => "schema_violation",
        }
    }

    /// Every reason, for pre-registering metric label values.
    pub const ALL_REASONS: [&'static str; 14] = [
        "bad_topic",
        "topic_mismatch",
        "unknown_device",
        "disabled_device",
        "oversize",
        "malformed",
        "stale_timestamp",
        "future_timestamp",
        "replay",
        "bad_signature",
        "rate_limited",
        "retained",
        "expired_in_queue",
        "schema_violation",
    ];
}
