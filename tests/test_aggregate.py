"""Tests of ``sp2dpo.aggregate``: the paper's estimators on hand-computed cases, the optional
operators, completeness and bad input, determinism, the artifact schema, reports and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sp2dpo import aggregate, cli
from sp2dpo.aggregate import estimators as est
from sp2dpo.aggregate.calls import REASONS, CallTableError
from sp2dpo.core import config, schemas
from sp2dpo.core.artifacts import SchemaViolation
from sp2dpo.core.beta import read_beta_artifact

ROOT = Path(__file__).resolve().parents[1]
AGG = config.AggregateConfig()
BETA = config.BetaConfig()
APPROX = {"abs": 1e-12}


def calls_table(spec: dict[str, dict[str, dict[str, tuple]]], status: bool = True) -> pd.DataFrame:
    """``{prompt_id: {annotator: {variant: (category, magnitude, confidence[, status])}}}``."""
    rows = []
    for pid, by_ann in spec.items():
        for ann, by_var in by_ann.items():
            for var, call in by_var.items():
                row = {
                    "prompt_id": pid,
                    "annotator": ann,
                    "variant": var,
                    "category": call[0],
                    "magnitude": call[1],
                    "confidence": call[2],
                }
                if status:
                    row["status"] = call[3] if len(call) > 3 else "ok"
                rows.append(row)
    return pd.DataFrame(rows)


# Hand case: two teachers x three variants, every value worked out below.
#   a: g = 0.4, 0.5, 0.1 -> median 0.4 -> beta 0.03 + 0.27 * 0.4 = 0.138; Safety 2 votes.
#   b: g = 0.9, 0.3, 0.7 -> median 0.7 -> beta 0.219; three-way tie -> Factuality (priority).
HAND = {
    "p1": {
        "a": {"v1": ("Safety", 0.5, 0.8), "v2": ("Safety", 1.0, 0.5), "v3": ("Style", 0.2, 0.5)},
        "b": {
            "v1": ("Factuality", 0.9, 1.0),
            "v2": ("Style", 0.6, 0.5),
            "v3": ("Reasoning", 0.7, 1.0),
        },
    }
}


def run_frame(spec, agg=AGG, beta=BETA, **kwargs) -> pd.DataFrame:
    return aggregate.aggregate(calls_table(spec), agg, beta, **kwargs).frame


# --------------------------------------------------------------------------------------------
# the paper's estimators, by hand
# --------------------------------------------------------------------------------------------


def test_gap_to_beta_matches_paper_table4_and_clips():
    gaps = np.array([0.0, 0.5, 1.0, -0.2, 1.7, -np.inf, np.inf])
    assert est.gap_to_beta(gaps, 0.03, 0.3).tolist() == pytest.approx(
        [0.03, 0.165, 0.3, 0.03, 0.3, 0.03, 0.3], **APPROX
    )


def test_median_over_prompts_ignores_one_outlier_paper_c3():
    gaps = np.array([0.05, 0.06, 0.90])
    assert est.median(gaps) == pytest.approx(0.06, **APPROX)
    assert est.mean(gaps) == pytest.approx(0.3366666666666667, **APPROX)
    assert est.gap_to_beta(est.median(gaps), 0.03, 0.3) == pytest.approx(0.0462, **APPROX)


def test_hand_case_every_pinned_column():
    row = run_frame(HAND).iloc[0]
    expected = {
        "prompt_variant_count": 3,
        "effective_gap_a_v1": 0.4,
        "beta_a_v1": 0.138,
        "effective_gap_a_v2": 0.5,
        "beta_a_v2": 0.165,
        "effective_gap_a_v3": 0.1,
        "beta_a_v3": 0.057,
        "effective_gap_b_v1": 0.9,
        "beta_b_v1": 0.273,
        "effective_gap_b_v2": 0.3,
        "beta_b_v2": 0.111,
        "effective_gap_b_v3": 0.7,
        "beta_b_v3": 0.219,
        "effective_gap_a_ens": 0.4,
        "beta_a_ens": 0.138,
        "effective_gap_b_ens": 0.7,
        "beta_b_ens": 0.219,
        "beta_annotators_mean_v1": (0.138 + 0.273) / 2,
        "beta_annotators_mean_v2": (0.165 + 0.111) / 2,
        "beta_annotators_mean_v3": (0.057 + 0.219) / 2,
        "beta_annotators_mean_ens": (0.138 + 0.219) / 2,
        "disagreement_prompt_mad_a": 0.1,  # |0.4-0.4|, |0.5-0.4|, |0.1-0.4| -> median 0.1
        "disagreement_prompt_mad_b": 0.2,  # 0.2, 0.4, 0 -> 0.2
        "disagreement_annotators_std": 0.0405,  # population std of (0.138, 0.219)
        "disagreement_annotators_mad": 0.0405,
    }
    for col, value in expected.items():
        assert row[col] == pytest.approx(value, **APPROX), col
    assert row["magnitude_b_v2"] == 0.6 and row["confidence_b_v2"] == 0.5
    assert row["category_a_v3"] == "Style"
    assert (row["category_a_ens"], bool(row["category_a_ens_tie_break"])) == ("Safety", False)
    assert (row["category_b_ens"], bool(row["category_b_ens_tie_break"])) == ("Factuality", True)
    # Across teachers: Safety vs Factuality, one vote each -> Safety by priority.
    assert (row["category_annotators_ens"], bool(row["category_annotators_ens_tie_break"])) == (
        "Safety",
        True,
    )


def test_columns_follow_the_pinned_layout():
    frame = run_frame(HAND)
    pinned = schemas.beta_artifact_columns(["a", "b"], ["v1", "v2", "v3"])
    assert list(frame.columns[: len(pinned)]) == pinned
    assert list(frame.columns[len(pinned) :]) == [
        "category_annotators_ens",
        "category_annotators_ens_tie_break",
        "disagreement_prompt_mad_a",
        "disagreement_prompt_mad_b",
        "disagreement_annotators_std",
        "disagreement_annotators_mad",
    ]
    first_category_ens = next(
        c for c in frame.columns if c.startswith("category_") and c.endswith("_ens")
    )
    assert first_category_ens == "category_a_ens"


@pytest.mark.parametrize(
    ("votes", "winner", "tie"),
    [
        (["Style", "Style", "Safety"], "Style", False),  # majority beats priority
        (["Style", "Reasoning"], "Reasoning", True),  # 1-1 tie -> higher priority
        (["Helpfulness", "Instruction", "Helpfulness", "Instruction"], "Instruction", True),
        (["Style", "Helpfulness", "Reasoning"], "Reasoning", True),
        (["Factuality"] * 3, "Factuality", False),
    ],
)
def test_category_vote_ties_break_by_priority(votes, winner, tie):
    spec = {"p": {"q": {f"v{k + 1}": (c, 0.5, 0.5) for k, c in enumerate(votes)}}}
    row = run_frame(spec).iloc[0]
    assert row["category_q_ens"] == winner
    assert bool(row["category_q_ens_tie_break"]) is tie


def test_even_number_of_variants_uses_the_mean_of_the_middle_two():
    spec = {
        "p": {
            "q": {
                "v1": ("Style", 0.1, 1.0),
                "v2": ("Style", 0.2, 1.0),
                "v3": ("Style", 0.6, 1.0),
                "v4": ("Style", 1.0, 1.0),
            }
        }
    }
    row = run_frame(spec).iloc[0]
    assert row["effective_gap_q_ens"] == pytest.approx(0.4, **APPROX)


def test_single_teacher_gives_sa_and_se_and_ma_equals_sa():
    spec = {
        "p": {
            "solo": {
                "v1": ("Safety", 0.5, 0.8),
                "v2": ("Style", 0.1, 1.0),
                "v3": ("Safety", 1.0, 0.9),
            }
        }
    }
    row = run_frame(spec).iloc[0]
    for v in ("v1", "v2", "v3"):
        assert row[f"beta_annotators_mean_{v}"] == row[f"beta_solo_{v}"]
    assert row["effective_gap_solo_ens"] == pytest.approx(0.4, **APPROX)
    assert row["beta_annotators_mean_ens"] == row["beta_solo_ens"] == pytest.approx(0.138, **APPROX)
    assert row["disagreement_annotators_std"] == 0.0
    assert row["category_annotators_ens"] == "Safety"


def test_one_variant_gives_sa_and_ma():
    spec = {"p": {"a": {"v1": ("Style", 0.5, 0.5)}, "b": {"v1": ("Safety", 1.0, 1.0)}}}
    frame = run_frame(spec)
    row = frame.iloc[0]
    assert row["prompt_variant_count"] == 1
    assert row["effective_gap_a_ens"] == row["effective_gap_a_v1"] == 0.25
    assert not row["category_a_ens_tie_break"]
    assert row["disagreement_prompt_mad_a"] == 0.0
    assert row["beta_annotators_mean_v1"] == pytest.approx((0.03 + 0.27 * 0.25 + 0.3) / 2, **APPROX)
    assert row["beta_annotators_mean_ens"] == row["beta_annotators_mean_v1"]


def test_variants_order_numerically_and_annotators_sort():
    spec = {
        "p": {
            "Z": {v: ("Style", 0.5, 0.5) for v in ("v10", "v2", "v1")},
            "alpha": {v: ("Style", 0.5, 0.5) for v in ("v1", "v2", "v10")},
        }
    }
    frame = run_frame(spec)
    assert list(frame.columns[2:7]) == [
        f"{m}_Z_v1" for m in ("category", "magnitude", "confidence", "effective_gap", "beta")
    ]
    assert [c for c in frame.columns if c.startswith("beta_annotators_mean_")] == [
        "beta_annotators_mean_v1",
        "beta_annotators_mean_v2",
        "beta_annotators_mean_v10",
        "beta_annotators_mean_ens",
    ]


def test_beta_random_is_uniform_in_envelope_and_stable_per_prompt_id():
    ids = [f"id{i}" for i in range(2000)]
    spec = {pid: {"q": {"v1": ("Style", 0.5, 0.5)}} for pid in ids}
    frame = run_frame(spec).set_index("prompt_id")
    r = frame["beta_random"]
    assert r.between(0.03, 0.3).all() and 0.14 < r.mean() < 0.19
    digest = hashlib.sha256(b"42:id7").digest()[:8]
    u = (int.from_bytes(digest, "big") >> 11) * 2.0**-53
    assert r["id7"] == pytest.approx(0.03 + 0.27 * u, **APPROX)
    subset = run_frame({pid: spec[pid] for pid in reversed(ids[:50])}).set_index("prompt_id")
    assert (subset["beta_random"] == r.loc[subset.index]).all()
    other_seed = run_frame(spec, beta=dataclasses.replace(BETA, seed=7)).set_index("prompt_id")
    assert not np.allclose(other_seed["beta_random"], r)


# --------------------------------------------------------------------------------------------
# optional operators
# --------------------------------------------------------------------------------------------


def test_prompt_weighted_mean():
    agg = dataclasses.replace(AGG, prompt_operator="weighted_mean", prompt_weights={"v1": 2.0})
    row = run_frame(HAND, agg=agg).iloc[0]
    assert row["effective_gap_a_ens"] == pytest.approx((2 * 0.4 + 0.5 + 0.1) / 4, **APPROX)
    assert row["beta_a_ens"] == pytest.approx(0.03 + 0.27 * 0.35, **APPROX)
    assert row["beta_annotators_mean_ens"] == pytest.approx(
        (0.03 + 0.27 * 0.35 + 0.03 + 0.27 * (2 * 0.9 + 0.3 + 0.7) / 4) / 2, **APPROX
    )
    assert row["beta_a_v1"] == pytest.approx(0.138, **APPROX)  # call level unchanged


def _three_teachers(gaps, variants=1):
    return {
        "p": {
            f"t{j}": {f"v{k + 1}": ("Style", g, 1.0) for k in range(variants)}
            for j, g in enumerate(gaps)
        }
    }


def test_teacher_operators_add_columns_by_hand():
    # beta.min 0.1, max 1.1: beta = 0.1 + g, so beta_ij = 0.1, 0.12, 0.3.
    beta = config.BetaConfig(min=0.1, max=1.1)
    agg = dataclasses.replace(
        AGG,
        teacher_operators=["huber", "median", "weighted_mean", "trimmed_mean"],
        teacher_weights={"t0": 2.0, "t2": 0.0},
        trim_fraction=0.34,
        huber_delta=0.05,
    )
    row = run_frame(_three_teachers([0.0, 0.02, 0.2]), agg=agg, beta=beta).iloc[0]
    assert row["beta_annotators_mean_ens"] == pytest.approx((0.1 + 0.12 + 0.3) / 3, **APPROX)
    assert row["beta_annotators_median_ens"] == pytest.approx(0.12, **APPROX)
    assert row["beta_annotators_trimmed_mean_ens"] == pytest.approx(
        0.12, **APPROX
    )  # drop 1 each end
    # Huber: 0.1, 0.12 inside the threshold, 0.3 clipped to +delta: (0.1+0.12+0.05)/2.
    assert row["beta_annotators_huber_ens"] == pytest.approx(0.135, **APPROX)
    assert row["beta_annotators_weighted_mean_ens"] == pytest.approx((2 * 0.1 + 0.12) / 3, **APPROX)
    assert row["beta_annotators_median_v1"] == pytest.approx(0.12, **APPROX)
    extra = list(row.index[row.index.get_loc("disagreement_annotators_mad") + 1 :])
    assert extra == [
        f"beta_annotators_{op}_{v}"
        for op in ("median", "trimmed_mean", "huber", "weighted_mean")
        for v in ("v1", "ens")
    ]


def test_trimmed_mean_floor_convention_and_huber_edge_cases():
    x = np.array([[0.0, 0.1, 0.2, 0.3, 1.0]])
    assert est.trimmed_mean(x, 0.2)[0] == pytest.approx(0.2, **APPROX)
    assert est.trimmed_mean(x, 0.19)[0] == pytest.approx(0.32, **APPROX)  # floor(0.95) = 0
    assert est.huber_location(np.array([[0.2]]), 0.05)[0] == pytest.approx(0.2, **APPROX)
    # Two points farther apart than 2 delta: every mu between them solves; midpoint returned.
    assert est.huber_location(np.array([[0.0, 1.0]]), 0.1)[0] == pytest.approx(0.5, **APPROX)
    # Huge delta: the mean; tiny delta: the median (odd count).
    pts = np.array([[0.1, 0.2, 0.9]])
    assert est.huber_location(pts, 10.0)[0] == pytest.approx(0.4, **APPROX)
    assert est.huber_location(pts, 1e-9)[0] == pytest.approx(0.2, abs=1e-8)


def test_huber_solves_its_estimating_equation_on_random_rows():
    rng = np.random.default_rng(3)
    x = rng.random((200, 5))
    mu = est.huber_location(x, 0.1)
    psi = np.clip(x - mu[:, None], -0.1, 0.1).sum(axis=1)
    assert np.abs(psi).max() < 1e-12


def test_pooled_with_factorised_weights():
    agg = dataclasses.replace(
        AGG, pooled=True, prompt_weights={"v1": 2.0}, teacher_weights={"b": 3.0}
    )
    row = run_frame(HAND, agg=agg).iloc[0]
    w = {
        ("a", "v1"): 2,
        ("a", "v2"): 1,
        ("a", "v3"): 1,
        ("b", "v1"): 6,
        ("b", "v2"): 3,
        ("b", "v3"): 3,
    }
    g = {
        ("a", "v1"): 0.4,
        ("a", "v2"): 0.5,
        ("a", "v3"): 0.1,
        ("b", "v1"): 0.9,
        ("b", "v2"): 0.3,
        ("b", "v3"): 0.7,
    }
    pooled = sum(w[k] * g[k] for k in w) / sum(w.values())
    assert row["effective_gap_pooled"] == pytest.approx(pooled, **APPROX)
    assert row["beta_pooled"] == pytest.approx(0.03 + 0.27 * pooled, **APPROX)


def test_bias_decomposition_matches_generic_ridge_least_squares():
    rng = np.random.default_rng(0)
    n, j, k, ridge = 5, 3, 4, 0.7
    g = rng.random((n, j, k))
    g_hat, b, d = est.bias_decomposition(g, ridge)
    # Generic solve: unknowns (g_1..g_n, b_1..b_j, d_1..d_k); ridge rows only on b and d.
    rows, target = [], []
    for i in range(n):
        for jj in range(j):
            for kk in range(k):
                r = np.zeros(n + j + k)
                r[i] = r[n + jj] = r[n + j + kk] = 1.0
                rows.append(r)
                target.append(g[i, jj, kk])
    for p in range(j + k):
        r = np.zeros(n + j + k)
        r[n + p] = math.sqrt(ridge)
        rows.append(r)
        target.append(0.0)
    sol = np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)[0]
    assert g_hat == pytest.approx(sol[:n], abs=1e-12)
    assert b == pytest.approx(sol[n : n + j], abs=1e-12)
    assert d == pytest.approx(sol[n + j :], abs=1e-12)


def test_bias_decomposition_columns_and_offsets(tmp_path):
    # Teacher b reads every gap 0.2 higher than teacher a.
    spec = {
        f"p{i}": {
            "a": {"v1": ("Style", g, 1.0), "v2": ("Style", g, 1.0)},
            "b": {"v1": ("Style", g + 0.2, 1.0), "v2": ("Style", g + 0.2, 1.0)},
        }
        for i, g in enumerate([0.1, 0.3, 0.5])
    }
    calls = tmp_path / "calls.csv"
    calls_table(spec).to_csv(calls, index=False)
    agg = dataclasses.replace(AGG, bias_decomposition=True, bias_ridge=0.0)
    metrics = aggregate.run(agg, BETA, aggregate.AggregatePaths(calls, tmp_path / "beta.csv", None))
    frame = read_beta_artifact(tmp_path / "beta.csv", 0.03, 0.3)
    assert frame["effective_gap_debiased"].tolist() == pytest.approx([0.2, 0.4, 0.6], **APPROX)
    assert frame["beta_debiased"].tolist() == pytest.approx(
        [0.03 + 0.27 * x for x in (0.2, 0.4, 0.6)], **APPROX
    )
    offsets = metrics["bias_decomposition"]["annotator_offsets"]
    assert offsets == pytest.approx({"a": -0.1, "b": 0.1}, **APPROX)
    assert metrics["bias_decomposition"]["variant_offsets"] == pytest.approx(
        {"v1": 0.0, "v2": 0.0}, abs=1e-10
    )


@pytest.mark.parametrize(
    ("kind", "factor_a", "factor_b"),
    [("exp", math.exp(-0.2), math.exp(-0.4)), ("inverse", 1 / 1.2, 1 / 1.4)],
)
def test_damping_by_prompt_mad(kind, factor_a, factor_b):
    agg = dataclasses.replace(AGG, damping=kind, damping_lambda=2.0)
    row = run_frame(HAND, agg=agg).iloc[0]
    # prompt MAD: a 0.1, b 0.2 -> u * lambda = 0.2, 0.4
    assert row["effective_gap_a_ens"] == pytest.approx(0.4 * factor_a, **APPROX)
    assert row["effective_gap_b_ens"] == pytest.approx(0.7 * factor_b, **APPROX)
    assert row["beta_annotators_mean_ens"] == pytest.approx(
        0.03 + 0.27 * (0.4 * factor_a + 0.7 * factor_b) / 2, **APPROX
    )
    assert row["disagreement_prompt_mad_a"] == pytest.approx(0.1, **APPROX)


def test_category_conditioned_envelopes():
    agg = dataclasses.replace(
        AGG, category_envelopes={"Style": config.EnvelopeConfig(min=0.03, max=0.1)}
    )
    row = run_frame(HAND, agg=agg).iloc[0]
    assert row["beta_a_v3"] == pytest.approx(0.03 + 0.07 * 0.1, **APPROX)  # a/v3 is Style
    assert row["beta_b_v2"] == pytest.approx(0.03 + 0.07 * 0.3, **APPROX)  # b/v2 is Style
    assert row["beta_a_v1"] == pytest.approx(0.138, **APPROX)  # Safety: global envelope
    assert row["beta_annotators_mean_v2"] == pytest.approx(
        (0.165 + 0.03 + 0.07 * 0.3) / 2, **APPROX
    )
    assert row["beta_a_ens"] == pytest.approx(0.138, **APPROX)


def test_weights_summing_to_zero_are_an_error():
    zero = {"v1": 0.0, "v2": 0.0, "v3": 0.0}
    agg = dataclasses.replace(AGG, prompt_operator="weighted_mean", prompt_weights=zero)
    with pytest.raises(ValueError, match="prompt_weights: the weights of the panel"):
        run_frame(HAND, agg=agg)
    agg = dataclasses.replace(
        AGG, teacher_operators=["weighted_mean"], teacher_weights={"a": 0, "b": 0}
    )
    with pytest.raises(ValueError, match="teacher_weights"):
        run_frame(HAND, agg=agg)


def test_category_envelope_outside_the_global_envelope_is_rejected():
    agg = dataclasses.replace(
        AGG, category_envelopes={"Safety": config.EnvelopeConfig(min=0.03, max=0.5)}
    )
    with pytest.raises(ValueError, match="inside the global envelope"):
        run_frame(HAND, agg=agg)


# --------------------------------------------------------------------------------------------
# an independent, loop-based reference on a random panel
# --------------------------------------------------------------------------------------------


def _reference(calls: pd.DataFrame, bmin: float, bmax: float) -> dict[str, dict[str, object]]:
    f = lambda g: bmin + (bmax - bmin) * min(max(g, 0.0), 1.0)  # noqa: E731
    out: dict[str, dict[str, object]] = {}
    for pid, pair in calls.groupby("prompt_id"):
        row: dict[str, object] = {}
        per_ann = {}
        for ann, group in pair.groupby("annotator"):
            gaps = {r.variant: r.magnitude * r.confidence for r in group.itertuples()}
            for r in group.itertuples():
                row[f"beta_{ann}_{r.variant}"] = f(gaps[r.variant])
            med = statistics.median(gaps.values())
            counts = group["category"].value_counts()
            top = [c for c in schemas.CATEGORIES if counts.get(c, 0) == counts.max()]
            row[f"category_{ann}_ens"] = top[0]
            row[f"category_{ann}_ens_tie_break"] = len(top) > 1
            row[f"effective_gap_{ann}_ens"] = med
            row[f"beta_{ann}_ens"] = per_ann[ann] = f(med)
        for v in sorted(pair["variant"].unique()):
            vals = [row[f"beta_{a}_{v}"] for a in per_ann]
            row[f"beta_annotators_mean_{v}"] = sum(vals) / len(vals)
        row["beta_annotators_mean_ens"] = sum(per_ann.values()) / len(per_ann)
        out[str(pid)] = row
    return out


def test_matches_a_loop_based_reference_on_a_random_panel():
    rng = np.random.default_rng(11)
    anns, variants, n = ["gpt-5", "q", "Gem.2"], ["v1", "v2", "v3"], 120
    rows = [
        {
            "prompt_id": f"{i:03d}",
            "annotator": a,
            "variant": v,
            "category": schemas.CATEGORIES[rng.integers(0, 3)],  # few categories: many ties
            "magnitude": float(rng.random()),
            "confidence": float(rng.choice([0.0, 0.5, 1.0, rng.random()])),
        }
        for i in range(n)
        for a in anns
        for v in variants
    ]
    calls = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    beta = config.BetaConfig(min=0.05, max=0.25)
    frame = aggregate.aggregate(calls, AGG, beta).frame.set_index("prompt_id")
    ref = _reference(calls, 0.05, 0.25)
    assert list(frame.index) == sorted(ref)
    for pid, expected in ref.items():
        for col, value in expected.items():
            got = frame.at[pid, col]
            if isinstance(value, str | bool):
                assert got == value, (pid, col)
            else:
                assert got == pytest.approx(value, abs=1e-11), (pid, col)


# --------------------------------------------------------------------------------------------
# completeness and bad input
# --------------------------------------------------------------------------------------------


def _good_pair() -> dict:
    return {
        "a": {"v1": ("Style", 0.5, 0.5), "v2": ("Safety", 0.2, 1.0)},
        "b": {"v1": ("Style", 0.1, 0.1), "v2": ("Style", 0.9, 0.9)},
    }


def _bad_table() -> pd.DataFrame:
    """Three good pairs, then one pair per exclusion reason (named after it)."""
    ok = _good_pair
    spec = {f"good{i}": ok() for i in range(3)}
    bad = {
        "unknown_category": ("a", "v1", ("Humor", 0.5, 0.5)),
        "out_of_range": ("a", "v2", ("Style", 1.3, 0.5)),
        "non_numeric": ("b", "v1", ("Style", 0.5, "high")),
        "missing_value": ("b", "v2", (None, 0.5, 0.5)),
        "failed_call": ("a", "v1", (None, None, None, "timeout")),
        "unknown_status": ("b", "v1", ("Style", 0.5, 0.5, "weird")),
    }
    for name, (ann, var, call) in bad.items():
        pair = ok()
        pair[ann][var] = call
        spec[name] = pair
    missing = ok()
    del missing["b"]["v2"]
    spec["missing_call"] = missing
    table = calls_table(spec)
    dup = table[table["prompt_id"] == "good0"].iloc[[0]].assign(prompt_id="duplicate_call")
    extra = calls_table({"duplicate_call": ok()})
    return pd.concat([table, extra, dup], ignore_index=True)


def test_bad_calls_exclude_their_pairs_with_exact_counts(tmp_path):
    path = tmp_path / "calls.csv"
    _bad_table().to_csv(path, index=False)
    screening = aggregate.screen(aggregate.read_calls(path), str(path))
    assert list(screening.panel.prompt_ids) == ["good0", "good1", "good2"]
    assert screening.excluded_by_reason == dict.fromkeys(REASONS, 1)
    assert screening.call_problems == {
        "duplicate_call": 2,
        "unknown_status": 1,
        "missing_value": 1,
        "unknown_category": 1,
        "non_numeric": 1,
        "out_of_range": 1,
        "failed_call": 1,
    }
    assert screening.missing_calls == 1
    assert screening.counts()["pairs"] == {
        "total": 11,
        "kept": 3,
        "excluded": 8,
        "excluded_by_reason": dict.fromkeys(REASONS, 1),
    }


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            "unknown_category",
            r"line \d+\).*field 'category' has unknown value 'Humor'; allowed: Safety",
        ),
        ("out_of_range", r"field 'magnitude' = '1.3' is outside \[0, 1\]"),
        ("non_numeric", r"field 'confidence' is not a number: 'high'"),
        ("missing_value", r"field 'category' is empty in an ok call"),
        ("unknown_status", r"field 'status' has unknown value 'weird'"),
        ("duplicate_call", r"duplicate \(prompt_id, annotator, variant\)"),
        ("missing_call", r"prompt_id 'missing_call' has no call for annotator 'b', variant 'v2'"),
    ],
)
def test_strict_mode_names_file_row_and_field(tmp_path, reason, message):
    table = _bad_table()
    keep = table["prompt_id"].str.startswith("good") | (table["prompt_id"] == reason)
    path = tmp_path / "calls.csv"
    table[keep].to_csv(path, index=False)
    with pytest.raises(CallTableError, match=message) as info:
        aggregate.aggregate(aggregate.read_calls(path), AGG, BETA, strict=True, where=str(path))
    assert str(path) in str(info.value)


def test_strict_mode_still_excludes_recorded_failures():
    table = _bad_table()
    table = table[table["prompt_id"].str.startswith("good") | (table["prompt_id"] == "failed_call")]
    result = aggregate.aggregate(table, AGG, BETA, strict=True)
    assert result.screening.excluded_by_reason["failed_call"] == 1
    assert len(result.frame) == 3


def test_no_status_column_means_every_call_is_ok():
    result = aggregate.aggregate(calls_table(HAND, status=False), AGG, BETA)
    assert len(result.frame) == 1


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("annotator", "gpt_5", r"field 'annotator' = 'gpt_5' does not match"),
        ("annotator", "annotators", "reserved"),
        ("variant", "V1", r"field 'variant' = 'V1' does not match"),
        ("prompt_id", None, r"field 'prompt_id' is empty"),
        ("prompt_id", "  ", "is blank"),
    ],
)
def test_malformed_keys_are_always_errors(column, value, message):
    table = calls_table(HAND)
    table.loc[2, column] = value
    with pytest.raises(CallTableError, match=message):
        aggregate.aggregate(table, AGG, BETA)


def test_missing_columns_and_empty_results_are_errors():
    with pytest.raises(CallTableError, match="lacks column"):
        aggregate.aggregate(calls_table(HAND).drop(columns="confidence"), AGG, BETA)
    table = calls_table(HAND)
    table.loc[0, "category"] = "Humor"
    with pytest.raises(CallTableError, match="no pair has a complete ok call set"):
        aggregate.aggregate(table, AGG, BETA)


# --------------------------------------------------------------------------------------------
# the artifact file: determinism, quoting, schema, reader
# --------------------------------------------------------------------------------------------


def test_rerun_and_shuffled_input_give_byte_identical_files(tmp_path):
    rng = np.random.default_rng(5)
    spec = {
        f"p{i}": {
            a: {
                f"v{k}": (
                    str(rng.choice(schemas.CATEGORIES)),
                    float(rng.random()),
                    float(rng.random()),
                )
                for k in (1, 2, 3)
            }
            for a in ("x", "y")
        }
        for i in range(40)
    }
    table = calls_table(spec)
    table.to_parquet(tmp_path / "a.parquet", index=False)
    table.sample(frac=1.0, random_state=1).to_csv(tmp_path / "b.csv", index=False)
    agg = dataclasses.replace(
        AGG, teacher_operators=["huber"], pooled=True, bias_decomposition=True
    )
    aggregate.run(agg, BETA, aggregate.AggregatePaths(tmp_path / "a.parquet", tmp_path / "1.csv", tmp_path / "r1"))
    aggregate.run(agg, BETA, aggregate.AggregatePaths(tmp_path / "a.parquet", tmp_path / "2.csv", tmp_path / "r2"))
    aggregate.run(agg, BETA, aggregate.AggregatePaths(tmp_path / "b.csv", tmp_path / "3.csv", None))
    first = (tmp_path / "1.csv").read_bytes()
    assert first == (tmp_path / "2.csv").read_bytes() == (tmp_path / "3.csv").read_bytes()
    for name in [
        "aggregate.json",
        *(
            f"aggregate/{p}.{e}"
            for p in (
                "beta_distribution",
                "category_mix",
                "teacher_agreement",
                "disagreement",
                "tie_breaks",
            )
            for e in ("png", "csv")
        ),
    ]:
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes(), name
    assert b"\r" not in first and first.endswith(b"\n")
    # Fixed format: 12 decimals at most, shortest form.
    values = first.decode().splitlines()[1].split(",")
    assert all(
        len(v.split(".")[1]) <= 12 for v in values if v.replace(".", "").isdigit() and "." in v
    )


def test_csv_round_trips_awkward_prompt_ids(tmp_path):
    ids = ["007", "a,b", 'say "hi"', "NA", "line\nbreak", "ünï"]
    spec = {pid: HAND["p1"] for pid in ids}
    calls = tmp_path / "calls.parquet"
    calls_table(spec).to_parquet(calls, index=False)
    aggregate.run(AGG, BETA, aggregate.AggregatePaths(calls, tmp_path / "beta.csv", None))
    frame = read_beta_artifact(tmp_path / "beta.csv", 0.03, 0.3)
    assert list(frame["prompt_id"]) == sorted(ids)
    plain = pd.read_csv(tmp_path / "beta.csv", dtype={"prompt_id": str}, keep_default_na=False)
    assert sorted(plain["prompt_id"]) == sorted(ids)
    assert frame["beta_annotators_mean_ens"].tolist() == pytest.approx(
        [0.1785] * len(ids), **APPROX
    )


def test_reader_validates_the_artifact(tmp_path):
    path = tmp_path / "beta.csv"
    calls = tmp_path / "calls.csv"
    calls_table({"p1": HAND["p1"], "p2": HAND["p1"]}).to_csv(calls, index=False)
    aggregate.run(AGG, BETA, aggregate.AggregatePaths(calls, path, None))
    frame = read_beta_artifact(path, 0.03, 0.3)
    assert frame["category_b_ens_tie_break"].dtype == bool
    with pytest.raises(SchemaViolation, match="beta_b_v1"):
        read_beta_artifact(path, 0.03, 0.25)  # 0.273 outside a narrower envelope
    text = path.read_text()
    cases = {
        "duplicate": text + text.splitlines()[1] + "\n",
        "category": text.replace("Factuality", "Humor", 1),
        "gap": text.replace(",0.4,0.138,", ",0.45,0.138,", 1),
    }
    for name, body in cases.items():
        bad = tmp_path / f"{name}.csv"
        bad.write_text(body)
        with pytest.raises(SchemaViolation):
            read_beta_artifact(bad, 0.03, 0.3)
    frame.drop(columns="beta_random").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SchemaViolation, match="should be 'beta_random'"):
        read_beta_artifact(tmp_path / "short.csv", 0.03, 0.3)
    with pytest.raises(SchemaViolation, match="not a beta artifact"):
        read_beta_artifact(calls, 0.03, 0.3)


def test_schema_rejects_unknown_extra_columns_and_wrong_order():
    with pytest.raises(ValueError, match="unknown beta artifact column"):
        schemas.beta_table_schema(["a"], ["v1"], 0.03, 0.3, extra_columns=["beta_mystery"])
    frame = run_frame(HAND)
    schema = schemas.beta_table_schema(
        ["a", "b"], ["v1", "v2", "v3"], 0.03, 0.3, list(frame.columns[-6:])
    )
    schema.validate(frame)
    with pytest.raises(Exception, match="column"):
        schema.validate(frame[[*frame.columns[1:], frame.columns[0]]])


# --------------------------------------------------------------------------------------------
# reports, CLI, stage, params
# --------------------------------------------------------------------------------------------


def test_reports_on_the_hand_case(tmp_path):
    calls = tmp_path / "calls.csv"
    calls_table(HAND).to_csv(calls, index=False)
    aggregate.run(AGG, BETA, aggregate.AggregatePaths(calls, tmp_path / "beta.csv", tmp_path / "rep"))
    saved = json.loads((tmp_path / "rep" / "aggregate.json").read_text())
    assert saved["tie_break_rate"] == {"a": 0.0, "b": 1.0, "annotators": 1.0}
    assert saved["agreement"]["category_agreement"] == {"a~b": 0.0}
    assert saved["agreement"]["gap_spearman"] == {"a~b": None}  # one pair: undefined
    assert saved["beta"]["beta_annotators_mean_ens"]["mean"] == pytest.approx(0.1785)
    assert saved["pairs"]["kept"] == 1
    mix = pd.read_csv(tmp_path / "rep" / "aggregate" / "category_mix.csv")
    assert mix.query("annotator == 'b' and category == 'Factuality'")["count"].item() == 1
    hist = pd.read_csv(tmp_path / "rep" / "aggregate" / "beta_distribution.csv")
    assert hist["all"].sum() == 1 and hist["Safety"].sum() == 1
    assert (tmp_path / "rep" / "aggregate" / "beta_distribution.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_free_form_panel_with_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the paper's defaults
    rng = np.random.default_rng(2)
    spec = {
        f"q{i}": {
            a: {
                f"v{k}": (str(rng.choice(schemas.CATEGORIES)), round(float(rng.random()), 2), 1.0)
                for k in (1, 2, 3, 4)
            }
            for a in ("alpha", "b2", "Z")
        }
        for i in range(30)
    }
    calls_table(spec).to_csv("calls.csv", index=False)
    argv = [
        "aggregate",
        "--calls",
        "calls.csv",
        "--out",
        "out/beta.csv",
        "--beta-min",
        "0.05",
        "--beta-max",
        "0.25",
        "--seed",
        "7",
        "--no-reports",
    ]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pairs"]["kept"] == 30 and printed["panel"] == {"annotators": 3, "variants": 4}
    frame = read_beta_artifact("out/beta.csv", 0.05, 0.25)
    assert frame.columns[2] == "category_Z_v1" and "beta_annotators_mean_v4" in frame.columns
    row = frame.iloc[0]
    assert row["beta_alpha_v1"] == pytest.approx(0.05 + 0.2 * row["magnitude_alpha_v1"], **APPROX)
    digest = hashlib.sha256(f"7:{row['prompt_id']}".encode()).digest()[:8]
    assert row["beta_random"] == pytest.approx(
        0.05 + 0.2 * (int.from_bytes(digest, "big") >> 11) * 2.0**-53, **APPROX
    )
    assert not Path("reports").exists()


def test_cli_strict_error_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    table = calls_table(HAND)
    table.loc[4, "magnitude"] = 7
    table.to_csv("calls.csv", index=False)
    assert cli.main(["aggregate", "--calls", "calls.csv", "--out", "beta.csv", "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sp2dpo: error: calls.csv: row 4 (line 6)") and "'magnitude'" in err
    assert not Path("beta.csv").exists()
    assert cli.main(["aggregate", "--calls", "calls.csv", "--out", "beta.csv", "--no-reports"]) == 2
    assert "no pair has a complete ok call set" in capsys.readouterr().err


def test_cli_reads_params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("aggregate:\n  teacher_operators: [median]\nbeta:\n  max: 0.2\n")
    calls_table(HAND).to_csv("calls.csv", index=False)
    assert cli.main(["aggregate", "--calls", "calls.csv", "--out", "beta.csv", "--no-reports"]) == 0
    frame = read_beta_artifact("beta.csv", 0.03, 0.2)
    assert "beta_annotators_median_ens" in frame.columns
    assert frame.at[0, "beta_a_ens"] == pytest.approx(0.03 + 0.17 * 0.4, **APPROX)


def test_stage_script_runs_in_a_project_layout(tmp_path):
    (tmp_path / "data" / "annotate").mkdir(parents=True)
    calls_table(HAND).to_parquet(tmp_path / "data" / "annotate" / "calls.parquet", index=False)
    (tmp_path / "params.yaml").write_text("aggregate: {}\nbeta: {min: 0.03, max: 0.3, seed: 42}\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "aggregate.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "beta" / "beta.csv").exists()
    assert (tmp_path / "reports" / "aggregate.json").exists()
    assert len(list((tmp_path / "reports" / "aggregate").iterdir())) == 11  # 5 plots x (png, csv) + excluded.csv


def test_params_yaml_sections_and_config_checks():
    params = config.load(ROOT / "params.yaml", sections=["aggregate", "beta"])
    assert params.aggregate == config.AggregateConfig()
    assert params.beta == config.BetaConfig()
    bad = [
        ({"category_envelopes": {"Humour": {"min": 0.03, "max": 0.1}}}, "unknown categor"),
        ({"prompt_weights": {"v1": -1}}, "must be a finite number >= 0"),
        ({"prompt_weights": {"first": 1}}, "not a variant name"),
        ({"trim_fraction": 0.5}, r"\[0, 0.5\)"),
        ({"teacher_operators": ["median", "median"]}, "duplicates"),
        ({"teacher_operators": ["mode"]}, "not allowed"),
        ({"damping": "log"}, "not allowed"),
    ]
    for data, message in bad:
        with pytest.raises(config.ConfigError, match=message):
            config.build(config.AggregateConfig, data, "aggregate")
    with pytest.raises(config.ConfigError, match="0 < min < max"):
        config.build(config.BetaConfig, {"min": 0.3, "max": 0.03}, "beta")


def test_an_empty_call_csv_names_the_file(tmp_path):
    path = tmp_path / "calls.csv"
    path.write_text("")
    with pytest.raises(CallTableError, match=r"calls\.csv: empty file \(no header line\)"):
        aggregate.read_calls(path)


def test_excluded_pairs_are_listed_by_pair_and_reason(tmp_path):
    """Default (non-strict) mode: excluded pairs are counted in aggregate.json and named, one row
    each with its reason, in aggregate/excluded.csv."""
    spec = {f"p{i}": HAND["p1"] for i in range(1, 5)}
    table = calls_table(spec)
    failed = table.index[table["prompt_id"] == "p3"][0]
    table.loc[failed, ["status", "category", "magnitude", "confidence"]] = ["http_error", None, None, None]
    table = table.drop(index=table.index[table["prompt_id"] == "p2"][:1])
    path = tmp_path / "calls.parquet"
    table.to_parquet(path, index=False)
    metrics = aggregate.run(AGG, BETA, aggregate.AggregatePaths(path, tmp_path / "beta.csv", tmp_path / "rep"))
    listed = pd.read_csv(tmp_path / "rep" / "aggregate" / "excluded.csv", dtype=str)
    assert listed.to_dict("records") == [
        {"prompt_id": "p2", "reason": "missing_call"},
        {"prompt_id": "p3", "reason": "failed_call"},
    ]
    assert metrics["pairs"]["excluded"] == 2 and metrics["pairs"]["kept"] == 2


def test_an_infinite_envelope_flag_is_blamed_on_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls_table(HAND).to_csv("calls.csv", index=False)
    assert cli.main(["aggregate", "--calls", "calls.csv", "--out", "beta.csv", "--beta-max", "inf"]) == 2
    err = capsys.readouterr().err
    assert "error: argument --beta-max: must be a finite number, got inf" in err and "calls.csv" not in err
    assert not Path("beta.csv").exists()
