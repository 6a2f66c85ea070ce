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
from sp2dpo.core.sampling import seeded_subset
from sp2dpo.core.stopping import GracefulStop
from sp2dpo.evaluate import alpaca, answers, generate, ifeval, prefeval, suites, winrate
from sp2dpo.evaluate.arenahard import DEFAULT_PROMPT_DIR as ARENA_HARD_PROMPTS
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.generate import BASE_METHOD as BASE
from sp2dpo.evaluate.generate import generator_name
from sp2dpo.evaluate.judges.engine import JudgeEngine, check_judge_independent
from sp2dpo.evaluate.judges.pairwise import (
    VOLATILE_SUMMARY_KEYS,
    PairwiseJudge,
    annotate_pairs,
    stable_annotations,
    stable_summary,
)
from sp2dpo.evaluate.judges.prompts import DEFAULT_PROMPTS_DIR
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
    judge_warning = check_judge_independent(judge_cfg, teachers, ecfg.allow_teacher_judge)
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
    items = select_instructions(reference, ae.limit, ae.seed) if ae.enabled else []
    prompts = (
        ifeval.load_prompts(ecfg.ifeval.input, ecfg.ifeval.limit, ecfg.ifeval.seed)
        if ecfg.ifeval.enabled
        else []
    )
    mtb, ah = ecfg.mt_bench, ecfg.arena_hard
    mt_questions = suites.mt_bench_questions(mtb) if mtb.enabled else []
    ah_questions = suites.arena_hard_questions(ah) if ah.enabled else []
    log.info(
        "eval %s: %s on %d AlpacaEval instructions, %d MT-Bench questions, %d IFEval prompts, "
        "%d Arena-Hard prompts",
        student.name, ", ".join(methods), len(items), len(mt_questions), len(prompts),
        len(ah_questions),
    )

    def name(method: str) -> str:
        return generator_name(student.name, method)

    answers_by: dict[str, list[dict[str, Any]]] = {}
    ifeval_answers: dict[str, dict[Any, str]] = {}
    mt_answers: dict[str, list[tuple[str, str]]] = {}
    ah_answers: dict[str, list[str]] = {}
    held_out: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, float]] = {method: {} for method in methods}
    by_method: dict[str, Any] = {}
    with EvalCalls(paths.calls) as calls, GracefulStop(f"eval {student.name}") as stopping:
        # 1. answers (one student load per method, only when some answer is missing)
        gen = ecfg.generation
        for method in methods:
            if stopping.stopped:
                break
            started = time.perf_counter()
            adapter = None if method == BASE else paths.adapter(method)
            folder = paths.method_outputs(method)
            folder.mkdir(parents=True, exist_ok=True)
            with answers.open_answerer(student, method, adapter, ecfg.server, calls) as answerer:

                def answer(turns: list[list[str]], cap: int, a: Any = answerer) -> list[list[str]]:
                    return a.answer(turns, gen, cap)

                if items:
                    texts = answerer.answer_instructions([i["instruction"] for i in items], gen)
                    answers_by[method] = generate.model_outputs(items, texts, name(method))
                    alpaca.write_model_outputs(answers_by[method], folder / "model_outputs.json")
                if mt_questions:
                    mt_answers[method] = suites.answer_mt_bench(mtb, mt_questions, answer)
                    suites.write_mt_bench_answers(
                        mt_questions, mt_answers[method], name(method), folder / "mt_bench_answers.jsonl"
                    )
                if prompts:
                    responses = answerer.answer_instructions(
                        [p.prompt for p in prompts], gen, ecfg.ifeval.max_new_tokens
                    )
                    ifeval_answers[method] = {p.key: r for p, r in zip(prompts, responses, strict=True)}
                if ah_questions:
                    ah_answers[method] = suites.answer_arena_hard(ah, ah_questions, answer)
                    suites.write_arena_hard_answers(
                        ah_questions, ah_answers[method], name(method), folder / "arena_hard_answers.jsonl"
                    )
            timings[method]["timing/generation_s"] = time.perf_counter() - started
            if ecfg.prefeval.enabled and not stopping.stopped:
                started = time.perf_counter()
                pe = ecfg.prefeval
                held_out[method] = prefeval.run(
                    student.model, adapter, pe.pairs, revision=student.revision,
                    chat_template=student.chat_template, limit=pe.limit,
                    max_length=pe.max_length, max_prompt_length=pe.max_prompt_length,
                    batch_size=pe.batch_size, rounds=pe.rounds, seed=pe.seed, device=None,
                    out=folder / "prefeval.jsonl",
                )
                timings[method]["timing/prefeval_s"] = time.perf_counter() - started
            gc.collect()
        stopping.raise_if_stopped(_kept(calls, paths.calls))

        # 2. judges + win rates and scores, 3. IFEval
        official = (
            OfficialLCInputs.read(ae.instruction_difficulty, ae.df_gamed)
            if ae.instruction_difficulty and ae.df_gamed
            else None
        )
        engine = JudgeEngine(judge_cfg, calls)
        pairwise = PairwiseJudge(
            engine, judge_decoding, seed=ae.seed, prompts_dir=paths.judge_prompts
        )
        by_method.update({method: {} for method in methods})
        try:
            for method in methods if items else ():
                annotations, judge_summary = annotate_pairs(
                    pairwise, items, answers_by[method], seed=ae.seed, stop=stopping.stop
                )
                stopping.raise_if_stopped(_kept(calls, paths.calls))
                timings[method].update({f"timing/judge_{k}": float(judge_summary[k])
                                        for k in VOLATILE_SUMMARY_KEYS})
                by_method[method] = _alpaca_entry(
                    student.name, method, annotations, judge_summary, paths, reference,
                    reference_path, official,
                )
            if mt_questions:
                grader, templates = suites.mt_bench_grader(mtb, engine, judge_decoding)
                mt = suites.judge_mt_bench(
                    mtb, mt_questions, mt_answers, name, grader, templates, paths.method_outputs,
                    stopping.stop,
                )
                stopping.raise_if_stopped(_kept(calls, paths.calls))
                assert mt is not None
                for method in methods:
                    by_method[method]["mt_bench"] = mt[method]
            for method in methods:
                if prompts:
                    result = ifeval.score(prompts, ifeval_answers[method])
                    ifeval.write_results(result, paths.method_outputs(method) / "ifeval.jsonl")
                    by_method[method]["ifeval"] = ifeval.summary(result)
            if ah_questions:
                grader, ah_prompt = suites.arena_hard_grader(
                    ah, engine, judge_decoding, paths.arena_hard_prompts
                )
                scored = suites.judge_arena_hard(
                    ah, ah_questions, ah_answers, name, grader, ah_prompt, paths.method_outputs,
                    stopping.stop,
                )
                stopping.raise_if_stopped(_kept(calls, paths.calls))
                assert scored is not None
                for method in methods:
                    by_method[method]["arena_hard"] = scored[method]
        finally:
            engine.close()
        call_counts = calls.counts()
    for method, summary in held_out.items():
        by_method[method]["prefeval"] = summary

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
        "suites": [s for s in SUITES if any(s in e for e in by_method.values())],
    }
    if items:
        report["length_controlled_method"] = by_method[methods[0]]["alpaca_eval"]["length_controlled_method"]
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


