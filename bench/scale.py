"""Scale harness (issue 17): the api and a runner on the emulators, with a proxy that adds Firestore's real round
trip between them and the Firestore emulator, under scenarios a launch would see:

  hot-cue       N distinct users over S seconds ask for one new cue and ask again every second until they hold
                an image; then each marks it seen and asks once more (the next variant's job)
  tenant-flood  one tenant at R requests/s for S seconds, mixed hits (cues with variants) and misses (new cues)
  mixed         U users over S seconds on C cues drawn Zipf-distributed, asking until they hold an image

Reported (printed and written as JSON): Firestore reads and writes per request by endpoint and outcome (from the
gateway's ledger, per request), the peak writes in one second on any one document (refused writes included) and
which, writes refused by the runner and by the api (lost races, create conflicts), the runner's failed lease or
progress writes ("kept changing under us"), time to an image p50/p95 against the measured render time, 5xx count.

  python bench/scale.py [--scenario hot-cue|tenant-flood|mixed|all] [--users 200] [--seconds 10]
                        [--firestore-latency-ms 15] [--json OUT] [--code DIR]

`--code DIR` imports `functions`, `gpu_runner` and `schemas` from another checkout (e.g. the code before issue 17,
`git archive` of it) for a side-by-side "before" figure; the accounting (soul_common/firestore.py's ledger) and
this harness stay this checkout's. The runner renders with the tiny model (SOUL_TINY_MAX_SIDE/STEPS: 256 px, 10
steps by default: a render of a few seconds on a small shared machine; the issue measured 512 px and 30 steps
on a faster one)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-scale-key-0000001"
HEADERS = {"X-API-Key": KEY}


# ---- the latency proxy ---------------------------------------------------------------------------------------


class LatencyProxy:
    """A TCP proxy adding `latency_s` to every byte in each direction (order kept), on its own event loop."""

    def __init__(self, target_host: str, target_port: int, latency_s: float):
        self._target = (target_host, target_port)
        self._latency = latency_s
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)

    def start(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                delay = due - self._loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = self._loop.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((self._loop.time() + self._latency, data or None))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()


# ---- the stack -----------------------------------------------------------------------------------------------


class Harness:
    """Emulators, the proxy, one api (in-process) and one runner thread, all on one shared ledger."""

    def __init__(self, latency_ms: float, work: Path, code: Path | None = None):
        from emulators import EmulatorStack, StackConfig

        self.code = code
        self.stack = EmulatorStack(StackConfig(state_dir=work / "emulators", retry_min_backoff_s=0,
                                               retry_max_backoff_s=0))
        self.latency_ms = latency_ms
        self.work = work

    def __enter__(self) -> Harness:
        from soul_common.firestore import Ledger

        self.stack.start()
        self.stack.provision()
        env = self.stack.env()
        host, port = env["FIRESTORE_EMULATOR_HOST"].rsplit(":", 1)
        self.proxy = LatencyProxy(host, int(port), self.latency_ms / 1000).start()
        env["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{self.proxy.port}"
        os.environ.update(env)
        keys = self.work / "keys.json"
        keys.write_text(json.dumps([{"tenant": "bench", "role": "client", "key": KEY,
                                     "quota": {"requests_per_second": 1000, "burst": 2000, "jobs_per_hour": 100000,
                                               "variants_per_prompt_per_user_per_day": 1000}}]))
        os.environ["SOUL_API_KEYS_FILE"] = str(keys)
        os.environ.pop("SOUL_API_KEYS", None)
        os.environ.setdefault("SOUL_TINY_MAX_SIDE", "256")
        os.environ.setdefault("SOUL_TINY_MAX_STEPS", "10")
        self.ledger = Ledger(keep_timeline=True)
        self.client = self._api()
        return self

    def __exit__(self, *exc) -> None:
        self.proxy.stop()
        self.stack.stop()

    def _api(self):
        import flask

        from functions.adapters.clients import make_clients
        from functions.http.app import Api
        from functions.settings import FunctionsSettings

        settings = FunctionsSettings()
        api = Api(settings, make_clients(settings.project_id))
        api.services.db.ledger = self.ledger
        app = flask.Flask("bench-scale", static_folder=None)
        app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["GET", "POST", "DELETE"])
        self.api = api
        return app.test_client()

    def start_runner(self) -> subprocess.Popen:
        """One runner process (as deployed: its own interpreter), accounting into its own ledger, which it
        writes to a file when stopped (`_runner_process`)."""
        out = self.work / f"runner-{time.time_ns()}.json"
        env = {**os.environ, "SOUL_PULL_TIMEOUT_SECONDS": "1", "SOUL_RECONCILE_INTERVAL_SECONDS": "600",
               "SOUL_MODEL_CACHE_DIR": str(self.work / "models")}
        code = [str(self.code)] if self.code else []
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--runner-process", str(out),
                                    *(["--code", *code] if code else [])], env=env, start_new_session=True)
        process.ledger_file = out  # type: ignore[attr-defined]
        return process

    @staticmethod
    def stop_runner(process: subprocess.Popen) -> dict:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
        return json.loads(Path(process.ledger_file).read_text())  # type: ignore[attr-defined]

    def reset(self) -> None:
        """Empty Firestore between scenarios (the emulator's reset endpoint) and start a fresh ledger."""
        import urllib.request

        from soul_common.firestore import Ledger

        host = self.stack.env()["FIRESTORE_EMULATOR_HOST"]
        project = self.stack.env()["GCS_PROJECT_ID"]
        request = urllib.request.Request(f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents",
                                         method="DELETE")
        urllib.request.urlopen(request, timeout=30).read()
        self.fresh_ledger()

    def fresh_ledger(self) -> None:
        from soul_common.firestore import Ledger

        self.ledger = Ledger(keep_timeline=True)
        self.api.services.db.ledger = self.ledger


# ---- one request, accounted ----------------------------------------------------------------------------------


class Recorder:
    def __init__(self, harness: Harness):
        self.h = harness
        self.lock = threading.Lock()
        self.per_kind: dict[str, list[tuple[int, int]]] = defaultdict(list)  # kind -> [(reads, writes)]
        self.statuses: Counter = Counter()
        self.api_refused = 0

    def call(self, method: str, path: str, query: dict, kind_of) -> tuple[int, dict]:
        with self.h.ledger.tally() as tally:
            response = self.h.client.open(path, method=method, query_string=query, headers=HEADERS)
        body = response.get_json(silent=True) or {}
        kind = kind_of(response.status_code, body)
        with self.lock:
            self.per_kind[kind].append((tally.reads, tally.writes))
            self.statuses[response.status_code] += 1
            self.api_refused += getattr(tally, "contended", 0)
        return response.status_code, body

    def report(self) -> dict:
        out = {}
        for kind, costs in sorted(self.per_kind.items()):
            reads = [r for r, _ in costs]
            writes = [w for _, w in costs]
            out[kind] = {"requests": len(costs), "reads_mean": round(statistics.mean(reads), 2),
                         "reads_max": max(reads), "writes_mean": round(statistics.mean(writes), 2),
                         "writes_max": max(writes)}
        return out


def image_kind(status: int, body: dict) -> str:
    if status == 200:
        return "image:hit"
    if status == 202:
        return "image:queued"
    return f"image:{status}"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1], 2)


