"""Rendering chat messages as one prompt text, and fitting that prompt to a token budget.

Prompt layout: a tokenizer's chat template with the generation prompt when it has one;
otherwise (base models such as gemma-3-270m) :func:`render_plain`, i.e. ``System:``/``User:``
blocks separated by blank lines and an ``Assistant:`` cue.

Truncation (:func:`fit_prompt`): the rendered prompt is kept within a token budget by shortening
the last user message only, so the system message (rubric), the chat framing, the final non-empty
line of the user message (the JSON-only instruction) and the answer cue stay intact. The text
before that line is split into fields (:func:`split_fields`): the runs of lines between delimiter
lines (:data:`DELIMITER_LINE`: ``BEGIN``/``END`` markers, tags, ``Label:`` lines), or the
paragraphs when there are no delimiters. Every field longer than a common cap is cut in its
middle to the cap (its first and last tokens around ``[...]``, :func:`cut_middle`), with the cap
the largest that fits: the longest fields (prompt, winner, loser) lose most and evenly,
delimiters and short fields stay whole. If even cap 0 does not fit, the text before the
instruction line is cut in its middle as a whole. If the untouchable parts alone do not fit,
:class:`ValueError`.

Nothing here loads a model: the tokenizer enters through the callables :func:`fit_prompt` takes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

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

#: Token offsets of a text: the ``(start, end)`` character span of each token.
Offsets = Sequence[tuple[int, int]]


def check_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """A copy of chat ``messages`` that end with the user's, each with str role and content.

    Raises:
        ValueError: empty messages, a message without str ``role``/``content``, or a last
            message that is not the user's.
    """
    if not messages:
        raise ValueError("messages is empty; expected system and user chat messages")
    for message in messages:
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise ValueError(f"each message needs str 'role' and 'content', got {message!r}")
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must be the user's, got {messages[-1]['role']!r}")
    return [dict(m) for m in messages]


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


def cut_middle(text: str, offsets: Offsets, cap: int) -> str:
    """``text`` shortened to its first ``ceil(cap/2)`` and last ``floor(cap/2)`` tokens."""
    if cap >= len(offsets):
        return text
    n_head, n_tail = (cap + 1) // 2, cap // 2
    head = text[: offsets[n_head - 1][1]].rstrip() if n_head else ""
    tail = text[offsets[len(offsets) - n_tail][0] :].lstrip() if n_tail else ""
    return " ".join(part for part in (head, TRUNCATION_MARKER, tail) if part)


def fit_prompt(
    messages: Sequence[Mapping[str, str]],
    *,
    render: Callable[[list[dict[str, str]]], str],
    count: Callable[[str], int],
    offsets: Callable[[str], Offsets],
    budget: int,
) -> tuple[str, int, bool]:
    """Render ``messages`` within a token budget, trimming the last user message if needed.

    See the module docstring for the policy.

    Args:
        messages: chat messages ending with the user message.
        render: the prompt text of chat messages, up to the assistant cue.
        count: the number of tokens of a rendered prompt, as the model reads it.
        offsets: the token offsets of a piece of text (no special tokens).
        budget: the most tokens of the rendered prompt.

    Returns:
        ``(prompt, n_tokens, is_truncated)``.

    Raises:
        ValueError: when the parts that are never trimmed do not fit on their own.
    """
    messages = check_messages(messages)
    prompt = render(messages)
    n_tokens = count(prompt)
    if n_tokens <= budget:
        return prompt, n_tokens, False

    def attempt(user_content: str) -> tuple[str, int]:
        text = render([*messages[:-1], {**messages[-1], "content": user_content}])
        return text, count(text)

    lines = messages[-1]["content"].split("\n")
    instruction = max((i for i, line in enumerate(lines) if line.strip()), default=len(lines))
    head_text = "\n".join(lines[:instruction])
    tail_lines = lines[instruction:]

    # Stage 1: cap every field (or paragraph) before the instruction at a common token count.
    pieces = split_fields(head_text)
    spans = [offsets(text) if is_field else [] for text, is_field in pieces]

    def capped(cap: int) -> str:
        cut = [
            cut_middle(text, span, cap) if is_field else text
            for (text, is_field), span in zip(pieces, spans, strict=True)
        ]
        return "\n".join(["".join(cut), *tail_lines])

    # Stage 2: cut the whole text before the instruction line in its middle.
    head_spans = offsets(head_text)

    def cut_head(cap: int) -> str:
        return "\n".join([cut_middle(head_text, head_spans, cap), *tail_lines])

    for build, upper in (
        (capped, max(map(len, spans), default=0)),
        (cut_head, len(head_spans)),
    ):
        best = largest_fitting(lambda cap, b=build: attempt(b(cap)), lambda found: found[1], upper, budget)
        if best is not None:
            prompt, n_tokens = best
            log.debug("prompt trimmed to %d tokens (budget %d)", n_tokens, budget)
            return prompt, n_tokens, True
    _, floor = attempt(cut_head(0))
    raise ValueError(
        f"max_input_tokens={budget} is too small: the system message, chat framing and the "
        f"final instruction line alone need {floor} tokens"
    )


T = TypeVar("T")


def largest_fitting(
    build: Callable[[int], T],
    size: Callable[[T], int],
    upper: int,
    budget: int,
) -> T | None:
    """``build(cap)`` for the largest cap in ``[0, upper)`` whose ``size`` fits ``budget``
    (binary search; ``build(upper)`` is taken not to fit); None when even ``build(0)`` does
    not fit."""
    found = build(0)
    if size(found) > budget:
        return None
    low, high = 0, upper
    while high - low > 1:
        mid = (low + high) // 2
        candidate = build(mid)
        if size(candidate) <= budget:
            low, found = mid, candidate
        else:
            high = mid
    return found
