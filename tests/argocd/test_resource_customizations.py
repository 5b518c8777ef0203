"""Kaizen's Argo CD health checks and actions, run as Argo CD's own tests run them (argo-cd ``util/lua``
``TestLuaHealthScript`` / ``TestLuaResourceActionsScript``): every ``health_test.yaml`` and ``action_test.yaml``
under ``argocd/resource_customizations``, on objects the real operator wrote (recorded by
tests/integration/test_argocd.py), in Argo CD's Lua environment (:mod:`tests.argocd.lua`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.argocd.lua import ACTION_TIME, ArgoLua, LuaError, json_equal

ROOT = Path(__file__).parents[2] / "argocd" / "resource_customizations"
KINDS = sorted(p for p in (ROOT / "kaizen.dev").iterdir() if p.is_dir())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def health_cases():
    return [pytest.param(kind, case, id=f"{kind.name}/{case['inputPath']}")
            for kind in KINDS for case in load(kind / "health_test.yaml")["tests"]]


def action_files():
    return [kind / "actions" / "action_test.yaml" for kind in KINDS if (kind / "actions").is_dir()]


def test_every_kind_has_health_and_the_states_the_issue_names():
    assert [k.name for k in KINDS] == ["ImprovementLoop", "RetrainJob", "Rollout"]
    statuses = {case.values[1]["healthStatus"]["status"] for case in health_cases()}
    assert {"Progressing", "Healthy", "Degraded", "Suspended", "Missing"} <= statuses


@pytest.mark.parametrize(("kind", "case"), health_cases())
def test_health(kind, case):
    obj = load(kind / case["inputPath"])
    assert ArgoLua().health((kind / "health.lua").read_text(), obj) == case["healthStatus"]


@pytest.mark.parametrize("path", action_files(), ids=lambda p: p.parent.parent.name)
def test_discovery(path):
    script = (path.parent / "discovery.lua").read_text()
    for case in load(path)["discoveryTests"]:
        found = ArgoLua().discover(script, load(path.parent / case["inputPath"]))
        assert sorted(found, key=lambda a: a["name"]) == case["result"], case["inputPath"]


@pytest.mark.parametrize("path", action_files(), ids=lambda p: p.parent.parent.name)
def test_actions(path):
    tests = load(path)["actionTests"]
    defined = sorted(p.parent.name for p in path.parent.glob("*/action.lua"))
    assert sorted({t["action"] for t in tests}) == defined  # every action is tested
    for case in tests:
        script = (path.parent / case["action"] / "action.lua").read_text()
        out = ArgoLua(now=ACTION_TIME).act(script, load(path.parent / case["inputPath"]))
        assert json_equal(out, load(path.parent / case["expectedOutputPath"])), case


def test_actions_are_the_cli_commands():
    """The same verbs as the kaizen CLI, on the kinds the CLI acts on."""
    from kaizen.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    loop = {p.parent.name for p in (ROOT / "kaizen.dev" / "ImprovementLoop" / "actions").glob("*/action.lua")}
    rollout = {p.parent.name for p in (ROOT / "kaizen.dev" / "Rollout" / "actions").glob("*/action.lua")}
    assert loop == {"approve", "retrain", "pause", "resume"} and rollout == {"approve", "promote", "abort"}
    assert loop | rollout <= commands


def test_the_environment_is_argo_cds_restricted_one():
    """No string or math library, no os global (only require("os") with time and date): a script that relies on
    more fails here, as it would in argocd-cm."""
    lua = ArgoLua()
    for script in ('return {x = string.format("%d", 1)}', "return {x = math.floor(1.5)}", 'return {x = ("a"):upper()}',
                   "return {x = os.date()}", 'return {x = io.open("/etc/passwd")}'):
        with pytest.raises(LuaError):
            lua.run(script, {})
    assert lua.run('local os = require("os"); return {t = os.time()}', {})["t"] > 0
    assert ArgoLua(open_libs=True).run('return {x = string.upper("a")}', {}) == {"x": "A"}


def test_results_go_through_argo_cds_json_encoding():
    lua = ArgoLua()
    assert lua.run("return {}", {}) == []
    assert lua.run("return {1, 2}", {}) == [1, 2]
    with pytest.raises(LuaError):
        lua.run('return {1, a = "b"}', {})
    assert lua.health('return {status = "Fine"}', {}) == {"status": "Unknown",
                                                           "message": "Lua returned an invalid health status"}
    with pytest.raises(LuaError):
        lua.health('return "Healthy"', {})
    # cleanReturnedObj: an emptied map stays the map it was (an action cannot clear annotations that way).
    assert lua.act('obj.metadata.annotations["a"] = nil; return obj', {"metadata": {"annotations": {"a": "1"}}}) == {
        "metadata": {"annotations": {"a": "1"}}}


def test_argocd_cm_is_generated_from_the_scripts_and_holds_them_as_argo_cd_reads_them():
    import runpy

    generator = runpy.run_path(str(ROOT.parent.parent / "hack" / "argocd-cm.py"))
    committed = (ROOT.parent / "argocd-cm.yaml").read_text()
    assert committed == generator["render"](), "argocd/argocd-cm.yaml is stale: run hack/argocd-cm.py"
    data = yaml.safe_load(committed)["data"]
    for kind in KINDS:
        key = f"kaizen.dev_{kind.name}"
        assert data[f"resource.customizations.health.{key}"] == (kind / "health.lua").read_text()
        if (kind / "actions").is_dir():
            actions = yaml.safe_load(data[f"resource.customizations.actions.{key}"])
            assert actions["discovery.lua"] == (kind / "actions" / "discovery.lua").read_text()
            assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
                p.parent.name: p.read_text() for p in (kind / "actions").glob("*/action.lua")}
