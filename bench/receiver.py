"""A fast webhook receiver for the delivery benchmark: answers 204, remembers when each
webhook-id arrived. ``GET /stats`` returns ``{"count": n, "first": {id: unix time}}``;
``POST /reset`` forgets everything. Run: python bench/receiver.py PORT"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import uvicorn

count = 0
first: dict[str, float] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global count
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status, body = 204, b""
    if scope["method"] == "GET":
        status, body = 200, json.dumps({"count": count, "first": first}).encode()
    elif scope["path"] == "/reset":
        count = 0
        first.clear()
    else:
        now = time.time()
        count += 1
        for name, value in scope["headers"]:
            if name == b"webhook-id":
                first.setdefault(value.decode(), now)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http="httptools",
                access_log=False, lifespan="off")
