"""The eval stage's wiring: which methods, which instructions, refusals before any model loads."""

from __future__ import annotations

import pytest

from sp2dpo import evaluate
from sp2dpo.core import config
from sp2dpo.evaluate.judges.engine import JudgeConflictError
from sp2dpo.evaluate.suites.alpaca_eval import select_instructions


def _eval(**overrides) -> config.EvalConfig:
    return config.build(config.EvalConfig, overrides, "eval")


def test_methods_default_to_base_plus_every_trained_method():
    train = config.defaults().train
    trained = ["dpo", "sp2dpo", "rand_beta"]
    assert evaluate.evaluated_methods(_eval(), train, trained) == ["base", *trained]
    assert evaluate.evaluated_methods(_eval(), train, ["sp2dpo"]) == ["base", "sp2dpo"]
    assert evaluate.evaluated_methods(_eval(methods=["sp2dpo", "base"]), train, trained) == ["sp2dpo", "base"]
    with pytest.raises(config.ConfigError, match=r"eval.methods: simpo2 not in train.methods"):
        evaluate.evaluated_methods(_eval(methods=["base", "simpo2"]), train, trained)


def test_instruction_subset_is_seeded_and_keeps_alpaca_eval_order(evalsets):
    from sp2dpo.evaluate.benchmarks import alpaca

    reference = alpaca.read_model_outputs(evalsets / "alpaca_eval" / "gpt4_1106_preview.json.gz")
    order = {r["instruction"]: i for i, r in enumerate(reference)}
    eight = select_instructions(reference, 8, 42)
    assert len(eight) == 8
    positions = [order[r["instruction"]] for r in eight]
    assert positions == sorted(positions)
    assert select_instructions(reference, 8, 42) == eight
    twenty = select_instructions(reference, 20, 42)
    assert {r["instruction"] for r in eight} < {r["instruction"] for r in twenty}
    assert select_instructions(reference, 8, 7) != eight
    assert len(select_instructions(reference, None, 42)) == 805


def _paths(tmp_path) -> evaluate.EvalPaths:
    return evaluate.EvalPaths(adapters=tmp_path / "models/smollm2", outputs=tmp_path / "out",
                              report=tmp_path / "r.json")


def _no_model(monkeypatch):
    def boom(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sp2dpo.evaluate.answers.generate.load_student", boom)


def test_a_judge_that_is_a_teacher_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    params = config.defaults()
    with pytest.raises(JudgeConflictError, match=r"gemma3.*eval.allow_teacher_judge"):
        evaluate.run(_eval(allow_teacher_judge=False), params.train, params.teachers, "smollm2",
                     ["dpo"], _paths(tmp_path), track=False)


def test_a_missing_adapter_names_the_stage_to_run(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    params = config.defaults()
    with pytest.raises(FileNotFoundError, match=r"models/smollm2/sp2dpo.*dvc repro train@smollm2-sp2dpo"):
        evaluate.run(_eval(methods=["base", "sp2dpo"]), params.train, params.teachers, "smollm2",
                     ["sp2dpo"], _paths(tmp_path), track=False)
