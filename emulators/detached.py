"""A stack left running by `python -m emulators up`: its record in `<state_dir>/stack.json` (ports, process
groups, client environment), and how a later, separate process reports on it and stops it. Before a group is
signalled its processes are checked to still be the stand-in that was started (`_process.is_ours`), so a pid
recycled since `up` is never killed."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from emulators import _process
from emulators._process import ProcessRecord
from emulators.errors import EmulatorError
from emulators.stack import EmulatorStack

STATE_FILE_NAME = "stack.json"


@dataclass(frozen=True)
class DetachedStack:
    path: Path
    project_id: str
    bucket: str
    ports: dict[str, int]
    processes: tuple[ProcessRecord, ...]
    env: dict[str, str]

    def running(self) -> dict[str, bool]:
        """Per stand-in: is its process group still alive and still ours."""
        return {record.name: _process.is_ours(record) for record in self.processes}


def state_file(state_dir: Path) -> Path:
    return Path(state_dir).resolve() / STATE_FILE_NAME


def record(stack: EmulatorStack, extra_env: dict[str, str] | None = None) -> DetachedStack:
    """Write stack.json for a started (and provisioned) stack, atomically, and return what was written.
    `extra_env` adds client settings of a bigger stack (`make run` adds SOUL_API_URL)."""
    detached = DetachedStack(
        path=state_file(stack.state_dir),
        project_id=stack.config.project_id,
        bucket=stack.config.bucket,
        ports=asdict(stack.ports),
        processes=stack.processes,
        env={**stack.env(), **(extra_env or {})},
    )
    payload = {
        "project_id": detached.project_id,
        "bucket": detached.bucket,
        "ports": detached.ports,
        "processes": [p.to_json() for p in detached.processes],
        "env": detached.env,
    }
    detached.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = detached.path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, detached.path)
    return detached


def load(state_dir: Path) -> DetachedStack | None:
    """The stack recorded in `state_dir`, or None when nothing is recorded there."""
    path = state_file(state_dir)
    try:
        data = json.loads(path.read_text())
        return DetachedStack(
            path=path,
            project_id=data["project_id"],
            bucket=data["bucket"],
            ports={k: int(v) for k, v in data["ports"].items()},
            processes=tuple(ProcessRecord.from_json(p) for p in data["processes"]),
            env={k: str(v) for k, v in data["env"].items()},
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmulatorError(f"{path} is unreadable ({exc}); remove it and stop leftover emulators by hand") from exc


def stop(detached: DetachedStack) -> list[str]:
    """Stop the recorded groups that are still ours, forget the record, and say what was done per stand-in."""
    alive = detached.running()
    report = [
        f"{r.name}: stopped process group {r.pgid}" if alive[r.name] else f"{r.name}: not running"
        for r in detached.processes
    ]
    _process.stop_groups([(r.pgid, None) for r in detached.processes if alive[r.name]])
    detached.path.unlink(missing_ok=True)
    return report


def export_lines(env: dict[str, str]) -> str:
    """`export K=V` lines a shell can eval."""
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())
