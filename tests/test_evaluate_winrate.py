"""Tests of sp2dpo/evaluate/benchmarks/winrate.py: leaderboard metrics, the LC GLM and ``sp2dpo winrate``."""

from __future__ import annotations

import copy
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from sp2dpo import cli
from sp2dpo.evaluate.benchmarks import alpaca, winrate
from sp2dpo.evaluate.benchmarks import lc as lc_glm
from sp2dpo.evaluate.benchmarks.lc import LENGTH_CONTROLLED_V1, OFFLINE_ESTIMATE, OfficialLCInputs

MODELS = ["alpaca-7b", "gpt-3.5-turbo-1106", "OpenHermes-2.5-Mistral-7B", "gpt4_gamed"]
#: The pinned output keys of `sp2dpo winrate`.
KEYS = {
    "win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
    "discrete_win_rate", "avg_length", "length_controlled_winrate", "length_controlled_method",
    "lc_is_offline_estimate",
}
#: Offline LC estimates of the staged models (recorded; see the module docstring of winrate).
OFFLINE_LC = {
    "alpaca-7b": 19.549396078011164,
    "gpt-3.5-turbo-1106": 37.773728433974604,
    "OpenHermes-2.5-Mistral-7B": 20.64798225222053,
    "gpt4_gamed": 39.233700093203,
}


def annotations_path(evalsets: Path, model: str) -> Path:
    return (
        evalsets / "alpaca_eval" / "annotations"
        / f"{model}.weighted_alpaca_eval_gpt4_turbo.annotations.json.gz"
    )


@pytest.fixture(scope="module")
def leaderboard(evalsets: Path) -> pd.DataFrame:
    return pd.read_csv(
        evalsets / "alpaca_eval" / "leaderboard" / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
        index_col=0,
    )


@pytest.fixture(scope="module")
def reference_path(evalsets: Path) -> Path:
    return evalsets / "alpaca_eval" / "gpt4_1106_preview.json.gz"


@pytest.fixture(scope="module")
def frames(evalsets: Path) -> dict[str, pd.DataFrame]:
    return {m: alpaca.read_annotations(annotations_path(evalsets, m)) for m in MODELS}


def std_delta_len(frame: pd.DataFrame) -> np.ndarray:
    delta = (frame["output_1"].str.len() - frame["output_2"].str.len()).astype(float)
    return (delta / delta.std(ddof=1)).to_numpy()


def write_official_files(
    tmp: Path, frames: dict[str, pd.DataFrame], gamed_models: list[str], seed: int = 0
) -> tuple[Path, Path]:
    """Synthetic Hub files in AlpacaEval's formats.

    ``instruction_difficulty.csv``: index column ``index`` (0..804) and one value column.
    ``df_gamed.csv``: one row per (gamed model, instruction) with ``index``, ``preference`` in
    [0, 1], ``std_delta_len``, ``instruction_difficulty``, ``not_gamed_baseline`` (False) and
    ``model``, here built from real annotation files standing in for the gamed baselines.
    """
    rng = np.random.default_rng(seed)
    difficulty = pd.DataFrame(
        {"instruction_difficulty": rng.normal(0.0, 1.0, 805)},
        index=pd.RangeIndex(805, name="index"),
    )
    difficulty_path = tmp / "instruction_difficulty.csv"
    difficulty.to_csv(difficulty_path)
    parts = []
    for name in gamed_models:
        frame = frames[name]
        parts.append(pd.DataFrame({
            "index": np.arange(805),
            "preference": frame["preference"].to_numpy() - 1,
            "std_delta_len": std_delta_len(frame),
            "instruction_difficulty": difficulty["instruction_difficulty"].to_numpy(),
            "not_gamed_baseline": False,
            "model": f"{name}_gamed",
        }))
    gamed_path = tmp / "df_gamed.csv"
    pd.concat(parts, ignore_index=True).to_csv(gamed_path, index=False)
    return difficulty_path, gamed_path


@pytest.fixture(scope="module")
def official_files(tmp_path_factory, frames) -> tuple[Path, Path]:
    return write_official_files(
        tmp_path_factory.mktemp("official"), frames, ["alpaca-7b", "OpenHermes-2.5-Mistral-7B"]
    )


# --------------------------------------------------------------------------------------------
# leaderboard metrics: exact on the staged files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_head_to_head_reproduces_the_leaderboard(frames, leaderboard, model):
    got = winrate.head_to_head(frames[model])
    row = leaderboard.loc[model]
    for key in ("win_rate", "standard_error", "discrete_win_rate"):
        assert abs(got[key] - row[key]) < 1e-9, key
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert got[key] == int(row[key]), key
        assert isinstance(got[key], int)


