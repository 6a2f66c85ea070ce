"""Prompt variants: versioned template files rendered into chat messages.

A variant is a system-prompt file plus the shared user-message file (``prompts/`` by default).
The user template uses :class:`string.Template` placeholders ``${prompt}``, ``${winner}``,
``${loser}`` and ``${boundary}``; substitution is a single pass, so text inside a pair is never
expanded again. ``${boundary}`` is a code derived from the pair's content: the pair's own text
cannot contain a closing marker with that code, so the delimiters are unambiguous.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import string
from collections.abc import Sequence
from pathlib import Path

from sp2dpo.core.config import ConfigError, PromptsConfig

#: Placeholders the user template must contain.
USER_PLACEHOLDERS = ("prompt", "winner", "loser", "boundary")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A loaded prompt variant.

    Attributes:
        name: ``v1``..``vK``.
        system: the system-prompt text, as read.
        user: the user-message template text, as read.
        template_sha256: sha256 of the two template files (system, NUL, user) - the version.
    """

    name: str
    system: str
    user: str
    template_sha256: str

    def render(self, prompt: str, winner: str, loser: str) -> list[dict[str, str]]:
        """The chat messages for one pair (system, then user).

        >>> v = Variant("v1", "Judge.", "P=${prompt} W=${winner} L=${loser} B=${boundary}", "0" * 64)
        >>> v.render("${winner}", "a", "b")[1]["content"][:20]
        'P=${winner} W=a L=b '
        """
        user = string.Template(self.user).substitute(
            prompt=prompt, winner=winner, loser=loser, boundary=boundary(prompt, winner, loser)
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def size(self, prompt: str, winner: str, loser: str) -> int:
        """Characters of the rendered messages (system and user), without rendering them."""
        base, counts = _template_shape(self.system, self.user)
        return base + counts["prompt"] * len(prompt) + counts["winner"] * len(winner) + counts[
            "loser"
        ] * len(loser)

    def render_within(
        self, prompt: str, winner: str, loser: str, max_chars: int
    ) -> tuple[list[dict[str, str]], bool]:
        """:meth:`render`, with the pair's fields cut (:func:`fit_fields`) so the messages have
        at most ``max_chars`` characters; returns the messages and whether a field was cut.

        Raises:
            ConfigError: the templates alone do not fit ``max_chars``.
        """
        size = self.size(prompt, winner, loser)
        if size <= max_chars:
            return self.render(prompt, winner, loser), False
        fields = [prompt, winner, loser]
        fixed = size - sum(map(len, fields))
        try:
            cut = fit_fields(fields, max_chars - fixed)
        except ValueError:
            raise ConfigError(
                f"max_input_chars={max_chars} cannot hold variant {self.name}'s templates "
                f"({fixed} characters) and a shortened pair"
            ) from None
        return self.render(*cut), True


#: What replaces the middle of a field cut to fit a request-size cap.
CUT_MARKER = " [...] "


def fit_fields(fields: Sequence[str], budget: int) -> list[str]:
    """Shorten the longest fields to a common length so their total is at most ``budget``
    characters; a cut field keeps its start and its end around :data:`CUT_MARKER`.

    >>> fit_fields(["a" * 10, "bb", "c" * 30], 30)
    ['aaaaaaaaaa', 'bb', 'cccccc [...] ccccc']
    """
    if sum(map(len, fields)) <= budget:
        return list(fields)
    if budget < len(fields) * (len(CUT_MARKER) + 2):
        raise ValueError(f"a budget of {budget} characters cannot hold {len(fields)} cut fields")
    lengths = sorted(map(len, fields))
    # The largest cap c with sum(min(len, c)) <= budget.
    cap, used = 0, 0
    for i, n in enumerate(lengths):
        rest = len(lengths) - i
        if used + n * rest <= budget:
            used += n
            cap = n
            continue
        cap = (budget - used) // rest
        break
    out = []
    for text in fields:
        if len(text) <= cap:
            out.append(text)
        else:
            keep = max(cap - len(CUT_MARKER), 2)
            out.append(text[: (keep + 1) // 2] + CUT_MARKER + text[len(text) - keep // 2 :])
    return out


@functools.cache
def _template_shape(system: str, user: str) -> tuple[int, dict[str, int]]:
    """The rendered length with empty fields, and how often each field placeholder occurs."""
    template = string.Template(user)
    counts = dict.fromkeys(USER_PLACEHOLDERS, 0)
    for match in template.pattern.finditer(user):
        name = match.group("named") or match.group("braced")
        if name in counts:
            counts[name] += 1
    empty = template.substitute(prompt="", winner="", loser="", boundary="0" * 16)
    return len(system) + len(empty), counts


def boundary(prompt: str, winner: str, loser: str) -> str:
    """A 16-hex delimiter code derived from the pair's content."""
    digest = hashlib.sha256()
    for part in (prompt, winner, loser):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def messages_sha256(messages: list[dict[str, str]]) -> str:
    """sha256 of the exact rendered messages (canonical JSON)."""
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} template file not found") from None


def load_variants(cfg: PromptsConfig, root: str | Path = ".") -> list[Variant]:
    """Load every configured variant, checking the user template's placeholders.

    Args:
        cfg: the ``prompts`` params section.
        root: folder that ``cfg.dir`` is relative to (the repository root).

    Returns:
        The variants in configured order.

    Raises:
        ConfigError: a missing file, or a user template with a missing or unknown placeholder.
    """
    folder = Path(root) / cfg.dir
    user_path = folder / cfg.user
    user = _read(user_path, "user")
    check_user_template(user, str(user_path))
    variants = []
    for v in cfg.variants:
        system = _read(folder / v.system, f"system ({v.name})")
        if not system.strip():
            raise ConfigError(f"{folder / v.system}: system template of {v.name} is empty")
        digest = hashlib.sha256()
        digest.update(system.encode("utf-8"))
        digest.update(b"\0")
        digest.update(user.encode("utf-8"))
        variants.append(Variant(v.name, system, user, digest.hexdigest()))
    return variants


def check_user_template(text: str, where: str) -> None:
    """Raise :class:`ConfigError` unless ``text`` uses exactly the four user placeholders."""
    template = string.Template(text)
    if not template.is_valid():
        raise ConfigError(f"{where}: invalid placeholder syntax (write a literal $ as $$)")
    found = set(template.get_identifiers())
    missing = [p for p in USER_PLACEHOLDERS if p not in found]
    unknown = sorted(found - set(USER_PLACEHOLDERS))
    if missing or unknown:
        raise ConfigError(
            f"{where}: user template must use ${{prompt}}, ${{winner}}, ${{loser}}, ${{boundary}}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
