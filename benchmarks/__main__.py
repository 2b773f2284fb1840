"""``python -m benchmarks``: every benchmark against the peers (see benchmarks/suite.py)."""

from benchmarks.suite import main

main()
