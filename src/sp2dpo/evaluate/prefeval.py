"""Held-out preference accuracy of a student: the implicit DPO reward of chosen vs rejected replies.

This is the "test accuracy" of DPO-style papers (DPO-PoP reports it on UltraFeedback's
``test_prefs``): no judge, no generation, only two scoring passes over held-out pairs, so it runs
offline on CPU and is a cheap check of a trained adapter before paying a judge.

**What is computed.** For every held-out pair (prompt x, chosen y_w, rejected y_l), with the
policy pi = base model + LoRA adapter and the reference pi_ref = the same model with the adapter
disabled (PEFT's ``disable_adapter()``; the weights are loaded once):

- log pi(y|x) = the sum of the log-probabilities of the completion tokens of y (below);
- chosen log-ratio c = log pi(y_w|x) - log pi_ref(y_w|x), rejected log-ratio
  r = log pi(y_l|x) - log pi_ref(y_l|x), margin m = c - r (the DPO implicit reward margin
  divided by beta, so it does not depend on any beta);
- ``accuracy`` = mean of [m > 0], a tie counting 1/2; ``mean_margin``, ``mean_chosen_logratio``,
  ``mean_rejected_logratio``; ``likelihood_accuracy`` = mean of [log pi(y_w|x) > log pi(y_l|x)]
  (reference-free), a tie counting 1/2.

A **tie** is an exactly equal pair of numbers (m == 0). The sums are float32 and a real
difference is at least one unit in the last place, so a tolerance would only hide small real
differences; the one case where equality is expected, the policy being the reference, is exact by
construction (next paragraph).

**Without an adapter** the policy *is* the reference, so the reference pass would repeat the
policy pass token for token; it is skipped and the reference log-probs are the policy's own
numbers. Every log-ratio and margin is then exactly 0.0 and ``accuracy`` exactly 0.5, which is the
check that the metric measures the adapter and nothing else.

**Which tokens are scored: TRL's rendering** (TRL 1.16, ``DPOTrainer._prepare_dataset``), the one
the student was trained on (:mod:`sp2dpo.train.dataset` gives TRL a conversational dataset:
prompt = one user turn, chosen/rejected = one assistant turn each):

1. prompt ids = the chat template applied to ``[user]`` with the generation prompt; chosen ids =
   the template applied to ``[user, assistant(y_w)]`` (likewise rejected), both as
   ``tokenizer.apply_chat_template(..., tokenize=True, return_dict=True, tools=None)``, i.e. no
   extra special tokens beyond what the template writes;
2. the completion starts where the prompt ids and each full sequence stop agreeing
   (``trl.data_utils.common_prefix_length``, the minimum over chosen and rejected), so it holds
   the reply and everything the template writes after it: for ChatML templates (SmolLM2)
   ``<|im_end|>`` (the EOS) and the newline. TRL appends no separate EOS to conversational data;
   the template's end-of-turn token is the EOS the student learns;
3. truncation as :class:`sp2dpo.train.trainer.PerPairBetaTrainer` with TRL's collator does it:
   the prompt keeps its last ``max_prompt_length`` tokens, then prompt + completion keep their
   first ``max_length`` tokens (``keep_start``), so a long reply loses its end (its EOS
   included). ``max_prompt_length < max_length`` is required (as ``train`` requires it), so every
   pair keeps at least one completion token and none is dropped for length.

The log-probability of token t is read from the logits at position t - 1, in float32, over the
completion positions only; chosen and rejected sequences of ``batch_size`` pairs go through one
right-padded forward pass (as TRL's collator batches them), with ``torch.inference_mode``.

**Interval.** Every mean gets a 95% percentile bootstrap interval over pairs: ``rounds``
resamples of the pairs with replacement from ``numpy.random.default_rng(seed)``, the same
resamples for every metric; ``rounds = 0`` gives no interval.

**Input.** A pairs table (:func:`read_pairs`): the canonical layout (``prompt_id``, ``prompt``,
``chosen``, ``rejected`` as strings; parquet, csv, jsonl, jsonl.gz) or the Hub layout of
``HuggingFaceH4/ultrafeedback_binarized`` (``chosen``/``rejected`` as message lists; the reply is
the last assistant message). A pair whose two replies are identical carries no preference and is
dropped; a pair with an empty (blank) reply is dropped as the ``filter`` stage drops it from the
training data; both are counted. ``limit`` keeps the first N usable pairs in file order.

The eval stage runs :func:`run` for every evaluated model (``eval.prefeval``), as does
``sp2dpo prefeval``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sp2dpo.core import artifacts
from sp2dpo.evaluate.answers import generate
from sp2dpo.evaluate.prefpairs import Pair, PairsRead, read_pairs
from sp2dpo.llm import models

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_MAX_PROMPT_LENGTH",
    "DEFAULT_ROUNDS",
    "DEFAULT_SEED",
    "Pair",
    "PairScores",
    "PairsRead",
    "TokenizedPair",
    "evaluate_pairs",
    "format_text",
    "pair_records",
    "read_pairs",
    "run",
    "summarize",
    "tokenize_pair",
]

#: Default token budgets: prompt + completion, and the prompt alone (its end is kept).
DEFAULT_MAX_LENGTH = 1024
DEFAULT_MAX_PROMPT_LENGTH = 512
#: Pairs per forward pass (each pass holds 2 x batch_size sequences: chosen and rejected).
DEFAULT_BATCH_SIZE = 4
#: Bootstrap resamples and their seed.
DEFAULT_ROUNDS = 1000
DEFAULT_SEED = 42

# ------------------------------------------------------------------------------ tokens (TRL's)


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
    """The token ids a pair is scored on, after truncation: the shared prompt, then each
    completion (chosen, rejected); ``truncated`` says whether a completion lost its end."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    """Token ids of a conversation as TRL 1.16 tokenises conversational data (its ``_tokenize``
    for a text tokenizer: the chat template, tokenised, ``tools=None``)."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, tools=None, **kwargs
    )
    return list(out["input_ids"])


