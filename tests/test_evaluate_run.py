"""The eval stage's wiring: which methods, which instructions, refusals before any model loads."""

from __future__ import annotations

import shutil

import pytest
import yaml

from sp2dpo import config
from sp2dpo.evaluate import judge, run
from tests.conftest import ROOT


def _params(tmp_path, **eval_overrides):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["eval"].update(eval_overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_methods_default_to_base_plus_every_train_method(tmp_path):
    params = config.load(_params(tmp_path))
    assert run.evaluated_methods(params) == ["base", "dpo", "sp2dpo", "rand_beta"]
    params = config.load(_params(tmp_path, methods=["sp2dpo", "base"]))
    assert run.evaluated_methods(params) == ["sp2dpo", "base"]
    params = config.load(_params(tmp_path, methods=["base", "simpo"]))
    with pytest.raises(config.ConfigError, match=r"eval.methods: simpo not in train.methods"):
        run.evaluated_methods(params)


def test_dvc_eval_stage_depends_on_every_trained_adapter():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["eval"]
    train = dvc["stages"]["train"]["matrix"]
    assert stage["matrix"]["student"] == train["student"]
    adapters = {d for d in stage["deps"] if d.startswith("models/")}
    assert adapters == {f"models/${{item.student}}-{m}" for m in train["method"]}
    assert f"reports/eval/{train['student'][0]}.json" in dvc["stages"]["report"]["deps"]


def test_instruction_subset_is_seeded_and_keeps_alpaca_eval_order(evalsets):
    from sp2dpo.evaluate import alpaca

    reference = alpaca.read_model_outputs(evalsets / "alpaca_eval" / "gpt4_1106_preview.json.gz")
    order = {r["instruction"]: i for i, r in enumerate(reference)}
    eight = run.select_instructions(reference, 8, 42)
    assert len(eight) == 8
    positions = [order[r["instruction"]] for r in eight]
    assert positions == sorted(positions)
    assert run.select_instructions(reference, 8, 42) == eight
    twenty = run.select_instructions(reference, 20, 42)
    assert {r["instruction"] for r in eight} < {r["instruction"] for r in twenty}
    assert run.select_instructions(reference, 8, 7) != eight
    assert len(run.select_instructions(reference, None, 42)) == 805


def test_a_judge_that_is_a_teacher_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    path = _params(tmp_path, allow_teacher_judge=False)
    shutil.copytree(ROOT / "prompts", tmp_path / "prompts")

    def boom(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sp2dpo.evaluate.generate.load_student", boom)
    with pytest.raises(judge.JudgeConflictError, match=r"gemma3.*eval.allow_teacher_judge"):
        run.run("smollm2", params_path=path, root=tmp_path, track=False)


def test_a_missing_adapter_names_the_stage_to_run(tmp_path, monkeypatch):
    path = _params(tmp_path, methods=["base", "sp2dpo"])
    monkeypatch.setattr("sp2dpo.evaluate.generate.load_student", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    with pytest.raises(FileNotFoundError, match=r"models/smollm2-sp2dpo.*dvc repro train@smollm2-sp2dpo"):
        run.run("smollm2", params_path=path, root=tmp_path, track=False)
