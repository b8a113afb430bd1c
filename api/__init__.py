"""The HTTP layer: Segment-compatible ingest, profile reads, health and metrics."""
