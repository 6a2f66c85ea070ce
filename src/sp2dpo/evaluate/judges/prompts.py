"""The judge prompt folders: a ``system.txt`` and a ``user.txt`` template each.

:func:`read_prompt_folder` reads both (stripped) and :func:`prompt_sha256` identifies their
version (the hash of the system text, a NUL byte and the user template; part of every judge
call's cache key). Two folders use them: the AlpacaEval judge's (``prompts/judge/``,
:class:`JudgePrompt`, ``string.Template`` placeholders) and the Arena-Hard judge's
(``prompts/judge/arena_hard/``, :class:`sp2dpo.evaluate.benchmarks.arenahard.ArenaHardPrompt`, ``str.format``
placeholders); each checks its own placeholders.
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

from sp2dpo.core.config import ConfigError
from sp2dpo.core.errors import UserError
from sp2dpo.evaluate.calls import text_sha256

#: The two single-token labels of the AlpacaEval judge: the first shown output is ``A``, the
#: second ``B``.
LABELS: tuple[str, str] = ("A", "B")

#: The AlpacaEval judge prompt templates (``system.txt``, ``user.txt``), relative to the
#: repository root.
DEFAULT_PROMPTS_DIR = Path("prompts/judge")


def read_prompt_folder(
    folder: str | Path, what: str, *, error: type[UserError] = ConfigError
) -> tuple[str, str]:
    """``(system, user)``: the stripped texts of ``folder/system.txt`` and ``folder/user.txt``.

    Args:
        folder: the prompt folder.
        what: the prompt's name in the error message (``judge``, ``Arena-Hard judge``).
        error: the error type raised for a missing file.

    Raises:
        error: a missing file (``"<what> prompt file missing: <path>"``).
    """
    folder = Path(folder)
    try:
        system = (folder / "system.txt").read_text(encoding="utf-8").strip()
        user = (folder / "user.txt").read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise error(f"{what} prompt file missing: {exc.filename}") from None
    return system, user


def prompt_sha256(system: str, user: str) -> str:
    """The version of a prompt folder: sha256 of ``system + "\\0" + user`` as UTF-8."""
    return text_sha256(system + "\0" + user)


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """The AlpacaEval judge's system text and user template (``prompts/judge/``).

    The user template has the ``string.Template`` placeholders ``$instruction``,
    ``$first_output`` and ``$second_output`` (``$first_label``, ``$second_label`` optional).
    """

    system: str
    user: string.Template

    @property
    def sha256(self) -> str:
        """Hash of the system text and user template (part of every judge call's cache key)."""
        return prompt_sha256(self.system, self.user.template)

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_PROMPTS_DIR) -> JudgePrompt:
        """Read ``folder`` and check the placeholders.

        Raises:
            ConfigError: a missing file or a missing placeholder (the file named).
        """
        system, user = read_prompt_folder(folder, "judge")
        template = string.Template(user)
        needed = {"instruction", "first_output", "second_output"}
        missing = needed - set(template.get_identifiers())
        if missing:
            raise ConfigError(f"{Path(folder) / 'user.txt'}: missing placeholder(s) {sorted(missing)}")
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
