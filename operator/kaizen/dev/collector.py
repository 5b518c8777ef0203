"""The Kaizen collector as a local process (``python -m kaizen.collector``) on a free loopback port, for the demo
and the tests: a tokens file with one token per scope, and start/stop with no stray process."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from kaizen.dev import processes
from kaizen.dev.cluster import free_ports

#: One token per scope.
TOKENS = {
    "ingest": "ingest-token-000000000000",
    "read": "read-token-0000000000000",
    "audit": "audit-token-000000000000",
    "admin": "admin-token-000000000000",
}
#: The operator's token: it reads the backlog and counts, and appends to the audit log.
OPERATOR_SCOPES, OPERATOR_TOKEN = "read,audit", "operator-token-0000000000"


class LocalCollector:
    """``LocalCollector(db_url, workdir).start()``; ``url``, ``tokens`` (scope → token), ``stop()``."""

    def __init__(self, db: str, workdir: Path, *options: str) -> None:
        self.db, self.workdir, self.options = db, Path(workdir), options
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tokens_file = self.workdir / "tokens"
        #: scopes -> token, the operator's under "read,audit"
        self.tokens = {**TOKENS, OPERATOR_SCOPES: OPERATOR_TOKEN}
        self.tokens_file.write_text("".join(f"{token} {scopes} {scopes.replace(',', '-')}-client\n"
                                            for scopes, token in self.tokens.items()))
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: processes.ManagedProcess | None = None

    def start(self, timeout: float = 30) -> LocalCollector:
        self.process = processes.spawn("collector", [
            sys.executable, "-m", "kaizen.collector", "--db", self.db, "--host", "127.0.0.1",
            "--port", str(self.port), "--tokens-file", str(self.tokens_file), *self.options,
        ], self.workdir / f"collector-{self.port}.log", detach=False)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.process.alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the collector did not become ready:\n{self.process.log_tail()}")
            time.sleep(0.05)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            processes.stop([self.process])
