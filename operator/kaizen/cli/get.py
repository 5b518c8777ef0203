"""``kaizen get LOOP [-w]`` (also ``kubectl kaizen get``): a live tree of an ImprovementLoop, its RetrainJobs and
their Rollouts, as ``kubectl argo rollouts get rollout --watch`` shows a Rollout.

The tree shows the loop's phase, served model, signals and budget; each RetrainJob's phase, verdict and gates
(candidate against baseline); each Rollout's phase, step, weight and latest analysis numbers; and the last
decisions. :func:`gather` reads the objects (also used by ``kaizen report``), :func:`render` is pure. With ``-w``
the tree is redrawn in place on a terminal, and printed again, plainly, whenever it changes when the output is not
a terminal (a pipe or a file).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

#: Decisions shown under the tree (the loop's status keeps up to 50; `kaizen history` shows them all).
DECISIONS_SHOWN = 5
#: Redraw the terminal in place: cursor home, then each line cleared to its end, then the rest of the screen.
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "get", help="show an ImprovementLoop, its RetrainJobs and Rollouts as a tree (-w: live)",
        description=__doc__.splitlines()[0])
    parser.add_argument("loop", help="name of the ImprovementLoop")
    parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    parser.add_argument("-w", "--watch", action="store_true", help="keep watching; redraw as the objects change")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two reads with -w (default 1)")
    parser.set_defaults(func=get)


@dataclass
class Tree:
    """A loop and its children, as read from the API server."""

    loop: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)


class NotFound(Exception):
    """The loop does not exist (or cannot be read); the message says which and what to do."""


def gather(namespace: str, name: str) -> Tree:
    """The loop and the RetrainJobs and Rollouts it created, oldest first."""
    from kubernetes.client.exceptions import ApiException

    from kaizen.k8s import resources

    try:
        loop = resources.get("ImprovementLoop", namespace, name)
        jobs = resources.list_owned("RetrainJob", namespace, name)
        rollouts = resources.list_owned("Rollout", namespace, name)
    except ApiException as error:
        if error.status == 404:
            raise NotFound(f"ImprovementLoop {namespace}/{name} not found: check the name and the namespace (-n); "
                           "`kubectl get improvementloops -A` lists them") from None
        if error.status == 403:
            raise NotFound(f"cannot read ImprovementLoop {namespace}/{name}: forbidden by RBAC (you need get and "
                           "list on improvementloops, retrainjobs and rollouts)") from None
        raise
    created = lambda o: o["metadata"].get("creationTimestamp", "")  # noqa: E731
    return Tree(loop, sorted(jobs, key=created), sorted(rollouts, key=created))


def get(args: argparse.Namespace) -> int:
    from kaizen.k8s.identity import current_namespace

    namespace = args.namespace or current_namespace()
    if args.interval <= 0:
        print("kaizen get: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        if not args.watch:
            print("\n".join(render(gather(namespace, args.loop))))
            return 0
        watch(lambda: gather(namespace, args.loop), args.interval, sys.stdout)
    except NotFound as problem:
        print(f"kaizen get: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def watch(read: Any, interval: float, out: TextIO, rounds: int | None = None) -> None:
    """Read and draw until interrupted (or ``rounds`` reads): in place on a terminal, else each change plainly."""
    terminal = out.isatty()
    last: list[str] | None = None
    count = 0
    while rounds is None or count < rounds:
        lines = render(read())
        if terminal:
            width = terminal_width(out)
            out.write(HOME + "".join(line[:width] + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW)
            out.flush()
        elif lines != last:
            out.write(("\n" if last is not None else "") + "\n".join(lines) + "\n")
            out.flush()
        last = lines
        count += 1
        if rounds is None or count < rounds:
            time.sleep(interval)


def terminal_width(out: TextIO) -> int:
    """The terminal's own width (a COLUMNS inherited from elsewhere may be stale), else shutil's guess."""
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):
        return shutil.get_terminal_size().columns


# ------------------------------------------------------------------------------------------------------ render


def render(tree: Tree) -> list[str]:
    """The tree as lines of text."""
    loop, status = tree.loop, tree.loop.get("status") or {}
    meta = loop["metadata"]
    model = status.get("model") or {}
    serving = f"serving {model['version']}" if model.get("version") else "serving nothing yet"
    lines = [f"ImprovementLoop {meta['namespace']}/{meta['name']}  {status.get('phase') or 'Pending'}  {serving}"
             + (f" since {_time(model['since'])}" if model.get("since") else "")]
    details = []
    signals = status.get("signals") or []
    if signals:
        specs = {s["name"]: s for s in (loop.get("spec") or {}).get("signals", [])}
        details.append("signals: " + "  ".join(_signal(s, specs.get(s["name"], {})) for s in signals))
    budget = status.get("budget")
    if budget is not None:
        policy = (loop.get("spec") or {}).get("policy") or {}
        details.append(f"budget: {budget.get('retrains', 0)}/{policy.get('maxRetrainsPerWeek', 3)} retrains, "
                       f"{_num(budget.get('gpuHours', 0))}/{_num(policy.get('gpuHoursPerWeek', 24))} GPU hours "
                       "in 7 days")
    candidate = status.get("candidate") or {}
    if candidate.get("version"):
        details.append(f"candidate: {candidate['version']}")
    invalid = _condition(status, "InvalidSpec")
    if invalid and invalid.get("status") == "True":
        details.append(f"invalid spec: {invalid.get('message', '')}")
    children: list[tuple[str, list[str]]] = []
    claimed: set[str] = set()
    for job in tree.jobs:
        rollouts = [r for r in tree.rollouts if (r.get("spec") or {}).get("retrainJobRef") == job["metadata"]["name"]]
        claimed.update(r["metadata"]["name"] for r in rollouts)
        children.append(_job(job, rollouts))
    children.extend(_rollout(r) for r in tree.rollouts if r["metadata"]["name"] not in claimed)
    decisions = status.get("decisions") or []
    items: list[tuple[str, list[str]]] = [(d, []) for d in details] + children
    if decisions:
        items.append((f"decisions (newest first, {min(len(decisions), DECISIONS_SHOWN)} of {len(decisions)}):",
                      [_decision(d) for d in decisions[:DECISIONS_SHOWN]]))
    return lines + _branches(items)


def _branches(items: list[tuple[str, list[Any]]], prefix: str = "") -> list[str]:
    """Draw (head, children) items as a tree; a child is a line or a nested (head, children) item."""
    lines = []
    for i, (head, children) in enumerate(items):
        last = i == len(items) - 1
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{head}")
        nested = [c if isinstance(c, tuple) else (c, []) for c in children]
        lines.extend(_branches(nested, prefix + ("   " if last else "│  ")))
    return lines


def _job(job: dict[str, Any], rollouts: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    status = job.get("status") or {}
    candidate = (status.get("candidate") or {}).get("version")
    head = "  ".join(filter(None, [f"RetrainJob {job['metadata']['name']}", status.get("phase") or "Pending",
                                   status.get("verdict"), f"candidate {candidate}" if candidate else None]))
    children: list[Any] = []
    if status.get("message"):
        children.append(status["message"])
    for gate in status.get("gates") or []:
        cohort = f"[{gate['cohort']}]" if gate.get("cohort") else ""
        children.append(f"gate {gate['dataset']}.{gate['metric']}{cohort}: candidate {_num(gate.get('candidate'))} "
                        f"vs baseline {_num(gate.get('baseline'))} ({gate['threshold']}) "
                        f"{'passed' if gate['passed'] else 'FAILED'}")
    children.extend(_rollout(r) for r in rollouts)
    return head, children


def _rollout(rollout: dict[str, Any]) -> tuple[str, list[Any]]:
    spec, status = rollout.get("spec") or {}, rollout.get("status") or {}
    steps = spec.get("steps") or []
    step = status.get("currentStep")
    parts = [f"Rollout {rollout['metadata']['name']}", status.get("phase") or "Pending",
             f"{(spec.get('stableModel') or {}).get('version')} -> {(spec.get('canaryModel') or {}).get('version')}"]
    if step is not None:
        ended = status.get("phase") in ("Promoted", "RolledBack", "Aborted")
        at = f" {_step(steps[step])}" if step < len(steps) else "" if ended else " (promoting)"
        parts.append(f"step {min(step + 1, len(steps))}/{len(steps)}{at}")
    if status.get("canaryWeight") is not None:
        parts.append(f"weight {status['canaryWeight']}%")
    if status.get("awaitingApproval"):
        parts.append("awaiting approval")
    children: list[Any] = []
    if status.get("message"):
        children.append(status["message"])
    analysis = status.get("analysis") or []
    if analysis:
        look = analysis[0]
        children.append((f"analysis {_time(look['time'])} step {look['step']} at {look['weight']}%: "
                         f"{look['verdict']} ({len(analysis)} looks kept)", [_metric(m) for m in look["metrics"]]))
    action = status.get("lastAction")
    if action:
        children.append(f"last action: {action['action']} by {action['by']}: {action['outcome']}")
    return "  ".join(parts), children


def _metric(m: dict[str, Any]) -> str:
    canary, stable = m.get("canary") or {}, m.get("stable") or {}
    text = f"{m['name']}: {m['verdict']}  canary {_num(canary.get('value'))}"
    if canary.get("total") is not None:
        text += f" ({_num(canary.get('good'))}/{_num(canary.get('total'))})"
    text += f" vs stable {_num(stable.get('value'))}"
    if stable.get("total") is not None:
        text += f" ({_num(stable.get('good'))}/{_num(stable.get('total'))})"
    if m.get("delta") is not None:
        text += f"  delta {_num(m['delta'])}"
    if m.get("ciLow") is not None or m.get("ciHigh") is not None:
        text += f"  CI [{_num(m.get('ciLow'))}, {_num(m.get('ciHigh'))}]"
    if m.get("evidence") is not None:
        text += f"  e-value {_num(m['evidence'])}"
    return text


def _step(step: dict[str, Any]) -> str:
    if "setWeight" in step:
        return f"setWeight {step['setWeight']}"
    if "analysis" in step:
        return f"analysis {step['analysis'].get('duration')}"
    duration = (step.get("pause") or {}).get("duration")
    return f"pause {duration}" if duration else "pause (until approved)"


def _signal(s: dict[str, Any], spec: dict[str, Any]) -> str:
    bounds = ", ".join(f"{k} {_num(spec[k])}" for k in ("min", "max") if spec.get(k) is not None)
    return f"{s['name']} {_num(s.get('value'))}" + (f" ({bounds})" if bounds else "") + f" {s.get('state', 'Unknown')}"


def _decision(d: dict[str, Any]) -> str:
    text = f"{_time(d['time'])} {d['action']}: {d['reason']}"
    if d.get("outcome"):
        text += f" -> {d['outcome']}"
    return text


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _time(value: str) -> str:
    """An RFC 3339 time as its date and time to the second, in UTC."""
    return value.replace("T", " ")[:19] + "Z" if value else "-"
