"""A whole source transaction as the applier holds it: its chunks and where they lie."""
from __future__ import annotations

from dataclasses import dataclass, field

from funnel.events import ChangeBatch, Kind, TableChanges


@dataclass(slots=True)
class Transaction:
    """All chunks of one source transaction, read from the funnel in order.

    ``first_offset``/``last_offset`` are the Kafka offsets of its first and last chunk;
    the mirror's next offset after applying it is ``last_offset + 1``.
    """

    txid: str
    commit_ts: int  # microseconds since the epoch, UTC
    kind: Kind
    first_offset: int
    last_offset: int
    batches: list[ChangeBatch] = field(default_factory=list)

    @property
    def changes(self) -> list[TableChanges]:
        return [group for batch in self.batches for group in batch.changes]

    @property
    def row_count(self) -> int:
        return sum(batch.row_count for batch in self.batches)


@dataclass(frozen=True, slots=True)
class MirrorPosition:
    """What the mirror's state table says about one funnel: where to go on.

    Written in the same database transaction as the rows it describes.
    """

    funnel: str
    mirror: str
    topic: str
    partition: int
    next_offset: int  # the first offset not yet applied
    last_txid: str | None = None
    last_commit_ts: int | None = None  # commit time of the last applied transaction, µs
    valid_as_of: int | None = None  # the mirror shows production as of this time, µs
    snapshot_done: bool = False
    # Point-in-time state (seek, promote), kept with the position so that it changes
    # in the same database transaction as the rows it describes.
    hold_until: int | None = None  # holding: apply only commit_ts < hold_until, ignore the delay
    promoted_at: int | None = None  # promoted: never apply again
    promote_target: int | None = None
    excluded_txids: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        if self.promoted_at is not None:
            return "promoted"
        return "holding" if self.hold_until is not None else "running"
