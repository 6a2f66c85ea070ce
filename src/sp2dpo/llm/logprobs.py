"""An in-process causal LM that scores closed sets of continuations by log-probability.

:class:`LogprobModel` loads a model once, renders and fits chat prompts
(:mod:`sp2dpo.llm.prompt_fit`) and answers one question: given a context, what is the summed
token log-probability of each candidate string after it (:meth:`LogprobModel.candidate_logprobs`)?
The candidate set must be prefix-free once tokenised; only the tokens after those shared by all
candidates are scored, each context + candidate string tokenised whole, as the model would see it.

Efficiency: the first call on a :class:`CachedPrefix` encodes the shared tokens into a KV cache
(``past_key_values``), the one long forward pass. Each later call runs one short pass over a copy
of that cache: the tokens since the cache and the trie of the candidates' tokens
(:class:`CandidateTrie`), flattened into a single row with a custom 4D attention mask in which
each node sees the cached prompt and its own ancestors, at the position it would have in the
plain sequence, and the model's sliding window per layer. This is exact (a test checks it against
plain forward passes) and, unlike a batch of candidates over a batch-expanded cache, copies the
cache once per call instead of once per candidate, which matters on a small shared CPU where the
cache copies dominate short passes.

:func:`choose` is the constrained greedy choice among whole answer strings that the evaluation
grader uses: the MT-Bench grader asks for ``[[rating]]`` and the Arena-Hard judge for
``[[A>B]]``-style labels, which a small model rarely writes after free text, so the candidates
(``"1]]"`` ... ``"10]]"``) are scored after the cue ``"[["`` (multi-token candidates such as
``"10]]"`` are scored token by token through the trie pass, so ``1`` and ``10`` are told apart).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sp2dpo.llm import models
from sp2dpo.llm.prompt_fit import Offsets, check_messages, fit_prompt, render_plain

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Tokens kept free after the prompt for the answer (about 40 tokens for a gap answer).
ANSWER_RESERVE_TOKENS = 64


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens all ``seqs`` share.

    >>> common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]])
    2
    """
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


class CachedPrefix:
    """The KV cache of the prompt tokens shared by every candidate, and the log-probs after it.

    Start each scored answer with a fresh one; successive :meth:`LogprobModel.candidate_logprobs`
    calls whose contexts extend the first reuse its cache.
    """

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.cache: Any = None
        self.last_logprobs: torch.Tensor | None = None


@dataclass(frozen=True)
class CandidateTrie:
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
    def build(cls, continuations: Sequence[Sequence[int]]) -> CandidateTrie:
        """The trie of ``continuations`` (token id sequences), nodes in insertion order."""
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


class LogprobModel:
    """An in-process ``transformers`` causal LM that scores candidate strings (see the module doc).

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

    def token_offsets(self, text: str) -> Offsets:
        """The character span of each token of ``text`` (no special tokens)."""
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text up to the assistant cue (no truncation)."""
        messages = check_messages(messages)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return render_plain(messages)

    def fit_prompt(
        self, messages: Sequence[Mapping[str, str]], max_tokens: int | None = None
    ) -> tuple[str, int, bool]:
        """Render ``messages`` within a token budget (:func:`sp2dpo.llm.prompt_fit.fit_prompt`).

        Args:
            messages: chat messages ending with the user message.
            max_tokens: the budget; ``max_input_tokens`` by default.

        Returns:
            ``(prompt, n_tokens, is_truncated)``.

        Raises:
            ValueError: when the parts that are never trimmed do not fit on their own.
        """
        return fit_prompt(
            messages,
            render=self.render,
            count=lambda text: len(self.encode(text)),
            offsets=self.token_offsets,
            budget=self.max_input_tokens if max_tokens is None else max_tokens,
        )

    # ---------------------------------------------------------------------------- scoring

    def candidate_logprobs(
        self, prefix: CachedPrefix, context: str, candidates: Sequence[str]
    ) -> list[float]:
        """Summed log-prob of each ``candidate`` string after ``context``.

        Only the tokens after those shared by all candidates count. The first call encodes the
        shared tokens into ``prefix``; later calls reuse it and run the rest as a token trie.
        Call it under ``torch.inference_mode()``.
        """
        seqs = [self.encode(context + candidate) for candidate in candidates]
        shared = common_prefix_length(seqs)
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
        tree = CandidateTrie.build([seq[n_cached:] for seq in seqs])
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

    def _check_length(self, n_tokens: int) -> None:
        if self.context_length is not None and n_tokens > self.context_length:
            raise RuntimeError(
                f"{n_tokens} tokens exceed the context of {self.model_spec} ({self.context_length})"
            )

    def _encode_prefix(self, prefix: CachedPrefix, ids: list[int]) -> None:
        """Encode ``ids`` from scratch into ``prefix`` (the one long forward pass of a call)."""
        import torch

        self._check_length(len(ids))
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        prefix.ids = list(ids)
        prefix.cache = out.past_key_values
        prefix.last_logprobs = out.logits[0, -1].float().log_softmax(-1)

    def _forward_tree(
        self, prefix: CachedPrefix, tree: CandidateTrie, n_skipped: int = 0
    ) -> torch.Tensor:
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
    model: LogprobModel,
    messages: Sequence[Mapping[str, str]],
    cue: str,
    candidates: Sequence[str],
) -> LocalChoice:
    """Score each candidate continuation of ``cue`` after the rendered ``messages``.

    The prompt is fitted with :meth:`LogprobModel.fit_prompt` (the last user message trimmed to
    ``max_input_tokens``); the candidates must be prefix-free once tokenised.

    Raises:
        ValueError: the parts that are never trimmed do not fit ``max_input_tokens``.
    """
    import torch

    if len(set(candidates)) != len(candidates) or not candidates:
        raise ValueError(f"candidates must be distinct and non-empty, got {list(candidates)}")
    prompt, n_prompt, is_truncated = model.fit_prompt(messages)
    with torch.inference_mode():
        scores = model.candidate_logprobs(CachedPrefix(), prompt + cue, list(candidates))
    return LocalChoice(
        logprobs=dict(zip(candidates, scores, strict=True)),
        prompt_tokens=n_prompt,
        is_truncated=is_truncated,
    )
