"""Training on more than one process: the trainer under torchrun (``resources.gpus > 1``, ``resources.nodes > 1``).

torchrun starts one trainer process per GPU (per slot, on a CPU dev node) and tells each where it stands through the
environment: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them, or with a
``WORLD_SIZE`` of 1, the trainer runs alone, as it always did. With more, every process joins one process group (NCCL
for CUDA tensors and gloo for CPU ones when there are GPUs, gloo alone otherwise) and:

* every rank prepares alike -- config, data, curation, model -- so each knows every step's whole batch. One
  :func:`agree` before training turns a failure on any rank into the same classified failure on every rank, a
  permanent one first, so no rank waits for a dead one and the Job fails fast (a node without the baseline's volume).
  A rank that crashes while training (a lost GPU) ends the run: torchrun stops the others and the Job's next pod
  resumes from the last checkpoint;
* each step's batch (``hyperparameters.batchSize``, the global batch as in one process) is split across the ranks,
  and each rank's loss is weighted by its share of the batch's loss terms (label tokens for a causal LM, rows
  otherwise), so the gradients that DDP or FSDP averages are those of the whole batch: N processes take the steps one
  process takes, up to floating-point rounding and dropout (drawn per rank);
* ``strategy: ddp`` replicates the model (``DistributedDataParallel``); ``fsdp`` shards parameters, gradients and
  optimizer state (FSDP2 ``fully_shard``, one unit per transformer block, CPU and gloo included);
* checkpoints hold full state dicts (torch.distributed.checkpoint's state-dict API), written by rank 0 and, on
  resume, read by rank 0 and broadcast: only rank 0's ``checkpointDir`` (and the mirror) needs them;
* only rank 0 evaluates and writes -- the model, metrics, manifest, model card, checkpoints and the result; the
  others exit 0 once training is done.

torchrun itself exits 1 when a worker fails, whatever its exit code: :mod:`kaizen_trainer.launch` is torchrun with the
trainer's exit codes.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from kaizen.api.trainer import TrainerConfig
from kaizen_trainer.errors import TrainerError, invalid_config

log = logging.getLogger("kaizen_trainer")

#: How long a collective waits for the slowest rank. The first ones wait for every rank's preparation (downloading the
#: baseline among it), so this is longer than torch's default of ten minutes for NCCL.
TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    """Where this process stands among the trainer's processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that evaluates and writes."""
        return self.rank == 0


SINGLE = World()


