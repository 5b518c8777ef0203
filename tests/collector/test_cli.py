"""``kaizen collector``'s configuration: bad settings are refused with a reason; token files rotate safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kaizen.cli.collector import main
from kaizen.collector.auth import Principal, TokenFile


@pytest.mark.parametrize(("argv", "message"), [
    (["--db", "mysql://db/x", "--no-auth"], "unsupported database URL scheme 'mysql'"),
    (["--db", "sqlite:///:memory:", "--no-auth"], "SQLite needs a file path"),
    (["--tokens-file", "/nonexistent/tokens"], "cannot read tokens file /nonexistent/tokens"),
    (["--no-auth", "--drift-every", "0"], "--drift-every must be a positive number of seconds"),
    (["--no-auth", "--drift-every", "60", "--drift-min-traces", "500"], "need 2 <= --drift-min-traces (500)"),
    (["--no-auth", "--drift-every", "60", "--drift-alpha", "1.5"], "--drift-alpha must be between 0 and 1"),
    (["--no-auth", "--drift-every", "60", "--drift-reference", "2026-11-01"], "is not FROM/TO, two ISO 8601 times"),
    (["--no-auth", "--drift-every", "60", "--drift-reference", "2026-11-08T00:00Z/2026-11-01T00:00Z"],
     "ends before it starts"),
    (["--no-auth", "--eval-share", "2"], "--eval-share '2': give a share from 0 to 1"),
    (["--no-auth", "--eval-share", "beta=0.5"], "or TRACK=SHARE with a track of stable, canary"),
    (["--no-auth", "--eval-safety", "/models/safety"], "--eval-judge and --eval-safety need --eval-share"),
    (["--no-auth", "--eval-share", "1", "--eval-judge", "/nonexistent/judge"],
     "judge judge /nonexistent/judge is not a saved transformers model (no config.json there)"),
    (["--no-auth", "--eval-share", "1", "--eval-judge", "safety=/models/j"], "a name of its own (not reference or "),
    (["--no-auth", "--eval-share", "1", "--eval-rate", "0"], "--eval-rate a positive number of samples a second"),
])
def test_bad_configuration_exits_2_with_a_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    ("", "holds no tokens"),
    ("short ingest\n", "line 1: the token is shorter than 16 characters"),
    ("# comment\nlong-enough-token-1234 ingest,write\n", "line 2: unknown scope(s) ['write']"),
    ("long-enough-token-1234\n", "line 1: expected '<token> <scope>"),
])
def test_malformed_tokens_files_name_the_line(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    assert main(["--db", f"sqlite:///{tmp_path / 'c.db'}", "--tokens-file", str(tokens)]) == 2
    assert message in capsys.readouterr().err


def test_auth_must_be_chosen_explicitly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--db", "sqlite:///x.db"])
    assert exit_info.value.code == 2
    assert "one of the arguments --tokens-file --no-auth is required" in capsys.readouterr().err


def test_rotated_tokens_take_effect_and_a_broken_update_keeps_the_last_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("old-token-0123456789 read loop\n")
    tokens = TokenFile(path, recheck=0)
    assert tokens.lookup("old-token-0123456789") == Principal("loop", frozenset({"read"}))
    path.write_text("new-token-0123456789 ingest,read widget\n")
    os.utime(path, (1, 1))  # a distinct mtime, as a Secret update gives
    assert tokens.lookup("old-token-0123456789") is None
    assert tokens.lookup("new-token-0123456789") == Principal("widget", frozenset({"ingest", "read"}))
    path.write_text("half-writ")
    os.utime(path, (2, 2))
    assert tokens.lookup("new-token-0123456789") is not None
