"""The local stack a request benchmark runs against: the emulators on free ports, provisioned, their client
environment and an API keys file in `os.environ`, quiet logs (one line per request would drown the figures)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def emulated_stack(label: str, keys: list[dict]) -> Iterator[Path]:
    """Yields the run's work folder; the emulators stop when the block ends."""
    from emulators import EmulatorStack, StackConfig
    from soul_common.logs import configure_logging

    configure_logging("WARNING", component="bench")
    work = Path(tempfile.mkdtemp(prefix=f"soul-bench-{label}-"))
    stack = EmulatorStack(StackConfig(state_dir=work / "emulators", retry_min_backoff_s=0, retry_max_backoff_s=0))
    stack.start()
    try:
        stack.provision()
        os.environ.update(stack.env())
        keys_file = work / "keys.json"
        keys_file.write_text(json.dumps(keys))
        os.environ["SOUL_API_KEYS_FILE"] = str(keys_file)
        os.environ.pop("SOUL_API_KEYS", None)
        yield work
    finally:
        stack.stop()
