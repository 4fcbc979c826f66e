"""Webhooks against the emulators with a local receiver: a requester's webhook becomes a record under the job,
deliveries are signed per Standard Webhooks (verified with the `standardwebhooks` library), retried per target
on 500 until success or the bound, every attempt listed by GET /tasks/{id} for its own tenant only, and unsafe
targets are refused (at the request, or after DNS resolution at delivery) without sending a byte to them."""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.cloud import firestore
from standardwebhooks import Webhook

from functions.core.tenants import INGEST_TENANT
from functions.services.webhook_delivery import handle_event
from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobEvent, JobStatus, JobType
from schemas.push import JobStarted
from tests.support import api_client_with, pull_all

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()  # alpha's own
DEFAULT_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()  # the default tenant's (ingest)
BETA_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
ALPHA, BETA = {"X-API-Key": "alpha-key"}, {"X-API-Key": "beta-key"}
PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}
POOL_SIZE = 8


class Receiver:
    """A local webhook endpoint answering a scripted list of statuses (the last one repeats), or hanging (accepts
    and never answers), or dripping its status line one byte at a time. Receivers are made once per session on
    fixed ports, which the app under test declares as its local receivers (SOUL_WEBHOOK_LOOPBACK_PORTS)."""

    def __init__(self):
        self.statuses: list[int] = [200]
        self.calls: list[tuple[dict, bytes]] = []
        self.arrived: list[float] = []  # time.monotonic() of each request
        self.mode = "answer"
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append((dict(self.headers), body))
                outer.arrived.append(time.monotonic())
                if outer.mode == "hang":
                    outer.release.wait(30)
                    return
                if outer.mode == "drip":
                    for byte in b"HTTP/1.1 200 OK\r\n":
                        if outer.release.wait(0.4):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, statuses: list[int], mode: str = "answer") -> Receiver:
        self.release.set()  # free any handler still hanging from an earlier test
        self.release = threading.Event()
        self.statuses, self.calls, self.arrived, self.mode = list(statuses), [], [], mode
        return self

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def receiver_pool():
    pool = [Receiver() for _ in range(POOL_SIZE)]
    yield pool
    for receiver in pool:
        receiver.close()


@pytest.fixture
def receivers(receiver_pool):
    free = list(receiver_pool)

    def make(statuses: list[int], mode: str = "answer") -> Receiver:
        return free.pop(0).reset(statuses, mode)

    yield make
    for receiver in receiver_pool:
        receiver.release.set()


def _keys_file(**secrets_by_tenant: str | None) -> str:
    """Two client tenants, so one tenant's deliveries stay hidden from the other, each with its own secret."""
    secrets_by_tenant = secrets_by_tenant or {"alpha": SECRET, "beta": BETA_SECRET}
    handle, path = tempfile.mkstemp(prefix="soul-keys-", suffix=".json")
    entries = []
    for tenant in ("alpha", "beta"):
        entry = {"tenant": tenant, "role": "client", "key": f"{tenant}-key"}
        if secrets_by_tenant.get(tenant):
            entry["webhook_secret"] = secrets_by_tenant[tenant]
        entries.append(entry)
    with os.fdopen(handle, "w") as out:
        json.dump(entries, out)
    return path


def _app(monkeypatch, receiver_pool=(), keys_file: str | None = None, **env: str):
    ports = ",".join(str(r.port) for r in receiver_pool)
    api, client = api_client_with(monkeypatch, "webhooks", SOUL_API_KEYS_FILE=keys_file or _keys_file(),
                                  SOUL_WEBHOOK_LOOPBACK_PORTS=ports,
                                  **{"SOUL_WEBHOOK_SECRET": DEFAULT_SECRET, "SOUL_WEBHOOK_BACKOFF_INITIAL_S": "0.05",
                                     **env})
    return api.services, client


