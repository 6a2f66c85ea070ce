"""In-process ``transformers`` teacher for offline runs: the gap fields by log-prob scoring.

A tiny model (SmolLM2-135M, gemma-3-270m) sampled freely rarely writes valid JSON, so
:class:`LocalScorer` never lets it generate. It writes the JSON answer itself, one field at a time,
and only asks the model to *score* the closed set of values each field may take
(:meth:`~sp2dpo.llm.logprobs.LogprobModel.candidate_logprobs`):

1. ``{"semantic_gap_category": "`` is appended to the rendered prompt, and each of the six
   categories is scored as the string ``<Name>",``. The score is the **sum** of the token
   log-probs, i.e. the log-probability of the string, without length normalisation: once the first
   token of a name is chosen the rest are near-certain, so normalising would only favour names
   that happen to split into more tokens. The argmax wins; exact ties go to the category that
   comes first in the priority order :data:`sp2dpo.core.schemas.CATEGORIES`
   (:func:`~sp2dpo.llm.gap_answer.pick_category`).
2. With the chosen category written, `` "semantic_gap_magnitude":`` follows and every value of
   :data:`~sp2dpo.llm.gap_answer.GRID` (0.0, 0.1, ..., 1.0, written as JSON writes them) is
   scored as the string `` 0.3,``. Its log-probs are renormalised over the grid and the field is
   the **probability-weighted mean**, rounded to 2 decimals
   (:func:`~sp2dpo.llm.gap_answer.grid_mean`): smoother and more informative than the argmax of a
   tiny model, and in [0, 1] by construction.
3. ``semantic_gap_confidence`` likewise (candidates `` 0.3}``), with the category and the
   magnitude value already written in the context.

Every candidate ends with the delimiter that follows it in the answer (``",``, ``,``, ``}``), so
the candidate set is prefix-free (`` 0.1`` alone would also cover ``0.15``) and is tokenised as in
the final JSON. A call makes four forward passes: one long pass encodes the prompt and the answer
cue into a KV cache, then each field runs one short trie pass over a copy of it
(:mod:`sp2dpo.llm.logprobs`). Nothing is sampled: the same messages give the same text, and
``text`` always parses with exactly the three ``semantic_gap_*`` keys in range. The prompt is
rendered and trimmed to ``max_input_tokens`` as :mod:`sp2dpo.llm.prompt_fit` describes.

The teachers' call keys name the scorer by :data:`SCORER_VERSION`, not by a hash of this code,
so moving code between the modules of :mod:`sp2dpo.llm` re-annotates nothing; a change of what
the scorer answers must bump it (a golden-output test catches a forgotten bump).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sp2dpo.core.schemas import CATEGORIES
from sp2dpo.llm.gap_answer import (
    CATEGORY_CUE,
    CONFIDENCE_KEY,
    GRID,
    MAGNITUDE_KEY,
    format_answer,
    grid_mean,
    grid_probabilities,
    pick_category,
)
from sp2dpo.llm.logprobs import CachedPrefix, LogprobModel

log = logging.getLogger(__name__)

#: The version of the local scorer's behaviour, part of every local teacher's call key.
#: Bump it when the scorer's behaviour (its output for a given input) changes: the prompt
#: rendering or trimming, the candidates, the scoring, the rounding, the answer's layout. Pure
#: refactors (moving or renaming code) leave it alone, and so keep every stored call.
SCORER_VERSION = 1


@dataclass(frozen=True)
class LocalJudgement:
    """One in-process teacher answer.

    Attributes:
        text: a JSON object with exactly the three ``semantic_gap_*`` keys (category ``str``,
            magnitude and confidence ``float`` in [0, 1]).
        prompt_tokens: tokens of the rendered prompt, after truncation.
        completion_tokens: tokens of ``text``.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class LocalScores:
    """A judgement with the scores behind it (for inspection and tests).

    Attributes:
        judgement: what :meth:`LocalScorer.judge` returns.
        prompt: the rendered prompt after truncation, without the answer.
        is_truncated: whether the user message was shortened to fit ``max_input_tokens``.
        category_logprobs: summed token log-prob of each category string, by category.
        magnitude_logprobs: summed token log-prob of each grid value for the magnitude.
        magnitude_probs: the same renormalised over the grid.
        confidence_logprobs: summed token log-prob of each grid value for the confidence.
        confidence_probs: the same renormalised over the grid.
    """

    judgement: LocalJudgement
    prompt: str
    is_truncated: bool
    category_logprobs: dict[str, float]
    magnitude_logprobs: tuple[float, ...]
    magnitude_probs: tuple[float, ...]
    confidence_logprobs: tuple[float, ...]
    confidence_probs: tuple[float, ...]


class LocalScorer(LogprobModel):
    """An in-process ``transformers`` teacher answering by log-prob scoring (see the module doc).

    Loading, prompt fitting and candidate scoring are :class:`~sp2dpo.llm.logprobs.LogprobModel`'s
    (same arguments); this class writes the semantic-gap answer.
    """

    def judge(self, messages: Sequence[Mapping[str, str]], *, seed: int = 42) -> LocalJudgement:
        """Answer one annotation request with the three gap fields as a JSON object.

        Args:
            messages: the system (rubric) and user (pair and JSON instruction) messages.
            seed: seeds ``torch`` for the call (nothing is sampled; kept for the interface).

        Returns:
            The JSON text and its token counts.
        """
        return self.score(messages, seed=seed).judgement

    def score(self, messages: Sequence[Mapping[str, str]], *, seed: int = 42) -> LocalScores:
        """Like :meth:`judge`, also returning the scores behind the answer."""
        import torch

        started = time.perf_counter()
        prompt, n_prompt, is_truncated = self.fit_prompt(messages)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seed)
            prefix = CachedPrefix()
            context = prompt + CATEGORY_CUE
            category_scores = self.candidate_logprobs(
                prefix, context, [f'{name}",' for name in CATEGORIES]
            )
            category_logprobs = dict(zip(CATEGORIES, category_scores, strict=True))
            category = pick_category(category_logprobs)

            context += f'{category}", "{MAGNITUDE_KEY}":'
            magnitude_logprobs = self.candidate_logprobs(
                prefix, context, [f" {json.dumps(v)}," for v in GRID]
            )
            magnitude_probs = grid_probabilities(magnitude_logprobs)
            magnitude = grid_mean(magnitude_probs)

            context += f' {json.dumps(magnitude)}, "{CONFIDENCE_KEY}":'
            confidence_logprobs = self.candidate_logprobs(
                prefix, context, [f" {json.dumps(v)}}}" for v in GRID]
            )
            confidence_probs = grid_probabilities(confidence_logprobs)
            confidence = grid_mean(confidence_probs)

        text = format_answer(category, magnitude, confidence)
        if not text.startswith(context[len(prompt) :]):
            raise RuntimeError(
                f"scored context {context[len(prompt) :]!r} is not a prefix of {text!r}"
            )
        completion = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        log.debug(
            "%s: %d prompt tokens, %s in %.2fs",
            self.model_spec,
            n_prompt,
            text,
            time.perf_counter() - started,
        )
        return LocalScores(
            judgement=LocalJudgement(
                text=text, prompt_tokens=n_prompt, completion_tokens=completion
            ),
            prompt=prompt,
            is_truncated=is_truncated,
            category_logprobs=category_logprobs,
            magnitude_logprobs=tuple(magnitude_logprobs),
            magnitude_probs=magnitude_probs,
            confidence_logprobs=tuple(confidence_logprobs),
            confidence_probs=confidence_probs,
        )

