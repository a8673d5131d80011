"""Mutants: the campaign must fail when one safety rule of the daemon is switched off.

Each mutant is a copy of ``notifier/`` with one rule removed by a textual edit; the daemon
runs from that copy (``PYTHONPATH``) while the sandbox, receivers and checker run from the
real tree. A mutant that the campaign does not kill means the campaign cannot see that
rule.

    python -m tests.campaign.mutants [NAME ...] [--seeds 11,12,13] [--seconds S] [--control]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio

from tests.campaign.run import Options, Result, campaign

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    only: frozenset[str] | None = None
    """Faults that expose it (None: all); fewer faults make a short run sharper."""
    rate: float = 0.8
    baseline_unstable: float = 0.0
    poll_interval: float = 1.0
    reconcile: float = 15.0


MUTANTS = [
    Mutant("commit-token", "notifier/store/redis.py",
           "if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return 0 end\n", "",
           frozenset({"redis.replayed_command", "dentally.shared_updated_at"})),
    Mutant("clean-read", "notifier/core/cursor.py",
           "        if len(self.seen) == total_count and not self._entered:\n"
           "            return self._done(now)\n"
           "        return self._dirty(now, steady=True)\n",
           "        return self._done(now)\n",
           frozenset({"dentally.unstable", "dentally.churn", "dentally.writes_between_pages",
                      "dentally.shared_updated_at"}), rate=0.5, poll_interval=2.5,
           reconcile=120.0),
    Mutant("date-outlier-guard", "notifier/core/clock.py",
           "        ordered = sorted(s for s, _ in self._samples)\n",
           "        self._offset = sample  # every sample believed at once\n"
           "        return\n",
           frozenset({"dentally.bad_clock_node", "dentally.churn"}), rate=0.6,
           reconcile=120.0),
    Mutant("ack-before-2xx", "notifier/service/delivery.py",
           '        if kind == "delivered":\n', '        if True:\n',
           frozenset({"subscriber.failing", "subscriber.hanging", "subscriber.gone_410"})),
]


def build(m: Mutant, into: Path) -> Path:
    shutil.copytree(ROOT / "notifier", into / "notifier")
    target = into / m.file
    text = target.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"mutant {m.name}: the rule to remove is not (once) in {m.file}")
    target.write_text(text.replace(m.old, m.new))
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="mutants to run (default: all)")
    p.add_argument("--seeds", default="11,12,13",
                   help="seeds to run each mutant with, comma-separated: every one must fail")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--all-faults", action="store_true",
                   help="every fault, not only those that expose the mutant")
    p.add_argument("--control", action="store_true",
                   help="also run each mutant's configuration on the real code: it must pass")
    a = p.parse_args(argv)
    seeds = [int(x) for x in a.seeds.split(",") if x]
    alive, failed_controls = [], []
    tally: dict[str, list[int]] = {}
    for m in MUTANTS:
        if a.names and m.name not in a.names:
            continue
        for seed in seeds:
            for mutated in (True, False) if a.control else (True,):
                result = _run(m, seed, a.seconds, mutated, a.all_faults)
                kinds = dict(Counter(v.check for v in result.violations))
                faults = dict(Counter(f.kind for f in result.evidence.faults))
                if mutated:
                    verdict = "KILLED" if result.violations else "SURVIVED"
                    tally.setdefault(m.name, []).append(bool(result.violations))
                    print(f"mutant {m.name} (seed {seed}): {verdict} {kinds}; faults {faults}")
                    if not result.violations:
                        alive.append(f"{m.name}@{seed}")
                else:
                    print(f"control {m.name} (seed {seed}, real code): "
                          f"{'FAILED' if result.violations else 'passed'} {kinds}")
                    if result.violations:
                        failed_controls.append(f"{m.name}@{seed}")
                for v in result.violations[:3]:
                    print("  " + v.render(result.evidence.started).replace("\n", "\n  "))
                sys.stdout.flush()
    print("\nmutant                 runs failed (killed)")
    for name, kills in tally.items():
        print(f"  {name:22} {sum(kills)} of {len(kills)}")
    if failed_controls:
        print(f"controls that failed on the real code: {', '.join(failed_controls)}")
        return 2
    return 1 if alive else 0


def _run(m: Mutant, seed: int, seconds: float, mutated: bool, all_faults: bool
         ) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        path = str(build(m, Path(tmp))) if mutated else None
        only = None if all_faults or not m.only else set(m.only)
        opts = Options(seed, seconds, only=only, daemon_path=path, quiet=True,
                       rate=m.rate, baseline_unstable=m.baseline_unstable,
                       poll_interval=m.poll_interval, reconcile=m.reconcile)
        if only is not None:
            opts.disabled = set()
        return anyio.run(campaign, opts)


if __name__ == "__main__":
    sys.exit(main())
