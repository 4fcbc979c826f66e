"""Failed authentication, rate limited per source: a caller that sends wrong API keys gets a burst of tries, then
one every few seconds; past that every request it sends with a key is a 429 with `Retry-After`, before any key is
compared (a correct guess must look the same as a wrong one while the source is held back).

In memory, per instance, off Firestore's hot path: a guess costs no document read or write, and the table is
bounded (least recently failed sources are forgotten first). The source is the peer address, or with
`SOUL_TRUSTED_PROXY_HOPS=n` the address the n-th trusted proxy saw (the n-th entry from the right of
`X-Forwarded-For`: Cloud Run's front end appends the client's address there); IPv6 sources count per /64, the
block one subscriber is given. The edge (Cloud Armor) is where floods of guesses from many addresses stop."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping


def source_of(remote_addr: str | None, headers: Mapping[str, str], trusted_hops: int) -> str:
    """The address failures are counted under."""
    address = remote_addr or ""
    if trusted_hops > 0:
        hops = [h.strip() for h in headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        if len(hops) >= trusted_hops:
            address = hops[-trusted_hops]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else parsed)


class FailedAuthLimiter:
    """GCRA per source (one number each: when its allowance is theoretically back): `burst` failures at once,
    then `per_minute`. At most `max_sources` remembered."""

    def __init__(self, burst: int, per_minute: float, max_sources: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self._interval = 60.0 / per_minute
        self._tolerance = burst * self._interval
        self._max = max_sources
        self._clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, source: str) -> float:
        """Seconds until this source may try a key again (0: now)."""
        with self._lock:
            tat = self._tat.get(source)
        if tat is None:
            return 0.0
        now = self._clock()
        return max(0.0, max(tat, now) + self._interval - now - self._tolerance)

    def failed(self, source: str) -> None:
        now = self._clock()
        with self._lock:
            self._tat[source] = max(self._tat.get(source, now), now) + self._interval
            self._tat.move_to_end(source)
            while len(self._tat) > self._max:
                self._tat.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tat)
