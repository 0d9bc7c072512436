"""timefunnel core: what the producer and the applier share (events, codec, topics, control, time)."""

__version__ = "0.1.0"
