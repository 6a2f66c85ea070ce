"""A full-size stand-in for UltraFeedback's ``train_prefs``, made from the 500 real rows shipped.

The paper's run fetches ``HuggingFaceH4/ultrafeedback_binarized``, split ``train_prefs`` (61,135
rows). The rehearsal cannot reach the Hub, so :func:`write_snapshot` writes a local snapshot of the
same shape and size (``data.source: local``): every row is one of the shipped real rows, in the
Hub's schema (``prompt, prompt_id, chosen, rejected, messages, score_chosen, score_rejected``;
``chosen``/``rejected``/``messages`` as user + assistant transcripts, ``messages`` = ``chosen``).

How the rows are made:

- **Texts.** The usable shipped rows (those with a non-blank prompt and both replies) are dealt
  out in rounds, each round a fresh seeded shuffle of all of them. Round 0 keeps each prompt as it
  is (its ``prompt_id`` is then the published one); round ``k >= 1`` appends ``" (variant k)"`` to
  the prompt, in ``prompt`` and in the user turn of ``chosen``, ``rejected`` and ``messages``
  alike. Every prompt is therefore unique, and ``prompt_id`` is recomputed as the Hub computes it:
  the sha256 of the UTF-8 prompt (:func:`prompt_id_of`, the rule of ``sp2dpo.data.fetch``). A
  row keeps its own chosen and rejected replies; the one shipped row whose two replies are the
  same text (row 295) comes round with the others, so about 1 row in 500 has identical replies,
  as in the shipped sample.
- **Faults the filter must catch.** The paper's Table 9 counts on the real split: 11 rows whose
  ``prompt_id`` repeats an earlier row's, 37 rows with an empty chosen reply and 75 with an empty
  rejected reply, 11 of them with both empty; 112 rows dropped, 61,023 kept. The same counts,
  scaled to ``rows`` (:func:`planted_counts`; exactly the paper's at 61,135 rows), are planted at
  seeded positions: a repeated row copies the prompt (and so the ``prompt_id``) and replies of an
  earlier row, an empty reply is the empty string. With the paper's filter settings (only
  ``drop_identical: false``), ``reports/filter.json`` then shows the paper's numbers.
- **Scores.** The shipped rows carry none; every row gets a seeded UltraFeedback-like pair: the
  chosen score on the 1-10 scale in steps of 0.5, mostly 6 to 9, the rejected score 0.5 to 6
  lower (at least 1), and a tie where the two replies are the same text.

The file is byte-identical for the same arguments: records are written with the source's key
order and ``json.dumps(..., ensure_ascii=False)`` (as the shipped file), and gzip's header holds
no name and time 0. It is written atomically (:func:`sp2dpo.core.artifacts.atomic_path`), one line
at a time, so memory stays small at full size.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from sp2dpo.core import artifacts, jsonio

#: Rows of the paper's split (``train_prefs`` at the pinned revision).
PAPER_ROWS = 61_135
#: The paper's Table 9 filter counts on those rows (``both_empty`` rows are among the empty ones).
PAPER_FAULTS = {"duplicate_prompt_id": 11, "empty_chosen": 37, "empty_rejected": 75, "both_empty": 11}
#: Key order of a record, as in the Hub's files and the shipped sample.
FIELDS = ("prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected")
#: gzip level: 1 keeps the full-size write to a few seconds (level 9 takes minutes on 400 MB).
GZIP_LEVEL = 1


def prompt_id_of(prompt: str) -> str:
    """The Hub's ``prompt_id``: sha256 of the UTF-8 prompt, hex (as ``sp2dpo.data.fetch``)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def variant_prompt(prompt: str, round_: int) -> str:
    """The prompt of round ``round_``: unchanged in round 0, else with ``" (variant k)"``."""
    return prompt if round_ == 0 else f"{prompt} (variant {round_})"


def planted_counts(rows: int) -> dict[str, int]:
    """The filter faults planted in a snapshot of ``rows`` rows: the paper's Table 9 counts
    scaled to ``rows`` and rounded (exactly the paper's at 61,135 rows).

    Keys: ``duplicate_prompt_id``, ``empty_chosen``, ``empty_rejected`` (each as the filter
    counts it, so rows with both replies empty are in both) and ``both_empty``.
    """
    scale = rows / PAPER_ROWS
    counts = {name: round(n * scale) for name, n in PAPER_FAULTS.items()}
    counts["both_empty"] = min(counts["both_empty"], counts["empty_chosen"], counts["empty_rejected"])
    return counts


def _reply(transcript: list[dict[str, str]]) -> str:
    return transcript[-1]["content"] if transcript else ""


def _usable(record: dict[str, Any]) -> bool:
    """A source row that may be dealt out: a prompt and two non-blank replies, two turns each."""
    texts = (record.get("prompt"), _reply(record.get("chosen") or []), _reply(record.get("rejected") or []))
    return all(isinstance(t, str) and t.strip() for t in texts) and all(
        len(record[f]) == 2 and record[f][0].get("role") == "user" for f in ("chosen", "rejected")
    )


def read_source(source: Path) -> list[dict[str, Any]]:
    """The usable rows of a JSONL(.gz) snapshot in the Hub's schema, in file order."""
    usable = [r for _, r in jsonio.iter_jsonl(source) if _usable(r)]
    if not usable:
        raise ValueError(f"{source}: no row with a prompt and two non-blank replies")
    return usable


