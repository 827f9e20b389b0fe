"""Adapters at the edge: gRPC, Prometheus, systemd. They call the service layer
(edged.serving) and nothing else of the core."""
