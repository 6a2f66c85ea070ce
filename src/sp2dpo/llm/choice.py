"""A constrained greedy choice among whole answer strings, with the in-process model.

The MT-Bench grader asks for ``[[rating]]`` and the Arena-Hard judge for ``[[A>B]]``-style
labels. A small local model rarely writes such a verdict after free text, so the local backend
asks the question directly: after the prompt and an answer cue (``"[["``), which of the
candidate continuations (``"1]]"`` ... ``"10]]"``) is the most probable as a whole string? This
is greedy decoding restricted to the candidates (multi-token candidates such as ``"10]]"`` are
scored token by token through the model's trie pass, so ``1`` and ``10`` are told apart).

It lives beside, not inside, :mod:`sp2dpo.llm.local`: the teachers' cache keys hash that
module's source, and a judge feature must not re-annotate every pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sp2dpo.llm.local import LocalScorer, _Prefix


@dataclass(frozen=True)
class LocalChoice:
    """Each candidate's summed log-probability after the cue, and the prompt's size."""

    logprobs: dict[str, float]
    prompt_tokens: int
    is_truncated: bool

    @property
    def best(self) -> str:
        """The most probable candidate (the first of equals)."""
        return max(self.logprobs, key=lambda c: self.logprobs[c])


def choose(
    judge: LocalScorer,
    messages: Sequence[Mapping[str, str]],
    cue: str,
    candidates: Sequence[str],
) -> LocalChoice:
    """Score each candidate continuation of ``cue`` after the rendered ``messages``.

    The prompt is fitted with :meth:`LocalScorer.fit_prompt` (the last user message trimmed to
    ``max_input_tokens``); the candidates must be prefix-free once tokenised.

    Raises:
        ValueError: the parts that are never trimmed do not fit ``max_input_tokens``.
    """
    import torch

    if len(set(candidates)) != len(candidates) or not candidates:
        raise ValueError(f"candidates must be distinct and non-empty, got {list(candidates)}")
    prompt, n_prompt, is_truncated = judge.fit_prompt(messages)
    with torch.inference_mode():
        scores = judge._candidate_logprobs(_Prefix(), prompt + cue, list(candidates))
    return LocalChoice(
        logprobs=dict(zip(candidates, scores, strict=True)),
        prompt_tokens=n_prompt,
        is_truncated=is_truncated,
    )
