"""The layer contracts in .importlinter hold on this checkout, and they do catch a violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'operator'}{os.pathsep}{tree / 'trainer-image'}"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / ".importlinter")],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_the_checkout_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_logic_that_talks_to_the_api_server_breaks_the_edge_contract(tmp_path: Path) -> None:
    for package in ("operator/kaizen", "trainer-image/kaizen_trainer", "trainer-image/kaizen_server"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    stats = tmp_path / "operator/kaizen/logic/stats.py"
    stats.write_text(stats.read_text() + "\nimport kubernetes  # noqa: E402,F401\n")
    trainer = tmp_path / "trainer-image/kaizen_trainer/curate.py"
    trainer.write_text(trainer.read_text() + "\nimport kaizen.k8s.client  # noqa: E402,F401\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert "kaizen.logic is not allowed to import kubernetes" in result.stdout
    assert "kaizen_trainer is not allowed to import kaizen.k8s" in result.stdout
