//! The chart's Kafka identities against a real broker: the dev services'
//! Kafka has an SSL listener configured as the chart's broker (mutual TLS,
//! the certificate's CN as principal, `helm/fleetward/files/kafka-acls.sh`
//! as the only grants) and one client identity per role
//! (devenv/dev.sh `kafka_certificates`). Every client is configured as the
//! workloads configure theirs (`fleetward_protocol::kafka`).
//!
//! Each role does its work; then, as an attacker holding one identity (or
//! none) would, each tries what its role may not: write as billing, read
//! as the gateway or the ingestor, connect without a certificate, or with
//! one of the right name from another CA. All refused, and the topic holds
//! only what the gateway wrote.

use std::path::Path;
use std::time::Duration;

use fleetward_protocol::kafka::{SECURITY_PROTOCOL_ENV, Security, TLS_DIR_ENV};
use fleetward_testkit::{env, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// A client of the TLS listener with `identity`'s directory, read as a
/// workload reads the operator's mounted Secret.
fn config(identity: &str) -> ClientConfig {
    let dir = Path::new(&env("FLEETWARD_KAFKA_TLS_IDENTITIES")).join(identity);
    let security = Security::from_lookup(|k| match k {
        SECURITY_PROTOCOL_ENV => Some("ssl".into()),
        TLS_DIR_ENV => Some(dir.display().to_string()),
        _ => None,
    })
    .expect("the identity's files");
    security.client_config(&env("FLEETWARD_KAFKA_TLS_BROKERS"))
}

/// Writes one record keyed by the identity; Kafka's answer.
async fn produce(identity: &str, topic: &str) -> Result<(), KafkaError> {
    let producer: FutureProducer = config(identity)
        .set("message.timeout.ms", "8000")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic).key(identity).payload("reading"),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// Reads the topic from its start as `identity`: the keys of the records
/// (until none came for a few seconds), or the first error.
async fn consume(identity: &str, topic: &str) -> Result<Vec<String>, KafkaError> {
    let consumer: StreamConsumer = config(identity)
        .set("group.id", format!("{topic}-{identity}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut keys = Vec::new();
    let mut wait = Duration::from_secs(30);
    loop {
        match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => return Ok(keys),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(m)) => {
                keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
                wait = Duration::from_secs(3);
            }
        }
    }
}

fn code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

#[tokio::test]
async fn each_role_does_its_work_and_nothing_else() {
    let topic = unique("kafka-acl");
    produce("gateway", &topic).await.expect("the gateway writes telemetry");
    produce("ingestor", &format!("{topic}.stations"))
        .await
        .expect("the ingestor writes station records");
    produce("encryptor", &format!("{topic}.dlq"))
        .await
        .expect("the encryptor writes its dead letters");
    assert_eq!(
        consume("billing", &topic).await.expect("billing reads telemetry"),
        ["gateway"]
    );
    assert_eq!(
        consume("encryptor", &format!("{topic}.stations"))
            .await
            .expect("the encryptor reads station records"),
        ["ingestor"]
    );

    // Billing's identity (a compromised billing pod) writes a reading.
    let e = produce("billing", &topic).await.expect_err("billing may not write");
    assert_eq!(code(&e), Some(RDKafkaErrorCode::TopicAuthorizationFailed), "{e}");
    // The gateway's and the ingestor's read what they do not consume.
    for identity in ["gateway", "ingestor"] {
        let e = consume(identity, &topic)
            .await
            .expect_err(&format!("{identity} may not read"));
        assert!(
            matches!(
                code(&e),
                Some(RDKafkaErrorCode::GroupAuthorizationFailed | RDKafkaErrorCode::TopicAuthorizationFailed)
            ),
            "{identity} reading: {e}"
        );
    }
    // No certificate (the CA is public), and a certificate named
    // fleetward-gateway from another CA: no TLS session, so nothing is
    // written or read.
    for identity in ["anonymous", "rogue"] {
        let e = produce(identity, &topic)
            .await
            .expect_err(&format!("{identity} may not write"));
        assert!(
            matches!(
                code(&e),
                Some(
                    RDKafkaErrorCode::MessageTimedOut
                        | RDKafkaErrorCode::SaslAuthenticationFailed
                        | RDKafkaErrorCode::Authentication
                        | RDKafkaErrorCode::SSL
                )
            ),
            "{identity} writing: {e}"
        );
    }
    assert_eq!(
        consume("billing", &topic).await.expect("billing reads telemetry"),
        ["gateway"],
        "the topic holds only the gateway's record"
    );
}
