"""reports/index.md: the real committed reports, an empty project, a complete one, links that resolve."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from sp2dpo.report import index as report_index
from tests.conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SECTIONS = [
    "## fetch",
    "## filter",
    "## annotate",
    "## aggregate",
    "## train",
    "## eval",
    "## Reproduce and compare",
]


def copy_committed_reports(dest: Path) -> Path:
    """Copy the git-tracked files under ``reports/`` into ``dest/reports``; returns ``dest``."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "reports"], cwd=ROOT, capture_output=True, check=True,
            timeout=120,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if (ROOT / rel).is_file() and Path(rel).name != "index.md":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def link_targets(markdown: str) -> list[str]:
    """Every link and image target of the page."""
    return [unquote(target) for target in LINK.findall(markdown)]


def assert_links_resolve(markdown: str, reports: Path) -> None:
    targets = link_targets(markdown)
    for target in targets:
        assert not re.match(r"[a-z]+:", target), f"absolute link {target}"
        assert (reports / target).is_file(), f"{target} does not exist under {reports}"


def assert_sections_in_order(markdown: str) -> None:
    positions = [markdown.index(f"\n{title}\n") for title in SECTIONS]
    assert positions == sorted(positions)


@pytest.fixture
def real(tmp_path: Path) -> Path:
    root = copy_committed_reports(tmp_path)
    assert (root / "reports" / "filter.json").is_file(), "reports/*.json are expected in git"
    return root


def test_real_reports_are_linked_and_summarized(real: Path):
    reports = real / "reports"
    page = report_index.build_index(real / "reports")
    assert_sections_in_order(page)
    assert_links_resolve(page, reports)

    flt = json.loads((reports / "filter.json").read_text())
    assert f"{flt['raw']} raw -> {flt['kept']} kept, {flt['dropped']} dropped" in page
    for rule, count in flt["rules"].items():
        assert f"{rule} {count}" in page

    ann = json.loads((reports / "annotate.json").read_text())
    assert f"{ann['calls']} calls on {ann['pairs']} pairs" in page
    for teacher, t in ann["per_teacher"].items():
        row = next(line for line in page.splitlines() if line.startswith(f"| {teacher} | "))
        assert f"`{t['model']}`" in row and f"ok {t['status']['ok']}" in row
        assert "latency" not in row  # wall-clock numbers are in MLflow, never in the reports

    agg = json.loads((reports / "aggregate.json").read_text())
    assert f"{agg['pairs']['kept']}/{agg['pairs']['total']} pairs kept" in page
    assert f"JMAMP beta mean {agg['beta']['beta_annotators_mean_ens']['mean']:.4f}" in page
    targets = link_targets(page)
    for png in sorted((reports / "aggregate").glob("*.png")):
        rel = f"aggregate/{png.name}"
        assert f"![{png.stem}]({rel})" in page  # embedded
        assert rel.replace(".png", ".csv") in targets  # with its data

    trained = sorted((reports / "train").glob("*.json"))
    assert trained
    for path in trained:
        run = json.loads(path.read_text())
        row = next(
            line for line in page.splitlines() if f"[{path.name}](train/{path.name})" in line
        )
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:3] == [run["student"], run["method"], f"`{run['loss']}`"]
        assert cells[3] == (
            f"`{run['beta_column']}`" if run["beta_column"] else f"global {run['beta']['min']:.3f}"
        )
        assert cells[4:6] == [f"{run['final_loss']:.4f}", str(run["global_step"])]

    if not (reports / "eval.md").exists():
        assert "- `eval.md` (results table): not produced yet" in page
    assert "dvc exp show" in page and "dvc metrics diff" in page and "dvc plots diff" in page
    assert "sp2dpo audit diff" in page


def test_nothing_produced_yet(tmp_path: Path):
    page = report_index.build_index(tmp_path)
    assert_sections_in_order(page)
    assert link_targets(page) == []
    for rel in ("fetch.json", "filter.json", "annotate.json", "aggregate.json", "eval.json"):
        assert f"- `{rel}`: not produced yet" in page
    assert "training reports (`train/<student>-<method>.json`): not produced yet" in page
    assert "## other files" not in page
    assert page == report_index.build_index(tmp_path)


