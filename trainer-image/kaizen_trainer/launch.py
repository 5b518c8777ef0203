"""``python -m kaizen_trainer.launch [torchrun options] -m kaizen_trainer --config FILE``: torchrun, with the trainer's
exit codes.

torchrun exits 1 whenever a worker fails, whatever the worker's own exit code, so under plain torchrun a permanent
failure (:data:`~kaizen_trainer.errors.EXIT_PERMANENT`, which the RetrainJob's podFailurePolicy reads to fail the Job
at once) would look retryable, and the Job would retry a config that can never work. This is torchrun itself
(``torch.distributed.run``, same options, same rendezvous), exiting EXIT_PERMANENT when any worker of this node did,
EXIT_RETRY for any other failure, and 0 when all succeeded.
"""

from __future__ import annotations

import sys

from kaizen_trainer.errors import EXIT_PERMANENT, EXIT_RETRY


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        return EXIT_PERMANENT if EXIT_PERMANENT in codes else EXIT_RETRY
    return 0


if __name__ == "__main__":
    sys.exit(main())
