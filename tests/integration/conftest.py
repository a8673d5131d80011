from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, write_config


@pytest.fixture
def daemon_factory(tmp_path: Path, redis_url: str, ns: Namespace, sandbox: SandboxThread
                   ) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(**practice_keys: Any) -> Daemon:
        n = len(made)
        key = practice_keys.pop("key", sandbox.key or "")
        cfg = write_config(tmp_path / f"config{n}.toml", redis_url=redis_url,
                           prefix=ns.prefix, stream=ns.stream, base_url=sandbox.url,
                           key=key, **practice_keys)
        d = Daemon(cfg, tmp_path / f"daemon{n}.log")
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
