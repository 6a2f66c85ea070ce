"""In-process ``transformers`` teacher for offline runs: the gap fields by log-prob scoring.

A tiny model (SmolLM2-135M, gemma-3-270m) sampled freely rarely writes valid JSON, so
:class:`LocalScorer` never lets it generate. It writes the JSON answer itself, one field at a time,
and only asks the model to *score* the closed set of values each field may take:

1. ``{"semantic_gap_category": "`` is appended to the rendered prompt, and each of the six
   categories is scored as the string ``<Name>",``. The score is the **sum** of the token
   log-probs, i.e. the log-probability of the string, without length normalisation: once the first
   token of a name is chosen the rest are near-certain, so normalising would only favour names
   that happen to split into more tokens. The argmax wins; exact ties go to the category that
   comes first in the priority order :data:`sp2dpo.core.schemas.CATEGORIES` (:func:`pick_category`).
2. With the chosen category written, `` "semantic_gap_magnitude":`` follows and every value of
   :data:`GRID` (0.0, 0.1, ..., 1.0, written as JSON writes them) is scored as the string
   `` 0.3,``. Its log-probs are renormalised over the grid (:func:`grid_probabilities`) and the
   field is the **probability-weighted mean**, rounded to :data:`DECIMALS` decimals
   (:func:`grid_mean`): smoother and more informative than the argmax of a tiny model, and in
   [0, 1] by construction.
3. ``semantic_gap_confidence`` likewise (candidates `` 0.3}``), with the category and the
   magnitude value already written in the context.

Every candidate ends with the delimiter that follows it in the answer (``",``, ``,``, ``}``), so
the candidate set is prefix-free (`` 0.1`` alone would also cover ``0.15``) and is tokenised as in
the final JSON. Each context + candidate string is tokenised whole, as the model would see it,
and only the tokens after those shared by all candidates of a field are scored.

Efficiency: a call makes four forward passes. The first encodes the prompt and the answer cue
into a KV cache (``past_key_values``), the only long one. Each field then runs one short pass
over a copy of that cache: the answer written so far and the trie of its candidates' tokens,
flattened into a single row (the eleven grid values share `` 0.``/`` 1.`` and need about fifteen
positions) with a custom 4D attention mask in which each node sees the cached prompt and its own
ancestors, at the position it would have in the plain sequence, and the model's sliding window
per layer. This is exact (a test checks it against plain forward passes) and, unlike a batch of
candidates over a batch-expanded cache, copies the cache once per field instead of once per
candidate, which matters on a small shared CPU where the cache copies dominate short passes.
Nothing is sampled: the same messages give the same text, and ``text`` always parses with
exactly the three ``semantic_gap_*`` keys in range.

Prompt layout: the tokenizer's chat template with the generation prompt when it has one;
otherwise (base models such as gemma-3-270m) :func:`render_plain`, i.e. ``System:``/``User:``
blocks separated by blank lines and an ``Assistant:`` cue, tokenised with the tokenizer's special
tokens (``<bos>``).

Truncation (:meth:`LocalScorer.fit_prompt`): the rendered prompt is kept within
``max_input_tokens`` by shortening the last user message only, so the system message (rubric),
the chat framing, the final non-empty line of the user message (the JSON-only instruction) and
the answer cue stay intact. The text before that line is split into fields
(:func:`split_fields`): the runs of lines between delimiter lines (:data:`DELIMITER_LINE`:
``BEGIN``/``END`` markers, tags, ``Label:`` lines), or the paragraphs when there are no
delimiters. Every field longer than a common cap is cut in its middle to the cap (its first and
last tokens around ``[...]``), with the cap the largest that fits: the longest fields (prompt,
winner, loser) lose most and evenly, delimiters and short fields stay whole. If even cap 0 does
not fit, the text before the instruction line is cut in its middle as a whole. If the
untouchable parts alone do not fit, :class:`ValueError`. ``max_input_tokens`` is also capped at
the model's context length minus :data:`ANSWER_RESERVE_TOKENS`, so the prompt and the answer
never exceed the context.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sp2dpo.core.schemas import CATEGORIES
from sp2dpo.llm import models

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CATEGORY_KEY = "semantic_gap_category"
MAGNITUDE_KEY = "semantic_gap_magnitude"
CONFIDENCE_KEY = "semantic_gap_confidence"

#: The start of the answer, appended to the rendered prompt before the categories are scored.
CATEGORY_CUE = '{"' + CATEGORY_KEY + '": "'

#: The discretised [0, 1] grid scored for magnitude and confidence.
GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))

#: Decimals kept in the probability-weighted mean of the grid.
DECIMALS = 2

#: Tokens kept free after the prompt for the JSON answer (about 40 tokens in practice).
ANSWER_RESERVE_TOKENS = 64

#: What replaces the middle of a trimmed text.
TRUNCATION_MARKER = "[...]"

#: A delimiter line of the user message: the ``BEGIN <NAME> <code>``/``END <NAME> <code>`` markers
#: of ``prompts/user.txt``, a tag line (``<winner>``, ``</winner>``) or a label line ending with a
#: colon (``Winner Response (preferred in the dataset):``, as in the paper's App. B.1 template).
DELIMITER_LINE = re.compile(
    r"^[ \t]*(?:(?:BEGIN|END)[ \t]+[A-Z][A-Z0-9_]*\b.*|</?[A-Za-z][\w-]*>|[A-Z][^\n:]{0,80}:)[ \t]*$"
)

#: Paragraphs are separated by blank lines.
_PARAGRAPH_BREAK = re.compile(r"(\n[ \t]*\n(?:[ \t]*\n)*)")


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
        magnitude_logprobs: summed token log-prob of each :data:`GRID` value for the magnitude.
        magnitude_probs: the same renormalised over the grid.
        confidence_logprobs: summed token log-prob of each :data:`GRID` value for the confidence.
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


def pick_category(logprobs: Mapping[str, float]) -> str:
    """The highest-scoring category; exact ties go to the first in priority order.

    Args:
        logprobs: a score for each of :data:`sp2dpo.core.schemas.CATEGORIES`.

    Returns:
        The winning category name.

    >>> pick_category({c: 0.0 for c in CATEGORIES})
    'Safety'
    """
    missing = [name for name in CATEGORIES if name not in logprobs]
    if missing:
        raise ValueError(f"no score for categories {missing}; expected all of {list(CATEGORIES)}")
    best = CATEGORIES[0]
    for name in CATEGORIES[1:]:
        if logprobs[name] > logprobs[best]:
            best = name
    return best


def grid_probabilities(logprobs: Sequence[float]) -> tuple[float, ...]:
    """Softmax of the grid log-probs: the model's distribution restricted to the grid.

    >>> grid_probabilities([0.0, 0.0])
    (0.5, 0.5)
    """
    if not logprobs or not all(math.isfinite(x) for x in logprobs):
        raise ValueError(f"grid log-probs must be finite and non-empty, got {list(logprobs)}")
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    total = sum(weights)
    return tuple(w / total for w in weights)


def grid_mean(
    probs: Sequence[float], grid: Sequence[float] = GRID, decimals: int = DECIMALS
) -> float:
    """Probability-weighted mean of the grid, clipped to [0, 1] and rounded.

    >>> grid_mean([0.5] + [0.0] * 9 + [0.5])
    0.5
    """
    if len(probs) != len(grid):
        raise ValueError(f"{len(probs)} probabilities for a grid of {len(grid)} values")
    value = sum(p * v for p, v in zip(probs, grid, strict=True))
    return round(min(max(value, 0.0), 1.0), decimals)


def format_answer(category: str, magnitude: float, confidence: float) -> str:
    """The JSON answer, in the exact layout whose prefixes the scorer writes into the context.

    >>> format_answer("Style", 0.5, 1.0)
    '{"semantic_gap_category": "Style", "semantic_gap_magnitude": 0.5, "semantic_gap_confidence": 1.0}'
    """
    return json.dumps(
        {CATEGORY_KEY: category, MAGNITUDE_KEY: float(magnitude), CONFIDENCE_KEY: float(confidence)}
    )


def render_plain(messages: Sequence[Mapping[str, str]]) -> str:
    """Plain-text layout for a model without a chat template (a base model).

    Each message becomes a block ``Role:\\n<content>``; blocks are separated by a blank line and
    followed by the assistant cue ``Assistant:\\n``.

    >>> render_plain([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    'System:\\nS\\n\\nUser:\\nU\\n\\nAssistant:\\n'
    """
    blocks = [f"{m['role'].capitalize()}:\n{m['content']}" for m in messages]
    return "\n\n".join([*blocks, "Assistant:\n"])


def split_fields(text: str) -> list[tuple[str, bool]]:
    r"""Split a user message into the pieces truncation may shorten and those it keeps.

    With at least two :data:`DELIMITER_LINE` lines, the fields are the runs of lines between
    delimiter lines (a response with blank lines stays one field); otherwise they are the
    paragraphs between blank lines.

    Returns:
        ``(piece, is_field)`` pairs whose pieces concatenate back to ``text``.

    >>> split_fields("Intro\n<a>\nx\n\ny\n</a>")  # doctest: +NORMALIZE_WHITESPACE
    [('Intro', True), ('\n', False), ('<a>\n', False), ('x\n\ny', True), ('\n', False),
     ('</a>', False)]
    >>> split_fields("p1\n\np2")
    [('p1', True), ('\n\n', False), ('p2', True)]
    """
    lines = text.split("\n")
    is_delimiter = [bool(DELIMITER_LINE.match(line)) for line in lines]
    if sum(is_delimiter) < 2:
        parts = _PARAGRAPH_BREAK.split(text)  # paragraphs at even, separators at odd indices
        return [(part, i % 2 == 0) for i, part in enumerate(parts)]
    pieces: list[tuple[str, bool]] = []
    run: list[str] = []
    for i, (line, delimiter) in enumerate(zip(lines, is_delimiter, strict=True)):
        if not delimiter:
            run.append(line)
            continue
        if run:
            pieces += [("\n".join(run), True), ("\n", False)]
            run = []
        pieces.append((line + ("\n" if i < len(lines) - 1 else ""), False))
    if run:
        pieces.append(("\n".join(run), True))
    return pieces


def _check_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if not messages:
        raise ValueError("messages is empty; expected system and user chat messages")
    for message in messages:
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise ValueError(f"each message needs str 'role' and 'content', got {message!r}")
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must be the user's, got {messages[-1]['role']!r}")
    return [dict(m) for m in messages]


def _common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def cut_middle(text: str, offsets: Sequence[tuple[int, int]], cap: int) -> str:
    """``text`` shortened to its first ``ceil(cap/2)`` and last ``floor(cap/2)`` tokens."""
    if cap >= len(offsets):
        return text
    n_head, n_tail = (cap + 1) // 2, cap // 2
    head = text[: offsets[n_head - 1][1]].rstrip() if n_head else ""
    tail = text[offsets[len(offsets) - n_tail][0] :].lstrip() if n_tail else ""
    return " ".join(part for part in (head, TRUNCATION_MARKER, tail) if part)


class _Prefix:
    """The KV cache of the prompt tokens shared by every candidate, and the log-probs after it."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.cache: Any = None
        self.last_logprobs: torch.Tensor | None = None


@dataclass(frozen=True)
class _Tree:
    """The token trie of the candidate continuations, flattened to one input row.

    Holds every node that precedes another token (the last token of a candidate needs no input):
    ``tokens[i]`` at ``depths[i]`` below the cached prefix, ``parents[i]`` the row index of its
    parent node (``-1`` at the root), ``index`` the row of each token path.
    """

    tokens: list[int]
    depths: list[int]
    parents: list[int]
    index: dict[tuple[int, ...], int]

    @classmethod
    def build(cls, continuations: Sequence[Sequence[int]]) -> _Tree:
        tokens: list[int] = []
        depths: list[int] = []
        parents: list[int] = []
        index: dict[tuple[int, ...], int] = {}
        for seq in continuations:
            for depth in range(len(seq) - 1):
                path = tuple(seq[: depth + 1])
                if path not in index:
                    index[path] = len(tokens)
                    tokens.append(seq[depth])
                    depths.append(depth)
                    parents.append(index[path[:-1]] if depth else -1)
        return cls(tokens, depths, parents, index)


class LocalScorer:
    """An in-process ``transformers`` teacher answering by log-prob scoring (see the module doc).

    The model loads once, here; ``torch`` thread settings are left to the caller.

    Args:
        model: a model spec for :func:`sp2dpo.llm.models.load_causal_lm` (``local:<name>``, an HF id
            or a folder).
        revision: the revision of an HF model id (pin a commit hash).
        dtype: the ``torch`` dtype name to load the weights in.
        max_input_tokens: the most tokens of the rendered prompt; longer prompts are trimmed
            (:meth:`fit_prompt`). Capped at the model's context minus
            :data:`ANSWER_RESERVE_TOKENS`.
    """

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        dtype: str = "float32",
        max_input_tokens: int = 1024,
    ) -> None:
        if max_input_tokens < 1:
            raise ValueError(f"max_input_tokens must be positive, got {max_input_tokens}")
        self.model_spec = model
        self.model, self.tokenizer = models.load_causal_lm(model, revision=revision, dtype=dtype)
        self.model.eval()
        self.uses_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        text_config = self.model.config.get_text_config()
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        if self.context_length is not None:
            limit = self.context_length - ANSWER_RESERVE_TOKENS
            if max_input_tokens > limit:
                log.warning(
                    "max_input_tokens=%d exceeds the context of %s (%d) minus %d answer tokens; "
                    "using %d",
                    max_input_tokens,
                    model,
                    self.context_length,
                    ANSWER_RESERVE_TOKENS,
                    limit,
                )
                max_input_tokens = limit
        self.max_input_tokens = max_input_tokens
        self._attn_implementation = self.model.config._attn_implementation
        if self._attn_implementation not in ("sdpa", "eager"):
            raise NotImplementedError(
                f"{model} uses {self._attn_implementation!r} attention; the candidate trie needs a "
                "custom mask, supported with 'sdpa' or 'eager'"
            )

    # ---------------------------------------------------------------------------- prompt

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (with the answer so far), as the model reads it.

        A chat-template rendering already holds its special tokens; the plain layout gets the
        tokenizer's own (``<bos>``).
        """
        return self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"]

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text up to the assistant cue (no truncation)."""
        messages = _check_messages(messages)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return render_plain(messages)

    def fit_prompt(
        self, messages: Sequence[Mapping[str, str]], max_tokens: int | None = None
    ) -> tuple[str, int, bool]:
        """Render ``messages`` within a token budget, trimming the last user message if needed.

        See the module docstring for the policy.

        Args:
            messages: chat messages ending with the user message.
            max_tokens: the budget; ``max_input_tokens`` by default.

        Returns:
            ``(prompt, n_tokens, is_truncated)``.

        Raises:
            ValueError: when the parts that are never trimmed do not fit on their own.
        """
        budget = self.max_input_tokens if max_tokens is None else max_tokens
        messages = _check_messages(messages)
        prompt = self.render(messages)
        n_tokens = len(self.encode(prompt))
        if n_tokens <= budget:
            return prompt, n_tokens, False

        def attempt(user_content: str) -> tuple[str, int]:
            text = self.render([*messages[:-1], {**messages[-1], "content": user_content}])
            return text, len(self.encode(text))

        lines = messages[-1]["content"].split("\n")
        instruction = max((i for i, line in enumerate(lines) if line.strip()), default=len(lines))
        head_text = "\n".join(lines[:instruction])
        tail_lines = lines[instruction:]

        # Stage 1: cap every field (or paragraph) before the instruction at a common token count.
        pieces = split_fields(head_text)
        spans = [self._offsets(text) if is_field else [] for text, is_field in pieces]

        def capped(cap: int) -> str:
            cut = [
                cut_middle(text, span, cap) if is_field else text
                for (text, is_field), span in zip(pieces, spans, strict=True)
            ]
            return "\n".join(["".join(cut), *tail_lines])

        # Stage 2: cut the whole text before the instruction line in its middle.
        head_spans = self._offsets(head_text)

        def cut_head(cap: int) -> str:
            return "\n".join([cut_middle(head_text, head_spans, cap), *tail_lines])

        for build, upper in (
            (capped, max(map(len, spans), default=0)),
            (cut_head, len(head_spans)),
        ):
            best = self._largest_fitting(build, attempt, upper, budget)
            if best is not None:
                prompt, n_tokens = best
                log.debug("prompt trimmed to %d tokens (budget %d)", n_tokens, budget)
                return prompt, n_tokens, True
        _, floor = attempt(cut_head(0))
        raise ValueError(
            f"max_input_tokens={budget} is too small: the system message, chat framing and the "
            f"final instruction line alone need {floor} tokens"
        )

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]

    @staticmethod
    def _largest_fitting(
        build: Callable[[int], str],
        attempt: Callable[[str], tuple[str, int]],
        upper: int,
        budget: int,
    ) -> tuple[str, int] | None:
        """Binary search of the largest cap in ``[0, upper)`` whose prompt fits ``budget``."""
        found = attempt(build(0))
        if found[1] > budget:
            return None
        low, high = 0, upper  # build(low) fits; build(upper) is the untrimmed text, which does not
        while high - low > 1:
            mid = (low + high) // 2
            candidate = attempt(build(mid))
            if candidate[1] <= budget:
                low, found = mid, candidate
            else:
                high = mid
        return found

    # ---------------------------------------------------------------------------- scoring

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
            prefix = _Prefix()
            context = prompt + CATEGORY_CUE
            category_scores = self._candidate_logprobs(
                prefix, context, [f'{name}",' for name in CATEGORIES]
            )
            category_logprobs = dict(zip(CATEGORIES, category_scores, strict=True))
            category = pick_category(category_logprobs)

            context += f'{category}", "{MAGNITUDE_KEY}":'
            magnitude_logprobs = self._candidate_logprobs(
                prefix, context, [f" {json.dumps(v)}," for v in GRID]
            )
            magnitude_probs = grid_probabilities(magnitude_logprobs)
            magnitude = grid_mean(magnitude_probs)

            context += f' {json.dumps(magnitude)}, "{CONFIDENCE_KEY}":'
            confidence_logprobs = self._candidate_logprobs(
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

    def _check_length(self, n_tokens: int) -> None:
        if self.context_length is not None and n_tokens > self.context_length:
            raise RuntimeError(
                f"{n_tokens} tokens exceed the context of {self.model_spec} ({self.context_length})"
            )

    def _encode_prefix(self, prefix: _Prefix, ids: list[int]) -> None:
        """Encode ``ids`` from scratch into ``prefix`` (the one long forward pass of a call)."""
        import torch

        self._check_length(len(ids))
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        prefix.ids = list(ids)
        prefix.cache = out.past_key_values
        prefix.last_logprobs = out.logits[0, -1].float().log_softmax(-1)

    def _candidate_logprobs(
        self, prefix: _Prefix, context: str, candidates: Sequence[str]
    ) -> list[float]:
        """Summed log-prob of each ``candidate`` string after ``context``.

        Only the tokens after those shared by all candidates count. The first call encodes the
        shared tokens into ``prefix``; later calls reuse it and run the rest as a token trie.
        """
        seqs = [self.encode(context + candidate) for candidate in candidates]
        shared = _common_prefix_length(seqs)
        if any(len(seq) == shared for seq in seqs):
            raise RuntimeError(
                f"candidates {list(candidates)} are not prefix-free after tokenising"
            )
        n_cached = len(prefix.ids)
        if not n_cached or n_cached > shared or seqs[0][:n_cached] != prefix.ids:
            if n_cached:  # a boundary re-tokenised differently; not seen with the packaged models
                log.debug("cached prompt diverged from the context; re-encoding it")
            self._encode_prefix(prefix, seqs[0][:shared])
            n_cached = shared
        tree = _Tree.build([seq[n_cached:] for seq in seqs])
        # The trie starts with the shared chain (inserted first); only its last node and the
        # branches predict scored tokens, so the logits of the nodes before are skipped.
        n_skipped = max(shared - n_cached - 1, 0)
        node_logprobs = self._forward_tree(prefix, tree, n_skipped) if tree.tokens else None
        totals = []
        for seq in seqs:
            total = 0.0
            for j in range(shared, len(seq)):
                if j == n_cached:
                    dist = prefix.last_logprobs
                else:
                    dist = node_logprobs[tree.index[tuple(seq[n_cached:j])] - n_skipped]
                total += float(dist[seq[j]])
            totals.append(total)
        return totals

    def _forward_tree(self, prefix: _Prefix, tree: _Tree, n_skipped: int = 0) -> torch.Tensor:
        """Next-token log-probs at the trie nodes after the first ``n_skipped``, in one forward
        pass over a copy of the cache.

        Each node sits at position ``len(prefix.ids) + depth`` and attends to the cached prefix and
        to its own ancestors only (the model's sliding window applied per layer), so its logits
        equal those of the plain sequence that ends with it.
        """
        import torch

        n_nodes = len(tree.tokens)
        positions = torch.tensor(tree.depths) + len(prefix.ids)
        self._check_length(int(positions.max()) + 2)
        ancestors = torch.zeros(n_nodes, n_nodes, dtype=torch.bool)
        for i, parent in enumerate(tree.parents):
            if parent >= 0:
                ancestors[i] = ancestors[parent]
            ancestors[i, i] = True

        cache = copy.deepcopy(prefix.cache)
        masks: dict[tuple[int, int, int | None], torch.Tensor] = {}
        layer_masks = []
        for layer_idx, is_sliding in enumerate(cache.is_sliding):
            kv_length, kv_offset = cache.get_mask_sizes(n_nodes, layer_idx)
            window = cache.layers[layer_idx].sliding_window if is_sliding else None
            key = (kv_length, kv_offset, window)
            if key not in masks:
                masks[key] = self._tree_mask(ancestors, positions, kv_length, kv_offset, window)
            layer_masks.append(masks[key])
        if len(masks) == 1:
            attention_mask: Any = layer_masks[0]
        else:
            layer_types = getattr(self.model.config.get_text_config(), "layer_types", None)
            if layer_types is None or len(layer_types) != len(layer_masks):
                raise NotImplementedError(
                    f"{self.model_spec} mixes attention layer kinds without config.layer_types"
                )
            attention_mask = {}
            for name, mask in zip(layer_types, layer_masks, strict=True):
                if attention_mask.setdefault(name, mask) is not mask:
                    raise NotImplementedError(f"layers of type {name!r} need different masks")
        out = self.model(
            input_ids=torch.tensor([tree.tokens]),
            attention_mask=attention_mask,
            position_ids=positions[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=n_nodes - n_skipped,
        )
        return out.logits[0].float().log_softmax(-1)

    def _tree_mask(
        self,
        ancestors: torch.Tensor,
        positions: torch.Tensor,
        kv_length: int,
        kv_offset: int,
        window: int | None,
    ) -> torch.Tensor:
        """The 4D attention mask of the trie nodes over a layer's cached keys and the nodes."""
        import torch

        n_nodes = len(positions)
        n_cached = kv_length - n_nodes
        key_positions = torch.cat([kv_offset + torch.arange(n_cached), positions])
        allowed = torch.cat([torch.ones(n_nodes, n_cached, dtype=torch.bool), ancestors], dim=1)
        if window is not None:
            allowed &= key_positions[None, :] > positions[:, None] - window
        if self._attn_implementation == "sdpa":
            return allowed[None, None]
        dtype = self.model.dtype
        additive = torch.zeros(allowed.shape, dtype=dtype)
        return additive.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
