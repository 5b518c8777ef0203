"""``kaizen operator``: run the kopf operator (the controllers of all three kinds).

With ``--leader-elect`` (as the chart runs it, two replicas) the replicas elect a leader on a Lease
(:mod:`kaizen.k8s.lease`) and only the leader runs kopf: a standby has no watches and no handlers, so it cannot act.
A leader that loses the lease (it could not renew it within the renew deadline, or another replica holds it) stops
at once: its writes through Kaizen's client are refused from that moment (:func:`kaizen.k8s.client.fence`), and the
process exits with status 1 for the Deployment to restart it as a standby. (kopf's own writes, the handlers' status
patches, its Events and finalizers, go through kopf's client, which is not fenced: the exit is what stops them.)
kopf's peering only pauses operators by priority; it does not elect.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import uuid
from typing import TYPE_CHECKING

from kaizen.api.common import parse_duration

if TYPE_CHECKING:
    from aiohttp import web

    from kaizen.k8s.lease import LeaderElector

DEFAULT_LEASE = "kaizen-operator"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("operator", help="run the Kaizen operator against the current kubeconfig")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    parser.add_argument("--liveness", metavar="URL", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--metrics-bind-address", metavar="HOST:PORT", type=bind_address,
                        help="serve Prometheus metrics at /metrics on this address, e.g. :8081 (every interface) or "
                             "127.0.0.1:8081; standbys serve them too (default: no metrics)")
    parser.add_argument("--controllers", metavar="KINDS",
                        help="comma-separated controllers to run (improvementloop,retrainjob,rollout; default: all)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    election = parser.add_argument_group("leader election (run several replicas, one acting at a time)")
    election.add_argument("--leader-elect", action="store_true",
                          help="act only while holding a coordination.k8s.io Lease; standbys take over when it "
                               "expires")
    election.add_argument("--leader-elect-resource-name", metavar="NAME", default=DEFAULT_LEASE,
                          help=f"name of the Lease (default: {DEFAULT_LEASE})")
    election.add_argument("--leader-elect-resource-namespace", metavar="NAMESPACE",
                          help="namespace of the Lease (default: $POD_NAMESPACE, else the kubeconfig's namespace)")
    election.add_argument("--leader-elect-identity", metavar="ID",
                          help="this replica's name in the Lease (default: $POD_NAME, else the host name and a "
                               "random suffix); unique per replica")
    election.add_argument("--leader-elect-lease-duration", metavar="DURATION", type=seconds, default=8.0,
                          help="how long standbys wait after the last renewal they saw before taking over "
                               "(default: 8s)")
    election.add_argument("--leader-elect-renew-deadline", metavar="DURATION", type=seconds, default=5.0,
                          help="how long a leader keeps trying to renew before it stops acting; shorter than the "
                               "lease duration (default: 5s)")
    election.add_argument("--leader-elect-retry-period", metavar="DURATION", type=seconds, default=2.0,
                          help="how often the leader renews and standbys look (default: 2s)")
    parser.set_defaults(func=run)


def seconds(value: str) -> float:
    """A duration flag ("10s", "1m") in seconds."""
    try:
        return parse_duration(value).total_seconds()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def bind_address(value: str) -> tuple[str, int]:
    """The --metrics-bind-address flag as (host, port)."""
    from kaizen.metrics.exporter import bind_address as parse

    try:
        return parse(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    import kopf

    if args.metrics_bind_address:
        from kaizen.metrics.exporter import serve

        try:
            serve(*args.metrics_bind_address)
        except OSError as error:
            host, port = args.metrics_bind_address
            print(f"kaizen operator: error: cannot serve metrics on {host}:{port}: {error.strerror}; choose another "
                  "--metrics-bind-address", file=sys.stderr)
            return 2
    if args.controllers:
        os.environ["KAIZEN_CONTROLLERS"] = args.controllers
    elector = None
    if args.leader_elect:
        try:
            elector = build_elector(args)
        except ValueError as error:
            print(f"kaizen operator: error: {error}; change the --leader-elect-* durations", file=sys.stderr)
            return 2
    import kaizen.controllers  # noqa: F401  (registers the handlers of the selected controllers)

    kopf.configure(verbose=args.verbose)
    tune_malloc()
    if elector is None:
        # One replica: nothing to elect. (Several without --leader-elect would each handle every object.)
        kopf.run(
            clusterwide=not args.namespace, namespaces=args.namespace, standalone=True,
            liveness_endpoint=args.liveness,
        )
        return 0
    import asyncio

    return asyncio.run(run_elected(args, elector))


#: glibc's mallopt parameter for the most arenas malloc may create.
M_ARENA_MAX = -8
#: How often freed memory is given back to the system.
TRIM_EVERY_SECONDS = 30.0


def tune_malloc() -> None:
    """glibc's malloc, tuned for a process of many threads that allocates in bursts: at most two arenas (by default
    up to eight per core, one per thread that allocates, each keeping its own free memory), and freed memory given
    back to the system every :data:`TRIM_EVERY_SECONDS`. At 1,000 loops and 1,000 Rollouts the operator's start-up
    (kopf handles every object at once, on up to 900 TLS connections) grew the RSS to 600 MiB, which glibc kept
    once the burst was over; so tuned, it went back to 275-360 MiB after it (bench/scale). Nothing to do where the C
    library is not glibc."""
    import ctypes
    import threading
    import time

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, 2)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return

    def trim_forever() -> None:
        while True:
            time.sleep(TRIM_EVERY_SECONDS)
            trim(0)

    threading.Thread(target=trim_forever, name="kaizen-malloc-trim", daemon=True).start()


def build_elector(args: argparse.Namespace) -> LeaderElector:
    from kaizen.k8s.identity import current_namespace
    from kaizen.k8s.lease import LeaderElector
    from kaizen.logic.leader import Timing

    timing = Timing(lease_duration=args.leader_elect_lease_duration, renew_deadline=args.leader_elect_renew_deadline,
                    retry_period=args.leader_elect_retry_period)
    namespace = args.leader_elect_resource_namespace or os.environ.get("POD_NAMESPACE") or current_namespace()
    identity = (args.leader_elect_identity or os.environ.get("POD_NAME")
                or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    return LeaderElector(args.leader_elect_resource_name, namespace, identity, timing)


async def run_elected(args: argparse.Namespace, elector: LeaderElector) -> int:
    """Campaign; run kopf once leading, until SIGTERM/SIGINT; then release the lease. Losing it exits the process."""
    import asyncio
    import signal

    import kopf

    from kaizen.k8s import client

    loop = asyncio.get_running_loop()
    stopping, leading = asyncio.Event(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    health = await serve_health(args.liveness, elector) if args.liveness else None
    client.fence(elector.leading)
    client.api_client()  # configured now, while standing by, not on the new leader's first action

    def started() -> None:
        loop.call_soon_threadsafe(leading.set)

    elector.start(on_started=started, on_lost=exit_at_once)
    try:
        waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(leading.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if leading.is_set() and not stopping.is_set():
            # kopf takes SIGTERM over from here; either way it stops, and the lease is released below.
            await kopf.operator(clusterwide=not args.namespace, namespaces=args.namespace, standalone=True,
                                stop_flag=stopping)
    finally:
        await asyncio.to_thread(elector.stop, True)
        if health is not None:
            await health.cleanup()
    return 0


def exit_at_once() -> None:
    """The lease is lost: stop every thread now, mid-request or not, rather than let one act beside the new leader.
    The Deployment restarts the container, which campaigns again as a standby."""
    import logging

    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


async def serve_health(url: str, elector: LeaderElector) -> web.AppRunner:
    """The liveness endpoint, for standbys too (kopf's own runs only while kopf does): this replica's part in the
    election, and whether it is still campaigning."""
    from urllib.parse import urlsplit

    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        # Unhealthy when the elector's thread died: a standby that can no longer take over is worth a restart.
        return web.json_response({"identity": elector.identity, "lease": elector.lease, "leading": elector.leading(),
                                  "holder": elector.holder()}, status=200 if elector.campaigning() else 503)

    parts = urlsplit(url)
    app = web.Application()
    app.router.add_get(parts.path or "/", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80).start()
    return runner
