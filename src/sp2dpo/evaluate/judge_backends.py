"""How one comparison is asked: the judge prompt, and the two backends that answer it.

- :class:`LocalLabelScorer` (``judge.backend: local``): the in-process model of
  :class:`sp2dpo.llm.local.LocalScorer`, read for the next-token probabilities of the two labels;
  a prompt over ``judge.max_input_tokens`` has the middles of both outputs cut to a common cap.
- :class:`HttpLabelJudge` (``judge.backend: openai``): any OpenAI-compatible endpoint through
  the shared retry loop of :class:`sp2dpo.llm.teachers.RetryingCaller`.

Both return a :class:`Verdict`; :mod:`sp2dpo.evaluate.judge` turns it into a preference.
"""

from __future__ import annotations

import dataclasses
import string
import threading
from pathlib import Path
from typing import Any

from sp2dpo.core.config import ConfigError, DecodingConfig, TeacherConfig
from sp2dpo.evaluate.calls import text_sha256
from sp2dpo.llm.local import LocalScorer
from sp2dpo.llm.prompt_fit import cut_middle
from sp2dpo.llm.teachers import HttpBackend, RetryingCaller, signature

#: The two single-token labels: the first shown output is ``A``, the second ``B``.
LABELS: tuple[str, str] = ("A", "B")

#: The judge prompt templates (``system.txt``, ``user.txt``), relative to the repository root.
DEFAULT_PROMPTS_DIR = Path("prompts/judge")


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """The judge's system text and user template (``prompts/judge/``)."""

    system: str
    user: string.Template

    @property
    def sha256(self) -> str:
        """Hash of the system text and user template (part of every judge call's cache key)."""
        return text_sha256(self.system + "\0" + self.user.template)

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_PROMPTS_DIR) -> JudgePrompt:
        folder = Path(folder)
        try:
            system = (folder / "system.txt").read_text(encoding="utf-8").strip()
            user = (folder / "user.txt").read_text(encoding="utf-8").strip()
        except FileNotFoundError as exc:
            raise ConfigError(f"judge prompt file missing: {exc.filename}") from None
        template = string.Template(user)
        needed = {"instruction", "first_output", "second_output"}
        missing = needed - set(template.get_identifiers())
        if missing:
            raise ConfigError(f"{folder / 'user.txt'}: missing placeholder(s) {sorted(missing)}")
        return cls(system, template)

    def messages(self, instruction: str, first: str, second: str) -> list[dict[str, str]]:
        """System and user messages for one comparison (first shown = label ``A``)."""
        user = self.user.substitute(
            instruction=instruction,
            first_output=first,
            second_output=second,
            first_label=LABELS[0],
            second_label=LABELS[1],
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


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


def judge_signature(judge: TeacherConfig, decoding: DecodingConfig, *, scorer: str) -> dict[str, Any]:
    """What determines a judge's answer besides its prompt: the cache key's ``decode`` part.

    HTTP: the request fields as sent (model, decoding, extra body; no URL, no key). Local: the
    load settings and ``scorer``, a name and version of the local scoring rule (bump it when the
    rule changes, so stored verdicts are not reused). Computed from the config alone, so a run
    whose every call is cached never loads the judge.
    """
    if judge.backend == "local":
        return {
            "backend": "local",
            "scorer": scorer,
            "revision": judge.revision,
            "dtype": judge.dtype,
            "max_input_tokens": judge.max_input_tokens,
        }
    return signature(dataclasses.replace(judge, structured_output="none"), decoding)


class LocalLabelScorer:
    """The ``local`` backend: next-token probabilities of the labels from an in-process model.

    Args:
        judge: the judge entry (``model``, ``revision``, ``dtype``, ``max_input_tokens``).
    """

    def __init__(self, judge: TeacherConfig) -> None:
        self.cfg = judge
        self.scorer = LocalScorer(
            judge.model,
            revision=judge.revision,
            dtype=judge.dtype,
            max_input_tokens=judge.max_input_tokens,
        )
        self.label_ids = {label: _label_token_ids(self.scorer.tokenizer, label) for label in LABELS}
        for label, ids in self.label_ids.items():
            if not ids:
                raise ConfigError(f"judge {judge.id!r}: no token of {judge.model} reads {label!r}")
        self._lock = threading.Lock()

    def fit(self, prompt: JudgePrompt, instruction: str, first: str, second: str) -> tuple[list[int], bool] | None:
        """Token ids of the rendered prompt within ``max_input_tokens``, cutting the middles of
        both outputs to the largest common token cap; None if even empty outputs do not fit."""
        scorer = self.scorer
        budget = scorer.max_input_tokens

        def ids_for(a: str, b: str) -> list[int]:
            return scorer.encode(scorer.render(prompt.messages(instruction, a, b)))

        ids = ids_for(first, second)
        if len(ids) <= budget:
            return ids, False
        offsets = [
            scorer.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
            for text in (first, second)
        ]

        def build(cap: int) -> list[int]:
            return ids_for(cut_middle(first, offsets[0], cap), cut_middle(second, offsets[1], cap))

        best = build(0)
        if len(best) > budget:
            return None
        low, high = 0, max(len(o) for o in offsets)
        while high - low > 1:
            mid = (low + high) // 2
            candidate = build(mid)
            if len(candidate) <= budget:
                low, best = mid, candidate
            else:
                high = mid
        return best, True

    def judge(self, prompt: JudgePrompt, instruction: str, first: str, second: str) -> Verdict:
        import torch

        fitted = self.fit(prompt, instruction, first, second)
        if fitted is None:
            return Verdict(
                "prompt_too_long",
                error=f"the instruction and framing alone exceed max_input_tokens="
                f"{self.scorer.max_input_tokens}",
            )
        ids, is_truncated = fitted
        with self._lock, torch.inference_mode():
            out = self.scorer.model(input_ids=torch.tensor([ids]), logits_to_keep=1)
            logprobs = out.logits[0, -1].float().log_softmax(-1)
        top = []
        for label in LABELS:
            total = torch.logsumexp(logprobs[self.label_ids[label]], dim=0)
            top.append({"token": label, "logprob": float(total)})
        best = max(top, key=lambda item: item["logprob"])["token"]
        return Verdict(
            "reply",
            text=best,
            top_logprobs=top,
            prompt_tokens=len(ids),
            completion_tokens=1,
            is_truncated=is_truncated,
        )


class HttpLabelJudge:
    """The ``openai`` backend: one request per comparison with retries and backoff.

    The request fields come from the judge entry and ``judge_decoding``
    (:func:`sp2dpo.llm.client.request_fields`), without ``response_format``.
    """

    def __init__(self, judge: TeacherConfig, decoding: DecodingConfig) -> None:
        self.cfg = dataclasses.replace(judge, structured_output="none")
        self.decoding = decoding
        self.backend = HttpBackend(self.cfg, decoding, chars_per_token=4.0)
        self.retry = RetryingCaller(self.cfg, decoding, backend=self.backend)

    def judge(
        self, prompt: JudgePrompt, instruction: str, first: str, second: str, stop: threading.Event
    ) -> Verdict | None:
        """None when ``stop`` was set (another item hit an auth error).

        Raises:
            AuthError: the endpoint rejected the key.
        """
        done = self.retry.call(prompt.messages(instruction, first, second), stop, role="judge")
        if done is None:
            return None
        attempt = done.attempt
        return Verdict(
            attempt.status,
            text=attempt.text,
            top_logprobs=attempt.logprobs,
            error=attempt.error,
            attempts=done.attempts,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
        )


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
