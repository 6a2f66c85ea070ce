"""Tests of sp2dpo/evaluate/benchmarks/mtbench.py and ``sp2dpo mtbench``: the published MT-Bench scores from
the staged GPT-4 judgments, -1 ratings dropped, FastChat's rating parser and judge prompt choice,
and input errors."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sp2dpo.core.errors import UserError
from sp2dpo.evaluate.benchmarks import mtbench as mt
from sp2dpo.evaluate.benchmarks.evalfiles import BenchmarkInputError
from tests.conftest import ROOT

JUDGMENTS = "gpt-4_single.alpaca-13b_gpt-3.5-turbo.jsonl.gz"
SP2DPO = Path(sys.executable).parent / "sp2dpo"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SP2DPO), *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=120)


@pytest.fixture(scope="module")
def mt_dir(evalsets: Path) -> Path:
    return evalsets / "mt_bench"


@pytest.fixture(scope="module")
def judgments_path(mt_dir: Path) -> Path:
    return mt_dir / "model_judgment" / JUDGMENTS


@pytest.fixture(scope="module")
def official(mt_dir: Path) -> dict:
    path = mt_dir / "official_scores.alpaca-13b_gpt-3.5-turbo.json"
    return json.loads(path.read_text(encoding="utf-8"))["models"]


@pytest.fixture(scope="module")
def questions(mt_dir: Path) -> dict[int, mt.MTQuestion]:
    return mt.read_questions(mt_dir / "question.jsonl.gz")


@pytest.fixture(scope="module")
def prompts(mt_dir: Path) -> dict[str, mt.JudgePrompt]:
    return mt.read_judge_prompts(mt_dir / "judge_prompts.jsonl")


@pytest.fixture(scope="module")
def references(mt_dir: Path) -> dict[int, tuple[str, ...]]:
    return mt.read_reference_answers(mt_dir / "reference_answer" / "gpt-4.jsonl.gz")


def assert_official(got: dict, official: dict) -> None:
    assert set(got) == set(official)
    for model, want in official.items():
        assert got[model]["turn1"] == pytest.approx(want["turn1_mean"], abs=1e-6)
        assert got[model]["turn2"] == pytest.approx(want["turn2_mean"], abs=1e-6)
        assert got[model]["score"] == pytest.approx(want["average"], abs=1e-6)
        assert got[model]["n"] == want["n_rows"] and got[model]["n_failed"] == 0
        assert abs(got[model]["score"] - want["published_mt_bench"]) <= 0.005


# ------------------------------------------------------------------------------ scores


def test_staged_judgments_reproduce_the_official_scores(judgments_path, official):
    assert_official(mt.scores(mt.read_judgments(judgments_path)), official)


def test_cli_reproduces_the_official_scores(judgments_path, official):
    proc = cli("mtbench", "--judgments", str(judgments_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert_official(json.loads(proc.stdout), official)
    text = cli("mtbench", "--judgments", str(judgments_path))
    assert text.returncode == 0, text.stderr
    assert re.search(r"^gpt-3\.5-turbo\s+8\.0750\s+7\.8125\s+7\.9437\s+160\s+0$", text.stdout, re.M)
    assert text.stdout.index("gpt-3.5-turbo") < text.stdout.index("alpaca-13b")


def test_a_failed_rating_is_dropped(judgments_path, tmp_path):
    """One alpaca-13b turn-2 rating replaced by -1: that row leaves both its turn and the pool."""
    rows = [json.loads(line) for line in gzip.open(judgments_path, "rt", encoding="utf-8")]
    target = next(r for r in rows if r["model"] == "alpaca-13b" and r["turn"] == 2)
    lost = target["score"]
    target["score"] = -1
    path = tmp_path / "judgments.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    alpaca = [r["score"] for r in rows if r["model"] == "alpaca-13b" and r["score"] != -1]
    turn1 = [r["score"] for r in rows if r["model"] == "alpaca-13b" and r["turn"] == 1]
    turn2 = [r["score"] for r in rows
             if r["model"] == "alpaca-13b" and r["turn"] == 2 and r["score"] != -1]
    got = mt.scores(mt.read_judgments(path))["alpaca-13b"]
    assert (got["n"], got["n_turn1"], got["n_turn2"], got["n_failed"]) == (159, 80, 79, 1)
    assert got["turn1"] == pytest.approx(sum(turn1) / 80)
    assert got["turn2"] == pytest.approx(sum(turn2) / 79)
    assert got["turn2"] == pytest.approx((4.0875 * 80 - lost) / 79)
    # the pooled mean, not the mean of the two turn means
    assert got["score"] == pytest.approx(sum(alpaca) / 159)
    assert got["score"] != pytest.approx((got["turn1"] + got["turn2"]) / 2, abs=1e-6)
    via_cli = json.loads(cli("mtbench", "--judgments", str(path), "--json").stdout)["alpaca-13b"]
    assert via_cli == got


# ------------------------------------------------------------------------------ rating parser


@pytest.mark.parametrize(("text", "rating"), [
    ("The answer is solid. Rating: [[7]]", 7),
    ("Rating: [[8.5]]", 8.5),
    ("I would give it [9] out of 10.", 9),
    ("[[5]] ... on second thought [[6]]", 5),
    ("see [2] and then Rating: [[3]]", 3),
    ("Rating: [[10]]", 10),
    ("no rating here", -1),
    ("Rating: [[ten]]", -1),
    (None, -1),
])
def test_parse_rating(text, rating):
    got = mt.parse_rating(text)
    assert got == rating and type(got) is type(rating)


@pytest.mark.parametrize("text", ["Rating: [[0]]", "Rating: [[11]]", "Rating: [[0.5]]",
                                  "Rating: [[10.5]]", "I give it [100]."])
def test_parse_rating_outside_1_to_10_is_a_failed_grade(text):
    assert mt.parse_rating(text) == mt.FAILED_RATING
    assert mt.parse_rating("Rating: [[1]]") == 1 and mt.parse_rating("[[10.0]]") == 10.0


# ------------------------------------------------------------------------------ judge prompts


def test_prompt_choice_matches_the_official_judgments(judgments_path, questions):
    """Every staged row names the prompt FastChat used: our choice agrees for all 80 x 2."""
    rows = mt.read_judgments(judgments_path)
    assert len(rows) == 320
    for row in rows:
        question = questions[row.question_id]
        assert mt.judge_prompt_name(question.category, row.turn) == row.judge[1]
    assert mt.NEED_REFERENCE_CATEGORIES == ("math", "reasoning", "coding")


def test_math_question_renders_with_the_reference(mt_dir, questions, prompts, references):
    question = questions[120]
    assert question.category == "math"
    answer = mt.read_answers(mt_dir / "model_answer" / "alpaca-13b.jsonl.gz")[120].turns
    reference = references[120]
    system, user = mt.render_single(question, answer, 1, reference, prompts)
    assert system == prompts["single-math-v1"].system_prompt
    assert user.startswith(prompts["single-math-v1"].prompt_template.split("{")[0])
    assert "[The Start of Reference Answer]" in user
    for piece in (question.turns[0], answer[0], reference[0]):
        assert piece in user
    assert question.turns[1] not in user and reference[1] not in user

    system2, user2 = mt.render_single(question, answer, 2, reference, prompts)
    assert system2 == prompts["single-math-v1-multi-turn"].system_prompt
    assert user2.startswith("<|The Start of Reference Answer|>")
    for piece in (*question.turns, *answer, *reference):
        assert piece in user2
    assert user2.index(reference[1]) < user2.index(answer[0]) < user2.index(answer[1])


def test_general_question_renders_without_reference(questions, prompts):
    question = questions[81]
    assert question.category not in mt.NEED_REFERENCE_CATEGORIES
    answer = ("FIRST ANSWER {not a field}", "SECOND ANSWER")
    system, user = mt.render_single(question, answer, 1, None, prompts)
    assert system == prompts["single-v1"].system_prompt
    assert question.turns[0] in user and answer[0] in user and "SECOND ANSWER" not in user
    system2, user2 = mt.render_single(question, answer, 2, ("ignored reference", "x"), prompts)
    assert system2 == prompts["single-v1-multi-turn"].system_prompt
    assert "ignored reference" not in user2 and "Reference" not in user2
    assert user2.index(question.turns[0]) < user2.index(answer[0]) < user2.index(question.turns[1])
    assert user2.index(question.turns[1]) < user2.index(answer[1])


def test_rendering_errors(questions, prompts):
    with pytest.raises(UserError, match="graded against a reference answer"):
        mt.render_single(questions[120], ("a", "b"), 1, None, prompts)
    with pytest.raises(UserError, match="turn 2 needs 2"):
        mt.render_single(questions[81], ("only one",), 2, None, prompts)
    with pytest.raises(UserError, match="judge prompt 'single-v1' missing"):
        mt.render_single(questions[81], ("a", "b"), 1, None, {})
    with pytest.raises(UserError, match="turn must be 1 or 2"):
        mt.judge_prompt_name("writing", 3)


def test_official_files_read(questions, prompts, references):
    assert len(questions) == 80 and all(len(q.turns) == 2 for q in questions.values())
    assert sorted(references) == list(range(101, 131))
    assert {q.category for qid, q in questions.items() if qid in references} == set(
        mt.NEED_REFERENCE_CATEGORIES)
    singles = {n for n, p in prompts.items() if p.type == "single"}
    assert singles == {"single-v1", "single-v1-multi-turn", "single-math-v1",
                       "single-math-v1-multi-turn"}


# ------------------------------------------------------------------------------ bad input


def test_missing_field_names_file_line_and_field(judgments_path, tmp_path):
    rows = [json.loads(line) for line in gzip.open(judgments_path, "rt", encoding="utf-8")][:5]
    del rows[2]["score"]
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchmarkInputError, match=re.escape(f"{path}:3: missing field 'score'")):
        mt.read_judgments(path)
    proc = cli("mtbench", "--judgments", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"sp2dpo: error: {path}:3: missing field 'score'\n"


@pytest.mark.parametrize(("change", "message"), [
    ({"turn": 3}, "field 'turn' must be 1 or 2"),
    ({"score": "7"}, "field 'score' must be an integer or a number"),
    ({"question_id": "81"}, "field 'question_id' must be an integer"),
])
def test_bad_judgment_values(tmp_path, change, message):
    row = {"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "score": 7,
           "turn": 1} | change
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkInputError, match=re.escape(f"{path}:1: {message}")):
        mt.read_judgments(path)


@pytest.mark.parametrize(("score", "shown"), [
    (0, "0"), (-5, "-5"), (11, "11"), (1e308, "1e+308"), (0.5, "0.5"), (10.01, "10.01"),
])
def test_judgment_score_outside_1_to_10_names_file_line_and_field(tmp_path, score, shown):
    ok = {"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "score": 7, "turn": 1}
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps(ok) + "\n" + json.dumps(ok | {"turn": 2, "score": score}) + "\n",
                    encoding="utf-8")
    message = (f"{path}:2: field 'score' must be a grade from 1 to 10 (or -1 for a failed grade), "
               f"got {shown}")
    with pytest.raises(BenchmarkInputError) as info:
        mt.read_judgments(path)
    assert str(info.value) == message


def test_judgment_scores_in_range_and_failed_grades_are_read(tmp_path):
    rows = [{"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "score": score,
             "turn": turn} for score, turn in ((1, 1), (7.5, 2))]
    rows.append(rows[0] | {"question_id": 82, "score": 10})
    rows.append(rows[0] | {"question_id": 83, "score": -1})
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    got = mt.scores(mt.read_judgments(path))["m"]
    assert got["turn1"] == pytest.approx(5.5) and got["turn2"] == pytest.approx(7.5)
    assert got["n"] == 3 and got["n_failed"] == 1


def test_duplicate_key_names_file_line_and_key(tmp_path):
    ok = '{"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "score": 7, "turn": 1}'
    twice = ok.replace('"turn": 1}', '"turn": 2, "score": 3}')
    path = tmp_path / "j.jsonl"
    path.write_text(ok + "\n" + twice + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkInputError) as info:
        mt.read_judgments(path)
    assert str(info.value) == f"{path}:2: invalid JSON: duplicate key 'score'"


def test_repeated_rating_and_unreadable_files(tmp_path):
    row = {"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "score": 7, "turn": 1}
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps(row) + "\n\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkInputError, match=re.escape(f"{path}:3: model 'm', question_id 81")):
        mt.read_judgments(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(BenchmarkInputError, match=re.escape(f"{path}:1: invalid JSON")):
        mt.read_judgments(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(BenchmarkInputError, match="no records"):
        mt.read_judgments(path)
    with pytest.raises(FileNotFoundError):
        mt.read_judgments(tmp_path / "missing.jsonl")


def test_a_failed_grade_beside_a_valid_one_is_dropped_before_the_duplicate_check(tmp_path):
    """show_result.py drops -1 rows before anything else, so a failed attempt followed by a valid
    grade of the same (model, question, turn) reads as the valid grade (it was an 'already rated'
    error); two failed attempts read too; two valid grades stay an error."""
    row = {"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "score": -1, "turn": 1}
    other = {**row, "question_id": 82, "score": 4}
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (row, {**row, "score": 8}, row, other)))
    got = mt.scores(mt.read_judgments(path))["m"]
    assert (got["score"], got["n"], got["n_failed"]) == (6.0, 2, 2)
    path.write_text("".join(json.dumps(r) + "\n" for r in ({**row, "score": 8}, row, {**row, "score": 9})))
    with pytest.raises(BenchmarkInputError, match=re.escape(f"{path}:3: model 'm', question_id 81, turn 1 already rated at {path}:1")):
        mt.read_judgments(path)
