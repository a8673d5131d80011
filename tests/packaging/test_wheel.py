"""The documented install works from what the repository builds: a wheel and an sdist
(``python -m build``), the wheel installed into a fresh virtual environment, its command
checked against the sandbox. Takes about a minute: selected with ``-m package`` (CI runs
it; ``make test`` does not)."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Namespace
from tests.integration.daemon import write_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.package


def run(*cmd: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=600, cwd=cwd)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_installs_into_a_fresh_venv_and_checks_the_sandbox(
        tmp_path: Path, redis_url: str, ns: Namespace) -> None:
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--outdir", dist, ".")
    # `license` in SPDX form: no setuptools deprecation banner on every build and install
    assert "deprecat" not in (built.stdout + built.stderr).lower()
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in ("config.example.toml", "systemd/dentally-notifier.service", "LICENSE",
                   "docs/deploy.md", "Dockerfile", "compose.yaml", "tests/conftest.py"):
        assert needed in names, needed

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", wheel, cwd=tmp_path)
    cmd = venv / "bin" / "dentally-notifier"
    version = run(cmd, "--version", cwd=tmp_path).stdout.strip()
    assert re.fullmatch(r"dentally-notifier \d+\.\d+\.\d+.*", version), version
    # the installed package, not this checkout
    where = run(venv / "bin" / "python", "-c", "import notifier; print(notifier.__file__)",
                cwd=tmp_path)
    assert str(venv) in where.stdout

    sandbox = subprocess.Popen([str(cmd), "sandbox", "--port", "0", "--patients", "5"],
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert sandbox.stderr is not None
        banner = sandbox.stderr.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)", banner)
        assert port, banner
        cfg = write_config(tmp_path / "config.toml", redis_url=redis_url, prefix=ns.prefix,
                           stream=ns.stream, base_url=f"http://127.0.0.1:{port.group(1)}",
                           key="sandbox-key")
        done = subprocess.run([str(cmd), "check", "--config", str(cfg)], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "practice main: patients" in done.stdout
    finally:
        sandbox.terminate()
        sandbox.wait(15)
