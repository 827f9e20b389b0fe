"""Fleets: model versions as OCI artifacts in a registry, desired and reported state over MQTT
(docs/fleet.md)."""
