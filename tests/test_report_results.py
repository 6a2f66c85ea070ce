"""The Table-2-style results: combining per-student eval reports, markdown layout, plot files."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from sp2dpo.report import results
from tests.conftest import ROOT

#: Golden cases: ``<case>/eval/*.json`` in, ``<case>/expected/`` the files the pre-spec code wrote.
GOLDEN = ROOT / "tests" / "golden" / "report_results"
GOLDEN_CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "eval").is_dir())


def _entry(lc, wr, strict=0.5):
    return {
        "alpaca_eval": {
            "length_controlled_winrate": lc, "win_rate": wr, "standard_error": 1.0,
            "discrete_win_rate": wr, "avg_length": 100, "n_total": 8,
            "length_controlled_method": "offline-estimate",
        },
        "ifeval": {"prompt_level_strict_acc": strict, "inst_level_strict_acc": 0.75,
                   "prompt_level_loose_acc": 0.625, "inst_level_loose_acc": 0.8},
    }


def _write(folder, student, methods, lc_method="offline-estimate:length-only-glm"):
    folder.mkdir(parents=True, exist_ok=True)
    report = {"student": student, "methods": methods, "length_controlled_method": lc_method,
              "judge": {"model": "local:gemma3-270m"}}
    (folder / f"{student}.json").write_text(json.dumps(report))


def test_table_follows_the_papers_layout(tmp_path):
    folder = tmp_path / "reports" / "eval"
    _write(folder, "smollm2", {"sp2dpo": _entry(12.5, 10.0), "base": _entry(4.81, 16.65),
                               "dpo": _entry(None, 18.0), "rand_beta": _entry(6.0, 19.25)})
    _write(folder, "gemma3", {"base": _entry(38.96, 54.97, strict=0.25)})
    combined = results.write_results(tmp_path / "reports")

    assert list(combined) == ["gemma3", "smollm2"]  # sorted by student
    assert combined["smollm2"]["methods"]["base"]["ifeval_prompt_level_strict_acc"] == 50.0
    md = (tmp_path / "reports" / "eval.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Method | gemma3 LC"))
    assert header == "| Method | gemma3 LC | gemma3 WR | smollm2 LC | smollm2 WR |"
    rows = [line for line in lines if line.startswith("| ") and " LC " not in line][:4]
    # Base, Rand-beta, DPO, SP2DPO: the paper's row order; missing cells are dashes.
    assert rows[0] == "| Base (instruction-tuned) | 38.96 | 54.97 | 4.81 | 16.65 |"
    assert rows[1].startswith("| Rand-β_i") and rows[1].endswith("| — | — | 6.00 | 19.25 |")
    assert rows[2].startswith("| DPO") and rows[2].endswith("| — | — | — | 18.00 |")
    assert rows[3].startswith("| SP²DPO") and rows[3].endswith("| 12.50 | 10.00 |")
    assert "offline estimate" in md
    assert "| Base (instruction-tuned) | gemma3 | 25.00 | 75.00 | 62.50 | 80.00 |" in md

    csv = (tmp_path / "reports" / "eval_plot.csv").read_text().splitlines()
    assert csv[0] == "student,method,metric,label,value"
    assert "smollm2,dpo,WR,smollm2/dpo/WR,18.0" in csv
    assert not any(line.startswith("smollm2,dpo,LC") for line in csv)  # no value, no bar
    png = (tmp_path / "reports" / "eval_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "reports" / "eval.json").read_text()) == combined


def test_rerun_is_byte_identical(tmp_path):
    folder = tmp_path / "reports" / "eval"
    _write(folder, "smollm2", {"base": _entry(5.0, 6.0)})
    results.write_results(tmp_path / "reports")
    first = {p.name: p.read_bytes() for p in (tmp_path / "reports").rglob("*") if p.is_file()}
    results.write_results(tmp_path / "reports")
    second = {p.name: p.read_bytes() for p in (tmp_path / "reports").rglob("*") if p.is_file()}
    assert first == second


def test_bad_reports_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no eval reports"):
        results.write_results(tmp_path / "reports")
    folder = tmp_path / "reports" / "eval"
    folder.mkdir(parents=True)
    (folder / "x.json").write_text(json.dumps({"oops": 1}))
    with pytest.raises(ValueError, match=r"x\.json: not an eval report"):
        results.write_results(tmp_path / "reports")


def test_mt_bench_and_arena_hard_tables_in_the_papers_order(tmp_path):
    folder = tmp_path / "reports" / "eval"
    entry = _entry(10.0, 12.0)
    entry["mt_bench"] = {"turn1": 6.5, "turn2": 5.25, "score": 5.875, "n": 8, "n_failed": 0}
    # Stored with sorted keys, as the eval report writes them: counts must be read by label.
    entry["arena_hard"] = {"score": 37.9, "ci": [35.6, 40.36],
                           "verdicts": {"A=B": 3, "A>>B": 1, "A>B": 2, "B>>A": 5, "B>A": 4}}
    entry["prefeval"] = {"n": 16, "accuracy": 0.5625, "accuracy_ci": [0.3125, 0.8125],
                         "mean_margin": 0.0421, "mean_margin_ci": [-0.01, 0.09],
                         "likelihood_accuracy": 0.375}
    _write(folder, "smollm2", {"sp2dpo": entry, "base": _entry(5.0, 6.0)})
    combined = results.write_results(tmp_path / "reports")
    row = combined["smollm2"]["methods"]["sp2dpo"]
    assert (row["mt_bench_turn1"], row["mt_bench_score"], row["arena_hard_score"]) == (6.5, 5.875, 37.9)
    md = (tmp_path / "reports" / "eval.md").read_text()
    order = [md.index(title) for title in ("AlpacaEval 2.0", "MT-Bench", "IFEval", "Arena-Hard-Auto")]
    assert order == sorted(order)
    assert "| SP²DPO (JMAMP) | smollm2 | 6.50 | 5.25 | 5.88 |" in md
    assert "| SP²DPO (JMAMP) | smollm2 | 37.90 | [35.60, 40.36] | 1 / 2 / 3 / 4 / 5 |" in md
    assert "| Base (instruction-tuned) | smollm2 | — | — | — |" in md  # no MT-Bench run: dashes
    assert md.index("Arena-Hard-Auto") < md.index("Held-out preference accuracy")
    assert "| SP²DPO (JMAMP) | smollm2 | 16 | 0.562 | [0.312, 0.812] | 0.042 | [-0.010, 0.090] | 0.375 |" in md


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_reports_render_byte_identical(tmp_path, case):
    """Each golden input renders to the exact bytes the hand-written tables wrote (README there)."""
    shutil.copytree(GOLDEN / case / "eval", tmp_path / "eval")
    results.write_results(tmp_path)
    for name in ("eval.md", "eval.json", "eval_plot.csv"):
        expected = (GOLDEN / case / "expected" / name).read_bytes()
        assert (tmp_path / name).read_bytes() == expected, f"{case}/{name} differs from the golden file"


def test_golden_cases_cover_every_table_and_gap():
    """The golden cases render every suite's table, an absent suite, and skipped rows."""
    assert {"workspace", "two_students", "no_alpaca", "alpaca_only"} <= set(GOLDEN_CASES)
    md = {case: (GOLDEN / case / "expected" / "eval.md").read_text() for case in GOLDEN_CASES}
    assert "AlpacaEval 2.0" not in md["no_alpaca"] and "MT-Bench" not in md["alpaca_only"]
    assert "| zz_custom | smollm2 | None | 0.500 |" in md["two_students"]  # prefeval n missing
    assert "| DPO (global β) | smollm2 | — | — | — |" in md["two_students"]  # no MT-Bench run


