"""The trainer's classified failures. A :class:`TrainerError` ends the run with a result the operator acts on:
InvalidConfig and InvalidData are permanent (retrying cannot fix them), anything else may be retried."""

from __future__ import annotations

from typing import Literal

#: Exit codes the RetrainJob's Job podFailurePolicy reads: a permanent failure fails the Job at once.
EXIT_PERMANENT = 2
EXIT_RETRY = 1


class TrainerError(Exception):
    """A failure with its reason for the operator; the message says what was wrong and what to do."""

    def __init__(self, reason: Literal["InvalidConfig", "InvalidData", "Error"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


def invalid_data(message: str) -> TrainerError:
    return TrainerError("InvalidData", message)


def invalid_config(message: str) -> TrainerError:
    return TrainerError("InvalidConfig", message)
