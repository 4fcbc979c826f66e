"""A fleet of real runner processes for the autoscaler and chaos tests: supervised like `make run` supervises
them, pointed at the session's emulators, plus the checks both suites make on the outcome."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from emulators.supervisor import RestartPolicy, Supervisor
from schemas import names

# Short leases and a fast reconciler, so that faults are recovered from in seconds, not minutes.
FAST_RUNNER = {
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "SOUL_LEASE_SECONDS": "5",
    "SOUL_HEARTBEAT_SECONDS": "0.5",
    "SOUL_RECONCILE_INTERVAL_SECONDS": "1",
    "SOUL_UNPUBLISHED_AFTER_SECONDS": "2",
    "SOUL_REQUEUE_QUEUED_AFTER_SECONDS": "8",
    "SOUL_PULL_TIMEOUT_SECONDS": "1",
    "SOUL_PROGRESS_INTERVAL_SECONDS": "0.1",
    "SOUL_SHUTDOWN_GRACE_SECONDS": "5",
}


class Fleet:
    def __init__(self, logs: Path, model_cache: Path, **settings: str):
        self.logs = logs
        self.env = {**os.environ, **FAST_RUNNER, "SOUL_MODEL_CACHE_DIR": str(model_cache), **settings}
        self.supervisor = Supervisor(RestartPolicy(initial_backoff_s=0.5, max_backoff_s=2.0, stop_grace_s=15.0))

    def start_runner(self, name: str) -> None:
        self.supervisor.add(name, [sys.executable, "-m", "gpu_runner", "--warm"], self.logs / f"{name}.log",
                            marker="gpu_runner", env={**self.env, "SOUL_RUNNER_ID": name})

    def pid(self, name: str) -> int | None:
        popen = self.supervisor.popen(name)
        return popen.pid if popen is not None and popen.poll() is None else None

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.logs.glob("*.log")))

    def stop(self) -> list[int]:
        """Stop every runner; the pids that were running (checked gone by the caller)."""
        pids = [pid for name in self.supervisor.all_names() if (pid := self.pid(name))]
        self.supervisor.stop_all(grace_s=10.0)
        return pids


def jobs(db: firestore.Client) -> dict[str, dict]:
    return {snap.id: snap.to_dict() for snap in db.collection(names.JOBS).stream()}


def objects_per_variant() -> Counter:
    client = storage.Client(project=os.environ["GCS_PROJECT_ID"], credentials=AnonymousCredentials())
    blobs = client.bucket(os.environ["GCS_BUCKET_NAME"]).list_blobs(prefix="images/")
    return Counter(Path(blob.name).stem for blob in blobs)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
