"""A throwaway PostgreSQL server on a loopback port, for the collector's tests and benchmark.

Uses the server binaries of the machine's PostgreSQL package (Debian's ``/usr/lib/postgresql/<major>/bin``, or
``initdb`` on ``PATH``). PostgreSQL refuses to run as root, so as root it runs as ``nobody`` through ``runuser``;
its data directory is a fresh temporary directory, removed on :meth:`PostgresServer.stop`. The server runs in its
own process group (:mod:`kaizen.dev.processes`), so stopping it leaves no stray backend.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from kaizen.dev import processes
from kaizen.dev.cluster import free_ports


def find_bin_dir() -> Path:
    """The directory of the newest installed PostgreSQL server binaries."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise FileNotFoundError(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
        "apt-get install postgresql"
    )


class PostgresServer:
    """``with PostgresServer() as pg: pg.url`` - a superuser URL (``postgresql://postgres@127.0.0.1:<port>/...``)."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="kaizen-pg-"))
        self.port = free_ports(1)[0]
        self.process: processes.ManagedProcess | None = None
        self._as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> PostgresServer:
        data = self.dir / "data"
        if self._as_user:
            shutil.chown(self.dir, "nobody")
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self.process = processes.spawn("postgres", [
            *self._as_user, self.bin_dir / "postgres", "-D", data, "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
            "-c", "max_connections=200",
        ], self.dir / "postgres.log", detach=False)
        deadline = time.monotonic() + timeout
        while subprocess.run(
            [self.bin_dir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
        ).returncode != 0:
            if not self.process.alive() or time.monotonic() > deadline:
                log = self.process.log_tail()
                self.stop()
                raise RuntimeError(f"PostgreSQL did not become ready on port {self.port}:\n{log}")
            time.sleep(0.1)
        return self

    def create_database(self, name: str) -> str:
        """Create an empty database; return its URL."""
        self._run(str(self.bin_dir / "psql"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-c", f'CREATE DATABASE "{name}"', as_user=False)
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.alive():
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients to disconnect).
            os.killpg(self.process.pgid, signal.SIGINT)
            deadline = time.monotonic() + 20
            while self.process.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            processes.stop([self.process])
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, *argv: str, as_user: bool = True) -> None:
        result = subprocess.run(
            [*(self._as_user if as_user else []), *argv], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({result.returncode}): {result.stderr.strip()}")

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
