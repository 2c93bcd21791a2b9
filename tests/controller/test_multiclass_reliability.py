"""The report's multi-class reliability curves against sklearn's ``calibration_curve`` (both databases).

Real fitted 3-class pipelines on iris (a logistic regression, and the same model at temperature 2.5:
same answers, flatter probabilities) answer through the router's in-process backend; their class,
score and probability vector go through the real store as the router records them, labels as the
feedback endpoint stores them. The report's top-label and one-vs-rest curves and their expected
calibration error must equal sklearn's curves (and the ECE computed from the rows) on the same rows.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import irispipes
import mlpipes
import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression

from controller.loop import actions
from controller.reports import quality as report_quality
from controller.reports.build import build_report, render_html, render_markdown
from router.backends import InProcessBackend
from storage import Store
from storage.entities import PairRecord

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
_ids = itertools.count()


def _ece(events: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error, written out: sum over bins of (n_b / n) |mean event - mean p|."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for b in range(bins):
        inside = (p > edges[b]) & (p <= edges[b + 1]) if b else (p <= edges[1])
        if inside.any():
            total += inside.sum() / len(p) * abs(events[inside].mean() - p[inside].mean())
    return float(total)


def _store_traffic(
    store: Store, backends: dict[str, InProcessBackend], n: int, *, labelled: bool = True
) -> dict[str, Any]:
    """Score n jittered iris rows with both arms, store them with labels; return what sklearn needs.

    Every 7th row has no label and every 11th a failed challenger: neither counts (the report's
    labelled pairs are rows with a label that both arms answered).
    """
    r = store.rollouts.latest(store.deployments.get("iris").id)
    assert r is not None
    frame, species = irispipes.iris_frame(n, seed=5, jitter=0.4)
    answers = {arm: b.predict(frame) for arm, b in backends.items()}
    records, labels = [], []
    kept = []
    for i in range(n):
        number = next(_ids)
        out: dict[str, Any] = {}
        for arm, p in answers.items():
            assert p.scores is not None and p.probabilities is not None
            out |= {f"{arm}_class": str(p.outputs[i]), f"{arm}_score": p.scores[i],
                    f"{arm}_proba": p.probabilities[i], f"{arm}_latency_ms": 2.0}  # fmt: skip
        if i % 11 == 5:
            out |= {"challenger_class": None, "challenger_score": None, "challenger_proba": None,
                    "challenger_error": "timeout", "challenger_status": "timeout"}  # fmt: skip
        records.append(
            PairRecord(
                request_id=f"r-{number}", row_index=0, deployment_id=r.deployment_id, rollout_id=r.id,
                step=r.step_index, received_at=T0 + timedelta(seconds=i), routing_key_hash=number,
                served_arm="champion", champion_version_id=r.champion_id, challenger_version_id=r.challenger_id,
                **out,
            )
        )  # fmt: skip
        if i % 7 != 3:
            labels.append((f"r-{number}", 0, str(species[i])))
            if i % 11 != 5:
                kept.append(i)
    store.pairs.insert_many(records)
    if labelled:
        store.labels.upsert_many(r.deployment_id, labels, now=T0 + timedelta(seconds=n))
    classes = [str(c) for c in backends["champion"].version.classes or ()]
    out = {"y": np.asarray(species[kept], dtype=str), "classes": classes}
    for arm, p in answers.items():
        out[f"{arm}_p"] = np.array([[float(p.probabilities[i][c]) for c in classes] for i in kept])  # type: ignore[index]
        out[f"{arm}_class"] = np.array([str(p.outputs[i]) for i in kept])
    return out


def iris_rollout(store: Store, tmp_path: Path, n: int, *, labelled: bool = True) -> dict[str, Any]:
    """A shadow rollout of deployment ``iris``: a fitted logistic regression against itself at temperature
    2.5, n scored rows stored with their labels (see ``_store_traffic``); returns what sklearn needs."""
    model = irispipes.fit(LogisticRegression(max_iter=500))
    champion = irispipes.register(store, tmp_path, version="1", model=model)
    flat = irispipes.Tempered(model, temperature=2.5).fit(None)
    challenger = irispipes.register(store, tmp_path, version="2", model=flat)
    mlpipes.deploy(store, "iris", champion)
    backends = {
        "champion": InProcessBackend(champion, trust_pickle=True),
        "challenger": InProcessBackend(challenger, trust_pickle=True),
    }
    actions.start_rollout(store, "iris", "iris:2", actor="alice", policy={"mode": "shadow"}, now=T0)
    return _store_traffic(store, backends, n, labelled=labelled)


def _same_curve(curve: dict[str, Any], events: np.ndarray, p: np.ndarray) -> None:
    prob_true, prob_pred = calibration_curve(events, p, n_bins=10, strategy="uniform")
    points = curve["points"]
    assert len(points) == len(prob_true) >= 2
    assert [pt["observed"] for pt in points] == pytest.approx(list(prob_true), abs=1e-12)
    assert [pt["mean_score"] for pt in points] == pytest.approx(list(prob_pred), abs=1e-9)
    assert sum(pt["n"] for pt in points) == curve["n"] == len(p)
    assert curve["ece"] == pytest.approx(_ece(events.astype(float), p), abs=1e-9)


def test_report_reliability_curves_of_a_three_class_model_equal_sklearns_calibration_curve(
    store: Store, tmp_path: Path
) -> None:
    truth = iris_rollout(store, tmp_path, 700)

    report = build_report(store, "iris", now=T0 + timedelta(hours=1))
    c = report["quality"]["class_reliability"]
    assert report["quality"]["reliability"] is None  # the binary curve is for two classes only
    assert c is not None and c["classes"] == truth["classes"] == c["shown"] and c["omitted"] == []
    y = truth["y"]
    for arm in ("champion", "challenger"):
        p = truth[f"{arm}_p"]
        right = truth[f"{arm}_class"] == y
        assert 0 < right.sum() < len(y)  # some wrong answers: the top-label curve is not trivial
        _same_curve(c["top_label"][arm], right, p.max(axis=1))
        for k, cls in enumerate(truth["classes"]):
            panel = next(x for x in c["per_class"] if x["class"] == cls)
            _same_curve(panel[arm], y == cls, p[:, k])
    # the flattened challenger is the worse calibrated one, and the report says so in its ECE figures
    assert c["top_label"]["challenger"]["ece"] > c["top_label"]["champion"]["ece"] + 0.05
    html = render_html(report)
    assert "Reliability per arm (top label)" in html
    for cls in truth["classes"]:
        assert f"Reliability of class {cls} (one-vs-rest)" in html
    assert "<script" not in html
    md = render_markdown(report)
    assert "| top label | " in md and f"{c['top_label']['challenger']['ece']:.4f}" in md


def test_reliability_panels_go_to_the_most_often_labelled_classes_beyond_the_limit() -> None:
    classes = [f"c{i}" for i in range(14)]
    counts = {f"c{i}": 100 - i for i in range(14)} | {"c13": 1_000, "c2": 0}
    shown = report_quality.reliability_classes(classes, counts)
    assert len(shown) == report_quality.MAX_RELIABILITY_CLASSES
    assert shown == ["c0", "c1", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c13"]
    assert report_quality.reliability_classes(classes[:4], {}) == classes[:4]


def test_a_three_class_rollout_without_labels_has_no_reliability_curves(store: Store, tmp_path: Path) -> None:
    iris_rollout(store, tmp_path, 200, labelled=False)
    report = build_report(store, "iris", now=T0 + timedelta(hours=1))
    assert report["quality"]["class_reliability"] is None
    assert "Reliability per arm (top label)" not in render_html(report)
