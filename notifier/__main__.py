"""`python -m notifier` is the `dentally-notifier` command."""

from notifier.cli import main

raise SystemExit(main())
