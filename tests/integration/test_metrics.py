"""/metrics of `funnel apply` and `funnel capture` against reality: real broker, real SQLite, real CLI.

One pipeline (capture and a 30 s applier, both serving metrics) is shared by the
tests of this module; values are read over HTTP as Prometheus reads them.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from applier.metrics import Tally, TransactionCounter
from funnel import headers
from funnel.events import Kind
from funnel.kafka import KafkaSettings
from funnel.topic import FunnelAdmin
from tests.support.processes import ROOT, Background, run_funnel, table_rows, wait_for
from tests.support.writer import create_schema

DELAY_S = 30.0
MARKERS = [2_000_001, 2_000_002, 2_000_003]


# -- helpers ------------------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """``{'name{label="v",...}': value}`` for every sample; labels sorted; also ``{name: value}`` for one-sample names."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
            counts[sample.name] = counts.get(sample.name, 0) + 1
            samples.setdefault(sample.name, sample.value)
    return {k: v for k, v in samples.items() if "{" in k or counts[k] == 1}


def metric_url(proc: Background, timeout: float = 60) -> str:
    found: list[str] = []

    def announced() -> bool:
        assert proc.alive(), proc.output()
        found.extend(re.findall(r"metrics on (http://\S+/metrics)", proc.output()))
        return bool(found)

    wait_for(announced, timeout, what="the metrics endpoint to start")
    return found[0]


def non_loopback_address() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((a for a in out.split() if "." in a and not a.startswith("127.")), None)


def insert_event(prod: Path, event_id: int) -> None:
    import sqlite3

    conn = sqlite3.connect(prod, timeout=30)
    with conn:
        conn.execute("INSERT INTO events (id, tx, v) VALUES (?, -1, 'metrics')", (event_id,))
    conn.close()


def mirror_has(mirror: Path, event_id: int) -> bool:
    return mirror.exists() and any(row[0] == event_id for row in table_rows(mirror, "events"))


@dataclass
class Pipeline:
    bootstrap: str
    funnel: str
    prod: Path
    mirror: Path
    capture: Background
    apply: Background
    apply_url: str
    capture_url: str
    external_addr: str | None


