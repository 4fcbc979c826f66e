"""Benchmark of the per-tenant quotas (issue 8) on the real emulators, side by side in one process and one run:

  rate      requests/s one tenant gets through `GET /me` (auth + token bucket, nothing else) with the default
            quota, from several threads for a few seconds: accepted vs answered 429, and when the first 429 came
  jobs      GPU jobs one tenant can create in an hour with the default quota: distinct cues until the 429
  overhead  `GET /image` answered from the dedup index (a hit), with the quota check and without it (the same
            settings with SOUL_QUOTAS_ENABLED=false), interleaved request by request: medians and the ratio

`python bench/quota.py [seconds] [threads] [samples]` (defaults 6 4 150)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.stack and the repository's packages, run as a file or with -m
KEY = "bench-tenant-key-000001"
HEADERS = {"X-API-Key": KEY}


def run(seconds: float, threads: int, samples: int) -> dict:
    from bench.stack import emulated_stack

    with emulated_stack("quota", [{"tenant": "bench", "role": "client", "key": KEY}]):
        return {"rate": _rate(_client(), seconds, threads), "jobs": _jobs(_client()),
                "overhead": _overhead(_client(), _client(SOUL_QUOTAS_ENABLED="false"), samples)}


def _client(**env: str):
    import flask

    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    settings = FunctionsSettings(**{k.removeprefix("SOUL_").lower(): v for k, v in env.items()})
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask("bench", static_folder=None)
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["GET", "POST"])
    return app.test_client()


def _rate(client, seconds: float, threads: int) -> dict:
    counts = {"ok": 0, "limited": 0}
    first_429: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def hammer() -> None:
        while time.perf_counter() - start < seconds:
            status = client.get("/me", headers=HEADERS).status_code
            with lock:
                if status == 200:
                    counts["ok"] += 1
                elif status == 429:
                    counts["limited"] += 1
                    if not first_429:
                        first_429.append(time.perf_counter() - start)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    return {"seconds": round(elapsed, 2), "threads": threads, "accepted": counts["ok"], "limited": counts["limited"],
            "accepted_per_s": round(counts["ok"] / elapsed, 1),
            "offered_per_s": round((counts["ok"] + counts["limited"]) / elapsed, 1),
            "first_429_after_s": round(first_429[0], 2) if first_429 else None}


def _jobs(client) -> dict:
    created, started = 0, time.perf_counter()
    for i in range(10_000):
        response = client.get("/image", query_string={"soul_id": "nova", "cue": f"bench cue {i}", "user_id": "u"},
                              headers=HEADERS)
        if response.status_code == 429:
            if response.json["error"]["code"] == "rate_limited":
                time.sleep(float(response.headers["Retry-After"]))
                continue
            return {"created_before_429": created, "seconds": round(time.perf_counter() - started, 1),
                    "retry_after_s": int(response.headers["Retry-After"]), "code": response.json["error"]["code"]}
        assert response.status_code == 202, response.json
        created += 1
    raise AssertionError("no quota stopped the jobs")


def _overhead(with_quota, without_quota, samples: int) -> dict:
    from google.cloud import firestore

    from gpu_runner.adapters.jobstore import add_variant_writes
    from soul_common.firestore import Db
    from schemas import names
    from schemas._base import utcnow
    from schemas.documents import VariantDoc
    from schemas.ids import new_ulid

    query = {"soul_id": "nova", "cue": "overhead penguin", "user_id": "viewer"}
    pk = without_quota.get("/image", query_string=query, headers=HEADERS).json["pk_id"]
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    variant_id = new_ulid()
    batch = Db(db).batch()
    add_variant_writes(batch, VariantDoc(
        variant_id=variant_id, pk=pk, soul_id="nova", variant_index=0,
        object=names.image_object("nova", pk, variant_id), width=64, height=64, seed=0, bytes=10,
        job_id=f"img-{pk}-0", cue="overhead penguin", created_at=utcnow()), utcnow())
    batch.commit()
    timings: dict[str, list[float]] = {"with": [], "without": []}
    for i in range(samples + 5):
        order = (("with", with_quota), ("without", without_quota)) if i % 2 else \
            (("without", without_quota), ("with", with_quota))
        for name, client in order:
            began = time.perf_counter()
            response = client.get("/image", query_string=query, headers=HEADERS)
            elapsed = (time.perf_counter() - began) * 1000
            assert response.status_code == 200, response.json  # a hit: the variant is unseen by `viewer`
            if i >= 5:  # warm-up excluded
                timings[name].append(elapsed)
        if i % 20 == 19:
            time.sleep(0.5)  # stay under the default rate limit: measure the check, not the 429
    with_ms, without_ms = statistics.median(timings["with"]), statistics.median(timings["without"])
    return {"samples": samples, "median_with_ms": round(with_ms, 2), "median_without_ms": round(without_ms, 2),
            "added_ms": round(with_ms - without_ms, 2), "ratio": round(with_ms / without_ms, 2)}


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 6.0
    threads = int(argv[1]) if len(argv) > 1 else 4
    samples = int(argv[2]) if len(argv) > 2 else 150
    result = run(seconds, threads, samples)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