def tokenize_pair(
    tokenizer: Any,
    pair: Pair,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH,
) -> TokenizedPair:
    """The prompt and completion ids of ``pair`` as the trainer sees them (module docstring).

    Raises:
        ValueError: ``max_prompt_length`` is not smaller than ``max_length``, or either is < 1.
    """
    from trl.data_utils import common_prefix_length

    _check_lengths(max_length, max_prompt_length)
    user = [{"role": "user", "content": pair.prompt}]
    prompt_ids = _template_ids(tokenizer, user, add_generation_prompt=True)
    full_chosen = _template_ids(tokenizer, [*user, {"role": "assistant", "content": pair.chosen}])
    full_rejected = _template_ids(
        tokenizer, [*user, {"role": "assistant", "content": pair.rejected}]
    )
    start = min(
        common_prefix_length(prompt_ids, full_chosen),
        common_prefix_length(prompt_ids, full_rejected),
    )
    prompt = prompt_ids[:start][-max_prompt_length:]
    room = max_length - len(prompt)
    chosen, rejected = full_chosen[start:], full_rejected[start:]
    truncated = len(chosen) > room or len(rejected) > room
    return TokenizedPair(prompt, chosen[:room], rejected[:room], truncated)


def _check_lengths(max_length: int, max_prompt_length: int) -> None:
    if max_prompt_length < 1 or max_length < 2:
        raise ValueError(
            f"max_length ({max_length}) must be >= 2 and max_prompt_length ({max_prompt_length}) "
            ">= 1"
        )
    if max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) must be smaller than max_length "
            f"({max_length}), as in train"
        )


# ------------------------------------------------------------------------------ scoring


@dataclasses.dataclass(frozen=True)
class PairScores:
    """Per-pair summed completion log-probs under the policy and the reference (float64 arrays
    in pair order), completion token counts, and whether a completion was truncated."""

    prompt_ids: list[str]
    policy_chosen: np.ndarray
    policy_rejected: np.ndarray
    ref_chosen: np.ndarray
    ref_rejected: np.ndarray
    chosen_tokens: np.ndarray
    rejected_tokens: np.ndarray
    truncated: np.ndarray
    policy_has_adapter: bool

    @property
    def chosen_logratios(self) -> np.ndarray:
        """c = log pi(y_w|x) - log pi_ref(y_w|x)."""
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> np.ndarray:
        """r = log pi(y_l|x) - log pi_ref(y_l|x)."""
        return self.policy_rejected - self.ref_rejected

    @property
    def margins(self) -> np.ndarray:
        """m = c - r."""
        return self.chosen_logratios - self.rejected_logratios

    def __len__(self) -> int:
        return len(self.prompt_ids)


