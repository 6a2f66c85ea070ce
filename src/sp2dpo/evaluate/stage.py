"""The ``eval@<student>`` stage: answers, judge annotations, WR/LC and IFEval per evaluated model.

For one student, every entry of ``eval.methods`` (``base`` = the student without an adapter, or a
trained method = its adapter ``models/<student>/<method>``) is evaluated the same way:

1. the student answers the seeded subsets of the four suites (AlpacaEval, MT-Bench's two turns,
   IFEval, Arena-Hard) with the fixed decoding of ``eval.generation``: in-process (one model
   load per adapter, batched) or from an OpenAI-compatible server (``eval.server``);
2. the judge compares each AlpacaEval answer with the reference output (AlpacaEval 2.0 protocol,
   seeded side order; WR and LC), grades each MT-Bench turn 1-10 (FastChat's templates and
   scores), and plays two games per Arena-Hard prompt against the baseline (Bradley-Terry score,
   bootstrap interval);
3. IFEval's rule-based checkers score the answers (strict and loose);
4. the held-out preference accuracy (``eval.prefeval``, :mod:`sp2dpo.evaluate.prefeval`): the
   implicit-reward margin of each model against the model without adapter on held-out pairs,
   with bootstrap intervals (no judge; the base model is 0.5 by construction).

Every answer and every judge call goes through the eval call store (``<calls>``,
:mod:`sp2dpo.evaluate.calls`): a re-run after a crash, a SIGKILL or a Ctrl-C makes only what is
missing. SIGINT/SIGTERM stop cleanly: the work in flight finishes and is stored, then the stage
ends with one line (:class:`sp2dpo.core.stopping.Interrupted`).

Results are reported in the paper's order: AlpacaEval 2.0, MT-Bench, IFEval, Arena-Hard-Auto.

Outputs, per method: ``<outputs>/<method>/{model_outputs.json, annotations.json, ifeval.jsonl,
mt_bench_answers.jsonl, mt_bench_judgments.jsonl, arena_hard_answers.jsonl,
arena_hard_judgments.jsonl}`` (the official files' layouts) and ``prefeval.jsonl`` (the held-out
pairs' log-probs, log-ratios and margins, one line per pair); each suite can be switched off
(``eval.<suite>.enabled``), e.g. for a sweep that selects by the held-out metric alone;
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
from sp2dpo.core.stopping import GracefulStop
from sp2dpo.evaluate import answers, prefeval, suites
from sp2dpo.evaluate.answers.generate import BASE_METHOD as BASE
from sp2dpo.evaluate.answers.generate import generator_name
from sp2dpo.evaluate.benchmarks.arenahard import DEFAULT_PROMPT_DIR as ARENA_HARD_PROMPTS
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.judges.engine import JudgeEngine, check_judge_independent
from sp2dpo.evaluate.judges.prompts import DEFAULT_PROMPTS_DIR

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalPaths:
    """Where ``eval@<student>`` reads and writes; :meth:`pipeline` gives the DVC stage's.

    Attributes:
        adapters: the student's adapter folders, one per method (``<adapters>/<method>``).
        outputs: answers, annotations and IFEval records, one folder per method.
        report: the student's metrics JSON.
        judge_prompts: the AlpacaEval judge's ``system.txt`` and ``user.txt``.
        arena_hard_prompts: the Arena-Hard judge's ``system.txt`` and ``user.txt``.
        calls: the eval call store (answers and judge calls; None: in memory, nothing kept).
        run_log: folder of the run logs (generation and judge times; None: not written).
    """

    adapters: Path
    outputs: Path
    report: Path
    judge_prompts: Path = DEFAULT_PROMPTS_DIR
    arena_hard_prompts: Path = ARENA_HARD_PROMPTS
    calls: Path | None = None
    run_log: Path | None = None

    @classmethod
    def pipeline(cls, student: str) -> EvalPaths:
        """The paths of ``eval@<student>`` in dvc.yaml."""
        return cls(
            adapters=Path("models") / student,
            outputs=Path("data/eval") / student,
            report=Path("reports/eval") / f"{student}.json",
            calls=Path("data/eval_calls") / student,
            run_log=runlog.PIPELINE_DIR / "eval" / student,
        )

    def adapter(self, method: str) -> Path:
        return self.adapters / method

    def method_outputs(self, method: str) -> Path:
        return self.outputs / method

    def context(self, engine: JudgeEngine, student: str) -> suites.Context:
        """What the suites of ``student`` read and where they write."""
        return suites.Context(
            engine=engine,
            judge_prompts=self.judge_prompts,
            arena_hard_prompts=self.arena_hard_prompts,
            generator=lambda method: generator_name(student, method),
            outputs=self.method_outputs,
        )


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
    judge_cfg = ecfg.judge
    judge_warning = check_judge_independent(judge_cfg, teachers, ecfg.allow_teacher_judge)
    if judge_warning:
        log.warning("%s", judge_warning)

    for method in methods:
        if method != BASE and not (paths.adapter(method) / "adapter_config.json").exists():
            raise FileNotFoundError(
                f"{paths.adapter(method)}: no trained adapter for eval method {method!r}; run "
                f"`dvc repro train@{student.name}-{method}` first"
            )

    calls = EvalCalls(paths.calls)
    engine = JudgeEngine(judge_cfg, calls)
    every = suites.build(ecfg, paths.context(engine, student.name))
    enabled = [suite for suite in every if suite.enabled]
    log.info("eval %s: %s on %s", student.name, ", ".join(methods),
             ", ".join(suite.describe() for suite in enabled) or "no suite")

    # answers[suite][method]: per conversation, the answer of each user turn
    answered: dict[str, dict[str, list[list[str]]]] = {suite.name: {} for suite in enabled}
    held_out: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, float]] = {method: {} for method in methods}
    by_method: dict[str, dict[str, Any]] = {method: {} for method in methods}
    with calls, GracefulStop(f"eval {student.name}") as stopping:
        # 1. answers (one student load per method, only when some answer is missing)
        gen = ecfg.generation
        for method in methods:
            if stopping.stopped:
                break
            started = time.perf_counter()
            adapter = None if method == BASE else paths.adapter(method)
            paths.method_outputs(method).mkdir(parents=True, exist_ok=True)
            with answers.open_answerer(student, method, adapter, ecfg.server, calls) as answerer:
                for suite in enabled:
                    asked = suite.conversations()
                    got = answerer.answer(asked.turns, gen, asked.max_new_tokens)
                    answered[suite.name][method] = got
                    suite.write_answers(method, got)
            timings[method]["timing/generation_s"] = time.perf_counter() - started
            if ecfg.prefeval.enabled and not stopping.stopped:
                started = time.perf_counter()
                pe = ecfg.prefeval
                held_out[method] = prefeval.run(
                    student.model, adapter, pe.pairs, revision=student.revision,
                    chat_template=student.chat_template, limit=pe.limit,
                    max_length=pe.max_length, max_prompt_length=pe.max_prompt_length,
                    batch_size=pe.batch_size, rounds=pe.rounds, seed=pe.seed, device=None,
                    out=paths.method_outputs(method) / "prefeval.jsonl",
                )
                timings[method]["timing/prefeval_s"] = time.perf_counter() - started
            gc.collect()
        stopping.raise_if_stopped(_kept(calls, paths.calls))

        # 2. judges and scores, suite by suite (one judge engine, loaded at most once)
        try:
            for suite in enabled:
                scored = suite.evaluate(answered[suite.name], stopping.stop)
                stopping.raise_if_stopped(_kept(calls, paths.calls))
                assert scored is not None
                for method, sections in scored.entries.items():
                    by_method[method].update(sections)
                for method, measured in scored.timings.items():
                    timings[method].update(measured)
        finally:
            engine.close()
        call_counts = calls.counts()
    for method, summary in held_out.items():
        by_method[method]["prefeval"] = summary

    report: dict[str, Any] = {
        "student": student.name,
        "methods": by_method,
        "judge": {
            "id": judge_cfg.id,
            "backend": judge_cfg.backend,
            "model": judge_cfg.model,
            "is_teacher": bool(judge_warning),
        },
        "suites": [s.name for s in every if any(s.name in e for e in by_method.values())],
    }
    for suite in every:
        report.update(suite.report_fields(by_method))
    artifacts.write_json(report, paths.report)
    if paths.run_log is not None:
        runlog.write(paths.run_log, {"stage": "eval", "student": student.name, "timings": timings,
                                     "calls": call_counts})
    log.info("eval %s: calls made %s, reused from the store %s", student.name,
             call_counts["made"], call_counts["reused"])

    if track:
        flat = logged_params if logged_params is not None else flatten({"eval": dataclasses.asdict(ecfg)})
        for method in methods:
            sha = tracking.adapter_sha256(paths.adapter(method)) if method != BASE else None
            run_id = tracking.log_eval(
                generator_name(student.name, method),
                {**flat_metrics(by_method[method]), **timings[method],
                 **{f"calls/{what}_{kind}": float(n) for what, per in call_counts.items()
                    for kind, n in per.items()}},
                adapter_sha=sha,
                flat_params=flat,
                pinned={"method": method, "student": student.name, "stage": "eval"},
                artifacts={"eval": paths.method_outputs(method)}
                if any(paths.method_outputs(method).iterdir()) else None,
            )
            log.info("eval %s-%s logged to MLflow run %s", student.name, method, run_id)
    return report


def metric_sections() -> tuple[str, ...]:
    """Sections of a method's metrics: the registered suites in order, then the held-out
    preference accuracy."""
    return (*suites.names(), "prefeval")


def flat_metrics(entry: Mapping[str, Any]) -> dict[str, float | None]:
    """The numeric results of one method as flat MLflow metric names (``alpaca_eval/win_rate``;
    an interval ``ci`` as ``ci_low`` and ``ci_high``)."""
    out: dict[str, float | None] = {}
    for section in metric_sections():
        for key, value in (entry.get(section) or {}).items():
            if (key == "ci" or key.endswith("_ci")) and isinstance(value, list) and len(value) == 2:
                stem = "" if key == "ci" else key[: -len("ci")]
                out[f"{section}/{stem}ci_low"], out[f"{section}/{stem}ci_high"] = map(float, value)
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out[f"{section}/{key}"] = float(value)
    return out


def _kept(calls: EvalCalls, where: Path | None) -> str:
    """What an interrupted run kept (for the one-line message)."""
    made = calls.counts()["made"]
    return (
        f"{made.get('answer', 0)} answer(s) and {made.get('judge', 0)} judge call(s) made now are "
        f"stored in {where or 'memory (no call store)'}; re-run to continue (stored calls are "
        "never made again)"
    )
