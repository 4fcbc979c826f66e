"""Finds a local stack started by `make run` (or `python -m emulators up`) from the current directory, so
`soul` works there without `eval "$(python -m emulators env)"` first. Only used when PUBSUB_EMULATOR_HOST is not
set; a record whose processes are gone is ignored."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = Path(".soul/emulators")


def discover(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, str]:
    """The client environment of the running local stack recorded in `state_dir`, or {}."""
    if os.environ.get("PUBSUB_EMULATOR_HOST") or not (state_dir / "stack.json").is_file():
        return {}
    from emulators import detached  # imported only when a record exists: it costs most of a second
    from emulators.errors import EmulatorError

    try:
        record = detached.load(state_dir)
    except EmulatorError:
        return {}
    if record is None or not all(record.running().values()):
        return {}
    return dict(record.env)


def apply(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, str]:
    """Put a discovered stack's environment into this process (variables already set win); returns it."""
    found = discover(state_dir)
    for key, value in found.items():
        os.environ.setdefault(key, value)
    return found
