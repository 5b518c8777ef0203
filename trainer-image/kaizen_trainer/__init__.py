"""The Kaizen trainer: the program in the trainer image that a RetrainJob's pod runs.

It reads one :class:`kaizen.api.trainer.TrainerConfig` and reports one :class:`kaizen.api.trainer.TrainerResult`
through the pod's termination message, which is how the operator learns what happened. The stages (load, curate,
train, evaluate, write) are built with the RetrainJob issue; this version validates the config and reports.
"""
