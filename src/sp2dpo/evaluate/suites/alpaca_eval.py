"""AlpacaEval 2.0 in the eval stage: the seeded instruction subset, each evaluated model's
answers in AlpacaEval's ``model_outputs.json``, the pairwise judge against the reference
outputs (:class:`sp2dpo.evaluate.judges.pairwise.PairwiseJudge`), and WR / LC
(:mod:`sp2dpo.evaluate.benchmarks.winrate`) from the annotations, written as ``annotations.json`` (failed
ones in ``judge_failures.json``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from sp2dpo.core import artifacts
from sp2dpo.core.config import AlpacaEvalConfig, EvalConfig
from sp2dpo.core.sampling import seeded_items
from sp2dpo.evaluate.answers import generate
from sp2dpo.evaluate.benchmarks import alpaca, winrate
from sp2dpo.evaluate.benchmarks.lc import OfficialLCInputs
from sp2dpo.evaluate.judges import pairwise
from sp2dpo.evaluate.suites.base import Answers, Context, Conversations, JudgeBatch, Scored

log = logging.getLogger(__name__)

#: Hash domain of the seeded instruction subset (see :mod:`sp2dpo.core.sampling`).
ALPACA_DOMAIN = "alpaca-eval-subset"


def select_instructions(reference: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """The seeded AlpacaEval subset, in AlpacaEval order."""
    return seeded_items(reference, lambda r: r["instruction"], limit, seed, ALPACA_DOMAIN)


class AlpacaEvalSuite:
    """AlpacaEval 2.0 (see the module doc); params ``eval.alpaca_eval``."""

    name: ClassVar[str] = "alpaca_eval"

    def __init__(self, cfg: AlpacaEvalConfig, ecfg: EvalConfig, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.reference_path = Path(cfg.reference_outputs)
        self.reference: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self.judge: pairwise.PairwiseJudge | None = None
        if cfg.enabled:
            self.reference = alpaca.read_model_outputs(self.reference_path)
            self.items = select_instructions(self.reference, cfg.limit, cfg.seed)
            self.judge = pairwise.PairwiseJudge(
                ctx.engine, ecfg.judge_decoding, seed=cfg.seed, prompts_dir=ctx.judge_prompts
            )

    @classmethod
    def from_config(cls, ecfg: EvalConfig, ctx: Context) -> AlpacaEvalSuite:
        return cls(ecfg.alpaca_eval, ecfg, ctx)

    @property
    def enabled(self) -> bool:
        return bool(self.items)

    def describe(self) -> str:
        return f"{len(self.items)} AlpacaEval instructions"

    def conversations(self) -> Conversations:
        return Conversations([[item["instruction"]] for item in self.items])

    def _outputs(self, method: str, answers: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        return generate.model_outputs(self.items, [a[0] for a in answers], self.ctx.generator(method))

    def write_answers(self, method: str, answers: Sequence[Sequence[str]]) -> None:
        alpaca.write_model_outputs(self._outputs(method, answers), self.ctx.outputs(method) / "model_outputs.json")

    def _pairs(self, method: str, answers: Sequence[Sequence[str]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return list(zip(self.items, self._outputs(method, answers), strict=True))

    def judge_requests(self, answers: Answers) -> list[JudgeBatch]:
        assert self.judge is not None
        pairs = [pair for method, per in answers.items() for pair in self._pairs(method, per)]
        return [JudgeBatch(self.judge, self.judge.requests(pairs))]

    def evaluate(self, answers: Answers, stop: threading.Event) -> Scored | None:
        assert self.judge is not None
        official = (
            OfficialLCInputs.read(self.cfg.instruction_difficulty, self.cfg.df_gamed)
            if self.cfg.instruction_difficulty and self.cfg.df_gamed
            else None
        )
        scored = Scored({})
        for method, per in answers.items():
            annotations, summary = self.judge.annotate(self._pairs(method, per), stop=stop)
            if stop.is_set():
                return None
            scored.timings[method] = {f"timing/judge_{k}": float(summary[k])
                                      for k in pairwise.VOLATILE_SUMMARY_KEYS}
            scored.entries[method] = self._entry(method, annotations, summary, official)
        return scored

    def report_fields(self, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        fields: dict[str, Any] = {"n_instructions": len(self.items)}
        if self.items and entries:
            first = next(iter(entries.values()))
            fields["length_controlled_method"] = first[self.name]["length_controlled_method"]
        return fields

    def _entry(
        self,
        method: str,
        annotations: list[dict[str, Any]],
        summary: dict[str, Any],
        official: OfficialLCInputs | None,
    ) -> dict[str, Any]:
        """Write one method's annotations (and failures); its WR/LC entry and judge summary."""
        annotations = pairwise.stable_annotations(annotations)
        folder = self.ctx.outputs(method)
        judged = [a for a in annotations if a.get("preference") is not None]
        failed = [a for a in annotations if a.get("preference") is None]
        generator = self.ctx.generator(method)
        if failed:
            log.warning(
                "eval %s: %d of %d judge annotations failed (%s); win rates use the rest",
                generator, len(failed), len(annotations), summary["status"],
            )
            artifacts.write_json(failed, folder / "judge_failures.json")
        else:
            (folder / "judge_failures.json").unlink(missing_ok=True)
        if not judged:
            raise RuntimeError(f"eval {generator}: every judge annotation failed")
        annotations_path = folder / "annotations.json"
        alpaca.write_annotations(judged, annotations_path)
        rates = winrate.json_ready(winrate.evaluate_annotations(
            alpaca.validate_annotations(judged, str(annotations_path)),
            reference=self.reference, official=official, source=str(annotations_path),
            reference_source=str(self.reference_path),
        ))
        return {self.name: rates, "judge": pairwise.stable_summary(summary)}
