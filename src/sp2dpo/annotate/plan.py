"""Planning the calls of the ``annotate`` stage: which pairs, which calls, which are cached, and
what the rest would cost (``--estimate``).

One call per (pair, teacher, variant), keyed by :func:`call_key`. Calls
already in the call log (same key, a final status) are skipped, so a re-run, a run after a crash,
or a run with one more teacher or variant only calls what is new.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from sp2dpo.annotate.prompts import Variant
from sp2dpo.core.config import AnnotateConfig, DecodingConfig, TeacherConfig
from sp2dpo.core.sampling import seeded_subset
from sp2dpo.llm.callstore import content_sha256, request_key
from sp2dpo.llm.costs import estimate_tokens, price_usd
from sp2dpo.llm.teachers import TRANSIENT_STATUSES, signature


def pair_sha256(prompt: str, chosen: str, rejected: str) -> str:
    """sha256 of a pair's content (prompt, chosen, rejected)."""
    return content_sha256(prompt, chosen, rejected)


def call_key(
    *,
    prompt_id: str,
    pair_sha256: str,
    teacher_id: str,
    model: str,
    variant: str,
    template_sha256: str,
    decode: dict[str, Any],
) -> str:
    """The cache key of one teacher call (hex sha256, :func:`sp2dpo.llm.callstore.request_key`).

    ``decode`` is the backend's request signature: the decoding settings as sent, the
    structured-output mode and extra fields (HTTP), or the scorer settings (local). Timeouts,
    retries, endpoint URL and prices are not part of it: they do not change the answer.
    """
    return request_key({
        "prompt_id": prompt_id,
        "pair": pair_sha256,
        "teacher": teacher_id,
        "model": model,
        "variant": variant,
        "template": template_sha256,
        "decode": decode,
    })


@dataclasses.dataclass(frozen=True, slots=True)
class CallSpec:
    """One planned call; messages are rendered only when the call is made. ``max_chars``: the
    request-size cap of an HTTP teacher when this call's messages exceed it (else None)."""

    key: str
    row: int
    teacher: int
    variant: int
    max_chars: int | None = None


#: Hash domain of the deterministic pair subset (see :func:`select_pairs`).
SUBSET_DOMAIN = "annotate-subset"


def select_pairs(pairs: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """A deterministic subset of ``max_pairs`` pairs, in input order.

    The pairs with the smallest ``sha256(f"annotate-subset:{seed}:{prompt_id}")`` are kept, so
    the subset does not depend on row order and growing ``max_pairs`` keeps every earlier pair
    (their calls stay cached). The ``annotate-subset:`` prefix separates this hash from the one
    behind ``beta_random`` (``sha256(f"{seed}:{prompt_id}")``): with the same seed the subset
    would otherwise be exactly the pairs with the smallest random betas.
    """
    keep = seeded_subset(list(pairs["prompt_id"]), max_pairs, seed, SUBSET_DOMAIN)
    return pairs.iloc[keep].sort_index().reset_index(drop=True)


def plan_calls(
    pairs: pd.DataFrame,
    teachers: list[TeacherConfig],
    variants: list[Variant],
    decoding: DecodingConfig,
) -> list[CallSpec]:
    """Every call of the run, pair-major (pair, then teacher, then variant).

    A call to an HTTP teacher whose messages would exceed ``max_input_chars`` is sent with the
    pair cut to fit; its key then includes the cap (a different cap is a different request),
    while every call under the cap keeps the key it would have without one.
    """
    signatures = [signature(t, decoding) for t in teachers]
    specs = []
    for row, pair in enumerate(pairs.itertuples(index=False)):
        content = pair_sha256(pair.prompt, pair.chosen, pair.rejected)
        for ti, teacher in enumerate(teachers):
            for vi, variant in enumerate(variants):
                decode, cap = signatures[ti], None
                if teacher.backend == "openai" and (
                    variant.size(pair.prompt, pair.chosen, pair.rejected) > teacher.max_input_chars
                ):
                    cap = teacher.max_input_chars
                    decode = {**decode, "max_input_chars": cap}
                key = call_key(
                    prompt_id=pair.prompt_id,
                    pair_sha256=content,
                    teacher_id=teacher.id,
                    model=teacher.model,
                    variant=variant.name,
                    template_sha256=variant.template_sha256,
                    decode=decode,
                )
                specs.append(CallSpec(key, row, ti, vi, cap))
    return specs


def is_done(record: dict[str, Any] | None, redo: set[str]) -> bool:
    """Whether a stored call is final, so a run does not call it again.

    Final: an answer (``ok``), a refusal that would repeat (``content_filter``), an output that
    stayed invalid after the retries (``invalid_json``, ``out_of_range``), or an HTTP error the
    server meant for good (4xx other than 408/409/425/429). Never final: an ``auth_error``, a
    transient failure (connection, timeout, 429 or 5xx after the retries; records written before
    the ``transient`` flag existed count as transient), and any status in ``redo``.
    """
    if record is None:
        return False
    status = record["status"]
    if status in redo or status == "auth_error":
        return False
    if status in TRANSIENT_STATUSES:
        return record.get("transient") is False
    return True


def estimate(
    teachers: list[TeacherConfig],
    decoding: DecodingConfig,
    settings: AnnotateConfig,
    pairs: pd.DataFrame,
    variants: list[Variant],
    records: dict[str, Any],
) -> dict[str, Any]:
    """Calls, tokens and cost per teacher, before spending anything.

    Input tokens are estimated as characters / ``annotate.chars_per_token`` of the rendered
    messages; output tokens are bounded by ``decoding.max_tokens`` per call, so the cost is an
    upper bound. Calls already in the log are counted as cached and cost nothing.
    """
    specs = plan_calls(pairs, teachers, variants, decoding)
    redo = set(settings.redo_statuses)
    rows = list(pairs.itertuples(index=False))
    per_teacher: dict[str, dict[str, Any]] = {}
    for ti, teacher in enumerate(teachers):
        todo = [s for s in specs if s.teacher == ti and not is_done(records.get(s.key), redo)]
        total = sum(1 for s in specs if s.teacher == ti)
        chars = sum(
            min(variants[s.variant].size(rows[s.row].prompt, rows[s.row].chosen, rows[s.row].rejected),
                s.max_chars or math.inf)
            for s in todo
        )
        tokens_in = estimate_tokens(chars, settings.chars_per_token, round_up=True)
        tokens_out = len(todo) * decoding.max_tokens
        per_teacher[teacher.id] = {
            "model": teacher.model,
            "backend": teacher.backend,
            "calls": total,
            "cached": total - len(todo),
            "to_call": len(todo),
            "input_tokens_est": tokens_in,
            "output_tokens_max": tokens_out,
            "truncated": sum(1 for s in todo if s.max_chars is not None),
            "cost_usd_max": round(price_usd(teacher, tokens_in, tokens_out), 4),
        }
    return {
        "pairs": len(pairs),
        "variants": [v.name for v in variants],
        "per_teacher": per_teacher,
        "to_call": sum(t["to_call"] for t in per_teacher.values()),
        "cost_usd_max": round(sum(t["cost_usd_max"] for t in per_teacher.values()), 4),
        "note": (
            f"input tokens ~ characters / {settings.chars_per_token:g}; output tokens at "
            f"decoding.max_tokens={decoding.max_tokens} per call (an upper bound)"
        ),
    }
