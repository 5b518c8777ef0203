"""``kaizen collector``: run the feedback collector service (see :mod:`kaizen.collector`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys


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
    except (TokenFileError, ValueError) as error:
        print(f"kaizen collector: {error}", file=sys.stderr)
        return 2
    if tokens is None:
        logging.getLogger("kaizen.collector").warning(
            "Started without authentication: every client may read, export and delete"
        )
    config = Config(
        db=args.db, tokens=tokens, cors_origins=tuple(args.cors_origin), store_text=not args.no_raw_text,
        max_body_bytes=args.max_body_bytes, retention_days=args.retention_days,
    )
    web.run_app(create_app(config), host=args.host, port=args.port, access_log=None, print=None, loop=_event_loop())
    return 0


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (not on Windows): parsing requests and writing responses, most of the
    collector's work per item, cost less on it than on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