# ---- scenarios -----------------------------------------------------------------------------------------------


def _ask_until_ready(rec: Recorder, cue: str, user: str, deadline: float) -> tuple[float | None, str | None]:
    """Ask every second until the user holds an image: (seconds to it, the variant id)."""
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        status, body = rec.call("GET", "/image", {"soul_id": "nova", "cue": cue, "user_id": user}, image_kind)
        if status == 200:
            return time.perf_counter() - start, body["variant"]["variant_id"]
        if status not in (202, 429) and status < 500:
            return None, None
        task = body.get("task_id")
        next_ask = time.perf_counter() + 1.0
        if task:
            rec.call("GET", f"/tasks/{task}", {}, lambda s, b: f"task:{b.get('status', s)}")
        time.sleep(max(0.0, next_ask - time.perf_counter()))
    return None, None


def hot_cue(h: Harness, users: int, seconds: float, pool: ThreadPoolExecutor) -> dict:
    rec = Recorder(h)
    cue = f"hot cue {random.randrange(10**9)}"
    deadline = time.perf_counter() + seconds + 240

    def one(i: int) -> float | None:
        time.sleep(i * seconds / users)
        user = f"hot-user-{i}"
        took, variant = _ask_until_ready(rec, cue, user, deadline)
        if variant is not None:
            rec.call("POST", "/image/mark-seen", {"variant_id": variant, "user_id": user}, lambda s, b: f"mark_seen:{s}")
            rec.call("GET", "/image", {"soul_id": "nova", "cue": cue, "user_id": user},
                     lambda s, b: "image:after_seen" if s < 300 else f"image:after_seen:{s}")
        return took

    times = list(pool.map(one, range(users)))
    return {"served": sum(t is not None for t in times), "users": users, "times": [t for t in times if t is not None],
            "recorder": rec}


