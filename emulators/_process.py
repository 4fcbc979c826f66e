"""Process plumbing for the stand-ins: pick free ports, start a server in its own process group with its output
in a log file, wait until it answers HTTP, and stop its whole group (the SDK launchers are shell scripts that
fork Java, so killing the launcher's pid alone would orphan the JVM). Processes are only ever found and killed
by the process group recorded when they were started, never by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from emulators.errors import EmulatorError, EmulatorStartFailed

_PROC = Path("/proc")
# Local servers only: never route a probe through a proxy configured for the outside world.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ProcessRecord:
    """What is needed to find a started stand-in again, also from another process (`python -m emulators down`)."""

    name: str
    pid: int
    pgid: int
    marker: str  # a substring of the command line of the group's processes, checked before any kill
    start_ticks: int | None  # the leader's start time (/proc/<pid>/stat), so a recycled pid is not mistaken for it
    log_path: Path

    def to_json(self) -> dict:
        return {
            "name": self.name, "pid": self.pid, "pgid": self.pgid, "marker": self.marker,
            "start_ticks": self.start_ticks, "log_path": str(self.log_path),
        }

    @classmethod
    def from_json(cls, data: dict) -> ProcessRecord:
        return cls(
            name=data["name"], pid=int(data["pid"]), pgid=int(data["pgid"]), marker=data["marker"],
            start_ticks=data.get("start_ticks"), log_path=Path(data["log_path"]),
        )


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago; all sockets are held until every port is chosen, so
    the kernel cannot hand out the same one twice."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Fail early on a configured port that something already listens on: the Pub/Sub emulator logs the bind
    error but keeps running, so it would otherwise only surface at the start timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves, ignore connections lingering in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise EmulatorStartFailed(f"{what} port {host}:{port} is not available: {exc.strerror}") from exc


def spawn(
    name: str, argv: Sequence[str], log_path: Path, marker: str, env: Mapping[str, str] | None = None,
    append: bool = False,
) -> tuple[subprocess.Popen, ProcessRecord]:
    """Start `argv` as the leader of a new process group (a new session), output written to `log_path`, with
    `env` as its whole environment (default: this process's). The process outlives this Python process unless
    stopped: that is what `up` relies on. `append` keeps the log of an earlier run (a restarted process)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append else "wb") as log:
        try:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env=None if env is None else dict(env),
            )
        except OSError as exc:
            raise EmulatorStartFailed(f"could not start {name} ({argv[0]}): {exc}") from exc
    fields = _stat_fields(popen.pid)
    record = ProcessRecord(
        name=name, pid=popen.pid, pgid=popen.pid, marker=marker,
        start_ticks=int(fields[19]) if fields else None, log_path=log_path,
    )
    return popen, record


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def http_ok(url: str, expect_body: str | None = None, timeout_s: float = 1.0, expect_status: int | None = 200) -> bool:
    """True when `url` answers `expect_status` (None: any HTTP status) and, if given, a body starting with
    `expect_body`."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout_s) as response:
            status, body = response.status, response.read(64)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(64)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    if expect_status is not None and status != expect_status:
        return False
    return expect_body is None or body.decode(errors="replace").startswith(expect_body)


def http_request(method: str, url: str, timeout_s: float = 10.0) -> int:
    """Send a body-less request to a local server and return the status code."""
    request = urllib.request.Request(url, method=method)
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        raise EmulatorError(f"{method} {url} failed: {exc}") from exc


# Log lines after which a stand-in never becomes ready although its process lives on (the Pub/Sub emulator
# keeps running after failing to bind its port).
_FATAL_LOG_LINES = ("Address already in use",)


def _log_has_fatal_line(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return any(line in text for line in _FATAL_LOG_LINES)


@dataclass(frozen=True)
class ReadinessCheck:
    popen: subprocess.Popen
    record: ProcessRecord
    url: str
    expect_body: str | None = None
    expect_status: int | None = 200


def wait_until_ready(checks: Sequence[ReadinessCheck], timeout_s: float) -> None:
    """Poll every check together until all answer; fail fast, with the log's tail, when one exits."""
    deadline = time.monotonic() + timeout_s
    pending = list(checks)
    while pending:
        for check in list(pending):
            code = check.popen.poll()
            if code is not None:
                raise EmulatorStartFailed(
                    f"{check.record.name} exited with code {code} before it was ready; "
                    f"last lines of {check.record.log_path}:\n{log_tail(check.record.log_path)}"
                )
            if http_ok(check.url, check.expect_body, expect_status=check.expect_status):
                pending.remove(check)
            elif _log_has_fatal_line(check.record.log_path):
                raise EmulatorStartFailed(
                    f"{check.record.name} cannot start; last lines of {check.record.log_path}:\n"
                    f"{log_tail(check.record.log_path)}"
                )
        if not pending:
            return
        if time.monotonic() > deadline:
            details = "\n".join(
                f"--- {c.record.name} ({c.url}), last lines of {c.record.log_path}:\n{log_tail(c.record.log_path)}"
                for c in pending
            )
            waiting = ", ".join(c.record.name for c in pending)
            raise EmulatorStartFailed(f"not ready after {timeout_s:g} s: {waiting}\n{details}")
        time.sleep(0.1)


# --- inspecting and stopping process groups -------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (index 0 = state, 2 = pgrp, 19 = starttime); the command
    name before them may contain spaces and parentheses, so split after its last ')'."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _cmdline(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group `pgid`. Zombies are skipped because an orphaned child may stay a
    zombie where pid 1 does not reap, and it holds nothing."""
    if not _PROC.is_dir():  # not Linux: fall back to "does the group exist"
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def is_ours(record: ProcessRecord) -> bool:
    """True when process group `record.pgid` still runs what we started, not an unrelated group that reuses a
    recycled pid: the leader (if alive) must have the recorded start time and a member must carry the marker."""
    members = group_members(record.pgid)
    if not members:
        return False
    if not _PROC.is_dir():
        return False  # cannot verify: never kill what we cannot recognise
    leader = _stat_fields(record.pid)
    if leader is not None and record.start_ticks is not None and int(leader[19]) != int(record.start_ticks):
        return False
    return any(record.marker in _cmdline(pid) for pid in members)


def stop_groups(groups: Sequence[tuple[int, subprocess.Popen | None]], grace_s: float = 5.0) -> None:
    """SIGTERM every group at once, wait up to `grace_s` for them to exit, then SIGKILL what is left. Each
    group may come with the Popen of its leader, which is reaped along the way."""
    pending = list(groups)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pgid, _ in pending:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as exc:
                raise EmulatorError(f"not allowed to signal process group {pgid}: {exc}") from exc
        pending = _wait_groups_gone(pending, wait_s)
        if not pending:
            return
    raise EmulatorError(f"process groups survived SIGKILL: {[pgid for pgid, _ in pending]}")


def _wait_groups_gone(
    groups: list[tuple[int, subprocess.Popen | None]], timeout_s: float
) -> list[tuple[int, subprocess.Popen | None]]:
    """The groups still alive after waiting up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        for _, popen in groups:
            if popen is not None:
                popen.poll()  # reap our own child, or it lingers as a zombie member of its group
        groups = [(pgid, popen) for pgid, popen in groups if group_members(pgid)]
        if not groups or time.monotonic() > deadline:
            return groups
        time.sleep(0.05)
