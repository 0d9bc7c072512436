"""The pure parts of the built-in takeovers: targets, pgbouncer.ini rewriting, the plans
and HAProxy's runtime API commands and answers."""
from __future__ import annotations

import os
import stat

import pytest

from applier.takeover import DatabaseTarget, TakeoverError, parse_address, parse_database_target
from applier.takeover.haproxy import HaproxyMove, ServerState, Step as HStep, answer_ok, command, \
    parse_server, parse_servers_state, plan as haproxy_plan
from applier.takeover.pgbouncer import Mode, PoolerDatabase, Step, admin_url_from_config, plan
from applier.takeover.pgbouncer_ini import find_entry, format_connstr, parse_connstr, rewrite, write_atomically

INI = """;; pgbouncer for the shop
[databases]
; the application's database
shop = host=10.0.0.5 port=5432 dbname=shop pool_size=20  
"odd name" = host=10.0.0.5 dbname='with '' quote' user=app
reports=host=10.0.0.6 dbname=reports

[pgbouncer]
listen_addr = *
listen_port = 6433
admin_users = admin, other
pool_mode = transaction
"""
MIRROR = DatabaseTarget("10.0.0.9", 5433, "shop_mirror")


def test_targets_from_urls_and_conninfo():
    assert parse_database_target("postgresql://apply:secret@10.0.0.9:5433/shop_mirror") == MIRROR
    assert parse_database_target("host=10.0.0.9 port=5433 dbname=shop_mirror user=x") == MIRROR
    assert parse_database_target("postgres://db.internal/shop") == DatabaseTarget("db.internal", 5432, "shop")
    assert parse_database_target("postgresql:///shop?host=/run/postgresql").host == "/run/postgresql"
    assert parse_database_target("10.0.0.9:5433", need_dbname=False) == DatabaseTarget("10.0.0.9", 5433, None)
    assert parse_address("[::1]:5432") == ("::1", 5432)
    assert parse_address("postgresql://localhost:6000/x") == ("127.0.0.1", 6000)


@pytest.mark.parametrize("text, message", [
    ("", "empty target"), ("mysql://h/db", "not a PostgreSQL URL"), ("postgresql://h:5432", "names no database"),
    ("postgresql:///shop", "names no host"), ("postgresql://a,b/shop", "several hosts"),
    ("postgresql://h:0/db", "bad port"), ("postgresql://h/db?nonsense=1", "malformed target"),
    ("10.0.0.9:5432", "not a PostgreSQL URL"),
])
def test_bad_targets(text, message):
    with pytest.raises(TakeoverError, match=message):
        parse_database_target(text)


@pytest.mark.parametrize("text, message", [
    ("127.0.0.1:99999", "bad port"), ("postgresql:///shop?host=/run/postgresql", "is a unix socket"),
    ("no-such-host.invalid:5432", "cannot resolve"), ("nohost", "not host:port"),
])
def test_bad_proxy_addresses(text, message):
    with pytest.raises(TakeoverError, match=message):
        parse_address(text)


def test_connection_strings_round_trip_with_quotes():
    pairs = parse_connstr("host=h dbname='with '' quote' password='' user=app")
    assert pairs == (("host", "h"), ("dbname", "with ' quote"), ("password", ""), ("user", "app"))
    assert parse_connstr(format_connstr(pairs)) == pairs
    with pytest.raises(TakeoverError, match="cannot read"):
        parse_connstr("host=h dbname='open")


def test_rewrite_changes_one_entry_and_keeps_every_other_byte():
    out = rewrite(INI, "shop", MIRROR)
    changed = [(a, b) for a, b in zip(INI.splitlines(True), out.splitlines(True)) if a != b]
    assert changed == [("shop = host=10.0.0.5 port=5432 dbname=shop pool_size=20  \n",
                        "shop = host=10.0.0.9 port=5433 dbname=shop_mirror pool_size=20  \n")]
    assert find_entry(out, "shop").points_at(MIRROR) and not find_entry(INI, "shop").points_at(MIRROR)
    odd = find_entry(rewrite(INI, "odd name", MIRROR), "odd name")
    assert odd.params == (("host", "10.0.0.9"), ("dbname", "shop_mirror"), ("user", "app"), ("port", "5433"))
    compact = rewrite(INI, "reports", MIRROR).splitlines()[5]
    assert compact == "reports=host=10.0.0.9 dbname=shop_mirror port=5433"
    assert rewrite(INI.replace("\n", "\r\n"), "shop", MIRROR).count("\r\n") == INI.count("\n")


