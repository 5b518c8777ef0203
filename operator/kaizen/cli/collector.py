"""``kaizen collector``: run the feedback collector service (see :mod:`kaizen.collector`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any


DESCRIPTION = (
    "Run the Kaizen collector: an HTTP service for traces, user feedback, training exports and the operator's "
    "audit log."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collector", help="run the feedback collector (traces, feedback, exports, audit log)", description=DESCRIPTION
    )
    _add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    """``python -m kaizen.collector``: the same command without the rest of the CLI (the collector's image)."""
    parser = argparse.ArgumentParser(prog="kaizen-collector", description=DESCRIPTION)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", default=os.environ.get("KAIZEN_COLLECTOR_DB", "sqlite:///kaizen-collector.db"),
        help="database URL: sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:pass@host/db "
        "(default: $KAIZEN_COLLECTOR_DB or sqlite:///kaizen-collector.db)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (default: 8090)")
    auth = parser.add_mutually_exclusive_group(required=True)
    auth.add_argument(
        "--tokens-file", metavar="PATH",
        help="file of bearer tokens, one per line: '<token> <scope>[,<scope>...] [<name>]'; scopes: ingest, read, "
        "audit, admin (a mounted Secret; re-read when it changes)",
    )
    auth.add_argument("--no-auth", action="store_true", help="accept every request without a token (development only)")
    parser.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN",
        help="allow browser requests from this origin, e.g. https://app.example.com, or '*' (repeatable)",
    )
    parser.add_argument(
        "--no-raw-text", action="store_true",
        help="store no free text at all (inputs, outputs, comments, corrections): metadata and ratings only",
    )
    parser.add_argument(
        "--retention-days", type=float, metavar="DAYS",
        help="delete traces and feedback older than this, hourly (default: keep; the audit log is always kept)",
    )
    drift = parser.add_argument_group(
        "input drift", "a pass, off the ingest path, that tests each model's (and cohort's) recent inputs against a "
        "reference window and exports kaizen_input_drift on /metrics (needs the drift extra)",
    )
    drift.add_argument("--drift-every", type=float, metavar="SECONDS",
                       help="run a drift pass this often (default: no drift pass)")
    drift.add_argument("--drift-window", type=float, default=3600, metavar="SECONDS",
                       help="the recent window: traces of the last SECONDS (default: 3600)")
    drift.add_argument("--drift-reference", metavar="FROM/TO",
                       help="a pinned reference window as two ISO 8601 times, e.g. the served model's training period "
                       "2026-11-01T00:00Z/2026-11-08T00:00Z (default: each model's first --drift-sample traces)")
    drift.add_argument("--drift-sample", type=int, default=200, metavar="N",
                       help="traces per window, the newest (default: 200)")
    drift.add_argument("--drift-min-traces", type=int, default=50, metavar="N",
                       help="test a model or cohort only with at least N traces in each window (default: 50)")
    drift.add_argument("--drift-alpha", type=float, default=0.01, help="significance level (default: 0.01)")
    drift.add_argument("--drift-min-mmd2", type=float, default=0.0, metavar="MMD2",
                       help="call embedding drift only from this effect size up (default: 0)")
    drift.add_argument("--drift-min-psi", type=float, default=0.0, metavar="PSI",
                       help="call a scenario-mix drift only from this PSI up (default: 0)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from kaizen.collector.auth import TokenFile, TokenFileError
    from kaizen.collector.service import Config, create_app
    from kaizen.collector.store import async_url

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        async_url(args.db)
        tokens = None if args.no_auth else TokenFile(args.tokens_file)
        drift = _drift_settings(args)
    except (TokenFileError, ValueError) as error:
        print(f"kaizen collector: {error}", file=sys.stderr)
        return 2
    if tokens is None:
        logging.getLogger("kaizen.collector").warning(
            "Started without authentication: every client may read, export and delete"
        )
    config = Config(
        db=args.db, tokens=tokens, cors_origins=tuple(args.cors_origin), store_text=not args.no_raw_text,
        max_body_bytes=args.max_body_bytes, retention_days=args.retention_days, drift=drift,
    )
    web.run_app(create_app(config), host=args.host, port=args.port, access_log=None, print=None, loop=_event_loop())
    return 0


def _drift_settings(args: argparse.Namespace) -> Any:
    """The drift pass's settings from the flags, or None without --drift-every; a ValueError says what is wrong."""
    if args.drift_every is None:
        return None
    try:
        from kaizen.collector import monitor
    except ImportError as error:
        raise ValueError(f"--drift-every needs the drift extra ({error}): pip install 'kaizen-operator[drift]'") \
            from None
    for flag, value, low in (("--drift-every", args.drift_every, 0.0), ("--drift-window", args.drift_window, 0.0)):
        if not value > low:
            raise ValueError(f"{flag} must be a positive number of seconds, got {value}")
    if args.drift_sample < 2 or not 2 <= args.drift_min_traces <= args.drift_sample:
        raise ValueError(f"need 2 <= --drift-min-traces ({args.drift_min_traces}) <= --drift-sample "
                         f"({args.drift_sample})")
    if not 0 < args.drift_alpha < 1:
        raise ValueError(f"--drift-alpha must be between 0 and 1, got {args.drift_alpha}")
    reference: tuple[float, float] | None = None
    if args.drift_reference is not None:
        start, sep, end = args.drift_reference.partition("/")
        try:
            if not sep:
                raise ValueError("no '/'")
            reference = (_epoch(start), _epoch(end))
        except ValueError as error:
            raise ValueError(f"--drift-reference {args.drift_reference!r} is not FROM/TO, two ISO 8601 times such as "
                             f"2026-11-01T00:00Z/2026-11-08T00:00Z ({error})") from None
        if reference[0] >= reference[1]:
            raise ValueError(f"--drift-reference {args.drift_reference!r} ends before it starts")
    return monitor.Settings(
        every_s=args.drift_every, window_s=args.drift_window, sample=args.drift_sample,
        min_traces=args.drift_min_traces, alpha=args.drift_alpha, min_mmd2=args.drift_min_mmd2,
        min_psi=args.drift_min_psi, reference=reference,
    )


def _epoch(value: str) -> float:
    parsed = datetime.fromisoformat(value.strip())
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (not on Windows): parsing requests and writing responses, most of the
    collector's work per item, cost less on it than on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