#: The suites in the paper's reporting order (AE2 -> MT-Bench -> IFEval -> Arena-Hard-Auto).
SUITES = ("alpaca_eval", "mt_bench", "ifeval", "arena_hard")
#: Sections of a method's metrics: the suites, then the held-out preference accuracy.
METRIC_SECTIONS = (*SUITES, "prefeval")


def flat_metrics(entry: dict[str, Any]) -> dict[str, float | None]:
    """The numeric results of one method as flat MLflow metric names (``alpaca_eval/win_rate``;
    an interval ``ci`` as ``ci_low`` and ``ci_high``)."""
    out: dict[str, float | None] = {}
    for section in METRIC_SECTIONS:
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


def _alpaca_entry(
    student: str,
    method: str,
    annotations: list[dict[str, Any]],
    judge_summary: dict[str, Any],
    paths: EvalPaths,
    reference: list[dict[str, Any]],
    reference_path: Path,
    official: OfficialLCInputs | None,
) -> dict[str, Any]:
    """Write one method's AlpacaEval annotations (and failures); its WR/LC entry."""
    annotations = stable_annotations(annotations)
    folder = paths.method_outputs(method)
    judged = [a for a in annotations if a.get("preference") is not None]
    failed = [a for a in annotations if a.get("preference") is None]
    if failed:
        log.warning(
            "eval %s-%s: %d of %d judge annotations failed (%s); win rates use the rest",
            student, method, len(failed), len(annotations), judge_summary["status"],
        )
        artifacts.write_json(failed, folder / "judge_failures.json")
    else:
        (folder / "judge_failures.json").unlink(missing_ok=True)
    if not judged:
        raise RuntimeError(f"eval {student}-{method}: every judge annotation failed")
    annotations_path = folder / "annotations.json"
    alpaca.write_annotations(judged, annotations_path)
    rates = winrate.json_ready(winrate.evaluate_annotations(
        alpaca.validate_annotations(judged, str(annotations_path)),
        reference=reference, official=official, source=str(annotations_path),
        reference_source=str(reference_path),
    ))
    return {"alpaca_eval": rates, "judge": stable_summary(judge_summary)}
