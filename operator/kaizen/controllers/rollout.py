"""Rollout controller. For now it validates the spec and reports Ready or InvalidSpec; the canary step machine
and the analysis land with the Rollout issue."""

from kaizen.api import ROLLOUT
from kaizen.controllers.reconcile import register

register(ROLLOUT)
