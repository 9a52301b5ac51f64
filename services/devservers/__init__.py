"""Local Apache Kafka and Apache Cassandra servers run as plain JVM processes from Maven Central jars."""
