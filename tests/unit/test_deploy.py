"""The deployment files: alert rules (promtool), Prometheus config, Grafana, Dockerfile, compose.

Docker does not run on our CI machines, so the compose stack is checked by reading it:
pinned images, every referenced file present, every variable defaulted, healthchecks
behind every ``service_healthy``, and Prometheus scraping the ports the services serve.
``promtool`` comes from Debian's ``prometheus`` package (``make test`` installs it); when
it is missing these tests fail, they do not skip.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's prometheus package (apt-get install prometheus)"
    return path


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def prometheus_config() -> dict:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR)


# -- Prometheus -------------------------------------------------------------------------
def test_prometheus_config_and_rules_pass_promtool(promtool):
    checked = run(promtool, "check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout + checked.stderr
    rules = run(promtool, "check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_rule_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    alerts = {rule["alert"] for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    cases = [case for test in yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
             for case in test["alert_rule_test"]]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == alerts, "an alert has no firing test"
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == alerts, "an alert has no quiet test"
    assert {"TimefunnelApplierDown", "TimefunnelApplierAbsent", "TimefunnelBehindSchedule",
            "TimefunnelRetentionHeadroomLow", "TimefunnelProducerStalled", "TimefunnelCaptureLagHigh",
            "TimefunnelPromotedMirrorStillApplying"} <= alerts


def test_alert_rules_a_broken_rule_would_fail(promtool, tmp_path):
    """The rule tests can fail: the same tests against a weakened rule report the difference."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("timefunnel_retention_headroom_seconds < 3600",
                                               "timefunnel_retention_headroom_seconds < 60"))
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode != 0 and "TimefunnelRetentionHeadroomCritical" in result.stdout + result.stderr


def test_prometheus_scrapes_the_metrics_ports_the_services_serve(compose, prometheus_config):
    services = compose["services"]
    targets = {job["job_name"]: target for job in prometheus_config["scrape_configs"]
               for static in job["static_configs"] for target in static["targets"]}
    assert set(targets) >= {"timefunnel-apply", "timefunnel-capture"}
    for job, target in targets.items():
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue  # Prometheus itself
        assert host in services, f"job {job} scrapes {target}, but compose has no service {host!r}"
        service = services[host]
        assert port in [str(p) for p in service.get("expose", [])], f"{host} does not expose {port}"
        env = service.get("environment", {})
        assert str(env.get("FUNNEL_METRICS_PORT")) == port, f"{host} serves metrics on another port"
        assert env.get("FUNNEL_METRICS_ADDR") == "0.0.0.0", f"{host} binds loopback: Prometheus could not scrape"
        assert service["command"][0] == job.removeprefix("timefunnel-"), f"{host} does not run `funnel {job}`"
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


# -- Grafana ------------------------------------------------------------------------------
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "timefunnel.json").read_text())


def dashboard_queries(board: dict) -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    queries = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    queries += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                for v in board["templating"]["list"]]
    return queries


def test_grafana_dashboard_is_provisioned_and_covers_the_operations_views(compose):
    board = dashboard()
    assert board["uid"] and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    queries = " ".join(dashboard_queries(board))
    for needed in ("timefunnel_pending_transactions", "timefunnel_mirror_delay_seconds",
                   "timefunnel_mirror_valid_as_of_timestamp_seconds", "timefunnel_applied_rows_total",
                   "timefunnel_retention_headroom_seconds"):
        assert needed in queries, f"the dashboard does not show {needed}"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/timefunnel.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in compose["services"]["grafana"]["volumes"]


# -- docker-compose.yml -------------------------------------------------------------------
def test_every_compose_image_is_pinned(compose):
    images = {name: s["image"] for name, s in compose["services"].items()}
    assert set(images) >= {"kafka", "production", "mirror", "capture", "apply", "prometheus", "grafana"}
    for name, image in images.items():
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: image {image!r} is not pinned"
    assert images["kafka"].startswith("apache/kafka:")


def test_every_compose_reference_resolves(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    # Every ${VAR} has a default, so the file works without a .env file.
    for match in re.finditer(r"(?<!\$)\$\{([^}]*)\}", text):
        assert ":-" in match.group(1), f"${{{match.group(1)}}} has no default"
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build["context"])
            assert (context / "Dockerfile").is_file(), f"{name}: no Dockerfile in {context}"
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), f"{name}: env_file {env_file} is missing"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounts {source}, which is not in the repository"
            else:
                assert source in declared_volumes, f"{name}: volume {source!r} is not declared"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is published on every interface"


def test_compose_waits_for_healthy_dependencies(compose):
    services = compose["services"]
    dockerfile_has_healthcheck = "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in ("service_healthy", "service_completed_successfully")
            if condition["condition"] == "service_healthy":
                target = services[dependency]
                own = target.get("healthcheck")
                assert (own and not own.get("disable")) or (target.get("build") and dockerfile_has_healthcheck), \
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
    assert services["apply"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "${FUNNEL_DELAY:-" in " ".join(services["apply"]["command"]), "the delay comes from FUNNEL_DELAY"


def test_compose_environment_matches_the_cli_options(compose):
    """The variables compose sets are the ones the CLI reads (a renamed option would break the stack)."""
    from funnel.cli.apply import apply
    from funnel.cli.capture import capture

    for command in (apply, capture):
        params = {p.name: p for p in command.params}
        assert params["metrics_port"].default is None, "no endpoint unless asked for"
        assert params["metrics_port"].envvar == "FUNNEL_METRICS_PORT"
        assert params["metrics_addr"].default == "127.0.0.1", "loopback unless told otherwise"
        assert params["metrics_addr"].envvar == "FUNNEL_METRICS_ADDR"
        assert params["bootstrap"].envvar == "FUNNEL_BOOTSTRAP" and params["funnel_name"].envvar == "FUNNEL_NAME"
    env = compose["services"]["apply"]["environment"]
    assert {"FUNNEL_BOOTSTRAP", "FUNNEL_NAME", "FUNNEL_METRICS_PORT", "FUNNEL_METRICS_ADDR"} <= set(env)


# -- Dockerfile ---------------------------------------------------------------------------
def test_dockerfile_is_slim_non_root_with_entrypoint_and_healthcheck():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    (base,) = [line for line in lines if line.startswith("FROM ")]
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim(-\w+)?", base), base
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert 'ENTRYPOINT ["funnel"]' in lines
    health = " ".join(lines[lines.index(next(line for line in lines if line.startswith("HEALTHCHECK"))):])
    assert "/metrics" in health and "FUNNEL_METRICS_PORT" in health
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    for copied in (line.split()[1] for line in lines if line.startswith("COPY ")):
        assert (ROOT / copied).exists(), f"COPY {copied}: not in the repository"
