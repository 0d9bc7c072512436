"""What the applier counts about itself, and the seek, resume or promote it is carrying out.

Kept apart from ``applier.applier`` (which re-exports ``Command``) so the loop stays small.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ApplierStats:
    """What the applier knows about itself; published as status and as metrics."""

    applied_transactions: int = 0
    applied_rows: int = 0
    apply_seconds: float = 0.0
    commits: int = 0
    undone_transactions: int = 0
    undone_rows: int = 0


@dataclass
class Command:
    """A seek, resume or promote being carried out (from the control topic or the CLI)."""

    id: str
    kind: str  # seek | resume | promote
    to: int | None = None
    excluded: tuple[str, ...] = ()
    state: str = "running"  # running | done | failed
    error: str | None = None
    started_applied_rows: int = 0
    started_applied_transactions: int = 0
    started_undone_rows: int = 0
    started_undone_transactions: int = 0
    phase: str = "starting"  # planning | undoing | applying: what a long command is busy with

    def begin(self, stats: "ApplierStats") -> None:
        """Count progress from here: the stats are the applier's totals."""
        self.started_applied_rows, self.started_applied_transactions = stats.applied_rows, stats.applied_transactions
        self.started_undone_rows, self.started_undone_transactions = stats.undone_rows, stats.undone_transactions

    def as_dict(self, stats: "ApplierStats") -> dict:
        return {"id": self.id, "kind": self.kind, "to": self.to, "excluded": list(self.excluded),
                "state": self.state, "error": self.error, "phase": self.phase,
                "applied_transactions": stats.applied_transactions - self.started_applied_transactions,
                "applied_rows": stats.applied_rows - self.started_applied_rows,
                "undone_transactions": stats.undone_transactions - self.started_undone_transactions,
                "undone_rows": stats.undone_rows - self.started_undone_rows}
