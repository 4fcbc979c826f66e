"""`make bench` / `python -m bench`: every benchmark, each reporting ratios taken side by side in one run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["pipeline.py", "encoders.py", "quota.py", "fresh.py", "safety.py", "clients.py", "adapters.py", "costs.py",
              "streams.py", "scale.py"]


def main() -> int:
    failed = 0
    for script in BENCHMARKS:
        print(f"\n## {script}\n", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / script)]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
