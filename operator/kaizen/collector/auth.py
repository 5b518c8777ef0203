"""Bearer tokens with scopes, read from a mounted file (a Kubernetes Secret volume).

The file holds one token per line: ``<token> <scope>[,<scope>...] [<name>]``; blank lines and ``#`` comments are
ignored. Scopes: ``ingest`` (traces and feedback: model servers, feedback widgets), ``read`` (export, backlog,
counts, traces, audit log), ``audit`` (append to the audit log: the operator), ``review`` (list the review queue and
answer it: the people who review what the sampled evaluation was unsure of; their token's name is recorded as the
reviewer) and ``admin`` (everything, including subject deletion). Tokens are kept only as SHA-256 digests, and the
file is re-read when it changes, because Kubernetes updates mounted Secrets in place when they are rotated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import get_args

from kaizen.collector.models import Scope

log = logging.getLogger(__name__)
SCOPES = frozenset(get_args(Scope))


class TokenFileError(ValueError):
    """The tokens file is unreadable or malformed."""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(content: str, source: str = "tokens file") -> dict[bytes, Principal]:
    """Parse a tokens file; raise :class:`TokenFileError` naming the line that is wrong."""
    tokens: dict[bytes, Principal] = {}
    for number, line in enumerate(content.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise TokenFileError(f"{source} line {number}: expected '<token> <scope>[,<scope>...] [<name>]'")
        token, scope_list = parts[0], parts[1]
        if len(token) < 16:
            raise TokenFileError(f"{source} line {number}: the token is shorter than 16 characters; use a random one")
        scopes = frozenset(scope_list.split(","))
        unknown = scopes - SCOPES
        if unknown:
            raise TokenFileError(
                f"{source} line {number}: unknown scope(s) {sorted(unknown)}; known: {sorted(SCOPES)}"
            )
        tokens[_digest(token)] = Principal(parts[2] if len(parts) == 3 else f"line-{number}", scopes)
    if not tokens:
        raise TokenFileError(f"{source} holds no tokens; add lines '<token> <scope>[,<scope>...] [<name>]'")
    return tokens


class TokenFile:
    """The tokens of a file, reloaded when the file changes; a broken update keeps the last good tokens."""

    def __init__(self, path: str | os.PathLike[str], recheck: float = 2.0) -> None:
        self.path = Path(path)
        self.recheck = recheck  # seconds between checks of the file's modification time
        self._mtime = self._stat()
        self._tokens = parse_tokens(self._read(), str(self.path))
        self._checked = time.monotonic()

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError as error:
            raise TokenFileError(f"cannot read tokens file {self.path}: {error.strerror}") from error

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError as error:
            raise TokenFileError(f"cannot read tokens file {self.path}: {error.strerror}") from error

    def lookup(self, token: str) -> Principal | None:
        now = time.monotonic()
        if now - self._checked >= self.recheck:
            self._checked = now
            try:
                mtime = self._stat()
                if mtime != self._mtime:
                    self._tokens, self._mtime = parse_tokens(self._read(), str(self.path)), mtime
            except TokenFileError as error:
                # A half-written or broken update must not lock everyone out: keep the last good tokens.
                log.warning("Ignored an invalid update of the tokens file error=%s", error)
        # Looking up a digest compares digests, never the secret itself, so timing reveals nothing useful.
        return self._tokens.get(_digest(token))