def test_baseline_against_itself_matches_the_leaderboard_row(reference_path, leaderboard):
    ref = alpaca.read_model_outputs(reference_path)
    frame = pd.DataFrame({
        "instruction": [r["instruction"] for r in ref],
        "output_1": [r["output"] for r in ref],
        "generator_1": "gpt4_1106_preview",
        "output_2": [r["output"] for r in ref],
        "generator_2": "gpt4_1106_preview",
        "preference": 1.5,
    })
    got = winrate.winrate(frame)
    row = leaderboard.loc["gpt4_1106_preview"]
    assert got["win_rate"] == row["win_rate"] == 50.0
    assert got["standard_error"] == row["standard_error"] == 0.0
    assert (got["n_wins"], got["n_wins_base"], got["n_draws"]) == (0, 0, 805)
    assert got["discrete_win_rate"] == 50.0
    assert got["avg_length"] == row["avg_length"] == 2049
    assert got["length_controlled_winrate"] == row["length_controlled_winrate"] == 50.0
    assert "baseline" in got["length_controlled_note"]


def test_winrate_does_not_modify_the_frame(frames):
    frame = frames["gpt4_gamed"].head(50).copy()
    before = frame.copy()
    winrate.winrate(frame)
    pd.testing.assert_frame_equal(frame, before)


# --------------------------------------------------------------------------------------------
# length-controlled: offline estimate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_offline_estimate_is_labelled_and_recorded(frames, model):
    got = winrate.winrate(frames[model])
    assert set(got) == KEYS
    assert got["length_controlled_method"] == OFFLINE_ESTIMATE.name
    assert got["lc_is_offline_estimate"] is True
    assert got["length_controlled_winrate"] == pytest.approx(OFFLINE_LC[model], rel=1e-9)


def test_offline_estimate_undoes_gpt4_gamed_length_gaming(frames, leaderboard):
    got = lc_glm.length_controlled_winrate(frames["gpt4_gamed"])
    raw = leaderboard.loc["gpt4_gamed", "win_rate"]
    assert raw == pytest.approx(3.7383373713788814)
    assert got.winrate > raw + 5  # short answers: controlling for length raises the win rate
    # gpt4_gamed answers are much shorter than the baseline's: a strongly negative length weight.
    assert got.fit.coef[lc_glm.FEATURE_LENGTH] < -5
    assert got.fit.C in np.logspace(-4, 4, 10)


@pytest.mark.parametrize("n_rows", [0, 1])
def test_too_few_rows_give_nan_with_a_reason(frames, n_rows):
    lc = lc_glm.length_controlled_winrate(frames["alpaca-7b"].head(n_rows))
    assert math.isnan(lc.winrate)
    assert f"{n_rows} annotation(s)" in lc.reason


@pytest.mark.parametrize("n_rows", [2, 3, 7])
def test_few_rows_use_fewer_folds(frames, n_rows):
    lc = lc_glm.length_controlled_winrate(frames["OpenHermes-2.5-Mistral-7B"].head(n_rows))
    assert lc.fit.n_splits == min(5, n_rows)
    assert 0 < lc.winrate < 100


def test_fit_ignores_the_global_sklearn_routing_setting(frames):
    import sklearn

    frame = frames["gpt-3.5-turbo-1106"]
    with sklearn.config_context(enable_metadata_routing=False):
        off = lc_glm.length_controlled_winrate(frame).winrate
    with sklearn.config_context(enable_metadata_routing=True):
        on = lc_glm.length_controlled_winrate(frame).winrate
    assert off == on == pytest.approx(OFFLINE_LC["gpt-3.5-turbo-1106"], rel=1e-9)


def test_constant_length_difference_has_no_length_effect(frames):
    frame = frames["alpaca-7b"].head(6).copy()
    frame["output_2"] = frame["output_1"].str.slice(0, 5)
    frame["output_1"] = frame["output_1"].str.slice(0, 9)  # delta = 4 everywhere: sd = 0
    lc = lc_glm.length_controlled_winrate(frame)
    assert lc.fit.coef[lc_glm.FEATURE_LENGTH] == 0.0
    assert 0 < lc.winrate < 100


