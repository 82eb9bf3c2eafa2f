#!/usr/bin/env bash
# Puts Apache Kafka (the version tests/kafka/pom.xml pins) and its run-time
# dependencies in $ORDERFLOW_KAFKA_HOME/libs, once per version: the test
# harness (tests/common/kafka_cluster.rs) starts its brokers from there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${ORDERFLOW_KAFKA_HOME:-/var/tmp/orderflow-kafka}"
stamp="$home/libs/.pom-$(sha256sum "$here/pom.xml" | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "Kafka jars present in $home/libs"
  exit 0
fi
rm -rf "$home/libs"
mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$home/libs"
touch "$stamp"
echo "Kafka jars in $home/libs: $(ls "$home/libs"/kafka_2.13-*.jar | xargs -n1 basename)"
