"""The control topic's records as typed values, and the numbers derived from them, defined once.

``funnel.control`` moves JSON records; this module says what they mean.  Each record
is a frozen dataclass with ``to_json``/``from_json`` (the JSON layout is unchanged:
kcat users and older processes read the same keys; a key an older writer left out
takes its default).  ``ControlState`` is one read of the whole topic, typed.

The derived numbers are plain functions with ``now`` as a parameter (the style of
``applier.schedule``), shared by the applier, its metrics, ``funnel status`` and the CLI:

- ``is_fresh`` / ``MirrorStatus.running``: does the reporting process still run;
- ``oldest_pending``: the commit time of the oldest transaction not yet applied;
- ``retention_headroom_s``: how long until that transaction expires from the funnel;
- (how late the applier is against ``commit_ts + delay`` is ``applier.schedule.seconds_behind``:
  the schedule's own rule, and only the applier side needs it);
- ``delay_fits_retention``: a delay must be shorter than the funnel's retention.
"""
from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Protocol

from funnel.errors import ConfigError, SwitchbackError
from funnel.events import Kind

MICROS = 1_000_000
# Appliers and captures report every second; a status record older than this means the
# process is not running.
STATUS_STALE_AFTER_S = 10.0


def _from_json(cls, record: dict[str, Any]):
    """``cls`` from a JSON record: unknown keys are ignored, missing ones take their defaults."""
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in record.items() if key in names})


# -- the derived numbers -----------------------------------------------------------
def is_fresh(updated_at: int | None, now: int) -> bool:
    """True when a status written at ``updated_at`` is recent enough that its process still runs."""
    return updated_at is not None and (now - updated_at) / MICROS < STATUS_STALE_AFTER_S


class _Pending(Protocol):
    commit_ts: int
    kind: Kind


def oldest_pending(pending: Iterable[_Pending]) -> int | None:
    """Commit time of the first transaction that is not a heartbeat (copy rows count: they are
    pending work too), or None. ``pending`` is in funnel order."""
    return next((p.commit_ts for p in pending if p.kind is not Kind.HEARTBEAT), None)


def oldest_pending_age_s(oldest: int | None, now: int) -> float:
    return (now - oldest) / MICROS if oldest else 0.0


def retention_headroom_s(oldest: int | None, retention_s: float, now: int) -> float:
    """Seconds until the oldest pending transaction (now, when none) expires from the funnel:
    its commit time + retention - now. ``math.inf`` for unlimited retention."""
    if math.isinf(retention_s):
        return math.inf
    return ((oldest or now) + retention_s * MICROS - now) / MICROS


def delay_fits_retention(delay_s: float, retention_s: float) -> bool:
    """The one rule: a delay must be shorter than the retention, or events expire before they are due."""
    return delay_s < retention_s


def check_delay_fits_retention(delay_s: float, retention_s: float, funnel: str) -> None:
    """Raises ConfigError when events would expire before they are due."""
    if not delay_fits_retention(delay_s, retention_s):
        from funnel.timeparse import format_duration

        raise ConfigError(f"delay {format_duration(delay_s)} is not shorter than funnel {funnel!r}'s retention "
                          f"{format_duration(retention_s)}: events would expire before they are due",
                          hint="raise the topic's retention.ms first")


# -- the records -------------------------------------------------------------------
@dataclass(frozen=True)
class DelayRecord:
    """``delay/<mirror>``: the delay an operator (or ``funnel apply --delay``) set."""

    delay_s: float
    set_at: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"delay_s": self.delay_s, "set_at": self.set_at}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "DelayRecord":
        return cls(float(record["delay_s"]), record.get("set_at", 0))

    @property
    def delay_us(self) -> int:
        return int(self.delay_s * MICROS)


@dataclass(frozen=True)
class CommandRecord:
    """``command/<mirror>``: a seek, resume or promote for a running applier."""

    id: str
    kind: str  # seek | resume | promote
    to: int | None = None
    excluded: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "to": self.to, "excluded": list(self.excluded)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "CommandRecord":
        return cls(record["id"], record["kind"], record.get("to"), tuple(record.get("excluded") or ()))


@dataclass(frozen=True)
class MirrorStatus:
    """``status/<mirror>``: what a running applier reports about itself, every second."""

    mirror: str
    funnel: str
    state: str  # running | stopped | promoted
    next_offset: int
    delay_s: float = 0.0
    last_txid: str | None = None
    last_commit_ts: int | None = None
    valid_as_of: int | None = None
    snapshot_done: bool = False
    held_transactions: int = 0
    held_rows: int = 0
    oldest_held_ts: int | None = None
    behind_s: float = 0.0
    applied_transactions: int = 0
    applied_rows: int = 0
    low_watermark: int = 0
    high_watermark: int = 0
    mode: str = "running"  # MirrorPosition.mode: running | holding | promoted
    hold_until: int | None = None
    promoted_at: int | None = None
    promote_target: int | None = None
    excluded_txids: tuple[str, ...] = ()
    command: dict[str, Any] | None = None  # the current command's progress (applier.Command.as_dict)
    sink_url: str | None = None
    epoch: int | None = None
    updated_at: int = 0

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["excluded_txids"] = list(self.excluded_txids)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "MirrorStatus":
        return _from_json(cls, {**record, "excluded_txids": tuple(record.get("excluded_txids") or ())})

    def fresh(self, now: int) -> bool:
        return is_fresh(self.updated_at, now)

    def running(self, now: int) -> bool:
        """The one definition: an applier runs when it says so and said so recently."""
        return self.state == "running" and self.fresh(now)

    @property
    def promoted(self) -> bool:
        return self.state == "promoted" or self.mode == "promoted"

    def age_s(self, now: int) -> float:
        return (now - self.updated_at) / MICROS


