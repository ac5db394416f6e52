//! Why the encryptor's pipeline or its store failed: its own module, so the
//! store (`db`) and the pipeline that drives it both use it without
//! importing each other.

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Kafka connection settings: {0}")]
    KafkaSettings(#[from] fleetward_protocol::kafka::KafkaSecurityError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
