"""What one request costs, counted (issue 18, the figures behind docs/SCALE.md): for each endpoint, the Firestore
documents read and written, the queries among them and the round trips (the gateway's ledger, per request), the URL signatures (a
counting signer in place of the key file: each one is an IAM signBlob call on Google Cloud) and the Pub/Sub
messages published; for a job, what the runner's job store writes from claim to finish; for the reconciler, what
one leased pass reads. Counts, not timings: they hold on Google Cloud as they do on the emulators.

`python bench/costs.py [repeats]` (default 5): prints one JSON document (per endpoint: the median over repeats)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEY, ADMIN = "bench-costs-client-0001", "bench-costs-admin-00001"
H, H_ADMIN = {"X-API-Key": KEY}, {"X-API-Key": ADMIN}


class Counts:
    """Signatures and publishes made while a request runs (one request at a time: plain counters)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.signatures = 0
        self.published: Counter = Counter()


def run(repeats: int) -> dict:
    from bench.stack import emulated_stack

    with emulated_stack("costs", [{"tenant": "bench", "role": "client", "key": KEY},
                                  {"tenant": "bench", "role": "admin", "key": ADMIN}]):
        os.environ.setdefault("SOUL_BACKEND_TIMEOUT_S", "30")
        return _measure(repeats)


def _instrument(counts: Counts) -> None:
    import google.auth.credentials
    from google.cloud import pubsub_v1
    from google.oauth2 import service_account

    from functions.adapters import signing

    real_from_file = service_account.Credentials.from_service_account_file

    class CountingSigner(google.auth.credentials.Signing):
        def __init__(self, inner):
            self._inner = inner

        @property
        def signer(self):
            return self._inner.signer

        @property
        def signer_email(self):
            return self._inner.signer_email

        def sign_bytes(self, message):
            with counts.lock:
                counts.signatures += 1
            return self._inner.sign_bytes(message)

    signing.service_account.Credentials.from_service_account_file = \
        staticmethod(lambda path, **kw: CountingSigner(real_from_file(path, **kw)))
    real_publish = pubsub_v1.PublisherClient.publish

    def publish(self, topic, data, **attrs):
        with counts.lock:
            counts.published[topic.rsplit("/", 1)[-1]] += 1
        return real_publish(self, topic, data, **attrs)

    pubsub_v1.PublisherClient.publish = publish


def _measure(repeats: int) -> dict:
    import flask
    from google.cloud import firestore

    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings
    from gpu_runner.adapters.jobstore import JobStore as RunnerJobStore
    from schemas.jobs import JobMetrics, JobStatus
    from soul_common.firestore import Db
    from soul_common.reconciler import PassLease, ReconcilePolicy, Reconciler
    from tests.integration.test_api_surface import seed_variants

    counts = Counts()
    _instrument(counts)
    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask("bench-costs", static_folder=None)
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["GET", "POST", "DELETE"])
    client = app.test_client()
    ledger = api.services.db.ledger
    raw = firestore.Client(project=settings.project_id)

    def cost(method: str, path: str, headers=H, **kwargs) -> dict:
        for _ in range(3):  # a loaded machine's emulator may miss a deadline: count a request that completed
            before_sig, before_pub = counts.signatures, sum(counts.published.values())
            with ledger.tally() as tally:
                answer = client.open(path, method=method, headers=headers, **kwargs)
            if answer.status_code != 503:
                break
        assert answer.status_code < 500, (path, answer.status_code, answer.data[:300])
        return {"status": answer.status_code, "reads": tally.reads, "writes": tally.writes, "queries": tally.queries,
                "round_trips": tally.round_trips,
                "signatures": counts.signatures - before_sig,
                "published": sum(counts.published.values()) - before_pub}

    rows: dict[str, list[dict]] = {}
    for n in range(repeats):
        cue = {"soul_id": "nova", "cue": f"penguin number {n}", "user_id": f"u{n}"}
        miss = cost("GET", "/image", query_string=cue)
        rows.setdefault("GET /image (miss: creates the job)", []).append(miss)
        rows.setdefault("GET /image (joins the same job)", []).append(
            cost("GET", "/image", query_string={**cue, "user_id": f"v{n}"}))
        task_id = client.get("/image", query_string=cue, headers=H).json["task_id"]
        pk = client.get("/image", query_string=cue, headers=H).json["pk_id"]
        rows.setdefault("GET /tasks/{id} (queued)", []).append(cost("GET", f"/tasks/{task_id}"))
        # the runner makes the variant: claim, 4 progress ticks, the variant, finish (rollups included)
        store = RunnerJobStore(Db(raw), f"runner-{n}", timedelta(seconds=30))
        with store._db.ledger.tally() as job_tally:  # noqa: SLF001 - the runner's own gateway ledger
            store.claim(task_id, "image")
            for step in range(4):
                store.progress(task_id, (step + 1) / 5, "render", 1.0)
            store.finish(task_id, JobStatus.SUCCEEDED, metrics=JobMetrics(gpu_seconds=2.0, model="x", device="cpu"))
        rows.setdefault("runner: claim + 4 progress + finish (store only)", []).append(
            {"reads": job_tally.reads, "writes": job_tally.writes})
        seed_variants(raw, 1, pk=pk)
        rows.setdefault("GET /image (dedup hit: URL signed)", []).append(
            cost("GET", "/image", query_string={**cue, "user_id": f"w{n}"}))
        rows.setdefault("GET /image (dedup hit: URL reused)", []).append(
            cost("GET", "/image", query_string={**cue, "user_id": f"x{n}"}))
        rows.setdefault("GET /tasks/{id} (succeeded)", []).append(cost("GET", f"/tasks/{task_id}"))
        rows.setdefault("GET /tasks (page of 20)", []).append(cost("GET", "/tasks", query_string={"page_size": 20}))
        grid = f"{n:032x}"
        seed_variants(raw, 20, pk=grid)
        rows.setdefault("GET /image/variants/{pk} (20, first)", []).append(
            cost("GET", f"/image/variants/{grid}", query_string={"page_size": 20}))
        rows.setdefault("GET /image/variants/{pk} (20, again)", []).append(
            cost("GET", f"/image/variants/{grid}", query_string={"page_size": 20}))
        rows.setdefault("GET /usage (7 days)", []).append(cost("GET", "/usage"))
        rows.setdefault("GET /tasks/stats/summary (admin)", []).append(
            cost("GET", "/tasks/stats/summary", headers=H_ADMIN))
        rows.setdefault("GET /me", []).append(cost("GET", "/me"))

    gateway = Db(raw)
    reconciler = Reconciler(gateway, _NoPublish(), ReconcilePolicy(unpublished_after=timedelta(hours=1)))
    with gateway.ledger.tally() as pass_tally:
        report = reconciler.run_leased(PassLease(gateway, "bench", timedelta(seconds=30)))
    out = {name: {k: statistics.median([x[k] for x in r]) for k in r[0]} for name, r in rows.items()}
    out["reconciler: one leased pass"] = {"reads": pass_tally.reads, "writes": pass_tally.writes,
                                          "pages": report.pages if report else 0}
    out["_published_by_topic"] = dict(counts.published)
    out["_repeats"] = repeats
    return out


class _NoPublish:
    def republish_job(self, *args, **kwargs) -> None:
        pass

    def job_finished(self, job) -> None:
        pass


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=1))
