"""End to end: the README's main command, `kaizen dev demo`, takes a machine from nothing through the whole loop on a
served model -- real model-server pods behind a Service, simulated users who see only the answers and rate them on
their traces, and Kaizen deciding from what Prometheus and the collector saw -- and cleans up after itself.

* Scenario (a), `drift`: the users start asking something new, and 20 s later a policy change makes one of the
  served model's answers wrong; the collector's input drift rises before the users' dissatisfaction breaches; the
  loop retrains targeted at their corrections; the candidate passes its gates on the same holdout as the baseline;
  the canary is judged on the users' live feedback and promoted; the users' measured quality recovers, and the drift
  against the promoted version clears.
* Scenario (b), `cohort-regression`: the change applies to two cohorts only, and the team's data has no requests of
  the third; the candidate passes every offline gate but answers the third cohort wrongly live, and the canary's
  per-cohort analysis rolls it back, with the metric and its numbers in the message.

Both run with the demo's default routing, Gateway API: the users' requests go through a real gateway (Traefik) by
the HTTPRoute whose weights the Rollout sets. Each test checks that the gateway did the routing: at every step the
route's weights are the share the Rollout's status says it achieved (the weight it asked, once reached), the requests
the servers counted per track in Prometheus match that weight within a chi-square bound, and the route ends 100/0
on the stable. (Replica routing on real served models is covered in tests/integration/test_rollout_gateway.py.)

Nothing in the demo sets a quality or an error rate: every number asserted here was measured from answers. The pods
run only on the local stack (kwok's node `kaizen-gpu-0` and the dev node agent), so with KAIZEN_TEST_KUBECONFIG
(kind, any cluster) these tests are skipped; test_release.py covers what needs only a kubeconfig.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.gateway import CHI2_Q, chi_square

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(os.environ.get("KAIZEN_TEST_KUBECONFIG")),
                       reason="model-server and training pods run only on the local stack, through the dev node agent"),
]
REPO_ROOT = Path(__file__).parents[2]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split(") ", 1)[1].split()[0]
        except (OSError, IndexError):  # the process ended while we looked
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def demo(tmp_path: Path, scenario: str) -> str:
    argv = [sys.executable, "-m", "kaizen", "dev", "demo", "--dir", str(tmp_path / "demo"), "--scenario", scenario]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert processes_mentioning(str(tmp_path)) == [], output
    assert "Traceback" not in output, output
    return output


def gate(output: str, metric: str) -> tuple[float, float, str]:
    """Candidate, baseline and outcome of a gate line of the demo's output."""
    match = re.search(rf"gate {re.escape(metric)} \([^)]*\): candidate ([0-9.]+), baseline ([0-9.]+): (\w+)", output)
    assert match, output
    return float(match.group(1)), float(match.group(2)), match.group(3)


def measured(output: str, version: str) -> list[float]:
    """Every quality the demo measured for ``version`` from the users' judgements, in order."""
    return [float(q) / 100 for q in re.findall(rf"Measured: {re.escape(version)} answered ([0-9.]+)% of \d+ requests",
                                               output)]


ROUTING = re.compile(r"Routing: step (\d+) (\w+): canary weight (\d+)% asked, ([0-9.]+)% achieved, \d+ canary "
                     r"pod\(s\); HTTPRoute support-bot: (.*)")
SERVED = re.compile(r"Served at ([0-9.]+)% canary: the servers counted (\d+) stable and (\d+) canary requests")


def backends(text: str) -> dict[str, int]:
    return {name: int(weight) for name, weight in (part.split("=") for part in text.split(", "))}


def assert_routed_by_the_gateway(output: str, ending: str) -> None:
    """What shows that the gateway split the canary's traffic, and gave it back to the stable (module docstring)."""
    looks = [(int(step), phase, int(asked), float(achieved), backends(route))
             for step, phase, asked, achieved, route in ROUTING.findall(output)]
    assert looks and looks[-1][1] == ending, output
    for step, phase, asked, achieved, route in looks:
        # The status says what the route carries, at every look that held (the route as written has no weights
        # until the canary serves: the stable's defaults to 1).
        canary, stable = route.get("support-bot-canary", 0), route["support-bot-stable"]
        assert 100 * canary / (stable + canary) == achieved, (step, phase, asked, achieved, route)
        assert canary == 0 or stable + canary == 100, route
    # The weights the steps asked were reached on the route (a setWeight step ends in the look that routes it, once
    # the canary is ready at its size; a promoted canary reached them all).
    under_way = ("Progressing", "Paused")  # Paused: holding at its weight for metrics or approval
    asked = {a for _, phase, a, _, _ in looks if phase in under_way and a}
    reached = {a for _, phase, a, achieved, _ in looks if phase in under_way and a and achieved == a}
    assert 50 in reached and (ending != "Promoted" or reached == asked == {50, 100}), (asked, reached)
    served = [(float(w), int(s), int(c)) for w, s, c in SERVED.findall(output)]
    split = [(w, s, c) for w, s, c in served if 0 < w < 100]
    assert split, output
    for weight, stable, canary in split:
        assert stable + canary >= 100 and chi_square(canary, stable + canary, weight) < CHI2_Q[1], (weight, stable,
                                                                                                  canary)
    assert all(stable == 0 and canary > 0 for w, stable, canary in served if w == 100), served
    assert re.search(r"Route after the rollout: HTTPRoute support-bot: support-bot-stable=100, support-bot-canary=0\n",
                     output), output


