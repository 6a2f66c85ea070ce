"""Batches for the per-pair trainer: TRL's preference collator plus the columns our losses read.

Columns that travel with each pair (kept through Trainer's signature-column pruning by
:class:`sp2dpo.train.trainer.PerPairBetaTrainer`):

- ``beta``: beta_i, a (B,) float32 tensor ordered like the chosen half of ``input_ids``;
- ``margin``: m_i of the margin losses, (B,) float32;
- DPO-PoP's weaker pair of each tuple: ``weak_prompt_ids``/``weak_chosen_ids``/
  ``weak_rejected_ids`` become a second padded batch ``weak_input_ids``, ``weak_attention_mask``,
  ``weak_completion_mask``, with its temperatures in ``weak_beta``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from sp2dpo.core.beta import BetaError
from sp2dpo.train.dataset import BETA_COLUMN, MARGIN_COLUMN, WEAK_BETA_COLUMN, WEAK_TEXT_COLUMNS

#: Token columns of the weaker pair after TRL's tokenisation.
WEAK_ID_COLUMNS = ("weak_prompt_ids", "weak_chosen_ids", "weak_rejected_ids")
#: Every extra column a training example may carry into the collator.
EXTRA_COLUMNS = (BETA_COLUMN, MARGIN_COLUMN, WEAK_BETA_COLUMN, *WEAK_ID_COLUMNS)
#: Batch keys that are not model inputs.
NON_MODEL_KEYS = frozenset(
    {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", BETA_COLUMN, MARGIN_COLUMN, WEAK_BETA_COLUMN,
     "weak_input_ids", "weak_attention_mask", "weak_completion_mask"}
)

__all__ = ["EXTRA_COLUMNS", "NON_MODEL_KEYS", "WEAK_ID_COLUMNS", "WEAK_TEXT_COLUMNS", "BetaCollator"]


def _floats(examples: list[dict[str, Any]], key: str) -> torch.Tensor:
    return torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float32)


@dataclasses.dataclass
class BetaCollator(DataCollatorForPreference):
    """TRL's preference collator plus ``beta`` (always), ``margin`` and DPO-PoP's weaker pairs."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if any(BETA_COLUMN not in ex for ex in examples):
            raise BetaError(
                f"a training example reached the collator without its {BETA_COLUMN!r} column; it "
                "must survive signature-column pruning (use PerPairBetaTrainer)"
            )
        output = super().torch_call(examples)
        output[BETA_COLUMN] = _floats(examples, BETA_COLUMN)
        if MARGIN_COLUMN in examples[0]:
            output[MARGIN_COLUMN] = _floats(examples, MARGIN_COLUMN)
        if WEAK_ID_COLUMNS[0] in examples[0]:
            weak = super().torch_call(
                [{"prompt_ids": ex["weak_prompt_ids"], "chosen_ids": ex["weak_chosen_ids"],
                  "rejected_ids": ex["weak_rejected_ids"]} for ex in examples]
            )
            for key in ("input_ids", "attention_mask", "completion_mask"):
                output[f"weak_{key}"] = weak[key]
            output[WEAK_BETA_COLUMN] = _floats(examples, WEAK_BETA_COLUMN)
        return output
