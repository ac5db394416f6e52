//! The operator's settings (flags and environment of the operator binary):
//! the images it deploys and the Kafka it points workloads at. Pure data,
//! so plans and builders take `&Config` rather than the reconcilers'
//! `Context`.

/// Operator-wide settings (flags / environment of the operator binary).
#[derive(Clone, Debug)]
pub struct Config {
    pub gateway_image: String,
    pub mosquitto_image: String,
    pub ingestor_image: String,
    pub encryptor_image: String,
    pub billing_image: String,
    /// Kafka bootstrap servers used when a resource does not name its own.
    pub kafka_bootstrap: String,
    /// Mutual TLS with that Kafka: the operator's Kafka CA issues each
    /// workload its client certificate (and the broker its own).
    pub kafka_tls: Option<KafkaTls>,
}

/// Where the operator keeps the Kafka CA and the broker's certificates:
/// Secrets of its own namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaTls {
    pub namespace: String,
    /// The CA (`ca.crt`, `ca.key`): made once by the operator.
    pub ca_secret: String,
    /// The broker's keystore and the ACL bootstrapper's, when the operator
    /// certifies the chart's own Kafka.
    pub broker: Option<KafkaBroker>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KafkaBroker {
    /// `keystore.pem` (key + certificate), `ca.crt`.
    pub server_secret: String,
    /// The same for the admin identity that writes the ACLs.
    pub admin_secret: String,
    /// Every name clients reach the broker by.
    pub dns_names: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let v = env!("CARGO_PKG_VERSION");
        Self {
            gateway_image: format!("ghcr.io/fleetward/gateway:{v}"),
            mosquitto_image: format!("ghcr.io/fleetward/mosquitto:{v}"),
            ingestor_image: format!("ghcr.io/fleetward/ingestor:{v}"),
            encryptor_image: format!("ghcr.io/fleetward/encryptor:{v}"),
            billing_image: format!("ghcr.io/fleetward/billing:{v}"),
            kafka_bootstrap: "kafka:9092".into(),
            kafka_tls: None,
        }
    }
}
