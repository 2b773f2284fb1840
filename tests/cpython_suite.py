"""CPython's own concurrent.futures tests, run against `orchestrator.ProcessPoolExecutor`.

    python tests/cpython_suite.py [PATH_TO_test_concurrent_futures.py] [-k PATTERN]

CPython ships them as ``test/test_concurrent_futures.py`` (Debian: ``apt install
libpython3.11-testsuite``, then ``/usr/lib/python3.11/test/test_concurrent_futures.py``). This
script copies that file into a temporary folder (so that its module-level functions pickle by
reference in every start method), makes ``concurrent.futures.ProcessPoolExecutor`` the
orchestrator's class before the file builds its test classes, and runs the process-pool classes
for fork, forkserver and spawn. It prints, per start method, how many ran, passed, failed, erred
and were skipped, and the name of each test that did not pass. Not part of the pytest suite: it
needs CPython's test files, which a plain install lacks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import os
import re
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any, ClassVar

from orchestrator import ProcessPoolExecutor

DEFAULT = Path(
    f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}/test/test_concurrent_futures.py"
)
MODULE = "cpython_concurrent_futures"
METHODS = ("Fork", "Forkserver", "Spawn")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("-k", dest="pattern", default=None, help="only tests whose id contains this")
    args = parser.parse_args()
    if not args.path.is_file():
        print(f"{args.path} not found; see this script's docstring", file=sys.stderr)
        return 2
    folder = tempfile.mkdtemp(prefix="cpython-suite-")
    shutil.copy(args.path, Path(folder) / f"{MODULE}.py")
    sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
    concurrent.futures.ProcessPoolExecutor = _Recorded  # type: ignore[misc]
    module = importlib.import_module(MODULE)
    module.setUpModule()
    # Module clean-ups run last first: this one closes what failed tests left open before the
    # module's own one stops the multiprocessing helpers (which waits for every worker to go).
    unittest.addModuleCleanup(_close_recorded)
    failed = 0
    try:
        for method in METHODS:
            failed += _run(module, method, args.pattern)
    finally:
        getattr(module, "tearDownModule", lambda: None)()
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


class _Recorded(ProcessPoolExecutor):
    """The orchestrator's executor, remembered so that what a failed test left open is closed."""

    made: ClassVar[list[ProcessPoolExecutor]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made.append(self)


# Tests that start another interpreter import the class by this name from concurrent.futures.
_Recorded.__name__ = _Recorded.__qualname__ = "ProcessPoolExecutor"


def _close_recorded() -> None:
    """Shut down the executors of tests that failed on a private attribute before doing so:
    their workers would keep the multiprocessing helpers (and the module's clean-up) waiting."""
    for executor in _Recorded.made:
        executor.shutdown(wait=True, cancel_futures=True)
    _Recorded.made.clear()


def _run(module: object, method: str, pattern: str | None) -> int:
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name, value in sorted(vars(module).items()):
        if (
            isinstance(value, type)
            and issubclass(value, unittest.TestCase)
            and re.match(f"ProcessPool{method}[A-Z]", name)
        ):
            for test in loader.loadTestsFromTestCase(value):
                if pattern is None or pattern in test.id():
                    suite.addTest(test)
    result = unittest.TextTestRunner(stream=open(os.devnull, "w"), verbosity=0).run(suite)  # noqa: SIM115
    _close_recorded()
    bad = len(result.failures) + len(result.errors)
    passed = result.testsRun - bad - len(result.skipped)
    print(
        f"{method.lower():<11} ran {result.testsRun}, passed {passed}, failed {len(result.failures)}, "
        f"errors {len(result.errors)}, skipped {len(result.skipped)}"
    )
    verbose = bool(os.environ.get("CPYTHON_SUITE_VERBOSE"))
    for test, trace in [*result.failures, *result.errors]:
        last = trace if verbose else trace.strip().splitlines()[-1][:160]
        print(f"    {test.id().removeprefix(MODULE + '.')}: {last}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
