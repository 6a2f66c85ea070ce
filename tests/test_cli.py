"""Tests for the `sp2dpo` command: subcommands call the library; errors are one clear line."""

from __future__ import annotations

import json

import yaml

from sp2dpo import cli


def test_fetch_then_filter_through_the_cli(tmp_path, h4_sample, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"path": str(h4_sample), "limit": 120}}))
    fetched, filtered = tmp_path / "fetched.parquet", tmp_path / "filtered.parquet"
    assert cli.main(["fetch", "--params", str(params), "--out", str(fetched),
                     "--report", str(tmp_path / "fetch.json")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 120
    assert cli.main(["filter", "--params", str(params), "--pairs", str(fetched), "--out", str(filtered),
                     "--report", str(tmp_path / "filter.json")]) == 0
    report = json.loads((tmp_path / "filter.json").read_text())
    assert report["raw"] == 120 and report["kept"] == 120 - report["dropped"]


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "nope.jsonl")}}))
    assert cli.main(["fetch", "--params", str(params), "--out", str(tmp_path / "o.parquet"),
                     "--report", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sp2dpo: error: ") and "nope.jsonl: snapshot file not found" in err
    assert "Traceback" not in err

    params.write_text(yaml.safe_dump({"data": {"limmit": 3}}))
    assert cli.main(["fetch", "--params", str(params)]) == 2
    assert "unknown key(s) limmit" in capsys.readouterr().err


def test_side_reports_follow_out_and_never_touch_the_pipelines_reports(tmp_path, monkeypatch, capsys):
    """`sp2dpo aggregate --out elsewhere/x.csv` run from a project root writes its reports beside
    the artifact; the tracked reports/ are left as they were."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    rows = [
        {"prompt_id": f"p{i}", "annotator": a, "variant": v, "category": "Style",
         "magnitude": 0.5, "confidence": 0.5, "status": "ok"}
        for i in range(3) for a in ("a", "b") for v in ("v1", "v2")
    ]
    pd.DataFrame(rows).to_csv("calls.csv", index=False)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "aggregate.json").write_text("tracked")
    assert cli.main(["aggregate", "--calls", "calls.csv", "--out", "elsewhere/x.csv"]) == 0
    assert (tmp_path / "reports" / "aggregate.json").read_text() == "tracked"
    assert (tmp_path / "elsewhere" / "x.csv").is_file()
    assert json.loads((tmp_path / "elsewhere" / "aggregate.json").read_text())["pairs"]["kept"] == 3
    assert len(list((tmp_path / "elsewhere" / "aggregate").glob("*.png"))) == 5
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["aggregate.json"]
    capsys.readouterr()


def test_stage_subcommands_take_their_paths_as_flags():
    parser = cli.make_parser()
    train = parser.parse_args(["train", "smollm2", "sp2dpo", "--pairs", "p.parquet", "--beta", "b.csv",
                               "--out", "runs/x", "--report", "r.json", "--curve", "c.csv"])
    assert (train.pairs, train.beta, train.out, train.report, train.curve) == (
        "p.parquet", "b.csv", "runs/x", "r.json", "c.csv")
    annotate = parser.parse_args(["annotate"])
    assert (annotate.pairs, annotate.out) == ("data/pairs/filtered.parquet", "data/annotate/calls.parquet")
    evaluate = parser.parse_args(["eval", "smollm2", "--adapters", "m", "--out", "o", "--report", "r.json"])
    assert (evaluate.adapters, evaluate.out, evaluate.report) == ("m", "o", "r.json")
    assert parser.parse_args(["report", "--reports", "x"]).reports == "x"


def _subcommands(parser, prefix=()):
    """Every subcommand path of the parser (``("audit", "diff")``, ...), depth first."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_help_of_the_command_and_every_subcommand_exits_0(capsys):
    """`sp2dpo --help` lists every subcommand's one-line help (formatted with %-expansion, so a
    stray percent sign there crashed the top-level help only); each subcommand's own page too."""
    paths = [(), *_subcommands(cli.make_parser())]
    assert len(paths) > 20 and ("audit", "diff") in paths and ("sweep", "select") in paths
    for path in paths:
        for flag in ("--help", "-h"):
            assert cli.main([*path, flag]) == 0, path
            out = capsys.readouterr().out
            assert out.startswith("usage: sp2dpo"), path
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("arenahard", "prefeval", "verify", "numerics"))


def test_stage_outputs_that_cannot_be_written_are_refused_before_the_stage_runs(tmp_path, capsys):
    """An output that is a folder, lies under a file or is the stage's own input: one line with
    status 2 before any work, and the input left as it was (before: a traceback at the end of the
    stage, or the input overwritten)."""
    pairs = tmp_path / "pairs.parquet"
    pairs.write_bytes(b"not really parquet")
    cases = [
        (["fetch", "--out", str(tmp_path)], f"--out {tmp_path}: is a folder; give a file path"),
        (["filter", "--pairs", str(pairs), "--out", str(pairs)],
         f"--out {pairs}: is the input {pairs}; write elsewhere"),
        (["aggregate", "--calls", str(pairs), "--out", str(pairs / "beta.csv")],
         f"--out {pairs / 'beta.csv'}: cannot be created, {pairs} is a file"),
        (["annotate", "--pairs", str(pairs), "--out", str(tmp_path / "c.parquet"), "--report",
          str(tmp_path / "c.parquet")], "--report and --out are the same file"),
    ]
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"sp2dpo: error: {expected}\n" or expected in err, (argv, err)
    assert pairs.read_bytes() == b"not really parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.parquet"]


