"""The AlpacaEval 2.0 pairwise judge: reference (``generator_1``) vs model (``generator_2``).

Protocol (AlpacaEval 2.0, ``weighted_alpaca_eval_gpt4_turbo``; prompt text is our own,
``prompts/judge/``, :mod:`.judge_backends`): for each instruction the judge reads the instruction and two outputs
labelled :data:`LABELS` (``A`` shown first, ``B`` second) and answers with one label, one output
token. The result is one annotation per item in AlpacaEval's format, keys in this order:
``instruction, output_1, generator_1, dataset, output_2, generator_2, annotator, preference,
price_per_example, time_per_example, raw_completion``, then ours: ``status``,
``model_on_first_side``, ``attempts``, ``is_truncated``, ``error``. ``output_1`` is always the reference and
``output_2`` always the model, whatever order the judge saw them in.

Side order: the model is shown first iff the first byte of
``sha256(f"{seed}:{instruction}")`` is odd (:func:`model_on_first_side`), so the order is fixed
per instruction and seed, independent of the item's position, and mixes about half and half.

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

Backends (``judge.backend``):

- ``local``: the in-process model of :class:`sp2dpo.llm.local.LocalScorer` (loaded once),
  rendering the messages with its chat template, or the plain ``System:/User:/Assistant:`` layout
  for a base model, and reading the next-token probabilities of the two labels after the prompt.
  A prompt longer than ``judge.max_input_tokens`` has the middles of both outputs cut to a common
  token cap (the instruction, the framing and the answer cue stay whole); if even empty outputs
  do not fit, the item fails with ``prompt_too_long``.
- ``openai``: any OpenAI-compatible endpoint through :class:`sp2dpo.llm.client.
  OpenAICompatibleClient` (retries with exponential backoff and jitter, ``Retry-After``,
  ``judge.rpm``/``tpm`` limits, ``judge.max_concurrency`` calls in flight; the key is read from
  ``judge.api_key_env`` and never logged). ``response_format`` is never sent. Put
  ``extra_body: {logprobs: true, top_logprobs: 5}`` in the judge entry for continuous preferences
  (the ``gpt4-turbo-judge`` profile).

Independence: :func:`check_judge_independent` refuses a judge that is one of the annotation
teachers unless ``eval.allow_teacher_judge`` is set.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.config import DecodingConfig, TeacherConfig
from sp2dpo.core.errors import UserError
from sp2dpo.evaluate.alpaca import ANNOTATION_KEYS
from sp2dpo.evaluate.calls import JUDGE, EvalCalls, judge_key
from sp2dpo.evaluate.judge_backends import (
    DEFAULT_PROMPTS_DIR,
    LABELS,
    HttpLabelJudge,
    JudgePrompt,
    LocalLabelScorer,
    Verdict,
    judge_signature,
)
from sp2dpo.llm import models

log = logging.getLogger(__name__)

#: The reference generator of AlpacaEval 2.0.
REFERENCE_GENERATOR = "gpt4_1106_preview"

#: Preference of a draw (identical outputs).
DRAW = 1.5

#: Annotation keys in AlpacaEval's order (:data:`alpaca.ANNOTATION_KEYS`), then ours.
AE_KEYS: tuple[str, ...] = ANNOTATION_KEYS
EXTRA_KEYS: tuple[str, ...] = ("status", "model_on_first_side", "attempts", "is_truncated", "error")

#: Statuses with a preference.
OK_STATUSES = frozenset({"ok", "identical"})


class JudgeConflictError(UserError, ValueError):
    """The judge is also a teacher of the annotation panel."""


def normalize_model(spec: str) -> str:
    """A comparable name of a model spec.

    ``local:<name>`` becomes the folder it resolves to (without converting anything), an
    existing path its absolute form, anything else its last ``/`` segment, lower-cased (so
    ``models/gemini-2.5-flash`` = ``gemini-2.5-flash`` and ``Qwen/Qwen2.5-72B-Instruct`` =
    ``qwen2.5-72b-instruct``).

    >>> normalize_model("models/Gemini-2.5-Flash")
    'gemini-2.5-flash'
    """
    spec = spec.strip()
    if models.is_local_spec(spec):
        name = spec[len(models.LOCAL_PREFIX) :]
        return str((models.cache_dir() / "models" / name).resolve())
    path = Path(spec)
    if path.exists():
        return str(path.resolve())
    return spec.rstrip("/").rsplit("/", 1)[-1].lower()


def check_judge_independent(
    judge: TeacherConfig, teachers: Sequence[TeacherConfig], allow: bool
) -> str | None:
    """Refuse a judge whose model is also a teacher's (compared with :func:`normalize_model`).

    Args:
        judge: the judge entry.
        teachers: the annotation panel.
        allow: ``eval.allow_teacher_judge``.

    Returns:
        None when independent; with ``allow``, a warning for the caller to log and record.

    Raises:
        JudgeConflictError: a conflict and ``allow`` is false.
    """
    mine = normalize_model(judge.model)
    shared = [t for t in teachers if normalize_model(t.model) == mine]
    if not shared:
        return None
    names = ", ".join(f"{t.id!r} ({t.model})" for t in shared)
    what = (
        f"judge {judge.id!r} ({judge.model}) is the same model as teacher {names}: its "
        "preferences are not independent of the beta schedule it evaluates"
    )
    if not allow:
        raise JudgeConflictError(
            f"{what}. Choose another judge (eval.judge, e.g. the gpt4-turbo-judge profile) or set "
            "eval.allow_teacher_judge: true to accept it (recorded in the results)."
        )
    return f"{what} (allowed by eval.allow_teacher_judge)"


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


class PairwiseJudge:
    """Judges (reference, model) pairs into AlpacaEval annotations.

    Args:
        judge: the judge entry (``eval.judge``).
        decoding: ``eval.judge_decoding`` (retries, timeouts, ``max_tokens: 1``).
        seed: seed of the per-item side order (``eval.alpaca_eval.seed``).
        prompts_dir: folder of ``system.txt`` and ``user.txt``.
        calls: the eval call store: a judge call already stored is reused, a new one recorded
            before it is used (None: an in-memory store, nothing kept).
    """

    #: Name and version of the local backend's scoring rule (part of the cache key).
    LOCAL_SCORER = "ae2-label-logprobs/1"

    def __init__(
        self,
        judge: TeacherConfig,
        decoding: DecodingConfig,
        *,
        seed: int = 42,
        prompts_dir: str | Path = DEFAULT_PROMPTS_DIR,
        calls: EvalCalls | None = None,
    ) -> None:
        self.cfg = judge
        self.decoding = decoding
        self.seed = seed
        self.prompt = JudgePrompt.load(prompts_dir)
        self.calls = calls if calls is not None else EvalCalls(None)
        self.signature = judge_signature(judge, decoding, scorer=self.LOCAL_SCORER)
        self._backend: LocalLabelScorer | HttpLabelJudge | None = None

    def call_key(self, instruction: str, first: str, second: str) -> str:
        """The cache key of judging ``first`` (label A) against ``second`` (label B)."""
        return judge_key(
            suite="alpaca_eval",
            judge_id=self.cfg.id,
            model=self.cfg.model,
            template_sha256=self.prompt.sha256,
            instruction=instruction,
            outputs=(first, second),
            decode=self.signature,
        )

    @property
    def backend(self) -> LocalLabelScorer | HttpLabelJudge:
        """The backend, built on first use (the local model loads once)."""
        if self._backend is None:
            if self.cfg.backend == "local":
                self._backend = LocalLabelScorer(self.cfg)
            else:
                self._backend = HttpLabelJudge(self.cfg, self.decoding)
        return self._backend

    def close(self) -> None:
        """Release the backend (the local model's memory); a later call loads it again."""
        self._backend = None

    def annotate_one(
        self,
        reference: Mapping[str, Any],
        model: Mapping[str, Any],
        stop: threading.Event | None = None,
        *,
        seed: int | None = None,
    ) -> dict[str, Any] | None:
        """One annotation (None when ``stop`` was set first); ``seed`` overrides ``self.seed``."""
        instruction = _same_instruction(reference, model)
        ref_out, model_out = str(reference["output"]), str(model["output"])
        model_first = model_on_first_side(instruction, self.seed if seed is None else seed)
        record: dict[str, Any] = {
            "instruction": instruction,
            "output_1": ref_out,
            "generator_1": reference.get("generator", REFERENCE_GENERATOR),
            "dataset": reference.get("dataset", model.get("dataset")),
            "output_2": model_out,
            "generator_2": model.get("generator"),
            "annotator": self.cfg.id,
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
        if ref_out == model_out:
            record.update(preference=DRAW, status="identical")
            return record
        first, second = (model_out, ref_out) if model_first else (ref_out, model_out)
        model_label, ref_label = LABELS if model_first else LABELS[::-1]
        started = time.monotonic()
        key = self.call_key(instruction, first, second)
        stored = self.calls.get(key)
        if stored is not None:
            verdict = verdict_from_record(stored)
        else:
            backend = self.backend
            if isinstance(backend, HttpLabelJudge):
                fresh = backend.judge(self.prompt, instruction, first, second, stop or threading.Event())
                if fresh is None:
                    return None
                verdict = fresh
            else:
                verdict = backend.judge(self.prompt, instruction, first, second)
            verdict = verdict_from_record(self.calls.put(key, JUDGE, verdict_record(verdict)))
        record["time_per_example"] = time.monotonic() - started
        record["attempts"] = verdict.attempts
        record["is_truncated"] = verdict.is_truncated
        record["price_per_example"] = (
            (verdict.prompt_tokens or 0) * self.cfg.price_in_per_m
            + (verdict.completion_tokens or 0) * self.cfg.price_out_per_m
        ) / 1e6
        record["error"] = verdict.error
        if verdict.status != "reply":
            record.update(status=verdict.status, raw_completion=verdict.text)
            return record
        if verdict.top_logprobs is not None:
            record["raw_completion"] = verdict.top_logprobs
            preference = preference_from_logprobs(verdict.top_logprobs, model_label, ref_label)
            if preference is None:
                record.update(
                    status="missing_labels",
                    error=f"neither {LABELS[0]!r} nor {LABELS[1]!r} among the top logprobs "
                    f"(answer {verdict.text!r})",
                )
                return record
        else:
            record["raw_completion"] = verdict.text
            preference = preference_from_text(verdict.text, model_label, ref_label)
            if preference is None:
                record.update(
                    status="unparseable",
                    error=f"answer is not {LABELS[0]!r} or {LABELS[1]!r}: {verdict.text!r}"[:300],
                )
                return record
        record["preference"] = preference
        return record

    def annotate(
        self,
        pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
        *,
        seed: int | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Judge every ``(reference record, model record)`` pair (``seed``: side-order seed,
        default ``self.seed``).

        ``stop`` (set by a signal, :class:`sp2dpo.core.stopping.GracefulStop`): no new judge
        call starts once it is set; the calls in flight finish and are stored, and the pairs not
        judged are left out of the result (check ``stop`` after the call).

        Records are AlpacaEval model outputs (``instruction, output, generator, dataset``); the
        two of a pair must share the instruction. The HTTP backend runs up to
        ``judge.max_concurrency`` calls at once; the local one runs them in turn.

        Returns:
            ``(annotations, summary)``: annotations in the order of ``pairs``; the summary
            (:func:`summarize`).

        Raises:
            AuthError: the endpoint rejected the key (the other calls are stopped).
            ValueError: a pair whose records have different instructions.
        """
        for reference, model in pairs:
            _same_instruction(reference, model)
        started = time.monotonic()
        workers = self.cfg.max_concurrency if self.cfg.backend == "openai" else 1
        stop = stop if stop is not None else threading.Event()
        if workers == 1 or len(pairs) <= 1:
            results = []
            for ref, mod in pairs:
                if stop.is_set():
                    break
                results.append(self.annotate_one(ref, mod, stop, seed=seed))
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(self.annotate_one, ref, mod, stop, seed=seed) for ref, mod in pairs
                ]
                try:
                    results = [future.result() for future in futures]
                except BaseException:
                    stop.set()
                    for future in futures:
                        future.cancel()
                    raise
        annotations = [r for r in results if r is not None]
        summary = summarize(annotations)
        summary["elapsed_s"] = time.monotonic() - started
        return annotations, summary


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
    annotator: PairwiseJudge,
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
    return annotator.annotate(list(zip(references, outputs, strict=True)), seed=seed, stop=stop)


def run_judge(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    judge: TeacherConfig,
    decoding: DecodingConfig,
    *,
    seed: int = 42,
    prompts_dir: str | Path = DEFAULT_PROMPTS_DIR,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge ``pairs`` with a fresh :class:`PairwiseJudge` (see :meth:`PairwiseJudge.annotate`)."""
    return PairwiseJudge(judge, decoding, seed=seed, prompts_dir=prompts_dir).annotate(pairs)
