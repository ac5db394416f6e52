#!/bin/sh
# Writes server.properties from the environment (KAFKA_FOO_BAR=x becomes
# foo.bar=x; `__` stands for `_` and `___` for `-`, as in the apache/kafka
# image), formats the log directory once, then runs the broker.
set -eu
conf=${KAFKA_CONFIG_FILE_PATH:-/tmp/server.properties}
: >"$conf"
env | sort | while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_JMX_OPTS | KAFKA_CONFIG_FILE_PATH) ;;
    KAFKA_*)
      prop=$(printf '%s' "${name#KAFKA_}" | tr '[:upper:]' '[:lower:]' | sed 's/___/-/g; s/__/\x01/g; s/_/./g; s/\x01/_/g')
      printf '%s=%s\n' "$prop" "$value" >>"$conf"
      ;;
  esac
done
# shellcheck disable=SC2086 # the *_OPTS variables hold several words
set -- ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} ${KAFKA_OPTS:-} \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*'
if [ -n "${CLUSTER_ID:-}" ]; then
  java "$@" kafka.tools.StorageTool format --ignore-formatted -t "$CLUSTER_ID" -c "$conf"
fi
exec java "$@" kafka.Kafka "$conf"
