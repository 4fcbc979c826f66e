"""Vetting webhook targets against server-side request forgery. A caller names a URL; the functions then POST
to it from inside the project's network, so a URL must never reach the metadata server, a private or
link-local address, or (outside local mode) the host itself.

The check runs after DNS resolution and returns the vetted IP, which the sender connects to (with the hostname
only in Host/SNI), so a name that resolves to a public address at the check and a private one a moment later
(DNS rebinding) cannot slip through. Every address a name resolves to must pass, not just the first. Pure
apart from the resolver, which is injected."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Names that always mean "this host": refused before any lookup outside local mode.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class UnsafeTarget(ValueError):
    """The URL may not be called: the message says why, for the caller and the delivery record."""


class LookupFailed(OSError):
    """The name did not resolve now; unlike an unsafe target, worth another try."""


@dataclass(frozen=True)
class Target:
    """A vetted URL: connect to `ip`, send `host` in Host and SNI."""

    scheme: str
    host: str
    port: int
    ip: str
    path: str  # path and query, as sent in the request line


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        raise UnsafeTarget(f"the host '{host}' is not a valid name") from exc
    except socket.gaierror as exc:
        raise LookupFailed(f"the host '{host}' does not resolve: {exc}") from exc
    return [str(info[4][0]) for info in infos]


def check_syntax(url: str, *, allow_loopback: bool) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a URL that may be a webhook target, before any lookup."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"the URL is not well-formed: {exc}") from None
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme not in ("https", "http"):
        raise UnsafeTarget("the URL must use https")
    if not host:
        raise UnsafeTarget("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("the URL may not carry credentials")
    if host in _LOCAL_NAMES and not allow_loopback:
        raise UnsafeTarget(f"'{host}' is this host; webhooks go to public addresses")
    literal = _literal(host)
    if literal is not None:
        _check_address(literal, allow_loopback=allow_loopback)
    if parts.scheme == "http" and not (allow_loopback and (host in _LOCAL_NAMES or (literal and literal.is_loopback))):
        raise UnsafeTarget("the URL must use https (http only to loopback in local mode)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path


def vet(url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver) -> Target:
    """The target to connect to, or UnsafeTarget. `allow_loopback` is local mode: loopback is the developer's
    machine then, and plain http is allowed to it (and only to it)."""
    scheme, host, port, path = check_syntax(url, allow_loopback=allow_loopback)
    literal = _literal(host)
    addresses = [literal] if literal is not None else [_parse(a) for a in resolver(host, port)]
    if not addresses:
        raise UnsafeTarget(f"the host '{host}' does not resolve")
    for address in addresses:
        _check_address(address, allow_loopback=allow_loopback)
    if scheme == "http" and not all(a.is_loopback for a in addresses):
        raise UnsafeTarget("the URL must use https (http only to loopback in local mode)")
    return Target(scheme=scheme, host=host, port=port, ip=str(addresses[0]), path=path)


def _check_address(address: IPAddress, *, allow_loopback: bool) -> None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        if allow_loopback:
            return
        raise UnsafeTarget(f"{address} is a loopback address")
    for flag, what in (("is_link_local", "link-local (metadata server)"), ("is_private", "private"),
                       ("is_multicast", "multicast"), ("is_reserved", "reserved"), ("is_unspecified", "unspecified")):
        if getattr(address, flag):
            raise UnsafeTarget(f"{address} is a {what} address")
    if not address.is_global:
        raise UnsafeTarget(f"{address} is not a public address")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _parse(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
