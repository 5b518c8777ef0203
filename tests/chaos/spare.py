"""``kaizen operator ARGS...`` started ahead of need, for the chaos suite: ``python spare.py RELEASE ARGS...``.

It imports the operator (seconds of CPU on a loaded 2-core machine), then waits, without a word to the API server,
until the file RELEASE exists, and only then runs ``kaizen operator ARGS...``. To the cluster it is a fresh process
that starts after the one it replaces was killed: no memory, no connection, no cache carried over. A restart then
costs kopf's start-up rather than Python's imports, which lets the suite kill the operator at 30 points of one loop
in the time CI allows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import kopf  # noqa: F401

import kaizen.cli
import kaizen.cli.operator_cmd  # noqa: F401
import kaizen.collector.client  # noqa: F401  (imported by the loop's first look otherwise)
import kaizen.controllers  # noqa: F401  (registers every controller's handlers)
import kaizen.k8s.lease  # noqa: F401

release = Path(sys.argv[1])
print("Imported the operator; waiting for the release", flush=True)
while not release.exists():
    time.sleep(0.005)
print("Released: starting the operator", flush=True)
sys.exit(kaizen.cli.main(["operator", *sys.argv[2:]]))
