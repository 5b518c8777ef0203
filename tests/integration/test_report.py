"""``kaizen report LOOP`` on a real loop's history (the operator on a real API server with kube-controller-manager
and kwok, a real Prometheus scraping stable and canary emitters: breach, retrain, gates, a canary judged look by
look, promotion), rendered by headless Chromium: the page has its figures and tables, and is not blank."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from tests.fixtures.prerequisites import missing
from tests.fixtures.prometheus import emit, prometheus  # noqa: F401
from tests.integration.kube import apply, wait_for
from tests.integration.rollouts import running_operator
from tests.integration.test_cli_get import loop, serve, train

pytestmark = pytest.mark.integration
#: Where the committed screenshot of the README is written when KAIZEN_SCREENSHOT is set to a path.
SCREENSHOT = os.environ.get("KAIZEN_SCREENSHOT")


@pytest.fixture(scope="module")
def operator(crds):
    with running_operator(crds):
        yield crds


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("Chromium is missing: install it (sudo apt-get install chromium, or make setup as root) to run "
                    "the report's rendering test")
    return found


def headless(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", *args], capture_output=True, text=True, timeout=120)


def test_the_report_of_a_real_loop_renders_in_chromium_with_figures_and_tables(operator, namespace, prometheus,
                                                                                emit, tmp_path):
    browser = chromium()
    serve(operator, namespace, emit)
    apply(operator, namespace, loop(prometheus.url))
    train(operator, namespace)
    rollout = wait_for(operator, "improvementloop", "bot", namespace,
                       lambda o: (o.get("status", {}).get("candidate") or {}).get("rollout"), timeout=90)
    name = rollout["status"]["candidate"]["rollout"]
    wait_for(operator, "rollout", name, namespace, lambda o: o.get("status", {}).get("awaitingApproval"), timeout=90)
    env = {**os.environ, "KUBECONFIG": str(operator.kubeconfig)}
    subprocess.run([sys.executable, "-m", "kaizen", "approve", f"rollout/{name}", "-n", namespace], check=True,
                   capture_output=True, env=env)
    wait_for(operator, "improvementloop", "bot", namespace,
             lambda o: (o.get("status", {}).get("model") or {}).get("version") == "v4", timeout=90)

    out = tmp_path / "report.html"
    written = subprocess.run([sys.executable, "-m", "kaizen", "report", "bot", "-n", namespace, "-o", str(out)],
                             capture_output=True, text=True, env=env, timeout=120)
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == str(out.resolve())
    page = out.read_text()
    assert "src='http" not in page and "<script" not in page  # self-contained
    assert f"signals from Prometheus at {prometheus.url}" in page

    dom = headless(browser, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom.stdout)
    assert [alt for alt, _ in images] == ["signals over time", f"analysis of {name}"], dom.stdout[:2000]
    assert all(len(data) > 10_000 for _, data in images)  # real plots, not empty canvases
    tables = re.findall(r"<table>.*?</table>", dom.stdout, re.S)
    assert len(tables) >= 4  # summary, analysis looks, gates, decision log
    assert "holdout" in dom.stdout and "delta &gt;= 0" in dom.stdout and ">passed<" in dom.stdout
    assert re.search(r">Pass<", dom.stdout) and "Retrain" in dom.stdout and "RollOut" in dom.stdout
    assert "Promoted" in dom.stdout

    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "report.png"
    taken = headless(browser, f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr
    pixels = image.imread(str(shot))[..., :3]
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1200
    assert float(np.std(pixels)) > 0.05  # not a blank page
    colours = {tuple(c) for c in (pixels[::8, ::8] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 50  # figures in colour, not just text on white
