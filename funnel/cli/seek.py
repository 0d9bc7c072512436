"""``funnel seek ID --to T`` and ``funnel resume ID``: turn a mirror's clock and hold it there."""
from __future__ import annotations

import click

from applier.pointintime import Target
from applier.mirror_ops import new_command, plan_for
from funnel.cli.mirror_ops import find_mirror, run_command
from funnel.cli.options import MIRROR_ID, echo_json, funnel_option, kafka_options, kafka_settings, parse_target_time
from funnel.timeparse import format_time

sink_option = click.option("--sink", "sink_url", default=None, metavar="URL",
                           help="The mirror database, when its applier is not running (the command does the work).")


@click.command()
@click.argument("mirror", type=MIRROR_ID)
@click.option("--to", "to_text", required=True, metavar="T",
              help="Target time, exclusive: ISO-8601 with zone (2026-11-29T12:00:00Z) or relative (-15m).")
@funnel_option
@sink_option
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@kafka_options
def seek(mirror: str, to_text: str, funnel_name: str, sink_url: str | None, dry_run: bool, as_json: bool,
         bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Move mirror MIRROR to just before T (forward or backward) and hold it there until `funnel resume`."""
    to = parse_target_time(to_text)
    handle = find_mirror(kafka_settings(bootstrap, settings), funnel_name, mirror, sink_url)
    plan = plan_for(handle, Target(to))
    if dry_run:
        return render_plan("seek", plan, as_json)
    status = run_command(handle, new_command("seek", plan.to), plan)
    result = {"mirror": mirror, "action": "seek", "target": format_time(plan.to), "plan": plan.as_dict(),
              "next_offset": status["next_offset"], "mode": status["mode"],
              "valid_as_of": format_time(status["valid_as_of"]) if status.get("valid_as_of") else None}
    if as_json:
        echo_json(result)
    else:
        click.echo(f"mirror {mirror!r} holds at {result['target']} (valid as of {result['valid_as_of']}); "
                   f"undid {plan.undo_transactions} and applied {plan.apply_transactions} transactions. "
                   f"`funnel resume {mirror}` returns to the delay.")


@click.command()
@click.argument("mirror", type=MIRROR_ID)
@funnel_option
@sink_option
@kafka_options
def resume(mirror: str, funnel_name: str, sink_url: str | None, bootstrap: str | None,
           settings: tuple[str, ...]) -> None:
    """Stop holding mirror MIRROR: it follows the funnel with its delay again."""
    handle = find_mirror(kafka_settings(bootstrap, settings), funnel_name, mirror, sink_url)
    from applier.pointintime import refuse_if_promoted

    refuse_if_promoted(handle.position())
    from applier.pointintime import Plan

    run_command(handle, new_command("resume"), Plan(mirror, 0, handle.position().next_offset))
    click.echo(f"mirror {mirror!r} follows funnel {funnel_name!r} with its delay again")


def render_plan(action: str, plan, as_json: bool) -> None:
    """The dry-run output: what would be undone, applied and left out, and the result."""
    if as_json:
        echo_json({"action": action, "dry_run": True, **plan.as_dict()})
        return
    click.echo(f"{action} {plan.mirror} to {format_time(plan.to)} (dry run, nothing changed):")
    click.echo(f"  undo  {plan.undo_transactions} transactions / {plan.undo_rows} rows"
               + (f" back to offset {plan.undo_from_offset}" if plan.undo_from_offset is not None else ""))
    click.echo(f"  apply {plan.apply_transactions} transactions / {plan.apply_rows} rows")
    for left in plan.leave_out:
        click.echo(f"  leave out txid {left['txid']} ({left['rows']} rows, committed {left['commit_ts']})")
    click.echo(f"  valid as of afterwards: {format_time(plan.valid_as_of) if plan.valid_as_of else '-'}")
