"""The length-controlled win rate of AlpacaEval 2.0: the GLM and its per-instruction inputs.

Length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval", AlpacaEval's
``length_controlled_v1``): a logistic GLM explains ``p_i`` by

    logit P(model wins on i) = w_len * tanh(delta_i / sd(delta)) + w_diff * difficulty_i + w_ng

with ``delta_i = len(output_1_i) - len(output_2_i)`` (characters, ``sd`` with ``ddof=1``), the
per-instruction ``difficulty_i`` (``instruction_difficulty.csv``, by AlpacaEval index) and the
model's own offset ``w_ng`` (feature ``not_gamed_baseline`` = 1). No intercept. The fit is L1
penalised (liblinear), the penalty chosen by 5-fold grouped cross-validation on the continuous log
loss, and regularised toward length-gamed baselines: the rows of ``df_gamed.csv`` (feature
``not_gamed_baseline`` = 0) join the training rows with weight ``lambda / 2`` (lambda = 0.2). The
LC win rate is the prediction with the length term switched off:

    LC = 100 * mean_i sigmoid(w_diff * difficulty_i + w_ng)

The two per-instruction files live on the Hub only. Without them, :data:`OFFLINE_ESTIMATE` fits
``tanh(std_delta_len) + not_gamed_baseline`` on the model's rows alone (AlpacaEval's
``length_controlled_minimal`` formula): an *estimate* that can differ from the leaderboard LC by
several points and is always labelled as such (``lc_is_offline_estimate``).

Each row enters the fit twice (outcome 1 weighted ``p``, outcome 0 weighted ``1 - p``), and
liblinear drops rows of weight 0. When every training row of a cross-validation fold (or of the
whole fit) has preference 1, or every one preference 2, one outcome is left without rows, and
liblinear's C code prints ``WARNING: class label N specified in weight is not found`` to the
process's stderr once per penalty tried (ten lines per such fold; a Python warnings filter cannot
catch them). This happens with a handful of annotations. :func:`fit_glm` counts those fits
(:attr:`GLMFit.one_class_fits`), keeps liblinear's lines out of the output and logs one line
instead; the fit itself is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.core.artifacts import check_input
from sp2dpo.core.errors import UserError

log = logging.getLogger(__name__)

#: Feature (column) names, spelled as in AlpacaEval's GLM weight files.
FEATURE_LENGTH = "np.tanh(std_delta_len)"
FEATURE_DIFFICULTY = "instruction_difficulty"
FEATURE_NOT_GAMED = "not_gamed_baseline.astype(float)"

#: Seed of the liblinear solver (as AlpacaEval).
RANDOM_STATE = 123
#: Predictions are clipped to [EPS, 1 - EPS] in the cross-validation log loss.
EPS = 1e-15
#: What liblinear prints to stderr for a fit whose rows of one outcome all have weight 0.
_ONE_CLASS_LINE = re.compile(rb"^WARNING: class label \d+ specified in weight is not found\r?\n?$")


@dataclass(frozen=True)
class LCMethod:
    """One length-controlled GLM variant, as data.

    Attributes:
        name: label reported as ``length_controlled_method``.
        features: design-matrix columns, in order (no intercept).
        regularize_lambda: weight ``lambda`` of the gamed-baseline rows (each gets
            ``lambda / 2``); ``None`` means no gamed rows.
        n_splits: cross-validation folds (fewer when there are fewer rows).
        is_offline_estimate: the variant is an offline approximation of the official LC.
        description: one line for the text output.
    """

    name: str
    features: tuple[str, ...]
    regularize_lambda: float | None
    n_splits: int
    is_offline_estimate: bool
    description: str


#: AlpacaEval 2.0's official length-controlled win rate (needs the two Hub files).
LENGTH_CONTROLLED_V1 = LCMethod(
    name="length_controlled_v1",
    features=(FEATURE_LENGTH, FEATURE_DIFFICULTY, FEATURE_NOT_GAMED),
    regularize_lambda=0.2,
    n_splits=5,
    is_offline_estimate=False,
    description="AlpacaEval length_controlled_v1 GLM (instruction difficulty, gamed baselines)",
)
#: The offline estimate: length term and model offset only, no regularisation.
OFFLINE_ESTIMATE = LCMethod(
    name="offline-estimate:length-only-glm",
    features=(FEATURE_LENGTH, FEATURE_NOT_GAMED),
    regularize_lambda=None,
    n_splits=5,
    is_offline_estimate=True,
    description="length-only GLM without instruction difficulty or gamed-baseline "
    "regularisation; not the leaderboard LC",
)
#: Registered LC variants by name.
LC_METHODS: dict[str, LCMethod] = {m.name: m for m in (LENGTH_CONTROLLED_V1, OFFLINE_ESTIMATE)}

#: Columns ``df_gamed.csv`` must have (``model`` and any others are ignored).
DF_GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty",
                    "not_gamed_baseline")


class LengthControlInputError(UserError, ValueError):
    """A bad ``instruction_difficulty.csv`` / ``df_gamed.csv`` or a missing instruction index."""


# --------------------------------------------------------------------------------------------
# per-instruction inputs of length_controlled_v1
# --------------------------------------------------------------------------------------------


def read_instruction_difficulty(path: str | Path) -> pd.Series:
    """Read ``instruction_difficulty.csv``: an index column (AlpacaEval index) and one value column.

    Returns:
        Float series indexed by the integer AlpacaEval index.

    Raises:
        FileNotFoundError, LengthControlInputError: missing file, wrong shape, non-numeric or
            non-finite values, duplicated indices.
    """
    path = check_input(path)
    try:
        table = pd.read_csv(path, index_col=0)
    except (ValueError, pd.errors.ParserError) as exc:
        raise LengthControlInputError(f"{path}: not a readable CSV ({exc})") from exc
    if table.shape[1] != 1 or table.empty:
        raise LengthControlInputError(
            f"{path}: expected an index column and one difficulty column, found columns "
            f"{[table.index.name, *table.columns]} and {len(table)} rows"
        )
    values = pd.to_numeric(table.iloc[:, 0], errors="coerce")
    index = pd.to_numeric(pd.Series(table.index), errors="coerce")
    if index.isna().any() or (index != index.round()).any():
        raise LengthControlInputError(f"{path}: the index column must hold integers")
    bad = ~np.isfinite(values.to_numpy(dtype=float))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LengthControlInputError(
            f"{path}: row {row} (index {table.index[row]}) has a non-numeric or non-finite "
            f"difficulty {table.iloc[row, 0]!r}"
        )
    series = pd.Series(values.to_numpy(dtype=float), index=index.astype(np.int64).to_numpy(),
                       name=FEATURE_DIFFICULTY)
    if series.index.duplicated().any():
        dup = int(series.index[series.index.duplicated()][0])
        raise LengthControlInputError(f"{path}: index {dup} appears more than once")
    return series


def read_df_gamed(path: str | Path) -> pd.DataFrame:
    """Read ``df_gamed.csv``: AlpacaEval's length-gamed baselines used to regularise the GLM.

    Required columns: :data:`DF_GAMED_COLUMNS` (``preference`` already in [0, 1],
    ``not_gamed_baseline`` boolean, False for these rows); ``model`` and others are dropped.

    Returns:
        A frame with exactly the required columns, ``index`` as int, the rest as float.
    """
    path = check_input(path)
    try:
        table = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise LengthControlInputError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in DF_GAMED_COLUMNS if c not in table.columns]
    if missing:
        raise LengthControlInputError(
            f"{path}: missing column(s) {missing}; found {list(table.columns)}"
        )
    if table.empty:
        raise LengthControlInputError(f"{path}: no rows")
    out = pd.DataFrame(index=range(len(table)))
    for col in DF_GAMED_COLUMNS:
        raw = table[col]
        if col == "not_gamed_baseline" and raw.dtype == object:
            raw = raw.map({"True": 1.0, "False": 0.0, True: 1.0, False: 0.0})
        values = pd.to_numeric(raw, errors="coerce").astype(float).to_numpy()
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise LengthControlInputError(
                f"{path}: row {row} column {col!r} is not a finite number ({table[col].iloc[row]!r})"
            )
        out[col] = values
    if ((out["preference"] < 0) | (out["preference"] > 1)).any():
        row = int(np.flatnonzero((out["preference"] < 0) | (out["preference"] > 1))[0])
        raise LengthControlInputError(
            f"{path}: row {row} column 'preference' = {out['preference'].iloc[row]} is outside "
            "[0, 1] (df_gamed preferences are already preference - 1)"
        )
    out["index"] = out["index"].astype(np.int64)
    return out


@dataclass(frozen=True)
class OfficialLCInputs:
    """The Hub files of ``length_controlled_v1``, read and checked.

    Attributes:
        difficulty: instruction difficulty by AlpacaEval index (:func:`read_instruction_difficulty`).
        df_gamed: the gamed-baseline rows (:func:`read_df_gamed`).
    """

    difficulty: pd.Series
    df_gamed: pd.DataFrame

    @classmethod
    def read(cls, difficulty_path: str | Path, df_gamed_path: str | Path) -> OfficialLCInputs:
        """Read both files and check that they agree on the difficulty of shared indices."""
        difficulty = read_instruction_difficulty(difficulty_path)
        df_gamed = read_df_gamed(df_gamed_path)
        unknown = sorted(set(df_gamed["index"]) - set(difficulty.index))
        if unknown:
            raise LengthControlInputError(
                f"{df_gamed_path}: index {unknown[0]} (and {len(unknown) - 1} more) not in "
                f"{difficulty_path}"
            )
        gap = np.abs(
            df_gamed["instruction_difficulty"].to_numpy()
            - difficulty.loc[df_gamed["index"]].to_numpy()
        ).max()
        if gap > 1e-6:
            log.warning(
                "instruction difficulty of %s and %s differ by up to %.3g; the model's rows use "
                "%s, the gamed rows their own column", difficulty_path, df_gamed_path, gap,
                difficulty_path,
            )
        return cls(difficulty=difficulty, df_gamed=df_gamed)


# --------------------------------------------------------------------------------------------
# the GLM
# --------------------------------------------------------------------------------------------


def continuous_log_loss(
    y: np.ndarray, q: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """Weighted continuous log loss of duplicated rows (lower is better).

    Each row with target probability ``p`` and weight ``w`` appears twice, as ``y = 1`` with
    sample weight ``p * w`` and as ``y = 0`` with ``(1 - p) * w``. With ``q`` the predicted
    ``P(y = 1)`` clipped to ``[EPS, 1 - EPS]`` the two copies together contribute
    ``-w * (p * log q + (1 - p) * log(1 - q))``; the loss is the mean of that over rows (half the
    number of copies: a cross-validation fold always holds both copies of a row).

    Example:
        >>> p, w, q = 0.8, 2.0, 0.6
        >>> got = continuous_log_loss(np.array([1, 0]), np.array([q, q]),
        ...                           np.array([p * w, (1 - p) * w]))
        >>> bool(np.isclose(got, -w * (p * np.log(q) + (1 - p) * np.log(1 - q))))
        True
    """
    y = np.asarray(y)
    if sample_weight is None:
        sample_weight = np.ones(len(y))
    q = np.clip(np.asarray(q, dtype=float), EPS, 1 - EPS)
    q_label = np.where(y == 1, q, 1 - q)
    return float(np.sum(sample_weight * -np.log(q_label)) / (len(y) / 2))


def _cv_scorer() -> Any:
    """:func:`continuous_log_loss` as an sklearn scorer that receives the sample weights."""
    from sklearn.metrics import make_scorer

    scorer = make_scorer(
        continuous_log_loss, greater_is_better=False, response_method="predict_proba"
    )
    return scorer.set_score_request(sample_weight=True)


@dataclass(frozen=True)
class GLMFit:
    """A fitted length-controlled GLM.

    Attributes:
        coef: weight per feature name.
        C: the inverse L1 penalty chosen by cross-validation.
        n_splits: folds used.
        one_class_fits: of the ``n_splits + 1`` liblinear fits (the folds, then the fit on all
            rows), those whose rows of one outcome all had weight 0 (see the module docstring).
    """

    coef: dict[str, float]
    C: float
    n_splits: int
    one_class_fits: int = 0


def _one_class_fits(y2: np.ndarray, sw2: np.ndarray, trains: Sequence[np.ndarray]) -> int:
    """How many of the fits on the rows ``trains`` leave liblinear one outcome with weight > 0."""
    return sum(
        not all(((y2[rows] == label) & (sw2[rows] > 0)).any() for label in (0, 1))
        for rows in trains
    )


@contextlib.contextmanager
def _without_one_class_lines() -> Iterator[None]:
    """Run the block with the process's stderr (fd 2) in a temporary file, then write back what
    it received except liblinear's one-class lines. The rest is delayed, not lost."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held if not _ONE_CLASS_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def fit_glm(
    X: np.ndarray,
    p: np.ndarray,
    weight: np.ndarray,
    features: Sequence[str],
    n_splits: int = 5,
    random_state: int = RANDOM_STATE,
) -> GLMFit:
    """Fit an L1 logistic regression to continuous targets ``p`` in [0, 1] (no intercept).

    Each row is duplicated (``y = 1`` weighted ``p * w``, ``y = 0`` weighted ``(1 - p) * w``),
    so the weighted binary log loss equals the continuous one. ``C`` is picked from sklearn's
    default grid of 10 values by :class:`~sklearn.model_selection.GroupKFold` cross-validation
    (both copies of a row in the same fold) on :func:`continuous_log_loss`, then refit on
    all rows.

    Args:
        X: design matrix, shape (n, len(features)).
        p: target probabilities, shape (n,).
        weight: row weights, shape (n,).
        features: column names, for :attr:`GLMFit.coef`.
        n_splits: folds (2 <= n_splits <= n).
        random_state: liblinear seed.
    """
    import warnings

    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold

    n = len(p)
    X2 = np.vstack([X, X])
    y2 = np.concatenate([np.ones(n), np.zeros(n)])
    sw2 = np.concatenate([p * weight, (1 - p) * weight])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    folds = list(GroupKFold(n_splits=n_splits).split(X2, y2, groups))
    one_class = _one_class_fits(y2, sw2, [train for train, _ in folds] + [np.arange(2 * n)])
    quiet = _without_one_class_lines() if one_class else contextlib.nullcontext()
    # Metadata routing hands the sample weights to the CV scorer; enabled locally (thread-local
    # config), whatever the caller's global sklearn setting.
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings(), quiet:
        # liblinear's convergence warnings on tiny folds; the fit is still reported.
        warnings.simplefilter("ignore", category=UserWarning)
        model = LogisticRegressionCV(
            Cs=10,
            cv=folds,
            l1_ratios=(1.0,),
            solver="liblinear",
            fit_intercept=False,
            dual=False,
            random_state=random_state,
            scoring=_cv_scorer(),
            use_legacy_attributes=False,
        )
        model.fit(X2, y2, sample_weight=sw2)
    if one_class:
        log.warning(
            "length-controlled GLM: %d of %d liblinear fits (%d cross-validation folds and the "
            "fit on all rows) had rows of one outcome only (every preference 1, or every "
            "preference 2); liblinear's 'class label N specified in weight is not found' lines "
            "were left out", one_class, n_splits + 1, n_splits,
        )
    coef = model.coef_.ravel()
    return GLMFit(
        coef={f: float(c) for f, c in zip(features, coef, strict=True)},
        C=float(np.ravel(model.C_)[0]),
        n_splits=n_splits,
        one_class_fits=one_class,
    )


