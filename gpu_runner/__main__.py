"""`python -m gpu_runner [--burst] [--max-jobs N] [--warm]`: the long-running subscriber of soul-jobs.
`python -m gpu_runner --prepare`: load, quantize and compile SDXL as the settings say, save the compile artifacts
(on disk and in the bucket), print the start-up report as JSON and exit: run once per card type after an upgrade
so that no serving VM pays for the compile.

Builds the settings and clients once here and passes them down; SIGTERM/SIGINT stop it gracefully."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from pydantic import ValidationError

from soul_common.logs import configure_logging
from gpu_runner import health
from gpu_runner.pipelines.host import quiet_progress_bars
from gpu_runner.settings import RunnerSettings
from gpu_runner.adapters.clients import make_clients
from gpu_runner.worker import Runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_runner", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit once the subscription is drained")
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after handling this many messages")
    parser.add_argument("--warm", action="store_true", help="load the SDXL pipeline before taking work")
    parser.add_argument("--prepare", action="store_true",
                        help="compile and save the artifacts, print the start-up report, exit (takes no work)")
    args = parser.parse_args(argv)
    try:
        settings = RunnerSettings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            print(f"error: invalid setting {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, component="gpu_runner")
    quiet_progress_bars()
    runner = Runner(settings, make_clients(settings))
    if args.prepare:
        runner.warm()
        print(json.dumps(runner.startup_report(), indent=2))
        return 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stop())
    if settings.health_port is not None:  # before warm(): a long model load reads as "starting", not dead
        health.serve_runner(runner, host=settings.health_host, port=settings.health_port, clock=time.monotonic,
                            policy=health.HealthPolicy(settings.health_stale_after_seconds,
                                                       settings.health_startup_grace_seconds))
    if args.warm:
        runner.warm()
    runner.run(burst=args.burst, max_jobs=args.max_jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
