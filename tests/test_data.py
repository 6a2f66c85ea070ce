"""Tests for sp2dpo.data: fetch normalisation, exact filter counts, bad input, the Hub code path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from sp2dpo import data
from sp2dpo.core import artifacts
from sp2dpo.core.config import DataConfig, FilterConfig
from sp2dpo.core.schemas import PAIR_COLUMNS, FilteredPairsTable, PairsTable


def hf_record(prompt: str, chosen: str, rejected: str, **extra) -> dict:
    """A record in the HuggingFaceH4/ultrafeedback_binarized layout."""
    user = {"content": prompt, "role": "user"}
    return {
        "prompt": prompt,
        "prompt_id": data.prompt_id_of(prompt),
        "chosen": [user, {"content": chosen, "role": "assistant"}],
        "rejected": [user, {"content": rejected, "role": "assistant"}],
        "messages": [user, {"content": chosen, "role": "assistant"}],
        "score_chosen": 8.0,
        "score_rejected": 5.5,
        **extra,
    }


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------------------
# the shipped H4 sample: counts checked by hand
# ------------------------------------------------------------------------------------------


def _hand_counts(path: Path) -> dict:
    """Count the sample's defects directly from the raw JSON lines, independent of sp2dpo."""
    seen, dup, empty_c, empty_r, empty_p, identical, rows = set(), 0, 0, 0, 0, 0, 0
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            rows += 1
            dup += rec["prompt_id"] in seen
            seen.add(rec["prompt_id"])
            chosen = rec["chosen"][-1]["content"]
            rejected = rec["rejected"][-1]["content"]
            empty_p += not rec["prompt"].strip()
            empty_c += not chosen.strip()
            empty_r += not rejected.strip()
            identical += chosen == rejected
    return {"rows": rows, "dup": dup, "empty_c": empty_c, "empty_r": empty_r, "empty_p": empty_p, "identical": identical}


def test_filter_counts_on_h4_sample_are_exact(h4_sample):
    hand = _hand_counts(h4_sample)
    # docs/data.md: 0 duplicates, empty chosen at row 50, empty rejected at row 424,
    # identical replies at row 295.
    assert hand == {"rows": 500, "dup": 0, "empty_c": 1, "empty_r": 1, "empty_p": 0, "identical": 1}

    fetched = data.fetch(DataConfig(path=str(h4_sample)))
    kept, report = data.filter_pairs(fetched, FilterConfig())
    assert report == {
        "raw": 500,
        "rules": {"duplicate_prompt_id": 0, "empty_prompt": 0, "empty_chosen": 1, "empty_rejected": 1},
        "dropped": 2,
        "kept": 498,
        "drop_identical": False,
        "identical_replies_seen": 1,
    }
    assert len(kept) == 498
    dropped_ids = set(fetched["prompt_id"]) - set(kept["prompt_id"])
    assert dropped_ids == {fetched.loc[50, "prompt_id"], fetched.loc[424, "prompt_id"]}
    FilteredPairsTable.validate(kept)

    kept2, report2 = data.filter_pairs(fetched, FilterConfig(drop_identical=True))
    assert report2["rules"]["identical_replies"] == 1
    assert (report2["dropped"], report2["kept"]) == (3, 497)
    assert fetched.loc[295, "prompt_id"] not in set(kept2["prompt_id"])


def test_fetch_sample_is_canonical(h4_sample):
    frame = data.fetch(DataConfig(path=str(h4_sample)))
    assert list(frame.columns) == PAIR_COLUMNS
    PairsTable.validate(frame)
    first = json.loads(gzip.open(h4_sample, "rt").readline())
    assert frame.loc[0, "prompt_id"] == first["prompt_id"] == data.prompt_id_of(first["prompt"])
    assert frame.loc[0, "chosen"] == first["chosen"][1]["content"]
    assert frame.loc[0, "rejected"] == first["rejected"][1]["content"]
    assert frame["score_chosen"].isna().all()  # the H4 sample carries no scores
    assert frame.loc[0, "source"] == f"local:{h4_sample.name}"


# ------------------------------------------------------------------------------------------
# rules on synthetic data
# ------------------------------------------------------------------------------------------


def test_rows_hit_by_several_rules_are_counted_once():
    rows = [
        ("a", "p1", "good", "bad"),
        ("a", "p1", "   ", "bad"),  # duplicate AND empty chosen
        ("b", "p2", "\n\t", ""),  # empty chosen AND empty rejected
        ("c", " ", "x", "y"),  # empty prompt
        ("d", "p4", "same", "same"),  # identical replies
        ("e", "p5", "fine", "also fine"),
    ]
    frame = data.to_pairs_frame(
        {"prompt_id": i, "prompt": p, "chosen": c, "rejected": r, "score_chosen": None,
         "score_rejected": None, "source": "t"} for i, p, c, r in rows
    )
    kept, report = data.filter_pairs(frame, FilterConfig())
    assert report["rules"] == {"duplicate_prompt_id": 1, "empty_prompt": 1, "empty_chosen": 2, "empty_rejected": 1}
    assert report["dropped"] == 3  # rows 1, 2, 3: five rule hits, three rows
    assert kept["prompt_id"].tolist() == ["a", "d", "e"]  # the first "a" is kept, order kept

    kept, report = data.filter_pairs(frame, FilterConfig(drop_identical=True))
    assert report["dropped"] == 4
    assert kept["prompt_id"].tolist() == ["a", "e"]


