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
    assert "different teacher panels (old: qa, qb; new: qa, qc)" in err and "--allow-panel-change" in err
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
    """Two commits with different DVC-tracked beta artifacts (and params), compared by revision."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q", "-b", "main"], cwd=repo)
    run([DVC, "init", "-q"], cwd=repo)
    work = tmp_path / "work"
    work.mkdir()
    for i, (rows, operator) in enumerate([(OLD_ROWS, "median"), (NEW_ROWS, "mean")]):
        artifact = make_artifact(work, f"a{i}", rows)
        (repo / "beta.csv").write_bytes(artifact.read_bytes())
        (repo / "params.yaml").write_text(f"aggregate:\n  prompt_operator: {operator}\nbeta:\n  min: 0.03\n")
        run([DVC, "add", "-q", "beta.csv"], cwd=repo)
        run([*git, "add", "-A"], cwd=repo)
        run([*git, "commit", "-qm", f"artifact {i}"], cwd=repo)
    run([*git, "tag", "v-old", "HEAD~1"], cwd=repo)
    assert not (repo / "beta.csv").read_bytes() == (work / "a0.csv").read_bytes()  # workspace = new

    monkeypatch.chdir(repo)
    capsys.readouterr()
    assert cli.main(["audit", "diff", "v-old:beta.csv", "HEAD:beta.csv", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["added"], result["removed"], result["common"], result["n_changed"]) == (1, 1, 3, 1)
    assert result["category_flips"] == {"Style->Factuality": 1}
    assert result["params_diff"] == {"aggregate.prompt_operator": {"old": "median", "new": "mean"}}
    assert result["params_old_source"].endswith(":params.yaml")

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


def test_side_params_prefer_dvc_lock(tmp_path):
    params, source = audit_diff._params_at(tmp_path, None)
    assert (params, source) == ({}, "unknown")
    (tmp_path / "params.yaml").write_text("beta:\n  min: 0.01\n")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  aggregate:\n    params:\n      params.yaml:\n        beta.min: 0.03\n        aggregate:\n          prompt_operator: median\n"
    )
    params, source = audit_diff._params_at(tmp_path, None)
    assert params == {"beta.min": 0.03, "aggregate.prompt_operator": "median"}
    assert source == "workspace:dvc.lock (aggregate)"
