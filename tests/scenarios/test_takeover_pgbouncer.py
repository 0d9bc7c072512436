"""The takeover applications survive: pgbench runs through pgbouncer against PostgreSQL
production, a bad DELETE happens, `funnel promote --at` moves pgbouncer's entry to the
mirror with `funnel takeover pgbouncer` as its hook, pgbench goes on against the mirror,
and the switchback brings it back to production through the same pgbouncer (the freeze
hook PAUSEs, the takeover hook moves and RESUMEs), pgbench still running. Each pgbench
client keeps the one connection it opened; failed transactions are counted and the
longest pause a client saw around each takeover is printed.

The workload is stock pgbench: its four tables, keyless pgbench_history included (with
REPLICA IDENTITY FULL, so its rows replicate as a multiset and the reverse capture of the
switchback accepts it), and its built-in TPC-B transaction. The mirror's schema is
production's (pg_dump --schema-only).
"""
from __future__ import annotations

import glob
import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from tests.support.pgserver import find_pg_bin
from tests.support.poolers import PgBouncer
from tests.support.processes import run_funnel, start_funnel, wait_for

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers")
CLIENTS = 4
RATE = 100  # transactions per second, all clients together: a steady application, not a benchmark


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def balances(url: str) -> tuple[int, int, int, int]:
    """Accounts, and the sums of account, teller and branch balances (equal when whole TPC-B
    transactions were applied: each adds the same delta to all three)."""
    return query(url, "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts),"
                      " (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)")[0]


def teller_total(url: str) -> int:
    return query(url, "SELECT sum(tbalance) FROM pgbench_tellers")[0][0]


def keeps_changing(url: str, seconds: float = 1.0) -> bool:
    before = teller_total(url)
    time.sleep(seconds)
    return teller_total(url) != before


def pgbench_args(url: str) -> list[str]:
    parts = psycopg.conninfo.conninfo_to_dict(url)
    return [str(find_pg_bin() / "pgbench"), "-h", parts["host"], "-p", str(parts["port"]), "-U", parts["user"]]


