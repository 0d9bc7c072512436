"""One exception root for everything the operator can be told about.

The CLI turns a ``TimeFunnelError`` into ``Error: <message>`` (plus ``Try: <hint>``
when there is one) and exit code 1; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class TimeFunnelError(Exception):
    """Base of all expected errors. ``hint`` says what the operator should do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(TimeFunnelError):
    """Bad input from the operator: a malformed duration, time, URL or option."""


class BrokerError(TimeFunnelError):
    """The local broker could not be started, stopped or reached."""


class CodecError(TimeFunnelError):
    """A message in the funnel could not be decoded (malformed or unknown schema)."""


class SourceError(TimeFunnelError):
    """The production database cannot be captured as asked (unknown table, no key...)."""


class SchemaChangedError(SourceError):
    """A captured table changed shape, was dropped, or a new table appeared: capture stops
    before it publishes anything the mirror would apply wrongly."""


class SinkError(TimeFunnelError):
    """The mirror database cannot be written as asked."""


class FencedError(SinkError):
    """A newer applier (or a seek/promote with --sink) of the same mirror started after this one.

    The write that found out was rolled back; the process must stop, not retry.
    """


class FunnelError(TimeFunnelError):
    """The funnel topic is missing, misconfigured, or has lost events."""


class EventsExpiredError(FunnelError):
    """Events were deleted from the topic before the mirror applied them."""


class BrokerUnreachableError(BrokerError):
    """No Kafka broker answered at the bootstrap address in time."""


class SwitchbackError(TimeFunnelError):
    """A switchback cannot go on as asked (wrong phase, another cycle, failed check)."""