def tenant_flood(h: Harness, rate: float, seconds: float, pool: ThreadPoolExecutor) -> dict:
    rec = Recorder(h)
    warm = [f"flood warm {i}" for i in range(20)]
    for cue in warm:  # these get a variant first: the hits
        _ask_until_ready(rec, cue, "seed-user", time.perf_counter() + 240)
    rec = Recorder(h)
    start = time.perf_counter()
    futures = []
    for n in range(int(rate * seconds)):
        due = start + n / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        hit = n % 2 == 0
        cue = random.choice(warm) if hit else f"flood new {n}"
        futures.append(pool.submit(rec.call, "GET", "/image",
                                   {"soul_id": "nova", "cue": cue, "user_id": f"flood-user-{n % 50}"}, image_kind))
    for future in futures:
        future.result()
    return {"offered_per_s": rate, "seconds": seconds, "recorder": rec, "times": []}


def mixed(h: Harness, users: int, seconds: float, cues: int, pool: ThreadPoolExecutor) -> dict:
    rec = Recorder(h)
    weights = [1 / (k + 1) for k in range(cues)]
    deadline = time.perf_counter() + seconds + 240
    base = random.randrange(10**9)

    def one(i: int) -> float | None:
        time.sleep(i * seconds / users)
        cue = f"mixed {base} {random.choices(range(cues), weights)[0]}"
        return _ask_until_ready(rec, cue, f"mixed-user-{i}", deadline)[0]

    times = list(pool.map(one, range(users)))
    return {"served": sum(t is not None for t in times), "users": users, "times": [t for t in times if t is not None],
            "recorder": rec}


# ---- the run -------------------------------------------------------------------------------------------------


def _render_seconds(h: Harness) -> float | None:
    """The mean GPU-seconds the runner recorded on the scenario's succeeded image jobs (the render time)."""
    from google.cloud import firestore

    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    values = [d.to_dict().get("metrics", {}).get("gpu_seconds") for d in
              db.collection("jobs").where(filter=firestore.FieldFilter("status", "==", "succeeded")).stream()
              if not d.to_dict().get("request", {}).get("cue", "").startswith("warm-up")]
    values = [v for v in values if v]
    return round(statistics.mean(values), 2) if values else None


def _runner_failures(h: Harness) -> dict:
    from google.cloud import firestore

    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    jobs = [d.to_dict() for d in db.collection("jobs").stream()]
    return {"jobs": len(jobs), "succeeded": sum(j.get("status") == "succeeded" for j in jobs),
            "max_attempts": max((j.get("attempts", 0) for j in jobs), default=0),
            "job_doc_bytes_max": max((len(json.dumps(j, default=str)) for j in jobs), default=0)}


