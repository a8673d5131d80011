"""Every exception the notifier raises on purpose, in one tree.

    NotifierError
    ├── ConfigError              the configuration is invalid (exit code 2)
    ├── UsageError               a command cannot do what it was asked (exit code 2)
    ├── StoreError               Redis is unreachable or holds something we cannot use
    │   └── LeaseLost            a commit was refused: this writer no longer holds the lease
    ├── UnsafeURL                a webhook URL resolves to a private or loopback address
    └── DentallyError            a request to the Dentally API did not give us data
        ├── AuthError            401: the key is invalid, revoked or expired
        ├── ScopeError           403 with budget left: the key lacks a scope
        ├── RateLimited          429, or 403 with no budget left (``reset_at``)
        ├── NotFound             404: unknown id, or a module the practice does not use
        ├── PageTooDeep          413: the page is too deep; split the window
        ├── BadRequest           400 and any other 4xx we do not expect
        ├── TransientError       5xx, timeouts, connection failures: try again later
        └── MalformedResponse    a 2xx whose body is not what the API promises

Messages never contain API keys or webhook secrets: the client builds them from the
method, path and status only.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadRequest",
    "ConfigError",
    "DentallyError",
    "LeaseLost",
    "MalformedResponse",
    "NotFound",
    "NotifierError",
    "PageTooDeep",
    "RateLimited",
    "ScopeError",
    "StoreError",
    "TransientError",
    "UnsafeURL",
    "UsageError",
]


class NotifierError(Exception):
    """Base of every error the notifier raises on purpose."""


class ConfigError(NotifierError):
    """The configuration is invalid; the message names the offending key."""


class UsageError(NotifierError):
    """A command cannot do what it was asked: a port already in use, say (exit code 2)."""


class StoreError(NotifierError):
    """Redis cannot be used (unreachable, wrong type at a key, lost state)."""


class LeaseLost(StoreError):
    """A commit was refused because the practice's lease (its fencing token) is no longer
    the committing writer's: it expired, or another runner took the practice over."""


class UnsafeURL(NotifierError):
    """A subscriber URL resolves to a loopback, private, link-local or metadata address
    (refused unless the subscriber sets ``allow_private``)."""


class DentallyError(NotifierError):
    """A Dentally request failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(DentallyError):
    """401: the key is invalid, revoked or expired. A person must act."""


class ScopeError(DentallyError):
    """403 that is not rate limiting: the key lacks the scope for this resource."""


class RateLimited(DentallyError):
    """The rate budget is spent; ``reset_at`` is the unix time it refills, if known."""

    def __init__(self, message: str, *, status: int | None = None,
                 reset_at: float | None = None) -> None:
        super().__init__(message, status=status)
        self.reset_at = reset_at


class NotFound(DentallyError):
    """404: an unknown id, or a module the practice does not use."""


class PageTooDeep(DentallyError):
    """413: Dentally refuses deep pages; the caller must split its window."""


class BadRequest(DentallyError):
    """400 or another 4xx that retrying will not fix."""


class TransientError(DentallyError):
    """5xx, timeout or connection failure: retrying later may succeed."""


class MalformedResponse(DentallyError):
    """A successful status with a body that is not what the API promises."""