def test_continuous_log_loss_matches_the_formula():
    p, w, q = np.array([0.9, 0.2, 0.5]), np.array([1.0, 1.0, 0.1]), np.array([0.7, 0.4, 1.0])
    y = np.r_[np.ones(3), np.zeros(3)]
    sw = np.r_[p * w, (1 - p) * w]
    qq = np.clip(q, 1e-15, 1 - 1e-15)
    want = np.mean(-w * (p * np.log(qq) + (1 - p) * np.log(1 - qq)))
    assert lc_glm.continuous_log_loss(y, np.r_[q, q], sw) == pytest.approx(want, rel=1e-12)


def penalised_objective(X, p, w, C, beta) -> float:
    """liblinear's L1 objective with continuous targets: ||b||_1 + C * sum_i w_i * logloss_i."""
    margin = X @ beta
    loss = w * (p * np.logaddexp(0, -margin) + (1 - p) * np.logaddexp(0, margin))
    return float(np.abs(beta).sum() + C * loss.sum())


def liblinear_objective_minimum(X, p, w, C) -> np.ndarray:
    """Independent reference: the minimiser of :func:`penalised_objective` (scipy L-BFGS-B)."""
    d = X.shape[1]

    def objective(z):
        beta = z[:d] - z[d:]
        sig = 1 / (1 + np.exp(-(X @ beta)))
        grad_beta = X.T @ (w * (sig - p)) * C
        return penalised_objective(X, p, w, C, beta) - np.abs(beta).sum() + z.sum(), np.r_[
            1 + grad_beta, 1 - grad_beta]

    res = minimize(objective, np.zeros(2 * d), jac=True, method="L-BFGS-B",
                   bounds=[(0, None)] * (2 * d), options={"ftol": 1e-15, "gtol": 1e-10,
                                                          "maxiter": 10_000})
    return res.x[:d] - res.x[d:]


@pytest.mark.parametrize("model", ["gpt4_gamed", "gpt-3.5-turbo-1106"])
def test_glm_fit_is_the_l1_penalised_continuous_logistic_regression(frames, model):
    frame = frames[model]
    lc = lc_glm.length_controlled_winrate(frame)
    n = len(frame)
    X = np.column_stack([np.tanh(std_delta_len(frame)), np.ones(n)])
    p = frame["preference"].to_numpy() - 1
    w = np.ones(n)
    C = lc.fit.C
    beta = liblinear_objective_minimum(X, p, w, C)
    got = np.array([lc.fit.coef[f] for f in OFFLINE_ESTIMATE.features])
    # liblinear stops at tol=1e-4: the same optimum up to ~1e-6 of the objective.
    ref = penalised_objective(X, p, w, C, beta)
    assert abs(penalised_objective(X, p, w, C, got) - ref) < 1e-5 * ref
    np.testing.assert_allclose(got, beta, rtol=2e-2)
    assert lc.winrate == pytest.approx(100 * np.mean(1 / (1 + np.exp(-beta[1]))), abs=0.2)
    # A fit that ignored the continuous targets' weights would be far off the optimum.
    assert penalised_objective(X, p, w, C, np.zeros(2)) > 1.01 * ref


# --------------------------------------------------------------------------------------------
# length-controlled: the official length_controlled_v1 path
# --------------------------------------------------------------------------------------------


def test_official_path_is_labelled_and_independent_of_annotation_order(
    frames, official_files, reference_path
):
    official = OfficialLCInputs.read(*official_files)
    frame = frames["gpt4_gamed"]
    ref = alpaca.read_model_outputs(reference_path)
    got = winrate.winrate(frame, official, alpaca.match_reference(frame, ref))
    assert set(got) == KEYS
    assert got["length_controlled_method"] == "length_controlled_v1"
    assert got["lc_is_offline_estimate"] is False
    assert 0 < got["length_controlled_winrate"] < 100
    # Shuffled annotations keep their own difficulty through the AlpacaEval index.
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = lc_glm.length_controlled_winrate(
        shuffled, official, alpaca.match_reference(shuffled, ref)
    )
    # Same rows, other order: GroupKFold folds differ, so allow a small difference only.
    assert again.winrate == pytest.approx(got["length_controlled_winrate"], abs=0.5)