def deliver_all(svc, message: dict, **options) -> dict[str, str]:
    """`handle_event` as the two push subscriptions run it: the event's push, then every retry message it (and
    each retry) published, in order, until none is left; the statuses as they ended."""
    queue: list[dict] = []

    def schedule(data: bytes, attributes: dict[str, str]) -> None:
        queue.append({"attributes": attributes, "data": base64.b64encode(data).decode()})

    final = handle_event(svc, message, schedule=schedule, **options)
    while queue:
        final.update(handle_event(svc, queue.pop(0), schedule=schedule, **options))
    return final


@pytest.fixture
def local(emulator_stack, clean_firestore, drain_jobs, monkeypatch, receiver_pool):
    return _app(monkeypatch, receiver_pool, SOUL_WEBHOOK_ALLOW_LOOPBACK="true", SOUL_WEBHOOK_RETRY_BUDGET_S="5")


def finish(job_id: str) -> dict:
    """Finish the job as the runner would, and the soul-events message its completion publishes (push form)."""
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    now = utcnow()
    db.collection(names.JOBS).document(job_id).update(
        {"status": "succeeded", "stage": "done", "progress": 1.0, "started_at": now, "finished_at": now})
    event = JobEvent(job_id=job_id, type=JobType.IMAGE, status=JobStatus.SUCCEEDED, occurred_at=now)
    return {"attributes": {"ce-type": names.EVENT_JOB_SUCCEEDED, "ce-id": job_id},
            "data": base64.b64encode(event.model_dump_json().encode()).decode(), "messageId": "1"}


def test_signed_delivery_retries_on_500_then_succeeds_and_is_listed_for_its_tenant_only(local, receivers):
    svc, client = local
    receiver = receivers([500, 200])
    asked = client.post("/image", json={**PENGUIN, "webhook": receiver.url,
                                        "webhook_events_filter": ["start", "completed"]}, headers=ALPHA)
    assert asked.status_code == 202, asked.json
    task_id = asked.json["task_id"]
    # A second requester (another tenant) joins the same job with its own webhook: its own record.
    other = receivers([200])
    joined = client.post("/image", json={**PENGUIN, "user_id": "u2", "webhook": other.url}, headers=BETA)
    assert joined.json["task_id"] == task_id

    message = finish(task_id)
    outcome = deliver_all(svc, message)
    assert sorted(outcome.values()) == ["delivered", "delivered"]
    assert [len(receiver.calls), len(other.calls)] == [2, 1]
    (first_headers, first_body), (headers, body) = receiver.calls
    payload = Webhook(SECRET).verify(body, headers)  # the Standard Webhooks algorithm, from its own library
    Webhook(BETA_SECRET).verify(other.calls[0][1], other.calls[0][0])  # beta's delivery: signed with beta's own
    with pytest.raises(Exception):
        Webhook(BETA_SECRET).verify(body, headers)
    assert payload["type"] == "soul.job.succeeded" and payload["data"]["task_id"] == task_id
    assert payload["data"]["status"] == "succeeded" and "user_id" not in payload["data"]
    assert first_headers["webhook-id"] == headers["webhook-id"]  # a retry is the same message
    assert headers["webhook-signature"].startswith("v1,")

    handle_event(svc, message)  # Pub/Sub redelivers: a target already served is not sent it again
    assert [len(receiver.calls), len(other.calls)] == [2, 1]

    [delivery] = client.get(f"/tasks/{task_id}", headers=ALPHA).json["deliveries"]
    assert delivery["url"] == receiver.url and delivery["status"] == "delivered" and delivery["event"] == "completed"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    [theirs] = client.get(f"/tasks/{task_id}", headers=BETA).json["deliveries"]
    assert theirs["url"] == other.url


