"""The trainer reads the collector's export as the collector writes it (kaizen.collector.models), manifest line
included: the export holds consented items only, so they are trained on; a plain feedback file must say consent."""

from __future__ import annotations

import http.server
import threading
from datetime import datetime, timezone

import pytest

from kaizen.api.retrainjob import DataSource, DataSpec, Targets
from kaizen.api.trainer import TrainerConfig
from kaizen.collector.models import ExportManifest, ExportRow
from kaizen_trainer.curate import curate
from kaizen_trainer.errors import TrainerError
from kaizen_trainer.load import load, load_source

NOW = datetime(2026, 11, 28, tzinfo=timezone.utc)


def export_row(i, target="refund needs a ticket", sentiment="negative"):
    return ExportRow(id=f"fb-{i}", trace_id=f"t-{i}", model="support-bot", model_version="v3", track="stable",
                     cohort="pro", scenario="refund", input=f"where is my refund money {i}",
                     output="refund goes to your card", target=target, rating="down" if target else "up",
                     sentiment=sentiment, category="incorrect", redacted=False, created_at=NOW)


def test_collector_export_rows_are_consented_examples(tmp_path):
    rows = [export_row(i) for i in range(40)] + [export_row(40, target=None, sentiment="positive")]
    lines = [r.model_dump_json(by_alias=True) for r in rows]
    lines.append(ExportManifest(model="support-bot", generated_at=NOW, filters={}, rows=len(rows), with_target=40,
                                sha256="0" * 64, excluded={"noConsent": 7}, subjects_opted_out=2)
                 .model_dump_json(by_alias=True))
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(lines) + "\n")

    source = load_source(DataSource(uri=str(path)), "feedback")
    assert len(source.rows) == 41 and all(r.consent for r in source.rows)
    curated = curate([source], DataSpec(targeted_ratio=1, min_rows=1, holdout_fraction=0.1), Targets(), seed=1)
    targets = {r.id: r.target for r in curated.train + curated.holdout}
    assert targets["fb-0"] == "refund needs a ticket" and targets["fb-40"] == "refund goes to your card"
    assert curated.manifest["subjectsOptedOut"] == 2
    assert curated.manifest["sources"][0]["collectorExcluded"] == {"noConsent": 7}


def test_a_plain_feedback_file_without_consent_is_not_trained_on(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text("\n".join(export_row(i).model_dump_json(by_alias=True) for i in range(5)) + "\n")
    source = load_source(DataSource(uri=str(path)), "feedback")
    assert all(r.consent is None for r in source.rows)
    with pytest.raises(TrainerError, match="the targeted slice is empty"):
        curate([source], DataSpec(targeted_ratio=1, min_rows=1), Targets(), seed=1)


class Export(http.server.BaseHTTPRequestHandler):
    """A stand-in collector: the export, behind a bearer token, optionally cut short (no manifest line)."""

    body = b""

    def do_GET(self):  # noqa: N802 -- http.server's naming
        if self.headers.get("Authorization") != "Bearer s3cret":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)
        Export.seen = self.path

    def log_message(self, *_):
        pass


@pytest.fixture
def collector():
    server = http.server.HTTPServer(("127.0.0.1", 0), Export)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/export?model=support-bot"
    server.shutdown()


def test_export_over_http_with_token_and_since(tmp_path, collector):
    rows = [export_row(i).model_dump_json(by_alias=True) for i in range(3)]
    manifest = ExportManifest(model="support-bot", generated_at=NOW, filters={}, rows=3, with_target=3,
                              sha256="0" * 64, excluded={}, subjects_opted_out=0).model_dump_json(by_alias=True)
    Export.body = ("\n".join([*rows, manifest]) + "\n").encode()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = TrainerConfig.model_validate({
        "job": "ns/rj", "decisionId": "d", "task": "causal-lm", "baseline": {"version": "v1", "uri": "/m"},
        "candidateVersion": "v2", "data": {}, "outputDir": "/out", "checkpointDir": "/ckpt",
        "feedback": {"url": collector, "tokenFile": str(token), "since": "2026-11-01T00:00:00Z"}})
    (source,) = load(config)
    assert [r.id for r in source.rows] == ["fb-0", "fb-1", "fb-2"]
    assert Export.seen == "/v1/export?model=support-bot&since=2026-11-01T00%3A00%3A00Z"

    Export.body = ("\n".join(rows) + "\n").encode()
    with pytest.raises(TrainerError, match="ended without its manifest line: the stream was cut short") as cut:
        load(config)
    assert cut.value.reason == "Error"  # retried: the next attempt may get the whole export

    token.write_text("wrong")
    with pytest.raises(TrainerError, match="answered 401 Unauthorized; check the URL and the token") as denied:
        load(config)
    assert denied.value.reason == "InvalidConfig"
