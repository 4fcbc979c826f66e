"""V4 signed URLs for private GCS objects: consumers download results without bucket access.

Two ways to sign, chosen by configuration: a service-account key file (locally, the key `emulators/` generates),
or, on GCP where functions hold no private key, IAM signBlob with the runtime's credentials (`IamSigning`).

What signing costs on GCP, and what this module does about it: every keyless signature is one IAM `signBlob`
call (tens of ms, quota 60,000 per minute per project). So the runtime's credentials are built once per process
and refreshed only when they expired; a URL signed for an object is reused by this instance for `reuse_fraction`
of its lifetime (the caller still gets at least the rest of it), in a bounded LRU cache; and a listing signs the
URLs it has no fresh one for in parallel (`sign_many`), not one after another."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import google.auth
import google.auth.credentials
import google.auth.iam
import google.auth.transport.requests
from google.cloud import storage
from google.oauth2 import service_account

_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: datetime


class IamSigning(google.auth.credentials.Signing):
    """Signing credentials for a runtime without a private key: one IAM signBlob call per signature. The
    runtime's default credentials are made once (lazily, on the first signature) and refreshed only when they
    are no longer valid, under a lock, so concurrent signatures never refresh twice."""

    def __init__(self, service_account_email: str | None = None,
                 default: Callable[[], tuple] = lambda: google.auth.default(scopes=_SCOPES)):
        self._email = service_account_email
        self._default = default
        self._lock = threading.Lock()
        self._credentials = None
        self._request = google.auth.transport.requests.Request()
        self.refreshes = 0

    def _fresh(self):
        with self._lock:
            if self._credentials is None:
                self._credentials, _ = self._default()
            if not self._credentials.valid:
                self._credentials.refresh(self._request)
                self.refreshes += 1
            if self._email is None:
                self._email = getattr(self._credentials, "service_account_email", None)
            return self._credentials

    @property
    def signer_email(self) -> str | None:
        if self._email is None:
            self._fresh()
        return self._email

    @property
    def signer(self):
        credentials = self._fresh()
        return google.auth.iam.Signer(self._request, credentials, self._email)

    def sign_bytes(self, message: bytes) -> bytes:
        return self.signer.sign(message)


class UrlSigner:
    def __init__(
        self,
        client: storage.Client,
        bucket: str,
        *,
        ttl: timedelta,
        key_file: str | None = None,
        service_account_email: str | None = None,
        endpoint: str | None = None,
        credentials: google.auth.credentials.Signing | None = None,
        reuse_fraction: float = 0.5,
        cache_size: int = 10_000,
        parallelism: int = 16,
        clock: Callable[[], float] = time.time,
    ):
        if not 0.0 <= reuse_fraction < 1.0:
            raise ValueError(f"reuse_fraction is a fraction of the URL lifetime in [0, 1), got {reuse_fraction}")
        self._bucket = client.bucket(bucket)
        self._ttl = ttl
        self._endpoint = endpoint
        if credentials is None:
            credentials = (service_account.Credentials.from_service_account_file(key_file) if key_file
                           else IamSigning(service_account_email))
        self._credentials = credentials
        self._reuse = ttl * reuse_fraction
        self._cache_size = max(0, cache_size)
        self._cache: OrderedDict[str, tuple[float, SignedUrl]] = OrderedDict()  # object -> (signed at, url)
        self._lock = threading.Lock()
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallelism), thread_name_prefix="sign")

    def sign(self, object_name: str, *, now: datetime | None = None) -> SignedUrl:
        """A URL for the object, valid at least `ttl - reuse window` from now (a fresh one when none is cached)."""
        if now is None:
            cached = self._cached(object_name)
            if cached is not None:
                return cached
        return self._sign(object_name, now)

    def sign_many(self, object_names: Sequence[str]) -> list[SignedUrl]:
        """URLs for the objects in order; the ones not cached are signed in parallel."""
        found = {name: self._cached(name) for name in dict.fromkeys(object_names)}
        missing = [name for name, url in found.items() if url is None]
        if len(missing) == 1:
            found[missing[0]] = self._sign(missing[0], None)
        elif missing:
            for name, url in zip(missing, self._pool.map(lambda n: self._sign(n, None), missing)):
                found[name] = url
        return [found[name] for name in object_names]

    def _cached(self, object_name: str) -> SignedUrl | None:
        with self._lock:
            entry = self._cache.get(object_name)
            if entry is None:
                return None
            if self._clock() - entry[0] >= self._reuse.total_seconds():
                del self._cache[object_name]
                return None
            self._cache.move_to_end(object_name)
            return entry[1]

    def _sign(self, object_name: str, now: datetime | None) -> SignedUrl:
        signed_at = self._clock()
        issued = now or datetime.fromtimestamp(signed_at, timezone.utc)
        kwargs: dict = {"version": "v4", "method": "GET", "expiration": self._ttl, "credentials": self._credentials}
        if self._endpoint:
            kwargs["api_access_endpoint"] = self._endpoint
        url = SignedUrl(url=self._bucket.blob(object_name).generate_signed_url(**kwargs),
                        expires_at=issued + self._ttl)
        if now is None and self._cache_size and self._reuse > timedelta(0):
            with self._lock:
                self._cache[object_name] = (signed_at, url)
                self._cache.move_to_end(object_name)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return url
