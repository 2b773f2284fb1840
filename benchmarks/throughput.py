"""Throughput against the peers, in one run: ``python -m benchmarks --only throughput``.

    python -m benchmarks.throughput [--workers 2] [--repeat 5] [--start-method fork]

20,000 no-op tasks submitted one by one, and 2,000 tasks of 1 ms CPU each; see benchmarks/suite.py.
"""

from __future__ import annotations

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.argv[1:1] = ["--only", "throughput"]
    main()
