"""Failpoints: named places in the runner where a chaos run may make the process die on the spot (SIGKILL, no
cleanup), with a given probability and a seeded random source so a failing run replays.

Configured by `SOUL_FAILPOINTS="name:probability[,name:probability]"` and `SOUL_FAILPOINT_SEED` (RunnerSettings).
Off by default: an empty spec makes every `hit()` a dictionary lookup that returns. The names are the contract
with the chaos suite; an unknown name is a configuration error, not a silent no-op."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading

import structlog

log = structlog.get_logger(__name__)

BEFORE_CLAIM = "before_claim"  # message pulled and parsed, job not claimed yet
MID_RENDER = "mid_render"  # at a denoising step
AFTER_UPLOAD = "after_upload"  # object written, variant document not
AFTER_VARIANT_WRITE = "after_variant_write"  # variant written, job not finished
AFTER_FINISH = "after_finish"  # job terminal, completion event not published
AFTER_EVENT = "after_event"  # event published, message not acked

NAMES = frozenset({BEFORE_CLAIM, MID_RENDER, AFTER_UPLOAD, AFTER_VARIANT_WRITE, AFTER_FINISH, AFTER_EVENT})


def parse(spec: str) -> dict[str, float]:
    """`"mid_render:0.05,after_upload:1"` -> {"mid_render": 0.05, "after_upload": 1.0}. Raises ValueError."""
    points: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep:
            raise ValueError(f"failpoint {item!r} is not name:probability")
        if name not in NAMES:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(NAMES))}")
        try:
            probability = float(value)
        except ValueError:
            raise ValueError(f"failpoint {name!r} has probability {value.strip()!r}, not a number") from None
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"failpoint {name!r} has probability {probability}, not in [0, 1]")
        if name in points:
            raise ValueError(f"failpoint {name!r} is given twice")
        points[name] = probability
    return points


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Failpoints:
    def __init__(self, points: dict[str, float] | None = None, seed: int | None = None, kill=None):
        self._points = dict(points or {})
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._kill = kill or _kill_self

    @classmethod
    def from_spec(cls, spec: str, seed: int | None = None) -> Failpoints:
        return cls(parse(spec), seed)

    def should_fire(self, name: str) -> bool:
        assert name in NAMES, f"unknown failpoint {name}"
        probability = self._points.get(name)
        if not probability:
            return False
        with self._lock:  # one random sequence for the process, so a seed replays
            return self._random.random() < probability

    def hit(self, name: str, **context) -> None:
        """Die here (SIGKILL) if this point fires; otherwise return at once."""
        if self.should_fire(name):
            log.warning("failpoint_fired", failpoint=name, pid=os.getpid(), **context)
            sys.stdout.flush()
            sys.stderr.flush()
            self._kill()


NONE = Failpoints()
