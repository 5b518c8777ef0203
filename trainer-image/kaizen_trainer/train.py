"""Stage 3, train: a plain torch loop (AdamW, linear decay, bf16 autocast on GPUs) with checkpoints.

Every ``checkpointEverySteps`` steps the model, optimizer, scheduler and RNG states are written atomically to the
checkpoint directory, tagged with a fingerprint of the data and settings. A restarted pod (OOMKilled, evicted,
preempted) finds the newest checkpoint with the same fingerprint and continues from its step, on the same batch
order, so a resumed run ends where an uninterrupted one would. SIGTERM (what the kubelet sends before a
preemption) writes a checkpoint at the current step before the pod goes.

Only the parameters that train are optimised and checkpointed: for a LoRA adapter on a frozen base
(:mod:`kaizen_trainer.adapters`), a checkpoint holds the adapter and its optimizer state, never the base, which the
next pod loads from its URI as this one did.

Under torchrun (:mod:`kaizen_trainer.distributed`) each rank trains on its share of every step's batch, weighted so
the averaged gradients are the whole batch's; the ranks agree at every step on whether to stop (SIGTERM, a loss that
is not finite), so they checkpoint and stop at the same step; rank 0 writes the checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from kaizen.api.retrainjob import Hyperparameters
from kaizen_trainer import distributed
from kaizen_trainer.distributed import SINGLE, World
from kaizen_trainer.errors import TrainerError
from kaizen_trainer.mirror import Mirror
from kaizen_trainer.modeling import Device, Encoder
from kaizen_trainer.objectives import Preference

log = logging.getLogger("kaizen_trainer")
KEEP_CHECKPOINTS = 2
#: How often the loss is checked for NaN/inf (a check waits for the device, so not every step).
FINITE_CHECK_EVERY = 25


@dataclass(frozen=True)
class TrainStats:
    steps: int
    #: Tokens the model was trained on, by all processes (padding excluded).
    tokens: int
    seconds: float
    resumed_from: int | None
    #: Bytes of the gradients and the optimizer state after the first step: the training memory beyond the model.
    optimizer_bytes: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def total_steps(rows: int, hp: Hyperparameters) -> int:
    return hp.max_steps or max(1, math.ceil(hp.epochs * math.ceil(rows / hp.batch_size)))


def batch_order(rows: int, hp: Hyperparameters) -> Iterator[list[int]]:
    """Row indices of each step: a fresh seeded permutation per epoch, so the order depends only on the seed."""
    per_epoch = math.ceil(rows / hp.batch_size)
    epoch = 0
    while True:
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(hp.seed + epoch)).tolist()
        for b in range(per_epoch):
            yield order[b * hp.batch_size: (b + 1) * hp.batch_size]
        epoch += 1


def _checkpoints(directory: Path, tag: str) -> list[Path]:
    """This run's checkpoints, oldest first. The fingerprint is in the name, so telling runs apart reads no file."""
    return sorted(directory.glob(f"step-*-{tag}.pt"), key=lambda p: int(p.stem.split("-")[1]))


def _frozen(model) -> bool:
    return any(not p.requires_grad for p in model.parameters())


