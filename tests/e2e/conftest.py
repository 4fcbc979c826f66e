"""Starts the whole stack as processes, exactly as `make run` does (`python -m emulators.devstack`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from emulators._process import free_ports

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret (the Standard Webhooks spec's example)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with devstack(tmp_path_factory) as started:
        yield started


@contextlib.contextmanager
def devstack(tmp_path_factory, label: str = "stack", **extra_env: str):
    """`python -m emulators.devstack` on free ports, ready; `extra_env` adds to (or overrides) its environment."""
    workdir = tmp_path_factory.mktemp(label)
    api_port, ingest_port, reconcile_port, webhooks_port, receiver_port = free_ports("127.0.0.1", 5)
    env = {
        **os.environ,
        "PORT": str(api_port),
        "INGEST_PORT": str(ingest_port),
        "RECONCILE_PORT": str(reconcile_port),
        "RECONCILE_INTERVAL_S": "2",
        "WEBHOOKS_PORT": str(webhooks_port),
        "SOUL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SOUL_WEBHOOK_LOOPBACK_PORTS": str(receiver_port),  # the one test receiver webhooks may reach
        "SOUL_MODEL_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "models"),
        # Slow the tiny model down to the catalog's step count so a job is visibly running for a while.
        "SOUL_TINY_MAX_STEPS": "30",
        "SOUL_HEARTBEAT_SECONDS": "0.3",
        "SOUL_PROGRESS_INTERVAL_SECONDS": "0.2",
        **extra_env,
    }
    for name in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        env.pop(name, None)
    log = open(workdir / "devstack.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.devstack"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"devstack exited: {(workdir / 'devstack.log').read_text()[-3000:]}")
        try:
            if requests.get(f"{base}/ready", timeout=2).status_code == 200 and b"Soul is running" in (
                workdir / "devstack.log"
            ).read_bytes():
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"devstack not ready: {(workdir / 'devstack.log').read_text()[-3000:]}")
        time.sleep(0.3)
    emulator_env = json.loads((workdir / ".soul" / "emulators" / "env.json").read_text())
    yield {"base": base, "env": emulator_env, "workdir": workdir, "process": process,
           "reconcile": f"http://127.0.0.1:{reconcile_port}/", "receiver_port": receiver_port}
    os.killpg(process.pid, signal.SIGTERM)
    try:
        assert process.wait(timeout=60) == 0
    finally:
        log.close()
    # Everything it started is gone: nothing listens on the stack's ports any more.
    ports = [api_port, ingest_port, reconcile_port, webhooks_port] + [
        int(emulator_env[k].rsplit(":", 1)[1]) for k in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST",
                                                          "STORAGE_EMULATOR_HOST")
    ]
    listening = [p for p in ports if _listening(p)]
    assert not listening, f"still listening after SIGTERM: {listening}"


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
