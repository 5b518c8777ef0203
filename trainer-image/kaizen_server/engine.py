"""The model server's engine: load a model the way the trainer saves it, and answer with it in-process.

Greedy, deterministic decoding of the very input the trainer trains and evaluates on
(:func:`kaizen_trainer.modeling.prompt_ids`: the prompt, the separator, then the response up to eos), so the
trainer's holdout exactMatch predicts what the server answers; the inference itself is
:mod:`kaizen_trainer.generation`, which the trainer's generative evaluation runs too. A LoRA adapter (what
``method: lora`` writes) is loaded onto its base, the one its adapter_config.json names or ``BASE_MODEL_URI``,
and merged into it for serving, unless the server holds adapters at run time (``keep_adapters``): then every
adapter, its own and those :meth:`Engine.load_adapter` adds, stays a named peft adapter on the one base, and each
request runs with the adapter it asked for (or none). Used by :mod:`kaizen_server.app` (over HTTP) and by the
benchmark (without it). Blocking and not thread-safe: callers run it on one worker thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator, Sequence

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from kaizen.api.retrainjob import Task
from kaizen.logic.retrain import mounted_path
from kaizen_server.errors import ServeError, WrongTask
from kaizen_trainer import adapters, generation, modeling
from kaizen_trainer.errors import TrainerError
from kaizen_trainer.generation import Completion, Label

__all__ = ["Completion", "Engine", "Label", "infer_task", "limit_threads"]

#: The model's own limit on positions, when its config names none.
FALLBACK_POSITIONS = 1024


def _not_the_padding_warning(record: logging.LogRecord) -> bool:
    # generate() drops an all-ones attention mask, then feeds pad tokens to the rows that already ended, and GPT-2
    # warns that padding is unmasked; those rows' tokens after eos are discarded, so the warning is only noise.
    return "passing in an `attention_mask`" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_not_the_padding_warning)


def limit_threads() -> int:
    """Intra-op threads: ``$OMP_NUM_THREADS``, else at most 4 of the CPUs this process may use (in a pod,
    ``os.cpu_count()`` is the node's, and a small model only loses from more)."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or min(4, len(os.sched_getaffinity(0))))
    torch.set_num_threads(max(1, threads))
    return threads


def infer_task(directory: str) -> Task:
    """The task of a saved model, from the architecture its config names."""
    try:
        architectures = AutoConfig.from_pretrained(directory).architectures or []
    except (OSError, ValueError, KeyError) as error:
        raise ServeError(f"cannot read the model's config in {directory}: {error}") from None
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "sequence-classification"
    if any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures):
        return "causal-lm"
    raise ServeError(f"the model in {directory} is a {', '.join(architectures) or 'model of no architecture'}; "
                     "the server serves causal LMs (...LMHeadModel, ...ForCausalLM) and sequence classifiers "
                     "(...ForSequenceClassification)")


