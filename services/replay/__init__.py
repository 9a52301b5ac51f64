"""Replay and reprocessing: rewind a stage's consumer group, re-publish a topic's records, redrive dead letters."""
