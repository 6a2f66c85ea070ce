"""The ``train`` stage: TRL's DPO inner loop with the global beta replaced by a per-pair beta_i.

- :mod:`.losses`: one pure function per loss, registered by name in ``LOSSES``, one interface;
- :mod:`.dataset`: filtered pairs joined with their beta_i (and margins, DPO-PoP tuples from
  :mod:`.pop`), in TRL's preference format;
- :mod:`.collate` and :mod:`.trainer`: the collator and the ``DPOTrainer`` subclass (the only
  code touching TRL internals);
- :mod:`.stage`: :func:`run`, one (student, method) run (the DVC stage and ``sp2dpo train``).
"""

from sp2dpo.train.collate import BetaCollator
from sp2dpo.train.dataset import (
    BETA_COLUMN,
    MARGIN_COLUMN,
    attach_beta,
    beta_summary,
    build_dataset,
)
from sp2dpo.train.stage import TrainPaths, load_student, normalize_adapter_dir, run
from sp2dpo.train.trainer import PerPairBetaTrainer, make_dpo_config, peft_config

__all__ = [
    "BETA_COLUMN",
    "MARGIN_COLUMN",
    "BetaCollator",
    "PerPairBetaTrainer",
    "TrainPaths",
    "attach_beta",
    "beta_summary",
    "build_dataset",
    "load_student",
    "make_dpo_config",
    "normalize_adapter_dir",
    "peft_config",
    "run",
]
