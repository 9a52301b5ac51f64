"""Local tooling kept out of the service's wheel: Kafka and Cassandra as JVM processes, and `thumbs run`."""
