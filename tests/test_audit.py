"""Tests for sp2dpo.audit: `sp2dpo audit diff` between artifact versions, across git/DVC revisions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from sp2dpo import cli
from sp2dpo.audit import compare as audit_diff
from tests.conftest import run

DVC = str(Path(sys.executable).parent / "dvc")


def calls(rows: dict[str, tuple[str, float, float]], teachers=("qa", "qb"), variants=("v1", "v2")) -> pd.DataFrame:
    """A complete call table: every teacher x variant call of a pair gets the same label."""
    records = [
        {"prompt_id": pid, "annotator": a, "variant": v, "category": cat, "magnitude": m, "confidence": c}
        for pid, (cat, m, c) in rows.items() for a in teachers for v in variants
    ]
    return pd.DataFrame(records)


def make_artifact(tmp_path: Path, name: str, rows: dict, **kwargs) -> Path:
    call_path = tmp_path / f"{name}.calls.csv"
    calls(rows, **kwargs).to_csv(call_path, index=False)
    out = tmp_path / f"{name}.csv"
    assert cli.main(["aggregate", "--calls", str(call_path), "--out", str(out),
                     "--report-dir", str(tmp_path / f"{name}-reports")]) == 0
    return out


OLD_ROWS = {
    "p1": ("Safety", 1.0, 1.0),       # beta 0.3
    "p2": ("Style", 0.0, 1.0),        # beta 0.03
    "p3": ("Reasoning", 0.5, 1.0),    # beta 0.165
    "p4": ("Helpfulness", 0.2, 0.5),  # g 0.1: beta 0.057
}
NEW_ROWS = {
    "p1": ("Safety", 1.0, 1.0),       # unchanged
    "p2": ("Factuality", 0.5, 1.0),   # Style -> Factuality, +0.135
    "p3": ("Reasoning", 0.52, 1.0),   # +0.0054 (below the threshold)
    "p5": ("Style", 0.1, 0.1),        # added; p4 removed
}


def test_diff_counts_changes_and_flips(tmp_path, capsys):
    old = make_artifact(tmp_path, "old", OLD_ROWS)
    new = make_artifact(tmp_path, "new", NEW_ROWS)
    capsys.readouterr()  # drop the aggregate command's own output
    assert cli.main(["audit", "diff", str(old), str(new), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_old"], result["n_new"], result["added"], result["removed"], result["common"]) == (4, 4, 1, 1, 3)
    assert result["column"] == "beta_annotators_mean_ens"
    assert result["max_abs_change"] == pytest.approx(0.135, abs=1e-12)
    assert result["mean_abs_change"] == pytest.approx((0.0 + 0.135 + 0.0054) / 3, abs=1e-12)
    assert result["n_changed"] == 1
    assert result["category_column"] == "category_qa_ens"
    assert result["category_flips"] == {"Style->Factuality": 1}
    assert result["category_matrix"] == {"Reasoning": {"Reasoning": 1}, "Safety": {"Safety": 1}, "Style": {"Factuality": 1}}
    assert result["mean_shift_by_category"]["Style"] == {"n": 1, "mean_change": pytest.approx(0.135)}
    assert [t["prompt_id"] for t in result["top_changes"]] == ["p2", "p3"]

    # The threshold moves what counts as changed; the gate exits 1 only when something changed.
    assert cli.main(["audit", "diff", str(old), str(new), "--json", "--threshold", "0.001"]) == 0
    assert json.loads(capsys.readouterr().out)["n_changed"] == 2
    assert cli.main(["audit", "diff", str(old), str(new), "--fail-on-change"]) == 1
    assert cli.main(["audit", "diff", str(old), str(old), "--fail-on-change"]) == 0


def test_text_and_markdown_render_every_section(tmp_path, capsys):
    old = make_artifact(tmp_path, "old", OLD_ROWS)
    new = make_artifact(tmp_path, "new", NEW_ROWS)
    pairs = tmp_path / "pairs.parquet"
    pd.DataFrame({"prompt_id": ["p2", "p3"], "prompt": ["Is the moon made of cheese?", "Add 2 and 2"]}).to_parquet(pairs)
    for fmt in ("text", "markdown"):
        assert cli.main(["audit", "diff", str(old), str(new), "--format", fmt, "--pairs", str(pairs)]) == 0
        out = capsys.readouterr().out
        for needle in ("pairs", "category flips", "mean change by old category", "top changed pairs",
                       "Is the moon made of cheese?", "Style->Factuality", "process variables"):
            assert needle in out, (fmt, needle)
    assert "| old | new | added | removed | common |" in out


def test_bad_inputs_have_clear_messages(tmp_path, capsys):
    old = make_artifact(tmp_path, "old", OLD_ROWS)
    other_panel = make_artifact(tmp_path, "other", OLD_ROWS, teachers=("qa", "qc"))
    capsys.readouterr()
    assert cli.main(["audit", "diff", str(old), str(other_panel)]) == 2
    err = capsys.readouterr().err
    assert "different panels (old: qa, qb x v1, v2; new: qa, qc x v1, v2)" in err and "--allow-panel-change" in err
    assert cli.main(["audit", "diff", str(old), str(other_panel), "--allow-panel-change", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_changed"] == 0

    assert cli.main(["audit", "diff", str(old), str(old), "--column", "beta_zz_ens"]) == 2
    assert "no column 'beta_zz_ens'" in capsys.readouterr().err
    assert cli.main(["audit", "diff", str(old), str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert cli.main(["audit", "diff", "HEAD:nope.csv", str(old)]) == 2
    assert "not tracked at revision 'HEAD'" in capsys.readouterr().err


@pytest.mark.slow
def test_diff_across_git_and_dvc_revisions(tmp_path, capsys, monkeypatch):
    """Two commits of a pipeline whose aggregate stage produced different beta artifacts (and ran
    with different params), compared by revision; an ad-hoc file gets no provenance."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q", "-b", "main"], cwd=repo)
    run([DVC, "init", "-q"], cwd=repo)
    sp2dpo = str(Path(sys.executable).parent / "sp2dpo")
    (repo / "dvc.yaml").write_text(
        "stages:\n  aggregate:\n"
        f"    cmd: {sp2dpo} aggregate --calls calls.csv --out beta.csv --no-reports --params params.yaml\n"
        "    deps: [calls.csv]\n    params: [aggregate.prompt_operator]\n    outs: [beta.csv]\n"
    )
    for i, (rows, operator) in enumerate([(OLD_ROWS, "median"), (NEW_ROWS, "weighted_mean")]):
        calls(rows).to_csv(repo / "calls.csv", index=False)
        (repo / "params.yaml").write_text(f"aggregate:\n  prompt_operator: {operator}\n")
        run([DVC, "repro", "-q"], cwd=repo)
        run([*git, "add", "-A"], cwd=repo)
        run([*git, "commit", "-qm", f"artifact {i}"], cwd=repo)
    run([*git, "tag", "v-old", "HEAD~1"], cwd=repo)

    monkeypatch.chdir(repo)
    capsys.readouterr()
    assert cli.main(["audit", "diff", "v-old:beta.csv", "HEAD:beta.csv", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["added"], result["removed"], result["common"], result["n_changed"]) == (1, 1, 3, 1)
    assert result["category_flips"] == {"Style->Factuality": 1}
    assert result["params_diff"] == {"aggregate.prompt_operator": {"old": "median", "new": "weighted_mean"}}
    assert result["params_old_source"].endswith(":dvc.lock (aggregate)")
    # The workspace artifact is the one the workspace lock records; a copy edited by hand is not.
    assert cli.main(["audit", "diff", "v-old:beta.csv", "beta.csv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_new_source"] == "workspace:dvc.lock (aggregate)"
    edited = repo / "edited.csv"
    edited.write_text((repo / "beta.csv").read_text().replace("0.3,", "0.29,", 1))
    assert cli.main(["audit", "diff", "beta.csv", "edited.csv", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params_new_source"] == "unknown (the aggregate stage at workspace did not write edited.csv)"
    assert result["params_diff"] == {"aggregate.prompt_operator": {"old": "weighted_mean", "new": None}}

    # A revision that does not exist, and a path not tracked at a revision that does.
    assert cli.main(["audit", "diff", "nosuchrev:beta.csv", "HEAD:beta.csv"]) == 2
    assert "revision 'nosuchrev' does not exist" in capsys.readouterr().err
    assert cli.main(["audit", "diff", "HEAD:data/other.csv", "HEAD:beta.csv"]) == 2
    assert "data/other.csv is not tracked at revision 'HEAD'" in capsys.readouterr().err

    # The old version's data gone from the cache: a clear message, not a stack trace.
    import shutil

    shutil.rmtree(repo / ".dvc" / "cache")
    assert cli.main(["audit", "diff", "v-old:beta.csv", "beta.csv"]) == 2
    err = capsys.readouterr().err
    assert "tracked by DVC but its data is neither in the local cache nor in a remote" in err


def test_provenance_needs_the_lock_to_record_this_very_file(tmp_path):
    content = b"prompt_id,beta\np1,0.1\n"
    md5 = __import__("hashlib").md5(content).hexdigest()
    assert audit_diff._params_at(tmp_path, None, "beta.csv", content) == ({}, "unknown (no dvc.lock at workspace)")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  aggregate:\n    params:\n      params.yaml:\n        beta.min: 0.03\n"
        "        aggregate:\n          prompt_operator: median\n"
        f"    outs:\n    - path: beta.csv\n      md5: {md5}\n"
    )
    params, source = audit_diff._params_at(tmp_path, None, "beta.csv", content)
    assert params == {"beta.min": 0.03, "aggregate.prompt_operator": "median"}
    assert source == "workspace:dvc.lock (aggregate)"
    assert audit_diff._params_at(tmp_path, None, "other.csv", content)[1] == (
        "unknown (the aggregate stage at workspace did not write other.csv)")
    assert audit_diff._params_at(tmp_path, None, "beta.csv", content + b"p2,0.2\n")[1] == (
        "unknown (not the beta.csv that dvc.lock at workspace records)")


def test_panel_check_covers_variants_and_the_gate_counts_added_and_removed_pairs(tmp_path, capsys):
    old = make_artifact(tmp_path, "old", OLD_ROWS)
    fewer_variants = make_artifact(tmp_path, "v1only", OLD_ROWS, variants=("v1",))
    capsys.readouterr()
    assert cli.main(["audit", "diff", str(old), str(fewer_variants)]) == 2
    assert "different panels (old: qa, qb x v1, v2; new: qa, qb x v1)" in capsys.readouterr().err
    assert cli.main(["audit", "diff", str(old), str(fewer_variants), "--allow-panel-change"]) == 0
    # Pairs that disappear (or appear) with every common beta unchanged still fail the gate.
    shrunk = make_artifact(tmp_path, "shrunk", {k: v for k, v in OLD_ROWS.items() if k != "p4"})
    grown = make_artifact(tmp_path, "grown", {**OLD_ROWS, "p9": ("Style", 0.1, 0.1)})
    capsys.readouterr()
    assert cli.main(["audit", "diff", str(old), str(shrunk), "--fail-on-change"]) == 1
    assert cli.main(["audit", "diff", str(old), str(grown), "--fail-on-change"]) == 1
    assert cli.main(["audit", "diff", str(old), str(old), "--fail-on-change"]) == 0


# ------------------------------------------------------------------------------ the gate checks what it is given


def _edit_csv(src: Path, dst: Path, edit) -> Path:
    """A copy of a CSV whose rows (header first, as lists of fields) ``edit`` changes in place."""
    import csv

    with open(src, newline="") as fh:
        rows = list(csv.reader(fh))
    edit(rows)
    with open(dst, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return dst


def _set(column: str, row: int, value: str):
    def edit(rows: list[list[str]]) -> None:
        rows[row + 1][rows[0].index(column)] = value
    return edit


def test_the_gate_refuses_a_corrupted_artifact_with_its_line_and_column(tmp_path, capsys):
    """A truncated last row, a blank or non-numeric beta, an infinite or out-of-envelope one and a
    pair given twice each stop `audit diff --fail-on-change` with status 2 and a message naming
    the place; before, the first two passed the gate as "0 changed"."""
    import warnings

    old = make_artifact(tmp_path, "old", OLD_ROWS)
    capsys.readouterr()
    col = audit_diff.DEFAULT_COLUMN
    cases = {
        "truncated": (lambda rows: rows[-1].__delitem__(slice(-5, None)), "line 5 has"),
        "blank": (_set(col, 3, ""), f"column '{col}' fails not_nullable at row(s) 3"),
        "text": (_set(col, 1, "abc"), f"row 1 (line 3), column '{col}': 'abc' is not a number"),
        "inf": (_set(col, 2, "inf"), f"column '{col}' fails in_range"),
        "outside": (_set(col, 2, "5.0"), "envelope [0.03, 0.3] from the default envelope"),
        "twice": (lambda rows: rows.append(list(rows[1])), "prompt_id' fails field_uniqueness"),
    }
    for name, (edit, expected) in cases.items():
        bad = _edit_csv(old, tmp_path / f"{name}.csv", edit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a numpy RuntimeWarning on inf leaked before
            status = cli.main(["audit", "diff", str(old), str(bad), "--fail-on-change"])
        err = capsys.readouterr().err
        assert status == 2, name
        assert err.startswith(f"sp2dpo: error: {bad}") and expected in err, (name, err)
    # the same file unchanged passes, so the refusals above are about the edits
    assert cli.main(["audit", "diff", str(old), str(_edit_csv(old, tmp_path / "same.csv", lambda r: None)),
                     "--fail-on-change"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_the_envelope_comes_from_the_flags_else_the_recorded_params_else_the_default(tmp_path, capsys):
    old = make_artifact(tmp_path, "old", OLD_ROWS)  # betas 0.03 .. 0.3
    capsys.readouterr()
    assert cli.main(["audit", "diff", str(old), str(old), "--beta-min", "0.05", "--beta-max", "0.3"]) == 2
    assert "envelope [0.05, 0.3] from --beta-min/--beta-max" in capsys.readouterr().err
    assert cli.main(["audit", "diff", str(old), str(old), "--beta-min", "0.01"]) == 2
    assert "--beta-min and --beta-max go together" in capsys.readouterr().err
    params = {"beta.min": 0.05, "beta.max": 0.3}
    with pytest.raises(audit_diff.AuditError, match=r"envelope \[0.05, 0.3\] from the recorded params"):
        audit_diff._parse_csv(old.read_bytes(), "old.csv", None, params)
    wide = {"beta.min": 0.01, "beta.max": 0.5}
    assert len(audit_diff._parse_csv(old.read_bytes(), "old.csv", None, wide)) == 4


def test_a_minimal_schedule_is_checked_with_the_artifacts_rules(tmp_path, capsys):
    good = tmp_path / "good.csv"
    good.write_text("prompt_id,beta_annotators_mean_ens\na,0.1\nb,0.2\n")
    moved = tmp_path / "moved.csv"
    moved.write_text("prompt_id,beta_annotators_mean_ens\na,0.1\nb,0.29\n")
    assert cli.main(["audit", "diff", str(good), str(moved), "--json", "--fail-on-change"]) == 1
    assert json.loads(capsys.readouterr().out)["n_changed"] == 1
    for name, text, expected in [
        ("blank", "prompt_id,beta_annotators_mean_ens\na,0.1\nb,\n", "fails not_nullable at row(s) 1"),
        ("twice", "prompt_id,beta_annotators_mean_ens\na,0.1\na,0.2\n", "fails field_uniqueness"),
        ("short", "prompt_id,beta_annotators_mean_ens\na,0.1\nb\n", "line 3 has 1 of 2 fields"),
        ("nobeta", "prompt_id,x\na,0.1\n", "needs a prompt_id column and at least one beta_* column"),
    ]:
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
        assert cli.main(["audit", "diff", str(good), str(path), "--fail-on-change"]) == 2, name
        assert expected in capsys.readouterr().err, name


def test_the_gates_flags_are_refused_by_name(tmp_path, capsys):
    """A non-finite threshold let a change of 0.09 -> 5.0 through the gate; conflicting formats,
    a folder, a category column as --column and a beta artifact as --pairs were tracebacks or
    silent choices."""
    old = make_artifact(tmp_path, "old", OLD_ROWS)
    new = make_artifact(tmp_path, "new", NEW_ROWS)
    capsys.readouterr()
    for argv, expected in [
        (["--threshold", "nan"], "argument --threshold: must be a finite number, got nan"),
        (["--threshold", "inf"], "argument --threshold: must be a finite number, got inf"),
        (["--threshold=-1"], "argument --threshold: must be a finite number >= 0, got -1"),
        (["--top=-1"], "argument --top: must be an integer >= 0, got -1"),
        (["--json", "--format", "markdown"], "--json and --format markdown ask for two formats"),
        (["--column", "category_qa_ens"], "--column category_qa_ens: not a beta column"),
        (["--pairs", str(old)], f"--pairs {old}: not a pairs table (no prompt column)"),
        (["--pairs", str(tmp_path)], f"--pairs {tmp_path}: is a folder"),
    ]:
        assert cli.main(["audit", "diff", str(old), str(new), "--fail-on-change", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)
    assert cli.main(["audit", "diff", str(old), str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; give a beta artifact CSV" in capsys.readouterr().err
    assert cli.main(["audit", "diff", str(old), str(new), "--fail-on-change", "--format", "json", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["n_changed"] == 1
