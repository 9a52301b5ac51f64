"""The published event contract: one JSON Schema per event type and version, installed as `services.contract`."""
