"""What every source adapter yields: whole source transactions, in commit order."""
from __future__ import annotations

from dataclasses import dataclass, field

from funnel.errors import SourceError
from funnel.events import TableChanges


class SourceDisconnected(SourceError):
    """The connection to the production database broke (server restart, terminated
    walsender, network).  Reconnecting resumes exactly: nothing was acknowledged that is
    not in the funnel."""


class SourceStopped(SourceError):
    """The capture was asked to stop while the source waited for the database (for its
    write lock): nothing was done, and the capture ends as if stopped between two steps."""


@dataclass(slots=True)
class SourceTransaction:
    """One committed source transaction.

    ``position`` is the source's resume position after this transaction (changelog
    sequence for SQLite, commit LSN for PostgreSQL); positions only grow, so the
    producer resumes after the highest position it finds in the funnel.
    ``commit_ts`` is microseconds since the epoch, UTC.
    """

    txid: str
    commit_ts: int
    position: int
    changes: list[TableChanges] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return sum(len(group.rows) for group in self.changes)
