"""schemathesis against a real collector (SQLite) and its own /openapi.json, with every check: no 5xx, no response
that breaks the document, no documented-valid request refused and no invalid one accepted (issue 13).

Bounded (``-n``, a fixed seed) to about a minute; ``KAIZEN_FUZZ_EXAMPLES`` raises it for a longer run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.collector.harness import Collector

TOKEN = "fuzz-token-00000000000000"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path) -> None:
    service = Collector(f"sqlite:///{tmp_path / 'collector.db'}", tmp_path)
    with service.tokens_file.open("a") as tokens:  # one token with every scope, for every route
        tokens.write(f"{TOKEN} ingest,read,audit,admin fuzz-client\n")
    service.start()
    try:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG),
             "run", f"{service.url}/openapi.json", "--checks", "all",
             "--max-examples", os.environ.get("KAIZEN_FUZZ_EXAMPLES", "10"), "--seed", "13", "--no-color",
             "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "10"],
            capture_output=True, text=True, timeout=300,
        )
        log = service.log()
    finally:
        service.stop()
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and " failed" not in result.stdout, result.stdout[-4000:]
    assert "Failed to handle request" not in log, log[-4000:]
