"""`/image`, `/tasks`, `/healthz`, `/ready` of the real api function against the Firestore, Pub/Sub and GCS
emulators: dedup under concurrency, per-user delivery, signed URLs and the structured error shape."""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from google.cloud import firestore

from schemas import names
from schemas.ids import JOB_ID_PATTERN
from tests.support import pull_all

PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}


def jobs_in_firestore() -> list[dict]:
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    return [snap.to_dict() for snap in db.collection(names.JOBS).stream()]


def test_first_request_queues_one_job_and_one_message(api, subscriber):
    response = api.get("/image", query_string=PENGUIN)
    assert response.status_code == 202, response.json
    body = response.json
    assert body["status"] == "queued"
    assert re.fullmatch(JOB_ID_PATTERN, body["task_id"])
    assert body["status_url"].endswith(f"/tasks/{body['task_id']}")
    assert body["estimated_seconds"] > 0
    assert len(body["pk_id"]) == 32
    [job] = jobs_in_firestore()
    assert job["job_id"] == body["task_id"] and job["status"] == "queued" and job["published_at"]
    assert job["request"]["seed"] >= 0 and job["request"]["prompt"].count("penguin") == 1
    [message] = pull_all(subscriber, names.SUB_RUNNER)
    assert json.loads(message.message.data) == {"schema_version": 1, "job_id": body["task_id"], "type": "image"}
    assert message.message.attributes["job_id"] == body["task_id"]

    task = api.get(body["status_url"]).json
    assert task["task_id"] == body["task_id"] and task["status"] == "queued" and task["progress"] == 0.0


def test_twenty_concurrent_identical_requests_make_one_job(api, subscriber):
    cues = [" Penguin! ", "penguin", "PENGUIN", "pen\u200bguin", "penguin."] * 4
    users = [f"user{i}" for i in range(20)]

    def ask(i: int):
        return api.get("/image", query_string={"soul_id": "nova", "cue": cues[i], "user_id": users[i]})

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(ask, range(20)))
    assert {r.status_code for r in responses} == {202}
    task_ids = {r.json["task_id"] for r in responses}
    assert len(task_ids) == 1
    assert len(jobs_in_firestore()) == 1
    assert len(pull_all(subscriber, names.SUB_RUNNER)) == 1


def test_post_image_is_the_same_as_get(api, subscriber):
    queued = api.post("/image", json=PENGUIN)
    assert queued.status_code == 202
    again = api.get("/image", query_string={**PENGUIN, "user_id": "someone-else", "cue": "Penguin!"})
    assert again.json["task_id"] == queued.json["task_id"]
    assert len(pull_all(subscriber, names.SUB_RUNNER)) == 1


@pytest.mark.parametrize(
    ("query", "status", "code", "field"),
    [
        ({**PENGUIN, "soul_id": "nobody"}, 404, "not_found", "soul_id"),
        ({**PENGUIN, "cue": "!!!"}, 400, "invalid_argument", "cue"),
        ({**PENGUIN, "cue": "x" * 201}, 400, "invalid_argument", "cue"),
        ({"soul_id": "nova", "cue": "penguin"}, 400, "invalid_argument", "user_id"),
        ({**PENGUIN, "soul_id": "../etc/passwd"}, 400, "invalid_argument", "soul_id"),
        ({**PENGUIN, "user_id": "a b"}, 400, "invalid_argument", "user_id"),
    ],
)
def test_bad_requests_get_the_structured_error(api, query, status, code, field):
    response = api.get("/image", query_string=query)
    assert response.status_code == status
    assert response.json["error"]["code"] == code
    assert response.json["error"]["field"] == field
    assert response.json["error"]["message"]
    assert jobs_in_firestore() == []


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "not json", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": "[1, 2]", "content_type": "application/json"}, 400, "invalid_argument"),
        ({"data": "{", "content_type": "application/json"}, 400, "invalid_argument"),
        ({"json": {**PENGUIN, "extra": 1}}, 400, "invalid_argument"),
        ({"data": json.dumps({**PENGUIN, "cue": "y" * 70000}), "content_type": "application/json"}, 413,
         "payload_too_large"),
    ],
)
def test_bad_bodies(api, kwargs, status, code):
    response = api.post("/image", **kwargs)
    assert response.status_code == status
    assert response.json["error"]["code"] == code


def test_unknown_paths_and_methods(api):
    assert api.get("/nope").status_code == 404
    assert api.get("/nope").json["error"]["code"] == "not_found"
    response = api.delete("/image")
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"
    missing = api.get("/tasks/img-" + "0" * 32 + "-0")
    assert missing.status_code == 404 and missing.json["error"]["field"] == "task_id"


