"""A missing prerequisite of the dev stack is one line that says what to do: the binaries' lookup
(:mod:`kaizen.dev.binaries`, Prometheus included) and ``kaizen dev cluster up`` / ``kaizen dev demo`` run as a new
user runs them, on a machine where ``make setup`` has not built anything yet (an empty ``KAIZEN_CACHE``)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kaizen import cli
from kaizen.dev import binaries
from kaizen.dev.binaries import BinaryNotFoundError, find_binary, versions


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KAIZEN_CACHE", str(cache))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.delenv("KAIZEN_PROMETHEUS", raising=False)
    return cache


def test_prometheus_is_pinned_and_found_in_the_cache_like_the_other_binaries(empty_cache: Path) -> None:
    version = versions()["prometheus"]
    assert version.startswith("v0.3"), "Prometheus 3.x's Go module versions are v0.3XX.Y"
    built = executable(empty_cache / "bin" / f"prometheus-{version}" / "prometheus")
    assert find_binary("prometheus") == built


def test_a_missing_prometheus_says_to_run_make_setup_in_one_line(empty_cache: Path) -> None:
    with pytest.raises(BinaryNotFoundError) as raised:
        find_binary("prometheus")
    message = str(raised.value)
    assert "\n" not in message
    assert f"prometheus {versions()['prometheus']} was not found" in message
    assert str(empty_cache / "bin" / f"prometheus-{versions()['prometheus']}") in message
    assert "run `make setup` first" in message


def test_missing_gateway_parts_say_to_run_make_setup_in_one_line(empty_cache: Path) -> None:
    with pytest.raises(BinaryNotFoundError) as raised:
        find_binary("traefik")
    assert f"traefik {versions()['traefik']} was not found" in str(raised.value)
    with pytest.raises(BinaryNotFoundError) as raised:
        binaries.gateway_api_crds()
    message = str(raised.value)
    assert "\n" not in message and "run `make setup` first" in message
    assert f"the Gateway API {versions()['gateway_api']} CRDs were not found" in message
    generated = empty_cache / "bin" / f"gateway-api-{versions()['gateway_api']}" / "x_httproutes.yaml"
    generated.parent.mkdir(parents=True)
    generated.write_text("kind: CustomResourceDefinition\n")
    assert binaries.gateway_api_crds() == [generated]


def test_missing_kubeflow_trainer_crds_say_to_run_make_setup_in_one_line(empty_cache: Path) -> None:
    with pytest.raises(BinaryNotFoundError) as raised:
        binaries.kubeflow_trainer_crds()
    message = str(raised.value)
    assert "\n" not in message and "run `make setup` first" in message
    assert f"the Kubeflow Trainer {versions()['kubeflow_trainer']} CRDs were not found" in message
    generated = empty_cache / "bin" / f"kubeflow-trainer-{versions()['kubeflow_trainer']}" / "x_trainjobs.yaml"
    generated.parent.mkdir(parents=True)
    generated.write_text("kind: CustomResourceDefinition\n")
    assert binaries.kubeflow_trainer_crds() == [generated]


def test_kaizen_prometheus_overrides_the_pinned_build(empty_cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    executable(empty_cache / "bin" / f"prometheus-{versions()['prometheus']}" / "prometheus")
    own = executable(tmp_path / "own" / "prometheus")
    monkeypatch.setenv("KAIZEN_PROMETHEUS", str(own))
    assert find_binary("prometheus") == own


@pytest.mark.parametrize("problem", ["missing", "not executable", "a directory"])
def test_a_kaizen_prometheus_that_cannot_run_is_an_error_not_a_fallback(
    problem: str, empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executable(empty_cache / "bin" / f"prometheus-{versions()['prometheus']}" / "prometheus")
    own = tmp_path / "own" / "prometheus"
    if problem == "not executable":
        own.parent.mkdir()
        own.write_text("")
    elif problem == "a directory":
        own.mkdir(parents=True)
    monkeypatch.setenv("KAIZEN_PROMETHEUS", str(own))
    with pytest.raises(BinaryNotFoundError, match=f"KAIZEN_PROMETHEUS={own} is not an executable file") as raised:
        find_binary("prometheus")
    assert "\n" not in str(raised.value)


def run_kaizen(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # From another folder, as a user runs .venv/bin/kaizen; tests/conftest.py puts this checkout on PYTHONPATH.
    return subprocess.run([sys.executable, "-m", "kaizen", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60, check=False)


def clean_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBEBUILDER_ASSETS", "KAIZEN_PROMETHEUS")}
    return {**env, "KAIZEN_CACHE": str(cache)}


def test_cluster_up_before_make_setup_prints_one_line_and_starts_nothing(empty_cache: Path, tmp_path: Path) -> None:
    result = run_kaizen("dev", "cluster", "up", "--dir", str(tmp_path / "cluster"), env=clean_env(empty_cache),
                        cwd=tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"kaizen dev cluster up: etcd {versions()['etcd']} was not found")
    assert "run `make setup` first" in result.stderr
    assert not (tmp_path / "cluster").exists()



def demo_on_a_given_cluster(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``kaizen dev demo --kubeconfig`` (a cluster that need not answer: the demo must stop before using it)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    return run_kaizen("dev", "demo", "--kubeconfig", str(kubeconfig), "--dir", str(tmp_path / "demo"), env=env,
                      cwd=tmp_path)

def test_demo_without_prometheus_prints_one_line_before_starting_anything(empty_cache: Path, tmp_path: Path) -> None:
    # Everything else is there (kubectl serves the given cluster): the case of a machine without Debian's package.
    assets = tmp_path / "assets"
    executable(assets / "kubectl")
    env = {**clean_env(empty_cache), "KUBEBUILDER_ASSETS": str(assets)}
    result = demo_on_a_given_cluster(tmp_path, env)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"kaizen dev demo: prometheus {versions()['prometheus']} was not found")
    assert "run `make setup` first" in result.stderr
    assert result.stdout == ""  # The demo itself never began.
    assert not (tmp_path / "demo").exists()


def test_demo_without_traefik_prints_one_line_before_starting_anything(empty_cache: Path, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    executable(assets / "kubectl")
    executable(assets / "prometheus")
    env = {**clean_env(empty_cache), "KUBEBUILDER_ASSETS": str(assets)}
    result = demo_on_a_given_cluster(tmp_path, env)
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"kaizen dev demo: traefik {versions()['traefik']} was not found")
    assert result.stdout == "" and not (tmp_path / "demo").exists()


def test_a_checkout_without_versions_env_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # What a copy of the package outside a checkout (site-packages) sees: no hack/versions.env beside it.
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setattr(binaries, "VERSIONS_FILE", tmp_path / "hack" / "versions.env")
    versions.cache_clear()
    try:
        status = cli.main(["dev", "cluster", "up", "--dir", str(tmp_path / "cluster")])
    finally:
        versions.cache_clear()
    err = capsys.readouterr().err
    assert status == 1
    assert err == (f"kaizen dev cluster up: {tmp_path / 'hack' / 'versions.env'} is missing: the dev stack runs from "
                   "a checkout of the Kaizen repository; run `make setup` in the checkout and use its "
                   ".venv/bin/kaizen\n")


def test_a_prometheus_that_fails_to_start_in_the_demo_is_one_line(empty_cache: Path, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    executable(assets / "kubectl")
    executable(assets / "traefik")  # the demo's gateway, looked for before anything starts
    broken = tmp_path / "broken" / "prometheus"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'err=\"error loading config\"' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {**clean_env(empty_cache), "KUBEBUILDER_ASSETS": str(assets), "KAIZEN_PROMETHEUS": str(broken)}
    result = demo_on_a_given_cluster(tmp_path, env)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == f"kaizen dev demo: Prometheus exited with status 1 (logs: {tmp_path / 'demo'})\n"
