"""Keeps local processes running the way systemd keeps the runner running on a VM: a process that exits is
started again after a backoff that doubles on each quick failure (reset once it has stayed up a while), and every
exit and restart is logged. Processes run in their own process groups and are only ever signalled by the group
recorded when they were started. `retire()` stops one for good (SIGTERM, SIGKILL after a grace): the local
autoscaler's scale-in. Used by `make run` (emulators.devstack) and by the chaos suite."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from emulators import _process
from emulators._process import ProcessRecord

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    reset_after_s: float = 60.0  # up this long = healthy: the next failure starts from the initial backoff again
    stop_grace_s: float = 40.0  # after SIGTERM (the runner's drain budget is 30 s), then SIGKILL


def next_backoff(previous_s: float | None, uptime_s: float, policy: RestartPolicy) -> float:
    """The wait before the next start of a process that just exited after `uptime_s`. Pure."""
    if previous_s is None or uptime_s >= policy.reset_after_s:
        return policy.initial_backoff_s
    return min(previous_s * 2, policy.max_backoff_s)


@dataclass
class _Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | Callable[[int], Mapping[str, str]] | None
    log_path: Path
    marker: str
    popen: subprocess.Popen | None = None
    record: ProcessRecord | None = None
    started_at: float = 0.0
    backoff_s: float | None = None
    restart_at: float | None = None
    restarts: int = 0
    retiring_since: float | None = None  # SIGTERM sent: not restarted, SIGKILLed after the grace
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, policy: RestartPolicy = RestartPolicy(), clock: Callable[[], float] = time.monotonic):
        self._policy = policy
        self._clock = clock
        self._children: dict[str, _Child] = {}
        self.retired: list[tuple[str, int | None]] = []  # (name, exit code) of every retired process

    def add(self, name: str, argv: Sequence[str], log_path: Path, *, marker: str,
            env: Mapping[str, str] | Callable[[int], Mapping[str, str]] | None = None,
            ) -> tuple[subprocess.Popen, ProcessRecord]:
        """Start `argv` now and keep it running until `retire()` or `stop_all()`. `env` may be a function of the
        restart count (the chaos suite gives every start its own failpoint seed)."""
        if name in self._children:
            raise ValueError(f"{name} is already supervised")
        child = _Child(name, list(argv), env, log_path, marker)
        self._children[name] = child
        self._start(child)
        assert child.popen is not None and child.record is not None
        return child.popen, child.record

    def _start(self, child: _Child) -> None:
        env = child.env(child.restarts) if callable(child.env) else child.env
        child.popen, child.record = _process.spawn(
            child.name, child.argv, child.log_path, child.marker, env, append=child.restarts > 0
        )
        child.started_at = self._clock()
        child.restart_at = None

    def tick(self) -> None:
        """Reap exits, restart what is due, finish retirements. Call it often (the devstack loop: every 0.5 s)."""
        now = self._clock()
        for child in list(self._children.values()):
            if child.retiring_since is not None:
                self._tick_retiring(child, now)
            elif child.popen is not None and child.popen.poll() is not None:
                code = child.popen.returncode
                child.exits.append(code)
                uptime = now - child.started_at
                child.backoff_s = next_backoff(child.backoff_s, uptime, self._policy)
                child.restart_at = now + child.backoff_s
                child.popen = None
                log.warning("process_exited", process=child.name, exit_code=code, uptime_s=round(uptime, 1),
                            restart_in_s=child.backoff_s, log=str(child.log_path))
            elif child.popen is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
                log.info("process_restarted", process=child.name, restarts=child.restarts,
                         pid=child.popen.pid if child.popen else None)

    def _tick_retiring(self, child: _Child, now: float) -> None:
        assert child.retiring_since is not None
        if child.popen is None or child.popen.poll() is not None:
            del self._children[child.name]
            code = child.popen.returncode if child.popen is not None else None
            self.retired.append((child.name, code))
            log.info("process_retired", process=child.name, exit_code=code)
        elif now - child.retiring_since > self._policy.stop_grace_s:
            _signal_group(child, signal.SIGKILL)

    def retire(self, name: str) -> None:
        """Stop `name` for good: SIGTERM now (a runner finishes or releases its job), SIGKILL after the grace."""
        child = self._children[name]
        if child.retiring_since is not None:
            return
        child.retiring_since = self._clock()
        if child.popen is not None:
            _signal_group(child, signal.SIGTERM)
        log.info("process_retiring", process=child.name)

    def names(self) -> list[str]:
        """Every supervised name that is not being retired (running, or waiting to be restarted)."""
        return [c.name for c in self._children.values() if c.retiring_since is None]

    def all_names(self) -> list[str]:
        return list(self._children)

    def popen(self, name: str) -> subprocess.Popen | None:
        """The live process of `name` now (None while it waits for a restart)."""
        child = self._children.get(name)
        return child.popen if child is not None else None

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    def stop_all(self, grace_s: float = 15.0) -> None:
        groups = [(c.record.pgid, c.popen) for c in self._children.values()
                  if c.popen is not None and c.record is not None]
        self._children.clear()
        _process.stop_groups(groups, grace_s=grace_s)


def _signal_group(child: _Child, sig: signal.Signals) -> None:
    assert child.record is not None
    try:
        os.killpg(child.record.pgid, sig)
    except ProcessLookupError:
        pass