def test_a_new_suite_is_one_spec_entry(monkeypatch, tmp_path):
    """One more :class:`results.SuiteTable` both keeps the suite's numbers and writes its table."""
    extra = results.SuiteTable(
        section="toy_bench", prefix="toy_", fields=("acc", "ci"),
        caption=lambda combined: ["", "Toy bench:", ""],
        columns=(results.Column("acc", "acc", results.number(1)),
                 results.Column("CI", "ci", results.interval(1), "---")),
        shown_if=("acc",),
    )
    monkeypatch.setattr(results, "SUITE_TABLES", (*results.SUITE_TABLES, extra))
    entry = _entry(5.0, 6.0)
    entry["toy_bench"] = {"acc": 2.5, "ci": [0.1, 0.4], "unused": 1}
    _write(tmp_path / "eval", "smollm2", {"base": entry})
    combined = results.write_results(tmp_path)
    assert combined["smollm2"]["methods"]["base"]["toy_acc"] == 2.5
    assert "toy_unused" not in combined["smollm2"]["methods"]["base"]
    md = (tmp_path / "eval.md").read_text()
    assert "Toy bench:\n\n| Method | Student | acc | CI |\n|---|---|---:|---|\n" in md
    assert "| Base (instruction-tuned) | smollm2 | 2.5 | [0.1, 0.4] |" in md
    assert md.index("Toy bench") < md.index("Judged instructions")  # footnotes stay last
    combined["smollm2"]["methods"]["base"]["toy_acc"] = None  # no value anywhere: no table
    assert "Toy bench" not in results.markdown(combined)
    with pytest.raises(ValueError, match=r"toy_bench: table fields \['missing'\] not in `fields`"):
        dataclasses.replace(extra, rows_need="missing")
