"""Everything that writes to (and reads back from) Redis, plus the Bytewax sink adapters."""
