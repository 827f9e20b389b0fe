"""The version lifecycle: promotion of new versions (validate, load beside, latency gate, shadow,
flip, probation), rollback along the lineage, and what a restart recovers (docs/lifecycle.md)."""