def _scores(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """UltraFeedback-like scores: chosen on 1-10 in half steps, rejected 0.5 to 6 lower."""
    grid = np.arange(2.0, 10.5, 0.5)
    weights = np.exp(-0.5 * ((grid - 7.5) / 1.3) ** 2)
    chosen = rng.choice(grid, size=rows, p=weights / weights.sum())
    gap = rng.choice(np.arange(0.5, 6.5, 0.5), size=rows)
    return chosen, np.maximum(chosen - gap, 1.0)


def _plan(rows: int, pool: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Which source row, round and fault each output row gets (all draws in one fixed order)."""
    rounds = -(-rows // pool)
    order = np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:rows]
    round_of = np.arange(rows) // pool
    counts = planted_counts(rows)
    n_dup = counts["duplicate_prompt_id"]
    n_both = counts["both_empty"]
    n_chosen = counts["empty_chosen"] - n_both
    n_rejected = counts["empty_rejected"] - n_both
    n_faults = n_dup + n_both + n_chosen + n_rejected
    if n_faults > max(rows - 1, 0):
        raise ValueError(f"rows={rows}: too few rows for the {n_faults} planted faults")
    # Duplicates need an earlier row: they sit at positions >= 1, faults never share a row.
    positions = rng.permutation(np.arange(1, rows))[:n_faults]
    fault = np.zeros(rows, dtype=np.int8)  # 0 none, 1 duplicate, 2 both, 3 chosen, 4 rejected
    cuts = np.cumsum([n_dup, n_both, n_chosen])
    for code, group in enumerate(np.split(positions, cuts), start=1):
        fault[group] = code
    for position in np.sort(positions[:n_dup]):
        earlier = np.flatnonzero(fault[:position] != 1)
        copied = earlier[rng.integers(len(earlier))]
        order[position], round_of[position] = order[copied], round_of[copied]
    chosen, rejected = _scores(rng, rows)
    return {"source": order, "round": round_of, "fault": fault,
            "score_chosen": chosen, "score_rejected": rejected}


def _record(src: dict[str, Any], round_: int, fault: int, scores: tuple[float, float]) -> dict[str, Any]:
    prompt = variant_prompt(src["prompt"], round_)
    chosen_text = "" if fault in (2, 3) else _reply(src["chosen"])
    rejected_text = "" if fault in (2, 4) else _reply(src["rejected"])
    chosen = [{"content": prompt, "role": "user"}, {"content": chosen_text, "role": "assistant"}]
    rejected = [{"content": prompt, "role": "user"}, {"content": rejected_text, "role": "assistant"}]
    score_chosen, score_rejected = scores
    if chosen_text == rejected_text:
        score_rejected = score_chosen
    return {
        "prompt": prompt,
        "prompt_id": prompt_id_of(prompt),
        "chosen": chosen,
        "rejected": rejected,
        "messages": [dict(m) for m in chosen],
        "score_chosen": float(score_chosen),
        "score_rejected": float(score_rejected),
    }


def write_snapshot(source: Path, out: Path, rows: int = PAPER_ROWS, seed: int = 0) -> dict[str, Any]:
    """Write a ``train_prefs``-shaped JSONL(.gz) snapshot of ``rows`` rows made from ``source``.

    Args:
        source: a JSONL(.gz) snapshot in the Hub's schema (the shipped
            ``data/raw/uf_binarized_h4_train_prefs_500.jsonl.gz``).
        out: the file to write (gzip when the name ends with ``.gz``), atomically.
        rows: how many rows (the paper's split: 61,135).
        seed: the seed of every draw; the same arguments give the same bytes.

    Returns:
        ``rows``, ``unique_prompts``, ``bytes`` and ``sha256`` of the file, the ``planted``
        fault counts (:func:`planted_counts`), ``identical_replies`` (rows whose replies are the
        same text, empty pairs included) and ``expected_kept`` (rows the paper's filter keeps).
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    source, out = Path(source), Path(out)
    pool = read_source(source)
    plan = _plan(rows, len(pool), np.random.default_rng(seed))
    prompts: set[str] = set()
    identical = 0
    with artifacts.atomic_path(out) as tmp, open(tmp, "wb") as raw:
        stream = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)
                  if out.name.endswith(".gz") else raw)
        buffer: list[str] = []
        for i in range(rows):
            record = _record(pool[plan["source"][i]], int(plan["round"][i]), int(plan["fault"][i]),
                             (plan["score_chosen"][i], plan["score_rejected"][i]))
            prompts.add(record["prompt"])
            identical += _reply(record["chosen"]) == _reply(record["rejected"])
            buffer.append(json.dumps(record, ensure_ascii=False))
            if len(buffer) == 1000 or i == rows - 1:
                stream.write(("\n".join(buffer) + "\n").encode("utf-8"))
                buffer.clear()
        if stream is not raw:
            stream.close()
    planted = planted_counts(rows)
    if len(prompts) != rows - planted["duplicate_prompt_id"]:
        raise AssertionError(f"{out}: {rows - len(prompts)} repeated prompts, planted "
                             f"{planted['duplicate_prompt_id']}")
    dropped = (planted["duplicate_prompt_id"] + planted["empty_chosen"] + planted["empty_rejected"]
               - planted["both_empty"])
    return {
        "rows": rows,
        "unique_prompts": len(prompts),
        "bytes": out.stat().st_size,
        "sha256": artifacts.sha256_file(out),
        "planted": planted,
        "identical_replies": identical,
        "expected_kept": rows - dropped,
    }