def _completion_logps(model: Any, batch: Mapping[str, Any]) -> Any:
    """Summed log-probs of the completion tokens of every row of a right-padded batch (float32
    logits, only the positions from the earliest completion on are projected to the vocabulary)."""
    import torch

    input_ids, attention, completion = (
        batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    length = input_ids.shape[1]
    start = max(int(batch["first_completion"]) - 1, 0)  # logit position of the first scored token
    inputs = {"input_ids": input_ids, "attention_mask": attention, "use_cache": False}
    try:
        logits = model(**inputs, logits_to_keep=length - start).logits
    except TypeError as exc:  # a model without ``logits_to_keep``: project every position
        if "logits_to_keep" not in str(exc):
            raise
        logits = model(**inputs).logits[:, start:]
    logits = logits.float()
    logits = logits[:, : length - 1 - start]  # position p predicts token p + 1
    targets = input_ids[:, start + 1:]
    mask = completion[:, start + 1:].bool()
    token_logps = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1)
    token_logps = token_logps - torch.logsumexp(logits, dim=-1)
    return torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(dim=1)


def _collate(items: Sequence[TokenizedPair], pad_id: int) -> dict[str, Any]:
    """TRL's collator layout: chosen rows then rejected rows, right-padded, with a completion
    mask (truncation already applied)."""
    import torch

    rows = [(t.prompt_ids, t.chosen_ids) for t in items] + [
        (t.prompt_ids, t.rejected_ids) for t in items
    ]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        attention[i, :n] = 1
        completion[i, len(p):n] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion,
            "first_completion": min(len(p) for p, _ in rows)}


def evaluate_pairs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    *,
    policy_has_adapter: bool,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PairScores:
    """Policy and reference log-probs of every pair's completions.

    Args:
        model: the policy; a PEFT model when ``policy_has_adapter`` (the reference is the same
            model inside ``disable_adapter()``), else a plain model that is its own reference.
        tokenizer: the student's tokenizer with its chat template.
        pairs: the held-out pairs (:func:`read_pairs`).
        policy_has_adapter: score the reference with the adapter disabled; False: the reference
            log-probs are the policy's (no second pass; margins exactly 0).

    Raises:
        ValueError: no pairs, bad lengths or batch size, or ``policy_has_adapter`` with a model
            that has no ``disable_adapter``.
    """
    import torch

    if not pairs:
        raise ValueError("no pairs to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_lengths(max_length, max_prompt_length)
    if policy_has_adapter and not hasattr(model, "disable_adapter"):
        raise ValueError("policy_has_adapter=True needs a PEFT model (no disable_adapter())")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id or 0
    )
    items = [
        tokenize_pair(tokenizer, p, max_length=max_length, max_prompt_length=max_prompt_length)
        for p in pairs
    ]
    # chosen and rejected summed log-probs, policy then reference, in pair order
    sums: dict[str, list[float]] = {"pw": [], "pl": [], "rw": [], "rl": []}
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for lo in range(0, len(items), batch_size):
            batch = _collate(items[lo: lo + batch_size], pad_id)
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            chosen, rejected = _completion_logps(model, batch).double().cpu().chunk(2)
            sums["pw"] += chosen.tolist()
            sums["pl"] += rejected.tolist()
            if policy_has_adapter:
                with model.disable_adapter():
                    chosen, rejected = _completion_logps(model, batch).double().cpu().chunk(2)
                sums["rw"] += chosen.tolist()
                sums["rl"] += rejected.tolist()
    pol_w, pol_l = np.asarray(sums["pw"]), np.asarray(sums["pl"])
    if policy_has_adapter:
        ref_w, ref_l = np.asarray(sums["rw"]), np.asarray(sums["rl"])
    else:  # the policy is the reference: the same numbers, so every log-ratio is exactly 0
        ref_w, ref_l = pol_w.copy(), pol_l.copy()
    return PairScores(
        prompt_ids=[p.prompt_id for p in pairs],
        policy_chosen=pol_w, policy_rejected=pol_l, ref_chosen=ref_w, ref_rejected=ref_l,
        chosen_tokens=np.asarray([len(t.chosen_ids) for t in items]),
        rejected_tokens=np.asarray([len(t.rejected_ids) for t in items]),
        truncated=np.asarray([t.truncated for t in items], dtype=bool),
        policy_has_adapter=policy_has_adapter,
    )


