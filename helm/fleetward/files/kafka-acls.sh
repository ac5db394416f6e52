#!/bin/sh
# The ACLs of fleetward's Kafka, one line per role (the CN of the operator's
# client certificates, operator: controllers/kafka_client.rs). The gateway
# and the ingestor produce; the encryptor and the telemetry writer consume
# and dead-letter; billing consumes. Nothing else: the broker runs with
# allow.everyone.if.no.acl.found=false, so any other principal may do
# nothing. Idempotent (adding an ACL that exists changes nothing).
#
# Run by the chart's Kafka pod (its acls container) and by devenv/dev.sh
# for the host broker the tests use:
#   KAFKA_ACL_BOOTSTRAP  the broker (default localhost:9092)
#   KAFKA_ACL_CONFIG     client properties of a super user (optional)
#   KAFKA_LIBS           the Kafka jars (default /opt/kafka/libs)
set -eu
acl() {
  java -Xmx96m -XX:-UsePerfData -cp "${KAFKA_LIBS:-/opt/kafka/libs}/*" org.apache.kafka.tools.AclCommand \
    --bootstrap-server "${KAFKA_ACL_BOOTSTRAP:-localhost:9092}" \
    ${KAFKA_ACL_CONFIG:+--command-config "$KAFKA_ACL_CONFIG"} --add "$@" >/dev/null
}
acl --allow-principal User:fleetward-gateway --allow-principal User:fleetward-ingestor \
  --allow-principal User:fleetward-encryptor \
  --operation Write --operation Create --operation Describe --topic '*'
acl --allow-principal User:fleetward-encryptor --allow-principal User:fleetward-billing \
  --operation Read --operation Describe --topic '*' --group '*'
