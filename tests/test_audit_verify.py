"""Tests for `sp2dpo verify`: the per-file-type describers on small synthetic files, the lock
comparison, the command's errors, and a whole verification of a tiny DVC project (seconds)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sp2dpo import cli
from sp2dpo.audit import describe
from sp2dpo.audit.outputs import (
    DIFFERS,
    IDENTICAL,
    OutputCheck,
    VerifyReport,
    compare_locks,
    render,
)
from tests.conftest import run
from tests.test_audit import NEW_ROWS, OLD_ROWS, make_artifact

DVC = str(Path(sys.executable).parent / "dvc")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


# ------------------------------------------------------------------------------ tables


def test_table_changed_cell_added_row_removed_column():
    old = pd.DataFrame({"prompt_id": ["a", "b", "c"], "score": [1.0, 2.0, 3.0], "label": ["x", "y", "z"],
                        "gone": [0, 0, 0]})
    new = pd.DataFrame({"prompt_id": ["a", "b", "c", "d"], "score": [1.0, 2.5, 3.0, 4.0],
                        "label": ["x", "y", "Z", "w"]})
    line = describe.describe_file("t.csv", csv_bytes(old), csv_bytes(new))
    assert line == (
        "rows 3 -> 4 (by prompt_id): 2 changed, 1 added, 0 removed; "
        "columns changed: score (max |Δ| 0.5), label; columns removed: gone"
    )


def test_table_rows_match_on_call_key_not_position_and_parquet_reads():
    old = pd.DataFrame({"call_key": ["k1", "k2", "k3"], "prompt_id": ["p", "p", "q"], "latency_s": [1.0, 2.0, 3.0]})
    new = old.iloc[[2, 0]].reset_index(drop=True).assign(latency_s=[3.0, 1.25])  # k2 gone, k1 changed
    buffers = []
    for frame in (old, new):
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        buffers.append(buf.getvalue())
    line = describe.describe_file("calls.parquet", *buffers)
    assert line == ("rows 3 -> 2 (by call_key): 1 changed, 0 added, 1 removed; "
                    "columns changed: latency_s (max |Δ| 0.25)")
    # without a key column the rows match by position, and a column added is named
    a = pd.DataFrame({"x": [1, 2]})
    b = pd.DataFrame({"x": [1, 3], "y": ["u", "v"]})
    assert describe.describe_file("plain.csv", csv_bytes(a), csv_bytes(b)) == (
        "rows 2 -> 2 (by position): 1 changed, 0 added, 0 removed; "
        "columns changed: x (max |Δ| 1); columns added: y"
    )


def test_table_key_includes_annotator_and_variant_and_sees_reordering():
    old = pd.DataFrame({"prompt_id": ["p", "p", "q"], "annotator": ["a", "b", "a"], "v": [1, 2, 3]})
    new = old.iloc[[1, 0, 2]]
    assert describe.table_key(old, new) == ["prompt_id", "annotator"]
    line = describe.describe_file("x.csv", csv_bytes(old), csv_bytes(new))
    assert line == "rows 3 -> 3 (by prompt_id+annotator): 0 changed, 0 added, 0 removed; rows reordered"


def test_beta_artifact_gets_the_audit_summary(tmp_path):
    old = make_artifact(tmp_path, "old", OLD_ROWS).read_bytes()
    new = make_artifact(tmp_path, "new", NEW_ROWS).read_bytes()
    line = describe.describe_file("data/beta/beta.csv", old, new)
    assert line.startswith(
        "beta artifact: pairs 4 -> 4 (+1 -1), 1 moved by more than 0.05, max |Δβ| 0.135 and mean "
        "|Δβ| 0.0468 (beta_annotators_mean_ens); 1 category flip (category_qa_ens); columns changed: "
    )
    assert line.endswith("columns changed: category_qa_v1, magnitude_qa_v1 (max |Δ| 0.5), "
                         "effective_gap_qa_v1 (max |Δ| 0.5), beta_qa_v1 (max |Δ| 0.135), category_qa_v2 +21 more")
    # the same bytes under another name are a plain table
    assert describe.describe_file("data/beta/other.csv", old, old) == "same bytes"


# ------------------------------------------------------------------------------ JSON, JSON lines


def test_json_nested_change_lists_dotted_paths_with_old_and_new():
    old = {"methods": {"dpo": {"win_rate": 33.3, "n": 3}}, "list": [1, 2], "gone": True}
    new = {"methods": {"dpo": {"win_rate": 50.0, "n": 3}}, "list": [1, 5, 6], "new": "x"}
    line = describe.describe_file("r.json", json.dumps(old).encode(), json.dumps(new).encode())
    assert line == ('5 keys changed: methods.dpo.win_rate: 33.3 -> 50.0, list[1]: 2 -> 5, gone removed, '
                    'list[2] added (6), new added ("x")')
    many = {f"k{i}": i for i in range(8)}
    line = describe.describe_file("m.json", json.dumps(many).encode(), json.dumps({k: -1 for k in many}).encode())
    assert line.startswith("8 keys changed: k0: 0 -> -1, ") and line.endswith(", k4: 4 -> -1 +3 more")
    assert describe.describe_file("f.json", b'{"a": 1, "b": 2}', b'{"b": 2,\n "a": 1}').startswith("same values")


def test_jsonl_records_by_key():
    def lines(records):
        return "".join(json.dumps(r) + "\n" for r in records).encode()

    old = [{"key": "a", "answer": "x", "latency_s": 1.0}, {"key": "b", "answer": "y", "latency_s": 2.0},
           {"key": "c", "answer": "z", "latency_s": 3.0}]
    new = [{"key": "b", "answer": "y", "latency_s": 2.5}, {"key": "a", "answer": "x", "latency_s": 1.0},
           {"key": "d", "answer": "w", "latency_s": 4.0}]
    line = describe.describe_file("seg-000001.jsonl", lines(old), lines(new))
    assert line == "records 3 -> 3 (by key): 1 changed, 1 added, 1 removed; fields changed: latency_s"
    # no key: by position
    line = describe.describe_file("r.jsonl", lines([{"x": 1}, {"x": 2}]), lines([{"x": 1}, {"x": 3, "y": 0}]))
    assert line == "records 2 -> 2 (by position): 1 changed, 0 added, 0 removed; fields changed: x, y"


# ------------------------------------------------------------------------------ tensors, dirs, bytes


def _safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.numpy import save

    return save(tensors, metadata=metadata)


def test_dir_with_changed_safetensors_and_added_file():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    old_files = {
        "adapter_model.safetensors": _safetensors({"a": w, "b": np.ones(2, dtype=np.float32)}),
        "adapter_config.json": b'{"r": 8}',
        "README.md": b"# adapter\n",
    }
    new_files = {
        "adapter_model.safetensors": _safetensors({"a": w + np.float32(0.125), "b": np.ones(2, dtype=np.float32)}),
        "adapter_config.json": b'{"r": 8}',
        "README.md": b"# adapter\n",
        "extra.txt": b"new\n",
    }

    def md5s(files):
        import hashlib

        return {k: hashlib.md5(v).hexdigest() for k, v in files.items()}

    line = describe.describe_dir(md5s(old_files), md5s(new_files), old_files.get, new_files.get)
    assert line == (
        "files 3 -> 4: 1 changed, 1 added, 0 removed; changed: adapter_model.safetensors "
        "[tensors 2 -> 2: 1 differ, max |Δ| 0.125]; added: extra.txt"
    )
    # a copy that REV's cache lacks is said so, not guessed
    line = describe.describe_dir(md5s(old_files), md5s(new_files), lambda rel: None, new_files.get)
    assert "adapter_model.safetensors [REV's copy not available]" in line


def test_safetensors_shapes_names_metadata_and_bfloat16():
    a = _safetensors({"w": np.zeros((2, 2), np.float32), "gone": np.zeros(1, np.float32)})
    b = _safetensors({"w": np.zeros((2, 3), np.float32), "new": np.zeros(1, np.float32)})
    assert describe.describe_file("m.safetensors", a, b) == (
        "tensors 2 -> 2: 0 differ, max |Δ| 0; shape changed: w (2, 2) -> (2, 3); added: new; removed: gone"
    )
    same = {"w": np.ones(3, np.float32)}
    assert describe.describe_file("m.safetensors", _safetensors(same, {"x": "1"}), _safetensors(same, {"x": "2"})) == (
        "tensors 1 -> 1: 0 differ, max |Δ| 0; same tensors; metadata differs"
    )
    import torch
    from safetensors.torch import save

    x = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    line = describe.describe_file("m.safetensors", save({"w": x}), save({"w": x + 0.5}))
    assert line == "tensors 1 -> 1: 1 differ, max |Δ| 0.5"


def test_other_files_bytes_and_lines():
    assert describe.describe_file("p.png", b"\x89PNG1", b"\x89PNG12") == "bytes differ (5 -> 6 bytes)"
    assert describe.describe_file("r.md", b"a\nb\nc\n", b"a\nB\nc\nd\n") == "2 lines changed (3 -> 4 lines)"
    # a file that does not parse as its suffix says falls back to bytes
    assert describe.describe_file("x.json", b"{", b"{}").startswith("bytes differ (1 -> 2 bytes); not readable as .json")


# ------------------------------------------------------------------------------ locks


def _lock(stages: dict[str, dict[str, str]]) -> dict:
    return {"schema": "2.0", "stages": {
        s: {"cmd": "x", "outs": [{"path": p, "hash": "md5", "md5": m} for p, m in outs.items()]}
        for s, outs in stages.items()
    }}


def test_compare_locks_statuses():
    expected = _lock({
        "fetch": {"data/f.parquet": "1" * 32, "reports/fetch.json": "2" * 32},
        "train": {"models/m": "3" * 32 + ".dir", "reports/t.json": "4" * 32},
        "old_stage": {"data/old.csv": "5" * 32},
    })
    actual = _lock({
        "fetch": {"data/f.parquet": "1" * 32, "reports/fetch.json": "9" * 32},
        "train": {"models/m": "3" * 32 + ".dir"},
        "new_stage": {"data/new.csv": "6" * 32},
    })
    checks = {c.path: c for c in compare_locks(expected, actual)}
    assert [c.path for c in compare_locks(expected, actual)] == sorted(checks)
    assert {p: c.status for p, c in checks.items()} == {
        "data/f.parquet": IDENTICAL, "models/m": IDENTICAL, "reports/fetch.json": DIFFERS,
        "reports/t.json": DIFFERS, "data/old.csv": DIFFERS, "data/new.csv": DIFFERS,
    }
    assert checks["reports/fetch.json"].detail == ""  # both md5s: described by verify
    assert (checks["reports/fetch.json"].expected_md5, checks["reports/fetch.json"].actual_md5) == ("2" * 32, "9" * 32)
    assert checks["reports/t.json"].detail == "missing after the re-run"
    assert checks["data/old.csv"].detail.startswith("missing after the re-run (no stage 'old_stage'")
    assert checks["data/new.csv"].detail.startswith("not recorded in REV's dvc.lock (no stage 'new_stage'")
    assert checks["data/new.csv"].stage == "new_stage"
    assert all(c.status == IDENTICAL for c in compare_locks(expected, expected))


def test_rev_copies_from_the_cache_and_what_is_missing(tmp_path):
    """REV's copy of a cached file and a directory comes from the cache by md5 (DVC 3 layout);
    a copy the cache lacks is said so; a directory listing skips what .dvcignore skips."""
    import hashlib

    from sp2dpo.audit.outputs import Versions, describe_output, workspace_listing

    clone, cache = tmp_path / "clone", tmp_path / "cache"
    (clone / "models" / "m" / "__pycache__").mkdir(parents=True)
    (clone / ".dvcignore").write_text("__pycache__/\n")
    (clone / "models" / "m" / "config.json").write_text('{"r": 16}')
    (clone / "models" / "m" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (clone / "t.json").write_text('{"a": 2}')

    def put(data: bytes, md5: str | None = None) -> str:
        md5 = md5 or hashlib.md5(data).hexdigest()
        target = cache / "files" / "md5" / md5[:2] / md5[2:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return md5

    old_config = put(b'{"r": 8}')
    listing = json.dumps([{"md5": old_config, "relpath": "config.json"}]).encode()
    dir_md5 = put(listing, "d" * 32 + ".dir")  # DVC names a .dir object by its md5 + ".dir"
    versions = Versions(clone, "0" * 40, cache, frozenset())
    assert workspace_listing(clone / "models" / "m", clone) == {
        "config.json": hashlib.md5(b'{"r": 16}').hexdigest()}
    check = OutputCheck("models/m", "train", DIFFERS, "", dir_md5, "e" * 32 + ".dir")
    assert describe_output(check, versions) == (
        "files 1 -> 1: 1 changed, 0 added, 0 removed; changed: config.json [1 key changed: r: 8 -> 16]")
    assert versions.rev_available("models/m", dir_md5)
    check = OutputCheck("t.json", "s", DIFFERS, "", put(b'{"a": 1}'), "f" * 32)
    assert describe_output(check, versions) == "1 key changed: a: 1 -> 2"
    lost = OutputCheck("t.json", "s", DIFFERS, "", "9" * 32, "f" * 32)
    assert not versions.rev_available("t.json", "9" * 32)
    assert describe_output(lost, versions) == (
        f"md5 {'9' * 32} -> {'f' * 32}; REV's copy is in neither the DVC cache nor the remote, "
        "so only the hashes compare")
    gone = OutputCheck("nowhere.json", "s", DIFFERS, "", "9" * 32, "f" * 32)
    assert describe_output(gone, versions) == "missing after the re-run"


# ------------------------------------------------------------------------------ the command


def test_cli_errors(tmp_path, capsys):
    assert cli.main(["verify", "no-such-rev-xyz"]) == 2
    assert "revision 'no-such-rev-xyz' does not exist" in capsys.readouterr().err
    assert cli.main(["verify", "--repo", str(tmp_path)]) == 2
    assert "not a git repository" in capsys.readouterr().err
    run(["git", "init", "-q", "-b", "main"], cwd=tmp_path)
    (tmp_path / "f").write_text("x")
    run([*GIT, "add", "f"], cwd=tmp_path)
    run([*GIT, "commit", "-qm", "x"], cwd=tmp_path)
    assert cli.main(["verify", "--repo", str(tmp_path)]) == 2
    assert "no dvc.lock at HEAD" in capsys.readouterr().err
    for bad in ("nan", "-1e-5", "inf"):
        assert cli.main(["verify", "--repo", str(tmp_path), f"--tolerance={bad}"]) == 2
        assert "argument --tolerance: must be a finite number" in capsys.readouterr().err
    # --workdir naming a file was a FileExistsError traceback with status 1 ("outputs differ");
    # local edits were not mentioned, though verify re-runs the commit, not them
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    run([*GIT, "add", "dvc.lock"], cwd=tmp_path)
    run([*GIT, "commit", "-qm", "lock"], cwd=tmp_path)
    (tmp_path / "f").write_text("edited")
    assert cli.main(["verify", "--repo", str(tmp_path), "--workdir", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert f"--workdir {tmp_path / 'f'}: is a file, not a folder" in err and "Traceback" not in err
    assert "the working tree has local changes; they are not verified" in err
    run([*GIT, "checkout", "f"], cwd=tmp_path)
    assert cli.main(["verify", "--repo", str(tmp_path), "--workdir", str(tmp_path / "f" / "sub")]) == 2
    err = capsys.readouterr().err
    assert "--workdir" in err and "local changes" not in err


TINY_DVC_YAML = """
stages:
  make:
    cmd: python make.py
    deps: [make.py, src]
    outs:
      - out
      - table.csv
    metrics:
      - m.json:
          cache: false
  use:
    cmd: python use.py
    deps: [use.py, table.csv]
    outs: [doubled.csv]