# ------------------------------------------------------------------------------ metrics


def _win(diff: np.ndarray) -> np.ndarray:
    """1 where ``diff > 0``, 1/2 where it is exactly 0, 0 where it is negative."""
    return (np.sign(diff) + 1.0) / 2.0


def summarize(
    scores: PairScores, *, rounds: int = DEFAULT_ROUNDS, seed: int = DEFAULT_SEED
) -> dict[str, Any]:
    """The metrics of :class:`PairScores` with seeded bootstrap 95% intervals (module docstring).

    Keys: ``n``, ``n_ties`` (m == 0), ``n_likelihood_ties``, ``n_truncated``, ``accuracy``,
    ``mean_margin``, ``mean_chosen_logratio``, ``mean_rejected_logratio``,
    ``likelihood_accuracy``, ``mean_chosen_logp``, ``mean_rejected_logp`` (policy), each mean
    with ``<key>_ci`` ([2.5th, 97.5th] percentile, None when ``rounds`` is 0), ``rounds``,
    ``seed``.

    Raises:
        ValueError: no pairs, or ``rounds`` < 0.
    """
    n = len(scores)
    if n == 0:
        raise ValueError("no pairs to summarize")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    margins = scores.margins
    likelihood = scores.policy_chosen - scores.policy_rejected
    values = {
        "accuracy": _win(margins),
        "mean_margin": margins,
        "mean_chosen_logratio": scores.chosen_logratios,
        "mean_rejected_logratio": scores.rejected_logratios,
        "likelihood_accuracy": _win(likelihood),
        "mean_chosen_logp": scores.policy_chosen,
        "mean_rejected_logp": scores.policy_rejected,
    }
    out: dict[str, Any] = {
        "n": n,
        "n_ties": int((margins == 0).sum()),
        "n_likelihood_ties": int((likelihood == 0).sum()),
        "n_truncated": int(scores.truncated.sum()),
    }
    index = np.random.default_rng(seed).integers(0, n, size=(rounds, n)) if rounds else None
    for key, v in values.items():
        out[key] = float(v.mean())
        if index is None:
            out[f"{key}_ci"] = None
        else:
            low, high = np.percentile(v[index].mean(axis=1), [2.5, 97.5])
            out[f"{key}_ci"] = [float(low), float(high)]
    out["rounds"] = rounds
    out["seed"] = seed
    return out


def pair_records(scores: PairScores) -> list[dict[str, Any]]:
    """One record per pair: its id, policy and reference log-probs, log-ratios, margin, token
    counts and truncation (the ``--out`` file of ``sp2dpo prefeval``)."""
    records = []
    for i, prompt_id in enumerate(scores.prompt_ids):
        records.append({
            "prompt_id": prompt_id,
            "policy_chosen_logp": float(scores.policy_chosen[i]),
            "policy_rejected_logp": float(scores.policy_rejected[i]),
            "ref_chosen_logp": float(scores.ref_chosen[i]),
            "ref_rejected_logp": float(scores.ref_rejected[i]),
            "chosen_logratio": float(scores.chosen_logratios[i]),
            "rejected_logratio": float(scores.rejected_logratios[i]),
            "margin": float(scores.margins[i]),
            "chosen_tokens": int(scores.chosen_tokens[i]),
            "rejected_tokens": int(scores.rejected_tokens[i]),
            "truncated": bool(scores.truncated[i]),
        })
    return records


# ------------------------------------------------------------------------------ entry point


