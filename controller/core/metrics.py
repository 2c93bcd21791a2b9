"""Quality metrics a business decides on, as gates: class-aware classification metrics, proper scores,
regression losses besides MAE, a business outcome, and the same tests per segment.

Pure (numpy and the standard library only). The controller measures sufficient statistics in SQL
(``storage.quality``) — confusion counts per cell, sums and sums of squares of per-row losses — and
this module turns them into *harm estimates*: a difference challenger-minus-champion on the harm
scale, its standard error, the tolerated harm (the policy's margin, in the metric's own unit) and the
number of observations behind it. ``controller.core.judge`` decides each estimate with the same
always-valid one-sided confidence sequence and Holm family as its own gates (``judge._harm_gate``).

Metrics and their standard errors
---------------------------------
Every confusion-matrix metric (per-class recall and precision, balanced accuracy, macro-F1, accuracy)
is a smooth function f of the cell shares p of the confusion table, so its standard error comes from
its influence function IF(cell) = sum_j df/dp_j (1[cell = j] - p_j) (the delta method):
Var(f_hat) = sum_cells p_cell IF(cell)^2 / n.

* paired (shadow: both arms scored the labelled row): the cells are (label, champion class,
  challenger class) and the difference's influence is IF_challenger(label, b) - IF_champion(label, a),
  so the positive correlation of two similar models shrinks the interval;
* unpaired (canary: each arm answered its own requests): the two variances add.

Definitions match scikit-learn exactly (tested to 1e-9): recall = TP / (TP + FN); precision =
TP / (TP + FP) (0 when the class is never predicted, sklearn's ``zero_division=0``); balanced accuracy
= mean recall over the classes present in the labels (``balanced_accuracy_score``); macro-F1 = mean
over the given classes of 2 TP / (2 TP + FP + FN) (``f1_score(average="macro", labels=...)``; a class
with no true and no predicted row scores 0). A never-predicted class has precision 0 with a
degenerate (zero) influence: its standard error comes only from the other arm.

Proper scores: log loss = mean of -ln p(true class) with p clipped to [eps, 1 - eps], eps = float64
machine epsilon (``sklearn.metrics.log_loss``). Brier, binary = mean of (score - 1[positive])^2
(``brier_score_loss``); multi-class = mean over rows of sum_k (p_k - 1[y = k])^2 (Brier's 1950
definition; ``brier_score_loss`` on multi-class targets). Binary reads P(positive class), the score
the router records; more than two classes read each arm's stored probability vector
(``paired_outputs.champion_proba`` / ``challenger_proba``). Their paired difference is a mean of
per-row differences (sum and sum of squares), so the loss gates are the same for any number of classes.

Regression: RMSE difference sqrt(m2) - sqrt(m1) of the mean squared errors, delta method with the
fourth moments (and the cross moment of the squared errors when paired); pinball (quantile) loss at
level q = mean of max(q (y - yhat), (q - 1)(y - yhat)) (``mean_pinball_loss``), a mean.

ROC AUC has no sequential interval here: it is a U-statistic whose variance needs every score, not
sums. It uses a documented *fixed-horizon* fallback: the gate waits until ``horizon`` labelled rows
exist, then tests once, on exactly the first ``horizon`` rows by arrival (DeLong et al. 1988
variance, paired when both arms scored the rows); every later look re-reads the same rows and so
gets the same answer — the test is not repeated on growing data, so its one-sided level holds.
More than two classes: the macro one-vs-rest AUC (the mean over classes k of the binary AUC of
"label = k" against p_k; ``roc_auc_score(multi_class="ovr", average="macro")``), same horizon, its
variance the DeLong structural components averaged over the classes per row (``macro_ovr_delong``).

Business outcome: the arms' mean outcome per served request (revenue, a 0/1 conversion, a cost),
unpaired Welch standard error; only canary-served requests count (in shadow the challenger's answer
never reached the user, so the outcome recorded is the champion's doing).

Null hypothesis of every harm test: the challenger is worse than the champion by at most the margin
(harm <= margin). See docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "CLASS_METRICS",
    "EPS",
    "Auc",
    "Confusion",
    "HarmEstimate",
    "LossMoments",
    "MetricSpec",
    "OutcomeMoments",
    "QualityPolicy",
    "QualityStats",
    "SegmentPolicy",
    "SegmentStats",
    "arm_values",
    "auc_estimates",
    "macro_ovr_auc",
    "macro_ovr_delong",
    "classification_value",
    "higher_is_better",
    "confusion_from_rows",
    "delong",
    "estimates",
    "influence",
    "ratio_of_sums",
    "reliability_curve",
    "roc_auc",
]

EPS = float(np.finfo(np.float64).eps)
Direction = Literal["increase", "decrease"]
ClassMetric = Literal["accuracy", "balanced_accuracy", "macro_f1", "recall", "precision"]
CLASS_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "recall", "precision")
# higher is better for every confusion metric; harm = champion - challenger


# --------------------------------------------------------------------------------------------------
# Confusion-matrix metrics and their influence functions
# --------------------------------------------------------------------------------------------------


def _matrix(cells: Mapping[tuple[int, int], int], k: int) -> npt.NDArray[np.float64]:
    m = np.zeros((k, k))
    for (y, p), n in cells.items():
        m[y, p] += n
    return m


def influence(
    matrix: npt.ArrayLike, metric: str, *, cls: int | None = None, classes: Sequence[int] | None = None
) -> tuple[float, npt.NDArray[np.float64]]:
    """Return (value, influence per cell) of a confusion-matrix metric; rows are labels, columns predictions.

    ``cls``: the class of ``recall`` / ``precision``. ``classes``: the classes macro-F1 averages over
    (default: those with a true or predicted row). Influence IF[y, p] of one observation in cell (y, p):
    Var(value) ~= sum p_cell IF^2 / n.
    """
    c = np.asarray(matrix, dtype=float)
    n = c.sum()
    k = c.shape[0]
    eye = np.eye(k)
    if n <= 0:
        return math.nan, np.zeros_like(c)
    rows, cols = c.sum(axis=1) / n, c.sum(axis=0) / n
    diag = np.diag(c) / n

    def recall_if(j: int) -> tuple[float, npt.NDArray[np.float64]]:
        if rows[j] == 0:
            return math.nan, np.zeros_like(c)
        r = diag[j] / rows[j]
        f = np.zeros_like(c)
        f[j, :] = (eye[j] - r) / rows[j]
        return float(r), f

    if metric == "accuracy":
        acc = float(diag.sum())
        return acc, eye - acc
    if metric == "recall":
        assert cls is not None
        return recall_if(cls)
    if metric == "precision":
        assert cls is not None
        if cols[cls] == 0:  # never predicted: sklearn's zero_division=0, a degenerate estimate
            return 0.0, np.zeros_like(c)
        p = diag[cls] / cols[cls]
        f = np.zeros_like(c)
        f[:, cls] = (eye[cls] - p) / cols[cls]
        return float(p), f
    if metric == "balanced_accuracy":
        present = [j for j in range(k) if rows[j] > 0]
        parts = [recall_if(j) for j in present]
        return float(np.mean([v for v, _ in parts])), sum((f for _, f in parts), np.zeros_like(c)) / len(
            parts
        )
    if metric == "macro_f1":
        chosen = list(classes) if classes is not None else [j for j in range(k) if rows[j] + cols[j] > 0]
        total, f = 0.0, np.zeros_like(c)
        for j in chosen:
            denominator = rows[j] + cols[j]
            if denominator == 0:
                continue
            f1 = 2.0 * diag[j] / denominator
            total += f1
            indicator = np.zeros_like(c)
            indicator[j, :] += 1.0
            indicator[:, j] += 1.0
            f += (2.0 * np.outer(eye[j], eye[j]) - f1 * indicator) / denominator
        return total / len(chosen), f / len(chosen)
    raise ValueError(f"unknown classification metric {metric!r}")


def classification_value(
    matrix: npt.ArrayLike, metric: str, *, cls: int | None = None, classes: Sequence[int] | None = None
) -> float:
    """Return a confusion-matrix metric's value (see ``influence``)."""
    return influence(matrix, metric, cls=cls, classes=classes)[0]


