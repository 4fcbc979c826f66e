"""Signing that scales: signBlob-equivalent calls counted with a signer that takes as long as IAM does
(functions/adapters/signing.py): a URL is reused within its window, the cache is bounded, listings sign in
parallel, and the runtime's credentials are built once and refreshed only when expired."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import google.auth.credentials
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from functions.adapters.signing import IamSigning, UrlSigner

IAM_LATENCY_S = 0.03  # a signBlob round trip is tens of milliseconds


def key_credentials() -> service_account.Credentials:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return service_account.Credentials.from_service_account_info({
        "type": "service_account", "client_email": "signer@soul-test.iam.gserviceaccount.com", "private_key": pem,
        "private_key_id": "k1", "token_uri": "https://oauth2.googleapis.com/token", "project_id": "soul-test"})


class SlowSigner(google.auth.credentials.Signing):
    """Signs like IAM signBlob: one remote call per signature, each taking IAM_LATENCY_S; counts them."""

    def __init__(self, inner: service_account.Credentials):
        self._inner = inner
        self._lock = threading.Lock()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    @property
    def signer(self):
        return self._inner.signer

    @property
    def signer_email(self):
        return self._inner.signer_email

    def sign_bytes(self, message: bytes) -> bytes:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(IAM_LATENCY_S)
            return self._inner.sign_bytes(message)
        finally:
            with self._lock:
                self.in_flight -= 1


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(ttl_s: int = 3600, **kwargs) -> tuple[UrlSigner, SlowSigner, Clock]:
    client = storage.Client(project="soul-test", credentials=AnonymousCredentials())
    slow, clock = SlowSigner(key_credentials()), Clock()
    return UrlSigner(client, "bucket", ttl=timedelta(seconds=ttl_s), credentials=slow, clock=clock, **kwargs), slow, clock


def test_a_url_is_reused_for_half_its_lifetime_then_signed_again():
    signer, slow, clock = make(ttl_s=3600)
    first = signer.sign("images/a.png")
    clock.now += 1799
    assert signer.sign("images/a.png") == first and slow.calls == 1
    clock.now += 1
    again = signer.sign("images/a.png")
    assert slow.calls == 2 and again.expires_at > first.expires_at
    assert signer.sign("images/b.png").url != again.url and slow.calls == 3


def test_the_cache_is_bounded_least_recently_used_first():
    signer, slow, _ = make(cache_size=2)
    for name in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        signer.sign(name)
    assert slow.calls == 3
    signer.sign("a")
    assert slow.calls == 3
    signer.sign("b")
    assert slow.calls == 4


def test_no_reuse_when_the_window_is_zero():
    signer, slow, _ = make(reuse_fraction=0.0)
    signer.sign("a")
    signer.sign("a")
    assert slow.calls == 2


def test_a_listing_signs_what_it_lacks_in_parallel_and_in_order():
    signer, slow, _ = make(parallelism=8)
    names = [f"images/{i}.png" for i in range(20)]
    signer.sign(names[0])
    urls = signer.sign_many(names)
    assert slow.calls == 20  # one cached, nineteen signed
    assert slow.most_in_flight > 1
    assert [u.url.split("?")[0].rsplit("/", 1)[-1] for u in urls] == [f"{i}.png" for i in range(20)]
    assert signer.sign_many(names) == urls and slow.calls == 20


class FakeRuntimeCredentials:
    def __init__(self):
        self.valid = False
        self.token = None
        self.refreshed = 0
        self.service_account_email = "runtime@soul-test.iam.gserviceaccount.com"

    def refresh(self, request) -> None:
        self.refreshed += 1
        self.valid = True


def test_runtime_credentials_are_made_once_and_refreshed_only_when_expired():
    made: list[FakeRuntimeCredentials] = []

    def default():
        made.append(FakeRuntimeCredentials())
        return made[-1], "soul-test"

    iam = IamSigning(default=default)
    for _ in range(5):
        assert iam.signer_email == "runtime@soul-test.iam.gserviceaccount.com"
        iam.signer  # noqa: B018 - what every signature builds
    assert len(made) == 1 and made[0].refreshed == 1
    made[0].valid = False  # the token expired
    iam.signer  # noqa: B018
    assert len(made) == 1 and made[0].refreshed == 2 and iam.refreshes == 2
