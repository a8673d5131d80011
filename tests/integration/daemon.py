"""Running the real daemon as a child process against the sandbox and a real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio


def write_config(path: Path, *, redis_url: str, prefix: str, stream: str, base_url: str,
                 key: str, practice: str = "main",
                 subscribers: list[dict[str, Any]] | None = None,
                 more_practices: list[dict[str, Any]] | None = None,
                 metrics_listen: str | None = None, practice_lease: float = 1.5,
                 ingest: dict[str, Any] | None = None, **practice_keys: Any) -> Path:
    # A one-second rate window with a large share and pace: tests poll far faster than
    # Dentally allows, and test the budget itself with their own settings.
    keys = {"name": practice, "region": "sandbox", "base_url": base_url, "api_key": key,
            "poll_interval": 0.2, "rate_window": 1, "max_requests_per_hour": 360_000,
            "max_requests_per_second": 100,
            **practice_keys}
    if "api_key_file" in keys or "api_key_env" in keys:
        del keys["api_key"]

    def toml(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
        return json.dumps(value)

    # A short lease: a daemon killed with -9 hands its practice on within 1.5 s.
    lines = ["[redis]", f"url = {toml(redis_url)}", f"stream = {toml(stream)}",
             f"prefix = {toml(prefix)}", f"practice_lease = {practice_lease}", "",
             "[[practices]]"]
    lines += [f"{k} = {toml(v)}" for k, v in keys.items()]
    for more in more_practices or []:
        extra = {"region": "sandbox", "base_url": base_url, "poll_interval": 0.2,
                 "rate_window": 1, "max_requests_per_hour": 360_000,
                 "max_requests_per_second": 100, **more}
        lines += ["", "[[practices]]"] + [f"{k} = {toml(v)}" for k, v in extra.items()]
    for sub in subscribers or []:
        lines += ["", "[[subscribers]]"] + [f"{k} = {toml(v)}" for k, v in sub.items()]
    if metrics_listen:
        lines += ["", "[metrics]", f"listen = {toml(metrics_listen)}"]
    if ingest:
        lines += ["", "[ingest]"] + [f"{k} = {toml(v)}" for k, v in ingest.items()]
    lines += ["", "[log]", 'format = "json"', 'level = "debug"']
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """``python -m notifier run`` as a real process; its log goes to a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **env_extra: str) -> None:
        assert self.proc is None or self.proc.poll() is not None
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "run", "--config", str(self.config)],
            stdout=out, stderr=out, env=env)
        self.starts += 1

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)
