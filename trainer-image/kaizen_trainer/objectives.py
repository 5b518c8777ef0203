"""Training objectives beyond SFT: the loss that :func:`kaizen_trainer.train.train` minimises on a batch of preference
rows (:func:`kaizen_trainer.curate.preference_rows`), computed by trl.

* ``dpo`` -- trl's ``DPOTrainer`` loss (sigmoid): the candidate's log-likelihood ratio against the baseline, of the
  chosen answer (the correction) over the rejected one (the answer served), scaled by ``hyperparameters.beta``, with
  trl's ``sft`` term on the chosen answer beside it (see :class:`Preference`);
* ``kto`` -- trl's ``KTOTrainer`` loss: unpaired answers labelled desirable or undesirable, each judged against a KL
  estimate between the candidate and the baseline on mismatched answers of the same batch.

trl's trainers serve as loss functions here: each is built over the rows, tokenises them (the prompt ends with the
model's separator and every answer with eos, so trl's sequences are the input format the trainer evaluates and the
server answers, :func:`kaizen_trainer.modeling.prompt_ids`), and its collator and ``compute_loss`` turn a batch into
the loss against the frozen reference model, the baseline. The loop stays ours: the optimizer, the schedule, bf16
autocast, checkpoints, resume and SIGTERM work as for SFT.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kaizen.api.retrainjob import Hyperparameters, Objective
from kaizen_trainer.curate import Row
from kaizen_trainer.errors import invalid_config
from kaizen_trainer.modeling import Device, separator

log = logging.getLogger("kaizen_trainer")


class Preference:
    """A dpo or kto objective over ``rows``: :attr:`items` are what the loop batches (trl's tokenised rows)."""

    def __init__(self, kind: Objective, model: PreTrainedModel, reference: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], hp: Hyperparameters, device: Device):
        if kind not in ("dpo", "kto"):
            raise invalid_config(f"objective {kind} is not a preference objective (dpo or kto)")
        import datasets  # trl's own dependencies; imported here so that SFT runs never pay for them
        from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

        datasets.disable_progress_bars()
        sep = tokenizer.convert_ids_to_tokens(separator(tokenizer))
        assert isinstance(sep, str)  # one id, one token
        records: list[dict[str, Any]]
        if kind == "dpo":
            records = [{"prompt": r.input + sep, "chosen": r.target, "rejected": r.rejected} for r in rows]
        else:
            records = [{"prompt": r.input + sep, "completion": r.target, "label": bool(r.desirable)} for r in rows]
        settings: dict[str, Any] = dict(
            output_dir=tempfile.mkdtemp(prefix=f"kaizen-{kind}-"), report_to=[], beta=hp.beta,
            max_length=hp.max_length, per_device_train_batch_size=max(2, hp.batch_size), seed=hp.seed,
            use_cpu=device.device.type == "cpu", bf16=device.autocast == torch.bfloat16, disable_tqdm=True,
            logging_strategy="no", save_strategy="no", dataset_num_proc=None,
        )
        if kind == "dpo":
            # trl's sigmoid DPO loss plus its sft term, the chosen answer's likelihood (RPO, Pang et al. 2024):
            # DPO alone lowers chosen and rejected likelihoods together: on the trainer tests' task, with no replay
            # beside the pairs, it left the refund slice unfixed at a rate of 1e-4 and broke every slice at 3e-4.
            settings["loss_type"] = ["sigmoid", "sft"]
        self.kind = kind
        given: dict[str, Any] = dict(model=model, ref_model=reference, processing_class=tokenizer,
                                     train_dataset=datasets.Dataset.from_list(records))
        self.trainer = DPOTrainer(args=DPOConfig(**settings), **given) if kind == "dpo" \
            else KTOTrainer(args=KTOConfig(**settings), **given)
        # trl tokenises the records into a datasets.Dataset of dicts; its attribute is typed for any torch Dataset.
        self.items: list[dict[str, Any]] = list(cast(Iterable[dict[str, Any]], self.trainer.train_dataset))
        if len(self.items) < len(records):
            log.info("Dropped preference rows whose prompt fills maxLength kept=%d of=%d", len(self.items),
                     len(records))

    def batch(self, items: Sequence[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v
                for k, v in self.trainer.data_collator(list(items)).items()}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.trainer.compute_loss(model, batch)
        for logged in self.trainer._metrics.values():
            logged.clear()  # trl keeps per-step metrics for its own logging, which this loop does not use
        return loss

    @staticmethod
    def tokens(items: Sequence[dict[str, Any]]) -> int:
        """Tokens trained on (padding excluded): the prompt with each answer of the row."""
        return sum(len(i["prompt_ids"]) * (2 if "chosen_ids" in i else 1)
                   + len(i.get("chosen_ids", ())) + len(i.get("rejected_ids", ())) + len(i.get("completion_ids", ()))
                   for i in items)