def test_drift_is_repaired_by_a_targeted_retrain_and_the_users_see_it(tmp_path):
    output = demo(tmp_path, "drift")
    # Before the change the users found v1 right; after it, v1's answers on returns are wrong and users say so.
    healthy, drifted = measured(output, "v1")[:2]
    assert healthy >= 0.95 and drifted < healthy - 0.05, output
    calm = re.search(r"Signals: dissatisfaction=([0-9.]+) \(Healthy\)", output)
    assert calm and float(calm.group(1)) <= 0.15, output
    assert re.search(r"dissatisfaction=[0-9.]+ \(Breached\)", output), output
    # The changed intent and the new one lead the targets (users also rate a few right answers down, so others may
    # follow them).
    scenarios = re.search(r'targets \{"categories": \[[^]]*"incorrect"[^]]*\][^}]*"scenarios": \[([^]]*)\]', output)
    assert scenarios and {'"refund.return"', '"plan.pause"'} <= set(scenarios.group(1).split(", ")[:2]), output
    # The collector saw the requests themselves change (the new intent) before the users' verdict breached.
    drift = re.search(r"Input drift: the collector saw the requests change (\d+)s after the change \(novel share "
                      r"([0-9.]+), novelty p ([0-9.e-]+); request mix PSI ([0-9.]+), chi-square p ([0-9.e-]+)\); the "
                      r"users' dissatisfaction breached (\d+)s after it", output)
    assert drift and int(drift.group(1)) < int(drift.group(6)), output
    # Drifted is significant at the pass's alpha (0.01) by the embeddings' novelty or by the request mix.
    novelty_p, mix_psi, mix_p = float(drift.group(3)), float(drift.group(4)), float(drift.group(5))
    assert (novelty_p < 0.01 and float(drift.group(2)) > 0) or (mix_p < 0.01 and mix_psi > 0), output

    # The trainer ran for real on the users' corrections: the candidate learnt the new policy, lost nothing else.
    [job] = re.findall(r"RetrainJob (support-bot-retrain-[0-9a-f]+): Succeeded, verdict Passed", output)
    candidate, baseline, outcome = gate(output, "holdout.exactMatch.refund.return")
    assert outcome == "passed" and candidate - baseline >= 0.5, output
    candidate, baseline, outcome = gate(output, "holdout.exactMatch")
    assert outcome == "passed" and candidate >= baseline, output

    # The canary was judged on live feedback, promoted, and the users' measured quality recovered.
    assert re.search(rf"Rollout support-bot-rollout-[0-9a-f]+: Promoted: Promoted {job}", output), output
    [after] = measured(output, job)
    assert after >= 0.95 and after > drifted + 0.05, output
    assert re.search(rf"improvementloop.kaizen.dev/support-bot +Observing +{job}", output), output
    assert re.search(r"outcome: Rollout support-bot-rollout-[0-9a-f]+ promoted", output), output
    # The drift's reference follows the served version: the promoted one, trained on the new requests, is not drifted.
    assert re.search(rf"Input drift against {job}'s first answers \(.*\): none", output), output
    # It ends by writing the loop's report (kaizen report), with its figures embedded.
    report = re.search(r"==> Report: (\S+)", output)
    assert report and Path(report.group(1)) == (tmp_path / "demo" / "report.html").resolve(), output
    assert Path(report.group(1)).read_text().count("src='data:image/png;base64,") >= 2
    assert "The story ended as it should (Promoted)" in output
    assert_routed_by_the_gateway(output, "Promoted")
    assert 100 in [float(w) for w, _, _ in SERVED.findall(output)], output  # the canary alone served, then promoted


def test_a_candidate_that_fails_one_cohort_live_is_rolled_back_on_its_feedback(tmp_path):
    output = demo(tmp_path, "cohort-regression")
    [job] = re.findall(r"RetrainJob (support-bot-retrain-[0-9a-f]+): Succeeded, verdict Passed", output)
    # Offline, on the team's holdout, the candidate looked strictly better.
    candidate, baseline, outcome = gate(output, "holdout.exactMatch")
    assert outcome == "passed" and candidate > baseline, output

    # Live, the business cohort's feedback on the canary turned it back, with the numbers.
    rolled_back = re.search(r"Rollout support-bot-rollout-[0-9a-f]+: RolledBack: (.*)", output)
    assert rolled_back, output
    message = rolled_back.group(1)
    floor = re.search(r"metric business-satisfaction failed: canary ([0-9.]+) is below the minimum 0\.8", message)
    assert floor and float(floor.group(1)) < 0.8, message
    assert re.search(r"improvementloop.kaizen.dev/support-bot +\w+ +v1\b", output), output
    assert "The story ended as it should (RolledBack)" in output
    assert job in output
    assert_routed_by_the_gateway(output, "RolledBack")
