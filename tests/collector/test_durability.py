"""A 2xx means durable: ``kill -9`` during a stream of ingests loses no acknowledged item."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.collector.conftest import BACKENDS, database_url
from tests.collector.harness import Collector, call


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_loses_no_acknowledged_item(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    service = Collector(database_url(backend, tmp_path, request), tmp_path).start()
    acknowledged: list[tuple[str, str]] = []  # (kind, id)
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        # Bounded: at most 400 requests per worker, and it stops at the first refused connection after the kill.
        for i in range(400):
            if stop.is_set():
                return
            trace_id = f"w{worker}-{i}-{uuid.uuid4().hex[:6]}"
            body = {"id": trace_id, "model": "durable", "modelVersion": "v1", "input": "q", "output": "a"}
            batch = {"items": [{**body, "id": f"{trace_id}-b{j}"} for j in range(5)]}
            try:
                if i % 2:
                    code, answer = call(service, "POST", "/v1/traces", batch, scope="ingest", timeout=5)
                    acked = [("trace", item["id"]) for item in answer["items"]] if code == 201 else []
                else:
                    code, _ = call(service, "POST", "/v1/traces", body, scope="ingest", timeout=5)
                    acked = [("trace", trace_id)] if code == 201 else []
                    code, answer = call(service, "POST", "/v1/feedback", {"id": f"f-{trace_id}", "traceId": trace_id,
                                                                           "rating": "down"}, scope="ingest", timeout=5)
                    acked += [("feedback", f"f-{trace_id}")] if code == 201 else []
            except OSError:
                return
            with lock:
                acknowledged.extend(acked)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    service.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acknowledged) >= 300, "too few writes were acknowledged before the kill to prove anything"

    service.start()
    try:
        traces = [i for kind, i in acknowledged if kind == "trace"]
        missing = [i for i in traces if call(service, "GET", f"/v1/traces/{i}", scope="read")[0] != 200]
        assert missing == [], f"{len(missing)} of {len(traces)} acknowledged traces were lost"
        feedback = {i for kind, i in acknowledged if kind == "feedback"}
        count = call(service, "GET", "/v1/feedback/count?model=durable&consentedOnly=false", scope="read")[1]["count"]
        assert count >= len(feedback), f"only {count} of {len(feedback)} acknowledged feedback items survived"
    finally:
        service.stop()
