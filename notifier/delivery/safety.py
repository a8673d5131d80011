"""Refusing webhook URLs that point inside the network (SSRF).

A subscriber URL whose host is, or resolves to, anything but a global unicast address
(loopback, RFC 1918 and other private ranges, link-local including the 169.254.169.254
metadata service, CGNAT, ULA, multicast, reserved) is refused unless the subscriber sets
``allow_private``. Every address the name resolves to is checked, at each attempt (so a
name that changes is caught), cached for a minute. A name that resolves differently between
our check and httpx's own lookup (DNS rebinding within that instant) is not caught here.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

import anyio

from notifier.errors import UnsafeURL

CACHE_SECONDS = 60.0


def unsafe_reason(address: str) -> str | None:
    """Why ``address`` may not be a webhook target, or None if it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local (or cloud metadata) address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private or not ip.is_global:
        return "a private or reserved address"
    return None


def host_reason(host: str) -> str | None:
    """Why ``host`` may not be a webhook target, judged without DNS: an address literal
    that is not global, or a ``localhost`` name (RFC 6761: always loopback). None when
    only resolving the name can tell."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        return unsafe_reason(host)
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return "a loopback name"
    return None


class URLGuard:
    """Checks one subscriber's URL before each attempt."""

    def __init__(self, url: str, allow_private: bool) -> None:
        self.url = url
        self.allow_private = allow_private
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsafeURL(f"subscriber URL {url!r} is not an http(s) URL with a host")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._checked_at: float | None = None

    async def check(self) -> None:
        if self.allow_private:
            return
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < CACHE_SECONDS:
            return
        try:
            addresses = [str(ipaddress.ip_address(self.host))]
        except ValueError:
            try:
                infos = await anyio.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise UnsafeURL(f"cannot resolve {self.host}: {exc}") from None
            addresses = sorted({str(info[4][0]) for info in infos})
        for address in addresses:
            reason = unsafe_reason(address)
            if reason:
                raise UnsafeURL(f"{self.host} resolves to {address}, {reason}; set "
                                "allow_private = true for this subscriber to allow it")
        self._checked_at = now
