"""``funnel inspect``: list what the funnel holds, to find an error's exact time and txid.

Reads with its own throwaway consumer (no group that matters, nothing committed).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import click

from funnel.cli.options import MIRROR_ID, echo_json, funnel_option, kafka_options, kafka_settings, parse_target_time
from funnel.codec import EventCodec
from funnel.control import ControlChannel
from funnel.ddl import Ddl, describe
from funnel.errors import ConfigError, TimeFunnelError
from funnel.events import Kind, Op
from funnel.reader import FunnelReader, TransactionSummary
from funnel.timeparse import format_time
from funnel.topic import FunnelAdmin
from funnel.urls import without_password

OPS = [op.value for op in Op]


@click.command()
@funnel_option
@click.option("--since", "since_text", default=None, metavar="T", help="From this commit time (ISO-8601 or -1h).")
@click.option("--until", "until_text", default=None, metavar="T", help="Before this commit time.")
@click.option("--table", "tables", multiple=True, help="Only transactions touching this table (repeatable).")
@click.option("--op", "ops", multiple=True, type=click.Choice(OPS), help="Only transactions with this operation.")
@click.option("--min-rows", type=int, default=0, help="Only transactions with at least N matching rows.")
@click.option("--mirror", default=None, type=MIRROR_ID, help="Say whether each transaction is applied on this mirror.")
@click.option("--sink", "sink_url", default=None, metavar="URL", help="Read the mirror's position from its database.")
@click.option("--txid", default=None, help="Only this transaction.")
@click.option("--rows", "show_rows", is_flag=True, help="With --txid: show the row images (before and after).")
@click.option("--limit", type=int, default=1000, show_default=True, help="At most this many transactions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON document).")
@kafka_options
def inspect(funnel_name: str, since_text: str | None, until_text: str | None, tables: tuple[str, ...],
            ops: tuple[str, ...], min_rows: int, mirror: str | None, sink_url: str | None, txid: str | None,
            show_rows: bool, limit: int, as_json: bool, bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """List the transactions the funnel holds: commit time, txid, offsets, rows per table and op."""
    if show_rows and not txid:
        raise ConfigError("--rows needs --txid", hint="find the txid first: funnel inspect --op delete")
    kafka = kafka_settings(bootstrap, settings)
    FunnelAdmin(kafka).describe(funnel_name)
    next_offset = _mirror_next_offset(kafka, funnel_name, mirror, sink_url) if mirror else None
    since = parse_target_time(since_text) if since_text else None
    until = parse_target_time(until_text) if until_text else None
    codec = EventCodec()
    found: list[dict[str, Any]] = []
    with FunnelReader(kafka, funnel_name) as reader:
        low, high = reader.watermarks()
        start = reader.offset_for_time(since) if since is not None else low
        end = reader.offset_for_time(until) if until is not None else high
        for summary in reader.transactions(max(start, low), end, keep_payloads=True):
            entry = _describe(summary, codec, next_offset, show_rows)
            if _matches(entry, summary, txid, tables, ops, min_rows):
                found.append(entry)
                if len(found) >= limit:
                    break
    if txid and not found:
        raise TimeFunnelError(f"transaction {txid!r} is not in funnel {funnel_name!r} (offsets {low}..{high})")
    if as_json:
        echo_json({"funnel": funnel_name, "mirror": mirror, "transactions": found})
        return
    for entry in found:
        click.echo(_line(entry))
        # "rows" is the row count, or with --rows the row images (as in the JSON output).
        for row in entry["rows"] if show_rows else []:
            click.echo(f"    {row['table']} {row['op']}: before={row['before']} after={row['after']}")
    if not found:
        click.echo("no matching transactions", err=True)


def _mirror_next_offset(kafka, funnel: str, mirror: str, sink_url: str | None) -> int:
    if sink_url:
        from applier.sinks import has_mirror_state, open_sink

        position = None
        if has_mirror_state(sink_url):  # else opening it would make a mirror database of it
            sink = open_sink(sink_url)
            try:
                position = sink.read_position(funnel, mirror)
            finally:
                sink.close()
        if position is None:
            raise TimeFunnelError(f"mirror {mirror!r} does not exist in {without_password(sink_url)} for funnel "
                                  f"{funnel!r}", hint="check --mirror and --sink")
        return position.next_offset
    status = ControlChannel(kafka, funnel).state().status(mirror)
    if status is None:
        raise TimeFunnelError(f"unknown mirror {mirror!r} on funnel {funnel!r}",
                              hint="check the mirror id (funnel status) or pass --sink URL")
    return status.next_offset


def _describe(summary: TransactionSummary, codec: EventCodec, next_offset: int | None,
              show_rows: bool) -> dict[str, Any]:
    counts: Counter = Counter()
    rows: list[dict] = []
    ddls: list[dict] = []
    for payload in summary.payloads:
        batch = codec.decode(payload)
        for group in batch.changes:
            counts[(group.table, group.op.value)] += len(group.rows) or (1 if group.op in _ROWLESS else 0)
            if group.op is Op.DDL and group.ddl is not None:
                ddls.append(_ddl_entry(group.table, group.ddl))
                if group.ddl.object != group.table:  # a rename: --table finds it by either name
                    counts[(group.ddl.object, group.op.value)] += 1
            if show_rows:
                rows += [{"table": group.table, "op": group.op.value, "before": _image(group.columns, r.before),
                          "after": _image(group.columns, r.after)} for r in group.rows]
    entry: dict[str, Any] = {
        "txid": summary.txid, "commit_ts": format_time(summary.commit_ts), "commit_ts_us": summary.commit_ts,
        "kind": summary.kind.value, "first_offset": summary.first_offset, "last_offset": summary.last_offset,
        "rows": summary.rows,
        "changes": [{"table": t, "op": op, "rows": n} for (t, op), n in sorted(counts.items())],
    }
    if ddls:
        entry["ddl"] = ddls
    if next_offset is not None:
        entry["applied"] = summary.last_offset < next_offset
    if show_rows:
        entry["rows"] = rows
        entry["row_count"] = summary.rows
    return entry


_ROWLESS = (Op.TRUNCATE, Op.DDL)  # counted once each, so that --op finds them


def _ddl_entry(table: str, ddl: Ddl) -> dict[str, Any]:
    return {"table": table, "object": ddl.object, "tag": ddl.tag, "statement": ddl.statement,
            "actions": [a.kind + " " + a.name + (f" -> {a.to}" if a.to else "") for a in ddl.actions],
            "summary": describe(ddl)}


def _image(columns: list[str], values) -> dict | None:
    if values is None:
        return None
    return {c: (v.hex() if isinstance(v, bytes) else v) for c, v in zip(columns, values)}


def _matches(entry: dict, summary: TransactionSummary, txid: str | None, tables: tuple[str, ...],
             ops: tuple[str, ...], min_rows: int) -> bool:
    if summary.kind is Kind.HEARTBEAT or (txid and summary.txid != txid):
        return False
    if txid:
        return True
    wanted = [c for c in entry["changes"] if (not tables or _table_matches(c["table"], tables))
              and (not ops or c["op"] in ops)]
    return bool(wanted) and sum(c["rows"] for c in wanted) >= max(min_rows, 1)


def _table_matches(table: str, wanted: tuple[str, ...]) -> bool:
    short = table.split(".", 1)[-1]
    return table in wanted or short in wanted


def _line(entry: dict) -> str:
    changes = ", ".join(f"{c['table']} {c['op']} {c['rows']}" for c in entry["changes"]) or "-"
    applied = "" if "applied" not in entry else ("  [applied]" if entry["applied"] else "  [pending]")
    line = (f"{entry['commit_ts']}  txid {entry['txid']}  offsets {entry['first_offset']}..{entry['last_offset']}"
            f"  {entry.get('row_count', entry['rows'])} rows: {changes}{applied}")
    for ddl in entry.get("ddl", ()):
        line += f"\n    ddl {ddl['summary']}\n      {' '.join(ddl['statement'].split())}"
    return line
