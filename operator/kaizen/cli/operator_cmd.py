"""``kaizen operator``: run the kopf operator (the controllers of all three kinds)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("operator", help="run the Kaizen operator against the current kubeconfig")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    parser.add_argument("--liveness", metavar="URL", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--controllers", metavar="KINDS",
                        help="comma-separated controllers to run (improvementloop,retrainjob,rollout; default: all)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import kopf

    if args.controllers:
        os.environ["KAIZEN_CONTROLLERS"] = args.controllers
    import kaizen.controllers  # noqa: F401  (registers the handlers of the selected controllers)

    kopf.configure(verbose=args.verbose)
    # Standalone: one replica; HA via peering is decided with the chart's replica story.
    kopf.run(
        clusterwide=not args.namespace, namespaces=args.namespace, standalone=True,
        liveness_endpoint=args.liveness,
    )
    return 0
