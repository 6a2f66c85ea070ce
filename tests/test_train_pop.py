"""Tests for the margin and tuple data of the margin losses: sp2dpo.train.pop (DPO-PoP's
preference-over-preference tuples) and the margin, tuple and beta-rescale columns that
sp2dpo.train.dataset.build_dataset adds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sp2dpo import train
from sp2dpo.core import config
from sp2dpo.core.beta import BetaError
from sp2dpo.train.pop import NoTuples, sample_tuples
from tests.conftest import pairs_frame

MARGINS = np.array([0.0, 1.0, 2.5, 4.0, 4.2, 7.0])


def test_iterative_sampler_anchors_every_pair_k_times_against_weaker_ones():
    t = sample_tuples(MARGINS, k=2, sampler="iter", min_diff=1.0, seed=0)
    g = MARGINS
    assert (g[t.strong] - g[t.weak] >= 1.0).all()
    counts = np.bincount(t.strong, minlength=g.size)
    # pair 0 has no weaker partner; pair 1 has one (pair 0): drawn with replacement
    assert counts.tolist() == [0, 2, 2, 2, 2, 2]
    assert t.info == {"pairs": 6, "skipped_no_partner": 1, "with_replacement": 1, "flipped": 0, "tuples": 10}
    assert t.weak[t.strong == 1].tolist() == [0, 0]
    three = t.weak[t.strong == 3]  # partners of 4.0: 0.0, 1.0, 2.5 -> 2 distinct
    assert len(set(three.tolist())) == 2


def test_samplers_are_seeded():
    for sampler in ("iter", "random"):
        a = sample_tuples(MARGINS, k=3, sampler=sampler, min_diff=1.0, seed=5)
        b = sample_tuples(MARGINS, k=3, sampler=sampler, min_diff=1.0, seed=5)
        c = sample_tuples(MARGINS, k=3, sampler=sampler, min_diff=1.0, seed=6)
        assert np.array_equal(a.strong, b.strong) and np.array_equal(a.weak, b.weak)
        assert not (np.array_equal(a.strong, c.strong) and np.array_equal(a.weak, c.weak))


def test_random_sampler_gives_k_n_ordered_tuples():
    t = sample_tuples(MARGINS, k=4, sampler="random", min_diff=1.0, seed=1)
    assert t.strong.size == 4 * MARGINS.size
    assert (MARGINS[t.strong] - MARGINS[t.weak] >= 1.0).all()
    # strong preferences appear more often as the stronger member
    counts = np.bincount(t.strong, minlength=MARGINS.size)
    assert counts[-1] > counts[1] and counts[0] == 0


def test_label_noise_flips_tuples():
    t = sample_tuples(np.arange(40.0), k=5, sampler="iter", min_diff=1.0, seed=2, label_noise=0.3)
    flipped = np.arange(40.0)[t.strong] < np.arange(40.0)[t.weak]
    assert int(flipped.sum()) == t.info["flipped"]
    assert 0.2 < flipped.mean() < 0.4


def test_no_spread_is_a_clear_error():
    with pytest.raises(NoTuples, match=r"min_margin_diff=1.0 \(margins 2 to 2.5\)"):
        sample_tuples(np.array([2.0, 2.5, 2.2]), k=2, sampler="iter", min_diff=1.0, seed=0)


# --------------------------------------------------------------------------------------------
# margins, tuples and rescaled betas in the training dataset
# --------------------------------------------------------------------------------------------


def _files(tmp_path: Path, scores: bool = True) -> tuple[Path, Path]:
    frame = pairs_frame()
    if not scores:
        frame[["score_chosen", "score_rejected"]] = np.nan
    tmp_path.mkdir(parents=True, exist_ok=True)
    pairs = tmp_path / "pairs.parquet"
    frame.to_parquet(pairs, index=False)
    beta = tmp_path / "beta.csv"
    pd.DataFrame({
        "prompt_id": frame["prompt_id"], "prompt_variant_count": 3,
        "beta_annotators_mean_ens": [0.03, 0.057, 0.3, 0.165, 0.084, 0.111],
        "beta_random": [0.2] * 6,
    }).to_csv(beta, index=False)
    return pairs, beta


def _build(tmp_path, scores=True, **method):
    pairs, beta = _files(tmp_path, scores)
    cfg = config.TrainConfig(drop_missing_beta=False)
    return train.build_dataset(cfg, config.MethodConfig(**method), pairs, beta, (0.03, 0.3))


def test_margins_from_scores_semantic_gap_or_fixed(tmp_path):
    ds, info = _build(tmp_path, name="m", loss="dpo_margin", beta=0.1)
    assert info["margin_source"] == "scores"
    assert ds["margin"] == pytest.approx([5.0, 5.0, 5.0, 1.0, 7.5, 1.5])
    ds, info = _build(tmp_path / "s", scores=False, name="m", loss="dpo_margin", beta=0.1)
    assert info["margin_source"] == "semantic"
    gap = (np.array([0.03, 0.057, 0.3, 0.165, 0.084, 0.111]) - 0.03) / 0.27 * 10
    assert ds["margin"] == pytest.approx(gap.tolist())
    ds, _ = _build(tmp_path, name="m", loss="dpo_margin", beta=0.1,
                   loss_args={"margin_source": "semantic", "semantic_scale": 1.0, "scale": 2.0})
    assert ds["margin"] == pytest.approx((gap / 10 * 2).tolist())
    ds, _ = _build(tmp_path, name="m", loss="dpo_margin", beta=0.1, loss_args={"margin_source": "fixed"})
    assert ds["margin"] == [1.0] * 6
    ds, _ = _build(tmp_path, name="m", loss="scaled_bt", beta=0.1, loss_args={"normalize": True})
    assert np.mean(ds["margin"]) == pytest.approx(1.0)


def test_score_margins_without_scores_name_the_pairs(tmp_path):
    with pytest.raises(BetaError, match=r"margin_source scores: 6 of 6 pair\(s\) have no score.*p0, p1"):
        _build(tmp_path, scores=False, name="m", loss="dpo_margin", beta=0.1, loss_args={"margin_source": "scores"})


def test_dpo_pop_rows_are_tuples_of_a_stronger_and_a_weaker_pair(tmp_path):
    ds, info = _build(tmp_path, name="pop", loss="dpo_pop", beta_column="beta_annotators_mean_ens")
    assert info["pop"]["tuples"] == len(ds) > 0
    margin = dict(zip(pairs_frame()["prompt_id"], pairs_frame()["score_chosen"] - pairs_frame()["score_rejected"],
                      strict=True))
    beta = {"p0": 0.03, "p1": 0.057, "p2": 0.3, "p3": 0.165, "p4": 0.084, "p5": 0.111}
    for row in ds:
        assert margin[row["prompt_id"]] - margin[row["weak_prompt_id"]] >= 1.0
        assert row["beta"] == pytest.approx(beta[row["prompt_id"]])
        assert row["weak_beta"] == pytest.approx(beta[row["weak_prompt_id"]])
        assert row["weak_chosen"][0]["role"] == "assistant"
    with pytest.raises(BetaError, match="DPO-PoP: no two of the 6 pairs"):
        _build(tmp_path, name="pop", loss="dpo_pop", beta=0.1, loss_args={"min_margin_diff": 50.0})


def test_simpo_beta_mean_rescales_beta_i_keeping_their_ratios(tmp_path):
    ds, info = _build(tmp_path, name="s", loss="simpo", beta_column="beta_annotators_mean_ens",
                      loss_args={"beta_mean": 2.5})
    assert np.mean(ds["beta"]) == pytest.approx(2.5)
    assert ds["beta"][2] / ds["beta"][0] == pytest.approx(0.3 / 0.03)
    assert info["beta_rescale_factor"] == pytest.approx(2.5 / np.mean([0.03, 0.057, 0.3, 0.165, 0.084, 0.111]))
