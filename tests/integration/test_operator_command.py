"""`kaizen operator` as the chart's Deployment runs it: a separate process that reconciles what it watches and
stops cleanly on SIGTERM. (Its own module, so that no in-process operator of another test reconciles for it.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.kube import apply, condition, reconciled, wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"

pytestmark = pytest.mark.integration


def test_kaizen_operator_command_reconciles_a_namespace(crds, namespace, tmp_path):
    env = {**os.environ, "KUBECONFIG": str(crds.kubeconfig)}
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "kaizen", "operator", "--namespace", namespace],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        doc = yaml.safe_load((EXAMPLES / "rollout.yaml").read_text())
        apply(crds, namespace, doc)
        obj = wait_for(crds, "rollout", doc["metadata"]["name"], namespace, reconciled, timeout=60)
        assert condition(obj, "Ready")["status"] == "True"
    finally:
        process.terminate()
        code = process.wait(timeout=30)
    assert code == 0, (tmp_path / "operator.log").read_text()
    assert "Handler 'register.<locals>.validate_spec' succeeded" in (tmp_path / "operator.log").read_text()