def test_difficulty_correlated_with_preference_gets_a_positive_weight(tmp_path, frames):
    frame = frames["gpt-3.5-turbo-1106"]
    p = frame["preference"].to_numpy() - 1
    _, gamed_path = write_official_files(tmp_path, frames, ["alpaca-7b"])
    # "difficulty" that tracks this model's wins (higher: the model more likely wins).
    difficulty = pd.Series((p - p.mean()) / p.std(), index=np.arange(805))
    gamed = lc_glm.read_df_gamed(gamed_path)
    gamed["instruction_difficulty"] = difficulty.loc[gamed["index"]].to_numpy()
    lc = lc_glm.length_controlled_winrate(
        frame, OfficialLCInputs(difficulty, gamed), np.arange(805)
    )
    assert lc.fit.coef[lc_glm.FEATURE_DIFFICULTY] > 0.5
    # Anti-correlated difficulty: negative weight.
    lc_neg = lc_glm.length_controlled_winrate(
        frame,
        OfficialLCInputs(-difficulty, gamed.assign(instruction_difficulty=lambda d: -d[
            "instruction_difficulty"])),
        np.arange(805),
    )
    assert lc_neg.fit.coef[lc_glm.FEATURE_DIFFICULTY] < -0.5


def test_gamed_regularisation_moves_the_estimate(tmp_path, frames):
    frame = frames["gpt4_gamed"]
    index = np.arange(805)
    difficulty = pd.Series(np.zeros(805), index=index)

    def gamed(length_weight: float) -> pd.DataFrame:
        """Gamed rows whose preference follows sigmoid(length_weight * tanh(std_delta_len))."""
        x = np.linspace(-2.5, 2.5, 805)
        return pd.DataFrame({
            "index": index, "preference": 1 / (1 + np.exp(-length_weight * np.tanh(x))),
            "std_delta_len": x, "instruction_difficulty": 0.0, "not_gamed_baseline": 0.0,
        })

    lc_flat = lc_glm.length_controlled_winrate(
        frame, OfficialLCInputs(difficulty, gamed(0.0)), index
    )
    lc_steep = lc_glm.length_controlled_winrate(
        frame, OfficialLCInputs(difficulty, gamed(-30.0)), index
    )
    offline = lc_glm.length_controlled_winrate(frame)
    w_flat = lc_flat.fit.coef[lc_glm.FEATURE_LENGTH]
    w_steep = lc_steep.fit.coef[lc_glm.FEATURE_LENGTH]
    w_free = offline.fit.coef[lc_glm.FEATURE_LENGTH]
    # Gamed rows with no length effect pull the length weight toward 0, steep ones away from it.
    assert w_steep < w_free < w_flat
    assert lc_flat.winrate < offline.winrate < lc_steep.winrate


def test_official_inputs_are_checked(tmp_path, frames, official_files):
    difficulty_path, gamed_path = official_files
    bad = tmp_path / "difficulty.csv"
    bad.write_text("index,a,b\n0,1,2\n", encoding="utf-8")
    with pytest.raises(lc_glm.LengthControlInputError, match="one difficulty column"):
        lc_glm.read_instruction_difficulty(bad)
    bad.write_text("index,instruction_difficulty\n0,1.0\n1,oops\n", encoding="utf-8")
    with pytest.raises(lc_glm.LengthControlInputError, match=r"row 1 .* 'oops'"):
        lc_glm.read_instruction_difficulty(bad)
    bad.write_text("index,instruction_difficulty\n0,1.0\n0,2.0\n", encoding="utf-8")
    with pytest.raises(lc_glm.LengthControlInputError, match="index 0 appears more than once"):
        lc_glm.read_instruction_difficulty(bad)
    gamed = pd.read_csv(gamed_path)
    gamed.drop(columns=["std_delta_len"]).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(lc_glm.LengthControlInputError, match=r"missing column\(s\) \['std_delta_len'\]"):
        lc_glm.read_df_gamed(tmp_path / "g.csv")
    gamed.assign(preference=gamed["preference"] + 1).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(lc_glm.LengthControlInputError, match="outside"):
        lc_glm.read_df_gamed(tmp_path / "g.csv")
    official = OfficialLCInputs.read(difficulty_path, gamed_path)
    assert len(official.difficulty) == 805 and set(official.df_gamed["not_gamed_baseline"]) == {0}
    with pytest.raises(lc_glm.LengthControlInputError, match="needs the AlpacaEval index"):
        lc_glm.length_controlled_winrate(frames["alpaca-7b"], official, None)
    with pytest.raises(lc_glm.LengthControlInputError, match="index 9999"):
        lc_glm.length_controlled_winrate(
            frames["alpaca-7b"].head(3), official, np.array([0, 1, 9999])
        )


