"""History in and features out: input formats, replay, backfill and Parquet export."""