def test_health_and_readiness(api):
    assert api.get("/healthz").json == {"status": "ok", "checks": {}}
    ready = api.get("/ready")
    assert ready.status_code == 200, ready.json
    assert ready.json["checks"] == {"firestore": "ok", "pubsub": "ok", "gcs": "ok"}


def test_signed_url_is_v4_signed_by_the_service_account_and_expires(emulator_stack):
    """fake-gcs-server accepts any signature, so the signature is verified here on the URL itself."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from functions.adapters.signing import UrlSigner

    env = emulator_stack.env()
    client = storage.Client(project=env["GCS_PROJECT_ID"], credentials=AnonymousCredentials())
    bucket = client.bucket(env["GCS_BUCKET_NAME"])
    bucket.blob("images/nova/test/signed.png").upload_from_string(b"\x89PNG fake", if_generation_match=None)
    signer = UrlSigner(client, env["GCS_BUCKET_NAME"], ttl=timedelta(minutes=15),
                       key_file=env["SOUL_SIGNING_KEY_FILE"], endpoint=env["SOUL_SIGNED_URL_ENDPOINT"])
    before = datetime.now(timezone.utc)
    signed = signer.sign("images/nova/test/signed.png")
    parts = urlsplit(signed.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    key = json.load(open(env["SOUL_SIGNING_KEY_FILE"]))

    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == "900"
    assert query["X-Goog-SignedHeaders"] == "host"
    assert query["X-Goog-Credential"].startswith(key["client_email"] + "/")
    signed_at = datetime.strptime(query["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert abs((signed_at - before).total_seconds()) < 5
    assert abs((signed.expires_at - signed_at).total_seconds() - 900) < 5

    # Rebuild the V4 canonical request and check the RSA signature with the key's public half.
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    canonical_query = "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(query.items()) if k != "X-Goog-Signature"
    )
    canonical_request = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    string_to_sign = "\n".join(
        ["GOOG4-RSA-SHA256", query["X-Goog-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    public_key = serialization.load_pem_private_key(key["private_key"].encode(), password=None).public_key()
    public_key.verify(
        bytes.fromhex(query["X-Goog-Signature"]), string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    # The same signature does not cover a longer lifetime.
    stretched = canonical_request.replace("X-Goog-Expires=900", "X-Goog-Expires=604800")
    tampered = string_to_sign.replace(
        hashlib.sha256(canonical_request.encode()).hexdigest(), hashlib.sha256(stretched.encode()).hexdigest()
    )
    with pytest.raises(InvalidSignature):
        public_key.verify(
            bytes.fromhex(query["X-Goog-Signature"]), tampered.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    assert requests.get(signed.url, timeout=10).content == b"\x89PNG fake"


def test_readiness_names_the_backend_that_is_down(emulator_stack, monkeypatch):
    """Firestore pointed at a port nothing listens on: /ready is 503 and says which backend, /healthz stays 200."""
    import socket

    import flask

    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{dead_port}")
    monkeypatch.setenv("SOUL_BACKEND_TIMEOUT_S", "2")
    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask("broken-firestore")
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request))
    client = app.test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json["status"] == "unavailable"
    assert ready.json["checks"]["firestore"].startswith("unavailable")
    assert ready.json["checks"]["pubsub"] == "ok" and ready.json["checks"]["gcs"] == "ok"
    assert client.get("/healthz").status_code == 200
    # Work that needs the broken backend answers 503 in the error shape, not a stack trace.
    down = client.get("/image", query_string=PENGUIN)
    assert down.status_code == 503 and down.json["error"]["code"] == "unavailable"


def test_readiness_names_a_missing_topic_and_bucket(emulator_stack, monkeypatch):
    """A project whose topics and bucket do not exist: /ready is 503 naming pubsub and gcs (Firestore, which has
    no per-project provisioning, stays ok). The probes only read (topic metadata, a one-object listing), the
    least the functions' service account is granted on GCP."""
    import flask

    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    monkeypatch.setenv("GCS_PROJECT_ID", "soul-unprovisioned")
    monkeypatch.setenv("GCS_BUCKET_NAME", "soul-unprovisioned-media")
    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask("unprovisioned")
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request))
    ready = app.test_client().get("/ready")
    assert ready.status_code == 503
    assert ready.json["checks"] == {
        "firestore": "ok",
        "pubsub": "unavailable: NotFound",
        "gcs": "unavailable: NotFound",
    }
