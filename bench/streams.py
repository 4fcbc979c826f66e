"""Benchmark of live progress for thousands (issues 18 and 19) on the real emulators, side by side in one run:

  hit p95   `GET /image` answered from the dedup index (a hit) by the deployed api target (`api_async`, served by
            functions-framework as a process with the Terraform's 16 router threads), with no follower, then
            while `followers` event streams follow one hot job whose progress changes twice a second, then with
            none again: p50/p95 of each and the ratio of the p95 under followers to the p95 without
  reads/s   Firestore reads per second the shared watcher makes for one followed job with 1 follower and with
            `followers` followers (the same hub code, in this process, counted by the gateway's ledger)

`python bench/streams.py [followers] [samples]` (defaults 1000 200)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.stack and the repository's packages, run as a file or with -m
KEY = "bench-streams-key-000001"
HEADERS = {"X-API-Key": KEY}
HIT = {"soul_id": "nova", "cue": "streams penguin", "user_id": "viewer"}
HOT = {"soul_id": "nova", "cue": "hot cue everyone follows", "user_id": "fan"}


def run(followers: int, samples: int) -> dict:
    from bench.stack import emulated_stack

    with emulated_stack("streams", [{"tenant": "bench", "role": "client", "key": KEY}]) as work:
        os.environ["SOUL_QUOTAS_ENABLED"] = "false"  # measure the hit and the streams, not the rate limiter
        cap = str(followers + 100)
        os.environ["SOUL_SSE_MAX_STREAMS_PER_TENANT"] = os.environ["SOUL_SSE_MAX_STREAMS_PER_INSTANCE"] = cap
        with _server(work) as base:
            task_id, job_ref = _setup(base)
            return {"followers": followers, "samples": samples,
                    "hit": _hits(base, task_id, job_ref, followers, samples),
                    "reads": _reads(task_id, job_ref, followers)}


class _server:
    """`api_async` as deployed, in its own process group."""

    def __init__(self, work: Path):
        self._log = (work / "api.log").open("wb")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    def __enter__(self) -> str:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", "api_async", "--source",
             str(REPO / "functions" / "main.py"), "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env={**os.environ, "THREADS": "16", "LOG_LEVEL": "WARNING"}, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            except requests.ConnectionError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the api server did not start")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        os.killpg(self._process.pid, signal.SIGTERM)
        self._process.wait(timeout=20)
        self._log.close()


def _setup(base: str):
    """A dedup hit (a variant of HIT exists, unseen by `viewer`) and a hot running job (HOT's) to follow."""
    from google.cloud import firestore

    from gpu_runner.adapters.jobstore import add_variant_writes
    from schemas import names
    from schemas._base import utcnow
    from schemas.documents import VariantDoc
    from schemas.ids import new_ulid
    from soul_common.firestore import Db

    first = requests.get(f"{base}/image", params=HIT, headers=HEADERS, timeout=30)
    assert first.status_code in (200, 202), first.text
    pk = first.json()["pk_id"]
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    variant_id = new_ulid()
    batch = Db(db).batch()
    add_variant_writes(batch, VariantDoc(
        variant_id=variant_id, pk=pk, soul_id="nova", variant_index=0,
        object=names.image_object("nova", pk, variant_id), width=64, height=64, seed=0, bytes=10,
        job_id=f"img-{pk}-0", cue=HIT["cue"], created_at=utcnow()), utcnow())
    batch.commit()
    task_id = requests.get(f"{base}/image", params=HOT, headers=HEADERS, timeout=30).json()["task_id"]
    job_ref = db.collection(names.JOBS).document(task_id)
    job_ref.update({"status": "running", "stage": "denoise", "progress": 0.01, "started_at": utcnow()})
    return task_id, job_ref


class _progress:
    """Writes the hot job's progress twice a second, as a runner's denoise steps would."""

    def __init__(self, job_ref):
        self._job, self._stop = job_ref, threading.Event()

    def __enter__(self):
        def write():
            step = 0
            while not self._stop.wait(0.5):
                step += 1
                self._job.update({"progress": round(0.01 + (step % 98) / 100, 2)})
        self._thread = threading.Thread(target=write, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class _followers:
    """`count` raw event-stream connections, read by one event loop in a thread of this process."""

    def __init__(self, base: str, task_id: str, count: int):
        host, port = base.removeprefix("http://").split(":")
        self._addr, self._task, self._count = (host, int(port)), task_id, count
        self.admitted = self.answered = self.frames = 0
        self.refused: dict[str, int] = {}
        self._ready = threading.Event()

    def __enter__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("the followers did not connect")
        return self

    async def _main(self):
        self._done = asyncio.Event()
        tasks = []
        for _ in range(self._count):
            tasks.append(asyncio.ensure_future(self._one()))
            await asyncio.sleep(0.002)  # a crowd arriving, not one SYN flood
        while self.answered < self._count and not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        self._ready.set()
        await self._done.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self):
        try:
            reader, writer = await asyncio.open_connection(*self._addr)
            writer.write(f"GET /tasks/{self._task}/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\r\n"
                         .encode())
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.answered += 1
            self.refused[type(exc).__name__] = self.refused.get(type(exc).__name__, 0) + 1
            return
        self.answered += 1
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 200 " not in status:
            self.refused[status] = self.refused.get(status, 0) + 1
            writer.close()
            return
        self.admitted += 1
        try:
            while chunk := await reader.read(65536):
                self.frames += chunk.count(b"event: update")
        finally:
            writer.close()

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(timeout=60)


def _timed_hits(base: str, samples: int) -> list[float]:
    session = requests.Session()
    out = []
    for i in range(samples + 5):
        began = time.perf_counter()
        response = session.get(f"{base}/image", params=HIT, headers=HEADERS, timeout=30)
        elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code == 200 and response.json()["status"] == "ready", response.text
        if i >= 5:
            out.append(elapsed)
    return out


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2)}