@pytest.mark.filterwarnings("ignore::FutureWarning")  # alpaca_eval's deprecated sklearn args
@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")
@pytest.mark.parametrize("model", ["gpt4_gamed", "gpt-3.5-turbo-1106"])
def test_matches_alpaca_eval_get_length_controlled_winrate(
    monkeypatch, evalsets, frames, official_files, reference_path, model
):
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    import sklearn

    difficulty_path, gamed_path = official_files
    files = {"instruction_difficulty.csv": difficulty_path, "df_gamed.csv": gamed_path}
    monkeypatch.setattr(glm, "hf_hub_download", lambda *a, **k: str(files[k["filename"]]))
    with gzip.open(annotations_path(evalsets, model), "rt", encoding="utf-8") as fh:
        records = json.load(fh)
    frame = frames[model]
    ref = alpaca.read_model_outputs(reference_path)
    index = alpaca.match_reference(frame, ref)
    ours_v1 = winrate.winrate(frame, OfficialLCInputs.read(*official_files), index)
    ours_offline = winrate.winrate(frame)
    with sklearn.config_context():  # alpaca_eval switches metadata routing on globally
        theirs_v1 = glm.get_length_controlled_winrate(
            copy.deepcopy(records), glm_name="length_controlled_v1", save_weights_dir=None,
            is_warn_extreme_changes=False,
        )
        theirs_min = glm.get_length_controlled_winrate(
            copy.deepcopy(records), glm_name="length_controlled_minimal", save_weights_dir=None,
            is_warn_extreme_changes=False,
        )
    assert ours_v1["length_controlled_winrate"] == pytest.approx(
        theirs_v1["length_controlled_winrate"], abs=1e-8
    )
    assert ours_offline["length_controlled_winrate"] == pytest.approx(
        theirs_min["length_controlled_winrate"], abs=1e-8
    )
    for key in ("win_rate", "standard_error", "discrete_win_rate"):
        assert ours_v1[key] == pytest.approx(theirs_v1[key], abs=1e-9)
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total"):
        assert ours_v1[key] == theirs_v1[key]


# --------------------------------------------------------------------------------------------
# `sp2dpo winrate`
# --------------------------------------------------------------------------------------------


