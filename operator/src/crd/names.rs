//! The names of the objects each kind owns, from the owner's name: a
//! Device or Tariff knows its Gateway only by `spec.gateway`, so these take
//! a name, not the object. Pure, like the rest of `crd`: the plans, the
//! CRL writer and the tests take names from here, never from a reconciler.

use super::{Gateway, StationFeed, Tariff};

impl Gateway {
    /// The CA Secret: the CA that signs the broker's, the gateway's and
    /// every Device's certificate, and the record of deleted Devices'
    /// revocations (`crl::RECORD_KEY`).
    pub fn ca_secret_name(gateway: &str) -> String {
        format!("{gateway}-ca")
    }
    pub fn broker_secret_name(gateway: &str) -> String {
        format!("{gateway}-broker-tls")
    }
    pub fn client_secret_name(gateway: &str) -> String {
        format!("{gateway}-gateway-client")
    }
    pub fn command_secret_name(gateway: &str) -> String {
        format!("{gateway}-command-api")
    }
    /// The meter key: the command API admits it only for `read_meter` to
    /// electricity meters; the Tariffs' billing workloads hold it.
    pub fn meter_key_secret_name(gateway: &str) -> String {
        format!("{gateway}-command-meter")
    }
    /// The Gateway's record key: the HMAC key of every Kafka record its
    /// gateway produces, held by the gateway and the consumers of its topic
    /// (the telemetry writer, billing), key `record.key`.
    pub fn record_key_secret_name(gateway: &str) -> String {
        format!("{gateway}-record-key")
    }
    /// The ClusterIP Service of the command API and metrics.
    pub fn api_service_name(gateway: &str) -> String {
        format!("{gateway}-api")
    }
    pub fn mosquitto_configmap_name(gateway: &str) -> String {
        format!("{gateway}-mosquitto")
    }
    /// The StatefulSet, and the gateway's ServiceAccount, Role and RoleBinding.
    pub fn workload_name(gateway: &str) -> String {
        format!("{gateway}-gateway")
    }
    /// The broker's persistence volume claim.
    pub fn broker_volume_name(gateway: &str) -> String {
        format!("{gateway}-broker-data")
    }
    /// The gateway workload's policy in AWS IoT Core.
    pub fn aws_iot_policy_name(ns: &str, gateway: &str) -> String {
        format!("{ns}_{gateway}_gateway")
    }
    /// With `spec.storage`: the telemetry writer's keyring Secret.
    pub fn telemetry_keyring_secret_name(gateway: &str) -> String {
        format!("{gateway}-telemetry-keyring")
    }
    /// With `spec.storage`: the telemetry writer's Deployment.
    pub fn telemetry_deployment_name(gateway: &str) -> String {
        format!("{gateway}-telemetry")
    }
    pub fn telemetry_consumer_group(ns: &str, gateway: &str) -> String {
        format!("fleetward.{ns}.{gateway}.telemetry")
    }
}

impl StationFeed {
    /// The feed's record key: the HMAC key of every station record its
    /// ingestor produces, which its encryptor verifies (key `record.key`).
    pub fn record_key_secret_name(feed: &str) -> String {
        format!("{feed}-record-key")
    }
    pub fn ingestor_name(feed: &str) -> String {
        format!("{feed}-ingestor")
    }
    pub fn encryptor_name(feed: &str) -> String {
        format!("{feed}-encryptor")
    }
    /// One consumer group per feed: two feeds reading the same topic each
    /// get every record.
    pub fn consumer_group(ns: &str, feed: &str) -> String {
        format!("fleetward.{ns}.{feed}")
    }
}

impl Tariff {
    /// One consumer group per Tariff: two Tariffs on one gateway's topic
    /// each see every reading.
    pub fn consumer_group(ns: &str, tariff: &str) -> String {
        format!("fleetward.{ns}.{tariff}.billing")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names clients, charts and docs rely on: a change here renames
    /// objects of running fleets.
    #[test]
    fn names_are_stable() {
        assert_eq!(Gateway::ca_secret_name("gw"), "gw-ca");
        assert_eq!(Gateway::workload_name("gw"), "gw-gateway");
        assert_eq!(Gateway::record_key_secret_name("gw"), "gw-record-key");
        assert_eq!(Gateway::aws_iot_policy_name("ns", "gw"), "ns_gw_gateway");
        assert_eq!(
            Gateway::telemetry_consumer_group("ns", "gw"),
            "fleetward.ns.gw.telemetry"
        );
        assert_eq!(StationFeed::record_key_secret_name("f"), "f-record-key");
        assert_eq!(StationFeed::consumer_group("ns", "f"), "fleetward.ns.f");
        assert_eq!(Tariff::consumer_group("ns", "t"), "fleetward.ns.t.billing");
    }
}
