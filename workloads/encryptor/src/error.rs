//! Why the encryptor's pipeline or its store failed: its own module, so the
//! store (`db`) and the pipeline that drives it both use it without
//! importing each other.

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
