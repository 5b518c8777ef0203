"""The ``kaizen`` command line (also installed as the kubectl plugin ``kubectl-kaizen``).

Each sub-module registers its sub-commands on the shared parser with ``register(subparsers)`` and sets
``func`` (a callable taking the parsed arguments and returning an exit code) as the parser's default.
"""

from __future__ import annotations

import argparse
import sys

from kaizen.cli import collector, dev, get, loop, operator_cmd, report, rollout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaizen", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (operator_cmd, get, loop, rollout, report, dev, collector):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
