//! The device topics: where a device publishes data and reads commands and
//! responses.

/// Every device topic is `device/{id}/...`.
pub const DEVICE_TOPIC_PREFIX: &str = "device/";
/// ... and a data topic is `device/{id}/data`.
pub const DATA_TOPIC_SUFFIX: &str = "/data";

/// `device/{id}/data` → `id`.
pub fn device_from_data_topic(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix(DEVICE_TOPIC_PREFIX)?
        .strip_suffix(DATA_TOPIC_SUFFIX)?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

pub fn data_topic(device_id: &str) -> String {
    format!("{DEVICE_TOPIC_PREFIX}{device_id}{DATA_TOPIC_SUFFIX}")
}
pub fn command_topic(device_id: &str) -> String {
    format!("{DEVICE_TOPIC_PREFIX}{device_id}/command")
}
pub fn response_topic(device_id: &str) -> String {
    format!("{DEVICE_TOPIC_PREFIX}{device_id}/response")
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
        assert_eq!(device_from_data_topic(&data_topic("d1")), Some("d1"));
        assert_eq!(command_topic("d1"), "device/d1/command");
        assert_eq!(response_topic("d1"), "device/d1/response");
    }
}