@dataclass(frozen=True, kw_only=True)
class Confusion:
    """Labelled rows counted by cell, classes as codes 0..k-1 (``names`` gives their labels).

    ``paired``: (label, champion class, challenger class) -> rows where both arms answered.
    ``champion`` / ``challenger``: (label, predicted class) -> rows each arm answered (unpaired).
    """

    names: tuple[str, ...]
    paired: Mapping[tuple[int, int, int], int] | None = None
    champion: Mapping[tuple[int, int], int] | None = None
    challenger: Mapping[tuple[int, int], int] | None = None

    @property
    def k(self) -> int:
        return len(self.names)

    def arm_matrices(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Return the champion's and the challenger's confusion matrices."""
        k = self.k
        if self.paired is not None:
            a: dict[tuple[int, int], int] = {}
            b: dict[tuple[int, int], int] = {}
            for (y, p1, p2), n in self.paired.items():
                a[(y, p1)] = a.get((y, p1), 0) + n
                b[(y, p2)] = b.get((y, p2), 0) + n
            return _matrix(a, k), _matrix(b, k)
        return _matrix(self.champion or {}, k), _matrix(self.challenger or {}, k)

    @property
    def n(self) -> tuple[int, int]:
        a, b = self.arm_matrices()
        return int(a.sum()), int(b.sum())


def confusion_from_rows(
    labels: Sequence[object],
    champion: Sequence[object],
    challenger: Sequence[object],
    *,
    names: Sequence[object],
    paired: bool = True,
    champion_mask: npt.ArrayLike | None = None,
) -> Confusion:
    """Build a ``Confusion`` from arrays (the reference for the SQL GROUP BY in ``storage.quality``).

    Unpaired: ``champion_mask`` marks the rows the champion answered; the others are the challenger's.
    """
    code = {str(x): i for i, x in enumerate(names)}
    y = [code[str(v)] for v in labels]
    a = [code[str(v)] for v in champion]
    b = [code[str(v)] for v in challenger]
    if paired:
        cells: dict[tuple[int, int, int], int] = {}
        for t in zip(y, a, b, strict=True):
            cells[t] = cells.get(t, 0) + 1
        return Confusion(names=tuple(str(x) for x in names), paired=cells)
    mask = np.asarray(champion_mask, dtype=bool)
    c1: dict[tuple[int, int], int] = {}
    c2: dict[tuple[int, int], int] = {}
    for i, (yy, aa, bb) in enumerate(zip(y, a, b, strict=True)):
        if mask[i]:
            c1[(yy, aa)] = c1.get((yy, aa), 0) + 1
        else:
            c2[(yy, bb)] = c2.get((yy, bb), 0) + 1
    return Confusion(names=tuple(str(x) for x in names), champion=c1, challenger=c2)


def _class_difference(
    conf: Confusion, metric: str, *, cls: int | None, classes: Sequence[int] | None
) -> tuple[float, float, float, float, int, int, float, float] | None:
    """Return (champion value, challenger value, difference challenger - champion, se, n1, n2, se1, se2)."""
    m1, m2 = conf.arm_matrices()
    n1, n2 = int(m1.sum()), int(m2.sum())
    if n1 == 0 or n2 == 0:
        return None
    v1, f1 = influence(m1, metric, cls=cls, classes=classes)
    v2, f2 = influence(m2, metric, cls=cls, classes=classes)
    if math.isnan(v1) or math.isnan(v2):
        return None
    var1, var2 = float((m1 * f1 * f1).sum() / (n1 * n1)), float((m2 * f2 * f2).sum() / (n2 * n2))
    if conf.paired is not None:
        var = 0.0
        for (y, a, b), count in conf.paired.items():
            d = f2[y, b] - f1[y, a]
            var += count * d * d
        var /= n1 * n1
    else:
        var = var1 + var2
    return v1, v2, v2 - v1, math.sqrt(max(var, 0.0)), n1, n2, math.sqrt(var1), math.sqrt(var2)


# --------------------------------------------------------------------------------------------------
# Losses: per-row means (log loss, Brier, pinball), RMSE, business outcome
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LossMoments:
    """Sums of a per-row loss L (lower is better) over labelled rows.

    ``n1, s1, q1`` / ``n2, s2, q2``: count, sum L and sum L^2 per arm; ``nd, sd, qd``: count, sum and
    sum of squares of L_challenger - L_champion over rows both arms scored (paired; 0 when unpaired).
    """

    n1: int = 0
    s1: float = 0.0
    q1: float = 0.0
    n2: int = 0
    s2: float = 0.0
    q2: float = 0.0
    nd: int = 0
    sd: float = 0.0
    qd: float = 0.0

    @staticmethod
    def from_rows(champion: npt.ArrayLike, challenger: npt.ArrayLike, *, paired: bool) -> LossMoments:
        """Build from per-row losses (the reference for the SQL sums)."""
        a, b = np.asarray(champion, dtype=float), np.asarray(challenger, dtype=float)
        out = LossMoments(
            n1=a.size, s1=float(a.sum()), q1=float(a @ a), n2=b.size, s2=float(b.sum()), q2=float(b @ b)
        )
        if paired:
            d = b - a
            out = LossMoments(**{**out.__dict__, "nd": d.size, "sd": float(d.sum()), "qd": float(d @ d)})
        return out

    def arm_se(self) -> tuple[float, float]:
        """Return the standard error of each arm's mean loss."""
        out = []
        for n, total, sq in ((self.n1, self.s1, self.q1), (self.n2, self.s2, self.q2)):
            out.append(math.sqrt(max((sq - total * total / n) / (n - 1), 0.0) / n) if n >= 2 else math.nan)
        return out[0], out[1]

    def difference(self) -> tuple[float, float, float, float, int, int] | None:
        """Return (champion mean, challenger mean, difference, se, n1, n2), paired when possible."""
        if self.nd >= 2:
            mean = self.sd / self.nd
            var = max((self.qd - self.sd * mean) / (self.nd - 1), 0.0)
            m1 = self.s1 / self.n1 if self.n1 else math.nan
            m2 = self.s2 / self.n2 if self.n2 else math.nan
            return m1, m2, mean, math.sqrt(var / self.nd), self.nd, self.nd
        if min(self.n1, self.n2) < 2:
            return None
        m1, m2 = self.s1 / self.n1, self.s2 / self.n2
        v1 = max((self.q1 - self.s1 * m1) / (self.n1 - 1), 0.0)
        v2 = max((self.q2 - self.s2 * m2) / (self.n2 - 1), 0.0)
        return m1, m2, m2 - m1, math.sqrt(v1 / self.n1 + v2 / self.n2), self.n1, self.n2


@dataclass(frozen=True, kw_only=True)
class SquaredErrorMoments:
    """Sums of squared errors s = e^2 for RMSE: per arm n, sum s, sum s^2; paired: n and sum s1 s2."""

    n1: int = 0
    s1: float = 0.0
    q1: float = 0.0
    n2: int = 0
    s2: float = 0.0
    q2: float = 0.0
    paired_n: int = 0
    cross: float = 0.0

    @staticmethod
    def from_rows(champion: npt.ArrayLike, challenger: npt.ArrayLike, *, paired: bool) -> SquaredErrorMoments:
        """Build from per-row errors (prediction - label) of each arm."""
        a = np.asarray(champion, dtype=float) ** 2
        b = np.asarray(challenger, dtype=float) ** 2
        return SquaredErrorMoments(
            n1=a.size,
            s1=float(a.sum()),
            q1=float(a @ a),
            n2=b.size,
            s2=float(b.sum()),
            q2=float(b @ b),
            paired_n=a.size if paired else 0,
            cross=float(a @ b) if paired else 0.0,
        )

    def difference(self) -> tuple[float, float, float, float, int, int] | None:
        """Return (champion RMSE, challenger RMSE, difference, delta-method se, n1, n2)."""
        if min(self.n1, self.n2) < 2:
            return None
        m1, m2 = self.s1 / self.n1, self.s2 / self.n2
        r1, r2 = math.sqrt(m1), math.sqrt(m2)
        if r1 == 0 or r2 == 0:
            return r1, r2, r2 - r1, 0.0, self.n1, self.n2
        var1 = max(self.q1 / self.n1 - m1 * m1, 0.0) / (4 * m1)
        var2 = max(self.q2 / self.n2 - m2 * m2, 0.0) / (4 * m2)
        if self.paired_n:
            cov = (self.cross / self.paired_n - m1 * m2) / (4 * r1 * r2)
            var = max(var1 + var2 - 2 * cov, 0.0) / self.paired_n
        else:
            var = var1 / self.n1 + var2 / self.n2
        return r1, r2, r2 - r1, math.sqrt(var), self.n1, self.n2


@dataclass(frozen=True, kw_only=True)
class OutcomeMoments:
    """A business outcome per served request: count, sum and sum of squares per arm (canary only).

    ``ratio1`` / ``ratio2``: (n, Σx, Σy, Σx², Σy², Σxy) of the outcome x and its denominator y
    (e.g. revenue and visits) per arm, for a ratio outcome.
    """

    n1: int = 0
    s1: float = 0.0
    q1: float = 0.0
    n2: int = 0
    s2: float = 0.0
    q2: float = 0.0
    ratio1: tuple[float, ...] | None = None
    ratio2: tuple[float, ...] | None = None


def ratio_of_sums(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> tuple[float, float]:
    """Return R = Σx / Σy and its delta-method standard error (a ratio metric, e.g. revenue per visit).

    Var(R) ~= (s_xx - 2 R s_xy + R^2 s_yy) / (n ybar^2), with sample (co)variances s.
    """
    if n < 2 or sy == 0:
        return math.nan, math.nan
    r = sx / sy
    ybar = sy / n
    vxx = (sxx - sx * sx / n) / (n - 1)
    vyy = (syy - sy * sy / n) / (n - 1)
    vxy = (sxy - sx * sy / n) / (n - 1)
    var = max(vxx - 2 * r * vxy + r * r * vyy, 0.0) / (n * ybar * ybar)
    return r, math.sqrt(var)


# --------------------------------------------------------------------------------------------------
# ROC AUC: fixed horizon, DeLong variance
# --------------------------------------------------------------------------------------------------


def _midranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(x.size)
    i = 0
    while i < x.size:
        j = i
        while j < x.size and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks[order[i:j]] = 0.5 * (i + j - 1) + 1
        i = j
    return ranks


def _placements(
    scores: npt.NDArray[np.float64], positive: npt.NDArray[np.bool_]
) -> tuple[float, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return AUC and DeLong's structural components V10 (per positive) and V01 (per negative)."""
    pos, neg = scores[positive], scores[~positive]
    m, n = pos.size, neg.size
    tz = _midranks(np.concatenate([pos, neg]))
    tx, ty = _midranks(pos), _midranks(neg)
    auc = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v10, v01


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Return the area under the ROC curve (the Mann–Whitney probability, ties counted half)."""
    y = np.asarray(labels, dtype=bool)
    return _placements(np.asarray(scores, dtype=float), y)[0]


def delong(
    labels: npt.ArrayLike, champion: npt.ArrayLike, challenger: npt.ArrayLike | None = None
) -> tuple[float, float, float]:
    """Return (champion AUC, challenger AUC, variance of their difference) by DeLong et al. (1988).

    Paired (one label vector, two score vectors on the same rows): the covariance of the two AUCs
    enters the variance. With ``challenger`` None returns (AUC, nan, variance of the AUC).
    H0 of the implied z-test: the two areas are equal (or differ by a given margin).
    """
    y = np.asarray(labels, dtype=bool)
    a1, v10a, v01a = _placements(np.asarray(champion, dtype=float), y)
    m, n = int(y.sum()), int((~y).sum())
    if challenger is None:
        return a1, math.nan, float(np.var(v10a, ddof=1) / m + np.var(v01a, ddof=1) / n)
    a2, v10b, v01b = _placements(np.asarray(challenger, dtype=float), y)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    contrast = np.array([-1.0, 1.0])
    var = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    return a1, a2, var


def _ovr_influence(
    codes: npt.NDArray[np.int64], proba: npt.NDArray[np.float64], classes: Sequence[int]
) -> tuple[float, npt.NDArray[np.float64]]:
    """Return the macro one-vs-rest AUC over ``classes`` and each row's DeLong influence on it.

    Class k's AUC is the binary AUC of (label = k) against column k. A row's influence on it is its
    DeLong structural component minus the AUC, scaled so that the sum of squares over the rows is
    DeLong's variance S10/m + S01/n (positives by sqrt(m (m - 1)), negatives by sqrt(n (n - 1)));
    the macro AUC's influence is the mean of the classes' influences.
    """
    total = np.zeros(codes.size)
    areas = []
    for k in classes:
        y = codes == k
        m, n = int(y.sum()), int((~y).sum())
        area, v10, v01 = _placements(proba[:, k], y)
        influence = np.empty(codes.size)
        influence[y] = (v10 - area) / math.sqrt(m * (m - 1)) if m > 1 else 0.0
        influence[~y] = (v01 - area) / math.sqrt(n * (n - 1)) if n > 1 else 0.0
        total += influence
        areas.append(area)
    return float(np.mean(areas)), total / len(classes)


def macro_ovr_auc(labels: npt.ArrayLike, proba: npt.ArrayLike) -> float:
    """Return the macro one-vs-rest ROC AUC of class codes ``labels`` (0..K-1) and an (n, K) probability
    matrix: the mean over the classes present (with a positive and a negative row) of each class's
    binary AUC. With every class present it is ``roc_auc_score(y, proba, multi_class="ovr")``."""
    codes = np.asarray(labels, dtype=np.int64)
    p = np.asarray(proba, dtype=float)
    return _ovr_influence(codes, p, _ovr_classes(codes, p.shape[1]))[0]


def _ovr_classes(codes: npt.NDArray[np.int64], k: int) -> list[int]:
    return [c for c in range(k) if 0 < int((codes == c).sum()) < codes.size]


def macro_ovr_delong(
    labels: npt.ArrayLike, champion: npt.ArrayLike, challenger: npt.ArrayLike | None = None
) -> tuple[float, float, float]:
    """Return (champion, challenger macro one-vs-rest AUC, variance of their difference).

    The structural-components (DeLong et al. 1988) variance extended to the mean of the classes'
    one-vs-rest AUCs: each row's influence on the macro AUC is the mean of its DeLong components over
    the classes, and the variance is the sum of squared influences (of the difference of the arms'
    influences when paired, so their covariance — across arms and across classes — enters). With two
    classes it equals ``delong``. ``challenger`` None: (AUC, nan, variance of the AUC).
    H0 of the implied z-test: the two macro AUCs are equal (or differ by a given margin).
    """
    codes = np.asarray(labels, dtype=np.int64)
    p1 = np.asarray(champion, dtype=float)
    present = _ovr_classes(codes, p1.shape[1])
    a1, f1 = _ovr_influence(codes, p1, present)
    if challenger is None:
        return a1, math.nan, float(f1 @ f1)
    a2, f2 = _ovr_influence(codes, np.asarray(challenger, dtype=float), present)
    d = f2 - f1
    return a1, a2, float(d @ d)


@dataclass(frozen=True, kw_only=True)
class Auc:
    """Rows for the fixed-horizon AUC test: the first ``horizon`` labelled rows by arrival.

    Paired: ``labels`` with ``champion`` and ``challenger`` scores of the same rows. Unpaired:
    ``champion_labels`` / ``champion`` and ``challenger_labels`` / ``challenger`` separately.
    ``available``: labelled rows that exist so far (to report progress towards the horizon).

    More than two classes (``classes`` given): ``labels`` / ``challenger_labels`` are class codes
    (indexes into ``classes``) and ``champion_proba`` / ``challenger_proba`` each row's probability
    vector in ``classes`` order; the gate is the macro one-vs-rest AUC (``macro_ovr_delong``).
    """

    horizon: int
    available: int
    paired: bool
    labels: tuple[bool, ...] | tuple[int, ...] = ()
    champion: tuple[float, ...] = ()
    challenger: tuple[float, ...] = ()
    challenger_labels: tuple[bool, ...] | tuple[int, ...] = ()
    classes: tuple[str, ...] = ()
    champion_proba: tuple[tuple[float, ...], ...] = ()
    challenger_proba: tuple[tuple[float, ...], ...] = ()


# --------------------------------------------------------------------------------------------------
# Policy and statistics handed over by the controller
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """One quality gate: ``metric`` with ``role`` and ``margin`` (tolerated harm, the metric's unit).

    ``cls``: the class of per-class recall / precision. ``quantile``: the pinball loss level.
    ``direction`` (outcome): ``increase`` (more is better, e.g. revenue) or ``decrease`` (a cost).
    """

    metric: str
    role: str = "guardrail"
    margin: float = 0.0
    min_samples: int = 200
    cls: str | None = None
    quantile: float = 0.5
    direction: Direction = "increase"
    horizon: int = 2000
    ratio: bool = False

    @property
    def gate(self) -> str:
        if self.metric in ("recall", "precision"):
            return f"{self.metric}[{self.cls}]"
        if self.metric == "pinball":
            return f"pinball[{self.quantile:g}]"
        return self.metric


@dataclass(frozen=True, kw_only=True)
class SegmentPolicy:
    """Segments: each with ``min_samples`` labelled rows is tested on the ``metrics`` (gate names).

    ``role``: ``guardrail`` (a proven harm in a segment rolls back) or ``hold`` (it blocks promotion).
    """

    role: Literal["guardrail", "hold"] = "guardrail"
    min_samples: int = 200
    metrics: tuple[MetricSpec, ...] = ()


@dataclass(frozen=True, kw_only=True)
class QualityPolicy:
    """The quality gates of one step (built by ``controller.core.policy``)."""

    gates: tuple[MetricSpec, ...] = ()
    segments: SegmentPolicy | None = None


@dataclass(frozen=True, kw_only=True)
class SegmentStats:
    """The statistics of one segment (``column`` = ``value``, a category or a numeric bucket)."""

    column: str
    value: str
    confusion: Confusion | None = None
    abs_error: LossMoments | None = None


@dataclass(frozen=True, kw_only=True)
class QualityStats:
    """Sufficient statistics of the quality gates for one step; absent parts make their gates no-data.

    ``log_loss`` / ``brier`` / ``pinball``: loss moments; ``squared_error``: RMSE moments; ``outcome``:
    business outcome per served request (None in shadow); ``auc``: fixed-horizon rows;
    ``segments``: per-segment statistics; ``reason``: why a part is missing (shown as no-data).
    """

    confusion: Confusion | None = None
    log_loss: LossMoments | None = None
    brier: LossMoments | None = None
    squared_error: SquaredErrorMoments | None = None
    pinball: Mapping[float, LossMoments] = field(default_factory=dict)
    outcome: OutcomeMoments | None = None
    auc: Auc | None = None
    segments: tuple[SegmentStats, ...] = ()
    missing: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class HarmEstimate:
    """A gate's estimate on the harm scale (larger is worse), for ``judge`` to decide.

    ``harm`` vs ``limit`` (the tolerated harm); ``se`` its standard error; ``n_cs`` the observations
    behind it (confidence-sequence time). ``offset + scale * x`` shows harm-scale numbers in the
    metric's unit. ``fixed``: a fixed-horizon estimate, tested once with a normal interval, not a
    confidence sequence. ``no_data``: the reason the gate cannot decide yet (then the rest is unused).
    ``champion`` / ``challenger``: each arm's value of the metric, for reports.
    """

    gate: str
    role: str
    margin: float
    harm: float = math.nan
    se: float = math.nan
    n_cs: float = 0.0
    limit: float = 0.0
    n1: int = 0
    n2: int = 0
    describe: str = ""
    offset: float = 0.0
    scale: float = 1.0
    fixed: bool = False
    no_data: str | None = None
    champion: float = math.nan
    challenger: float = math.nan
    se_champion: float = math.nan
    se_challenger: float = math.nan
    segment: str | None = None


def higher_is_better(gate: str, reason: str = "") -> bool:
    """Whether a quality gate's metric improves upwards (scores) or downwards (losses, costs).

    ``reason``: the verdict's reason, which says so for the outcome gate (its direction is the user's).
    """
    metric = gate.rsplit(".", 1)[-1] if gate.startswith("segment[") else gate
    metric = metric.split("[", 1)[0]
    if metric == "outcome":
        return "decrease is better" not in reason
    return metric in (*CLASS_METRICS, "roc_auc")


def arm_values(q: QualityStats | None, policy: QualityPolicy | None) -> list[dict[str, object]]:
    """Return each quality gate's value per arm (for the stored analysis and the report; never decides).

    Rows: gate, segment, champion, challenger, difference (challenger - champion) and n per arm.
    """
    rows: list[dict[str, object]] = []
    for e in estimates(q, policy):
        if e.no_data is not None:
            rows.append({"gate": e.gate, "segment": e.segment, "no_data": e.no_data, "n_champion": e.n1,
                         "n_challenger": e.n2})  # fmt: skip
            continue
        rows.append(
            {
                "gate": e.gate,
                "segment": e.segment,
                "champion": _plain(e.champion),
                "challenger": _plain(e.challenger),
                "difference": _plain(e.challenger - e.champion),
                "se": _plain(e.se),
                "se_champion": _plain(e.se_champion),
                "se_challenger": _plain(e.se_challenger),
                "n_champion": e.n1,
                "n_challenger": e.n2,
            }
        )
    return rows


def _plain(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _none(spec: MetricSpec, reason: str, n1: int = 0, n2: int = 0, gate: str | None = None) -> HarmEstimate:
    return HarmEstimate(
        gate=gate or spec.gate, role=spec.role, margin=spec.margin, no_data=reason, n1=n1, n2=n2
    )


def _class_estimate(
    conf: Confusion | None,
    spec: MetricSpec,
    *,
    role: str,
    gate: str,
    min_samples: int,
    segment: str | None = None,
) -> HarmEstimate:
    if conf is None:
        return _none(spec, "no labelled outcomes yet", gate=gate)
    n1, n2 = conf.n
    if min(n1, n2) < min_samples:
        return _none(spec, f"burn-in: {min(n1, n2)} of {min_samples} labelled rows", n1, n2, gate=gate)
    cls = None
    if spec.metric in ("recall", "precision"):
        if spec.cls not in conf.names:
            return _none(spec, f"class {spec.cls!r} not seen among labels or predictions", n1, n2, gate=gate)
        cls = conf.names.index(str(spec.cls))
    m1, m2 = conf.arm_matrices()
    chosen = [j for j in range(conf.k) if (m1 + m2)[j, :].sum() + (m1 + m2)[:, j].sum() > 0]
    result = _class_difference(conf, spec.metric, cls=cls, classes=chosen)
    if result is None:
        return _none(spec, f"class {spec.cls!r} has no labelled row yet", n1, n2, gate=gate)
    v1, v2, diff, se, n1, n2, se1, se2 = result
    how = "paired" if conf.paired is not None else "unpaired"
    return HarmEstimate(
        gate=gate,
        role=role,
        margin=spec.margin,
        harm=-diff,
        se=se,
        n_cs=float(n1 if conf.paired is not None else n1 + n2),
        limit=spec.margin,
        n1=n1,
        n2=n2,
        scale=-1.0,
        describe=f"{gate} {v1:.4g} -> {v2:.4g}, difference {diff:+.4g} ({how})",
        champion=v1,
        challenger=v2,
        se_champion=se1,
        se_challenger=se2,
        segment=segment,
    )


def _loss_estimate(moments: LossMoments | None, spec: MetricSpec, missing: str | None) -> HarmEstimate:
    if moments is None:
        return _none(spec, missing or "no labelled outcomes yet")
    n = moments.nd if moments.nd else min(moments.n1, moments.n2)
    if n < spec.min_samples:
        return _none(spec, f"burn-in: {n} of {spec.min_samples} labelled rows", moments.n1, moments.n2)
    result = moments.difference()
    if result is None:
        return _none(spec, "too few labelled rows", moments.n1, moments.n2)
    m1, m2, diff, se, n1, n2 = result
    how = "paired" if moments.nd else "unpaired"
    se1, se2 = moments.arm_se()
    return HarmEstimate(
        se_champion=se1,
        se_challenger=se2,
        gate=spec.gate,
        role=spec.role,
        margin=spec.margin,
        harm=diff,
        se=se,
        n_cs=float(n1 if moments.nd else n1 + n2),
        limit=spec.margin,
        n1=n1,
        n2=n2,
        describe=f"{spec.gate} {m1:.4g} -> {m2:.4g}, difference {diff:+.4g} ({how})",
        champion=m1,
        challenger=m2,
    )


def _rmse_estimate(moments: SquaredErrorMoments | None, spec: MetricSpec) -> HarmEstimate:
    if moments is None:
        return _none(spec, "no labelled regression outcomes yet")
    n = min(moments.n1, moments.n2)
    if n < spec.min_samples:
        return _none(spec, f"burn-in: {n} of {spec.min_samples} labelled rows", moments.n1, moments.n2)
    result = moments.difference()
    if result is None:
        return _none(spec, "too few labelled rows", moments.n1, moments.n2)
    r1, r2, diff, se, n1, n2 = result
    how = "paired" if moments.paired_n else "unpaired"
    return HarmEstimate(
        gate="rmse",
        role=spec.role,
        margin=spec.margin,
        harm=diff,
        se=se,
        n_cs=float(moments.paired_n or n1 + n2),
        limit=spec.margin,
        n1=n1,
        n2=n2,
        describe=f"RMSE {r1:.4g} -> {r2:.4g}, difference {diff:+.4g} ({how})",
        champion=r1,
        challenger=r2,
    )


def _outcome_estimate(o: OutcomeMoments | None, spec: MetricSpec, missing: str | None) -> HarmEstimate:
    if o is None:
        return _none(spec, missing or "no outcomes yet")
    if spec.ratio:
        if o.ratio1 is None or o.ratio2 is None:
            return _none(spec, missing or "no outcomes with a denominator yet")
        n1, n2 = int(o.ratio1[0]), int(o.ratio2[0])
        if min(n1, n2) < max(spec.min_samples, 2):
            why = f"burn-in: {min(n1, n2)} of {spec.min_samples} served requests with a ratio outcome"
            return _none(spec, why, n1, n2)
        m1, se1 = ratio_of_sums(*o.ratio1)
        m2, se2 = ratio_of_sums(*o.ratio2)
        if math.isnan(m1) or math.isnan(m2):
            return _none(spec, "the denominators sum to zero", n1, n2)
        what = "outcome per unit of its base"
    else:
        n1, n2 = o.n1, o.n2
        if min(n1, n2) < max(spec.min_samples, 2):
            why = f"burn-in: {min(n1, n2)} of {spec.min_samples} served requests with an outcome"
            return _none(spec, why, n1, n2)
        m1, m2 = o.s1 / o.n1, o.s2 / o.n2
        se1 = math.sqrt(max((o.q1 - o.s1 * m1) / (o.n1 - 1), 0.0) / o.n1)
        se2 = math.sqrt(max((o.q2 - o.s2 * m2) / (o.n2 - 1), 0.0) / o.n2)
        what = "mean outcome per served request"
    sign = 1.0 if spec.direction == "increase" else -1.0  # harm = loss in the good direction
    return HarmEstimate(
        gate="outcome",
        role=spec.role,
        margin=spec.margin,
        harm=sign * (m1 - m2),
        se=math.sqrt(se1 * se1 + se2 * se2),
        n_cs=float(n1 + n2),
        limit=spec.margin,
        n1=n1,
        n2=n2,
        scale=-sign,
        describe=f"{what} {m1:.4g} -> {m2:.4g} (unpaired, {spec.direction} is better)",
        champion=m1,
        challenger=m2,
        se_champion=se1,
        se_challenger=se2,
    )


def auc_estimates(auc: Auc | None, spec: MetricSpec, missing: str | None = None) -> HarmEstimate:
    """Return the fixed-horizon ROC AUC estimate: no-data before the horizon, then DeLong on its rows."""
    if auc is None:
        return _none(spec, missing or "no scored labelled rows yet")
    if len(auc.labels) < spec.horizon:
        return _none(
            spec, f"fixed horizon: {auc.available} of {spec.horizon} labelled rows; AUC is tested once there"
        )
    if auc.classes:
        return _multiclass_auc_estimate(auc, spec)
    y = np.asarray(auc.labels, dtype=bool)
    if auc.paired:
        if y.all() or not y.any():
            return _none(spec, "the horizon's rows hold one class only")
        a1, a2, var = delong(y, auc.champion, auc.challenger)
        n1 = n2 = int(y.size)
    else:
        y2 = np.asarray(auc.challenger_labels, dtype=bool)
        if y.all() or not y.any() or y2.all() or not y2.any():
            return _none(spec, "the horizon's rows hold one class only")
        a1, _, var1 = delong(y, auc.champion)
        a2, _, var2 = delong(y2, auc.challenger)
        var, n1, n2 = var1 + var2, int(y.size), int(y2.size)
    return _auc_harm(spec, auc, "ROC AUC", a1, a2, var, n1, n2)


def _multiclass_auc_estimate(auc: Auc, spec: MetricSpec) -> HarmEstimate:
    """The macro one-vs-rest AUC gate of a multi-class classifier on the horizon's rows."""
    k = len(auc.classes)
    y = np.asarray(auc.labels, dtype=np.int64)
    if auc.paired:
        if len(_ovr_classes(y, k)) < 2:
            return _none(spec, "the horizon's rows hold one class only")
        a1, a2, var = macro_ovr_delong(y, auc.champion_proba, auc.challenger_proba)
        n1 = n2 = int(y.size)
    else:
        y2 = np.asarray(auc.challenger_labels, dtype=np.int64)
        if len(_ovr_classes(y, k)) < 2 or len(_ovr_classes(y2, k)) < 2:
            return _none(spec, "the horizon's rows hold one class only")
        a1, _, var1 = macro_ovr_delong(y, auc.champion_proba)
        a2, _, var2 = macro_ovr_delong(y2, auc.challenger_proba)
        var, n1, n2 = var1 + var2, int(y.size), int(y2.size)
    return _auc_harm(spec, auc, f"ROC AUC (macro one-vs-rest, {k} classes)", a1, a2, var, n1, n2)


def _auc_harm(
    spec: MetricSpec, auc: Auc, what: str, a1: float, a2: float, var: float, n1: int, n2: int
) -> HarmEstimate:
    """The AUC gate's estimate: harm is the drop from the champion's AUC to the challenger's, fixed horizon."""
    diff = a2 - a1
    return HarmEstimate(
        gate="roc_auc",
        role=spec.role,
        margin=spec.margin,
        harm=-diff,
        se=math.sqrt(max(var, 0.0)),
        n_cs=float(n1),
        limit=spec.margin,
        n1=n1,
        n2=n2,
        scale=-1.0,
        fixed=True,
        describe=f"{what} {a1:.4g} -> {a2:.4g}, difference {diff:+.4g} "
        f"({'paired' if auc.paired else 'unpaired'} DeLong, fixed horizon {spec.horizon})",
        champion=a1,
        challenger=a2,
    )


def _estimate(q: QualityStats, spec: MetricSpec) -> HarmEstimate:
    if spec.metric in CLASS_METRICS:
        return (
            _class_estimate(q.confusion, spec, role=spec.role, gate=spec.gate, min_samples=spec.min_samples)
            if q.confusion is not None
            else _none(spec, q.missing.get("confusion", "no labelled outcomes yet"))
        )
    if spec.metric == "log_loss":
        return _loss_estimate(q.log_loss, spec, q.missing.get("log_loss"))
    if spec.metric == "brier":
        return _loss_estimate(q.brier, spec, q.missing.get("brier"))
    if spec.metric == "pinball":
        return _loss_estimate(q.pinball.get(spec.quantile), spec, q.missing.get("pinball"))
    if spec.metric == "rmse":
        return _rmse_estimate(q.squared_error, spec)
    if spec.metric == "outcome":
        return _outcome_estimate(q.outcome, spec, q.missing.get("outcome"))
    if spec.metric == "roc_auc":
        return auc_estimates(q.auc, spec, q.missing.get("roc_auc"))
    raise ValueError(f"unknown quality metric {spec.metric!r}")


def _segment_estimates(q: QualityStats, seg: SegmentPolicy) -> list[HarmEstimate]:
    out: list[HarmEstimate] = []
    for s in q.segments:
        where = f"{s.column}={s.value}"
        for spec in seg.metrics:
            gate = f"segment[{where}].{spec.gate}"
            if spec.metric in CLASS_METRICS:
                e = _class_estimate(
                    s.confusion, spec, role=seg.role, gate=gate, min_samples=seg.min_samples, segment=where
                )
            elif spec.metric == "mae":
                e = _segment_mae(s.abs_error, spec, role=seg.role, gate=gate, min_samples=seg.min_samples)
            else:
                continue
            if e.no_data is not None:
                e = HarmEstimate(
                    gate=gate,
                    role=seg.role,
                    margin=spec.margin,
                    no_data=f"too small: {e.no_data}",
                    n1=e.n1,
                    n2=e.n2,
                    segment=where,
                )
            out.append(HarmEstimate(**{**e.__dict__, "segment": where}))
    return out


def _segment_mae(
    m: LossMoments | None, spec: MetricSpec, *, role: str, gate: str, min_samples: int
) -> HarmEstimate:
    """Relative MAE change in a segment, as the regression gate (margin x the champion's segment MAE)."""
    if m is None:
        return _none(spec, "no labelled rows", gate=gate)
    n = m.nd if m.nd else min(m.n1, m.n2)
    if n < min_samples:
        return _none(spec, f"burn-in: {n} of {min_samples} labelled rows", m.n1, m.n2, gate=gate)
    result = m.difference()
    if result is None:
        return _none(spec, "too few labelled rows", m.n1, m.n2, gate=gate)
    m1, m2, diff, se, n1, n2 = result
    scale = 1.0 / m1 if m1 > 0 else 1.0
    return HarmEstimate(
        gate=gate,
        role=role,
        margin=spec.margin,
        harm=diff,
        se=se,
        n_cs=float(m.nd or n1 + n2),
        limit=spec.margin * m1,
        n1=n1,
        n2=n2,
        scale=scale,
        describe=f"MAE {m1:.4g} -> {m2:.4g} ({diff * scale:+.2%})",
        champion=m1,
        challenger=m2,
    )


def estimates(q: QualityStats | None, policy: QualityPolicy | None) -> list[HarmEstimate]:
    """Return one harm estimate per quality gate and per (segment, segment metric) of the policy."""
    if policy is None:
        return []
    q = q or QualityStats()
    out = [_estimate(q, spec) for spec in policy.gates]
    if policy.segments is not None:
        out += _segment_estimates(q, policy.segments)
    return out


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def reliability_curve(
    labels: Iterable[bool], scores: Iterable[float], *, bins: int = 10
) -> list[tuple[float, float, int]]:
    """Return (mean score, observed positive share, rows) per equal-width score bin with rows.

    Same bins as ``sklearn.calibration.calibration_curve(strategy="uniform")``.
    """
    y = np.asarray(list(labels), dtype=float)
    p = np.asarray(list(scores), dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    out = []
    for b in range(bins):
        sel = ids == b
        if sel.any():
            out.append((float(p[sel].mean()), float(y[sel].mean()), int(sel.sum())))
    return out
