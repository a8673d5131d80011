"""Your own consumer group on the stream: declared in ``[redis] consumer_groups``,
retention keeps what it has not read; undeclared, it is not protected."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from notifier import config
from notifier.errors import ConfigError
from notifier.service import retention
from notifier.service.daemon import protected_groups
from notifier.store.keys import Keys
from tests.conftest import Namespace

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def settings(ns: Namespace, groups: list[str]) -> config.Settings:
    return config.parse({
        "redis": {"stream": ns.stream, "prefix": ns.prefix, "retention": 3600,
                  "consumer_groups": groups},
        "subscribers": [{"name": "crm", "url": "https://crm.example.com/h",
                         "secret": SECRET}]})


async def test_a_declared_group_holds_retention_back(redis: Redis, ns: Namespace) -> None:
    now = time.time()
    old = int((now - 7200) * 1000)
    for i in range(5):  # two hours old, past the one-hour retention
        await redis.xadd(ns.stream, {"id": f"e{i}", "type": "patient.updated"},
                         id=f"{old + i}-0")
    await redis.xgroup_create(ns.stream, "crm", id="$")          # read everything
    await redis.xgroup_create(ns.stream, "analytics", id="0")    # your own, behind
    declared = await protected_groups(redis, Keys(ns.prefix), settings(ns, ["analytics"]))
    assert declared == {"crm", "analytics"}
    assert await retention.trim(redis, ns.stream, declared, 3600, now) == 0
    assert await redis.xlen(ns.stream) == 5
    undeclared = await protected_groups(redis, Keys(ns.prefix), settings(ns, []))
    assert await retention.trim(redis, ns.stream, undeclared, 3600, now) == 5


def test_a_subscriber_name_is_a_reserved_group_name(ns: Namespace) -> None:
    with pytest.raises(ConfigError, match=r"consumer_groups: 'crm' is the consumer group"):
        settings(ns, ["crm"])


async def test_status_shows_a_declared_group(redis: Redis, ns: Namespace) -> None:
    import io

    from notifier.service import status

    await redis.xadd(ns.stream, {"id": "e1", "type": "patient.updated"})
    await redis.xgroup_create(ns.stream, "analytics", id="0")
    s = settings(ns, ["analytics", "later"])
    data = await status.collect(s, redis, time.time())
    out = io.StringIO()
    status.render(data, out)
    assert "consumer group analytics (yours): lag 1 unread" in out.getvalue()
    assert "consumer group later (yours): not created yet" in out.getvalue()
