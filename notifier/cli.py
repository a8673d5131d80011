"""The ``dentally-notifier`` command: parse arguments, call the service, print, exit.

Exit codes (also in the README):
    0  success
    1  unexpected internal error (a bug: please report it with the log)
    2  bad usage or invalid configuration (the message names the key or variable), or a
       port already in use
    3  ``check`` found a problem (the table says which), ``redeliver`` could not
       deliver every event, ``reconcile --accept`` found nothing held, or ``forget``
       found the practice being polled by a running daemon
    4  Redis could not be reached at start
"""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["run"]:
    # Before the heavy imports: a SIGHUP or SIGTERM during start-up is acted on once the
    # daemon listens, instead of killing it (see notifier.ops.early_signals).
    from notifier.ops import early_signals
    early_signals.install()

import argparse
import contextlib
import logging
import os
from collections.abc import Sequence
from functools import partial

import anyio

from notifier import __version__, config
from notifier.errors import ConfigError, StoreError, UsageError
from notifier.ops.text import escape, safe

EXIT_OK, EXIT_BUG, EXIT_CONFIG, EXIT_CHECK, EXIT_REDIS = 0, 1, 2, 3, 4

log = logging.getLogger("notifier.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dentally-notifier",
                                description="Change notifications for the Dentally API.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", metavar="FILE",
                        help="config file (default: $DENTALLY_NOTIFIER_CONFIG or "
                             f"{config.DEFAULT_PATH})")

    with_config(sub.add_parser("run", help="run the daemon"))
    ck = sub.add_parser("check", help="validate config, Redis, keys, scopes and subscribers")
    with_config(ck)
    ck.add_argument("--send-test", action="store_true",
                    help="POST a signed notifier.test event to every subscriber")
    st = sub.add_parser("status", help="cursors, errors, subscribers, from Redis alone")
    with_config(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    tl = sub.add_parser("tail", help="follow the event stream")
    with_config(tl)
    tl.add_argument("--type", action="append", default=[], metavar="GLOB",
                    help="only these event types (glob, repeatable), e.g. 'patient.*'")
    tl.add_argument("--practice", action="append", default=[], metavar="NAME",
                    help="only this practice's events (glob, repeatable)")
    tl.add_argument("-n", "--last", type=int, default=10,
                    help="matching events to show from before now (default 10)")
    tl.add_argument("--no-follow", action="store_true", help="print and exit")
    rd = sub.add_parser("redeliver", help="re-send a subscriber's dead letters or events")
    with_config(rd)
    rd.add_argument("subscriber")
    which = rd.add_mutually_exclusive_group()
    which.add_argument("--id", dest="event_id", help="one event, by its id (evt_...)")
    which.add_argument("--since", help="every matching event since this ISO 8601 time")
    rc = sub.add_parser("reconcile", help="sweep a resource now; --accept held deletions")
    with_config(rc)
    rc.add_argument("practice")
    rc.add_argument("resource")
    rc.add_argument("--accept", action="store_true",
                    help="publish the deletions a sweep held (more than max_delete_fraction)")
    fg = sub.add_parser("forget", help="erase one record from snapshots, stream, dead "
                                       "letters and logs (stop the daemon first)")
    fg.add_argument("practice")
    fg.add_argument("resource", help="e.g. patients")
    fg.add_argument("record_id", metavar="ID")
    with_config(fg)
    sc = sub.add_parser("subscriber", help="manage a subscriber")
    sc_sub = sc.add_subparsers(dest="action", required=True, metavar="ACTION")
    en = sc_sub.add_parser("enable", help="turn a disabled subscriber back on")
    with_config(en)
    en.add_argument("subscriber")
    ky = sub.add_parser("key", help="act on a practice's API key")
    ky_sub = ky.add_subparsers(dest="action", required=True, metavar="ACTION")
    kr = ky_sub.add_parser("retry", help="make the running daemon probe the key now "
                                         "(after fixing a revoked or expired key)")
    with_config(kr)
    kr.add_argument("practice")
    demo = sub.add_parser("demo", help="sandbox, embedded Redis and daemon: watch events flow")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--records", type=int, default=20,
                      help="patients to start with (default 20)")
    sb = sub.add_parser("sandbox", help="run the Dentally sandbox alone")
    sb.add_argument("--host", default="127.0.0.1")
    sb.add_argument("--port", type=int, default=8080)
    sb.add_argument("--key", default="sandbox-key", help="API key it accepts (all scopes)")
    sb.add_argument("--webhook-secret", metavar="WHSEC",
                    help="secret its webhook receiver (/_sandbox/webhook) verifies "
                         "signatures with (default: a fixed trial secret it prints)")
    sb.add_argument("--patients", type=int, default=100, help="patients to create at start")
    sb.add_argument("--appointments", type=int, default=50)
    sb.add_argument("--invoices", type=int, default=30)
    sb.add_argument("--payments", type=int, default=30)
    sb.add_argument("--spread-days", type=float, default=365.0,
                    help="spread the initial records' updated_at over this many days")
    sm = sub.add_parser("schema", help="the event contract: JSON Schema, OpenAPI, AsyncAPI")
    sm.add_argument("--format", choices=["jsonschema", "openapi", "asyncapi", "all"],
                    default=None, help="jsonschema (2020-12, one per event type), openapi "
                                       "(3.1, webhooks), asyncapi (3, the Redis stream); "
                                       "default: all with --out, jsonschema without")
    sm.add_argument("--out", metavar="DIR", help="write files under DIR (as docs/schema/) "
                                                 "instead of printing one document")
    return p


