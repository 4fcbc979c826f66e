"""What the Python client (soul-client) adds to a dedup hit, side by side with a raw HTTP call, in one run on the
emulators (issue 23). The real `api` function is served over HTTP on this machine (werkzeug, threaded); a cue
gets variants seeded in Firestore, so every request from a new user is a dedup hit (an unseen variant exists,
answered at once). Interleaved, the same number of times each:

- raw GET: `httpx.get("/image?...")` and `response.json()`;
- client GET: `Client.image_get(...)` (request from the operation table, answer validated into `ImageReady`);
- raw POST: `httpx.post("/image", json=...)` without an idempotency key;
- client POST: `Client.image(...)` (POST with a generated `Idempotency-Key`: the server reserves the key).

    python bench/clients.py [N]     # N requests of each kind (default 200); JSON on stdout
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "clients" / "python")]


def _pct(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, int(round(q / 100 * len(ordered))) - 1)] * 1000, 3)


def _seed(pk: str, count: int) -> None:
    from google.cloud import firestore

    from gpu_runner.adapters.jobstore import add_variant_writes
    from schemas import names
    from schemas._base import utcnow
    from schemas.documents import VariantDoc
    from schemas.ids import new_ulid
    from soul_common.firestore import Db

    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    batch = Db(db).batch()
    for index in range(count):
        variant_id = new_ulid()
        add_variant_writes(batch, VariantDoc(
            variant_id=variant_id, pk=pk, soul_id="nova", variant_index=index,
            object=names.image_object("nova", pk, variant_id), width=64, height=64, seed=index, bytes=10,
            job_id=f"img-{pk}-{index}", cue="bench hit", created_at=utcnow(),
        ), utcnow())
    batch.commit()


def _measure(n: int) -> dict:
    import httpx
    from functions_framework import create_app
    from werkzeug.serving import make_server

    from soul_client import Client, models

    app = create_app(target="api", source=str(REPO / "functions" / "main.py"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        raw = httpx.Client(base_url=base, timeout=30)
        soul = Client(base, timeout=30)
        first = raw.get("/image", params={"soul_id": "nova", "cue": "bench hit", "user_id": "seed"}).json()
        _seed(first["pk_id"], 3)
        timings: dict[str, list[float]] = {"raw_get": [], "client_get": [], "raw_post": [], "client_post": []}
        for i in range(n + 10):  # the first 10 rounds warm connections and caches up
            user = f"bench-user-{i}"
            rounds = {
                "raw_get": lambda: raw.get("/image", params={"soul_id": "nova", "cue": "bench hit",
                                                             "user_id": user + "g"}).json(),
                "client_get": lambda: soul.image_get(soul_id="nova", cue="bench hit", user_id=user + "c"),
                "raw_post": lambda: raw.post("/image", json={"soul_id": "nova", "cue": "bench hit",
                                                             "user_id": user + "p"}).json(),
                "client_post": lambda: soul.image("nova", "bench hit", user + "q").answer,
            }
            for kind, call in rounds.items():
                started = time.perf_counter()
                answer = call()
                elapsed = time.perf_counter() - started
                ready = answer["status"] == "ready" if isinstance(answer, dict) else isinstance(answer, models.ImageReady)
                if not ready:
                    raise RuntimeError(f"{kind} was not a dedup hit: {answer}")
                if i >= 10:
                    timings[kind].append(elapsed)
        raw.close()
        soul.close()
    finally:
        server.shutdown()
    result: dict = {"n": n}
    for kind, values in timings.items():
        result[f"{kind}_p50_ms"] = _pct(values, 50)
        result[f"{kind}_p95_ms"] = _pct(values, 95)
        result[f"{kind}_mean_ms"] = round(statistics.mean(values) * 1000, 3)
    result["client_get_over_raw_p50"] = round(result["client_get_p50_ms"] / result["raw_get_p50_ms"], 3)
    result["client_post_over_raw_p50"] = round(result["client_post_p50_ms"] / result["raw_post_p50_ms"], 3)
    result["client_get_adds_p50_ms"] = round(result["client_get_p50_ms"] - result["raw_get_p50_ms"], 3)
    result["client_post_adds_p50_ms"] = round(result["client_post_p50_ms"] - result["raw_post_p50_ms"], 3)
    return result


def run(n: int) -> dict:
    from emulators import EmulatorStack, StackConfig

    work = Path(tempfile.mkdtemp(prefix="soul-bench-clients-"))
    stack = EmulatorStack(StackConfig(state_dir=work / "emulators", retry_min_backoff_s=0, retry_max_backoff_s=0))
    stack.start()
    try:
        stack.provision()
        os.environ.update(stack.env())
        os.environ.setdefault("SOUL_QUOTA_REQUESTS_PER_SECOND", "100000")  # measure the call, not the limiter
        os.environ.setdefault("SOUL_QUOTA_BURST", "1000000")
        os.environ.setdefault("SOUL_QUOTA_VARIANTS_PER_PROMPT_PER_USER_PER_DAY", "1000")
        return _measure(n)
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(run(int(args[0]) if args else 200), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
