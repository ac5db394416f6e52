//! Kafka, as the tests read it.

use crate::cluster::env;
use crate::fixtures::unique;

/// A Kafka consumer (`BaseConsumer` or `StreamConsumer`) subscribed to
/// `topic` from its beginning, in a group of its own that commits nothing,
/// so a test reads everything there is and leaves no trace.
pub fn kafka_reader<C>(topic: &str) -> C
where
    C: rdkafka::config::FromClientConfig + rdkafka::consumer::Consumer,
{
    let c: C = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("group.id", unique("test-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}
