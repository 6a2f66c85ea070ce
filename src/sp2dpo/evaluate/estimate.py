"""``sp2dpo eval STUDENT --estimate``: what an eval run would still generate and pay the judge for.

Reads the eval call store and loads no model. Per suite and evaluated model: the answers not
yet stored, and the judge calls not yet stored with their estimated prompt tokens, the
output-token cap and the maximum cost at the judge's prices. A judge call whose answer is
stored is keyed exactly (cached or not); one whose answer is missing is counted as a call to
make, its prompt sized with an answer of the full token cap (an upper bound: the maximum cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.config import EvalConfig, TrainConfig
from sp2dpo.evaluate import alpaca, arenahard, ifeval, mtbench, suites
from sp2dpo.evaluate.answers import StudentKey, decode_fields
from sp2dpo.evaluate.calls import EvalCalls, answer_key
from sp2dpo.evaluate.judge_run import CHARS_PER_TOKEN, cost_estimate
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.evaluate.judges.pairwise import PairwiseJudge
from sp2dpo.evaluate.stage import select_instructions

#: Method name of the untrained student (as in :mod:`sp2dpo.evaluate.generate`).
BASE = "base"


class _Answers:
    """Stored answers of one model, or a placeholder of the full cap when missing."""

    def __init__(self, calls: EvalCalls, key: StudentKey, ecfg: EvalConfig) -> None:
        self.calls, self.key, self.gen = calls, key, ecfg.generation
        self.missing = 0

    def turns(self, conversations: list[list[str]], cap: int) -> list[list[str]]:
        decode = decode_fields(self.gen, cap, self.key.chat_template_sha256)
        filler = "x" * int(cap * CHARS_PER_TOKEN)
        out = []
        for users in conversations:
            answers: list[str] = []
            for turn in range(len(users)):
                messages = []
                for i in range(turn):
                    messages += [{"role": "user", "content": users[i]},
                                 {"role": "assistant", "content": answers[i]}]
                messages.append({"role": "user", "content": users[turn]})
                record = self.calls.final(answer_key(
                    model=self.key.model, revision=self.key.revision,
                    adapter_sha256=self.key.adapter_sha256, messages=messages, decode=decode,
                ))
                if record is None or record.get("status") != "ok":
                    self.missing += 1
                    answers.append(filler)
                else:
                    answers.append(record["answer"])
            out.append(answers)
        return out


def estimate(
    ecfg: EvalConfig,
    train: TrainConfig,
    student_name: str,
    methods: Sequence[str],
    adapters: Path,
    calls_path: Path | None,
    *,
    judge_prompts: Path,
    arena_hard_prompts: Path,
) -> dict[str, Any]:
    """The estimate (see the module doc): ``{"answers_to_generate", "suites": {suite: {...}},
    "total": {...}}``."""
    student = train.student(student_name)
    calls = EvalCalls(calls_path)
    ae = ecfg.alpaca_eval
    reference = alpaca.read_model_outputs(ae.reference_outputs)
    items = select_instructions(reference, ae.limit, ae.seed)
    mtb, ah = ecfg.mt_bench, ecfg.arena_hard
    mt_questions = suites.mt_bench_questions(mtb) if mtb.enabled else []
    ah_questions = suites.arena_hard_questions(ah) if ah.enabled else []
    prompts = (
        ifeval.load_prompts(ecfg.ifeval.input, ecfg.ifeval.limit, ecfg.ifeval.seed)
        if ecfg.ifeval.enabled else []
    )
    engine = JudgeEngine(ecfg.judge, calls)
    pairwise = PairwiseJudge(engine, ecfg.judge_decoding, seed=ae.seed, prompts_dir=judge_prompts)
    pending: dict[str, list[list[dict[str, str]]]] = {"alpaca_eval": [], "mt_bench": [], "arena_hard": []}
    mt_answers: dict[str, list[tuple[str, str]]] = {}
    ah_answers: dict[str, list[str]] = {}
    to_generate = 0
    for method in methods:
        adapter = None if method == BASE else adapters / method
        answers = _Answers(calls, StudentKey.of(student, adapter), ecfg)
        texts = [t[0] for t in answers.turns([[i["instruction"]] for i in items], ecfg.generation.max_new_tokens)]
        pairs = [(item, {"instruction": item["instruction"], "output": text})
                 for item, text in zip(items, texts, strict=True)]
        pending["alpaca_eval"] += [pairwise.messages(r) for r in pairwise.requests(pairs)
                                   if calls.final(pairwise.key(r)) is None]
        if mt_questions:
            mt_answers[method] = [(t[0], t[1]) for t in answers.turns(
                [list(q.turns[:2]) for q in mt_questions], mtb.max_new_tokens)]
        if prompts:
            answers.turns([[p.prompt] for p in prompts], ecfg.ifeval.max_new_tokens)
        if ah_questions:
            ah_answers[method] = [t[0] for t in answers.turns([[q.prompt] for q in ah_questions], ah.max_new_tokens)]
        to_generate += answers.missing
    if mt_questions:
        grader, templates = suites.mt_bench_grader(mtb, engine, ecfg.judge_decoding)
        asks = suites.mt_bench_asks(mt_questions, mt_answers, mtbench.read_reference_answers(mtb.reference_answers), templates)
        pending["mt_bench"] = [a[-1].messages for a in asks if calls.final(grader.key(a[-1])) is None]
    if ah_questions:
        grader, ah_prompt = suites.arena_hard_grader(ah, engine, ecfg.judge_decoding, arena_hard_prompts)
        asks = suites.arena_hard_asks(ah_questions, ah_answers, arenahard.read_answers(ah.baseline_answers), ah_prompt)
        pending["arena_hard"] = [a[-1].messages for a in asks if calls.final(grader.key(a[-1])) is None]
    caps = {"alpaca_eval": ecfg.judge_decoding.max_tokens, "mt_bench": mtb.judge_max_tokens,
            "arena_hard": ah.judge_max_tokens}
    per_suite = {suite: cost_estimate(ecfg.judge, caps[suite], todo) for suite, todo in pending.items()}
    total = {key: sum(v[key] for v in per_suite.values()) for key in next(iter(per_suite.values()))}
    return {
        "student": student.name,
        "methods": list(methods),
        "judge": ecfg.judge.id,
        "answers_to_generate": to_generate,
        "suites": per_suite,
        "total": total,
    }
