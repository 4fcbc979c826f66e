"""Command line for the local stand-ins:

    python -m emulators up      start + provision in the background, record <state_dir>/stack.json, print exports
    python -m emulators env     print the `export` lines of the recorded stack (eval "$(python -m emulators env)")
    python -m emulators status  which recorded stand-ins are running
    python -m emulators down    stop the recorded stack
    python -m emulators run     like up, but in the foreground until Ctrl-C / SIGTERM, then stop everything

Exit status 0 on success, 1 with a one-line `error:` message on failure."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from emulators import detached
from emulators.errors import EmulatorError
from emulators.stack import EmulatorStack, StackConfig

_DEFAULTS = StackConfig()


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=_DEFAULTS.state_dir,
                        help=f"where logs, the signing key and stack.json live (default {_DEFAULTS.state_dir})")

    starting = argparse.ArgumentParser(add_help=False, parents=[common])
    starting.add_argument("--project", default=_DEFAULTS.project_id)
    starting.add_argument("--bucket", default=_DEFAULTS.bucket)
    starting.add_argument("--host", default=_DEFAULTS.host)
    for name in ("pubsub", "firestore", "firestore-websocket", "gcs"):
        starting.add_argument(f"--{name}-port", type=int, default=0, help="0 = a free port")
    starting.add_argument("--retry-min-backoff", type=float, default=_DEFAULTS.retry_min_backoff_s, metavar="S")
    starting.add_argument("--retry-max-backoff", type=float, default=_DEFAULTS.retry_max_backoff_s, metavar="S")
    starting.add_argument("--start-timeout", type=float, default=_DEFAULTS.start_timeout_s, metavar="S")
    starting.add_argument("--sdk-root", type=Path, default=None,
                          help="Google Cloud SDK root (default: $CLOUDSDK_ROOT_DIR, else the SDK of gcloud on PATH)")
    starting.add_argument("--push-endpoint", default=None,
                          help="also create the soul-requests push subscription to this URL")

    parser = argparse.ArgumentParser(prog="python -m emulators", description="Local Google Cloud stand-ins.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", parents=[starting], help="start and provision in the background")
    commands.add_parser("run", parents=[starting], help="start and provision in the foreground until interrupted")
    commands.add_parser("env", parents=[common], help="print export lines of the running stack")
    commands.add_parser("status", parents=[common], help="which stand-ins are running")
    commands.add_parser("down", parents=[common], help="stop the running stack")
    return parser


def _config(args: argparse.Namespace) -> StackConfig:
    return StackConfig(
        project_id=args.project, bucket=args.bucket, host=args.host,
        pubsub_port=args.pubsub_port, firestore_port=args.firestore_port,
        firestore_websocket_port=args.firestore_websocket_port, gcs_port=args.gcs_port,
        state_dir=args.state_dir, retry_min_backoff_s=args.retry_min_backoff,
        retry_max_backoff_s=args.retry_max_backoff, start_timeout_s=args.start_timeout, sdk_root=args.sdk_root,
    )


def _refuse_if_running(state_dir: Path) -> None:
    existing = detached.load(state_dir)
    if existing is not None and any(existing.running().values()):
        raise EmulatorError(f"a stack is already running from {existing.path}; run `python -m emulators down` first")


def _start(args: argparse.Namespace) -> tuple[EmulatorStack, detached.DetachedStack]:
    _refuse_if_running(args.state_dir)
    stack = EmulatorStack(_config(args))
    stack.start()
    try:
        stack.provision(push_endpoint=args.push_endpoint)
        return stack, detached.record(stack)
    except BaseException:
        stack.stop()
        raise


def _up(args: argparse.Namespace) -> None:
    # The processes run in their own sessions, so they outlive this CLI; stack.json is how `down` finds them.
    _, record = _start(args)
    print(detached.export_lines(record.env))


def _run(args: argparse.Namespace) -> None:
    # Handlers first: a signal that arrives while starting then stops the stack right after it is up.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stack, record = _start(args)
    try:
        print(detached.export_lines(record.env), flush=True)
        print("# emulators running; Ctrl-C to stop", file=sys.stderr, flush=True)
        stopping.wait()
    finally:
        stack.stop()
        record.path.unlink(missing_ok=True)


def _require(state_dir: Path) -> detached.DetachedStack:
    record = detached.load(state_dir)
    if record is None:
        raise EmulatorError(f"no stack recorded in {detached.state_file(state_dir)}; run `python -m emulators up`")
    return record


def _env(args: argparse.Namespace) -> None:
    print(detached.export_lines(_require(args.state_dir).env))


def _status(args: argparse.Namespace) -> None:
    record = _require(args.state_dir)
    running = record.running()
    for process in record.processes:
        state = "up" if running[process.name] else "down"
        print(f"{process.name}: {state} (pgid {process.pgid}, log {process.log_path})")


def _down(args: argparse.Namespace) -> None:
    record = detached.load(args.state_dir)
    if record is None:
        print(f"nothing recorded in {detached.state_file(args.state_dir)}")
        return
    print("\n".join(detached.stop(record)))


_COMMANDS = {"up": _up, "run": _run, "env": _env, "status": _status, "down": _down}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _COMMANDS[args.command](args)
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
