"""Everything the notifier keeps in Redis: key names, snapshot encoding, the atomic commit."""