def _load(path_arg: str | None, *, api_keys: bool = True,
          webhook_secrets: bool = True) -> config.Settings:
    path = config.config_path(path_arg)
    return config.load(path, api_keys=api_keys, webhook_secrets=webhook_secrets)


# Commands that read Redis alone resolve no secret up front (`redeliver` reads its own
# subscriber's secret when it signs): only `run` and `check` need the Dentally keys.
_REDIS_ONLY = {"api_keys": False, "webhook_secrets": False}


def _stdout_closed() -> int:
    """The reader of our output went away (``status | head``): not an error. Point stdout
    at /dev/null so that the interpreter's final flush does not complain either."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def _only(group: BaseExceptionGroup, kind: type[BaseException]) -> bool:
    rest = group.split(kind)[1]
    return rest is None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from notifier.ops import early_signals
            with contextlib.suppress(ValueError):   # (not in the main thread: no signals)
                early_signals.install()   # again, when main() is called with its own argv
            settings = _load(args.config)
            from notifier.ops import logging as logsetup
            logsetup.setup(settings.log.format, settings.log.level)
            from notifier.service import daemon
            anyio.run(partial(daemon.run, settings, config_path=config.config_path(
                args.config)))
            return EXIT_OK
        if args.command == "check":
            settings = _load(args.config)
            from notifier.service import check
            ok = anyio.run(check.run, settings, safe(sys.stdout), args.send_test)
            return EXIT_OK if ok else EXIT_CHECK
        if args.command == "status":
            settings = _load(args.config, **_REDIS_ONLY)
            from notifier.service import status
            anyio.run(status.run, settings, sys.stdout, args.json)
            return EXIT_OK
        if args.command == "tail":
            settings = _load(args.config, **_REDIS_ONLY)
            from notifier.service import tail
            anyio.run(partial(tail.run, settings, safe(sys.stdout), args.type,
                              args.last, follow=not args.no_follow,
                              practices=args.practice))
            return EXIT_OK
        if args.command == "redeliver":
            settings = _load(args.config, **_REDIS_ONLY)  # signs with its own secret
            from notifier.service import admin
            ok = anyio.run(partial(admin.redeliver, settings, args.subscriber,
                                   safe(sys.stdout),
                                   event_id=args.event_id, since=args.since))
            return EXIT_OK if ok else EXIT_CHECK
        if args.command == "reconcile":
            settings = _load(args.config, **_REDIS_ONLY)
            from notifier.service import admin
            ok = anyio.run(partial(admin.reconcile, settings, args.practice, args.resource,
                                   safe(sys.stdout), accept=args.accept))
            return EXIT_OK if ok else EXIT_CHECK
        if args.command == "forget":
            settings = _load(args.config, **_REDIS_ONLY)
            from notifier.service import forget
            ok = anyio.run(forget.run, settings, args.practice, args.resource,
                           args.record_id, safe(sys.stdout))
            return EXIT_OK if ok else EXIT_CHECK
        if args.command == "subscriber":
            settings = _load(args.config, **_REDIS_ONLY)
            from notifier.service import admin
            anyio.run(admin.enable, settings, args.subscriber, safe(sys.stdout))
            return EXIT_OK
        if args.command == "key":
            settings = _load(args.config, **_REDIS_ONLY)
            from notifier.service import keycmd
            ok = anyio.run(keycmd.retry, settings, args.practice, safe(sys.stdout))
            return EXIT_OK if ok else EXIT_CHECK
        if args.command == "demo":
            from notifier import demo
            anyio.run(demo.run, args.duration, args.records)
            return EXIT_OK
        if args.command == "schema":
            from notifier.schema import documents
            if args.out is None:
                if args.format == "all":
                    raise UsageError("--format all writes several files: give --out DIR")
                sys.stdout.write(documents.stdout_document(args.format or "jsonschema"))
            else:
                from pathlib import Path
                written = documents.write(args.format or "all", Path(args.out))
                print(f"wrote {len(written)} files under {args.out}")
            return EXIT_OK
        if args.command == "sandbox":
            from notifier.sandbox import main as sandbox_main
            anyio.run(sandbox_main.run, args)
            return EXIT_OK
    except ConfigError as exc:
        print(escape(f"dentally-notifier: {exc}", keep_newlines=True), file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(escape(f"dentally-notifier: {exc}", keep_newlines=True), file=sys.stderr)
        return EXIT_REDIS
    except UsageError as exc:
        print(f"dentally-notifier: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except BaseExceptionGroup as group:
        if _only(group, BrokenPipeError):
            return _stdout_closed()
        raise
    return EXIT_BUG
