"""Benchmark of the pipelined runner on the real emulators: drains a backlog of K image jobs with N runner
processes and reports the device duty cycle (render time / wall time), jobs/s and overhead per job.

  python bench/runner.py --simulate-render-s S --jobs K --runners N --json OUT [--before] [--max-batch B]
  python bench/runner.py --suite --json OUT     # every configuration of issue 7, side by side in one run

`--simulate-render-s S` is a BENCHMARK-ONLY stand-in for the device: in the runner processes this script starts,
it replaces only the pipeline call (`gpu_runner.pipelines.sdxl.render_images`) with a sleep of S seconds per image (no batch
gain is assumed) returning a full-size 1024x1024 image, so PNG encoding and upload are paid at full size. Results
say `"simulated_device_time": true`. The runner itself has no such mode. Without it the tiny model renders and the
render time is the one the runner measured (its GPU-seconds). `--before` runs the runner as it was before the
pipeline: batch 1, no look-ahead (a job is claimed only once the device is idle)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIM_SIDE = 1024


# --- inside a runner process ---------------------------------------------------------------------------------------


def _simulated_worker(render_s: float) -> int:
    """A real runner process whose pipeline call is a sleep (benchmark only)."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    from PIL import Image

    from gpu_runner import __main__ as runner_main
    from gpu_runner.pipelines import sdxl

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, SIM_SIDE, dtype=np.float32)
    pixels = (ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.3 + rng.normal(0, 6, (SIM_SIDE, SIM_SIDE, 3)))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))  # compresses like a photo, not like noise

    def simulated_render_images(pipe, specs, on_step=None):
        steps = specs[0].steps
        for step in range(steps):
            time.sleep(render_s * len(specs) / steps)
            if on_step is not None:
                on_step(step + 1, steps)
        return [image.copy() for _ in specs]

    sdxl.render_images = simulated_render_images
    return runner_main.main(["--warm"])


# --- the driver -------------------------------------------------------------------------------------------------------


def _runner_env(stack_env: dict, work: Path, name: str, before: bool, max_batch: int) -> dict:
    return {
        **os.environ, **stack_env,
        "HF_HUB_OFFLINE": "1",
        "SOUL_MODEL_CACHE_DIR": str(work / "models"),
        "SOUL_RUNNER_ID": name,
        "SOUL_HEARTBEAT_SECONDS": "2",
        "SOUL_PROGRESS_INTERVAL_SECONDS": "1",
        "SOUL_PULL_TIMEOUT_SECONDS": "2",
        "SOUL_RECONCILE_INTERVAL_SECONDS": "60",
        "SOUL_LOOKAHEAD": "0" if before else str(max(1, max_batch)),
        "SOUL_MAX_BATCH": "1" if before else str(max_batch),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }


def measure(stack, work: Path, *, render_s: float | None, jobs: int, runners: int, before: bool,
            max_batch: int, tag: str) -> dict:
    from google.cloud import firestore

    from schemas import names

    stack.reset_firestore()
    env = stack.env()
    os.environ.update(env)
    from functions_framework import create_app

    client = create_app(target="api", source=str(REPO / "functions" / "main.py")).test_client()
    job_ids = []
    for i in range(jobs):
        queued = client.get("/image", query_string={"soul_id": "nova", "cue": f"{tag} cue {i}", "user_id": "b"})
        assert queued.status_code == 202, queued.json
        job_ids.append(queued.json["task_id"])
    command = ([sys.executable, str(Path(__file__)), "--_worker", str(render_s)] if render_s is not None
               else [sys.executable, "-m", "gpu_runner", "--warm"])
    processes = [
        subprocess.Popen(command, cwd=REPO, env=_runner_env(env, work, f"{tag}-r{i}", before, max_batch),
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(work / f"{tag}-r{i}.log", "wb"))
        for i in range(runners)
    ]
    db = firestore.Client(project=env["GCS_PROJECT_ID"])
    try:
        deadline = time.monotonic() + 600
        while True:
            docs = [s.to_dict() for s in db.collection(names.JOBS).stream()]
            if sum(d["status"] == "succeeded" for d in docs) == jobs:
                break
            assert time.monotonic() < deadline, "the backlog did not drain in 10 minutes"
            assert all(p.poll() is None for p in processes), f"a runner died; see {work}"
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
    wall = (max(d["finished_at"] for d in docs) - min(d["started_at"] for d in docs)).total_seconds()
    render_total = (render_s * jobs if render_s is not None
                    else sum(d["metrics"]["gpu_seconds"] for d in docs))
    return {
        "config": tag,
        "simulated_device_time": render_s is not None,
        "simulated_render_s": render_s,
        "runners": runners,
        "jobs": jobs,
        "mode": "before (batch 1, no look-ahead)" if before else f"pipelined (max_batch {max_batch})",
        "max_batch": 1 if before else max_batch,
        "wall_s": round(wall, 3),
        "render_s_total": round(render_total, 3),
        "duty_cycle": round(render_total / (runners * wall), 4),
        "jobs_per_s": round(jobs / wall, 3),
        "overhead_ms_per_job": round((runners * wall - render_total) / jobs * 1000, 1),
        "batch_sizes": sorted({d["metrics"]["batch_size"] for d in docs}),
    }


SUITE = [  # (tag, render_s, jobs, runners, before, max_batch)
    ("s0.9-before", 0.9, 16, 1, True, 1),
    ("s0.9-after", 0.9, 16, 1, False, 1),
    ("s0.5-before", 0.5, 24, 1, True, 1),
    ("s0.5-after", 0.5, 24, 1, False, 1),
    ("s0.9-n2", 0.9, 32, 2, False, 1),
    ("s0.9-n4", 0.9, 64, 4, False, 1),
    ("tiny-b1", None, 16, 1, False, 1),
    ("tiny-b2", None, 16, 1, False, 2),
    ("tiny-b4", None, 16, 1, False, 4),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulate-render-s", type=float, default=None)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--runners", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--before", action="store_true", help="batch 1, no look-ahead")
    parser.add_argument("--suite", action="store_true", help="every configuration of issue 7 in one run")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--_worker", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker is not None:
        return _simulated_worker(args._worker)

    sys.path.insert(0, str(REPO))
    from emulators import EmulatorStack, StackConfig

    work = Path(tempfile.mkdtemp(prefix="soul-bench-runner-"))
    stack = EmulatorStack(StackConfig(state_dir=work / "emulators", retry_min_backoff_s=0, retry_max_backoff_s=0))
    configs = SUITE if args.suite else [
        ("single", args.simulate_render_s, args.jobs, args.runners, args.before, args.max_batch)
    ]
    results = []
    stack.start()
    try:
        stack.provision()
        for tag, render_s, jobs, runners, before, max_batch in configs:
            result = measure(stack, work, render_s=render_s, jobs=jobs, runners=runners, before=before,
                             max_batch=max_batch, tag=tag)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        stack.stop()
    if args.json:
        args.json.write_text(json.dumps(results if args.suite else results[0], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