def test_cli_text_output_labels_the_offline_estimate(capsys, evalsets, reference_path):
    path = annotations_path(evalsets, "gpt4_gamed")
    assert cli.main(["winrate", "--annotations", str(path), "--reference", str(reference_path)]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert set(lines) == KEYS
    assert lines["n_wins"] == "32" and lines["avg_length"] == "68"
    assert lines["length_controlled_method"] == "offline-estimate:length-only-glm"
    assert lines["lc_is_offline_estimate"] == "True"
    assert "(offline estimate: length-only GLM" in lines["length_controlled_winrate"]
    assert float(lines["win_rate"]) == pytest.approx(3.7383373713788814, abs=1e-9)


def test_cli_json_official(capsys, evalsets, reference_path, official_files):
    path = annotations_path(evalsets, "alpaca-7b")
    difficulty_path, gamed_path = official_files
    status = cli.main(["winrate",
        "--annotations", str(path), "--reference", str(reference_path),
        "--instruction-difficulty", str(difficulty_path), "--df-gamed", str(gamed_path), "--json",
    ])
    assert status == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == KEYS
    assert got["length_controlled_method"] == "length_controlled_v1"
    assert got["lc_is_offline_estimate"] is False
    assert got["n_wins"] == 17 and got["n_total"] == 805


def test_cli_json_carries_null_for_nan(tmp_path, capsys, evalsets):
    one = alpaca.load_json_list(annotations_path(evalsets, "alpaca-7b"))[:1]
    path = tmp_path / "one.json"
    alpaca.write_annotations(one, path)
    assert cli.main(["winrate", "--annotations", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out
    got = json.loads(out)
    assert got["length_controlled_winrate"] is None and got["standard_error"] is None
    assert "1 annotation(s)" in got["length_controlled_note"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--df-gamed", "x.csv"], "go together"),
        (["--instruction-difficulty", "x.csv"], "go together"),
        (["--instruction-difficulty", "{d}", "--df-gamed", "{g}"], "needs --reference"),
    ],
)
def test_cli_usage_errors(capsys, evalsets, official_files, extra, match):
    d, g = official_files
    extra = [e.format(d=d, g=g) for e in extra]
    path = annotations_path(evalsets, "alpaca-7b")
    assert cli.main(["winrate", "--annotations", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sp2dpo: error: ") and match in err


def test_cli_bad_files(tmp_path, capsys, evalsets):
    assert cli.main(["winrate", "--annotations", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    rows = alpaca.load_json_list(annotations_path(evalsets, "alpaca-7b"))[:3]
    rows[1]["preference"] = None
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    assert cli.main(["winrate", "--annotations", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"sp2dpo: error: {path}: item 1 field 'preference' is null (a failed or missing judgement)\n"


def test_sp2dpo_winrate_console_script(evalsets):
    """The installed console script, as a user runs it."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "sp2dpo"
    proc = subprocess.run(
        [str(exe), "winrate", "--annotations", str(annotations_path(evalsets, "gpt4_gamed")),
         "--json"], capture_output=True, text=True, check=False, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["n_wins"] == 32 and got["lc_is_offline_estimate"] is True
    bad = subprocess.run([str(exe), "winrate", "--annotations", "missing.json"],
                         capture_output=True, text=True, check=False, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("sp2dpo: error: missing.json")


def test_lc_methods_are_registered_data():
    assert lc_glm.LC_METHODS == {
        "length_controlled_v1": LENGTH_CONTROLLED_V1,
        "offline-estimate:length-only-glm": OFFLINE_ESTIMATE,
    }
    assert LENGTH_CONTROLLED_V1.regularize_lambda == 0.2
    assert LENGTH_CONTROLLED_V1.features == (
        "np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)"
    )


def test_lc_of_50_from_an_all_zero_fit_says_why():
    # Preference 1.5 everywhere: the likelihood is flat in every weight, L1 keeps them all at 0.
    rows = [
        {"instruction": f"q{i}", "output_1": "x" * (10 + 7 * i), "generator_1": "ref",
         "output_2": "y" * (40 - 3 * i), "generator_2": "m", "preference": 1.5}
        for i in range(8)
    ]
    metrics = winrate.winrate(alpaca.validate_annotations(rows))
    assert metrics["length_controlled_winrate"] == pytest.approx(50.0)
    assert "shrank every GLM weight to 0" in metrics["length_controlled_note"]


@pytest.mark.parametrize(("preferences", "lc_before", "one_class_fits"), [
    # folds whose two training rows both have preference 1 (or both 2): one outcome only
    ((1.0, 1.0, 1.8), 27.53682922067462, 1),
    ((2.0, 2.0, 1.6), 86.27181254172098, 1),
    ((2.0, 2.0, 2.0), 99.99595133797662, 4),
])
def test_three_item_file_prints_no_liblinear_warnings_and_reports_them_once(
    tmp_path, capfd, caplog, recwarn, preferences, lc_before, one_class_fits
):
    rows = [
        {"instruction": f"q{i}", "output_1": "x" * (10 + 9 * i), "generator_1": "ref",
         "output_2": "y" * (30 - 5 * i), "generator_2": "m", "preference": p}
        for i, p in enumerate(preferences)
    ]
    path = tmp_path / "three.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    capfd.readouterr()
    with caplog.at_level("INFO", logger="sp2dpo.evaluate.benchmarks.lc"):
        metrics = winrate.evaluate_file(path)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [str(w.message) for w in recwarn] == []
    # the numbers are those computed before the warnings were silenced
    assert metrics["length_controlled_winrate"] == pytest.approx(lc_before, rel=1e-12)
    assert metrics["n_total"] == 3 and set(metrics) >= KEYS
    notes = [r.getMessage() for r in caplog.records if r.name == "sp2dpo.evaluate.benchmarks.lc"]
    assert len(notes) == 1
    assert notes[0].startswith(f"length-controlled GLM: {one_class_fits} of 4 liblinear fits")
    assert "'class label N specified in weight is not found'" in notes[0]
    frame = alpaca.read_annotations(path)
    assert lc_glm.length_controlled_winrate(frame).fit.one_class_fits == one_class_fits


def test_fit_of_two_sided_folds_reports_nothing(frames, caplog):
    with caplog.at_level("INFO", logger="sp2dpo.evaluate.benchmarks.lc"):
        lc = lc_glm.length_controlled_winrate(frames["gpt-3.5-turbo-1106"])
    assert lc.fit.one_class_fits == 0
    assert lc.winrate == pytest.approx(OFFLINE_LC["gpt-3.5-turbo-1106"], rel=1e-9)
    assert [r for r in caplog.records if r.name == "sp2dpo.evaluate.benchmarks.lc"] == []
