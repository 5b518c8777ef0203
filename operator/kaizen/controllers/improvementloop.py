"""ImprovementLoop controller. For now it validates the spec and reports Ready or InvalidSpec; observation and
the decision engine (kaizen.logic) land with the loop issue."""

from kaizen.api import IMPROVEMENT_LOOP
from kaizen.controllers.reconcile import register

register(IMPROVEMENT_LOOP)
