"""What every phase of a switchback works with: one ``SwitchbackContext``.

The phases (``prepare``, ``complete`` with ``freeze`` and ``forward``, ``abort``,
``report``) are functions of a context and the persisted ``SwitchbackState``; the
decisions themselves are in ``state``.  The context holds the I/O they share: the Kafka
settings, the funnel's admin and control channel, the record's store, the capture port,
the hook runner, the output line sink and the clock (both injected, so a test can
replace them).
"""
from __future__ import annotations

from collections.abc import Callable

from applier.switchback.databases import Database, open_database
from applier.switchback.pipeline import CapturePort
from applier.switchback.state import Phase, SwitchbackState, advance, failed
from funnel.errors import SwitchbackError
from applier.switchback.store import StateStore
from funnel.clock import now_us
from funnel.control import ControlChannel
from funnel.errors import ConfigError, TimeFunnelError
from funnel.hooks import HookResult, run_hook
from funnel.identity import same_identity
from funnel.kafka import KafkaSettings
from funnel.timeparse import format_time
from funnel.topic import FunnelAdmin
from funnel.urls import without_password

HookRunner = Callable[[str, dict[str, str]], HookResult]


class SwitchbackContext:
    """The switchback of one promoted mirror of one funnel: settings, channels, clock and output."""

    def __init__(self, kafka: KafkaSettings, funnel: str, mirror: str, port: CapturePort,
                 run_hook: HookRunner = run_hook, echo: Callable[[str], None] = print,
                 clock: Callable[[], int] = now_us, poll_interval_s: float = 0.2) -> None:
        """Raises ConfigError for an invalid mirror id."""
        if not mirror or "/" in mirror:
            raise ConfigError(f"invalid mirror id {mirror!r}")
        self.kafka = kafka
        self.funnel = funnel
        self.mirror = mirror
        self.port = port
        self.run_hook = run_hook
        self.echo = echo
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.admin = FunnelAdmin(kafka)
        self.control = ControlChannel(kafka, funnel)
        self.store = StateStore(self.control, mirror)

    def save(self, state: SwitchbackState, expected: SwitchbackState) -> SwitchbackState:
        """Record ``state``; raises SwitchbackError when another command moved the record meanwhile."""
        return self.store.save(state, expected)

    def guarded(self, state: SwitchbackState,
                step: Callable[[SwitchbackState], SwitchbackState]) -> SwitchbackState:
        """Run a step; on an expected failure record it (the phase stays) and raise it on."""
        try:
            return step(state)
        except TimeFunnelError as exc:
            self.record_failure(state, str(exc))
            raise

    def record_failure(self, state: SwitchbackState, error: str, back_to: Phase | None = None) -> None:
        """Write ``error`` into the record (moving back to ``back_to`` first); never raises."""
        try:
            current = self.store.load() or state
            moved = advance(current, back_to, self.clock(), "back to syncing") if back_to else current
            self.store.save(failed(moved, error, self.clock()), current)
        except TimeFunnelError as exc:  # the original error is the one to report
            self.echo(f"warning: could not record the failure: {exc}")

    def run_step_hook(self, state: SwitchbackState, step: str, command: str, to_url: str) -> HookResult:
        """Run the ``step`` hook (freeze, takeover) with the switchback in its environment; says how it went."""
        self.echo(f"{step}: running the {step} hook: {command}")
        env = {"FUNNEL_NAME": self.funnel, "FUNNEL_MIRROR": self.mirror, "FUNNEL_SWITCHBACK_STEP": step,
               "FUNNEL_SWITCHBACK_FROM": state.from_url, "FUNNEL_SWITCHBACK_TO": state.to_url,
               "FUNNEL_SINK_URL": without_password(to_url)}
        if state.freeze:
            env["FUNNEL_FROZEN_AT"] = format_time(state.freeze["at"])
        result = self.run_hook(command, env)
        self.echo(result.describe(step))
        return result

    def open_sides(self, mirror_url: str, to_url: str) -> tuple[Database, Database]:
        """(mirror, production).  Raises ConfigError for a bad URL, two different kinds or the same
        database however spelled (a hard link, a symlink, another host name or user),
        SwitchbackError for one that cannot be reached."""
        mirror_db, production_db = open_database(mirror_url), open_database(to_url)
        if mirror_db.kind != production_db.kind:
            raise ConfigError(f"the mirror is {mirror_db.kind} and production is {production_db.kind}: a "
                              f"switchback needs the same kind of database on both sides")
        if same_identity(mirror_db.identity(), production_db.identity()):
            raise ConfigError(f"--to {without_password(to_url)} is the mirror itself (the same database as "
                              f"{without_password(mirror_url)})", hint="--to names the original production to rebuild")
        return mirror_db, production_db

    def close(self) -> None:
        self.control.close()


def names_same_database(url: str, other: str) -> bool:
    """Both URLs name one database (compared by identity); False when either cannot be told."""
    try:
        a, b = open_database(url), open_database(other)
        return a.kind == b.kind and same_identity(a.identity(), b.identity())
    except TimeFunnelError:
        return False


def same_as(given: str | None, recorded: str, option: str) -> str:
    """The URL to use: the recorded one (no password), or ``given`` if it names the same database.

    Raises SwitchbackError for a ``given`` URL of another database."""
    if given is None:
        return recorded
    if without_password(given) != recorded and not names_same_database(given, recorded):
        raise SwitchbackError(f"{option} {without_password(given)} is not the switchback's {recorded}",
                              hint=f"omit {option}, or abort the switchback and prepare a new one")
    return given
