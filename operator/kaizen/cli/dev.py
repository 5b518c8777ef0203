"""``kaizen dev``: the local development stack.

``kaizen dev cluster up`` starts a local control plane (:class:`kaizen.dev.cluster.LocalCluster`) whose processes
keep running after the command exits, and prints how to point kubectl at it; ``kaizen dev cluster down`` stops it.
Both find the cluster through the state file in its directory (default ``.kaizen/cluster``).
``kaizen dev demo`` runs Kaizen's main job on the local stack (:mod:`kaizen.dev.demo`).

Both look for the binaries they need before they start anything: a missing one (or a checkout without
``hack/versions.env``) is one line on stderr that says what to do, and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_DIR = Path(".kaizen") / "cluster"
#: What the demo runs besides its control plane (kubectl also serves a cluster given with --kubeconfig).
DEMO_BINARIES = ["kubectl", "prometheus"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = subparsers.add_parser("dev", help="the local development stack", description=__doc__.splitlines()[0])
    dev_commands = dev.add_subparsers(dest="dev_command", required=True, metavar="COMMAND")
    cluster = dev_commands.add_parser("cluster", help="a local Kubernetes control plane")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")

    up = cluster_commands.add_parser(
        "up",
        help="start a local control plane in the background",
        description="Start etcd and kube-apiserver (and optionally more) on loopback, detached from this command.",
    )
    _add_dir(up)
    up.add_argument(
        "--controllers", action="store_true", help="also run kube-controller-manager and kube-scheduler"
    )
    up.add_argument(
        "--kwok",
        action="store_true",
        help="also run kwok with a fake node advertising nvidia.com/gpu: 64 (pods need --controllers to be bound)",
    )
    up.set_defaults(func=cluster_up)

    down = cluster_commands.add_parser(
        "down", help="stop the local control plane", description="Stop the local control plane and remove its files."
    )
    _add_dir(down)
    down.set_defaults(func=cluster_down)

    demo = dev_commands.add_parser(
        "demo",
        help="run Kaizen's whole loop on the local stack through a served model: drift, retrain, canary, promotion",
        description="Start a local control plane (or use --kubeconfig), Prometheus, the collector, the operator and "
        "the dev node agent and a Gateway API gateway (Traefik), apply examples/demo/ (a served model, its Services, "
        "its HTTPRoute and its ImprovementLoop), send simulated users' requests through the route and their "
        "feedback to the collector, change their world, follow the loop to its end.",
    )
    demo.add_argument("--kubeconfig", type=Path, help="use this cluster instead of starting a local control plane")
    demo.add_argument("--dir", type=Path, default=Path(".kaizen") / "demo",
                      help="working directory of the local control plane and the operator's log")
    demo.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    demo.add_argument("--scenario", choices=("drift", "cohort-regression"), default="drift",
                      help="drift (default): a policy change, a targeted retrain, a canary promoted and the users' "
                      "quality restored; cohort-regression: a candidate that passes its gates but fails one cohort "
                      "live, rolled back by the canary")
    demo.add_argument("--routing", choices=("gatewayAPI", "replicas"), default="gatewayAPI",
                      help="how the canary gets its share: gatewayAPI (default): exact weights on the HTTPRoute the "
                      "users' requests go through; replicas: canary pods beside the stable ones behind one Service")
    demo.set_defaults(func=run_demo)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"the cluster's working directory (default: {DEFAULT_DIR})"
    )


def _missing_binary(command: str, names: list[str]) -> bool:
    """Look for ``names`` (see :func:`kaizen.dev.binaries.find_binary`); if one is missing, say so in one line."""
    from kaizen.dev.binaries import BinaryNotFoundError, find_binary

    try:
        for name in names:
            find_binary(name)
    except BinaryNotFoundError as error:
        print(f"kaizen dev {command}: {error}", file=sys.stderr)
        return True
    return False


def cluster_up(args: argparse.Namespace) -> int:
    # Imported here so that other commands do not pay for the dev stack's imports.
    from kaizen.dev.cluster import ClusterStartError, LocalCluster

    running = LocalCluster.attach(args.dir)
    if running is not None and running.running():
        print(f"A local control plane is already running from {running.workdir}.")
        _print_usage(running.kubeconfig)
        return 0
    if running is not None:
        # Some of its processes died: clear what is left before starting afresh.
        running.stop()
    cluster = LocalCluster(args.dir, controllers=args.controllers, kwok=args.kwok, detach=True)
    if _missing_binary("cluster up", [*cluster.components, "kubectl"]):
        return 1
    try:
        cluster.start()  # Reports the start-up time on stderr.
    except ClusterStartError as error:
        print(f"Failed to start the local control plane: {error}", file=sys.stderr)
        return 1
    _print_usage(cluster.kubeconfig)
    return 0


def cluster_down(args: argparse.Namespace) -> int:
    from kaizen.dev.cluster import LocalCluster

    cluster = LocalCluster.attach(args.dir)
    if cluster is None:
        print(f"No local control plane is recorded in {args.dir.resolve()}; nothing to stop.")
        return 0
    cluster.stop()
    cluster.purge()
    print(f"Stopped the local control plane in {cluster.workdir}.")
    return 0


def _print_usage(kubeconfig: Path) -> None:
    print(f"Kubeconfig: {kubeconfig}")
    print(f"export KUBECONFIG={shlex.quote(str(kubeconfig))}")


def run_demo(args: argparse.Namespace) -> int:
    from kaizen.dev import demo
    from kaizen.dev.binaries import BinaryNotFoundError, gateway_api_crds
    from kaizen.dev.cluster import ClusterStartError, LocalCluster
    from kaizen.dev.gateway import GatewayStartError
    from kaizen.dev.prometheus import PrometheusStartError

    # The demo's own control plane runs with controllers and kwok (kaizen.dev.demo.cluster_for).
    control_plane = [] if args.kubeconfig else LocalCluster(args.dir, controllers=True, kwok=True).components
    gateway = ["traefik"] if args.routing == "gatewayAPI" else []
    if _missing_binary("demo", [*control_plane, *DEMO_BINARIES, *gateway]):
        return 1
    try:
        if gateway and not args.kubeconfig:  # a cluster of one's own may serve Gateway API already
            gateway_api_crds()
        return demo.run(kubeconfig=args.kubeconfig, workdir=args.dir, keep=args.keep,
                        scenario=args.scenario, routing=args.routing)
    except (BinaryNotFoundError, ClusterStartError, PrometheusStartError, GatewayStartError) as error:
        # The first line says what failed; the rest (the end of a process's log) is in the demo's folder.
        what = str(error).splitlines()[0].rstrip(":")
        print(f"kaizen dev demo: {what} (logs: {args.dir.resolve()})", file=sys.stderr)
        return 1