def test_an_entry_defaults_dbname_to_its_name_and_port_to_5432():
    ini = "[databases]\nshop = host=10.0.0.9\n"
    assert find_entry(ini, "shop").points_at(DatabaseTarget("10.0.0.9", 5432, "shop"))


@pytest.mark.parametrize("ini, name, message", [
    (INI, "nosuch", "no \\[databases\\] entry 'nosuch'"),
    (INI, "listen_port", "no \\[databases\\] entry"),        # a setting of [pgbouncer], not a database
    (INI.replace("; the application's database\n", "; shop = commented out\n").replace("shop =", "x ="), "shop",
     "no \\[databases\\] entry"),
    ("[pgbouncer]\nlisten_port = 1\n", "shop", "no \\[databases\\] section"),
])
def test_unknown_entries(ini, name, message):
    with pytest.raises(TakeoverError, match=message):
        rewrite(ini, name, MIRROR)


def test_atomic_write_keeps_the_mode(tmp_path):
    path = tmp_path / "pgbouncer.ini"
    path.write_text(INI)
    os.chmod(path, 0o640)
    write_atomically(path, "new\n")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"], "no temporary file left"


def test_admin_console_from_the_configuration():
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(admin_url_from_config(INI))
    assert (params["host"], params["port"], params["user"], params["dbname"]) == ("127.0.0.1", "6433", "admin",
                                                                                 "pgbouncer")
    params = conninfo_to_dict(admin_url_from_config("[pgbouncer]\nunix_socket_dir = /run/pgb\n"))
    assert (params["host"], params["port"], params["user"]) == ("/run/pgb", "6432", "pgbouncer")


def running(host="10.0.0.5", port=5432, database="shop", paused=False) -> PoolerDatabase:
    return PoolerDatabase("shop", host, port, database, paused)


def test_pgbouncer_plans_and_reruns():
    moved = running("10.0.0.9", 5433, "shop_mirror")
    assert plan(Mode.MOVE, running(), False, MIRROR) == [Step.PAUSE, Step.REWRITE, Step.RELOAD, Step.RESUME]
    assert plan(Mode.MOVE, moved, True, MIRROR) == [], "a rerun after the move does nothing"
    assert plan(Mode.MOVE, running(), True, MIRROR) == [Step.PAUSE, Step.RELOAD, Step.RESUME], "crash before RELOAD"
    assert plan(Mode.MOVE, running(paused=True), False, MIRROR) == [Step.REWRITE, Step.RELOAD, Step.RESUME], \
        "after a freeze hook's PAUSE"
    assert plan(Mode.MOVE, PoolerDatabase("shop", "10.0.0.9", 5433, "shop_mirror", True), True, MIRROR) == [
        Step.RESUME], "crash before RESUME"
    assert plan(Mode.PAUSE, running(), True, None) == [Step.PAUSE]
    assert plan(Mode.PAUSE, running(paused=True), True, None) == []
    assert plan(Mode.RESUME, running(paused=True), True, None) == [Step.RESUME]
    assert plan(Mode.RESUME, running(), True, None) == []


SHOW_SERVERS = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 pg 1 primary 10.0.0.5 2 0 1 1 40 1 0 2 0 0 0 0 - 5432 - 0 0 - - 0
3 pg 2 spare 10.0.0.7 0 1 1 1 40 1 0 0 0 0 0 0 - 5432 - 0 0 - - 0

