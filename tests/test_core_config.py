"""Tests for sp2dpo.core.config: the real params.yaml loads; typos and bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sp2dpo.core import config
from sp2dpo.core.config import ConfigError
from tests.conftest import compose_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_real_params_file_loads_every_section():
    params = config.load(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(config.SECTIONS)
    assert params.data.source == "local"
    assert params.data.revision == "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85"
    assert params.filter.drop_identical is False
    assert params.flat()["data.split"] == "train_prefs"


def test_unknown_key_lists_allowed_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) limt; allowed: source, path"):
        config.load(write(tmp_path, {"data": {"limt": 5}}))


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section\(s\) dat"):
        config.load(write(tmp_path, {"dat": {}}))


def test_literal_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"data.source: 'web' is not allowed; choose one of 'local', 'hub'"):
        config.load(write(tmp_path, {"data": {"source": "web"}}))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"data": {"limit": 0}}, "data.limit must be a positive integer"),
        ({"data": {"limit": "ten"}}, r"data.limit: expected an integer, got 'ten'"),
        ({"data": {"limit": True}}, "expected an integer"),
        ({"filter": {"drop_identical": "yes"}}, "filter.drop_identical: expected true or false"),
        ({"data": {"source": "hub", "revision": "main"}}, "full 40-character commit hash"),
    ],
)
def test_bad_values(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, section))


def test_sections_argument_skips_other_sections(tmp_path):
    path = write(tmp_path, {"data": {"limit": 3}, "filter": {"drop_identical": True}})
    params = config.load(path, sections=["data"])
    assert params.data.limit == 3
    assert params.filter.drop_identical is False  # not read: defaults


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(bad)


def test_flatten_nested_lists():
    flat = config.flatten({"a": {"b": 1, "c": [{"id": "x"}, {"id": "y"}]}, "d": [1, 2]})
    assert flat == {"a.b": 1, "a.c.0.id": "x", "a.c.1.id": "y", "d": [1, 2]}


def test_every_field_is_documented():
    for name, cls in config.SECTIONS.items():
        for key, _default, help_text in config.describe(cls):
            assert help_text, f"{name}.{key} has no help text"


def test_generated_params_reference_is_in_sync():
    """docs/params.md is generated from the dataclasses; regenerate with
    `sp2dpo params docs -o docs/params.md`."""
    assert (ROOT / "docs" / "params.md").read_text() == config.reference_markdown()


def _keys(cls: type, prefix: str) -> set[str]:
    """Dotted keys of a section's fields. Nested entries shaped like another section (the judge
    is a teacher entry, its decoding a `decoding` section) are compared by value only."""
    import dataclasses
    import typing

    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if tp in (config.TeacherConfig, config.DecodingConfig):
            keys.add(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(tp):
            keys |= _keys(tp, f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def _lookup(mapping: dict, dotted: str) -> bool:
    node = mapping
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_dataclass_defaults_are_params_yaml_key_for_key():
    """What docs/params.md calls the default is what runs: params.yaml sets every key of every
    section, to exactly the dataclass default (a key left out of a params file means the same)."""
    params = config.load(ROOT / "params.yaml")
    defaults = config.defaults()
    for name in config.SECTIONS:
        assert params.sections[name] == defaults.sections[name], name
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, cls in config.SECTIONS.items():
        if name in config.LIST_SECTIONS:
            continue
        missing = sorted(k for k in _keys(cls, f"{name}.") if not _lookup(raw, k))
        assert missing == [], f"params.yaml leaves out {missing}"


def test_a_changed_default_is_caught():
    """The comparison above can fail: a default that drifts from params.yaml is a difference."""
    import dataclasses

    drifted = dataclasses.replace(config.defaults().train, limit=6)
    assert drifted != config.load(ROOT / "params.yaml").train


def test_params_yaml_is_in_the_form_dvc_exp_run_writes(tmp_path):
    """With Hydra composition on, every `dvc exp run` rewrites params.yaml from itself plus the
    overrides: the committed file is already in that form, so a run without overrides leaves it
    byte-identical (and its comments live in docs/params.md and profiles/, not here)."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT), None, "params", str(tmp_path / "plugins"), [])
    assert out.read_bytes() == (ROOT / "params.yaml").read_bytes()
    dvc_config = (ROOT / ".dvc" / "config").read_text()
    assert "[hydra]" in dvc_config and "config_name = params" in dvc_config


