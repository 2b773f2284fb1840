"""The last module a fork server imports before it forks workers: it freezes what the server
imported (`gc.freeze`), so that a worker's garbage collections never walk those objects and the
worker keeps sharing their pages with the server instead of copying them. (No collection first:
it would cost every fork server's start ~5 ms, to free a few hundred objects.)"""

from __future__ import annotations

import gc

gc.freeze()
