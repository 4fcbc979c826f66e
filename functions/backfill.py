"""`python -m functions.backfill [--page-size N] [--after JOB_ID] [--dry-run]`: brings job documents written before
today's shape up to it, once, after an upgrade (what it writes: functions/adapters/firestore/backfill.py).
Resumable and idempotent: the cursor it prints is where `--after` picks up; running it twice writes nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import timedelta

from functions.adapters.clients import make_clients
from functions.adapters.firestore import backfill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions.backfill", description=__doc__.splitlines()[0])
    parser.add_argument("--page-size", type=int, default=300, help="jobs per query (1-1000)")
    parser.add_argument("--after", default=None, help="resume after this job id (the cursor a run printed)")
    parser.add_argument("--dry-run", action="store_true", help="count what would be written, write nothing")
    args = parser.parse_args(argv)
    if not 1 <= args.page_size <= 1000:
        parser.error("--page-size must be between 1 and 1000")

    from functions.settings import FunctionsSettings

    settings = FunctionsSettings()
    db = backfill.open_db(make_clients(settings.project_id).firestore, settings.backend_timeout_s)
    done = backfill.run(db, page_size=args.page_size, after=args.after,
                        retain=timedelta(days=settings.job_retention_days), dry_run=args.dry_run,
                        report=lambda p: print(json.dumps({"progress": asdict(p)}), file=sys.stderr))
    print(json.dumps({"done": asdict(done), "dry_run": args.dry_run}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
