"""Replay and reprocessing: rewind a stage's group, re-publish a topic's records, list, show and redrive dead letters."""
