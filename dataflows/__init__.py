"""Bytewax adapters: the stream source, bucket keying, ticks, and the flow itself."""
