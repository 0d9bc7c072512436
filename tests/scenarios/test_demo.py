"""`funnel demo` (what `make demo` runs) works end to end on its own local broker."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.support.processes import ROOT


def test_demo_restores_the_deleted_orders(tmp_path):
    result = subprocess.run([sys.executable, "-m", "funnel.cli", "demo", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    found = re.search(r"promoted with (\d+) orders; production had (\d+) just before the DELETE and has (\d+) now",
                      result.stdout)
    assert found, result.stdout
    restored, before, after = map(int, found.groups())
    assert before > 50 and after < before
    # SQLite capture may group an order committed within the same 20 ms poll with the DELETE.
    assert before - 3 <= restored <= before
    assert "takeover hook exited 0" in result.stdout and "Broker stopped" in result.stdout
