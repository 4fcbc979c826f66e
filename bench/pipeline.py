"""Benchmark of the image path on the local stack: request -> downloadable PNG on the tiny SDXL, and what the
pipeline adds around the bare render. Everything runs side by side in one process on the same emulators, so
the ratios hold on a noisy shared machine even when the absolute figures move.

Measures, over N distinct cues (each a cache miss):
  render      the bare `render_image` call (same size and steps as the runner uses)
  end_to_end  GET /image -> runner (in-process, synchronous pull) -> GET /tasks -> signed-URL download
  hit         GET /image for a cue whose variant exists (the dedup answer, no job)
  miss        GET /image that creates a job (create() + publish)
and reports medians, p95 and the ratios end_to_end / render and miss / hit."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(0.95 * len(ordered))) - 1)]


def run(n: int = 12) -> dict:
    from emulators import EmulatorStack, StackConfig

    work = Path(tempfile.mkdtemp(prefix="soul-bench-"))
    stack = EmulatorStack(StackConfig(state_dir=work / "emulators", retry_min_backoff_s=0, retry_max_backoff_s=0))
    stack.start()
    try:
        stack.provision()
        os.environ.update(stack.env())
        return _measure(n, work)
    finally:
        stack.stop()


def _measure(n: int, work: Path) -> dict:
    from functions_framework import create_app

    from gpu_runner.adapters.clients import make_clients
    from gpu_runner.pipelines.host import ModelHost
    from gpu_runner.pipelines.sdxl import RenderSpec, render_image
    from gpu_runner.settings import RunnerSettings
    from gpu_runner.worker import Runner

    client = create_app(target="api", source=str(REPO / "functions" / "main.py")).test_client()
    settings = RunnerSettings(model_cache_dir=work / "models", pull_timeout_seconds=2.0, heartbeat_seconds=5.0,
                              reconcile_interval_seconds=60)
    models = ModelHost(settings)
    runner = Runner(settings, make_clients(settings), models)
    models.sdxl()  # load once, outside every timing
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()

    spec = RenderSpec(prompt="portrait of nova, penguin", negative_prompt="blurry", width=256, height=256,
                      steps=settings.tiny_max_steps, guidance=7.0, seed=1)
    render_image(models.sdxl(), spec)  # warm-up
    render, end_to_end, hit, miss = [], [], [], []
    for i in range(n):
        started = time.perf_counter()
        render_image(models.sdxl(), spec)
        render.append(time.perf_counter() - started)

        started = time.perf_counter()
        queued = client.get("/image", query_string={"soul_id": "nova", "cue": f"bench cue {i}", "user_id": "b"})
        miss.append(time.perf_counter() - started)
        assert queued.status_code == 202, queued.json
        task_id = queued.json["task_id"]
        while True:
            task = client.get(f"/tasks/{task_id}").json
            if task["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.01)
        assert task["status"] == "succeeded", task
        png = requests.get(task["result"]["variant"]["url"], timeout=10)
        assert png.content.startswith(b"\x89PNG")
        end_to_end.append(time.perf_counter() - started)

        started = time.perf_counter()
        ready = client.get("/image", query_string={"soul_id": "nova", "cue": f"bench cue {i}", "user_id": "b"})
        hit.append(time.perf_counter() - started)
        assert ready.status_code == 200
    runner.stop()
    thread.join(timeout=30)
    med = statistics.median
    return {
        "n": n,
        "render_s": (med(render), _p95(render)),
        "end_to_end_s": (med(end_to_end), _p95(end_to_end)),
        "miss_s": (med(miss), _p95(miss)),
        "hit_s": (med(hit), _p95(hit)),
        "end_to_end_over_render": med(end_to_end) / med(render),
        "miss_over_hit": med(miss) / med(hit),
    }


def report(result: dict) -> str:
    rows = [
        ("bare render (tiny SDXL, 256x256, 4 steps)", result["render_s"]),
        ("request -> downloadable PNG", result["end_to_end_s"]),
        ("GET /image, miss (job created + published)", result["miss_s"]),
        ("GET /image, hit (unseen variant, signed URL)", result["hit_s"]),
    ]
    lines = [f"### Image pipeline (n={result['n']} requests, each a cache miss)", "",
             "| measure | median (ms) | p95 (ms) |", "|---|---:|---:|"]
    lines += [f"| {name} | {m * 1000:.1f} | {p * 1000:.1f} |" for name, (m, p) in rows]
    lines += ["", f"- request -> PNG / bare render: **{result['end_to_end_over_render']:.2f}x**",
              f"- miss / hit latency: **{result['miss_over_hit']:.2f}x**"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else 12)))