@dataclass(frozen=True)
class CaptureStatus:
    """``producer/<source>``: what a running capture reports about itself, every second
    (``producer.capture.Capture.status``)."""

    source: str
    funnel: str = ""
    state: str = "running"  # running | stopped
    position: Any = None
    last_commit_ts: int | None = None
    restarts: int = 0  # recoveries from a failed broker or source connection, by this process
    capture_lag_s: float = 0.0  # from source commit to committed in Kafka, last publish
    published_transactions: int = 0
    published_events: int = 0
    published_rows: int = 0
    published_bytes: int = 0
    updated_at: int = 0
    capture_ddl: bool = False  # PostgreSQL: schema changes are captured (`capture --capture-ddl`)
    # A PostgreSQL capture's replication slot: `funnel apply` refuses the database holding it
    # (producer.sources.marks), also under an operator's --slot name.  Not written when None.
    slot: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys newer captures add

    def to_json(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if self.slot is None:
            del record["slot"]
        if not self.capture_ddl:  # as before the field existed: older readers see the same keys
            del record["capture_ddl"]
        return {**self.extra, **record}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "CaptureStatus":
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {key: value for key, value in record.items() if key in names}
        if not isinstance(known.get("slot"), str):
            known.pop("slot", None)
        return cls(**known, extra={key: value for key, value in record.items() if key not in names})

    def fresh(self, now: int) -> bool:
        return is_fresh(self.updated_at, now)

    def running(self, now: int) -> bool:
        """The one definition: a capture runs when it says so and said so recently."""
        return self.state == "running" and self.fresh(now)

    def reported_state(self, now: int) -> str:
        """What ``funnel status`` shows: the state it reported, or ``not running`` once stale."""
        return self.state if self.fresh(now) else "not running"

    def age_s(self, now: int) -> float:
        return (now - self.updated_at) / MICROS


class SwitchbackPhase(str, enum.Enum):
    PREPARING = "preparing"
    SYNCING = "syncing"
    COMPLETING = "completing"
    FROZEN = "frozen"
    DRAINED = "drained"
    VERIFIED = "verified"
    FORWARD_READY = "forward_ready"
    TAKEN_OVER = "taken_over"
    DONE = "done"
    ABORTING = "aborting"
    ABORTED = "aborted"

    @property
    def order(self) -> int:
        return list(SwitchbackPhase).index(self)


SWITCHBACK_FINISHED = (SwitchbackPhase.DONE, SwitchbackPhase.ABORTED)
# The phases from which the mirror's state row points into the fresh forward funnel.
SWITCHBACK_FORWARD_PHASES = (SwitchbackPhase.FORWARD_READY, SwitchbackPhase.TAKEN_OVER, SwitchbackPhase.DONE)
REVERSE_MIRROR = "production"  # the reverse applier's mirror id, in production's state table


@dataclass(frozen=True)
class SwitchbackState:
    """``switchback/<mirror>``: everything a rerun of a switchback needs to know (the state
    machine is ``applier.switchback.state``); URLs are stored without passwords."""

    funnel: str
    mirror: str
    cycle: str
    phase: SwitchbackPhase
    from_url: str  # the promoted mirror, serving the application
    to_url: str  # the original production being rebuilt
    reverse_funnel: str
    source_name: str  # the forward capture's source name, for the fresh forward funnel
    started_at: int  # µs
    updated_at: int
    reverse_mirror: str = REVERSE_MIRROR
    tables: tuple[str, ...] = ()  # the mirror's tables at prepare
    reset: dict[str, list[str]] | None = None  # what prepare did to production
    freeze: dict[str, Any] | None = None  # {"marker", "at", "waited_s"}
    checksums: dict[str, dict[str, Any]] | None = None  # table -> {"rows", "checksum"}
    forward: dict[str, Any] | None = None  # {"low_offset", "next_offset", "snapshot_txid", "valid_as_of"}
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.phase not in SWITCHBACK_FINISHED

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["phase"] = self.phase.value
        record["tables"] = list(self.tables)
        record["history"] = list(self.history)
        return record

    def to_json(self) -> dict[str, Any]:
        return self.as_record()

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "SwitchbackState":
        return cls.from_record(record)

    @property
    def forward_next_offset(self) -> int | None:
        """Where the mirror continues in the fresh forward funnel, once the switchback got there."""
        if self.phase in SWITCHBACK_FORWARD_PHASES and self.forward and "next_offset" in self.forward:
            return self.forward["next_offset"]
        return None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "SwitchbackState":
        """Raises SwitchbackError for a record this version cannot read."""
        try:
            values = dict(record)
            values["phase"] = SwitchbackPhase(values["phase"])
            values["tables"] = tuple(values.get("tables") or ())
            values["history"] = tuple(values.get("history") or ())
            known = {name for name in cls.__dataclass_fields__}
            return cls(**{k: v for k, v in values.items() if k in known})
        except (KeyError, ValueError, TypeError) as exc:
            raise SwitchbackError(f"unreadable switchback record: {exc}",
                                  hint="inspect it with kcat on the funnel's control topic") from exc