def prepare(prod: str, mirror: str) -> None:
    subprocess.run([*pgbench_args(prod), "-i", "-s", "1", "-q", psycopg.conninfo.conninfo_to_dict(prod)["dbname"]],
                   check=True, capture_output=True, timeout=120)
    # Before the schema dump, so the mirror's copy of the table carries it too.
    query(prod, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
    dump = subprocess.run([str(find_pg_bin() / "pg_dump"), "--schema-only", "--no-owner",
                           *(f"--table={t}" for t in TABLES), prod], check=True, capture_output=True, text=True)
    # psql, not a driver: recent pg_dump writes psql meta-commands (\\restrict).
    subprocess.run([str(find_pg_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", mirror], input=dump.stdout,
                   check=True, capture_output=True, text=True, timeout=60)


def start_pgbench(url: str, log_prefix: Path) -> subprocess.Popen:
    """pgbench through pgbouncer, one connection per client for the whole run (no -C), a
    line per transaction in the logs; stopped by the test (-T is only a bound)."""
    return subprocess.Popen([*pgbench_args(url), "-n", "-c", str(CLIENTS), "-j", "2", "-T", "240", "-R", str(RATE),
                             "-s", "1", "-b", "tpcb-like", "-l", f"--log-prefix={log_prefix}",
                             psycopg.conninfo.conninfo_to_dict(url)["dbname"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def transactions(log_prefix: Path) -> tuple[dict[int, list[float]], int]:
    """Completion times (epoch s) of each client's successful transactions, and the failed ones."""
    done: dict[int, list[float]] = {}
    failed = 0
    for path in glob.glob(f"{log_prefix}.*"):
        lines = Path(path).read_text().splitlines()
        if lines and len(lines[-1].split()) < 6:
            lines.pop()  # cut off where pgbench was stopped mid-block
        for line in lines:
            client, _, latency, _, epoch, micros, *_ = line.split()
            if not latency.isdigit():  # "failed" (or "skipped"): not a success
                failed += 1
                continue
            done.setdefault(int(client), []).append(int(epoch) + int(micros) / 1e6)
    return {client: sorted(times) for client, times in done.items()}, failed


def longest_pause(done: dict[int, list[float]], start: float, end: float) -> float:
    """The longest time between two successive transactions of one client that overlaps [start, end]."""
    gaps = [b - a for times in done.values() for a, b in zip(times, times[1:]) if b >= start and a <= end]
    return max(gaps, default=0.0)


def went_on(done: dict[int, list[float]], since: float) -> bool:
    """Every client has a successful transaction after ``since``."""
    return len(done) == CLIENTS and all(times[-1] > since for times in done.values())


def connected_since(bouncer: PgBouncer, database: str) -> list[datetime]:
    """When each client of ``database`` connected to pgbouncer (SHOW CLIENTS)."""
    with psycopg.connect(bouncer.admin_url, autocommit=True, prepare_threshold=None) as conn:
        cursor = conn.execute("SHOW CLIENTS")
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    return [datetime.strptime(r["connect_time"], "%Y-%m-%d %H:%M:%S %Z").replace(tzinfo=timezone.utc)
            for r in rows if r["database"] == database]


def find_deletes(bootstrap: str, funnel: str) -> list[dict]:
    found = run_funnel(bootstrap, "inspect", "--funnel", funnel, "--op", "delete", "--min-rows", "1000", "--json")
    return json.loads(ok(found))["transactions"]


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def test_pgbench_survives_promote_and_switchback_through_pgbouncer(bootstrap, funnel_name, pg_databases, procs,
                                                                   tmp_path, capsys):
    prod, mirror = pg_databases
    prepare(prod, mirror)
    port = psycopg.conninfo.conninfo_to_dict(prod)["port"]
    bouncer = PgBouncer(bench=f"host=127.0.0.1 port={port} dbname={psycopg.conninfo.conninfo_to_dict(prod)['dbname']}")
    bouncer.start()
    try:
        drill(bootstrap, funnel_name, prod, mirror, bouncer, procs, tmp_path, capsys)
    finally:
        bouncer.stop()


def drill(bootstrap, funnel_name, prod, mirror, bouncer, procs, tmp_path, capsys) -> None:
    clock = time.monotonic()
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        phases[name] = round(time.monotonic() - clock, 1)

    takeover = f"{sys.executable} -m funnel.cli takeover pgbouncer bench --config {bouncer.config}"
    tables = [arg for table in TABLES for arg in ("--table", table)]
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, *tables)
    start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m1",
                 "--delay", "60s")
    wait_for(lambda: balances(mirror)[0] == 100000, 60, 0.2, "the initial copy on the mirror")
    mark("copied")

    log_prefix = tmp_path / "pgbench"
    bench = start_pgbench(bouncer.url("bench"), log_prefix)
    try:
        wait_for(lambda: keeps_changing(prod, 0.3), 30, 0.1, "pgbench writing to production")
        time.sleep(2)

        # The disaster, and the takeover with the built-in pgbouncer move as the hook.
        deleted = len(query(prod, "DELETE FROM pgbench_accounts RETURNING 1"))
        bad: list[dict] = []
        wait_for(lambda: bool(bad.extend(find_deletes(bootstrap, funnel_name)) or bad), 60, 0.5,
                 "the DELETE in the funnel")
        mark("delete found")
        assert len(bad) == 1 and bad[0]["rows"] == deleted == 100000, bad
        promote_start = time.time()
        promoted = ok(run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--at", bad[0]["commit_ts"],
                                 "--on-promote", takeover))
        promote_end = time.time()
        mark("promoted")
        assert "takeover hook exited 0" in promoted and "resumed 'bench'" in promoted, promoted
        assert capture.stop() == 0
        accounts, abalance, tbalance, bbalance = balances(mirror)
        assert accounts == 100000 and abalance == tbalance == bbalance, "the mirror: just before the DELETE, whole"
        assert keeps_changing(mirror, 1.0), "pgbench goes on against the mirror"
        assert not keeps_changing(prod, 0.5), "and no longer writes to the damaged production"

        # The switchback, through the same pgbouncer: PAUSE as the freeze, the move back as the takeover.
        prepare_proc = start_funnel(bootstrap, procs, tmp_path, "switchback", "prepare", "--funnel", funnel_name,
                                    "--mirror", "m1", "--to", prod)
        wait_for(lambda: "syncing:" in prepare_proc.output(), 90, 0.1, "prepare to sync production")
        mark("syncing")
        time.sleep(1.0)
        switch_start = time.time()
        done = ok(run_funnel(bootstrap, "switchback", "complete", "--funnel", funnel_name, "--mirror", "m1",
                             "--freeze-hook", f"{takeover} --pause-only", "--takeover-hook", takeover,
                             "--delay", "60s", timeout=180))
        switch_end = time.time()
        mark("switched back")
        assert "done:" in done and "resumed 'bench'" in done, done
        assert keeps_changing(prod, 1.0), "pgbench goes on against production again"
        assert bouncer.show_databases()["bench"]["database"] == psycopg.conninfo.conninfo_to_dict(prod)["dbname"]
        clients = connected_since(bouncer, "bench")
        before_promote = datetime.fromtimestamp(int(promote_start), timezone.utc)
        assert len(clients) == CLIENTS and max(clients) <= before_promote, "no client reconnected"
        # pgbench writes its logs in blocks: wait until they show every client after the switchback.
        try:
            wait_for(lambda: went_on(transactions(log_prefix)[0], switch_end), 60, 0.5, "pgbench's logs")
        except AssertionError:
            pass  # judged below, together with pgbench's own account of aborted clients
    finally:
        bench.send_signal(signal.SIGTERM)  # -T is only a bound
        _, errors = bench.communicate(timeout=30)

    aborted = re.findall(r"client \d+ aborted", errors)
    done_tx, failed = transactions(log_prefix)
    around_promote = longest_pause(done_tx, promote_start, promote_end)
    around_switchback = longest_pause(done_tx, switch_start, switch_end)
    figures = [
        f"pgbench through pgbouncer, {CLIENTS} clients: {sum(map(len, done_tx.values()))} transactions, "
        f"{failed} failed, {len(aborted)} clients aborted",
        f"longest client pause around the promote takeover: {around_promote * 1000:.0f} ms "
        f"(promote with hook took {promote_end - promote_start:.1f} s)",
        f"longest client pause around the switchback: {around_switchback * 1000:.0f} ms "
        f"(switchback complete took {switch_end - switch_start:.1f} s)",
        f"phases (s since start): {phases}"]
    with capsys.disabled():  # the figures are the point of this drill: shown even when output is captured
        print("\n" + "\n".join(f"  takeover drill: {line}" for line in figures))
    assert failed == 0 and not aborted, errors
    assert sorted(done_tx) == list(range(CLIENTS))
    assert went_on(done_tx, switch_end), "every client went on after the switchback"
    assert around_promote < 10.0, "the promote's pause is the hook's PAUSE to RESUME, not the promote"