def run(
    model_spec: str,
    adapter: str | Path | None,
    pairs_path: str | Path,
    *,
    revision: str | None = None,
    chat_template: str | None = None,
    limit: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = DEFAULT_SEED,
    device: str | None = "cpu",
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Read the pairs, load the student (adapter kept unmerged), score and summarise.

    The pairs and the options are checked before any weights load. The model and tokenizer come
    from :func:`sp2dpo.evaluate.answers.generate.load_student` (the adapter folder's tokenizer when it
    has one, ``chat_template`` overriding the template: a template file or Jinja text;
    ``device`` ``cpu`` in float32, ``None``: CUDA in bfloat16 when available). ``out``: also
    write the per-pair records (:func:`pair_records`) as JSON Lines.

    Returns:
        :func:`summarize`'s metrics plus ``model``, ``adapter``, ``pairs``, ``n_rows``,
        ``n_dropped_identical``, ``n_dropped_empty``, ``max_length``, ``max_prompt_length`` and
        ``reference`` (what the reference was).

    Raises:
        sp2dpo.core.errors.OutputPathError: ``out`` is the pairs file (or the template file),
            an existing folder or under a file.
        sp2dpo.llm.models.ModelOptionError: ``chat_template`` is neither a file nor Jinja text,
            or ``device`` is not a torch device available here.
        ValueError: bad lengths, batch size or rounds; a bad pairs file (naming file, row and
            field).
    """
    _check_options(pairs_path, out, chat_template=chat_template, device=device,
                   max_length=max_length, max_prompt_length=max_prompt_length,
                   batch_size=batch_size, rounds=rounds)
    read = read_pairs(pairs_path, limit)
    model, tokenizer = generate.load_student(
        model_spec, adapter, revision=revision, chat_template=chat_template, device=device,
        merge=False,
    )
    scores = evaluate_pairs(
        model, tokenizer, read.pairs, policy_has_adapter=adapter is not None,
        max_length=max_length, max_prompt_length=max_prompt_length, batch_size=batch_size,
    )
    if out is not None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pair_records(scores))
        artifacts.write_text(text, out)
    return {
        **summarize(scores, rounds=rounds, seed=seed),
        "model": model_spec,
        "adapter": None if adapter is None else str(adapter),
        "pairs": str(pairs_path),
        "n_rows": read.n_rows,
        "n_dropped_identical": read.n_dropped_identical,
        "n_dropped_empty": read.n_dropped_empty,
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "reference": "adapter disabled" if adapter is not None else "the policy itself (no adapter)",
    }


def _check_options(
    pairs_path: str | Path,
    out: str | Path | None,
    *,
    chat_template: str | None,
    device: str | None,
    max_length: int,
    max_prompt_length: int,
    batch_size: int,
    rounds: int,
) -> None:
    """Refuse :func:`run`'s bad options before anything is read or loaded."""
    if out is not None:
        template_file = chat_template if chat_template and os.path.isfile(chat_template) else None
        artifacts.check_output(out, inputs=(pairs_path, template_file), what="--out")
    _check_lengths(max_length, max_prompt_length)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    models.check_device(device)
    if chat_template:
        models.chat_template_text(chat_template)


def _ci(value: Any) -> str:
    return "" if value is None else f"  [{value[0]:.4f}, {value[1]:.4f}]"


def format_text(summary: Mapping[str, Any]) -> str:
    """A short human-readable report of :func:`run`'s result (95% intervals in brackets)."""
    lines = [
        f"model {summary['model']}  adapter {summary['adapter'] or '-'}  "
        f"reference: {summary['reference']}",
        f"pairs {summary['n']} of {summary['n_rows']} rows read "
        f"(dropped: {summary['n_dropped_identical']} identical, {summary['n_dropped_empty']} "
        f"empty; {summary['n_truncated']} truncated to {summary['max_length']} tokens)",
    ]
    for key in ("accuracy", "mean_margin", "mean_chosen_logratio", "mean_rejected_logratio",
                "likelihood_accuracy"):
        value = summary[key]
        shown = f"{value:.4f}" if math.isfinite(value) else str(value)
        lines.append(f"{key:<24}{shown:>10}{_ci(summary.get(key + '_ci'))}")
    lines.append(f"ties {summary['n_ties']}  bootstrap {summary['rounds']} rounds, "
                 f"seed {summary['seed']}")
    return "\n".join(lines) + "\n"