def test_plain_string_replies_and_missing_prompt_id(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "score_chosen": 9, "score_rejected": 2.5},
    ])
    frame = data.read_snapshot(path)
    assert frame.loc[0, "prompt_id"] == data.prompt_id_of("Say hi")
    assert (frame.loc[0, "chosen"], frame.loc[0, "rejected"]) == ("Hi!", "No.")
    assert (frame.loc[0, "score_chosen"], frame.loc[0, "score_rejected"]) == (9.0, 2.5)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet"])
def test_every_snapshot_format_reads_the_same(tmp_path, suffix):
    records = [hf_record(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(3)]
    path = tmp_path / f"snap{suffix}"
    if suffix == ".parquet":
        pd.DataFrame(records).to_parquet(path)
    else:
        text = "".join(json.dumps(r) + "\n" for r in records) if ".jsonl" in suffix else json.dumps(records)
        if suffix.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    frame = data.read_snapshot(path)
    assert frame["chosen"].tolist() == ["good 0", "good 1", "good 2"]
    assert frame["score_rejected"].tolist() == [5.5] * 3


def test_subsample_is_seeded_and_order_stable():
    frame = data.to_pairs_frame(
        {"prompt_id": f"id{i:03d}", "prompt": "p", "chosen": "c", "rejected": "r",
         "score_chosen": None, "score_rejected": None, "source": "s"} for i in range(200)
    )
    a = data.subsample(frame, 50, seed=42)
    b = data.subsample(frame, 50, seed=42)
    c = data.subsample(frame, 50, seed=7)
    assert a["prompt_id"].tolist() == b["prompt_id"].tolist()
    assert a["prompt_id"].tolist() == sorted(a["prompt_id"])  # original order kept
    assert a["prompt_id"].tolist() != c["prompt_id"].tolist()
    assert len(data.subsample(frame, 500, seed=42)) == 200


# ------------------------------------------------------------------------------------------
# bad input: file, line/row and field named; nothing written
# ------------------------------------------------------------------------------------------

GOOD = hf_record("fine prompt", "yes", "no")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps(GOOD), "{not json", json.dumps(GOOD)], r"bad\.jsonl:2: invalid JSON: Expecting property name"),
        ([json.dumps(GOOD), json.dumps({k: v for k, v in GOOD.items() if k != "rejected"})],
         r"bad\.jsonl:2: missing required field 'rejected'"),
        ([json.dumps({**GOOD, "chosen": 42})], r"bad\.jsonl:1: field 'chosen' must be a string or a list"),
        ([json.dumps({**GOOD, "rejected": [{"role": "user", "content": "q"}]})],
         r"bad\.jsonl:1: field 'rejected' has no assistant message"),
        ([json.dumps({**GOOD, "chosen": [{"role": "assistant", "content": None}]})],
         r"bad\.jsonl:1: field 'chosen' message 0 must be an object with a string 'content'"),
        ([json.dumps({**GOOD, "prompt": ["a"]})], r"bad\.jsonl:1: field 'prompt' must be a string"),
        ([json.dumps({**GOOD, "score_chosen": "high"})], r"bad\.jsonl:1: field 'score_chosen' must be a number or null"),
        (["[1, 2]"], r"bad\.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_snapshot_names_file_line_and_field(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "fetched.parquet"
    with pytest.raises(data.DataError, match=message):
        data.run_fetch(DataConfig(path=str(path)), data.FetchPaths(out=out, report=tmp_path / "out" / "fetch.json"))
    assert not out.exists() and not (tmp_path / "out" / "fetch.json").exists()
    assert not list((tmp_path / "out").glob("*.tmp")) if (tmp_path / "out").exists() else True


def test_json_list_errors_name_the_row(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "rejected": None}]))
    with pytest.raises(data.DataError, match=r"bad\.json row 1: missing required field 'rejected'"):
        data.read_snapshot(path)


@pytest.mark.parametrize("name", ["dup.jsonl", "dup.jsonl.gz", "dup.json", "dup.json.gz"])
def test_duplicate_json_key_names_file_line_and_key(tmp_path, name):
    good = json.dumps(GOOD)
    twice = good[:-1] + ', "chosen": "other"}'
    text = (f"[{good},\n{twice}]" if not name.startswith("dup.jsonl") else f"{good}\n{twice}\n")
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    with pytest.raises(data.DataError) as info:
        data.read_snapshot(path)
    where = f"{path}:2" if name.startswith("dup.jsonl") else str(path)
    assert str(info.value) == f"{where}: invalid JSON: duplicate key 'chosen'"


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "pairs.xlsx").write_text("x")
    with pytest.raises(data.DataError, match=r"pairs\.xlsx: unknown snapshot type; expected one of \.jsonl"):
        data.read_snapshot(tmp_path / "pairs.xlsx")
    with pytest.raises(data.DataError, match="snapshot file not found"):
        data.read_snapshot(tmp_path / "missing.jsonl")