def test_start_events_go_only_to_targets_that_asked_for_them(local, receivers):
    svc, client = local
    wants_start, completed_only = receivers([200]), receivers([200])
    task_id = client.post("/image", json={**PENGUIN, "webhook": wants_start.url, "webhook_events_filter": ["start"]},
                          headers=ALPHA).json["task_id"]
    client.post("/image", json={**PENGUIN, "user_id": "u2", "webhook": completed_only.url}, headers=ALPHA)
    started = JobStarted(job_id=task_id, type=JobType.IMAGE, occurred_at=utcnow())
    handle_event(svc, {"attributes": {"ce-type": names.EVENT_JOB_STARTED, "ce-id": f"{task_id}:started"},
                       "data": base64.b64encode(started.model_dump_json().encode()).decode()})
    assert len(wants_start.calls) == 1 and completed_only.calls == []
    assert Webhook(SECRET).verify(*reversed(wants_start.calls[0]))["data"]["status"] == "running"


def test_gives_up_after_the_bound_without_resending_to_a_target_that_succeeded(
        emulator_stack, clean_firestore, drain_jobs, monkeypatch, receivers, receiver_pool):
    svc, client = _app(monkeypatch, receiver_pool, SOUL_WEBHOOK_ALLOW_LOOPBACK="true",
                       SOUL_WEBHOOK_RETRY_BUDGET_S="0.4")
    failing, fine = receivers([500]), receivers([200])
    task_id = client.post("/image", json={**PENGUIN, "webhook": failing.url}, headers=ALPHA).json["task_id"]
    client.post("/image", json={**PENGUIN, "webhook": fine.url, "user_id": "u2"}, headers=ALPHA)
    outcome = deliver_all(svc, finish(task_id))
    assert sorted(outcome.values()) == ["delivered", "failed"]
    assert 2 <= len(failing.calls) <= 6 and len(fine.calls) == 1
    by_url = {d["url"]: d for d in client.get(f"/tasks/{task_id}", headers=ALPHA).json["deliveries"]}
    assert by_url[failing.url]["status"] == "failed"
    assert {a["status_code"] for a in by_url[failing.url]["attempts"]} == {500}
    assert len(by_url[failing.url]["attempts"]) == len(failing.calls)


@pytest.mark.parametrize("url", ["http://169.254.169.254/", "http://10.0.0.1/", "http://localhost:8080/hook",
                                 "https://127.0.0.1/hook"])
def test_unsafe_webhooks_are_refused_before_any_work(emulator_stack, clean_firestore, drain_jobs, monkeypatch, url):
    svc, client = _app(monkeypatch, SOUL_WEBHOOK_ALLOW_LOOPBACK="false")
    refused = client.post("/image", json={**PENGUIN, "webhook": url}, headers=ALPHA)
    assert refused.status_code == 400 and refused.json["error"]["field"] == "webhook", refused.json
    assert client.get("/tasks", headers=ALPHA).json["items"] == []


def test_a_hostname_resolving_to_a_private_address_is_refused_at_delivery(emulator_stack, clean_firestore,
                                                                        drain_jobs, monkeypatch):
    svc, client = _app(monkeypatch, SOUL_WEBHOOK_ALLOW_LOOPBACK="false")
    task_id = client.post("/image", json={**PENGUIN, "webhook": "https://hooks.example.com/in"},
                          headers=ALPHA).json["task_id"]

    def never(*args):
        raise AssertionError("no traffic may go to a refused target")

    outcome = handle_event(svc, finish(task_id), resolver=lambda host, port: ["10.20.30.40"], sender=never)
    assert list(outcome.values()) == ["failed"]
    [delivery] = client.get(f"/tasks/{task_id}", headers=ALPHA).json["deliveries"]
    [attempt] = delivery["attempts"]  # refused for good: no retry
    assert "private" in attempt["error"] and attempt["status_code"] is None


