"""``kaizen history|retrain|pause|resume LOOP``: read an ImprovementLoop's decision log and act on the loop
(``kaizen approve`` serves loops and Rollouts alike: :mod:`kaizen.cli.rollout`).

Actions are annotations (see :mod:`kaizen.api.actions`), so nothing in a GitOps-managed spec changes; Kubernetes
RBAC on the loop decides who may act, and the operator records who did.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from datetime import datetime, timezone
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    history = subparsers.add_parser("history", help="show an ImprovementLoop's decision log, newest first")
    _target(history)
    history.add_argument("--evidence", action="store_true", help="also show each decision's evidence")
    history.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    history.set_defaults(func=show_history)
    for name, help_text, func in (
        ("retrain", "ask an ImprovementLoop to retrain now (past cooldown and Degraded; budgets still hold)", retrain),
        ("pause", "stop an ImprovementLoop from acting (it keeps observing and recording)", pause),
        ("resume", "let a paused or Degraded ImprovementLoop act again", resume),
    ):
        parser = subparsers.add_parser(name, help=help_text)
        _target(parser)
        parser.set_defaults(func=func)


def _target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("loop", help="name of the ImprovementLoop")
    parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")


def _namespace(args: argparse.Namespace) -> str:
    from kaizen.k8s.identity import current_namespace

    return args.namespace or current_namespace()


def show_history(args: argparse.Namespace) -> int:
    from kaizen.k8s import resources

    loop = resources.get("ImprovementLoop", _namespace(args), args.loop)
    decisions = loop.get("status", {}).get("decisions", [])
    if args.output == "json":
        print(json.dumps(decisions, indent=2))
        return 0
    print(render_history(loop, decisions, evidence=args.evidence))
    return 0


def render_history(loop: dict[str, Any], decisions: list[dict[str, Any]], evidence: bool = False) -> str:
    status = loop.get("status", {})
    model = status.get("model") or {}
    lines = [f"ImprovementLoop {loop['metadata']['namespace']}/{loop['metadata']['name']}: "
             f"phase {status.get('phase', 'Unknown')}, serving {model.get('version', 'nothing yet')}"]
    if not decisions:
        return "\n".join([*lines, "No decisions yet."])
    for decision in decisions:
        lines.append("")
        lines.append(f"{decision['time']}  {decision['action']:<13} {decision['id']}")
        lines.extend(textwrap.wrap(decision["reason"], 100, initial_indent="    ", subsequent_indent="    "))
        if decision.get("child"):
            lines.append(f"    created: {decision['child']}")
        if decision.get("outcome"):
            lines.append(f"    outcome: {decision['outcome']}")
        if evidence:
            shown = {k: v for k, v in decision.get("evidence", {}).items() if k != "code"}
            lines.extend("    " + line for line in json.dumps(shown, indent=2).splitlines())
    return "\n".join(lines)


def _act(args: argparse.Namespace, annotations: dict[str, str | None], done: str) -> int:
    from kubernetes.client.exceptions import ApiException

    from kaizen.k8s import resources

    namespace = _namespace(args)
    try:
        resources.set_annotations("ImprovementLoop", namespace, args.loop, annotations)
    except ApiException as error:
        reason = "not found" if error.status == 404 else "forbidden by RBAC" if error.status == 403 else error.reason
        print(f"kaizen: cannot update ImprovementLoop {namespace}/{args.loop}: {reason}", file=sys.stderr)
        return 1
    print(f"ImprovementLoop {namespace}/{args.loop} {done}")
    return 0


def _request(action: str) -> dict[str, str | None]:
    from kaizen.api.actions import action_annotations
    from kaizen.k8s.identity import whoami

    return action_annotations(action, whoami(), datetime.now(timezone.utc))


def retrain(args: argparse.Namespace) -> int:
    return _act(args, _request("retrain"), "will retrain")


def pause(args: argparse.Namespace) -> int:
    from kaizen.api.actions import PAUSED

    return _act(args, {PAUSED: "true"}, "paused")


def resume(args: argparse.Namespace) -> int:
    from kaizen.api.actions import FAILURES_ACKNOWLEDGED, PAUSED

    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    return _act(args, {PAUSED: None, FAILURES_ACKNOWLEDGED: now}, "resumed")
