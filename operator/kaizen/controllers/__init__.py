"""The kopf operator: one module per kind, registered by importing this package (``kopf run -m kaizen.controllers``).

Handlers are thin: parse the spec, gather what they observe, call pure logic from ``kaizen.logic``, and write
status once. Operator-wide settings live in :mod:`kaizen.controllers.settings`.

``$KAIZEN_CONTROLLERS`` (``kaizen operator --controllers``) names the controllers to run, comma-separated; all by
default. Running one kind alone serves tests that play the other kinds' part themselves.
"""

from __future__ import annotations

import importlib
import os

from kaizen.controllers import settings  # noqa: F401  (operator-wide kopf settings)

ALL = ("improvementloop", "retrainjob", "rollout")


def selected(value: str | None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (value or ",".join(ALL)).split(",") if n.strip())
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ValueError(f"unknown controller(s) {', '.join(unknown)} in KAIZEN_CONTROLLERS; known: {', '.join(ALL)}")
    return names


for _name in selected(os.environ.get("KAIZEN_CONTROLLERS")):
    importlib.import_module(f"kaizen.controllers.{_name}")