def test_failed_fetch_keeps_the_previous_output(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    out, report = tmp_path / "fetched.parquet", tmp_path / "fetch.json"
    data.run_fetch(DataConfig(path=str(good)), data.FetchPaths(out=out, report=report))
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(data.DataError):
        data.run_fetch(DataConfig(path=str(bad)), data.FetchPaths(out=out, report=report))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "fetch.json", "fetched.parquet", "good.jsonl"]


def test_duplicate_ids_stop_where_uniqueness_is_required(tmp_path):
    """Raw duplicates are counted and dropped by filter (the paper's rule); a *filtered* pairs
    table with a duplicate id (e.g. one a user hands to annotate) is rejected, naming the file,
    the field and the rows."""
    frame = data.to_pairs_frame(
        {"prompt_id": i, "prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": None,
         "score_rejected": None, "source": "s"} for i in ["x", "y", "x"]
    )
    path = tmp_path / "filtered.parquet"
    frame.to_parquet(path)
    with pytest.raises(artifacts.SchemaViolation, match=r"(?s)filtered\.parquet.*column 'prompt_id' fails field_uniqueness at row\(s\) 0 \('x'\), 2 \('x'\)"):
        artifacts.read_table(path, FilteredPairsTable)


# ------------------------------------------------------------------------------------------
# the Hub code path, offline
# ------------------------------------------------------------------------------------------


def test_hub_path_reads_a_local_snapshot_in_hub_layout(tmp_path, h4_sample):
    """`datasets.load_dataset` at a pinned revision, pointed at a folder laid out like the Hub repo."""
    repo = tmp_path / "ultrafeedback_binarized"
    (repo / "data").mkdir(parents=True)
    records = [json.loads(line) for line in gzip.open(h4_sample, "rt")][:40]
    pd.DataFrame(records).to_parquet(repo / "data" / "train_prefs-00000-of-00001.parquet")
    pd.DataFrame(records[:5]).to_parquet(repo / "data" / "test_prefs-00000-of-00001.parquet")
    rev = "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85"
    cfg = DataConfig(source="hub", hub_id=str(repo), revision=rev, split="train_prefs", limit=None)
    frame = data.fetch(cfg)
    local = data.read_snapshot(h4_sample).head(40)
    assert len(frame) == 40
    pd.testing.assert_frame_equal(frame.drop(columns="source"), local.drop(columns="source"))
    assert frame.loc[0, "source"] == f"hub:{repo}@{rev}:train_prefs"


def test_unreachable_hub_fails_in_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty cache: nothing to fall back on
    cfg = DataConfig(source="hub", hub_id="HuggingFaceH4/ultrafeedback_binarized")
    with pytest.raises(data.HubUnavailableError) as info:
        data.fetch(cfg)
    message = str(info.value)
    assert "HuggingFaceH4/ultrafeedback_binarized@3949bf5f8c17" in message
    assert "data.source: local" in message and "\n" not in message


def test_truncated_gzip_snapshot_is_one_clear_error(tmp_path, h4_sample, capsys):
    """A download cut short: DataError naming the file and how far it was read, no traceback."""
    from sp2dpo import cli

    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(h4_sample.read_bytes()[:60_000])
    with pytest.raises(data.DataError, match=r"cut\.jsonl\.gz: cannot read: truncated or corrupt gzip data after line \d+"):
        data.read_snapshot(cut)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  path: {cut}\n")
    assert cli.main(["fetch", "--params", str(params), "--out", str(tmp_path / "f.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sp2dpo: error: ") and "Traceback" not in err and "truncated" in err
    assert not (tmp_path / "f.parquet").exists()


def test_an_empty_snapshot_or_nothing_left_after_filter_stops_the_stage(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(data.DataError, match=r"empty\.jsonl: no records"):
        data.run_fetch(DataConfig(path=str(empty)), data.FetchPaths(tmp_path / "f.parquet", tmp_path / "f.json"))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{**GOOD, "chosen": "   "}])
    data.run_fetch(DataConfig(path=str(blank)), data.FetchPaths(tmp_path / "f.parquet", tmp_path / "f.json"))
    with pytest.raises(data.DataError, match=r"no pair left after filtering \(1 raw; .*empty_chosen 1"):
        data.run_filter(FilterConfig(), data.FilterPaths(tmp_path / "f.parquet", tmp_path / "g.parquet",
                                                         tmp_path / "g.json"))
    assert not (tmp_path / "g.parquet").exists()
