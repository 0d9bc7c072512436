"""A new mirror joins a funnel whose oldest events were deleted: it starts at a whole initial copy.

The funnel holds two initial copies with changes after each; its oldest events are then
deleted (Kafka's delete_records, as `switchback complete` and retention do) in three
steps: into the first copy, up to the second copy's first message, into the second copy.
The applier and `funnel status` must agree each time about where a new mirror starts,
or that it cannot.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from confluent_kafka import TopicPartition

from applier.applier import Applier, ApplierOptions
from applier.sinks import open_sink
from applier.status_report import funnel_report
from funnel.events import Kind, Op, Row, TableChanges
from funnel.kafka import KafkaSettings, data_topic
from funnel.reader import FunnelReader
from funnel.topic import ADMIN_TIMEOUT_S, FunnelAdmin
from producer.publisher import EventPublisher
from producer.sources.base import SourceTransaction
from tests.support.processes import run_funnel

COLUMNS, KEY = ["id", "v"], ["id"]


def rows(op: Op, *pairs: tuple[int, str]) -> TableChanges:
    return TableChanges("items", op, COLUMNS, KEY, [Row(None, [i, v]) for i, v in pairs])


def publish(kafka: KafkaSettings, funnel: str) -> None:
    """Copy 1 (items 1, 2 in two chunks), a change, copy 2 (items 1..3, two chunks), a change."""
    publisher = EventPublisher(kafka, funnel, "prod", chunk_rows=1)
    publisher.start()
    try:
        publisher.publish_snapshot(1, [rows(Op.SNAPSHOT, (1, "a")), rows(Op.SNAPSHOT, (2, "b"))])
        publisher.publish([SourceTransaction("t2", publisher.clock(), 2, [rows(Op.INSERT, (3, "c"))])])
        publisher.publish_snapshot(3, [rows(Op.SNAPSHOT, (1, "a"), (2, "b")), rows(Op.SNAPSHOT, (3, "c"))])
        publisher.publish([SourceTransaction("t4", publisher.clock(), 4, [rows(Op.INSERT, (4, "d"))])])
    finally:
        publisher.close()


def copy_messages(kafka: KafkaSettings, funnel: str) -> list[list[int]]:
    """First offsets of each copy's messages, per copy."""
    copies: list[list[int]] = []
    current: list[int] | None = None
    with FunnelReader(kafka, funnel) as reader:
        low, high = reader.watermarks()
        for summary in reader.transactions(low, high):
            if summary.kind not in (Kind.SNAPSHOT, Kind.SNAPSHOT_END):
                current = None
                continue
            if current is None:
                current = []
                copies.append(current)
            current.append(summary.first_offset)
    return copies


def delete_before(kafka: KafkaSettings, funnel: str, offset: int) -> None:
    admin = FunnelAdmin(kafka).admin
    for future in admin.delete_records([TopicPartition(data_topic(funnel), 0, offset)]).values():
        future.result(timeout=ADMIN_TIMEOUT_S)


def new_mirror(kafka: KafkaSettings, funnel: str, path: Path, mirror: str) -> Applier:
    applier = Applier(kafka, open_sink(f"sqlite:///{path}"), ApplierOptions(funnel, mirror, delay_s=0))
    applier.start()
    return applier


def status_of(bootstrap: str, funnel: str, mirror: str) -> dict:
    result = run_funnel(bootstrap, "status", "--funnel", funnel, "--json")
    assert result.returncode == 0, result.stderr
    return next(m for m in json.loads(result.stdout)["mirrors"] if m["mirror"] == mirror)


def report_of(kafka: KafkaSettings, funnel: str, mirror: str) -> dict:
    """What `funnel status --json` says, without starting a process."""
    return next(m for m in funnel_report(kafka, funnel)["mirrors"] if m["mirror"] == mirror)


def items(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, v FROM items ORDER BY id").fetchall()


def test_a_new_mirror_starts_at_the_newest_whole_copy_and_status_agrees(bootstrap, funnel_name, tmp_path):
    kafka = KafkaSettings(bootstrap)
    publish(kafka, funnel_name)
    first, second = copy_messages(kafka, funnel_name)
    assert len(first) == 3 and len(second) == 3  # two chunks and the end marker each
    run_funnel(bootstrap, "delay", "m9", "1s", "--funnel", funnel_name)  # a mirror that never ran

    delete_before(kafka, funnel_name, first[1])  # into copy 1: it is no longer whole
    applier = new_mirror(kafka, funnel_name, tmp_path / "m1.db", "m1")
    assert applier.position.next_offset == second[0]
    applier.run(until=lambda a: a.caught_up())
    assert items(tmp_path / "m1.db") == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    report = status_of(bootstrap, funnel_name, "m9")
    assert (report["state"], report["next_offset"], report["expired"]) == ("never ran", second[0], False)
    assert report["pending_transactions"] == 4  # copy 2's chunks and end marker, and t4

    delete_before(kafka, funnel_name, second[0])  # exactly up to copy 2, as switchback complete does
    applier = new_mirror(kafka, funnel_name, tmp_path / "m2.db", "m2")
    assert applier.position.next_offset == second[0]
    applier.close()
    assert report_of(kafka, funnel_name, "m9")["next_offset"] == second[0]

    delete_before(kafka, funnel_name, second[1])  # into copy 2: no whole copy is left
    report = report_of(kafka, funnel_name, "m9")
    assert report["expired"] is True and report["state"] == "never ran"
    result = run_funnel(bootstrap, "apply", f"sqlite:///{tmp_path / 'm3.db'}", "--funnel", funnel_name,
                        "--mirror", "m3", "--delay", "0s", "--until-caught-up")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Error: mirror 'm3' has no position and cannot start" in result.stderr
    assert "Try: capture production into a new funnel" in result.stderr
    text = run_funnel(bootstrap, "status", "--funnel", funnel_name).stdout
    assert "mirror m9: never ran" in text and "EXPIRED" in text

    # The README's way to add a mirror when no whole copy is left: copy an existing
    # mirror, rename its position in the copy, and apply from there.
    with sqlite3.connect(tmp_path / "m1.db") as source, sqlite3.connect(tmp_path / "m4.db") as copy:
        source.backup(copy)
        copy.execute("UPDATE _timefunnel_state SET mirror = 'm4' WHERE mirror = 'm1'")
    publish_change(kafka, funnel_name, "t5", 5, (5, "e"))
    result = run_funnel(bootstrap, "apply", f"sqlite:///{tmp_path / 'm4.db'}", "--funnel", funnel_name,
                        "--mirror", "m4", "--delay", "0s", "--until-caught-up")
    assert result.returncode == 0, result.stderr
    assert items(tmp_path / "m4.db") == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]


def publish_change(kafka: KafkaSettings, funnel: str, txid: str, position: int, pair: tuple[int, str]) -> None:
    publisher = EventPublisher(kafka, funnel, "prod", chunk_rows=1)
    publisher.start()
    try:
        publisher.publish([SourceTransaction(txid, publisher.clock(), position, [rows(Op.INSERT, pair)])])
    finally:
        publisher.close()
