"""The AlpacaEval 2.0 pairwise judge: reference (``generator_1``) vs model (``generator_2``).

Protocol (AlpacaEval 2.0, ``weighted_alpaca_eval_gpt4_turbo``; prompt text is our own,
``prompts/judge/``, :class:`~.prompts.JudgePrompt`): for each instruction the judge reads the
instruction and two outputs labelled :data:`LABELS` (``A`` shown first, ``B`` second) and answers
with one label, one output token. The result is one annotation per item in AlpacaEval's format,
keys in this order: ``instruction, output_1, generator_1, dataset, output_2, generator_2,
annotator, preference, price_per_example, time_per_example, raw_completion``, then ours:
``status``, ``model_on_first_side``, ``attempts``, ``is_truncated``, ``error``. ``output_1`` is
always the reference and ``output_2`` always the model, whatever order the judge saw them in.

Side order: the model is shown first iff the first byte of
``sha256(f"{seed}:{instruction}")`` is odd (:func:`model_on_first_side`), so the order is fixed
per instruction and seed, independent of the item's position, and mixes about half and half.
:meth:`PairwiseJudge.requests` is the one place that applies it.

Preference, in [1, 2] with 2 = the model wins:

- continuous, when token probabilities are available (OpenAI ``logprobs``/``top_logprobs`` of the
  first output token, or the local model's next-token distribution):
  ``P(label) = sum of exp(logprob) over the tokens whose text, stripped of white space, is the
  label`` (``"A"`` and ``" A"`` both count), ``p_model = P(model label) / (P(model label) +
  P(reference label))``, ``preference = 1 + p_model`` (:func:`preference_from_logprobs`). A label
  absent from the top logprobs counts as probability 0 (as alpaca_eval's ``logprob_parser``);
  both absent is a failed annotation (``missing_labels``);
- discrete otherwise: the answer text (stripped of white space and a final ``.``) is a label,
  giving 2.0 or 1.0 (:func:`preference_from_text`); anything else is ``unparseable``;
- identical outputs: 1.5 (a draw, as alpaca_eval does) with no judge call, status ``identical``,
  ``raw_completion`` null.

Failed annotations (``unparseable``, ``missing_labels``, ``prompt_too_long``, ``http_error``,
``timeout``, ``content_filter``) carry ``preference: null``; nothing is made up. An unparseable
answer is not retried (the judge decodes greedily); transport errors are retried with backoff.

Backends (:class:`~.engine.JudgeEngine`): ``local`` reads the next-token probabilities of the two
labels after the rendered prompt (:meth:`PairwiseJudge.ask_local`; a prompt over
``judge.max_input_tokens`` has the middles of both outputs cut to a common token cap, else
``prompt_too_long``); ``openai`` sends the messages (put ``extra_body: {logprobs: true,
top_logprobs: 5}`` in the judge entry for continuous preferences: the ``gpt4-turbo-judge``
profile).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.config import ConfigError, DecodingConfig, TeacherConfig
from sp2dpo.evaluate.benchmarks.alpaca import ANNOTATION_KEYS
from sp2dpo.evaluate.judges.engine import JudgeEngine, judge_signature
from sp2dpo.evaluate.judges.prompts import DEFAULT_PROMPTS_DIR, LABELS, JudgePrompt
from sp2dpo.llm.local import LocalScorer
from sp2dpo.llm.prompt_fit import cut_middle, largest_fitting
from sp2dpo.llm.teachers import RetriedCall

#: The reference generator of AlpacaEval 2.0.
REFERENCE_GENERATOR = "gpt4_1106_preview"

#: Preference of a draw (identical outputs).
DRAW = 1.5

#: Annotation keys in AlpacaEval's order (:data:`alpaca.ANNOTATION_KEYS`), then ours.
AE_KEYS: tuple[str, ...] = ANNOTATION_KEYS
EXTRA_KEYS: tuple[str, ...] = ("status", "model_on_first_side", "attempts", "is_truncated", "error")

#: Statuses with a preference.
OK_STATUSES = frozenset({"ok", "identical"})


def model_on_first_side(instruction: str, seed: int) -> bool:
    """Whether the model's output is shown first (label ``A``) for this instruction.

    True iff the first byte of ``sha256(f"{seed}:{instruction}")`` is odd.
    """
    return hashlib.sha256(f"{seed}:{instruction}".encode()).digest()[0] % 2 == 1


def label_probability(top_logprobs: Sequence[Mapping[str, Any]], label: str) -> float:
    """Total probability of the tokens whose text, stripped of white space, is ``label``."""
    return sum(
        math.exp(float(item["logprob"]))
        for item in top_logprobs
        if str(item.get("token", "")).strip() == label
    )


def preference_from_logprobs(
    top_logprobs: Sequence[Mapping[str, Any]], model_label: str, reference_label: str
) -> float | None:
    """``1 + P(model) / (P(model) + P(reference))`` from first-token top logprobs; None when
    neither label appears.

    >>> import math
    >>> top = [{"token": "B", "logprob": math.log(0.75)}, {"token": "A", "logprob": math.log(0.25)}]
    >>> round(preference_from_logprobs(top, "B", "A"), 12)
    1.75
    """
    p_model = label_probability(top_logprobs, model_label)
    p_ref = label_probability(top_logprobs, reference_label)
    if p_model + p_ref <= 0.0:
        return None
    return 1.0 + p_model / (p_model + p_ref)


def preference_from_text(text: str | None, model_label: str, reference_label: str) -> float | None:
    """2.0 when the answer is the model's label, 1.0 for the reference's, else None.

    >>> preference_from_text(" A.", "A", "B")
    2.0
    """
    if text is None:
        return None
    answer = text.strip().rstrip(".").strip()
    if answer == model_label:
        return 2.0
    if answer == reference_label:
        return 1.0
    return None


@dataclasses.dataclass
class Verdict:
    """One judge call's outcome, after retries.

    ``top_logprobs`` are first-token ``{"token", "logprob"}`` entries (None: not available);
    ``text`` the answer text.
    """

    status: str
    text: str | None = None
    top_logprobs: list[dict[str, Any]] | None = None
    error: str | None = None
    attempts: int = 1
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    is_truncated: bool = False


#: The :class:`Verdict` fields a judge record keeps (no wall-clock times).
VERDICT_FIELDS = (
    "status", "text", "top_logprobs", "error", "attempts", "prompt_tokens", "completion_tokens",
    "is_truncated",
)


def verdict_record(verdict: Verdict) -> dict[str, Any]:
    """The call-store record of a verdict."""
    return {name: getattr(verdict, name) for name in VERDICT_FIELDS}


def verdict_from_record(record: Mapping[str, Any]) -> Verdict:
    """The verdict a stored judge record holds."""
    return Verdict(**{name: record.get(name) for name in VERDICT_FIELDS if name in record})


@dataclasses.dataclass(frozen=True)
class PairRequest:
    """One comparison as the judge sees it: ``first`` is shown as ``A``, ``second`` as ``B``."""

    instruction: str
    first: str
    second: str
    model_first: bool


class PairwiseJudge:
    """Judges (reference, model) pairs into AlpacaEval annotations, a mode of ``engine``.

    Args:
        engine: the judge engine (``eval.judge``, the backend and the call store).
        decoding: ``eval.judge_decoding`` (retries, timeouts, ``max_tokens: 1``).
        seed: seed of the per-item side order (``eval.alpaca_eval.seed``).
        prompts_dir: folder of ``system.txt`` and ``user.txt``.
    """

    #: Name and version of the local backend's scoring rule (part of the cache key).
    LOCAL_SCORER = "ae2-label-logprobs/1"

    suite = "alpaca_eval"

    def __init__(
        self,
        engine: JudgeEngine,
        decoding: DecodingConfig,
        *,
        seed: int = 42,
        prompts_dir: str | Path = DEFAULT_PROMPTS_DIR,
    ) -> None:
        self.engine = engine
        self.decoding = decoding
        self.seed = seed
        self.prompt = JudgePrompt.load(prompts_dir)
        self.signature = judge_signature(engine.cfg, decoding, scorer=self.LOCAL_SCORER)
        self._label_ids: tuple[weakref.ref[LocalScorer], dict[str, list[int]]] | None = None

    # ------------------------------------------------------------------------------ requests

    def _request(
        self, reference: Mapping[str, Any], model: Mapping[str, Any], seed: int
    ) -> PairRequest | None:
        """The comparison of one pair in its side order; None for identical outputs (a draw,
        no call)."""
        instruction = _same_instruction(reference, model)
        ref_out, model_out = str(reference["output"]), str(model["output"])
        if ref_out == model_out:
            return None
        model_first = model_on_first_side(instruction, seed)
        first, second = (model_out, ref_out) if model_first else (ref_out, model_out)
        return PairRequest(instruction, first, second, model_first)

    def requests(
        self, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], seed: int | None = None
    ) -> list[PairRequest]:
        """One request per ``(reference, model)`` pair whose outputs differ, in order (``seed``:
        side-order seed, default ``self.seed``).

        Raises:
            ValueError: a pair whose records have different instructions.
        """
        seed = self.seed if seed is None else seed
        asked = (self._request(reference, model, seed) for reference, model in pairs)
        return [request for request in asked if request is not None]

    def key(self, request: PairRequest) -> str:
        """The cache key of judging ``request.first`` (label A) against ``request.second``."""
        return self.engine.call_key(
            self.suite, template_sha256=self.prompt.sha256, instruction=request.instruction,
            outputs=(request.first, request.second), decode=self.signature,
        )

    def messages(self, request: PairRequest) -> list[dict[str, str]]:
        """System and user messages of one comparison."""
        return self.prompt.messages(request.instruction, request.first, request.second)

    # ------------------------------------------------------------------------------ backends

    def label_ids(self, scorer: LocalScorer) -> dict[str, list[int]]:
        """The token ids that read each label, computed once per loaded model."""
        if self._label_ids is None or self._label_ids[0]() is not scorer:
            ids = {label: _label_token_ids(scorer.tokenizer, label) for label in LABELS}
            for label, found in ids.items():
                if not found:
                    cfg = self.engine.cfg
                    raise ConfigError(f"judge {cfg.id!r}: no token of {cfg.model} reads {label!r}")
            self._label_ids = (weakref.ref(scorer), ids)
        return self._label_ids[1]

    def fit(
        self, scorer: LocalScorer, instruction: str, first: str, second: str
    ) -> tuple[list[int], bool] | None:
        """Token ids of the rendered prompt within ``max_input_tokens``, cutting the middles of
        both outputs to the largest common token cap; None if even empty outputs do not fit."""
        budget = scorer.max_input_tokens

        def ids_for(a: str, b: str) -> list[int]:
            return scorer.encode(scorer.render(self.prompt.messages(instruction, a, b)))

        ids = ids_for(first, second)
        if len(ids) <= budget:
            return ids, False
        offsets = [scorer.token_offsets(text) for text in (first, second)]

        def build(cap: int) -> list[int]:
            return ids_for(cut_middle(first, offsets[0], cap), cut_middle(second, offsets[1], cap))

        best = largest_fitting(build, len, max(len(o) for o in offsets), budget)
        return None if best is None else (best, True)

    def ask_local(self, scorer: LocalScorer, request: PairRequest) -> dict[str, Any]:
        """The verdict record from the next-token probabilities of the two labels."""
        import torch

        label_ids = self.label_ids(scorer)
        fitted = self.fit(scorer, request.instruction, request.first, request.second)
        if fitted is None:
            return verdict_record(Verdict("prompt_too_long", error="the instruction and framing "
                                          f"alone exceed max_input_tokens={scorer.max_input_tokens}"))
        ids, is_truncated = fitted
        with torch.inference_mode():
            out = scorer.model(input_ids=torch.tensor([ids]), logits_to_keep=1)
            logprobs = out.logits[0, -1].float().log_softmax(-1)
        top = []
        for label in LABELS:
            total = torch.logsumexp(logprobs[label_ids[label]], dim=0)
            top.append({"token": label, "logprob": float(total)})
        best = max(top, key=lambda item: item["logprob"])["token"]
        return verdict_record(Verdict(
            "reply", text=best, top_logprobs=top, prompt_tokens=len(ids), completion_tokens=1,
            is_truncated=is_truncated,
        ))

    def record_from_reply(self, done: RetriedCall) -> dict[str, Any]:
        """The verdict record of a finished HTTP call."""
        attempt = done.attempt
        return verdict_record(Verdict(
            attempt.status, text=attempt.text, top_logprobs=attempt.logprobs, error=attempt.error,
            attempts=done.attempts, prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
        ))

    # ------------------------------------------------------------------------------ annotations

    def annotate(
        self,
        pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
        *,
        seed: int | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Judge every ``(reference record, model record)`` pair (``seed``: side-order seed,
        default ``self.seed``).

        Every pair is checked before any call. Calls run on the engine (HTTP:
        ``judge.max_concurrency`` at once; local: one at a time). ``stop`` (e.g. set by a
        signal) stops new calls: the pairs not judged are left out of the annotations.

        Returns:
            ``(annotations, summary)``: annotations in the order of ``pairs``; the summary of
            :func:`summarize` plus ``elapsed_s``.

        Raises:
            AuthError: the endpoint rejected the key (the other calls are stopped).
            ValueError: a pair whose records have different instructions.
        """
        seed = self.seed if seed is None else seed
        asked = [self._request(reference, model, seed) for reference, model in pairs]
        started = time.monotonic()
        requests = [r for r in asked if r is not None]
        records = iter(self.engine.run(self, requests, stop))
        annotations = []
        for (reference, model), request in zip(pairs, asked, strict=True):
            record = None if request is None else next(records)
            if request is not None and record is None:
                continue  # not judged: stopped first
            annotations.append(self._annotation(reference, model, seed, request, record))
        summary = summarize(annotations)
        summary["elapsed_s"] = time.monotonic() - started
        return annotations, summary

    def _annotation(
        self,
        reference: Mapping[str, Any],
        model: Mapping[str, Any],
        seed: int,
        request: PairRequest | None,
        record: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """One annotation: a draw without ``request``, else from the stored verdict ``record``."""
        instruction = str(reference["instruction"])
        model_first = request.model_first if request else model_on_first_side(instruction, seed)
        annotation: dict[str, Any] = {
            "instruction": instruction,
            "output_1": str(reference["output"]),
            "generator_1": reference.get("generator", REFERENCE_GENERATOR),
            "dataset": reference.get("dataset", model.get("dataset")),
            "output_2": str(model["output"]),
            "generator_2": model.get("generator"),
            "annotator": self.engine.cfg.id,
            "preference": None,
            "price_per_example": 0.0,
            "time_per_example": 0.0,
            "raw_completion": None,
            "status": "ok",
            "model_on_first_side": model_first,
            "attempts": 0,
            "is_truncated": False,
            "error": None,
        }
        if request is None or record is None:
            annotation.update(preference=DRAW, status="identical")
            return annotation
        verdict = verdict_from_record(record)
        model_label, ref_label = LABELS if model_first else LABELS[::-1]
        annotation.update(
            price_per_example=self.engine.cost(verdict.prompt_tokens, verdict.completion_tokens),
            time_per_example=self.engine.latency_s(self.key(request)), attempts=verdict.attempts,
            is_truncated=verdict.is_truncated, error=verdict.error,
        )
        if verdict.status != "reply":
            annotation.update(status=verdict.status, raw_completion=verdict.text)
            return annotation
        if verdict.top_logprobs is not None:
            annotation["raw_completion"] = verdict.top_logprobs
            preference = preference_from_logprobs(verdict.top_logprobs, model_label, ref_label)
            if preference is None:
                annotation.update(
                    status="missing_labels",
                    error=f"neither {LABELS[0]!r} nor {LABELS[1]!r} among the top logprobs "
                    f"(answer {verdict.text!r})",
                )
                return annotation
        else:
            annotation["raw_completion"] = verdict.text
            preference = preference_from_text(verdict.text, model_label, ref_label)
            if preference is None:
                annotation.update(
                    status="unparseable",
                    error=f"answer is not {LABELS[0]!r} or {LABELS[1]!r}: {verdict.text!r}"[:300],
                )
                return annotation
        annotation["preference"] = preference
        return annotation


def _same_instruction(reference: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    instruction = reference.get("instruction")
    if not isinstance(instruction, str) or instruction != model.get("instruction"):
        raise ValueError(
            f"pair mismatch: reference instruction {str(instruction)[:60]!r} differs from the "
            f"model's {str(model.get('instruction'))[:60]!r}"
        )
    return instruction


def summarize(annotations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per status, judge calls, mean latency of the calls, total cost, side balance."""
    called = [a for a in annotations if a["status"] != "identical"]
    latencies = [float(a["time_per_example"]) for a in called]
    return {
        "annotator": annotations[0]["annotator"] if annotations else None,
        "n": len(annotations),
        "status": dict(sorted(Counter(a["status"] for a in annotations).items())),
        "n_ok": sum(a["status"] in OK_STATUSES for a in annotations),
        "n_failed": sum(a["status"] not in OK_STATUSES for a in annotations),
        "n_judge_calls": len(called),
        "n_model_first": sum(bool(a["model_on_first_side"]) for a in annotations),
        "mean_latency_s": sum(latencies) / len(latencies) if latencies else 0.0,
        "cost_usd": sum(float(a["price_per_example"]) for a in annotations),
    }


#: Summary fields that measure wall-clock time (not reproducible run to run).
VOLATILE_SUMMARY_KEYS = ("mean_latency_s", "elapsed_s")


def stable_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` without its wall-clock fields (for DVC metrics with stable bytes)."""
    return {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY_KEYS}


#: Annotation fields that measure wall-clock time: in memory (for :func:`summarize`), never in a
#: written annotations file, so re-judging the same answers writes the same bytes.
VOLATILE_ANNOTATION_KEYS = ("time_per_example",)


def stable_annotations(annotations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``annotations`` without :data:`VOLATILE_ANNOTATION_KEYS` (what the eval stage writes)."""
    return [{k: v for k, v in a.items() if k not in VOLATILE_ANNOTATION_KEYS} for a in annotations]


def annotate_pairs(
    judge: PairwiseJudge,
    references: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    *,
    seed: int | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge ``outputs[i]`` against ``references[i]`` (same instruction, same order; ``stop``:
    see :meth:`PairwiseJudge.annotate`).

    Raises:
        ValueError: different lengths, or a pair with different instructions.
    """
    if len(references) != len(outputs):
        raise ValueError(f"{len(outputs)} model outputs for {len(references)} reference outputs")
    return judge.annotate(list(zip(references, outputs, strict=True)), seed=seed, stop=stop)


def run_judge(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    judge: TeacherConfig,
    decoding: DecodingConfig,
    *,
    seed: int = 42,
    prompts_dir: str | Path = DEFAULT_PROMPTS_DIR,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge ``pairs`` with a fresh engine, nothing stored (see :meth:`PairwiseJudge.annotate`)."""
    engine = JudgeEngine(judge)
    try:
        return PairwiseJudge(engine, decoding, seed=seed, prompts_dir=prompts_dir).annotate(pairs)
    finally:
        engine.close()


def _label_token_ids(tokenizer: Any, label: str) -> list[int]:
    """Ids of the tokens whose decoded text, stripped of white space, is ``label``.

    Only vocabulary entries whose raw form contains the label (``A``, ``ĠA``, ``▁A``) or that are
    byte tokens (``<0x41>``) can decode to it, so only those are decoded.
    """
    candidates = [
        i for token, i in tokenizer.get_vocab().items() if label in token or token.startswith("<0x")
    ]
    texts = tokenizer.batch_decode([[i] for i in candidates])
    return sorted(i for i, text in zip(candidates, texts, strict=True) if text.strip() == label)