def write_eval(reports: Path) -> None:
    """A complete eval output set in the layout of ``sp2dpo.report.results``."""
    (reports / "eval").mkdir(parents=True, exist_ok=True)
    per_student = {
        "student": "smollm2",
        "judge": {"model": "local:judge"},
        "methods": {"dpo": {}, "sp2dpo": {}},
    }
    (reports / "eval" / "smollm2.json").write_text(json.dumps(per_student))
    combined = {
        "smollm2": {
            "judge": "local:judge",
            "length_controlled_method": "offline",
            "methods": {
                "dpo": {"length_controlled_winrate": 5.125, "win_rate": 4.0},
                "sp2dpo": {"length_controlled_winrate": 6.5, "win_rate": None},
            },
        }
    }
    (reports / "eval.json").write_text(json.dumps(combined))
    (reports / "eval.md").write_text(
        "# Evaluation results\n\n| Method | smollm2 LC |\n|---|---:|\n| DPO (global β) | 5.13 |\n"
    )
    (reports / "eval_plot.csv").write_text("student,method,metric,label,value\n")
    (reports / "eval_plot.png").write_bytes(b"\x89PNG\r\n")


def test_complete_reports_with_eval_loss_curves_and_other_files(real: Path):
    reports = real / "reports"
    write_eval(reports)
    for method in ("dpo", "rand_beta"):  # only one run with a loss curve
        (reports / "train" / f"smollm2-{method}_loss.csv").unlink(missing_ok=True)
    (reports / "train" / "smollm2-sp2dpo_loss.csv").write_text("step,loss\n1,0.69\n")
    (reports / "notes.txt").write_text("extra")
    (reports / ".hidden").write_text("x")

    page = report_index.build_index(real / "reports")
    assert_sections_in_order(page)
    assert_links_resolve(page, reports)
    assert "[smollm2-sp2dpo_loss.csv](train/smollm2-sp2dpo_loss.csv)" in page
    dpo_row = next(line for line in page.splitlines() if "train/smollm2-dpo.json" in line)
    assert dpo_row.rstrip().endswith("| not produced yet |")
    assert "smollm2: methods dpo, sp2dpo; judge `local:judge`" in page
    assert "smollm2: dpo LC 5.12 / WR 4.00, sp2dpo LC 6.50 / WR -" in page  # 5.125 rounds half-even
    # eval.md is linked and embedded, its headings below the page's own.
    assert "[`eval.md`](eval.md)" in page and "\n### Evaluation results\n" in page
    assert "| DPO (global β) | 5.13 |" in page
    assert "![eval_plot](eval_plot.png)" in page and "(eval_plot.csv)" in page
    assert "not produced yet" in page  # the dpo and rand_beta loss curves
    other = page.split("## other files", 1)[1].split("##", 1)[0]
    assert "[`notes.txt`](notes.txt)" in other and ".hidden" not in page
    assert "index.md" not in link_targets(page)


def test_write_index_is_atomic_deterministic_and_not_self_listed(real: Path):
    path = report_index.write_index(str(real / "reports"))
    assert path == real / "reports" / "index.md"
    first = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    report_index.write_index(real / "reports")
    assert path.read_bytes() == first  # index.md itself is never listed
    assert "index.md" not in first.decode()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".index.md.")]  # no temp left
    assert not re.search(r"\d{4}-\d{2}-\d{2}", first.decode())  # no timestamps


def test_unreadable_or_unexpected_json_is_reported_not_fatal(tmp_path: Path):
    reports = tmp_path / "reports"
    (reports / "train").mkdir(parents=True)
    (reports / "filter.json").write_text("{not json")
    (reports / "fetch.json").write_text("[1, 2]")
    (reports / "train" / "smollm2-dpo.json").write_text("{")
    page = report_index.build_index(reports)
    assert "- [`filter.json`](filter.json): unreadable: JSONDecodeError" in page
    assert "- [`fetch.json`](fetch.json): unexpected content (not a JSON object)" in page
    assert "unreadable: JSONDecodeError" in next(
        line for line in page.splitlines() if "smollm2-dpo.json" in line
    )
    assert_links_resolve(page, reports)


def test_sp2dpo_report_writes_the_index_and_the_table(real: Path, capsys):
    from sp2dpo import cli

    reports = real / "reports"
    (reports / "eval.md").unlink()
    assert cli.main(["report", "--reports", str(reports)]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == str(reports / "index.md")
    assert (reports / "eval.md").is_file()
    assert (reports / "index.md").read_text() == report_index.build_index(reports)
