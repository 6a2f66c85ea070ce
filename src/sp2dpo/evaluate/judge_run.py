"""``sp2dpo judge``: the AlpacaEval judge over an outputs file, resumable, with a cost estimate.

Judges a model-outputs file (AlpacaEval format) against the reference outputs with the
``eval.judge`` entry, every call through the eval call store: a crash, a SIGKILL or a Ctrl-C
loses at most the calls in flight, and the re-run calls only what is missing.
``--estimate`` prints what a run would pay for (calls not in the store, their tokens and the
maximum cost), calls nothing and writes nothing (the store is read, not opened for writing: no
folder or file is created). Bad input is refused before any call: a ``limit`` that is not a
positive integer, and an output path that is an input, a folder or under a file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core import artifacts
from sp2dpo.core.config import EvalConfig
from sp2dpo.core.stopping import GracefulStop
from sp2dpo.evaluate.benchmarks import alpaca
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.evaluate.judges.pairwise import PairwiseJudge, stable_annotations
from sp2dpo.evaluate.judges.prompts import DEFAULT_PROMPTS_DIR

log = logging.getLogger(__name__)

def _check_limit(limit: int | None) -> None:
    """Refuse a ``limit`` that is not a positive integer (a slice bound such as -2 would keep all
    but the last two outputs)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of outputs, got {limit}")


def _read_pairs(
    outputs_path: Path, reference_path: Path, limit: int | None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(reference, model output) pairs of the first ``limit`` outputs, matched by instruction."""
    outputs = alpaca.read_model_outputs(outputs_path)[:limit]
    by_instruction = {r["instruction"]: r for r in alpaca.read_model_outputs(reference_path)}
    missing = [o["instruction"] for o in outputs if o["instruction"] not in by_instruction]
    if missing:
        raise ValueError(
            f"{outputs_path}: {len(missing)} instruction(s) not in the reference outputs "
            f"{reference_path}, e.g. {missing[0][:80]!r}"
        )
    return [(by_instruction[o["instruction"]], o) for o in outputs]


def _estimate(
    ecfg: EvalConfig,
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    calls_path: Path,
    prompts_dir: Path,
) -> dict[str, Any]:
    """The cost of the calls of ``pairs`` not in the store. The store is only read: opening it
    as a context (to append) would create its folder."""
    engine = JudgeEngine(ecfg.judge, EvalCalls(calls_path))
    pairwise = PairwiseJudge(engine, ecfg.judge_decoding, seed=ecfg.alpaca_eval.seed,
                             prompts_dir=prompts_dir)
    todo = [pairwise.messages(r) for r in engine.pending(pairwise, pairwise.requests(pairs))]
    return {
        "judge": ecfg.judge.id,
        "items": len(pairs),
        "cached": len(pairs) - len(todo),
        **engine.cost_estimate(ecfg.judge_decoding.max_tokens, todo),
    }


def run_judge_file(
    ecfg: EvalConfig,
    outputs_path: Path,
    out: Path,
    calls_path: Path,
    *,
    reference_path: Path | None = None,
    limit: int | None = None,
    estimate: bool = False,
    prompts_dir: Path = DEFAULT_PROMPTS_DIR,
) -> dict[str, Any]:
    """Judge ``outputs_path`` against the reference outputs; write the annotations to ``out``.

    Args:
        ecfg: section ``eval`` (judge, judge decoding, the reference and the side-order seed).
        outputs_path: model outputs (AlpacaEval format), matched to the reference by instruction.
        out: the annotations file (AlpacaEval format, failed ones left out and counted).
        calls_path: the eval call store (a folder, or a one-file ``.jsonl`` store).
        reference_path: default ``eval.alpaca_eval.reference_outputs``.
        limit: judge only the first ``limit`` outputs (a positive integer; None: all).
        estimate: return the cost of what is missing; call nothing, write nothing.

    Returns:
        The estimate, or a summary (annotations written, calls made and reused, win rate).

    Raises:
        ValueError: ``limit`` is not a positive integer, or an output is not in the reference.
        sp2dpo.core.errors.OutputPathError: ``out`` is an input (the outputs, the reference or a
            one-file call store), an existing folder or under a file.
        sp2dpo.core.stopping.Interrupted: SIGINT/SIGTERM; the calls in flight are stored first.
    """
    reference_path = reference_path or Path(ecfg.alpaca_eval.reference_outputs)
    _check_limit(limit)
    artifacts.check_output(out, inputs=(outputs_path, reference_path, calls_path), what="--out")
    pairs = _read_pairs(outputs_path, reference_path, limit)
    if estimate:
        return _estimate(ecfg, pairs, calls_path, prompts_dir)
    with EvalCalls(calls_path) as calls:
        engine = JudgeEngine(ecfg.judge, calls)
        pairwise = PairwiseJudge(engine, ecfg.judge_decoding, seed=ecfg.alpaca_eval.seed,
                                 prompts_dir=prompts_dir)
        with GracefulStop(f"judge {outputs_path}") as stopping:
            try:
                annotations, summary = pairwise.annotate(pairs, stop=stopping.stop)
            finally:
                engine.close()
            stopping.raise_if_stopped(
                f"{calls.made['judge']} judge call(s) made now are stored in {calls_path}; "
                "re-run to continue (stored calls are never made again)"
            )
        counts = calls.counts()
    judged = [a for a in stable_annotations(annotations) if a.get("preference") is not None]
    alpaca.write_annotations(judged, out)
    result: dict[str, Any] = {
        "annotations": str(out),
        "n": len(annotations),
        "n_judged": len(judged),
        "status": summary["status"],
        "calls_made": counts["made"].get("judge", 0),
        "calls_reused": counts["reused"].get("judge", 0),
    }
    if judged:
        wins = sum(float(a["preference"]) - 1.0 for a in judged)
        result["win_rate"] = 100.0 * wins / len(judged)
    return result