def _std_delta_len(frame: pd.DataFrame) -> np.ndarray:
    delta = (frame["output_1"].str.len() - frame["output_2"].str.len()).astype(float)
    sd = float(delta.std(ddof=1)) if len(delta) > 1 else math.nan
    if not math.isfinite(sd) or sd == 0:
        # No spread in length differences: nothing to standardise or control for.
        return np.zeros(len(delta))
    return (delta / sd).to_numpy()


def _difficulty(official: OfficialLCInputs | None, index: np.ndarray | None, n: int) -> np.ndarray:
    """Instruction difficulty of each annotation row, looked up by its AlpacaEval index."""
    if official is None or index is None or len(index) != n:
        raise LengthControlInputError(
            "length_controlled_v1 needs the AlpacaEval index of every annotation "
            "(pass the reference outputs)"
        )
    index = np.asarray(index, dtype=np.int64)
    absent = ~np.isin(index, official.difficulty.index.to_numpy())
    if absent.any():
        row = int(np.flatnonzero(absent)[0])
        raise LengthControlInputError(
            f"annotation {row} (AlpacaEval index {index[row]}) has no instruction difficulty"
        )
    return official.difficulty.loc[index].to_numpy(dtype=float)


@dataclass(frozen=True)
class LCResult:
    """A length-controlled win rate with its provenance.

    Attributes:
        winrate: LC win rate in percent (NaN when it cannot be computed).
        method: the :class:`LCMethod` used.
        reason: why LC is NaN or exactly 50, else ``None``.
        fit: the GLM (``None`` when no fit was made).
    """

    winrate: float
    method: LCMethod
    reason: str | None = None
    fit: GLMFit | None = None