def test_a_webhook_registered_after_the_job_finished_is_still_told(local, receivers, subscriber):
    from tests.support import pull_all

    svc, client = local
    task_id = client.post("/image", json=PENGUIN, headers=ALPHA).json["task_id"]
    finish(task_id)
    pull_all(subscriber, names.SUB_EVENTS, rounds=2)
    late = receivers([200])
    client.post("/image", json={**PENGUIN, "user_id": "late", "webhook": late.url}, headers=ALPHA)
    [message] = pull_all(subscriber, names.SUB_EVENTS, rounds=3)  # announced again, same CloudEvent id
    assert message.message.attributes["ce-id"] == task_id
    push = {"attributes": dict(message.message.attributes),
            "data": base64.b64encode(message.message.data).decode()}
    handle_event(svc, push)
    assert len(late.calls) == 1


def test_runner_progress_events_are_throttled_and_reach_a_progress_webhook(local, receivers, subscriber):
    from google.cloud import pubsub_v1

    from soul_common.events import EventPublisher
    from tests.support import pull_all

    svc, client = local
    hook = receivers([200])
    body = {**PENGUIN, "webhook": hook.url, "webhook_events_filter": ["start", "progress"]}
    task_id = client.post("/image", json=body, headers=ALPHA).json["task_id"]
    pull_all(subscriber, names.SUB_EVENTS, rounds=2)
    job = svc.jobs.job(task_id)
    events = EventPublisher(pubsub_v1.PublisherClient(), os.environ["GCS_PROJECT_ID"], progress_interval_s=60)
    events.job_started(job)
    sent = [events.job_progress(job, p, "denoise", 1.0) for p in (0.1, 0.2, 0.3)]
    assert sent == [True, False, False]  # throttled
    assert events.job_progress(job, 1.0, "upload", 0.0)  # the last step always goes
    messages, deadline = [], time.monotonic() + 15  # start/progress are published without waiting on Pub/Sub
    while len(messages) < 3 and time.monotonic() < deadline:
        messages += pull_all(subscriber, names.SUB_EVENTS, rounds=1)
    assert sorted(m.message.attributes["ce-id"] for m in messages) == sorted(
        [f"{task_id}:started", f"{task_id}:progress:0", f"{task_id}:progress:1"])
    for m in messages:
        handle_event(svc, {"attributes": dict(m.message.attributes),
                           "data": base64.b64encode(m.message.data).decode()})
    kinds = sorted(json.loads(body)["type"] for _, body in hook.calls)
    assert kinds == ["soul.job.progress", "soul.job.progress", "soul.job.started"]


def test_ingest_bodies_carry_webhooks_too(local, receivers):
    from functions.services.ingest import handle_message
    from schemas.push import WebhookEvent

    svc, _ = local
    hook = receivers([200])
    body = {**PENGUIN, "webhook": hook.url, "webhook_events_filter": ["completed"]}
    outcome = handle_message(svc, {"attributes": {"type": "image"},
                                   "data": base64.b64encode(json.dumps(body).encode()).decode()}, "m-1")
    assert outcome.accepted, outcome
    [target] = svc.webhooks.targets(outcome.answer.task_id, WebhookEvent.COMPLETED)
    assert target.url == hook.url and target.tenant == INGEST_TENANT
    unsafe = {**PENGUIN, "webhook": "https://169.254.169.254/"}
    refused = handle_message(svc, {"attributes": {"type": "image"},
                                   "data": base64.b64encode(json.dumps(unsafe).encode()).decode()}, "m-2")
    assert not refused.accepted and refused.error.field == "webhook"


def test_a_redelivered_event_past_the_bound_is_given_up_without_sending(local, receivers):
    from datetime import timedelta

    svc, client = local
    hook = receivers([500])
    task_id = client.post("/image", json={**PENGUIN, "webhook": hook.url}, headers=ALPHA).json["task_id"]
    message = finish(task_id)
    svc_short = _app_services_with_budget(svc, 0.2)
    assert list(deliver_all(svc_short, message).values()) == ["failed"]
    sent = len(hook.calls)
    # The same delivery, left pending by a crash an hour ago: a redelivery must not start the bound again.
    [hook_doc] = db_hooks(task_id)
    delivery = hook_doc.reference.collection(names.DELIVERIES).document("completed")
    delivery.update({"status": "pending", "first_attempt_at": utcnow() - timedelta(hours=1)})
    assert list(handle_event(svc, message).values()) == ["failed"]
    assert len(hook.calls) == sent


