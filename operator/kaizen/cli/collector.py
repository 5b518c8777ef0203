"""``kaizen collector``: run the feedback collector service (see :mod:`kaizen.collector`); ``kaizen review``: list and
answer the collector's review queue (the traces its sampled evaluation was unsure of)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.parse
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
    _register_review(subparsers)


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
                       "2026-11-01T00:00Z/2026-11-08T00:00Z (default: the first --drift-sample traces of each "
                       "model's served version, so a promotion moves it)")
    drift.add_argument("--drift-sample", type=int, default=200, metavar="N",
                       help="traces per window, the newest (default: 200)")
    drift.add_argument("--drift-min-traces", type=int, default=50, metavar="N",
                       help="test a model or cohort only with at least N traces in each window (default: 50)")
    drift.add_argument("--drift-alpha", type=float, default=0.01, help="significance level (default: 0.01)")
    drift.add_argument("--drift-min-mmd2", type=float, default=0.0, metavar="MMD2",
                       help="call embedding drift only from this effect size up (default: 0)")
    drift.add_argument("--drift-min-psi", type=float, default=0.0, metavar="PSI",
                       help="call a scenario-mix drift only from this PSI up (default: 0)")
    evaluation = parser.add_argument_group(
        "sampled evaluation", "score a share of live answers, off the ingest path, with a judge, a safety classifier "
        "and corrections; export kaizen_eval_total on /metrics and queue what they are unsure of for review (needs the "
        "trainer's torch, transformers, rouge-score and sacrebleu); see kaizen.collector.evaluation",
    )
    evaluation.add_argument("--eval-share", action="append", default=[], metavar="[TRACK=]SHARE",
                            help="evaluate this share (0..1) of each model version's traces, or of a track's, e.g. "
                            "0.05 and canary=0.5 (repeatable; default: no evaluation)")
    evaluation.add_argument("--eval-judge", action="append", default=[], metavar="[NAME=]URI",
                            help="a judge: a local saved sequence classifier with the labels good/bad (rubric) or "
                            "A/B[/tie] (pairwise, as RetrainJob spec.judge), a path or file:// (repeatable; the "
                            "evaluator label is NAME, default judge)")
    evaluation.add_argument("--eval-safety", metavar="URI",
                            help="a safety classifier: a local saved sequence classifier with the labels safe/unsafe")
    evaluation.add_argument("--eval-min-rouge", type=float, default=0.5, metavar="F1",
                            help="a served answer is good against a correction from this ROUGE-L F1 up (default 0.5)")
    evaluation.add_argument("--eval-min-confidence", type=float, default=0.7, metavar="P",
                            help="send a trace to review when a judge's probability is below P (default 0.7)")
    evaluation.add_argument("--eval-queue", type=int, default=1000, metavar="N",
                            help="at most N samples wait; more are dropped and counted (default 1000)")
    evaluation.add_argument("--eval-rate", type=float, default=5.0, metavar="PER_S",
                            help="evaluate at most PER_S samples a second (default 5: the evaluators share the "
                            "collector's cores, and on 2 cores 20 a second cost ingestion about a fifth of its rate)")
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
        evaluation = _evaluation_settings(args)
    except (TokenFileError, ValueError) as error:
        print(f"kaizen collector: {error}", file=sys.stderr)
        return 2
    if tokens is None:
        logging.getLogger("kaizen.collector").warning(
            "Started without authentication: every client may read, export and delete"
        )
    config = Config(
        db=args.db, tokens=tokens, cors_origins=tuple(args.cors_origin), store_text=not args.no_raw_text,
        max_body_bytes=args.max_body_bytes, retention_days=args.retention_days, drift=drift, evaluation=evaluation,
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


def _evaluation_settings(args: argparse.Namespace) -> Any:
    """The sampled evaluation's settings from the flags, or None without --eval-share; the models are checked (their
    config.json) here, so a wrong one stops the collector at once. A ValueError says what is wrong."""
    if not args.eval_share:
        if args.eval_judge or args.eval_safety:
            raise ValueError("--eval-judge and --eval-safety need --eval-share (the share of traces to evaluate)")
        return None
    from kaizen.collector import evaluation

    default, shares = 0.0, {}
    for value in args.eval_share:
        track, sep, number = value.rpartition("=")
        try:
            share = float(number)
        except ValueError:
            share = -1.0
        if not 0 <= share <= 1 or (sep and track not in ("stable", "canary", "shadow", "unknown")):
            raise ValueError(f"--eval-share {value!r}: give a share from 0 to 1, or TRACK=SHARE with a track of "
                             "stable, canary, shadow, unknown")
        if sep:
            shares[track] = share
        else:
            default = share
    judges: list[tuple[str, str]] = []
    for value in args.eval_judge:
        name, sep, uri = value.partition("=") if "=" in value.split("/")[0] else ("judge", "", value)
        if not name or name in ("reference", "safety") or name in (n for n, _ in judges):
            raise ValueError(f"--eval-judge {value!r}: give each judge a name of its own (not reference or safety), "
                             "as NAME=URI")
        judges.append((name, uri))
    if not 0 <= args.eval_min_rouge <= 1 or not 0 <= args.eval_min_confidence <= 1:
        raise ValueError("--eval-min-rouge and --eval-min-confidence must be between 0 and 1")
    if args.eval_queue < 1 or not args.eval_rate > 0:
        raise ValueError("--eval-queue must be at least 1 and --eval-rate a positive number of samples a second")
    settings = evaluation.Settings(
        default_share=default, shares=tuple(sorted(shares.items())), judges=tuple(judges), safety=args.eval_safety,
        min_rouge=args.eval_min_rouge, min_confidence=args.eval_min_confidence, max_queue=args.eval_queue,
        max_rate=args.eval_rate,
    )
    evaluation.check(settings)
    return settings


def _register_review(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "review", help="list and answer the collector's review queue",
        description="The traces the collector's sampled evaluation was unsure of (a judge below its confidence, an "
        "unsafe answer, evaluators that disagree). An answer becomes feedback on the trace, with your token's name as "
        "the reviewer. Needs a token with the review scope.",
    )
    parser.add_argument("--collector", default=os.environ.get("KAIZEN_COLLECTOR_URL", "http://127.0.0.1:8090"),
                        help="the collector's URL (default: $KAIZEN_COLLECTOR_URL or http://127.0.0.1:8090)")
    parser.add_argument("--token-file", metavar="PATH",
                        help="file holding a bearer token with the review scope (default: $KAIZEN_COLLECTOR_TOKEN)")
    actions = parser.add_subparsers(dest="review_action", required=True, metavar="{list,answer}")
    listing = actions.add_parser("list", help="list the queue, oldest first")
    listing.add_argument("--model", help="only this model's reviews")
    listing.add_argument("--state", choices=("open", "answered", "all"), default="open", help="default: open")
    listing.add_argument("--limit", type=int, default=100, help="most reviews listed (default 100)")
    listing.add_argument("-o", "--output", choices=("table", "json"), default="table", help="default: table")
    answer = actions.add_parser("answer", help="answer the review of a trace")
    answer.add_argument("trace_id", metavar="TRACE_ID")
    answer.add_argument("--verdict", choices=("good", "bad"), required=True, help="was the served answer good?")
    answer.add_argument("--correction", help="what the answer should have been (the training target)")
    answer.add_argument("--category", help="what was wrong (a feedback category)")
    parser.set_defaults(func=review)


def review(args: argparse.Namespace) -> int:
    """``kaizen review list|answer``; exit 1 with the collector's reason when a call fails, 2 on bad input."""
    from kaizen.collector.client import CollectorClient, CollectorError

    token = os.environ.get("KAIZEN_COLLECTOR_TOKEN")
    try:
        if args.token_file:
            token = open(args.token_file).read().strip()
        client = CollectorClient(args.collector, token)
    except (OSError, ValueError) as error:
        print(f"kaizen review: {error}", file=sys.stderr)
        return 2
    try:
        if args.review_action == "list":
            body = client.request("GET", "/v1/reviews", query={"model": args.model, "state": args.state,
                                                               "limit": args.limit})
            _print_reviews(body["items"], args.output)
            return 0
        answer = {"verdict": args.verdict, "correction": args.correction, "category": args.category}
        body = client.request("POST", f"/v1/reviews/{urllib.parse.quote(args.trace_id, safe='')}",
                              {k: v for k, v in answer.items() if v is not None})
    except CollectorError as error:
        print(f"kaizen review: {error}", file=sys.stderr)
        return 1
    print(f"Answered review of trace {body['traceId']}: {body['verdict']} by {body['reviewer']} "
          f"(feedback {body['feedbackId']})")
    return 0


def _print_reviews(items: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print(json.dumps(items, indent=2))
        return
    rows = [("TRACE", "MODEL", "VERSION", "TRACK", "REASONS", "VERDICTS", "ANSWER", "OUTPUT")]
    for item in items:
        verdicts = " ".join(f"{r['evaluator']}={r['verdict']}"
                            + (f"@{r['confidence']:.2f}" if "confidence" in r else "") for r in item["results"])
        answer = f"{item['verdict']} by {item['reviewer']}" if item.get("verdict") else "-"
        text = (item.get("output") or "").replace("\n", " ")
        rows.append((item["traceId"], item["model"], item["modelVersion"], item["track"], ",".join(item["reasons"]),
                     verdicts, answer, text[:40] + ("..." if len(text) > 40 else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


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