"""
# `make` writes a random value when params say so (out/r.json) and, in env.json, what a stage of
# the clone sees: its own code (src/sp2dpo, which the editable install does not have), MLflow
# inside its own folder, no shared call store.
TINY_MAKE = """
import json, os, pathlib, random
import sp2dpo
pathlib.Path("out").mkdir(exist_ok=True)
noisy = pathlib.Path("noisy").exists()
# perturb.json (git-ignored, so a clone never has it): the committed outputs' floats are scaled
# by `factor` and the table's label is `label`, as if another machine had made them
p = json.loads(pathlib.Path("perturb.json").read_text()) if pathlib.Path("perturb.json").exists() else {}
f, label = p.get("factor", 1.0), p.get("label", "x")
pathlib.Path("out/r.json").write_text(json.dumps({"r": random.random() if noisy else 0.5, "k": 1, "w": 0.3 * f}))
uri = os.environ.get("MLFLOW_TRACKING_URI", "")
pathlib.Path("out/env.json").write_text(json.dumps({
    "code": sp2dpo.MARK,
    "mlflow_inside": uri == "sqlite:///" + os.path.join(os.getcwd(), "mlflow.db"),
    "shared_calls": os.environ.get("SP2DPO_SHARED_CALLS"),
}))
pathlib.Path("table.csv").write_text(f"prompt_id,x,w,label\\na,1,{0.25 * f!r},{label}\\nb,2,{0.75 * f!r},y\\n")
pathlib.Path("m.json").write_text(json.dumps({"rows": 2, "mean_w": 0.5 * f}))
"""
TINY_USE = """
import pandas as pd
t = pd.read_csv("table.csv")
t.assign(x=t.x * 2, w=t.w * 2).to_csv("doubled.csv", index=False)
"""


def _baseline_env(repo: Path) -> dict[str, str]:
    """What verify gives the clone's stages, for the baseline run in the project itself."""
    env = {**os.environ, "PYTHONPATH": str(repo / "src"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SP2DPO_SHARED_CALLS", None)
    return env


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    """A two-stage DVC project with its own ``src/sp2dpo`` and a local remote, run and pushed."""
    repo = tmp_path / "proj"
    (repo / "src" / "sp2dpo").mkdir(parents=True)
    (repo / "src" / "sp2dpo" / "__init__.py").write_text('MARK = "clone code"\n')
    (repo / "dvc.yaml").write_text(TINY_DVC_YAML)
    (repo / "make.py").write_text(TINY_MAKE)
    (repo / "use.py").write_text(TINY_USE)
    (repo / ".gitignore").write_text("perturb.json\n")
    run(["git", "init", "-q", "-b", "main"], cwd=repo)
    run([DVC, "init", "-q"], cwd=repo)
    run([DVC, "remote", "add", "-d", "store", "../store"], cwd=repo)
    run([DVC, "repro", "-q"], cwd=repo, env=_baseline_env(repo))
    run([DVC, "push", "-q"], cwd=repo)
    run([*GIT, "add", "-A"], cwd=repo)
    run([*GIT, "commit", "-qm", "baseline"], cwd=repo)
    return repo


def _state(repo: Path) -> tuple[str, list[str]]:
    """The workspace's git status and every file of its DVC cache: verify changes neither."""
    status = run(["git", "status", "--porcelain", "--ignored"], cwd=repo).stdout
    cache = sorted(str(p.relative_to(repo)) for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file())
    return status, cache


@pytest.mark.slow
def test_verify_a_tiny_project(tiny_project, tmp_path, capsys, monkeypatch):
    repo = tiny_project
    work = tmp_path / "work"
    # the user's environment points elsewhere: verify must not let it reach the clone's stages
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'users-mlflow.db'}")
    monkeypatch.setenv("SP2DPO_SHARED_CALLS", str(tmp_path / "shared-calls"))
    before = _state(repo)

    assert cli.main(["verify", "--repo", str(repo), "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"identical  {p}" for p in ("doubled.csv", "m.json", "out", "table.csv")]
    assert _state(repo) == before and list(work.iterdir()) == []  # nothing written, clone removed

    # A random output: the re-run really runs (no cached copy stands in) and says what moved.
    (repo / "noisy").write_text("")
    run([DVC, "repro", "-f", "-q"], cwd=repo, env=_baseline_env(repo))
    run([DVC, "push", "-q"], cwd=repo)
    run([*GIT, "add", "-A"], cwd=repo)
    run([*GIT, "commit", "-qm", "noisy"], cwd=repo)
    before = _state(repo)
    assert cli.main(["verify", "--repo", str(repo), "--workdir", str(work), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["rev"] == run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    assert result["identical"] is False
    by_path = {o["path"]: o for o in result["outputs"]}
    assert [o["status"] for o in result["outputs"]] == [IDENTICAL, IDENTICAL, DIFFERS, IDENTICAL]
    out_dir = by_path["out"]
    assert out_dir["stage"] == "make" and out_dir["expected_md5"] != out_dir["actual_md5"]
    assert out_dir["detail"].startswith(
        "files 2 -> 2: 1 changed, 0 added, 0 removed; changed: r.json [1 key changed: r: 0."
    )
    assert _state(repo) == before and list(work.iterdir()) == []


def _commit_perturbed(repo: Path, factor: float, label: str = "x") -> None:
    """Commit outputs made as another machine would have made them (floats scaled by ``factor``,
    the table's first label ``label``); the clone's re-run makes the unperturbed ones."""
    (repo / "perturb.json").write_text(json.dumps({"factor": factor, "label": label}))
    run([DVC, "repro", "-f", "-q"], cwd=repo, env=_baseline_env(repo))
    run([DVC, "push", "-q"], cwd=repo)
    run([*GIT, "add", "-A"], cwd=repo)
    run([*GIT, "commit", "-qm", f"perturbed {factor} {label}"], cwd=repo)


@pytest.mark.slow
def test_verify_tells_float_noise_from_a_real_change(tiny_project, tmp_path, capsys):
    repo = tiny_project
    work = ["--repo", str(repo), "--workdir", str(tmp_path / "work")]

    _commit_perturbed(repo, 1 + 1e-7)  # float noise: every float off by 1e-7 relative
    assert cli.main(["verify", *work]) == 4
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "equivalent doubled.csv: largest relative deviation 1e-07 (w[0])",
        "equivalent m.json: largest relative deviation 1e-07 (mean_w)",
        "equivalent out: largest relative deviation 1e-07 (r.json: w)",
        "equivalent table.csv: largest relative deviation 1e-07 (w[0])",
    ]

    _commit_perturbed(repo, 1 + 1e-2)  # a real change
    assert cli.main(["verify", *work, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] == DIFFERS and result["tolerance"] == 1e-5
    for out in result["outputs"]:
        assert out["status"] == DIFFERS
        assert "largest relative deviation 0.0099" in out["detail"], out
    # ... that a looser tolerance accepts
    assert cli.main(["verify", *work, "--tolerance", "0.02"]) == 4
    assert capsys.readouterr().out.startswith("equivalent doubled.csv: largest relative deviation 0.0099")

    _commit_perturbed(repo, 1.0, label="changed")  # a string in a table: never noise
    assert cli.main(["verify", *work]) == 1
    by_path = {line.split()[1].rstrip(":"): line for line in capsys.readouterr().out.splitlines()}
    assert by_path["table.csv"].startswith("differs    table.csv: rows 2 -> 2 (by prompt_id): 1 changed")
    assert "label" in by_path["table.csv"]
    assert by_path["doubled.csv"].startswith("differs    doubled.csv")
    assert by_path["m.json"] == "identical  m.json"


@pytest.mark.slow
def test_verify_a_failing_rerun_exits_3_naming_the_stage(tiny_project, tmp_path, capsys):
    repo = tiny_project
    (repo / "use.py").write_text("raise SystemExit('use.py is broken')\n")
    run([*GIT, "commit", "-qam", "broken"], cwd=repo)  # the lock still records the good run
    assert cli.main(["verify", "--repo", str(repo), "--workdir", str(tmp_path / "w"), "--keep"]) == 3
    err = capsys.readouterr().err
    assert "dvc repro failed at stage 'use'" in err
    assert "use.py is broken" in err  # the tail of the log
    kept = list((tmp_path / "w").iterdir())
    assert len(kept) == 1 and (kept[0] / "repro.log").is_file() and (kept[0] / "repo" / "dvc.lock").is_file()


def test_render_text_pads_the_status():
    report = VerifyReport("f" * 40, [OutputCheck("a", "s", IDENTICAL), OutputCheck("b", "s", DIFFERS, "why")])
    assert render(report) == "identical  a\ndiffers    b: why\n"
    assert yaml.safe_load(render(report, "json"))["identical"] is False