@pytest.mark.parametrize(
    "profile",
    sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")),
)
def test_every_profile_composes_into_valid_params(tmp_path, profile):
    params = compose_params(tmp_path, [f"+profiles={profile}"])
    text = (ROOT / "profiles" / f"{profile}.yaml").read_text()
    assert text.startswith("# @package _global_\n"), "a profile overlays params.yaml at its top level"
    assert params.sections != config.defaults().sections  # it changes something


def test_paper_gpu_profile_is_the_whole_paper_run(tmp_path):
    params = compose_params(tmp_path, ["+profiles=paper-gpu"])
    assert (params.data.source, params.data.limit, params.annotate.max_pairs) == ("hub", None, None)
    assert [t.id for t in params.teachers] == ["qwen", "openai", "gemini"]
    assert params.matrix.students == ["qwen3_4b", "gemma3_4b", "mistral7b", "llama31_8b"]
    assert params.matrix.methods == ["dpo_b01", "dpo_b03", "dpo_b05", "sp2dpo", "rand_beta"]
    assert params.train.launcher.startswith("accelerate launch") and params.train.precision == "bf16"
    assert params.eval.judge.model == "gpt-4-1106-preview" and not params.eval.allow_teacher_judge
    assert (params.eval.alpaca_eval.limit, params.eval.ifeval.limit) == (None, None)
    assert params.eval.generation.max_new_tokens == 2048
    # Overrides after the profile win, as on the command line.
    params = compose_params(tmp_path, ["+profiles=paper-gpu", "matrix.students=[llama31_8b]"])
    assert params.matrix.students == ["llama31_8b"]


def test_matrix_names_must_be_configured(tmp_path):
    with pytest.raises(ConfigError, match=r"matrix.methods: simpo2 not in train.methods"):
        config.load(write(tmp_path, {"matrix": {"methods": ["dpo", "simpo2"]}}))
    with pytest.raises(ConfigError, match=r"matrix.students must name at least one"):
        config.load(write(tmp_path, {"matrix": {"students": []}}))
    assert config.load(write(tmp_path, {"matrix": {"methods": ["sp2dpo"]}})).matrix.methods == ["sp2dpo"]


def test_infinite_envelope_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="finite 0 < min < max"):
        config.load(write(tmp_path, {"beta": {"max": float("inf")}}))


@pytest.mark.parametrize(
    ("decoding", "message"),
    [
        ({"max_retries": -1}, r"decoding.max_retries must be >= 0, got -1"),
        ({"timeout_s": 0}, r"decoding.timeout_s must be > 0, got 0"),
        ({"backoff_base_s": -2}, r"decoding.backoff_base_s must be >= 0, got -2"),
    ],
)
def test_decoding_errors_name_the_key(tmp_path, decoding, message):
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, {"decoding": decoding}))


def test_official_lc_files_must_live_where_dvc_tracks_them(tmp_path):
    bad = {"eval": {"alpaca_eval": {"instruction_difficulty": "/downloads/d.csv", "df_gamed": "/downloads/g.csv"}}}
    with pytest.raises(ConfigError, match=r"instruction_difficulty: put the file under data/evalsets/"):
        config.load(write(tmp_path, bad))
    good = {"eval": {"alpaca_eval": {"instruction_difficulty": "data/evalsets/alpaca_eval/d.csv",
                                     "df_gamed": "data/evalsets/alpaca_eval/g.csv"}}}
    assert config.load(write(tmp_path, good)).eval.alpaca_eval.df_gamed.endswith("g.csv")


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    """PyYAML keeps the last of two equal keys; a second `limit:` would have won silently."""
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  limit: 3\n  limit: 5\n")
    with pytest.raises(ConfigError, match=r"params.yaml:3:3: invalid YAML: key 'limit' given twice \(first on line 2\)"):
        config.load(path)
    path.write_text("data: {limit: 3}\nfilter: {}\ndata: {limit: 4}\n")
    with pytest.raises(ConfigError, match="key 'data' given twice"):
        config.load(path)
    with pytest.raises(ConfigError, match="is a folder, not a params file"):
        config.load(tmp_path)
