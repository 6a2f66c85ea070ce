"""Two training processes on CPU through `accelerate launch` (the code path of the DDP and
DeepSpeed GPU configs) give the single-process result with the same global batch: per-pair
beta_i stays with its pair on every rank, and gathered metrics and running statistics (BCO's
delta, beta-DPO's batch beta and pair filtering) are computed over the whole global batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import MORE_PAIRS, ROOT, SHORT_TEMPLATE, run
from tests.conftest import PAIRS as BASE_PAIRS

pytestmark = pytest.mark.slow

PAIRS = BASE_PAIRS + MORE_PAIRS
METHODS = [
    {"name": "sp2dpo", "loss": "sigmoid", "beta_column": "beta_x"},
    {"name": "bco", "loss": "bco_pair", "beta_column": "beta_x"},
    {"name": "bdpo", "loss": "beta_dpo", "beta": 0.1, "loss_args": {"rho": 0.5}},
]


def _project(tmp_path: Path, tiny_student: Path) -> Path:
    frame = pd.DataFrame({
        "prompt_id": [p[0] for p in PAIRS], "prompt": [p[1] for p in PAIRS],
        "chosen": [p[2] for p in PAIRS], "rejected": [p[3] for p in PAIRS],
        "score_chosen": 8.0, "score_rejected": 3.0, "source": "test",
    })
    frame.to_parquet(tmp_path / "pairs.parquet", index=False)
    # beta_i grows with the pair index: a pair paired with another's beta changes the result
    pd.DataFrame({"prompt_id": frame["prompt_id"], "beta_x": np.linspace(0.03, 0.3, len(PAIRS))}).to_csv(
        tmp_path / "beta.csv", index=False
    )
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    t = raw["train"]
    t["students"] = [{"name": "tiny", "model": str(tiny_student), "chat_template": SHORT_TEMPLATE,
                      "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}]
    t["methods"] = METHODS
    t.update(max_steps=3, learning_rate=1e-2, warmup_ratio=0.0, drop_missing_beta=False, max_length=32,
             max_prompt_length=16)
    t["lora"]["dropout"] = 0.0
    raw["matrix"] = {"students": ["tiny"], "methods": [m["name"] for m in METHODS]}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(raw))
    t["students"][0]["per_device_train_batch_size"] = 1  # 2 processes x 1 = the same global batch
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def _train(project: Path, params: str, method: str, out: str, launcher: list[str]) -> dict:
    cmd = [*launcher, "-m", "sp2dpo.cli", "train", "tiny", method, "--params", params,
           "--pairs", "pairs.parquet", "--beta", "beta.csv", "--out", out, "--no-track"]
    run(cmd, cwd=project, timeout=600)
    return json.loads((project / f"{out}.json").read_text())


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.mark.timeout(1200)  # 53 s alone on 2 cores; two training processes share them
def test_two_cpu_processes_match_one_with_the_same_global_batch(tmp_path, tiny_student):
    project = _project(tmp_path, tiny_student)
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                  str(ROOT / "configs" / "accelerate" / "cpu-2proc.yaml")]
    seen = {}
    for method in METHODS:
        name = method["name"]
        one = _train(project, "one.yaml", name, f"one/{name}", [sys.executable])
        seen[name] = one
        two = _train(project, "two.yaml", name, f"two/{name}", accelerate)
        assert one["global_step"] == two["global_step"] == 3
        for key in ("first_loss", "final_loss", "train_loss", "final_rewards_margins", "final_rewards_accuracies"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (name, key)
        assert one["final_loss"] != one["first_loss"]
        for key, value in one.get("loss_state", {}).items():
            assert two["loss_state"][key] == pytest.approx(value, rel=1e-4, abs=1e-9), (name, key)
        w1, w2 = _weights(project / "one" / name), _weights(project / "two" / name)
        assert w1.keys() == w2.keys()
        for k in w1:
            np.testing.assert_allclose(w1[k].numpy(), w2[k].numpy(), rtol=0, atol=1e-5, err_msg=f"{name} {k}")
    assert seen["bco"]["loss_state"]["bco_delta/mean"] != 0.0
    assert seen["bdpo"]["loss_state"]["beta_dpo_gap/std"] > 0.0