def run_scenario(h: Harness, name: str, args) -> dict:
    h.reset()
    # A first image makes the runner load its model: time to an image then measures serving, not start-up.
    runner = h.start_runner()
    _ask_until_ready(Recorder(h), f"warm-up {random.randrange(10**9)}", "warm-up-user", time.perf_counter() + 600)
    time.sleep(2)
    h.fresh_ledger()
    mark = time.time()
    pool = ThreadPoolExecutor(max_workers=max(64, args.users + 8))
    started = time.perf_counter()
    try:
        if name == "hot-cue":
            result = hot_cue(h, args.users, args.seconds, pool)
        elif name == "tenant-flood":
            result = tenant_flood(h, args.rate, args.seconds, pool)
        else:
            result = mixed(h, args.users, args.seconds, args.cues, pool)
    finally:
        runner_ledger = h.stop_runner(runner)
        pool.shutdown(wait=False)
    rec: Recorder = result.pop("recorder")
    times = result.pop("times")
    timeline = Counter(h.ledger.timeline)
    for second, path, n in runner_ledger["timeline"]:
        if second >= int(mark):  # the warm-up's writes are not the scenario's
            timeline[(second, path)] += n
    peaks: dict[str, int] = {}
    for (_, path), n in timeline.items():
        peaks[path] = max(peaks.get(path, 0), n)
    hottest = sorted(peaks.items(), key=lambda pn: -pn[1])[:6]
    job_docs = {p: n for p, n in peaks.items() if p.count("/") == 1 and p.startswith("jobs/")}
    render = _render_seconds(h)
    return {
        "scenario": name, **result, "wall_s": round(time.perf_counter() - started, 1),
        "firestore_latency_ms_each_way": h.latency_ms,
        "per_request": rec.report(),
        "peak_writes_per_second": [{"doc": p, "writes": n} for p, n in hottest],
        "peak_writes_per_second_on_a_job_document": max(job_docs.values(), default=0),
        "refused_writes": {"api": rec.api_refused, "api_by_collection": dict(h.ledger.contention),
                           "runner": sum(runner_ledger["contention"].values()),
                           "runner_by_collection": runner_ledger["contention"]},
        "runner_lost_races": runner_ledger["gave_up"],
        "time_to_image_s": {"p50": pct(times, 50), "p95": pct(times, 95), "max": pct(times, 100)},
        "render_seconds": render, "status_5xx": sum(n for s, n in rec.statuses.items() if s >= 500),
        "statuses": {str(k): v for k, v in sorted(rec.statuses.items())},
        "jobs": _runner_failures(h),
    }


def _runner_process(out: Path) -> int:
    """Inside the runner process: a real Runner, its ledger kept per second, written to `out` on SIGTERM; every
    write it gave up on after its optimistic retries ("kept changing under us") is counted."""
    from gpu_runner.adapters import jobstore
    from gpu_runner.adapters.clients import make_clients
    from gpu_runner.settings import RunnerSettings
    from gpu_runner.worker import Runner
    from soul_common.firestore import Ledger
    from soul_common.logs import configure_logging

    configure_logging("WARNING", component="bench-runner")
    settings = RunnerSettings()
    runner = Runner(settings, make_clients(settings))
    ledger = Ledger(keep_timeline=True)
    runner._db.ledger = ledger
    gave_up = Counter()
    original = jobstore.JobStore._conditional

    def counted(store, job_id, change, *args, **kwargs):
        try:
            return original(store, job_id, change, *args, **kwargs)
        except jobstore.TransientError as exc:
            if "kept changing" in str(exc):
                gave_up["n"] += 1
            raise

    jobstore.JobStore._conditional = counted
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    runner.run()
    out.write_text(json.dumps({"timeline": [[s, p, n] for (s, p), n in ledger.timeline.items()],
                               "contention": dict(ledger.contention), "gave_up": gave_up["n"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="all", choices=["hot-cue", "tenant-flood", "mixed", "all"])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="tenant-flood: requests/s")
    parser.add_argument("--cues", type=int, default=20, help="mixed: distinct cues")
    parser.add_argument("--firestore-latency-ms", type=float, default=15.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--code", type=Path, default=None, help="import functions/gpu_runner/schemas from here")
    parser.add_argument("--runner-process", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
    else:
        sys.path.insert(0, str(REPO))
    if args.runner_process is not None:
        return _runner_process(args.runner_process)
    from soul_common.logs import configure_logging

    configure_logging("WARNING", component="bench")
    work = Path(tempfile.mkdtemp(prefix="soul-bench-scale-"))
    names = ["hot-cue", "tenant-flood", "mixed"] if args.scenario == "all" else [args.scenario]
    results = []
    with Harness(args.firestore_latency_ms, work, args.code) as harness:
        for name in names:
            results.append(run_scenario(harness, name, args))
            print(json.dumps(results[-1], indent=1), flush=True)
            if args.json is not None:
                args.json.write_text(json.dumps({"code": str(args.code or "this checkout"), "results": results},
                                                indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