def _app_services_with_budget(svc, budget_s: float):
    from dataclasses import replace

    return replace(svc, settings=svc.settings.model_copy(update={"webhook_retry_budget_s": budget_s}))


def db_hooks(job_id: str) -> list:
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    return list(db.collection(names.JOBS).document(job_id).collection(names.WEBHOOKS).stream())


# ---- isolation (issue 19): one tenant's targets never hold another's delivery -----------------------------------


def test_one_tenants_hanging_targets_never_delay_another_tenants_delivery(
        emulator_stack, clean_firestore, drain_jobs, monkeypatch, receivers, receiver_pool):
    timeout_s = 2.0
    svc, client = _app(monkeypatch, receiver_pool, SOUL_WEBHOOK_ALLOW_LOOPBACK="true",
                       SOUL_WEBHOOK_RETRY_BUDGET_S="3", SOUL_WEBHOOK_TIMEOUT_S=str(timeout_s),
                       SOUL_WEBHOOK_TARGETS_PER_TENANT_PER_JOB="20")
    from functions.services.webhooks import webhook_id

    hanging, prompt = receivers([200], mode="hang"), receivers([200])
    beta_url = next(f"{prompt.url}/{n}" for n in range(1000) if webhook_id("beta", f"{prompt.url}/{n}") > "c")
    # Twelve URLs of one tenant (distinct paths: twelve targets), all hanging, whose records sort before beta's.
    alpha_urls = [u for u in (f"{hanging.url}/{n}" for n in range(1000))
                  if webhook_id("alpha", u) < webhook_id("beta", beta_url)][:12]
    task_id = None
    for url in alpha_urls:
        asked = client.post("/image", json={**PENGUIN, "webhook": url}, headers=ALPHA)
        assert asked.status_code == 202, asked.json
        task_id = asked.json["task_id"]
    joined = client.post("/image", json={**PENGUIN, "user_id": "u2", "webhook": beta_url}, headers=BETA)
    assert joined.json["task_id"] == task_id

    started = time.monotonic()
    outcome = deliver_all(svc, finish(task_id))
    # Served one after another, beta's target would wait for 12 attempts of 2 s; alone, it is told at once.
    assert len(prompt.calls) == 1 and prompt.arrived[0] - started < timeout_s
    assert len(hanging.calls) >= 12  # every hanging target was tried, in parallel, each within its own deadline
    by_status = sorted(outcome.values())
    assert by_status == ["delivered"] + ["failed"] * 12
    [theirs] = client.get(f"/tasks/{task_id}", headers=BETA).json["deliveries"]
    assert theirs["status"] == "delivered"
    for delivery in client.get(f"/tasks/{task_id}", headers=ALPHA).json["deliveries"]:
        assert all(a["duration_ms"] < (timeout_s + 1) * 1000 for a in delivery["attempts"])


def test_a_dripping_receiver_cannot_stretch_an_attempt_past_its_deadline(receivers):
    from functions.adapters.webhook_http import SendFailed, post
    from functions.core import ssrf

    drip = receivers([200], mode="drip")  # one byte of the status line every 0.4 s: 7 s for all of it
    target = ssrf.vet(drip.url, allow_loopback=True, loopback_ports=frozenset({drip.port}))
    began = time.monotonic()
    with pytest.raises(SendFailed, match="deadline"):
        post(target, {"content-type": "application/json"}, b"{}", 1.0)
    assert time.monotonic() - began < 3.0  # the deadline is the attempt's, not each read's


