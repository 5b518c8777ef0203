"""``kaizen report LOOP``: a loop's history as one self-contained HTML page, with PNG figures (matplotlib) embedded.

The history is where Kaizen keeps it: the loop's status (served model, decision log), its RetrainJobs (gates, with
candidate and baseline numbers) and Rollouts (every analysis look, with the always-valid intervals), read through
:func:`kaizen.cli.get.gather`; and Prometheus for the signals over time, read with the loop's own queries (the
current model's version fills ``{{version}}``). Without Prometheus (unreachable from where the command runs: pass
``--prometheus``), the signals figure shows the values the decisions recorded.

The page has: the signals over time, with breaches, retrains, canary steps (weights), promotions and rollbacks
marked; canary against stable at each analysis look with the intervals; the gate tables; the decision log.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kaizen.cli.get import NotFound, Tree, gather

#: Points per signal asked of Prometheus: enough for a smooth line, few enough for a quick report.
POINTS = 400
#: Analysis looks listed in each Rollout's table (newest first); its figure shows every look the status keeps.
LOOKS_LISTED = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write an ImprovementLoop's history as an HTML report with figures",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("loop", help="name of the ImprovementLoop")
    parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    parser.add_argument("-o", "--output", type=Path, help="file to write (default: LOOP-report.html)")
    parser.add_argument("--prometheus", metavar="URL",
                        help="Prometheus to read the signals from (default: the loop's spec.prometheus.url)")
    parser.set_defaults(func=report)


@dataclass
class History:
    """Everything the report shows: the objects, and each signal's values over time (or why there are none)."""

    tree: Tree
    signals: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    signals_source: str = ""
    generated: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def report(args: argparse.Namespace) -> int:
    from kaizen.k8s.identity import current_namespace

    namespace = args.namespace or current_namespace()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("kaizen report: needs matplotlib: pip install 'kaizen[report]'", file=sys.stderr)
        return 1
    try:
        tree = gather(namespace, args.loop)
    except NotFound as problem:
        print(f"kaizen report: {problem}", file=sys.stderr)
        return 1
    history = History(tree)
    history.signals, history.signals_source = read_signals(tree, namespace, args.prometheus)
    output = args.output or Path(f"{args.loop}-report.html")
    try:
        output.write_text(render(history))
    except OSError as error:
        print(f"kaizen report: cannot write {output}: {error.strerror}; choose another path with -o", file=sys.stderr)
        return 1
    print(output.resolve())
    return 0


def read_signals(tree: Tree, namespace: str, url: str | None) -> tuple[dict[str, list[tuple[datetime, float]]], str]:
    """Each signal's values since the loop was created, and where they came from (or why they are missing)."""
    from kaizen.k8s import resources
    from kaizen.logic.promql import fill
    from kaizen.metrics.prometheus import PrometheusClient, PrometheusError

    spec, status = tree.loop.get("spec") or {}, tree.loop.get("status") or {}
    prometheus = spec.get("prometheus") or {}
    url = url or prometheus.get("url")
    if not url:
        return {}, "no Prometheus"
    token = None
    ref = prometheus.get("bearerTokenSecretRef")
    try:
        if ref:
            token = resources.read_secret_key(namespace, ref["name"], ref["key"])
        client = PrometheusClient(url, bearer_token=token, insecure_skip_verify=prometheus.get("insecureSkipVerify",
                                                                                              False))
        start = _parse(tree.loop["metadata"]["creationTimestamp"])
        end = datetime.now(timezone.utc)
        step = max((end - start).total_seconds() / POINTS, 1.0)
        version = (status.get("model") or {}).get("version", "")
        values = {s["name"]: client.series(fill(s["query"], namespace=namespace,
                                                target=spec["target"]["deployment"], version=version),
                                           start, end, step)
                  for s in spec.get("signals", [])}
    except (PrometheusError, KeyError) as error:
        return {}, f"Prometheus unavailable ({error}); the values the decisions recorded are shown instead"
    except Exception as error:  # noqa: BLE001  (a Secret that cannot be read: the report still has the rest)
        return {}, f"cannot read Prometheus' token ({error}); the values the decisions recorded are shown instead"
    return values, f"Prometheus at {url}"


# ------------------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Mark:
    """A moment marked on the signals figure."""

    time: datetime
    kind: str  # breach, retrain, canary, promoted, rolled back
    label: str


COLORS = {"breach": "#d62728", "retrain": "#9467bd", "canary": "#ff7f0e", "promoted": "#2ca02c",
          "rolled back": "#8c564b"}