@pytest.fixture(scope="module")
def pipeline(bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    funnel = f"tf-metrics-{uuid.uuid4().hex[:12]}"
    created = run_funnel(bootstrap, "create", funnel, "--retention", "1d")
    assert created.returncode == 0, created.stderr
    prod, mirror = tmp / "prod.db", tmp / "mirror.db"
    create_schema(str(prod))
    external = non_loopback_address()
    # The capture serves on the machine's own address, the applier on the default (loopback):
    # the loopback test checks that the applier is not reachable where the capture is.
    capture = Background(bootstrap, tmp / "capture.log", "capture", f"sqlite://{prod}", "--funnel", funnel,
                         "--heartbeat", "200ms", "--metrics-port", "0",
                         *(["--metrics-addr", external] if external else []))
    # A buffer of 2 rows: the third held transaction stays in the funnel, beyond the
    # applier's memory, and must still count as pending.
    apply = Background(bootstrap, tmp / "apply.log", "apply", f"sqlite://{mirror}", "--funnel", funnel,
                       "--mirror", "m1", "--delay", f"{DELAY_S:g}s", "--buffer-rows", "2", "--metrics-port", "0")
    try:
        yield Pipeline(bootstrap, funnel, prod, mirror, capture, apply, metric_url(apply), metric_url(capture),
                       external)
    finally:
        capture.stop()
        apply.stop()


def status_of(pipeline: Pipeline) -> dict:
    result = run_funnel(pipeline.bootstrap, "status", "--funnel", pipeline.funnel, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


M1 = 'funnel="{f}",mirror="m1"'


def mirror_metric(samples: dict[str, float], name: str, pipeline: Pipeline) -> float | None:
    return samples.get(f'{name}{{{M1.format(f=pipeline.funnel)}}}')


# -- the tests ------------------------------------------------------------------------------
def test_metrics_follow_the_funnel_and_agree_with_funnel_status(pipeline):
    p = pipeline
    labels = M1.format(f=p.funnel)

    def m(name: str) -> float | None:
        return scrape(p.apply_url).get(f"{name}{{{labels}}}")

    def published() -> float:
        return scrape(p.capture_url)[f'timefunnel_published_transactions_total{{funnel="{p.funnel}",source="prod"}}']

    # The initial copy is applied at once; then nothing is pending.
    wait_for(lambda: p.mirror.exists() and len(table_rows(p.mirror, "counters")) == 10, 60,
             what="the initial copy on the mirror")
    wait_for(lambda: m("timefunnel_pending_transactions") == 0, 15, what="nothing pending after the copy")
    before = scrape(p.apply_url)
    rows_before = before[f"timefunnel_applied_rows_total{{{labels}}}"]
    tx_before = before[f"timefunnel_applied_transactions_total{{{labels}}}"]
    commits_before = before[f"timefunnel_apply_duration_seconds_count{{{labels}}}"]
    assert rows_before == 10 and before[f"timefunnel_mirror_delay_seconds{{{labels}}}"] == DELAY_S

    # Three source transactions, each published on its own, are held by the 30 s delay.
    position_before = scrape(p.capture_url)[f'timefunnel_source_position{{funnel="{p.funnel}",source="prod"}}']
    first_commit = time.time()
    for count, marker in enumerate(MARKERS, start=1):
        base = published()
        insert_event(p.prod, marker)
        wait_for(lambda: published() == base + 1, 15, 0.05, f"transaction {count} in the funnel")
    wait_for(lambda: m("timefunnel_pending_transactions") == len(MARKERS), 10, what="three pending transactions")
    held = scrape(p.apply_url)
    assert held[f"timefunnel_pending_rows{{{labels}}}"] == len(MARKERS)
    assert held[f"timefunnel_buffered_rows{{{labels}}}"] == 2, "the applier's buffer is full at 2 rows"
    assert held[f"timefunnel_pending_events{{{labels}}}"] == len(MARKERS)
    assert held[f"timefunnel_applied_rows_total{{{labels}}}"] == rows_before
    assert held[f"timefunnel_behind_schedule_seconds{{{labels}}}"] == 0.0
    assert held[f"timefunnel_mirror_state{{{labels},state=\"running\"}}"] == 1.0
    assert held[f"timefunnel_mirror_valid_as_of_timestamp_seconds{{{labels}}}"] < first_commit
    assert not any(mirror_has(p.mirror, marker) for marker in MARKERS)

    # `funnel status --json` says the same (it reads the applier's published position).
    def status_caught_up() -> bool:
        return status_of(p)["mirrors"][0]["pending_transactions"] == len(MARKERS)

    wait_for(status_caught_up, 10, 0.5, "funnel status to report the held transactions")
    samples, scraped_at = scrape(p.apply_url), time.time()
    report = status_of(p)
    status = report["mirrors"][0]
    for key, name in (("pending_transactions", "timefunnel_pending_transactions"),
                      ("pending_events", "timefunnel_pending_events"),
                      ("pending_rows", "timefunnel_pending_rows"),
                      ("delay_s", "timefunnel_mirror_delay_seconds")):
        assert samples[f"{name}{{{labels}}}"] == status[key], key
    assert samples[f"timefunnel_mirror_valid_as_of_timestamp_seconds{{{labels}}}"] == status["valid_as_of"] / 1e6
    assert samples[f"timefunnel_funnel_retention_seconds{{{labels}}}"] == report["retention_s"] == 86400
    oldest_by_metrics = scraped_at - samples[f"timefunnel_oldest_pending_age_seconds{{{labels}}}"]
    oldest_by_status = report["now"] / 1e6 - status["oldest_pending_age_s"]
    assert abs(oldest_by_metrics - oldest_by_status) < 0.5
    assert 0 < samples[f"timefunnel_oldest_pending_age_seconds{{{labels}}}"] < DELAY_S
    for headroom_plus_age in (samples[f"timefunnel_retention_headroom_seconds{{{labels}}}"]
                              + samples[f"timefunnel_oldest_pending_age_seconds{{{labels}}}"],
                              status["retention_headroom_s"] + status["oldest_pending_age_s"]):
        assert abs(headroom_plus_age - 86400) < 0.01

    # Shortening the funnel's retention shows in the headroom within seconds.
    FunnelAdmin(KafkaSettings(p.bootstrap)).set_retention(p.funnel, 7200)
    wait_for(lambda: m("timefunnel_funnel_retention_seconds") == 7200, 15, 0.5, "the new retention")
    headroom = m("timefunnel_retention_headroom_seconds")
    assert 7200 - DELAY_S < headroom < 7200

    # A shorter delay releases the held transactions: exactly their rows are applied,
    # and the mirror becomes valid as of (now - the new delay).
    changed = run_funnel(p.bootstrap, "delay", "m1", "1s", "--funnel", p.funnel)
    assert changed.returncode == 0, changed.stderr
    wait_for(lambda: m("timefunnel_pending_transactions") == 0 and all(mirror_has(p.mirror, x) for x in MARKERS),
             10, 0.1, "the released transactions on the mirror")
    after = scrape(p.apply_url)
    assert after[f"timefunnel_applied_rows_total{{{labels}}}"] == rows_before + len(MARKERS)
    assert after[f"timefunnel_applied_transactions_total{{{labels}}}"] == tx_before + len(MARKERS)
    assert after[f"timefunnel_apply_duration_seconds_count{{{labels}}}"] > commits_before
    assert after[f"timefunnel_mirror_delay_seconds{{{labels}}}"] == 1.0

    def lag() -> float:
        valid = m("timefunnel_mirror_valid_as_of_timestamp_seconds")
        return time.time() - valid

    wait_for(lambda: lag() < 2.5, 10, 0.2, "valid-as-of to follow the 1 s delay")
    assert lag() >= 1.0, "the mirror shows production less than its delay ago"

    # The producer's counters are the publisher's: rows of the copy plus the three markers;
    # its position is the one it reports on the control topic, moved on by the markers.
    produced = scrape(p.capture_url)
    source = f'funnel="{p.funnel}",source="prod"'
    assert produced[f"timefunnel_published_rows_total{{{source}}}"] == 10 + len(MARKERS)
    assert produced[f"timefunnel_published_transactions_total{{{source}}}"] == 1 + len(MARKERS)
    position = produced[f"timefunnel_source_position{{{source}}}"]
    assert position > position_before
    wait_for(lambda: status_of(p)["producers"][0]["position"] == position, 10, 0.5,
             "funnel status to report the capture's position")


def test_the_endpoint_binds_loopback_unless_told_otherwise(pipeline):
    port = int(pipeline.apply_url.rsplit(":", 1)[1].split("/")[0])
    assert pipeline.apply_url.startswith("http://127.0.0.1:")
    assert "timefunnel_mirror_delay_seconds" in scrape(pipeline.apply_url)
    if pipeline.external_addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address (hostname -I)")
    # The capture was told to bind the machine's address: reachable there, so the address works...
    assert pipeline.capture_url.startswith(f"http://{pipeline.external_addr}:")
    assert "timefunnel_published_events_total" in scrape(pipeline.capture_url)
    # ...and the applier, on the default, is not.
    with pytest.raises(OSError):
        socket.create_connection((pipeline.external_addr, port), timeout=3).close()


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\btimefunnel_[a-z0-9_]+", text))


def test_dashboard_and_alerts_use_only_metrics_that_exist(pipeline):
    wait_for(lambda: "timefunnel_pending_transactions" in scrape(pipeline.apply_url), 15,
             what="the pending counts")
    scraped = {key.split("{", 1)[0] for key in {**scrape(pipeline.apply_url), **scrape(pipeline.capture_url)}}
    board = json.loads((ROOT / "deploy/grafana/dashboards/timefunnel.json").read_text())
    panel_queries = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in board["panels"]}
    panel_queries["templating"] = json.dumps(board["templating"])
    for title, queries in panel_queries.items():
        used = metric_names(queries)
        assert used, f"panel {title!r} queries no timefunnel metric"
        assert used <= scraped, f"panel {title!r} uses metrics no process exposes: {sorted(used - scraped)}"
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        missing = metric_names(rule["expr"]) - scraped
        assert not missing, f"alert {rule['alert']} uses metrics no process exposes: {sorted(missing)}"


# -- the header tally (no broker) ---------------------------------------------------------------
def test_transaction_counter_counts_whole_transactions_like_funnel_status():
    counter = TransactionCounter("t", start=10)

    def add(offset: int, txid: str, kind: Kind, rows: int, end: bool) -> None:
        counter.add(offset, txid.encode(), headers.encode(1_000_000, kind, rows, end))

    add(10, "a", Kind.CHANGES, 3, False)
    add(11, "a", Kind.CHANGES, 2, True)  # offset 12: the commit marker
    assert counter.tally == Tally(1, 2, 5, 12)
    add(13, "hb", Kind.HEARTBEAT, 0, True)
    assert counter.tally == Tally(1, 2, 5, 14), "heartbeats move the boundary, not the counts"
    add(15, "b", Kind.CHANGES, 4, False)  # b never ends: aborted, invisible after this
    assert counter.tally.boundary == 14, "an open transaction is not counted"
    add(17, "c", Kind.CHANGES, 1, True)
    assert counter.tally == Tally(2, 3, 6, 18)
