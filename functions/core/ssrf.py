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
# The IANA special-purpose address registries (IPv4 and IPv6), every entry refused: Python 3.11's `is_global`
# misses several (6to4 2002::/16, NAT64 64:ff9b:1::/48, 192.0.0.0/24, SRv6 5f00::/16, documentation 3fff::/20),
# and the ones the registry marks globally reachable are anycast infrastructure, never a receiver. Tunnelling
# prefixes (6to4, Teredo, NAT64, IPv4-mapped/compatible) carry an IPv4 address a relay would deliver to.
_SPECIAL_PURPOSE: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), what) for net, what in (
        ("0.0.0.0/8", "'this network'"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "shared (carrier NAT)"),
        ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local (metadata server)"),
        ("172.16.0.0/12", "private"), ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"), ("192.31.196.0/24", "AS112 anycast"), ("192.52.193.0/24", "AMT anycast"),
        ("192.88.99.0/24", "6to4 relay anycast"), ("192.168.0.0/16", "private"),
        ("192.175.48.0/24", "AS112 anycast"), ("198.18.0.0/15", "benchmarking"), ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
        ("::/127", "unspecified or loopback"), ("::ffff:0:0/96", "IPv4-mapped"), ("::/96", "IPv4-compatible"),
        ("64:ff9b::/96", "NAT64"), ("64:ff9b:1::/48", "local-use NAT64"), ("100::/64", "discard-only"),
        ("100:0:0:1::/64", "dummy"), ("2001::/32", "Teredo"), ("2001::/23", "IETF protocol assignment"),
        ("2001:db8::/32", "documentation"), ("2002::/16", "6to4"), ("2620:4f:8000::/48", "AS112 anycast"),
        ("3fff::/20", "documentation"), ("5f00::/16", "segment routing (SRv6)"), ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"), ("fec0::/10", "site-local"), ("ff00::/8", "multicast"),
    )
)


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


def check_syntax(url: str, *, allow_loopback: bool, loopback_ports: frozenset[int] = frozenset()
                 ) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a URL that may be a webhook target, before any lookup. In local mode a
    loopback target must use one of `loopback_ports` (the ports the stack's own test receivers declare): the
    emulators and the functions themselves listen on loopback too, and a webhook must never write into them."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"the URL is not well-formed: {exc}") from None
    if port == 0:
        raise UnsafeTarget("port 0 is not a port a receiver listens on")
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
    port = port or (443 if parts.scheme == "https" else 80)
    if allow_loopback and (host in _LOCAL_NAMES or (literal is not None and _unmapped(literal).is_loopback)):
        _check_loopback_port(port, loopback_ports)
    return parts.scheme, host, port, path


def _check_loopback_port(port: int, loopback_ports: frozenset[int]) -> None:
    if port not in loopback_ports:
        declared = ", ".join(str(p) for p in sorted(loopback_ports)) or "none"
        raise UnsafeTarget(f"loopback port {port} is not a declared local receiver port "
                           f"(SOUL_WEBHOOK_LOOPBACK_PORTS: {declared})")


def vet(url: str, *, allow_loopback: bool, loopback_ports: frozenset[int] = frozenset(),
        resolver: Resolver = system_resolver) -> Target:
    """The target to connect to, or UnsafeTarget. `allow_loopback` is local mode: loopback is the developer's
    machine then, and plain http is allowed to it (and only to it), on the `loopback_ports` declared."""
    scheme, host, port, path = check_syntax(url, allow_loopback=allow_loopback, loopback_ports=loopback_ports)
    literal = _literal(host)
    addresses = [literal] if literal is not None else [_parse(a) for a in resolver(host, port)]
    if not addresses:
        raise UnsafeTarget(f"the host '{host}' does not resolve")
    for address in addresses:
        _check_address(address, allow_loopback=allow_loopback)
    if any(_unmapped(a).is_loopback for a in addresses):
        _check_loopback_port(port, loopback_ports)
    if scheme == "http" and not all(a.is_loopback for a in addresses):
        raise UnsafeTarget("the URL must use https (http only to loopback in local mode)")
    return Target(scheme=scheme, host=host, port=port, ip=str(addresses[0]), path=path)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _check_address(address: IPAddress, *, allow_loopback: bool) -> None:
    address = _unmapped(address)
    if address.is_loopback:
        if allow_loopback:
            return
        raise UnsafeTarget(f"{address} is a loopback address")
    for network, what in _SPECIAL_PURPOSE:
        if address.version == network.version and address in network:
            raise UnsafeTarget(f"{address} is a {what} address (special-purpose {network})")
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
