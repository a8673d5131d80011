"""The unit file: no warnings from systemd-analyze verify (it exits 0 on unknown keys, so
its output is what counts) and an exposure score of at most 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "dentally-notifier.service"
analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed "
                                "(.ci/run installs it)")


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's command (verify checks it)."""
    exe = Path(sys.executable).parent / "dentally-notifier"
    unit = tmp_path / "dentally-notifier.service"
    unit.write_text(UNIT.read_text().replace("/opt/dentally-notifier/bin/dentally-notifier",
                                             str(exe)))
    return unit


def test_verify_prints_nothing(tmp_path: Path) -> None:
    assert analyze is not None
    done = subprocess.run([analyze, "verify", str(local_unit(tmp_path))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stderr


def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    assert analyze is not None
    done = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20",
                           str(local_unit(tmp_path))], capture_output=True, text=True,
                          timeout=120)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert float(score.group(1)) <= 2.0 and done.returncode == 0


def test_unit_has_what_the_daemon_needs() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "UMask=0077",
                 "DynamicUser=yes", "StateDirectory=dentally-notifier", "LoadCredential=",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
