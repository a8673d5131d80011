"""The published event contract: models (the source of truth) and the documents made from
them (``dentally-notifier schema``)."""