def test_targets_per_tenant_per_job_are_capped(emulator_stack, clean_firestore, drain_jobs, monkeypatch,
                                                receivers, receiver_pool):
    svc, client = _app(monkeypatch, receiver_pool, SOUL_WEBHOOK_ALLOW_LOOPBACK="true",
                       SOUL_WEBHOOK_TARGETS_PER_TENANT_PER_JOB="2")
    hook = receivers([200])
    first = client.post("/image", json={**PENGUIN, "webhook": f"{hook.url}/a"}, headers=ALPHA)
    task_id = first.json["task_id"]
    assert client.post("/image", json={**PENGUIN, "webhook": f"{hook.url}/b"}, headers=ALPHA).status_code == 202
    again = client.post("/image", json={**PENGUIN, "webhook": f"{hook.url}/a"}, headers=ALPHA)
    assert again.status_code == 202  # the same target again takes no new slot
    over = client.post("/image", json={**PENGUIN, "webhook": f"{hook.url}/c"}, headers=ALPHA)
    assert over.status_code == 409 and over.json["error"]["field"] == "webhook", over.json
    assert task_id in over.json["error"]["message"]
    assert client.post("/image", json={**PENGUIN, "webhook": f"{hook.url}/d"}, headers=BETA).status_code == 202
    assert len(db_hooks(task_id)) == 3  # alpha's two, beta's one: the refused URL left no record


def test_a_tenant_without_its_own_secret_cannot_register_webhooks(emulator_stack, clean_firestore, drain_jobs,
                                                                   monkeypatch, receivers, receiver_pool):
    svc, client = _app(monkeypatch, receiver_pool, keys_file=_keys_file(alpha=SECRET, beta=None),
                       SOUL_WEBHOOK_ALLOW_LOOPBACK="true")
    hook = receivers([200])
    refused = client.post("/image", json={**PENGUIN, "webhook": hook.url}, headers=BETA)
    assert refused.status_code == 400 and "beta" in refused.json["error"]["message"]  # never the default's secret
    assert client.get("/tasks", headers=BETA).json["items"] == []
    assert client.post("/image", json={**PENGUIN, "webhook": hook.url}, headers=ALPHA).status_code == 202


def test_local_mode_refuses_loopback_ports_no_receiver_declared(emulator_stack, clean_firestore, drain_jobs,
                                                                 monkeypatch, receiver_pool):
    svc, client = _app(monkeypatch, receiver_pool[:1], SOUL_WEBHOOK_ALLOW_LOOPBACK="true")
    storage = os.environ["STORAGE_EMULATOR_HOST"].rstrip("/")
    upload = f"{storage}/upload/storage/v1/b/{os.environ['GCS_BUCKET_NAME']}/o?uploadType=media&name=images/x.png"
    for url in (upload, f"http://{os.environ['FIRESTORE_EMULATOR_HOST']}/v1/projects/x",
                f"http://{os.environ['PUBSUB_EMULATOR_HOST']}/v1/projects/x/topics/t:publish",
                f"http://127.0.0.1:{receiver_pool[1].port}/hook"):
        refused = client.post("/image", json={**PENGUIN, "webhook": url}, headers=ALPHA)
        assert refused.status_code == 400 and "SOUL_WEBHOOK_LOOPBACK_PORTS" in refused.json["error"]["message"], url
    assert client.get("/tasks", headers=ALPHA).json["items"] == []


