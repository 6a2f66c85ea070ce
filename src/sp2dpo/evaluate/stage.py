"""The ``eval@<student>`` stage: answers, judge annotations, WR/LC and IFEval per evaluated model.

For one student, every entry of ``eval.methods`` (``base`` = the student without an adapter, or a
trained method = its adapter ``models/<student>/<method>``) is evaluated the same way:

1. the student answers the AlpacaEval instruction subset and the IFEval prompt subset with the
   fixed decoding of ``eval.generation`` (one model load per adapter, batched);
2. the judge compares each answer with the reference output (AlpacaEval 2.0 protocol, seeded side
   order) and the leaderboard metrics plus the length-controlled win rate are computed;
3. IFEval's rule-based checkers score the answers (strict and loose).

Outputs, per method: ``<outputs>/<method>/{model_outputs.json, annotations.json, ifeval.jsonl}``;
for the student: the report (``reports/eval/<student>.json`` in the pipeline: DVC metrics, nothing
that changes between identical runs). Metrics also go to MLflow: into the training run of the
adapter (found by the adapter's hash), or a run of their own for the base student. Wall-clock
measurements (generation time, judge latency) go to MLflow and the run log only.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo import tracking
from sp2dpo.core import artifacts, runlog
from sp2dpo.core.config import ConfigError, EvalConfig, TeacherConfig, TrainConfig, flatten
from sp2dpo.core.sampling import seeded_subset
from sp2dpo.evaluate import alpaca, generate, ifeval, judge, winrate
from sp2dpo.evaluate.generate import BASE_METHOD as BASE
from sp2dpo.evaluate.generate import generator_name
from sp2dpo.evaluate.judge_backends import DEFAULT_PROMPTS_DIR
from sp2dpo.evaluate.lc import OfficialLCInputs

log = logging.getLogger(__name__)

#: Hash domains of the seeded evaluation subsets (see :mod:`sp2dpo.core.sampling`).
ALPACA_DOMAIN = "alpaca-eval-subset"


@dataclasses.dataclass(frozen=True)
class EvalPaths:
    """Where ``eval@<student>`` reads and writes; :meth:`pipeline` gives the DVC stage's.

    Attributes:
        adapters: the student's adapter folders, one per method (``<adapters>/<method>``).
        outputs: answers, annotations and IFEval records, one folder per method.
        report: the student's metrics JSON.
        judge_prompts: the judge's ``system.txt`` and ``user.txt``.
        run_log: folder of the run logs (generation and judge times; None: not written).
    """

    adapters: Path
    outputs: Path
    report: Path
    judge_prompts: Path = DEFAULT_PROMPTS_DIR
    run_log: Path | None = None

    @classmethod
    def pipeline(cls, student: str) -> EvalPaths:
        """The paths of ``eval@<student>`` in dvc.yaml."""
        return cls(
            adapters=Path("models") / student,
            outputs=Path("data/eval") / student,
            report=Path("reports/eval") / f"{student}.json",
            run_log=runlog.PIPELINE_DIR / "eval" / student,
        )

    def adapter(self, method: str) -> Path:
        return self.adapters / method

    def method_outputs(self, method: str) -> Path:
        return self.outputs / method


def evaluated_methods(ecfg: EvalConfig, train: TrainConfig, trained: Sequence[str]) -> list[str]:
    """``eval.methods``, or ``base`` + every trained method (``matrix.methods``); each checked
    against ``train.methods``."""
    known = [m.name for m in train.methods]
    methods = ecfg.methods or [BASE, *trained]
    unknown = [m for m in methods if m != BASE and m not in known]
    if unknown:
        raise ConfigError(
            f"eval.methods: {', '.join(unknown)} not in train.methods ({', '.join(known)}) or '{BASE}'"
        )
    return methods


def select_instructions(reference: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """The seeded AlpacaEval subset, in AlpacaEval order."""
    keep = seeded_subset([r["instruction"] for r in reference], limit, seed, ALPACA_DOMAIN)
    return [reference[i] for i in keep]


def run(
    ecfg: EvalConfig,
    train: TrainConfig,
    teachers: Sequence[TeacherConfig],
    student_name: str,
    trained: Sequence[str],
    paths: EvalPaths,
    *,
    track: bool = True,
    logged_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every configured method of one student; returns the report written.

    Args:
        ecfg: section ``eval``.
        train: section ``train`` (the student's model and chat template; the known methods).
        teachers: section ``teachers`` (the judge must not be one of them, unless allowed).
        student_name: a ``train.students[].name``.
        trained: the methods trained for the student (``matrix.methods``), evaluated with
            ``base`` when ``eval.methods`` is null.
        paths: inputs and outputs (:class:`EvalPaths`).
        track: log the metrics to MLflow.
        logged_params: the flattened params of an MLflow run of its own (default: ``eval``).
    """
    student = train.student(student_name)
    methods = evaluated_methods(ecfg, train, trained)

    # Judge independence is checked before any model loads.
    judge_cfg, judge_decoding = ecfg.judge, ecfg.judge_decoding
    judge_warning = judge.check_judge_independent(judge_cfg, teachers, ecfg.allow_teacher_judge)
    if judge_warning:
        log.warning("%s", judge_warning)

    for method in methods:
        if method != BASE and not (paths.adapter(method) / "adapter_config.json").exists():
            raise FileNotFoundError(
                f"{paths.adapter(method)}: no trained adapter for eval method {method!r}; run "
                f"`dvc repro train@{student.name}-{method}` first"
            )

    ae = ecfg.alpaca_eval
    reference_path = Path(ae.reference_outputs)
    reference = alpaca.read_model_outputs(reference_path)
    items = select_instructions(reference, ae.limit, ae.seed)
    prompts = (
        ifeval.load_prompts(ecfg.ifeval.input, ecfg.ifeval.limit, ecfg.ifeval.seed)
        if ecfg.ifeval.enabled
        else []
    )
    log.info(
        "eval %s: %s on %d AlpacaEval instructions and %d IFEval prompts",
        student.name, ", ".join(methods), len(items), len(prompts),
    )

    # 1. answers (one student load per method; freed before the judge loads)
    answers: dict[str, list[dict[str, Any]]] = {}
    ifeval_answers: dict[str, dict[Any, str]] = {}
    timings: dict[str, dict[str, float]] = {method: {} for method in methods}
    for method in methods:
        started = time.perf_counter()
        adapter = None if method == BASE else paths.adapter(method)
        model, tokenizer = generate.load_student(student, adapter)
        answers[method] = generate.generate_outputs(
            model, tokenizer, items, ecfg.generation, generator_name(student.name, method)
        )
        alpaca.write_model_outputs(answers[method], paths.method_outputs(method) / "model_outputs.json")
        if prompts:
            responses = generate.generate(
                model, tokenizer, [p.prompt for p in prompts], ecfg.generation,
                max_new_tokens=ecfg.ifeval.max_new_tokens,
            )
            ifeval_answers[method] = {p.key: r for p, r in zip(prompts, responses, strict=True)}
        timings[method]["timing/generation_s"] = time.perf_counter() - started
        del model, tokenizer
        gc.collect()

    # 2. judge + win rates, 3. IFEval
    official = (
        OfficialLCInputs.read(ae.instruction_difficulty, ae.df_gamed)
        if ae.instruction_difficulty and ae.df_gamed
        else None
    )
    annotator = judge.PairwiseJudge(judge_cfg, judge_decoding, seed=ae.seed, prompts_dir=paths.judge_prompts)
    by_method: dict[str, Any] = {}
    try:
        for method in methods:
            annotations, judge_summary = judge.annotate_pairs(annotator, items, answers[method], seed=ae.seed)
            timings[method].update({f"timing/judge_{k}": float(judge_summary[k])
                                    for k in judge.VOLATILE_SUMMARY_KEYS})
            annotations = judge.stable_annotations(annotations)
            folder = paths.method_outputs(method)
            judged = [a for a in annotations if a.get("preference") is not None]
            failed = [a for a in annotations if a.get("preference") is None]
            if failed:
                log.warning(
                    "eval %s-%s: %d of %d judge annotations failed (%s); win rates use the rest",
                    student.name, method, len(failed), len(annotations), judge_summary["status"],
                )
                artifacts.write_json(failed, folder / "judge_failures.json")
            else:
                (folder / "judge_failures.json").unlink(missing_ok=True)
            if not judged:
                raise RuntimeError(f"eval {student.name}-{method}: every judge annotation failed")
            annotations_path = folder / "annotations.json"
            alpaca.write_annotations(judged, annotations_path)
            rates = winrate.json_ready(winrate.evaluate_annotations(
                alpaca.validate_annotations(judged, str(annotations_path)),
                reference=reference, official=official, source=str(annotations_path),
                reference_source=str(reference_path),
            ))
            entry: dict[str, Any] = {"alpaca_eval": rates, "judge": judge.stable_summary(judge_summary)}
            if prompts:
                result = ifeval.score(prompts, ifeval_answers[method])
                ifeval.write_results(result, folder / "ifeval.jsonl")
                entry["ifeval"] = ifeval.summary(result)
            by_method[method] = entry
    finally:
        annotator.close()

    report = {
        "student": student.name,
        "methods": by_method,
        "n_instructions": len(items),
        "n_ifeval_prompts": len(prompts),
        "judge": {
            "id": judge_cfg.id,
            "backend": judge_cfg.backend,
            "model": judge_cfg.model,
            "is_teacher": bool(judge_warning),
        },
        "length_controlled_method": by_method[methods[0]]["alpaca_eval"]["length_controlled_method"],
    }
    artifacts.write_json(report, paths.report)
    if paths.run_log is not None:
        runlog.write(paths.run_log, {"stage": "eval", "student": student.name, "timings": timings})

    if track:
        flat = logged_params if logged_params is not None else flatten({"eval": dataclasses.asdict(ecfg)})
        for method in methods:
            sha = tracking.adapter_sha256(paths.adapter(method)) if method != BASE else None
            run_id = tracking.log_eval(
                generator_name(student.name, method),
                {**flat_metrics(by_method[method]), **timings[method]},
                adapter_sha=sha,
                flat_params=flat,
                pinned={"method": method, "student": student.name, "stage": "eval"},
                artifacts={"eval": paths.method_outputs(method)},
            )
            log.info("eval %s-%s logged to MLflow run %s", student.name, method, run_id)
    return report


def flat_metrics(entry: dict[str, Any]) -> dict[str, float | None]:
    """The numeric results of one method as flat MLflow metric names (``alpaca_eval/win_rate``)."""
    out: dict[str, float | None] = {}
    for section in ("alpaca_eval", "ifeval"):
        for key, value in (entry.get(section) or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out[f"{section}/{key}"] = float(value)
    return out
