"""Per-tenant request rate, enforced in memory per instance (issue 17): no Firestore call on the request path in
the steady state.

Each instance leases tokens from the tenant's shared token bucket (`tenants/{t}/rate/{shard}`, GCRA, updated
conditionally: `functions/adapters/firestore/quotas.py`) and spends them locally. A lease holds what this instance
expects to spend within `lease_s` at its observed rate (one token for a slow tenant, so a quiet instance hoards
nothing; doubled, like a slow start, each time a lease ran dry before it ended), expires after `lease_s`, and
is topped up by a background refill when half of it is spent; only an
instance that ran dry waits for a lease (one lease in flight per tenant: the others wait for it), and a refused
lease is remembered, so a tenant over its limit costs the store little more. The tenant's rate and burst hold summed over every instance because
every token comes out of the shared bucket; a token an instance leased and did not spend is lost (at most one
lease per instance per `lease_s`). An instance refused a lease asks again only after `lease_s / 4` or the
`Retry-After`, whichever is later, so a tenant far over its limit costs a few bucket writes per second per
instance, not one per request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from functions.core.quota_policy import lease_size

log = structlog.get_logger(__name__)

# (tenant, tokens wanted) -> (tokens granted, seconds until one more fits when none was)
Lease = Callable[[str, int], tuple[int, float]]

RATE_HALF_LIFE_S = 2.0


@dataclass
class _Local:
    tokens: int = 0
    expires: float = 0.0
    denied_until: float = 0.0
    want: int = 1  # the next lease's size: doubles when a lease ran dry early, halves when one expired unspent
    rate: float = 0.0  # requests/s seen by this instance (exponentially weighted)
    last: float | None = None
    refilling: bool = False
    leasing: bool = False  # a synchronous lease is in flight: other requests of this tenant wait for it
    refill_after: float = 0.0  # a refill that found the bucket (nearly) empty is not tried again before this


class LocalRateLimiter:
    def __init__(self, lease: Lease, *, lease_s: float = 2.0, max_lease: int = 1000, clock=time.monotonic,
                 max_wait_s: float = 5.0):
        self._lease = lease
        self._lease_s = lease_s
        self._max_lease = max_lease
        self._clock = clock
        self._max_wait = max_wait_s
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)
        self._tenants: dict[str, _Local] = {}

    def allow(self, tenant: str, cap: int) -> float | None:
        """Spend one token of `tenant`'s; None when allowed, else the seconds until one is due. `cap`: the most
        tokens one lease may take (the bucket's burst)."""
        now = self._clock()
        with self._lock:
            local = self._tenants.setdefault(tenant, _Local())
            self._observe(local, now)
            waited_until = now + self._max_wait
            while True:
                if local.tokens > 0 and local.expires > now:
                    local.tokens -= 1
                    self._maybe_refill(tenant, local, cap, now)
                    return None
                if local.denied_until > now:
                    return local.denied_until - now
                if local.refill_after > now:  # the bucket was nearly empty a moment ago: the tenant is at its limit
                    return local.refill_after - now
                if not (local.leasing or local.refilling) or now >= waited_until:
                    break
                # One lease at a time per tenant and instance: a burst of requests that found the instance dry
                # waits for the lease in flight instead of all contending for the shared bucket.
                self._landed.wait(timeout=waited_until - now)
                now = self._clock()
            cap = min(cap, self._max_lease)
            if local.expires > now:  # ran dry before the lease ended: lease more next time
                local.want = min(cap, local.want * 2)
            elif local.expires:  # the last lease expired: shrink towards the observed need
                local.want = max(1, min(local.want // 2, lease_size(local.rate, self._lease_s, cap)))
            want = max(local.want, lease_size(local.rate, self._lease_s, cap))
            local.leasing = True
        granted, retry_after, failed = 0, 1.0, True
        try:
            granted, retry_after = self._lease(tenant, want)  # ran dry: this request waits for the lease
            failed = False
        finally:
            with self._lock:
                local.leasing = False
                now = self._clock()
                if granted > 0:
                    local.tokens = (local.tokens if local.expires > now else 0) + granted - 1
                    local.expires = now + self._lease_s
                    if granted < want // 2:  # nearly empty: spend these, then let it refill before asking again
                        local.refill_after = now + self._lease_s / 4
                elif not failed:  # over the limit: ask the shared bucket again only after a while (it refills)
                    local.denied_until = now + max(retry_after, self._lease_s / 4)
                self._landed.notify_all()
        return None if granted > 0 else retry_after

    def _observe(self, local: _Local, now: float) -> None:
        if local.last is not None:
            gap = max(now - local.last, 1e-3)
            weight = 1 - 0.5 ** (gap / RATE_HALF_LIFE_S)
            local.rate += weight * (1.0 / gap - local.rate)
        local.last = now

    def _maybe_refill(self, tenant: str, local: _Local, cap: int, now: float) -> None:
        want = max(local.want, lease_size(local.rate, self._lease_s, min(cap, self._max_lease)))
        if local.refilling or want <= 1 or local.tokens > want // 2 or now < local.refill_after:
            return
        local.refilling = True
        threading.Thread(target=self._refill, args=(tenant, local, want), name="rate-refill", daemon=True).start()

    def _refill(self, tenant: str, local: _Local, want: int) -> None:
        try:
            granted, _ = self._lease(tenant, want)
        except Exception:  # noqa: BLE001 - the next request that runs dry leases synchronously
            log.warning("rate_refill_failed", tenant=tenant, exc_info=True)
            granted = 0
        with self._lock:
            local.refilling = False
            now = self._clock()
            if granted > 0:
                local.tokens = (local.tokens if local.expires > now else 0) + granted
                local.expires = now + self._lease_s
            if granted < want // 2:  # the bucket is nearly empty: let it refill before asking again
                local.refill_after = now + self._lease_s / 4
            self._landed.notify_all()
