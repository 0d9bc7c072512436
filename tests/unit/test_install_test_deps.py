"""scripts/install-test-deps, run with a PATH that lacks Prometheus and with fake `id` and
`apt-get`: nothing is installed and the machine's /usr/sbin/policy-rc.d is not touched."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-test-deps"
TOOLS = ("bash", "sort", "paste", "cat", "tail", "rm", "chmod", "sleep", "touch")


def fake_bin(tmp_path: Path, uid: int) -> Path:
    """A PATH directory with the shell tools the script uses, an `id` that says ``uid``
    and an `apt-get` that marks its start and then hangs (a slow mirror)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\ntouch {tmp_path}/apt-started\nsleep 60\n")
    for script in ("id", "apt-get"):
        (bin_dir / script).chmod(0o755)
    return bin_dir


def run_script(tmp_path: Path, uid: int) -> subprocess.Popen:
    env = {"PATH": str(fake_bin(tmp_path, uid)), "TIMEFUNNEL_POLICY_RC_D": str(tmp_path / "policy-rc.d")}
    return subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_a_user_is_told_which_packages_to_install(tmp_path):
    script = run_script(tmp_path, uid=1000)
    out, err = script.communicate(timeout=30)
    assert script.returncode == 1 and out == ""
    assert err.startswith("ERROR: the tests need the Debian packages") and "prometheus" in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "apt-started").exists() and not (tmp_path / "policy-rc.d").exists()


def test_an_interrupted_install_leaves_no_policy_rc_d_behind(tmp_path):
    # left behind, policy-rc.d would refuse every service start on the machine
    script = run_script(tmp_path, uid=0)
    deadline = time.monotonic() + 20
    while not (tmp_path / "apt-started").exists():
        assert script.poll() is None and time.monotonic() < deadline, script.communicate()
        time.sleep(0.05)
    assert (tmp_path / "policy-rc.d").read_text() == "#!/bin/sh\nexit 101\n", "services held while apt-get runs"
    os.killpg(script.pid, signal.SIGTERM)  # as a CI timeout or Ctrl-C stops the whole job
    script.communicate(timeout=30)
    assert script.returncode != 0
    assert not (tmp_path / "policy-rc.d").exists()
