"""dentally-notifier: change notifications for the Dentally API."""

__version__ = "0.1.0"
