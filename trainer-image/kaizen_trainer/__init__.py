"""The Kaizen trainer: the program in the trainer image that a RetrainJob's pod runs.

It reads one :class:`kaizen.api.trainer.TrainerConfig`, runs five stages -- load (:mod:`.load`), curate
(:mod:`.curate`), train (:mod:`.train`), evaluate candidate and baseline on the same data (:mod:`.evaluate`), write
(:mod:`.report`), in order in :mod:`.pipeline` -- and reports one :class:`kaizen.api.trainer.TrainerResult` through
the pod's termination message, which is how the operator learns what happened.
"""