def from_environment(env: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in ``env``; one process when it describes none."""
    try:
        size, rank, local = (int(env.get(name, default)) for name, default in
                             (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")))
    except ValueError:
        raise invalid_config("WORLD_SIZE, RANK and LOCAL_RANK must be integers: start the trainer with torchrun (or "
                             "python -m kaizen_trainer.launch), which sets them") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise invalid_config(f"torchrun's environment is inconsistent (WORLD_SIZE={size}, RANK={rank}, "
                             f"LOCAL_RANK={local}): start the trainer with torchrun, which sets them")
    return World(rank=rank, local_rank=local, size=size)


def start(world: World) -> None:
    """Join the process group (a no-op for one process)."""
    if not world.distributed:
        return
    if torch.cuda.is_available():
        if world.local_rank >= torch.cuda.device_count():
            raise invalid_config(f"local rank {world.local_rank} has no GPU: this pod sees "
                                 f"{torch.cuda.device_count()}; run at most that many processes per node "
                                 "(--nproc-per-node, resources.gpus)")
        torch.cuda.set_device(world.local_rank)
        backend = "cpu:gloo,cuda:nccl"  # NCCL for the training, gloo for the host-side flags and objects
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    log.info("Joined process group rank=%d world_size=%d local_rank=%d backend=%s", world.rank, world.size,
             world.local_rank, backend)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check(config: TrainerConfig, world: World) -> None:
    """Fail before any loading when the config cannot run on this many processes; the same on every rank."""
    if not world.distributed:
        return
    hp = config.hyperparameters
    if hp.batch_size % world.size:
        raise invalid_config(
            f"hyperparameters.batchSize {hp.batch_size} does not split evenly over {world.size} training processes "
            f"(nodes x GPUs per node): set it to a multiple of {world.size}, or run fewer processes")
    if config.objective != "sft":
        raise invalid_config(f"objective {config.objective} runs on one process only (its trl loss is not sharded "
                             "here yet): set resources.gpus to 1 and resources.nodes to 1, or use objective sft")
    if config.strategy == "fsdp" and config.method == "qlora":
        raise invalid_config("strategy fsdp cannot shard qlora's 4-bit base: use strategy ddp with method qlora")


def agree(world: World, failure: BaseException | None) -> None:
    """Every rank calls this at the same point with its own failure or None; if any rank failed, every rank raises the
    same :class:`TrainerError` -- a permanent one before a retryable one, then the lowest rank's. One process just
    raises its own failure."""
    if not world.distributed:
        if failure is not None:
            raise failure
        return
    mine = None if failure is None else (
        (failure.reason, str(failure)) if isinstance(failure, TrainerError)
        else ("Error", f"{type(failure).__name__}: {failure}"))
    every: list[tuple[str, str] | None] = [None] * world.size
    dist.all_gather_object(every, mine)
    failed = [(rank, *entry) for rank, entry in enumerate(every) if entry is not None]
    if not failed:
        return
    rank, reason, message = min(failed, key=lambda f: (f[1] == "Error", f[0]))
    if mine is not None and mine == (reason, message):
        if isinstance(failure, TrainerError):
            raise failure
        raise TrainerError("Error", message) from failure
    raise TrainerError(reason, f"on rank {rank} of {world.size}: {message}")  # type: ignore[arg-type]


def any_rank(world: World, *flags: bool) -> list[bool]:
    """Each flag, true if it is true on any rank: so every rank stops, or checkpoints, at the same step."""
    if not world.distributed:
        return list(flags)
    values = torch.tensor([int(f) for f in flags], dtype=torch.int32)  # on the host: gloo, no wait for the GPU
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def total(world: World, value: int) -> int:
    """The sum of ``value`` over the ranks."""
    if not world.distributed:
        return value
    summed = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(summed)
    return int(summed.item())


def gather(world: World, value):
    """``value`` of every rank, in rank order (a list of one for one process)."""
    if not world.distributed:
        return [value]
    every = [None] * world.size
    dist.all_gather_object(every, value)
    return every


def broadcast(world: World, value):
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share(items: Sequence, world: World) -> tuple[list, bool]:
    """This rank's part of a global batch (every ``size``-th item, from its rank on), and whether it has one: a short
    last batch can leave a rank without items, which then takes the first one with a weight of zero, since every rank
    must run each step's collectives."""
    mine = list(items[world.rank::world.size])
    return (mine, True) if mine else (list(items[:1]), False)


def wrap(model: torch.nn.Module, strategy: str, world: World, device: torch.device) -> torch.nn.Module:
    """The module to train, on ``device``: ``model`` itself for one process, wrapped by DDP (which trains ``model`` in
    place) or a copy sharded by FSDP (whose weights :func:`unshard_into` gathers back into ``model``, which stays on
    the host meanwhile)."""
    if not world.distributed:
        return model.to(device)
    if strategy == "ddp":
        model.to(device)
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    sharded = copy.deepcopy(model).to(device)
    blocks = set(getattr(_base(sharded), "_no_split_modules", None) or ())
    for module in sharded.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(sharded)
    return sharded


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft adapter (which names its transformer blocks)."""
    base = getattr(model, "get_base_model", None)
    return base() if base is not None else model


def _options(frozen: bool, **more):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, ignore_frozen_params=frozen, **more)


def full_state(trained: torch.nn.Module, optimizer: torch.optim.Optimizer | None, frozen: bool):
    """The whole model's state (only what trains, when part of it is frozen) and the optimizer's, on the host of rank
    0 (empty elsewhere): a collective, every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = get_model_state_dict(trained, options=_options(frozen, cpu_offload=True))
    if optimizer is None:
        return model, None
    return model, get_optimizer_state_dict(trained, optimizer, options=_options(frozen, cpu_offload=True))


def load_full_state(trained: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict, frozen: bool) -> None:
    """Load rank 0's full states (the other ranks pass empty ones) into every rank: a collective."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(trained, model_state, options=_options(frozen, broadcast_from_rank0=True, strict=not frozen))
    set_optimizer_state_dict(trained, optimizer, optimizer_state, options=_options(frozen, broadcast_from_rank0=True))


def unshard_into(model: torch.nn.Module, trained: torch.nn.Module, world: World, frozen: bool) -> None:
    """After training with FSDP, rank 0's ``model`` gets the trained weights (a collective; a no-op otherwise)."""
    if trained is model or isinstance(trained, torch.nn.parallel.DistributedDataParallel):
        return
    state, _ = full_state(trained, None, frozen)
    if world.main:
        model.load_state_dict(state, strict=not frozen)
