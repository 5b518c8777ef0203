"""The server's names, pure (kaizen_server.models): who answers a request, how an alias splits and pins, and what an
adapter file changes."""

from __future__ import annotations

import itertools

import pytest

from kaizen.api.adapters import AdapterSet
from kaizen_server.models import FILE, RUNTIME, Held, NotServed, Registry, Served

OWN = Served("bot", None, "v1", "stable")


def registry(*adapters: tuple[str, str, str], origin: str = FILE, aliases=(), draws=None) -> Registry:
    wanted = AdapterSet.model_validate({"adapters": [{"name": n, "uri": f"/a/{n}", "version": v, "track": t}
                                                     for n, v, t in adapters], "aliases": list(aliases)})
    counter = itertools.cycle(draws or [0.5])
    return Registry(OWN, {a.name: Held(a, origin) for a in wanted.adapters}, {a.name: a for a in wanted.aliases},
                    choose=lambda: next(counter))


def test_a_request_names_the_own_model_or_an_adapter_and_its_answers_carry_that_version_and_track():
    names = registry(("bot-v2", "v2", "canary"))
    assert names.resolve(None, {}).served == OWN
    assert names.resolve("bot-v2", {}).served == Served("bot-v2", "bot-v2", "v2", "canary")
    with pytest.raises(NotServed, match="'bot-v3' is not served here; this server serves 'bot', 'bot-v2'"):
        names.resolve("bot-v3", {})


def test_an_alias_splits_by_weight_and_marks_the_answer_with_the_version_that_answered():
    split = {"name": "bot", "targets": [{"model": "bot", "weight": 90}, {"model": "bot-v2", "weight": 10}],
             "session_affinity": {"header": "X-Kaizen-Version"}}
    draws = [i / 100 + 0.005 for i in range(100)]
    names = registry(("bot-v2", "v2", "canary"), aliases=[split], draws=draws)
    answers = [names.resolve("bot", {}) for _ in draws]
    assert sum(a.served.version == "v2" for a in answers) == 10
    assert {a.marker for a in answers} == {("X-Kaizen-Version", "v1"), ("X-Kaizen-Version", "v2")}
    # A follow-up that echoes the marker stays on its version, whatever the draw.
    assert {names.resolve("bot", {"X-Kaizen-Version": "v2"}).served.version for _ in draws} == {"v2"}
    assert {names.resolve("bot", {"X-Kaizen-Version": "v1"}).served.version for _ in draws} == {"v1"}
    # A version the alias does not split to (a rolled-back canary) takes the split again.
    assert sum(names.resolve("bot", {"X-Kaizen-Version": "v0"}).served.version == "v2" for _ in draws) == 10


def test_a_cookie_pins_too_and_the_answer_sets_it():
    split = {"name": "bot", "targets": [{"model": "bot", "weight": 0}, {"model": "bot-v2", "weight": 100}],
             "session_affinity": {"cookie": "kaizen-canary"}}
    names = registry(("bot-v2", "v2", "canary"), aliases=[split])
    first = names.resolve("bot", {})
    assert first.served.version == "v2" and first.marker == ("Set-Cookie", "kaizen-canary=v2; Path=/; HttpOnly")
    assert names.resolve("bot", {"Cookie": "theme=dark; kaizen-canary=v1"}).served.version == "v1"
    assert names.resolve("bot", {"Cookie": "xkaizen-canary=v1"}).served.version == "v2"


def test_the_plan_loads_what_the_file_adds_unloads_what_it_drops_and_leaves_runtime_adapters_alone():
    names = registry(("bot-v2", "v2", "canary"), ("bot-v3", "v3", "canary"))
    names.adapters["manual"] = Held(registry(("manual", "m1", "canary")).adapters["manual"].adapter, RUNTIME)
    wanted = AdapterSet.model_validate({
        "adapters": [{"name": "bot-v3", "uri": "/a/bot-v3", "version": "v3"},
                     {"name": "bot-v4", "uri": "/a/bot-v4", "version": "v4"},
                     {"name": "manual", "uri": "/elsewhere", "version": "m2"}],
        "aliases": [{"name": "bot", "targets": [{"model": "bot", "weight": 50}, {"model": "bot-v4", "weight": 50}]},
                    {"name": "other", "targets": [{"model": "gone", "weight": 1}]}]})
    plan = names.plan(wanted)
    assert [a.name for a in plan.load] == ["bot-v4"] and plan.unload == ("bot-v2",)
    assert [a.name for a in plan.aliases] == ["bot"]
    assert plan.problems == ("adapter manual: loaded through /v1/load_lora_adapter already; left as is",
                             "alias other: no model gone is served here; left out")
    # The same name at another place is unloaded and loaded again.
    moved = AdapterSet.model_validate({"adapters": [{"name": "bot-v2", "uri": "/new", "version": "v2"}]})
    plan = registry(("bot-v2", "v2", "canary")).plan(moved)
    assert plan.unload == ("bot-v2",) and [a.uri for a in plan.load] == ["/new"]


def test_a_bad_adapter_set_says_what_is_wrong():
    with pytest.raises(ValueError, match="weights sum to 0"):
        AdapterSet.model_validate({"aliases": [{"name": "bot", "targets": [{"model": "bot", "weight": 0}]}]})
    with pytest.raises(ValueError, match="bot-v2: an adapter or alias name is used twice"):
        AdapterSet.model_validate({"adapters": [{"name": "bot-v2", "uri": "/a", "version": "v2"}],
                                   "aliases": [{"name": "bot-v2", "targets": [{"model": "bot", "weight": 1}]}]})
