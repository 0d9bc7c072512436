"""A real Prometheus server scrapes a running `funnel apply` and answers queries about it.

The ``prometheus`` binary comes from Debian's ``prometheus`` package (``make test``
installs it); without it this test fails rather than skips.  It runs on a free loopback
port with a temporary configuration (our alert rules included) and storage directory.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid

import pytest

from tests.integration.test_metrics import metric_url
from tests.support.processes import ROOT, Background, run_funnel, wait_for

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, promql: str) -> dict[str, float]:
    """Instant query: {mirror label (or job): value}."""
    return {r["metric"].get("mirror", r["metric"].get("job", "")): float(r["value"][1])
            for r in api(base, "/api/v1/query", query=promql)["result"]}


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    assert path, "the prometheus binary is missing: install Debian's prometheus package (apt-get install prometheus)"
    return path


def test_prometheus_scrapes_funnel_apply_and_loads_the_alert_rules(bootstrap, prometheus_binary, tmp_path):
    funnel = f"tf-prom-{uuid.uuid4().hex[:12]}"
    created = run_funnel(bootstrap, "create", funnel, "--retention", "1d")
    assert created.returncode == 0, created.stderr
    applier = Background(bootstrap, tmp_path / "apply.log", "apply", f"sqlite://{tmp_path / 'mirror.db'}",
                         "--funnel", funnel, "--mirror", "m1", "--delay", "45s", "--metrics-port", "0")
    server = None
    try:
        target = metric_url(applier).removeprefix("http://").removesuffix("/metrics")
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: timefunnel-apply
    static_configs:
      - targets: ["{target}"]
""")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(tmp_path / "prometheus.log", "wb")
        server = subprocess.Popen([prometheus_binary, f"--config.file={config}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(ready, 30, 0.2, "Prometheus to be ready")
        wait_for(lambda: query(base, f'timefunnel_mirror_delay_seconds{{funnel="{funnel}"}}'), 20, 0.5,
                 "Prometheus to scrape the applier")
        assert query(base, f'timefunnel_mirror_delay_seconds{{funnel="{funnel}"}}') == {"m1": 45.0}
        assert query(base, 'up{job="timefunnel-apply"}') == {"timefunnel-apply": 1.0}
        assert query(base, f'timefunnel_mirror_state{{funnel="{funnel}", state="running"}}') == {"m1": 1.0}
        wait_for(lambda: query(base, f'timefunnel_pending_transactions{{funnel="{funnel}"}}') == {"m1": 0.0}, 20, 0.5,
                 "the pending count in Prometheus")
        headroom = query(base, f'timefunnel_retention_headroom_seconds{{funnel="{funnel}"}}')["m1"]
        assert headroom == pytest.approx(86400, abs=60)

        groups = api(base, "/api/v1/rules")["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert "TimefunnelBehindSchedule" in rules and "TimefunnelApplierDown" in rules
        wait_for(lambda: all(r.get("health") == "ok" for g in api(base, "/api/v1/rules")["groups"]
                             for r in g["rules"]), 10, 0.5, "every alert rule to evaluate")
        firing = {a["labels"]["alertname"] for a in api(base, "/api/v1/alerts")["alerts"]
                  if a["labels"].get("funnel") == funnel}
        assert not firing, f"a healthy applier raised alerts: {firing}"
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        assert applier.stop() == 0, applier.output()