"""


def test_haproxy_servers_state_and_commands():
    servers = parse_servers_state(SHOW_SERVERS, "pg")
    assert servers["primary"] == ServerState("pg", "primary", "10.0.0.5", 5432, 0)
    assert servers["spare"].disabled
    with pytest.raises(TakeoverError, match="Can't find backend"):
        parse_servers_state("Can't find backend.\n", "nosuch")
    move = HaproxyMove("pg", "primary", "10.0.0.9", 5433)
    assert [command(step, move) for step in haproxy_plan(servers["primary"], move)] == [
        "disable server pg/primary", "shutdown sessions server pg/primary",
        "set server pg/primary addr 10.0.0.9 port 5433", "enable server pg/primary"]
    assert parse_server("pg/primary") == ("pg", "primary")
    for bad in ("pg", "pg/", "/primary", "pg/a/b", "pg /a"):
        with pytest.raises(TakeoverError, match="BACKEND/SERVER"):
            parse_server(bad)


def test_haproxy_plans_and_reruns():
    at_old = ServerState("pg", "primary", "10.0.0.5", 5432, 0)
    at_new = ServerState("pg", "primary", "10.0.0.9", 5433, 0)
    frozen = ServerState("pg", "primary", "10.0.0.5", 5432, 1)
    move = HaproxyMove("pg", "primary", "10.0.0.9", 5433)
    assert haproxy_plan(at_new, move) == []
    assert haproxy_plan(ServerState("pg", "primary", "10.0.0.9", 5433, 1), move) == [HStep.ENABLE]
    assert haproxy_plan(frozen, move) == [HStep.SHUTDOWN, HStep.SET_ADDR, HStep.ENABLE]
    keep = HaproxyMove("pg", "primary", "10.0.0.9", 5433, keep_sessions=True)
    assert haproxy_plan(at_old, keep) == [HStep.DISABLE, HStep.SET_ADDR, HStep.ENABLE]
    freeze = HaproxyMove("pg", "primary", disable_only=True)
    assert haproxy_plan(at_old, freeze) == [HStep.DISABLE, HStep.SHUTDOWN] and haproxy_plan(frozen, freeze) == []


def test_haproxy_answers():
    assert answer_ok(HStep.SET_ADDR, "IP changed from '10.0.0.5' to '10.0.0.9', port changed from '5432' to "
                                     "'5433' by 'stats socket command'\n")
    assert answer_ok(HStep.SET_ADDR, "no need to change the addr\n")
    assert not answer_ok(HStep.SET_ADDR, "Permission denied\n")
    assert answer_ok(HStep.ENABLE, "\n") and not answer_ok(HStep.DISABLE, "No such server.\n")


def readme_commands(section: str = "## Takeover") -> list[list[str]]:
    """Every `funnel ...` command of the README's section (continuation lines joined), split as the shell would."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in body.split("```sh\n")[1:]]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  # ", 1)[0]
            if line.startswith("funnel "):
                commands.append(shlex.split(line))
    return commands


def test_the_readme_takeover_commands_and_hooks_parse():
    """The README's examples run as they stand: every command and every hook that is a
    `funnel` command is accepted by the CLI's parser (options, arguments, types)."""
    import shlex

    from funnel.cli import main

    commands = readme_commands()
    hooks = [shlex.split(arg) for argv in commands for arg in argv if arg.startswith("funnel ")]
    checked = 0
    for argv in commands + hooks:
        command = main.commands[argv[1]]
        if argv[1] in ("takeover", "switchback"):
            command, args = command.commands[argv[2]], argv[3:]
        else:
            args = argv[2:]
        command.make_context(" ".join(argv[:3]), list(args))  # raises click.UsageError on anything unknown
        checked += 1
    assert sum(argv[1] == "takeover" for argv in commands + hooks) >= 7 and checked >= 13, commands


def test_the_readme_kubectl_hooks_send_valid_json():
    """The Kubernetes recipes are untested against a cluster, but their quoting is: the shell
    hands kubectl a patch that is valid JSON."""
    import json
    import shlex

    patches = [shlex.split(arg) for argv in readme_commands() for arg in argv if arg.startswith("kubectl patch")]
    assert len(patches) == 2
    for hook in patches:
        patch = json.loads(hook[hook.index("-p") + 1])
        assert "spec" in patch or "subsets" in patch