def length_controlled_winrate(
    frame: pd.DataFrame,
    official: OfficialLCInputs | None = None,
    index: np.ndarray | None = None,
) -> LCResult:
    """The length-controlled win rate of one annotations frame (see module docstring).

    Args:
        frame: validated annotations (not modified).
        official: the Hub files; ``None`` gives the labelled :data:`OFFLINE_ESTIMATE`.
        index: AlpacaEval index per row (:func:`sp2dpo.evaluate.benchmarks.alpaca.match_reference`);
            required with ``official``.

    Returns:
        An :class:`LCResult`; 50 exactly when ``generator_2 == generator_1`` (baseline against
        itself) or when the L1 fit zeroes every weight (both with a reason), NaN with a reason
        when there are fewer than 2 rows.
    """
    method = OFFLINE_ESTIMATE if official is None else LENGTH_CONTROLLED_V1
    n = len(frame)
    if n and (frame["generator_1"] == frame["generator_2"]).all():
        return LCResult(50.0, method, reason="generator_2 is the baseline: 50 by definition")
    if n < 2:
        return LCResult(
            math.nan, method, reason=f"{n} annotation(s): the GLM needs at least 2 rows"
        )
    p = frame["preference"].to_numpy(dtype=float) - 1
    ones = np.ones(n)
    columns = {FEATURE_LENGTH: np.tanh(_std_delta_len(frame)), FEATURE_NOT_GAMED: ones}
    if FEATURE_DIFFICULTY in method.features:
        columns[FEATURE_DIFFICULTY] = _difficulty(official, index, n)
    X = np.column_stack([columns[f] for f in method.features])
    # Prediction: the same rows with the length term switched off.
    X_pred = np.column_stack(
        [np.zeros(n) if f == FEATURE_LENGTH else columns[f] for f in method.features]
    )
    y, w = p, ones
    if method.regularize_lambda is not None:
        if official is None:  # pragma: no cover - registered methods pair these
            raise LengthControlInputError(f"{method.name} needs df_gamed.csv")
        gamed = official.df_gamed
        gamed_columns = {
            FEATURE_LENGTH: np.tanh(gamed["std_delta_len"].to_numpy()),
            FEATURE_DIFFICULTY: gamed["instruction_difficulty"].to_numpy(),
            FEATURE_NOT_GAMED: gamed["not_gamed_baseline"].to_numpy(),
        }
        X = np.vstack([X, np.column_stack([gamed_columns[f] for f in method.features])])
        y = np.concatenate([p, gamed["preference"].to_numpy()])
        w = np.concatenate([ones, np.full(len(gamed), method.regularize_lambda / 2)])
    fit = fit_glm(X, y, w, method.features, n_splits=min(method.n_splits, len(y)))
    coef = np.array([fit.coef[f] for f in method.features])
    lc = 100 * float(np.mean(1 / (1 + np.exp(-(X_pred @ coef)))))
    reason = None
    if not coef.any():
        reason = (
            f"cross-validation shrank every GLM weight to 0 ({n} annotations are too few to "
            "estimate them): LC = 50"
        )
    return LCResult(lc, method, fit=fit, reason=reason)