def test_an_emulator_port_can_never_be_declared_a_receiver(emulator_stack, monkeypatch):
    from pydantic import ValidationError

    from functions.settings import FunctionsSettings

    port = os.environ["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1].strip("/")
    monkeypatch.setenv("SOUL_WEBHOOK_LOOPBACK_PORTS", f"1,{port}")
    with pytest.raises(ValidationError, match="storage emulator"):
        FunctionsSettings()


# ---- retries on their own subscription: a failing target never holds the event's push ------------------------


def test_a_failing_target_is_retried_by_its_own_pushes_and_never_holds_the_events_push(
        emulator_stack, clean_firestore, drain_jobs, monkeypatch, receivers, receiver_pool):
    """The event's push makes one attempt per target and ends: the 500 target is scheduled (due after the backoff),
    the healthy one told at once. Each retry push waits until due, makes one attempt, schedules the next; a
    duplicate retry message and a redelivered event send nothing more."""
    svc, client = _app(monkeypatch, receiver_pool, SOUL_WEBHOOK_ALLOW_LOOPBACK="true",
                       SOUL_WEBHOOK_RETRY_BUDGET_S="120", SOUL_WEBHOOK_BACKOFF_INITIAL_S="1")
    failing, fine = receivers([500, 500, 200]), receivers([200])
    task_id = client.post("/image", json={**PENGUIN, "webhook": failing.url}, headers=ALPHA).json["task_id"]
    client.post("/image", json={**PENGUIN, "webhook": fine.url, "user_id": "u2"}, headers=ALPHA)
    [hook] = [h for h in db_hooks(task_id) if h.to_dict()["url"] == failing.url]
    published: list[tuple[bytes, dict]] = []
    slept: list[float] = []

    def schedule(data: bytes, attributes: dict[str, str]) -> None:
        published.append((data, attributes))

    def as_message(item: tuple[bytes, dict]) -> dict:
        return {"attributes": item[1], "data": base64.b64encode(item[0]).decode()}

    event = finish(task_id)
    started = time.monotonic()
    outcome = handle_event(svc, event, schedule=schedule, sleep=slept.append)
    assert time.monotonic() - started < 1.0  # one attempt each, no backoff waited in the event's push
    assert outcome == {hook.id: "pending", **{k: v for k, v in outcome.items() if k != hook.id}}
    assert sorted(outcome.values()) == ["delivered", "pending"] and len(fine.calls) == 1 and len(failing.calls) == 1
    [(data, attributes)] = published
    assert data == base64.b64decode(event["data"]) and attributes["ce-type"] == names.EVENT_JOB_SUCCEEDED
    assert attributes["soul-webhook-id"] == hook.id
    due = datetime.fromisoformat(attributes["soul-due-at"])
    delivery = hook.reference.collection(names.DELIVERIES).document("completed").get().to_dict()
    assert delivery["next_attempt_at"] == due and 0.5 < (due - utcnow()).total_seconds() <= 1.0

    assert handle_event(svc, event, schedule=schedule) == outcome  # the event redelivered: nothing sent again
    assert len(failing.calls) == 1 and len(published) == 1

    second = handle_event(svc, as_message(published[0]), schedule=schedule, sleep=slept.append)
    assert second == {hook.id: "pending"} and len(failing.calls) == 2 and 0 < slept[0] <= 1.0
    assert handle_event(svc, as_message(published[0]), schedule=schedule) == {hook.id: "pending"}  # a stale copy
    assert len(failing.calls) == 2 and len(published) == 2
    next_due = datetime.fromisoformat(published[1][1]["soul-due-at"])
    assert 1.5 < (next_due - utcnow()).total_seconds() <= 2.0  # the backoff doubles

    third = handle_event(svc, as_message(published[1]), schedule=schedule, sleep=slept.append)
    assert third == {hook.id: "delivered"} and len(failing.calls) == 3 and len(published) == 2
    [delivery] = [d for d in client.get(f"/tasks/{task_id}", headers=ALPHA).json["deliveries"]
                  if d["url"] == failing.url]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert len({h["webhook-id"] for h, _ in failing.calls}) == 1  # every attempt is the same message


def test_a_retry_lost_before_it_was_published_is_scheduled_by_the_events_redelivery(local, receivers):
    svc, client = local
    hook = receivers([500])
    task_id = client.post("/image", json={**PENGUIN, "webhook": hook.url}, headers=ALPHA).json["task_id"]
    event = finish(task_id)
    assert list(handle_event(svc, event, schedule=lambda data, attributes: None).values()) == ["pending"]
    [hook_doc] = db_hooks(task_id)
    delivery = hook_doc.reference.collection(names.DELIVERIES).document("completed")
    delivery.update({"next_attempt_at": firestore.DELETE_FIELD})  # the crash: attempted, never scheduled
    published: list[dict] = []
    assert list(handle_event(svc, event, schedule=lambda d, a: published.append(a)).values()) == ["pending"]
    assert len(hook.calls) == 1 and [a["soul-webhook-id"] for a in published] == [hook_doc.id]
    assert delivery.get().to_dict()["next_attempt_at"] == datetime.fromisoformat(published[0]["soul-due-at"])


def test_retries_are_published_on_their_topic(local, receivers, subscriber):
    """The default scheduler publishes on soul-webhook-retries (the emulator's topic, as provisioned)."""
    svc, client = local
    project = os.environ["GCS_PROJECT_ID"]
    path = subscriber.subscription_path(project, f"test-retries-{secrets.token_hex(4)}")
    subscriber.create_subscription(request={"name": path,
                                            "topic": f"projects/{project}/topics/{names.TOPIC_WEBHOOK_RETRIES}"})
    try:
        hook = receivers([503])
        task_id = client.post("/image", json={**PENGUIN, "webhook": hook.url}, headers=ALPHA).json["task_id"]
        assert list(handle_event(svc, finish(task_id)).values()) == ["pending"]
        [message] = pull_all(subscriber, path.rsplit("/", 1)[1], project=project)
        attributes = dict(message.message.attributes)
        assert attributes["soul-webhook-id"] == db_hooks(task_id)[0].id and "soul-due-at" in attributes
        assert json.loads(message.message.data)["job_id"] == task_id
    finally:
        subscriber.delete_subscription(request={"subscription": path})


def test_a_malformed_retry_message_is_acknowledged_without_sending(local, receivers):
    svc, client = local
    hook = receivers([200])
    task_id = client.post("/image", json={**PENGUIN, "webhook": hook.url}, headers=ALPHA).json["task_id"]
    event = finish(task_id)
    for due in ("tomorrow", "2026-01-01T00:00:00"):  # unreadable; no time zone
        bad = {**event, "attributes": {**event["attributes"], "soul-webhook-id": "x", "soul-due-at": due}}
        assert handle_event(svc, bad) == {}
    assert hook.calls == []


def test_a_tenant_that_withdrew_from_a_shared_job_is_sent_none_of_its_later_events(local, receivers):
    """alpha cancels its part of a job beta still waits on: its task reads canceled, so its webhook must not be
    told the job succeeded; beta's is. Asking again with the webhook registers it afresh."""
    svc, client = local
    alphas, betas = receivers([200]), receivers([200])
    task_id = client.post("/image", json={**PENGUIN, "webhook": alphas.url}, headers=ALPHA).json["task_id"]
    client.post("/image", json={**PENGUIN, "user_id": "u2", "webhook": betas.url}, headers=BETA)
    assert client.delete(f"/tasks/{task_id}", headers=ALPHA).json["status"] == "canceled"
    assert list(deliver_all(svc, finish(task_id)).values()) == ["delivered"]
    assert alphas.calls == [] and len(betas.calls) == 1
    assert client.get(f"/tasks/{task_id}", headers=ALPHA).json["status"] == "canceled"


def test_a_tenant_that_asks_again_with_its_webhook_is_told_again(local, receivers):
    svc, client = local
    alphas, betas = receivers([200]), receivers([200])
    task_id = client.post("/image", json={**PENGUIN, "webhook": alphas.url}, headers=ALPHA).json["task_id"]
    client.post("/image", json={**PENGUIN, "user_id": "u2", "webhook": betas.url}, headers=BETA)
    client.delete(f"/tasks/{task_id}", headers=ALPHA)
    again = client.post("/image", json={**PENGUIN, "webhook": alphas.url}, headers=ALPHA).json
    assert again["task_id"] == task_id  # the work beta waits on goes on: alpha joins it again
    assert sorted(deliver_all(svc, finish(task_id)).values()) == ["delivered", "delivered"]
    assert len(alphas.calls) == len(betas.calls) == 1
