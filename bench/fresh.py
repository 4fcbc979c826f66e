"""Time to a fresh variant, warm pool off vs. on, side by side in one run on the emulators (issue 12).

20 users ask for the same cue, mark what they got seen, look at it for a while (`--think-s`) and ask again, for
5 rounds; they start staggered over one think time, as people browsing do. Measured per answer: the time from
asking until a variant this user has not seen is in hand (an immediate `ready`, or `queued` and then polling
`GET /tasks/{id}` until it succeeds). `hit` is a dedup hit with the pool off, under the same load: 20 new users
replay the same rounds on the cue of the pool-off phase, whose variants all exist by then, arriving together
(as the pool-on users do after the first round, which lines them all up on variant 0).

The GPU is a stand-in consumer written for this bench (not the runner): one thread that pulls soul-jobs first
and soul-jobs-background only when no interactive job waits, sleeps `--simulate-render-s` per job, and writes
what the runner writes for an image (the variant document, the prompt's variant index, the job's success). The
api function runs in-process (flask test client), so the figures leave out HTTP and the network.

    python bench/fresh.py --simulate-render-s 0.9 --json OUT
OUT holds p50/p95 per phase, p50_hit_s, waste_ratio (pre-renders nobody took / pre-renders made)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

USERS, ROUNDS = 20, 5


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, int(round(q / 100 * len(ordered))) - 1)], 4)


class StandInGpu:
    """One simulated GPU: interactive lane first; a job takes `render_s`; writes results like the runner."""

    def __init__(self, project: str, render_s: float):
        from google.cloud import firestore, pubsub_v1

        from schemas import names

        self._names = names
        self._db = firestore.Client(project=project)
        self._sub = pubsub_v1.SubscriberClient()
        self._subs = [self._sub.subscription_path(project, names.SUB_RUNNER),
                      self._sub.subscription_path(project, names.SUB_RUNNER_BACKGROUND)]
        self._render_s = render_s
        self._stop = threading.Event()
        self.rendered = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _pull_one(self):
        for path in self._subs:  # the interactive subscription first, every time
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                response = self._sub.pull(request={"subscription": path, "max_messages": 1,
                                                   "return_immediately": True}, timeout=10)
            if response.received_messages:
                message = response.received_messages[0]
                self._sub.acknowledge(request={"subscription": path, "ack_ids": [message.ack_id]})
                return message.message.attributes["job_id"]
        return None

    def _loop(self) -> None:
        from google.cloud import firestore

        from schemas._base import utcnow

        names = self._names
        while not self._stop.is_set():
            job_id = self._pull_one()
            if job_id is None:
                time.sleep(0.01)
                continue
            ref = self._db.collection(names.JOBS).document(job_id)
            job = ref.get().to_dict()
            if job is None or job["status"] != "queued":
                continue  # a duplicate (e.g. a promoted job's other copy): the job document decides
            ref.update({"status": "running", "stage": "render", "started_at": utcnow()})
            time.sleep(self._render_s)
            spec, now = job["request"], utcnow()
            self._db.collection(names.VARIANTS).document(spec["variant_id"]).set({
                "variant_id": spec["variant_id"], "pk": spec["pk"], "soul_id": spec["soul_id"],
                "variant_index": spec["variant_index"],
                "object": names.image_object(spec["soul_id"], spec["pk"], spec["variant_id"]), "width": 64,
                "height": 64, "seed": spec["seed"], "bytes": 1, "job_id": job_id, "cue": spec["cue"],
                "created_at": now})
            self._db.collection(names.PROMPTS).document(spec["pk"]).update(
                {"variant_ids": firestore.ArrayUnion([spec["variant_id"]])})
            ref.update({"status": "succeeded", "stage": "done", "progress": 1.0, "finished_at": now,
                        "result": {"kind": "image", "variant_id": spec["variant_id"], "pk": spec["pk"],
                                   "object": names.image_object(spec["soul_id"], spec["pk"], spec["variant_id"]),
                                   "width": 64, "height": 64, "seed": spec["seed"], "bytes": 1,
                                   "render_seconds": self._render_s, "created_at": now}})
            self.rendered += 1


def _client(pool_on: bool):
    import flask

    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    os.environ["SOUL_WARM_POOL_ENABLED"] = "true" if pool_on else "false"
    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask(f"fresh-{pool_on}")
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["GET", "POST", "DELETE"])
    return app


def _phase(pool_on: bool, cue: str, think_s: float, first_user: int = 0, stagger: bool = True) -> dict:
    app = _client(pool_on)
    fresh: list[float] = []
    hits: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def user(i: int) -> None:
        client = app.test_client()
        time.sleep(i * think_s / USERS if stagger else 0.0)  # staggered arrivals
        query = {"soul_id": "nova", "cue": cue, "user_id": f"user{first_user + i}"}
        for _ in range(ROUNDS):
            started = time.perf_counter()
            answer = client.get("/image", query_string=query)
            body = answer.json
            if answer.status_code == 200:
                elapsed = time.perf_counter() - started
                with lock:
                    hits.append(elapsed)
            else:
                while body.get("status") != "ready":
                    task = client.get(f"/tasks/{body['task_id']}").json
                    if task["status"] in ("failed", "canceled"):
                        errors.append(f"{body['task_id']} {task['status']}")
                        return
                    if task["status"] == "succeeded":
                        body = client.get("/image", query_string=query).json
                    else:
                        time.sleep(0.05)
                elapsed = time.perf_counter() - started
            with lock:
                fresh.append(elapsed)
            client.post(f"/image/mark-seen?variant_id={body['variant']['variant_id']}&user_id={query['user_id']}")
            time.sleep(think_s)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(USERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"jobs did not succeed: {errors[:3]}")
    stats = app.test_client().get("/tasks/stats/summary").json
    return {"fresh": fresh, "ready": hits, "prerenders": stats["prerenders"]}


def run(render_s: float, think_s: float) -> dict:
    from emulators import EmulatorStack, StackConfig

    work = Path(tempfile.mkdtemp(prefix="soul-fresh-"))
    stack = EmulatorStack(StackConfig(state_dir=work / "emulators", retry_min_backoff_s=0, retry_max_backoff_s=0))
    stack.start()
    try:
        stack.provision()
        os.environ.update(stack.env())
        gpu = StandInGpu(os.environ["GCS_PROJECT_ID"], render_s)
        gpu.start()
        try:
            off = _phase(False, "penguin on ice", think_s)
            # Dedup hits under the same load: 20 new users replay the same rounds on the cue whose 5 variants
            # now exist, so every answer is an unseen variant that is already there. They start together: with
            # the pool on, the first round's wait for variant 0 lines all users up, so later rounds arrive at once.
            hit = _phase(False, "penguin on ice", think_s, first_user=USERS, stagger=False)
            on = _phase(True, "penguin in snow", think_s)  # another cue: a cold key, same shape of demand
        finally:
            gpu.stop()
    finally:
        stack.stop()
    pre = on["prerenders"]
    return {
        "users": USERS, "rounds": ROUNDS, "simulate_render_s": render_s, "think_s": think_s,
        "consumer": "bench stand-in GPU (one thread, interactive lane first, sleeps simulate_render_s)",
        "p50_pool_off_s": _pct(off["fresh"], 50), "p95_pool_off_s": _pct(off["fresh"], 95),
        "p50_pool_on_s": _pct(on["fresh"], 50), "p95_pool_on_s": _pct(on["fresh"], 95),
        "p50_hit_s": _pct(hit["ready"], 50), "p95_hit_s": _pct(hit["ready"], 95),
        "hit_share_in_hit_phase": round(len(hit["ready"]) / len(hit["fresh"]), 3),
        "p50_ready_pool_on_s": _pct(on["ready"], 50) if on["ready"] else None,
        "ready_share_pool_off": round(len(off["ready"]) / len(off["fresh"]), 3),
        "ready_share_pool_on": round(len(on["ready"]) / len(on["fresh"]), 3),
        "prerenders_made": pre["made"], "prerenders_delivered": pre["delivered"],
        "waste_ratio": pre["waste_ratio"],
        "mean_fresh_pool_off_s": round(statistics.mean(off["fresh"]), 4),
        "mean_fresh_pool_on_s": round(statistics.mean(on["fresh"]), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate-render-s", type=float, default=0.9)
    parser.add_argument("--think-s", type=float, default=2.0, help="how long a user looks before asking again")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    result = run(args.simulate_render_s, args.think_s)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    within = result["p50_hit_s"] and result["p50_pool_on_s"] <= 2 * result["p50_hit_s"]
    print(f"p50 pool on / p50 hit = {result['p50_pool_on_s'] / result['p50_hit_s']:.2f}x "
          f"({'within' if within else 'NOT within'} the 2x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
