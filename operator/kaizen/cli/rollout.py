"""``kaizen promote|abort|approve NAME``: act on a Rollout, or approve an ImprovementLoop, without touching a spec.

Each command sets the ``kaizen.dev/action`` annotations (:mod:`kaizen.api.actions`) with the caller's Kubernetes
user name and the time; the operator acts within a tick, records who and when in ``status.lastAction`` and an
Event, and removes the annotations. Kubernetes RBAC (``patch`` on the object) decides who may act.
``approve`` also approves an ImprovementLoop waiting for approval: ``kaizen approve NAME`` finds whichever of the
two kinds has that name (``rollout/NAME`` or ``loop/NAME`` when both do).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

#: What the commands ask for, in the words of their help.
ACTIONS = {
    "promote": "promote a Rollout's canary now, skipping its remaining steps",
    "abort": "abort a Rollout: the canary is removed, the stable Deployment is left as it is",
    "approve": "approve what a Rollout (at a pause step or a failure-policy limit) or an ImprovementLoop awaits",
}
KINDS = {"rollout": "Rollout", "rollouts": "Rollout", "kro": "Rollout", "loop": "ImprovementLoop",
         "improvementloop": "ImprovementLoop", "improvementloops": "ImprovementLoop", "kil": "ImprovementLoop"}


def register(subparsers: argparse._SubParsersAction) -> None:
    for action, help_text in ACTIONS.items():
        parser = subparsers.add_parser(action, help=help_text, description=__doc__.splitlines()[0])
        parser.add_argument("name", metavar="NAME", help="name of the Rollout (or KIND/NAME, e.g. loop/bot)")
        parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
        parser.set_defaults(func=act, action=action)


def target(name: str, action: str) -> tuple[str | None, str]:
    """(kind, name) from ``NAME`` or ``KIND/NAME``; kind None: to be found (approve). ValueError says what is
    accepted."""
    if "/" not in name:
        return (None if action == "approve" else "Rollout"), name
    prefix, _, rest = name.partition("/")
    kind = KINDS.get(prefix.lower())
    if kind is None or not rest:
        raise ValueError(f"{name!r}: expected NAME or KIND/NAME with KIND one of {', '.join(sorted(KINDS))}")
    if kind != "Rollout" and action != "approve":
        raise ValueError(f"{action} acts on Rollouts only; an ImprovementLoop can only be approved")
    return kind, rest


def act(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    from kaizen.api.actions import action_annotations
    from kaizen.k8s import resources
    from kaizen.k8s.identity import current_namespace, whoami

    try:
        kind, name = target(args.name, args.action)
    except ValueError as problem:
        print(f"kaizen {args.action}: {problem}", file=sys.stderr)
        return 2
    namespace = args.namespace or current_namespace()
    if kind is None:
        found = [k for k in ("Rollout", "ImprovementLoop") if exists(k, namespace, name)]
        if len(found) > 1:
            print(f"kaizen approve: both a Rollout and an ImprovementLoop are named {name} in {namespace}: say "
                  f"which, rollout/{name} or loop/{name}", file=sys.stderr)
            return 2
        kind = found[0] if found else "Rollout"  # neither: the update below reports "not found"
    by = whoami()
    try:
        resources.set_annotations(kind, namespace, name, action_annotations(args.action, by,
                                                                            datetime.now(timezone.utc)))
    except ApiException as error:
        reason = ("not found" if error.status == 404 else "forbidden by RBAC (you need patch on it)"
                  if error.status == 403 else error.reason)
        print(f"kaizen {args.action}: cannot update {kind} {namespace}/{name}: {reason}", file=sys.stderr)
        return 1
    print(f"{kind} {namespace}/{name}: {args.action} requested by {by}; see its status.lastAction and Events.")
    return 0


def exists(kind: str, namespace: str, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    from kaizen.k8s import resources

    try:
        resources.get(kind, namespace, name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