class Engine:
    """One loaded model and its tokenizer; :meth:`load` builds it."""

    def __init__(self, task: Task, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 device: modeling.Device, base_uri: str | None = None, keep_adapters: bool = False) -> None:
        #: The base model an adapter was loaded onto; None for a full model.
        self.base_uri = base_uri
        #: The peft adapter of the model itself (MODEL_URI an adapter, kept unmerged), and those added by name.
        self.own_adapter: str | None = None
        self.adapters: dict[str, str] = {}
        self._ids = (f"kaizen{i}" for i in itertools.count())  # peft names must be module names: no dots
        peft = adapters.peft_model(model)
        if peft is not None:
            if keep_adapters:
                self.own_adapter = peft.active_adapter
            else:
                model = peft.merge_and_unload()  # the same answers, without the adapter's extra matmuls per layer
        self.task, self.tokenizer, self.device = task, tokenizer, device
        self.model = modeling.to_device(model, device.device).eval()
        self.positions = generation.positions(model, FALLBACK_POSITIONS)
        self.id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        self.threads = torch.get_num_threads()

    @classmethod
    def load(cls, uri: str, task: Task | None = None, base_uri: str | None = None,
             keep_adapters: bool = False) -> Engine:
        """The model at ``uri`` as the trainer saves it (a path, file://, pvc://CLAIM/PATH where the pod mounts the
        claim, s3:// through fsspec, hf://); ``task`` is inferred from its config when None. An adapter is loaded
        onto ``base_uri``, by default the base its adapter_config.json names. Raises :class:`ServeError` with one
        clear line."""
        try:
            directory = modeling.model_dir(mounted_path(uri))
            base = adapters.adapter_base(directory) and (base_uri or adapters.adapter_base(directory))
            base_dir = modeling.model_dir(mounted_path(base)) if base else None
            task = task or infer_task(base_dir or directory)
            model, tokenizer = modeling.load(task, directory, base_uri=base_dir)
        except TrainerError as error:
            raise ServeError(str(error).replace("baseline", "model")) from None
        return cls(task, model, tokenizer, modeling.pick_device(), base, keep_adapters)

    def load_adapter(self, name: str, uri: str) -> None:
        """Add the LoRA adapter at ``uri`` under ``name`` (unmerged, beside the others). Raises :class:`ServeError`
        when ``uri`` holds no adapter or one that does not fit this model."""
        from peft import PeftModel

        try:
            directory = modeling.model_dir(mounted_path(uri))
            if adapters.adapter_base(directory) is None:
                raise ServeError(f"{uri} holds no LoRA adapter (no adapter_config.json); a full model is served as "
                                 "MODEL_URI by a server of its own")
        except TrainerError as error:
            raise ServeError(str(error).replace("baseline", "adapter")) from None
        peft_id = next(self._ids)
        try:
            if adapters.is_adapter(self.model):
                self.model.load_adapter(directory, adapter_name=peft_id)
            else:
                self.model = PeftModel.from_pretrained(self.model, directory, adapter_name=peft_id)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ServeError(f"cannot load the adapter {uri} onto this server's base model: {error}") from None
        self.model.to(self.device.device).eval()
        self.adapters[name] = peft_id

    def unload_adapter(self, name: str) -> None:
        """Remove the adapter added as ``name`` (nothing when there is none)."""
        peft_id = self.adapters.pop(name, None)
        if peft_id is None:
            return
        if self.adapters or self.own_adapter is not None:
            self.model.delete_adapter(peft_id)
        else:  # peft cannot run with no adapter left: take the layers out, back to the plain base
            self.model = self.model.unload()

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        """Run with the adapter added as ``adapter``, or with the model itself (None): its own adapter, if it is
        one, else the base with every adapter off."""
        peft_id = self.adapters[adapter] if adapter is not None else self.own_adapter
        if not adapters.is_adapter(self.model):
            yield
        elif peft_id is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(peft_id)
            yield

    def complete(self, prompts: Sequence[str], max_tokens: int = 32, adapter: str | None = None) -> list[Completion]:
        """Greedy completions of ``prompts``, batched (left-padded), each until eos or ``max_tokens`` tokens, by the
        model itself or by the adapter added as ``adapter``."""
        if self.task != "causal-lm":
            raise WrongTask("this model is a sequence classifier: use POST /v1/classifications")
        with self._using(adapter):
            return generation.complete(self.model, self.tokenizer, self.device, prompts, max_tokens, self.positions)

    def classify(self, texts: Sequence[str], adapter: str | None = None) -> list[Label]:
        """The most likely label of each text, with its probability (right-padded, as the trainer batches)."""
        if self.task != "sequence-classification":
            raise WrongTask("this model is a causal LM: use POST /v1/completions or /v1/chat/completions")
        with self._using(adapter):
            return generation.classify(self.model, self.tokenizer, self.device, texts, self.positions)
