//! The topics: where a device publishes data and reads commands and
//! responses, and the broker's control topic.

/// The broker's control topic for revoked certificate serials (the
/// fleetward_revoke plugin reads it; only the gateway identity may write it).
pub const REVOKE_TOPIC: &str = "$CONTROL/fleetward/v1/revoke";

/// `device/{id}/data` → `id`.
pub fn device_from_data_topic(topic: &str) -> Option<&str> {
    let id = topic.strip_prefix("device/")?.strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

pub fn data_topic(device_id: &str) -> String {
    format!("device/{device_id}/data")
}
pub fn command_topic(device_id: &str) -> String {
    format!("device/{device_id}/command")
}
pub fn response_topic(device_id: &str) -> String {
    format!("device/{device_id}/response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(device_from_data_topic("device/d1/data"), Some("d1"));
        assert_eq!(device_from_data_topic("device/d1/command"), None);
        assert_eq!(device_from_data_topic("device//data"), None);
        assert_eq!(device_from_data_topic("device/a/b/data"), None);
    }
}
