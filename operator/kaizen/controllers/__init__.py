"""The kopf operator: one module per kind, registered by importing this package (``kopf run -m kaizen.controllers``).

Handlers are thin: parse the spec, gather what they observe, call pure logic from ``kaizen.logic``, and write
status once. Operator-wide settings live in :mod:`kaizen.controllers.settings`.
"""

from kaizen.controllers import improvementloop, retrainjob, rollout, settings

__all__ = ["improvementloop", "retrainjob", "rollout", "settings"]
