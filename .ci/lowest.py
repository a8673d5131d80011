"""Print pip constraints pinning the runtime dependencies CI tests at both ends of their
ranges (redis-py, httpx, anyio) to the lowest version pyproject.toml allows.

The highest versions need no file: a fresh virtualenv resolves to the newest release
inside each range (and the ranges' upper bounds are the newest releases tested).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

BOTH_ENDS = ("redis", "httpx", "anyio")


def lowest(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for name in BOTH_ENDS:
        spec = next(d for d in deps if re.match(rf"{name}\b", d))
        floor = re.search(r">=\s*([0-9][^,;\s]*)", spec)
        if floor is None:
            sys.exit(f"{name}: no lower bound in {spec!r}: CI cannot test the lowest version")
        out.append(f"{name}=={floor.group(1)}")
    return out


if __name__ == "__main__":
    print("\n".join(lowest(Path(__file__).resolve().parent.parent / "pyproject.toml")))