def test_numeric_flags_are_refused_by_name(tmp_path, capsys):
    """`--seed -1` reached numpy ("expected non-negative integer", no flag named), `--rounds` of
    1e20 as digits ran out of memory, `judge --limit -2` was a slice bound and `--limit 0` was
    accepted by judge but refused by ifeval and prefeval: each is now argparse's one line naming
    the flag, status 2, before anything is read."""
    some = str(tmp_path / "x.jsonl")
    cases = [
        (["arenahard", "--battles", some, "--rounds", "1e20"], "argument --rounds: must be an integer from 0 to 1,000,000, got '1e20'"),
        (["arenahard", "--battles", some, "--rounds", "10" * 10], "argument --rounds: must be an integer from 0 to 1,000,000"),
        (["arenahard", "--battles", some, "--seed=-1"], "argument --seed: must be an integer from 0 to 4294967295, got -1"),
        (["arenahard", "--judgments", some, "--weight", "0"], "argument --weight: must be a positive integer, got 0"),
        (["judge", "--outputs", some, "--out", some + ".out", "--limit=-2"], "argument --limit: must be a positive integer, got -2"),
        (["judge", "--outputs", some, "--out", some + ".out", "--limit", "0"], "argument --limit: must be a positive integer, got 0"),
        (["ifeval", "--responses", some, "--limit", "0"], "argument --limit: must be a positive integer, got 0"),
        (["prefeval", "--model", "m", "--pairs", some, "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
        (["prefeval", "--model", "m", "--pairs", some, "--seed", "x"], "argument --seed: must be an integer from 0 to 4294967295, got 'x'"),
        (["aggregate", "--beta-min", "nan"], "argument --beta-min: must be a finite number, got nan"),
        (["verify", "--tolerance", "inf"], "argument --tolerance: must be a finite number, got inf"),
        (["sweep", "run", "-j", "0"], "argument -j/--jobs: must be a positive integer, got 0"),
    ]
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)


def test_a_folder_given_as_an_input_file_is_named_as_a_folder(tmp_path, capsys):
    """Before: "no such file" for a folder that exists."""
    for argv in (["mtbench", "--judgments", str(tmp_path)], ["arenahard", "--battles", str(tmp_path)],
                 ["winrate", "--annotations", str(tmp_path)], ["params", "check", "--params", str(tmp_path)]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"sp2dpo: error: {tmp_path}: is a folder"), (argv, err)
