"""One training run per registered loss on the real student (SmolLM2-135M-Instruct): every
method trains through the same trainer, its loss is finite and falls on a repeated batch."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from trl import DPOConfig

from sp2dpo import train
from sp2dpo.core import config
from sp2dpo.train.dataset import attach_beta, pop_frame, to_preference_dataset
from tests.conftest import SHORT_TEMPLATE, STUDENT, pairs_frame

pytestmark = pytest.mark.slow

#: A method per loss: beta_i from the artifact where the loss takes one, else a global beta
#: on the loss's own scale (SimPO / alpha-DPO 2 to 2.5).
GLOBAL_BETA = {"simpo": 2.0, "alpha_dpo": 2.5, "beta_dpo": 0.1}
#: Pairs per run, all in one batch, seen once per step: the loss must fall on that batch.
PAIRS = 2


@pytest.fixture(scope="module")
def smollm():
    from sp2dpo.llm import models

    model, tokenizer = models.load_causal_lm(STUDENT)
    tokenizer.chat_template = SHORT_TEMPLATE
    return model, tokenizer


def _dataset(loss: str):
    frame = pairs_frame(4)
    if loss in GLOBAL_BETA:
        frame = attach_beta(frame, GLOBAL_BETA[loss])
    else:
        frame = attach_beta(frame, pd.Series([0.05, 0.1, 0.2, 0.3], index=frame["prompt_id"], name="b"))
    spec = config.LOSS_SPECS[loss]
    margins = (frame["score_chosen"] - frame["score_rejected"]).to_numpy()
    if loss == "dpo_pop":
        frame, _ = pop_frame(frame, margins, config.build_loss_args(loss, {}, "t"), seed=0)
    elif spec.margins:
        frame["margin"] = margins / 5  # keep m_i in the range of beta * Delta early on
    return to_preference_dataset(frame.head(PAIRS))


@pytest.mark.parametrize("loss", sorted(config.LOSS_SPECS))
def test_every_loss_trains_the_real_student(smollm, tmp_path, loss):
    model, tok = smollm
    args = DPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=PAIRS, max_steps=4, learning_rate=2e-3,
        max_length=32, seed=0, precompute_ref_log_probs=True, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, use_cpu=True, bf16=False, dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    from peft import LoraConfig

    trainer = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=args, train_dataset=_dataset(loss), processing_class=tok,
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                               task_type="CAUSAL_LM"),
        loss=loss,
    )
    trainer.train()
    seen = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(seen) == 4 and np.isfinite(seen).all()
    assert seen[-1] < seen[0], f"{loss}: loss did not fall on a repeated batch: {seen}"
