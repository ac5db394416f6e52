//! The tracing subscriber every binary installs first: the filter comes
//! from `RUST_LOG` (else the binary's default), lines go to stdout as text
//! or, for log collectors, as JSON.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    /// One JSON object a line.
    Json,
}

impl Format {
    /// `Json` when a binary's `LOG_JSON` flag is set, else `Text`.
    pub fn json_if(json: bool) -> Self {
        if json { Self::Json } else { Self::Text }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG`
/// is unset or unreadable (e.g. `"info"`, or `"info,kube_runtime=warn"`).
/// Panics when called twice in one process, like `tracing_subscriber`'s
/// own `init`.
pub fn init(format: Format, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    match format {
        Format::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        Format::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
}
