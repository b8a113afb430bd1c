"""Where a client lives: its bucket and its partition (stream), from a stable hash.

Python's `hash()` is randomised per process, so routing uses CRC-32: every producer,
every dataflow process and the API agree on a client's bucket forever.
"""

from __future__ import annotations

import zlib


def bucket_of(client_key: str, buckets: int) -> int:
    """The client's bucket: state, timers and ledger of a bucket share one Redis slot."""
    return zlib.crc32(client_key.encode()) % buckets


def partition_of_bucket(bucket: int, partitions: int) -> int:
    """Each bucket is fed by exactly one partition, so its events arrive in order."""
    return bucket % partitions