def marks(tree: Tree) -> list[Mark]:
    """Breaches (from the decisions' evidence), retrains, canary starts, promotions and rollbacks, oldest first."""
    found: dict[tuple[str, str], Mark] = {}
    for decision in (tree.loop.get("status") or {}).get("decisions") or []:
        for signal in (decision.get("evidence") or {}).get("signals") or []:
            if signal.get("state") == "Breached" and signal.get("since"):
                found.setdefault(("breach", signal["since"]), Mark(_parse(signal["since"]), "breach",
                                                                    f"{signal['name']} breached"))
        if decision.get("action") == "Retrain":
            found[("retrain", decision["time"])] = Mark(_parse(decision["time"]), "retrain", "retrain")
    for rollout in tree.rollouts:
        status = rollout.get("status") or {}
        started = status.get("analysisStartedAt") or rollout["metadata"]["creationTimestamp"]
        version = (rollout.get("spec") or {}).get("canaryModel", {}).get("version", "?")
        found[("canary", rollout["metadata"]["name"])] = Mark(_parse(started), "canary", f"canary {version}")
        ended = _ended(rollout)
        if ended is not None and status.get("phase") in ("Promoted", "RolledBack"):
            kind = "promoted" if status["phase"] == "Promoted" else "rolled back"
            found[(kind, rollout["metadata"]["name"])] = Mark(ended, kind, f"{kind} {version}")
    return sorted(found.values(), key=lambda m: m.time)


def weights(rollout: dict[str, Any]) -> list[tuple[datetime, int]]:
    """The canary weight at each analysis look, oldest first (the looks are where Kaizen recorded it)."""
    return sorted((_parse(r["time"]), r["weight"]) for r in (rollout.get("status") or {}).get("analysis") or [])


def _ended(rollout: dict[str, Any]) -> datetime | None:
    progressing = next((c for c in (rollout.get("status") or {}).get("conditions") or []
                        if c.get("type") == "Progressing"), None)
    if progressing and progressing.get("status") == "False":
        return _parse(progressing["lastTransitionTime"])
    return None


# ------------------------------------------------------------------------------------------------------ figures


