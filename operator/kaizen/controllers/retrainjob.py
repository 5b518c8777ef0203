"""RetrainJob controller. For now it validates the spec and reports Ready or InvalidSpec; the training Job, its
pods and the gate judgement land with the RetrainJob issue."""

from kaizen.api import RETRAIN_JOB
from kaizen.controllers.reconcile import register

register(RETRAIN_JOB)
