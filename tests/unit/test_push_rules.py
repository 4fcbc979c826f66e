"""Pure rules of the push features: SSRF vetting of webhook targets (after resolution), the Standard Webhooks
signature against the spec's test vector, and how soul-events messages map to webhook events."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from functions.core import ssrf
from functions.services.webhook_delivery import outgoing, signed_headers
from schemas import names


def public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/", "http://169.254.169.254/computeMetadata/v1/", "http://10.0.0.1/",
    "http://localhost", "https://localhost/hook", "https://127.0.0.1/", "https://[::1]/", "https://0.0.0.0/",
    "https://[::ffff:10.0.0.1]/", "https://224.0.0.1/", "https://192.168.1.5/", "https://100.64.0.1/",
    "https://user:pw@example.com/", "ftp://example.com/", "http://example.com/", "file:///etc/passwd",
])
def test_unsafe_targets_are_refused_outside_local_mode(url):
    with pytest.raises(ssrf.UnsafeTarget):
        ssrf.vet(url, allow_loopback=False, resolver=public)


def test_a_name_resolving_to_any_private_address_is_refused():
    with pytest.raises(ssrf.UnsafeTarget, match="private"):
        ssrf.vet("https://hooks.example.com/x", allow_loopback=False, resolver=lambda h, p: ["10.0.0.7"])
    with pytest.raises(ssrf.UnsafeTarget, match="private"):  # one bad address among good ones is enough
        ssrf.vet("https://hooks.example.com/x", allow_loopback=False,
                 resolver=lambda h, p: ["93.184.216.34", "192.168.0.2"])
    with pytest.raises(ssrf.UnsafeTarget, match="link-local"):
        ssrf.vet("https://metadata.google.internal/", allow_loopback=False, resolver=lambda h, p: ["169.254.169.254"])


def test_a_public_target_is_connected_by_its_vetted_ip():
    target = ssrf.vet("https://hooks.example.com:8443/in?x=1", allow_loopback=False, resolver=public)
    assert (target.ip, target.host, target.port, target.path) == ("93.184.216.34", "hooks.example.com", 8443, "/in?x=1")


def test_local_mode_allows_http_to_loopback_only():
    receivers = frozenset({9000})
    assert ssrf.vet("http://127.0.0.1:9000/h", allow_loopback=True, loopback_ports=receivers).ip == "127.0.0.1"
    assert ssrf.vet("http://localhost:9000/h", allow_loopback=True, loopback_ports=receivers,
                    resolver=lambda h, p: ["127.0.0.1"]).port == 9000
    with pytest.raises(ssrf.UnsafeTarget):
        ssrf.vet("http://hooks.example.com/", allow_loopback=True, resolver=public)
    with pytest.raises(ssrf.UnsafeTarget):
        ssrf.vet("http://169.254.169.254/", allow_loopback=True)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9001/h", "http://localhost:4443/", "http://[::1]:8085/", "http://127.0.0.1/",
    "https://[::ffff:127.0.0.1]:8080/",
])
def test_local_mode_reaches_only_the_declared_receiver_ports(url):
    with pytest.raises(ssrf.UnsafeTarget, match="SOUL_WEBHOOK_LOOPBACK_PORTS"):
        ssrf.vet(url, allow_loopback=True, loopback_ports=frozenset({9000}), resolver=lambda h, p: ["127.0.0.1"])
    with pytest.raises(ssrf.UnsafeTarget, match="SOUL_WEBHOOK_LOOPBACK_PORTS"):
        ssrf.check_syntax(url, allow_loopback=True, loopback_ports=frozenset({9000}))
    with pytest.raises(ssrf.UnsafeTarget, match="SOUL_WEBHOOK_LOOPBACK_PORTS"):  # a name that resolves to loopback
        ssrf.vet("https://hooks.example.com:9001/", allow_loopback=True, loopback_ports=frozenset({9000}),
                 resolver=lambda h, p: ["127.0.0.1"])


@pytest.mark.parametrize("address", [
    "2002:7f00:1::", "2002:a00:1::1", "2002:5db8:d822::1",  # 6to4: loopback, private, even public IPv4 inside
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "64:ff9b:1::a00:1", "64:ff9b::7f00:1", "::7f00:1", "100::1", "2001:db8::1", "3fff::1", "5f00::1",
    "2001:20::1", "2620:4f:8000::1", "fec0::1", "fd00::1",
    "192.0.0.8", "192.0.0.170", "192.88.99.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "192.31.196.1",
    "192.52.193.1", "192.175.48.1", "100.64.0.1", "0.1.2.3", "240.0.0.1", "255.255.255.255",
])
def test_special_purpose_ranges_are_refused(address):
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(ssrf.UnsafeTarget):
        ssrf.vet(f"https://{literal}/h", allow_loopback=False)
    with pytest.raises(ssrf.UnsafeTarget):  # and behind a name
        ssrf.vet("https://hooks.example.com/h", allow_loopback=False, resolver=lambda h, p: [address])
    with pytest.raises(ssrf.UnsafeTarget):  # local mode allows loopback itself, never a tunnel to it
        ssrf.vet(f"https://{literal}/h", allow_loopback=True, loopback_ports=frozenset({443}))


def test_port_zero_is_not_taken_as_the_default_port():
    with pytest.raises(ssrf.UnsafeTarget, match="port 0"):
        ssrf.vet("https://hooks.example.com:0/", allow_loopback=False, resolver=public)


def test_signature_matches_the_standard_webhooks_test_vector():
    # The test vector of the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    when = datetime.fromtimestamp(1614265330, tz=timezone.utc)
    headers = signed_headers(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}', when)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-timestamp"] == "1614265330" and headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"


def _message(event_type: str, data: dict) -> dict:
    return {"attributes": {"ce-type": event_type}, "data": base64.b64encode(json.dumps(data).encode()).decode()}


def test_events_map_to_webhook_events_and_stable_delivery_keys():
    progress = _message(names.EVENT_JOB_PROGRESS, {"job_id": "img-1", "type": "image", "seq": 3, "progress": 0.5,
                                                    "stage": "denoise", "eta_seconds": 1.5,
                                                    "occurred_at": "2026-11-25T20:00:00Z"})
    out = outgoing(progress, lambda job_id, policy=None: None)
    assert out is not None and out.key == "progress-3" and out.event == "progress"
    assert json.loads(out.body)["data"] == {"task_id": "img-1", "type": "image", "seq": 3, "progress": 0.5,
                                            "stage": "denoise", "eta_seconds": 1.5,
                                            "occurred_at": "2026-11-25T20:00:00Z"}
    done = outgoing(_message(names.EVENT_JOB_SUCCEEDED, {"job_id": "img-1"}), lambda job_id, policy=None: {"task_id": job_id})
    assert done is not None and done.key == "completed" and json.loads(done.body)["type"] == "soul.job.succeeded"
    assert outgoing(_message(names.EVENT_JOB_SUCCEEDED, {"job_id": "gone"}), lambda job_id, policy=None: None) is None
    assert outgoing(_message(names.EVENT_REQUEST_ACCEPTED, {"request_id": "r"}), lambda job_id, policy=None: None) is None
    assert outgoing({"attributes": {"ce-type": names.EVENT_JOB_STARTED}, "data": "%%"}, lambda j: None) is None


def test_a_name_that_does_not_resolve_now_is_a_lookup_failure_not_a_refusal(monkeypatch):
    import socket

    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(ssrf.LookupFailed):
        ssrf.vet("https://hooks.example.com/", allow_loopback=False)
