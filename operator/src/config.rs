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
        }
    }
}