def _hits(base: str, task_id: str, job_ref, followers: int, samples: int) -> dict:
    before = _timed_hits(base, samples)
    with _progress(job_ref), _followers(base, task_id, followers) as crowd:
        during = _timed_hits(base, samples)
        admitted, frames, refused = crowd.admitted, crowd.frames, crowd.refused
    after = _timed_hits(base, samples)
    none = _stats(before + after)
    loaded = _stats(during)
    return {"no_followers": none, "before": _stats(before), "after": _stats(after), "with_followers": loaded,
            "admitted": admitted, "refused": refused, "updates_received": frames,
            "p95_ratio": round(loaded["p95_ms"] / none["p95_ms"], 2)}


def _reads(task_id: str, job_ref, followers: int, seconds: float = 5.0) -> dict:
    """Reads/s of the shared watcher (this process's own hub, the same code) with 1 and `followers` followers."""
    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.http.sse import open_stream
    from functions.settings import FunctionsSettings

    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    hub, ledger = api.services.progress, api.services.db.ledger

    async def follow(count: int) -> None:
        async def one():
            stream = open_stream(hub, task_id, "bench", settings)
            try:
                async with asyncio.timeout(seconds):
                    async for _ in stream:
                        pass
            except TimeoutError:
                pass
        await asyncio.gather(*(one() for _ in range(count)))

    out = {}
    with _progress(job_ref):
        for count in (1, followers):
            start = sum(ledger.reads.values())
            began = time.perf_counter()
            asyncio.run(follow(count))
            out[f"reads_per_s_{count}"] = round((sum(ledger.reads.values()) - start) / (time.perf_counter() - began),
                                                2)
    return out


def main(argv: list[str]) -> int:
    followers = int(argv[0]) if argv else 1000
    samples = int(argv[1]) if len(argv) > 1 else 200
    print(json.dumps(run(followers, samples), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