def _png(figure: Any) -> str:
    """The figure as base64 PNG, its time axes in UTC to the second."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    for ax in figure.axes:
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def signals_figure(history: History) -> str:
    """Signals over time, one panel each, bounds dashed, the marks as vertical lines; canary weights beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tree = history.tree
    specs = (tree.loop.get("spec") or {}).get("signals") or []
    recorded = _recorded_values(tree)
    rows = len(specs) + (1 if tree.rollouts else 0)
    figure, axes = plt.subplots(max(rows, 1), 1, figsize=(10, 2.4 * max(rows, 1)), sharex=True, squeeze=False)
    moments = marks(tree)
    for ax, spec in zip(axes[:, 0], specs):
        points = history.signals.get(spec["name"]) or recorded.get(spec["name"], [])
        if points:
            xs, ys = zip(*points)
            style = "-" if history.signals.get(spec["name"]) else "o"
            ax.plot(xs, ys, style, color="#1f77b4", label=spec["name"], markersize=4)
        for bound in ("min", "max"):
            if spec.get(bound) is not None:
                ax.axhline(spec[bound], color="#555", linestyle="--", linewidth=1, label=f"{bound} {spec[bound]:g}")
        ax.set_ylabel(spec["name"])
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    if tree.rollouts:
        ax = axes[-1, 0]
        for rollout in tree.rollouts:
            series = weights(rollout)
            if series:
                xs, ys = zip(*series)
                ax.step(xs, ys, where="post", label=f"{rollout['metadata']['name']} canary weight")
        ax.set_ylabel("canary %")
        ax.set_ylim(-5, 105)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        for mark in moments:
            ax.axvline(mark.time, color=COLORS[mark.kind], linewidth=1.2, alpha=0.8)
    top = axes[0, 0]
    for mark in moments:
        top.annotate(mark.label, (mark.time, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                     va="top", ha="right", color=COLORS[mark.kind])
    axes[-1, 0].set_xlabel("time (UTC)")
    figure.autofmt_xdate()
    return _png(figure)


def analysis_figure(rollout: dict[str, Any]) -> str | None:
    """Canary against stable at each look, per metric, and canary minus stable with its always-valid interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    looks = list(reversed((rollout.get("status") or {}).get("analysis") or []))
    names = sorted({m["name"] for look in looks for m in look.get("metrics") or []})
    if not names:
        return None
    spec_metrics = {m["name"]: m for m in ((rollout.get("spec") or {}).get("analysis") or {}).get("metrics") or []}
    figure, axes = plt.subplots(len(names), 2, figsize=(11, 3 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        points = [(_parse(look["time"]), look["weight"], m) for look in looks for m in look.get("metrics") or []
                  if m["name"] == name]
        times = [t for t, _, _ in points]
        values, deltas = axes[row, 0], axes[row, 1]
        for track, color in (("stable", "#1f77b4"), ("canary", "#ff7f0e")):
            ys = [((m.get(track) or {}).get("value")) for _, _, m in points]
            values.plot(times, [float("nan") if y is None else y for y in ys], "o-", color=color, label=track,
                        markersize=3)
        threshold = (spec_metrics.get(name) or {}).get("threshold") or {}
        for bound in ("min", "max"):
            if threshold.get(bound) is not None:
                values.axhline(threshold[bound], color="#d62728", linestyle="--", linewidth=1,
                               label=f"{bound} {threshold[bound]:g}")
        values.set_title(f"{name}: canary vs stable at each look", fontsize=10)
        values.legend(fontsize=8)
        values.grid(alpha=0.3)
        with_ci = [(t, m) for t, _, m in points if m.get("delta") is not None]
        if with_ci:
            xs = [t for t, _ in with_ci]
            low = [m.get("ciLow", m["delta"]) for _, m in with_ci]
            high = [m.get("ciHigh", m["delta"]) for _, m in with_ci]
            deltas.fill_between(xs, low, high, color="#ff7f0e", alpha=0.25, label="always-valid interval")
            deltas.plot(xs, [m["delta"] for _, m in with_ci], "o-", color="#ff7f0e", markersize=3,
                        label="canary - stable")
        regression = (spec_metrics.get(name) or {}).get("maxRegression")
        if regression is not None and (spec_metrics.get(name) or {}).get("ratio"):
            deltas.axhline(-regression, color="#d62728", linestyle="--", linewidth=1,
                           label=f"-maxRegression {regression:g}")
        deltas.axhline(0, color="#555", linewidth=0.8)
        for t, _, m in points:
            if m["verdict"] in ("Fail", "Error"):
                deltas.axvline(t, color="#d62728", alpha=0.4)
        deltas.set_title(f"{name}: canary - stable, with the interval", fontsize=10)
        deltas.legend(fontsize=8)
        deltas.grid(alpha=0.3)
    figure.autofmt_xdate()
    return _png(figure)


def _recorded_values(tree: Tree) -> dict[str, list[tuple[datetime, float]]]:
    """The signal values the decisions recorded (the fallback without Prometheus), oldest first."""
    values: dict[str, list[tuple[datetime, float]]] = {}
    for decision in (tree.loop.get("status") or {}).get("decisions") or []:
        for signal in (decision.get("evidence") or {}).get("signals") or []:
            if signal.get("value") is not None:
                values.setdefault(signal["name"], []).append((_parse(decision["time"]), signal["value"]))
    for status in (tree.loop.get("status") or {}).get("signals") or []:
        if status.get("value") is not None and (tree.loop.get("status") or {}).get("lastObserved"):
            values.setdefault(status["name"], []).append((_parse(tree.loop["status"]["lastObserved"]),
                                                          status["value"]))
    return {k: sorted(v) for k, v in values.items()}


# ------------------------------------------------------------------------------------------------------ page


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #2a7d2a; font-weight: 600; } .fail { color: #c0392b; font-weight: 600; }
img { max-width: 100%; } .muted { color: #777; font-size: 0.9em; }
"""


def render(history: History) -> str:
    """The whole page."""
    tree, e = history.tree, html.escape
    loop, status = tree.loop, tree.loop.get("status") or {}
    meta = loop["metadata"]
    model = status.get("model") or {}
    budget = status.get("budget") or {}
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>Kaizen report: {e(meta['namespace'])}/{e(meta['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Kaizen report: ImprovementLoop {e(meta['namespace'])}/{e(meta['name'])}</h1>",
        f"<p class='muted'>Generated {e(_show(history.generated))} from the loop's status, its "
        f"{len(tree.jobs)} RetrainJob(s) and {len(tree.rollouts)} Rollout(s); signals from "
        f"{e(history.signals_source)}.</p>",
        _table(["phase", "serving", "since", "candidate", "retrains (7 days)", "GPU hours (7 days)",
                "failures in a row"],
               [[status.get("phase") or "Pending", model.get("version") or "-", _show(model.get("since")),
                 (status.get("candidate") or {}).get("version") or "-", budget.get("retrains", 0),
                 budget.get("gpuHours", 0), status.get("consecutiveFailures") or 0]]),
        "<h2>Signals over time</h2>",
        f"<img alt='signals over time' src='data:image/png;base64,{signals_figure(history)}'>",
        "<p class='muted'>Vertical lines: " + ", ".join(
            f"<span style='color:{c}'>{k}</span>" for k, c in COLORS.items()) + "; dashed: the signals' bounds.</p>",
    ]
    parts.append("<h2>Canary against stable</h2>")
    drawn = 0
    for rollout in tree.rollouts:
        figure = analysis_figure(rollout)
        rs = rollout.get("status") or {}
        parts.append(f"<h3>Rollout {e(rollout['metadata']['name'])}: {e(rs.get('phase') or 'Pending')}</h3>"
                     f"<p>{e(rs.get('message') or '')}</p>")
        if figure:
            drawn += 1
            parts.append(f"<img alt='analysis of {e(rollout['metadata']['name'])}' "
                         f"src='data:image/png;base64,{figure}'>")
        parts.append(_looks(rollout))
    if not drawn:
        parts.append("<p>No analysis looks recorded.</p>")
    parts.append("<h2>Gates: candidate against baseline</h2>")
    for job in tree.jobs:
        js = job.get("status") or {}
        parts.append(f"<h3>RetrainJob {e(job['metadata']['name'])}: {e(js.get('phase') or 'Pending')} "
                     f"{e(js.get('verdict') or '')}</h3><p>{e(js.get('message') or '')}</p>")
        gates = js.get("gates") or []
        parts.append(_table(
            ["metric", "dataset", "cohort", "candidate", "baseline", "delta", "threshold", "result"],
            [[g["metric"], g["dataset"], g.get("cohort") or "overall", _n(g.get("candidate")), _n(g.get("baseline")),
              _n(None if g.get("candidate") is None or g.get("baseline") is None
                 else g["candidate"] - g["baseline"]), g["threshold"],
              _Cell("passed" if g["passed"] else "FAILED", "pass" if g["passed"] else "fail")] for g in gates])
            if gates else "<p>No gate results.</p>")
    if not tree.jobs:
        parts.append("<p>No RetrainJobs.</p>")
    decisions = status.get("decisions") or []
    parts.append(f"<h2>Decision log ({len(decisions)}, newest first)</h2>")
    parts.append(_table(["time", "action", "reason", "created", "outcome", "id"],
                        [[_show(d["time"]), d["action"], d["reason"], d.get("child") or "", d.get("outcome") or "",
                          d["id"]] for d in decisions]) if decisions else "<p>No decisions yet.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _looks(rollout: dict[str, Any]) -> str:
    looks = (rollout.get("status") or {}).get("analysis") or []
    rows = []
    for look in looks[:LOOKS_LISTED]:
        for m in look.get("metrics") or []:
            canary, stable = m.get("canary") or {}, m.get("stable") or {}
            rows.append([_show(look["time"]), look["step"], f"{look['weight']}%", m["name"],
                         _n(canary.get("value")), _n(stable.get("value")), _n(m.get("delta")),
                         f"[{_n(m.get('ciLow'))}, {_n(m.get('ciHigh'))}]", _n(m.get("evidence")),
                         _Cell(m["verdict"], "pass" if m["verdict"] == "Pass" else
                               "fail" if m["verdict"] in ("Fail", "Error") else "")])
    if not rows:
        return ""
    shown = f"the last {LOOKS_LISTED} of {len(looks)} looks" if len(looks) > LOOKS_LISTED else f"{len(looks)} looks"
    return f"<p class='muted'>Analysis, {shown}, newest first:</p>" + _table(
        ["look", "step", "weight", "metric", "canary", "stable", "delta", "interval", "e-value", "verdict"], rows)


@dataclass(frozen=True)
class _Cell:
    text: str
    css: str


def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, _Cell):
            return f"<td class='{value.css}'>{html.escape(value.text)}</td>"
        css = " class='num'" if isinstance(value, (int, float)) or (isinstance(value, str) and _numeric(value)) else ""
        return f"<td{css}>{html.escape(str(value))}</td>"

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows) + "</table>")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _show(value: datetime | str | None) -> str:
    if not value:
        return "-"
    moment = _parse(value) if isinstance(value, str) else value
    return (moment.astimezone(timezone.utc) - timedelta(microseconds=moment.microsecond)).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
