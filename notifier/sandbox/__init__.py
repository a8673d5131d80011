"""The Dentally sandbox: an HTTP server that behaves like the real API, quirks included.

A product feature in its own right (`dentally-notifier sandbox`): integrators test their
consumers against it, and every test and benchmark of ours runs against it.
"""
