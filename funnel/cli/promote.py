"""``funnel promote ID [--at T] [--exclude-txid X ...] [--on-promote CMD]``: the takeover."""
from __future__ import annotations

import click

from applier.pointintime import Target
from applier.mirror_ops import new_command, plan_for
from funnel.cli.mirror_ops import find_mirror, run_command
from funnel.cli.options import MIRROR_ID, echo_json, funnel_option, kafka_options, kafka_settings, parse_target_time
from funnel.cli.seek import render_plan, sink_option
from funnel.errors import TimeFunnelError
from funnel.hooks import run_hook
from funnel.timeparse import format_time
from funnel.urls import without_password


@click.command()
@click.argument("mirror", type=MIRROR_ID)
@click.option("--at", "at_text", default=None, metavar="T",
              help="Target time, exclusive (ISO-8601 with zone or -15m) [default: all the funnel holds].")
@click.option("--exclude-txid", "excluded", multiple=True, metavar="TXID",
              help="Leave out this transaction (the erroneous one) while applying the rest; repeatable.")
@click.option("--on-promote", "hook", default=None, metavar="CMD",
              help="Takeover hook run by the shell after the promotion is recorded (moves the service name).")
@funnel_option
@sink_option
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@kafka_options
def promote(mirror: str, at_text: str | None, excluded: tuple[str, ...], hook: str | None, funnel_name: str,
            sink_url: str | None, dry_run: bool, as_json: bool, bootstrap: str | None,
            settings: tuple[str, ...]) -> None:
    """Bring mirror MIRROR to T, stop applying for good, record the promotion, run the takeover hook."""
    at = parse_target_time(at_text) if at_text else None
    handle = find_mirror(kafka_settings(bootstrap, settings), funnel_name, mirror, sink_url)
    done = _same_promotion_already_recorded(handle.position(), at, excluded)
    if done is not None and not dry_run:
        # A rerun after a crash between the recorded promotion and the hook: the takeover
        # must still happen, so report the promotion and run the hook again.
        status, target, plan_info = done, done["promote_target"], None
        click.echo(f"mirror {mirror!r} was already promoted with this target; running the takeover hook", err=True)
    else:
        plan = plan_for(handle, Target(at, tuple(excluded)))
        if dry_run:
            return render_plan("promote", plan, as_json)
        status = run_command(handle, new_command("promote", plan.to, tuple(excluded)), plan)
        target, plan_info = plan.to, plan.as_dict()
    result = {"mirror": mirror, "action": "promote", "target": format_time(target),
              "promoted_at": format_time(status["promoted_at"]), "excluded_txids": list(excluded),
              "next_offset": status["next_offset"], "plan": plan_info}
    hook_failed = False
    if hook:
        env = {"FUNNEL_NAME": funnel_name, "FUNNEL_MIRROR": mirror, "FUNNEL_TARGET_TIME": format_time(target),
               "FUNNEL_PROMOTED_AT": format_time(status["promoted_at"]),
               "FUNNEL_SINK_URL": without_password(sink_url) if sink_url else (status.get("sink_url") or "")}
        result["hook"] = run_hook(hook, env).as_dict()
        hook_failed = result["hook"]["exit_code"] != 0
    if as_json:
        echo_json(result)
    else:
        click.echo(f"mirror {mirror!r} promoted at {result['promoted_at']}: valid as of {result['target']} "
                   f"(exclusive)" + (f", left out {', '.join(excluded)}" if excluded else ""))
        if hook:
            click.echo(f"takeover hook exited {result['hook']['exit_code']}:\n{result['hook']['output']}".rstrip())
    if hook_failed:
        raise TimeFunnelError(f"the promotion is recorded, but the takeover hook failed (exit "
                              f"{result['hook']['exit_code']})", hint="move the service address by hand")


def _same_promotion_already_recorded(position, at: int | None, excluded: tuple[str, ...]) -> dict | None:
    """The recorded promotion as a status dict when it is the one asked for again, else None.

    A different target or exclusion list on a promoted mirror is refused later, by the plan.
    """
    if position.promoted_at is None:
        return None
    if (at is not None and at != position.promote_target) or set(excluded) != set(position.excluded_txids):
        return None
    return {"promoted_at": position.promoted_at, "promote_target": position.promote_target,
            "next_offset": position.next_offset, "sink_url": None}