def _model_state(model) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: all of it, or only what trains when part of it is frozen."""
    state = model.state_dict()
    if not _frozen(model):
        return state
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: tensor for name, tensor in state.items() if name in trainable}


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def training_bytes(model, optimizer) -> int:
    """Bytes of the parameters' gradients and of the optimizer's state (AdamW: two moments per trained weight)."""
    return (_tensor_bytes(p.grad for p in model.parameters())
            + _tensor_bytes(t for state in optimizer.state.values() for t in state.values()))


def _rng() -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's random state: dropout draws from it."""
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def _save_checkpoint(directory: Path, step: int, tag: str, model, optimizer, scheduler,
                     mirror: Mirror | None, trained=None, world: World = SINGLE) -> None:
    if world.distributed:  # every rank takes part in gathering the state; rank 0 alone writes it
        model_state, optimizer_state = distributed.full_state(trained, optimizer, _frozen(model))
        ranks = distributed.gather(world, _rng())
        if not world.main:
            return
        state = {"step": step, "model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                 "rng": ranks[0][0], "cuda_rng": None, "ranks": ranks}
    else:
        state = {
            "step": step, "model": _model_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".step-{step}-{tag}.pt.partial"
    torch.save(state, partial)
    # A pod killed while writing leaves only a .partial file, never a truncated checkpoint that resume would trust.
    os.replace(partial, directory / f"step-{step}-{tag}.pt")
    for old in _checkpoints(directory, tag)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    if mirror is not None:
        mirror.push(directory / f"step-{step}-{tag}.pt", tag, {p.name for p in _checkpoints(directory, tag)})


def _resume(directory: Path, tag: str, model, optimizer, scheduler, trained=None, world: World = SINGLE) -> int | None:
    """Load the newest readable checkpoint of this run; checkpoints of another run (other data or settings, say
    after the RetrainJob was edited) are removed, since they can never be resumed. Under torchrun rank 0 reads it and
    every rank gets its state."""
    if world.distributed:
        return _resume_distributed(directory, tag, model, optimizer, scheduler, trained, world)
    for stale in set(directory.glob("*step-*.pt*")) - set(_checkpoints(directory, tag)):
        log.info("Removed checkpoint of another run path=%s", stale)
        stale.unlink(missing_ok=True)
    for path in reversed(_checkpoints(directory, tag)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as error:
            log.warning("Skipped unreadable checkpoint path=%s error=%s", path, error)
            continue
        missing, unexpected = model.load_state_dict(state["model"], strict=not _frozen(model))
        if unexpected or set(_model_state(model)) - set(state["model"]):
            log.warning("Skipped checkpoint of another model shape path=%s missing=%d unexpected=%d", path,
                        len(missing), len(unexpected))
            continue
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"])
    return None


def _resume_distributed(directory: Path, tag: str, model, optimizer, scheduler, trained, world: World) -> int | None:
    found = None
    if world.main:
        for stale in set(directory.glob("*step-*.pt*")) - set(_checkpoints(directory, tag)):
            log.info("Removed checkpoint of another run path=%s", stale)
            stale.unlink(missing_ok=True)
        for path in reversed(_checkpoints(directory, tag)):
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except (OSError, RuntimeError, EOFError) as error:
                log.warning("Skipped unreadable checkpoint path=%s error=%s", path, error)
                continue
            if set(state["model"]) != set(_model_state(model)) or "ranks" not in state:
                log.warning("Skipped checkpoint of another model shape or process layout path=%s", path)
                continue
            found = state
            break
    meta = distributed.broadcast(world, found and {k: found[k] for k in ("step", "scheduler", "ranks")})
    if meta is None:
        return None
    frozen = _frozen(model)
    distributed.load_full_state(trained, optimizer, found["model"] if found else {},
                                found["optimizer"] if found else {}, frozen)
    scheduler.load_state_dict(meta["scheduler"])
    if len(meta["ranks"]) == world.size:  # a checkpoint of as many processes: each goes on with its own dropout
        cpu, cuda = meta["ranks"][world.rank]
        torch.set_rng_state(cpu)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)
    return int(meta["step"])


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[list[bool]]:
    flag = [False]
    # Signal handlers can only be installed from the main thread (the CLI); elsewhere training just runs.
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__(0, True))
        try:
            yield flag
        finally:
            signal.signal(signal.SIGTERM, previous)
    else:
        yield flag


def train(
    model: PreTrainedModel, encoder: Encoder, rows: Sequence[Any], hp: Hyperparameters, device: Device,
    checkpoint_dir: Path, tag: str, until: Callable[[int, int], bool] | None = None, mirror: Mirror | None = None,
    objective: Preference | None = None, world: World = SINGLE, strategy: str = "ddp",
) -> TrainStats:
    """Fine-tune ``model`` in place on ``rows``; resumes from a checkpoint of the same ``tag`` when there is one.

    ``until(step, tokens)``, called after each step, may end training early by returning True (the benchmark
    evaluates the model there to measure the compute a target accuracy takes; one process only). With a ``mirror``,
    checkpoints are also kept remotely (:mod:`kaizen_trainer.mirror`). ``rows`` are the encoder's
    :class:`~kaizen_trainer.modeling.Encoded` rows; with a preference ``objective`` (dpo, kto), they are its items and
    the loss is its own (:mod:`kaizen_trainer.objectives`). Under torchrun (``world``) every rank calls this with the
    same rows and trains its share of each batch with ``strategy`` (ddp or fsdp); afterwards rank 0's ``model`` holds
    the trained weights."""
    torch.manual_seed(hp.seed + world.rank)  # one process as ever; under torchrun each rank draws its own dropout
    trained = distributed.wrap(model.train(), strategy, world, device.device)
    steps = total_steps(len(rows), hp)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=hp.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    if mirror is not None and world.main:
        mirror.pull(checkpoint_dir, tag)
    resumed = _resume(checkpoint_dir, tag, model, optimizer, scheduler, trained, world)
    start = resumed or 0
    if resumed is not None:
        log.info("Resumed from checkpoint step=%d of %d dir=%s", resumed, steps, checkpoint_dir)
    order = batch_order(len(rows), hp)
    for _ in range(start):
        next(order)
    tokens, began, finished, optimizer_bytes = 0, time.perf_counter(), steps, 0
    autocast = (torch.autocast(device_type=device.device.type, dtype=device.autocast) if device.autocast
                else contextlib.nullcontext())
    with _sigterm_flag() as terminated:
        for step in range(start + 1, steps + 1):
            batch_items = [rows[i] for i in next(order)]
            items, weight, some = batch_items, 1.0, True
            if world.distributed:
                # This rank's loss, a mean over its own share, weighted by that share of the whole batch's loss
                # terms (times the processes, since DDP and FSDP average the gradients): their average is then the
                # gradient of the whole batch's mean loss, as one process computes it.
                items, some = distributed.share(batch_items, world)
                weight = world.size * encoder.loss_terms(items) / encoder.loss_terms(batch_items) if some else 0.0
            batch = (objective or encoder).batch(items, device.device)
            with autocast:
                loss = objective.loss(trained, batch) if objective else trained(**batch).loss
            (loss * weight if world.distributed else loss).backward()
            optimizer.step()
            scheduler.step()
            if not optimizer_bytes:
                optimizer_bytes = training_bytes(trained, optimizer)
            optimizer.zero_grad(set_to_none=True)
            # Counted on the host: reading anything back from a GPU every step would stall its queue.
            if some:
                tokens += objective.tokens(items) if objective else sum(len(e.input_ids) for e in items)
            diverged = step % FINITE_CHECK_EVERY == 0 and not torch.isfinite(loss).item()
            stop, diverged = distributed.any_rank(world, terminated[0], diverged)
            if diverged:
                raise TrainerError("Error", f"the training loss became {loss.item()} at step {step}; lower "
                                   "hyperparameters.learningRate")
            if step % hp.checkpoint_every_steps == 0 or stop:
                _save_checkpoint(checkpoint_dir, step, tag, model, optimizer, scheduler, mirror, trained, world)
            if stop:
                raise TrainerError("Error", f"terminated (SIGTERM) at step {step}; the checkpoint there is "
                                   "resumed by the next pod")
            if until is not None and until(step, tokens):
                finished = step
                break
    distributed.unshard_into(model, trained, world, _frozen(model))
    if device.device.type == "cuda":
        torch.cuda.synchronize()
    return TrainStats(steps=finished, tokens=distributed.total(world, tokens), seconds=time.perf_counter() - began,
                      resumed_from=resumed, optimizer_bytes=optimizer_bytes)
