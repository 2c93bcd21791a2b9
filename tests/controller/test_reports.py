"""Comparison reports on real storage (SQLite and PostgreSQL) with outputs of real fitted pipelines."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import mlpipes
import numpy as np
import pytest
import sklearn.metrics as skm
from click.testing import CliRunner
from scipy import stats as sps

from controller.core import judge
from controller.core.policy import Policy
from controller.loop.measure import LATENCY_EDGES
from controller.reports import build as reports
from storage import Database, NotFound, Store
from storage.entities import NewEvent, PairRecord

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ARMS = ("champion", "challenger")


def _verdict_dict(v: judge.Verdict) -> dict[str, Any]:
    """A verdict as the controller loop stores it: the Verdict fields, outcome as its label."""
    d = dataclasses.asdict(v)
    d["outcome"] = v.outcome.label
    d["interval"] = None if v.interval is None else {"lower": v.interval.lower, "upper": v.interval.upper}
    return d


def build_scenario(
    store: Store,
    tmp_path: Path,
    *,
    n: int = 600,
    labelled: bool = True,
    kind: str = "classification",
    name: str = "churn",
    spacing: timedelta = timedelta(seconds=1),
    looks: int = 3,
) -> dict[str, Any]:
    """A shadow-then-canary rollout: real predictions of two fitted pipelines, events and analyses.

    Step 0 is shadow (champion serves, challenger in shadow), step 1 a 25% canary. A few shadow jobs
    are dropped or time out; with ``labelled`` the true churn labels of every other request arrive.
    """
    champion = mlpipes.register(store, tmp_path, name=name, version="1", kind=kind, seed=0)
    challenger = mlpipes.register(store, tmp_path, name=name, version="2", kind=kind, seed=3)
    deployment = mlpipes.deploy(store, name, champion)
    rollout = store.rollouts.create(
        deployment_id=deployment.id,
        challenger_id=challenger.id,
        mode="shadow_then_canary",
        policy={"mode": "shadow_then_canary", "canary": {"steps": [25, 50, 100]}},
        created_by="tests",
        phase="shadowing",
        shadow_rate=1.0,
        now=T0,
    )
    store.events.add(
        NewEvent(
            actor="alice",
            action="rollout.start",
            reason="operator",
            message=f"start {challenger.ref} in shadow",
            deployment_id=deployment.id,
            rollout_id=rollout.id,
            details={"step": 0, "canary_weight": 0.0},
        ),
        now=T0,
    )
    frame, target = mlpipes.churn_frame(n, seed=11)
    models = {
        "champion": mlpipes.classifier(seed=0) if kind == "classification" else mlpipes.regressor(seed=0),
        "challenger": mlpipes.classifier(seed=3) if kind == "classification" else mlpipes.regressor(seed=3),
    }
    outputs: dict[str, Any] = {}
    for arm, model in models.items():
        if kind == "classification":
            outputs[arm] = (model.predict(frame), model.predict_proba(frame)[:, 1])
        else:
            outputs[arm] = (model.predict(frame), None)
    if kind == "classification":
        truth = [int(t) for t in target]
    else:
        truth = [float(v) for v in frame["tenure_months"] * 1.5 + target * 10.0]
    rng = np.random.default_rng(7)
    raw = frame.astype(object).where(frame.notna(), None).to_dict("records")
    records = []
    for i in range(n):
        step = 0 if i < n // 2 else 1
        served = "challenger" if step == 1 and i % 4 == 0 else "champion"
        shadow = "challenger" if served == "champion" else "champion"
        error = {"champion": None, "challenger": None}
        skipped = i % 50 == 7  # the router's queue was full: the shadow arm never ran
        if i % 50 == 23:
            error[shadow] = "shadow_timeout: no result within the shadow timeout"
        fields: dict[str, Any] = {}
        if skipped:
            fields[f"{shadow}_status"] = "skipped"
            fields["skip_reason"] = "queue_full"
        for arm in ("champion", "challenger"):
            pred, score = outputs[arm]
            if skipped and arm == shadow:
                continue
            if error[arm] is None:
                if kind == "classification":
                    fields[f"{arm}_output"] = int(pred[i])
                    fields[f"{arm}_class"] = str(int(pred[i]))
                    fields[f"{arm}_score"] = float(score[i])
                else:
                    fields[f"{arm}_output"] = float(pred[i])
                    fields[f"{arm}_value"] = float(pred[i])
                fields[f"{arm}_latency_ms"] = float(rng.lognormal(1.0 if arm == "champion" else 1.2, 0.3))
            fields[f"{arm}_error"] = error[arm]
        records.append(
            PairRecord(
                request_id=f"req-{name}-{i}",
                row_index=0,
                deployment_id=deployment.id,
                rollout_id=rollout.id,
                step=step,
                received_at=T0 + spacing * i,
                routing_key_hash=i,
                served_arm=served,
                champion_version_id=champion.id,
                challenger_version_id=challenger.id,
                raw_input=raw[i],
                **fields,
            )
        )
    assert store.pairs.insert_many(records) == n
    current = store.rollouts.update(
        rollout.id,
        expected_version=rollout.version,
        phase="progressing",
        step_index=1,
        canary_weight=25.0,
        step_started_at=T0 + spacing * (n // 2),
        now=T0 + spacing * (n // 2),
        events=[
            NewEvent(
                actor="controller",
                action="rollout.advance",
                reason="gates_passed",
                message="shadow step passed; canary at 25%",
                details={
                    "step": 1,
                    "canary_weight": 25.0,
                    "from": {"phase": "shadowing", "step": 0, "canary_weight": 0.0},
                    "to": {"phase": "progressing", "step": 1, "canary_weight": 25.0},
                },
            )
        ],
    )
    if labelled:
        store.labels.upsert_many(deployment.id, [(f"req-{name}-{i}", 0, truth[i]) for i in range(0, n, 2)])
    # Analyses as the controller stores them: judge() over growing prefixes of the paired rows, with
    # the labels that have arrived and the latencies, under the rollout's own policy.
    task = "classification" if kind == "classification" else "regression"
    policy = Policy.parse(rollout.policy).to_judge_policy(task, "shadow", final=False, classes=("0", "1"))
    for upto in (n * (look + 1) // looks for look in range(looks)):
        ok1 = np.array([r.champion_error is not None for r in records[:upto]])
        ok2 = np.array([r.challenger_error is not None for r in records[:upto]])
        p1 = np.array(
            [
                r.champion_value if kind != "classification" else int(r.champion_class or 0)
                for r in records[:upto]
            ],
            dtype=float,
        )
        p2 = np.array(
            [
                r.challenger_value if kind != "classification" else int(r.challenger_class or 0)
                for r in records[:upto]
            ],
            dtype=float,
        )
        p1, p2 = np.nan_to_num(p1), np.nan_to_num(p2)
        if kind == "classification":
            p1, p2 = p1.astype(int), p2.astype(int)
        labelled_rows = np.array([labelled and i % 2 == 0 for i in range(upto)])
        metrics = judge.metrics_from_pairs(
            champion_prediction=p1,
            challenger_prediction=p2,
            champion_failed=ok1,
            challenger_failed=ok2,
            task=task,
            label=np.array(truth[:upto], dtype=int if task == "classification" else float),
            labelled=labelled_rows,
            champion_latency_ms=[r.champion_latency_ms or 0.0 for r in records[:upto]],
            challenger_latency_ms=[r.challenger_latency_ms or 0.0 for r in records[:upto]],
            latency_edges=LATENCY_EDGES,
        )
        j = judge.judge(metrics, policy)
        store.analyses.add(
            rollout_id=rollout.id,
            step=0 if upto <= n // 2 else 1,
            outcome=j.outcome.label,
            verdicts=[_verdict_dict(v) for v in j.verdicts],
            metrics={"decision": j.decision, "reason": j.reason, "arms": judge.arm_values(metrics)},
            now=T0 + spacing * upto,
        )
    return {
        "deployment": deployment,
        "rollout": current,
        "champion": champion,
        "challenger": challenger,
        "records": records,
        "n": n,
        "target": target,
        "truth": truth,
    }


def _valid(report: dict[str, Any]) -> None:
    jsonschema.validate(report, reports.REPORT_SCHEMA)
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN or infinity anywhere


def test_report_with_labels_matches_its_schema_and_the_paired_rows(store: Store, tmp_path: Path) -> None:
    s = build_scenario(store, tmp_path)
    report = reports.build_report(store, "churn", segments=["plan", "age"])
    _valid(report)
    records: list[PairRecord] = s["records"]
    n = s["n"]
    assert report["rollout"]["id"] == s["rollout"].id and report["task"] == "classification"
    assert report["traffic"]["rows"] == n
    assert [st["step"] for st in report["traffic"]["steps"]] == [0, 1]
    champ_errors = sum(r.champion_error is not None for r in records)
    chal_errors = sum(r.challenger_error is not None for r in records)
    assert report["arms"]["champion"]["errors"] == champ_errors
    assert report["arms"]["challenger"]["errors"] == chal_errors
    assert report["arms"]["challenger"]["served"] == sum(r.served_arm == "challenger" for r in records)
    both = [
        r
        for r in records
        if r.champion_error is None and r.challenger_error is None and r.skip_reason is None
    ]
    assert report["shadow"]["pairs"] == len(both)
    assert report["shadow"]["dropped"] == sum(r.skip_reason == "queue_full" for r in records) > 0
    assert report["shadow"]["timeouts"] > 0
    assert report["shadow"]["coverage"] == pytest.approx(len(both) / n)
    agree = sum(r.champion_class == r.challenger_class for r in both)
    assert report["agreement"]["agree"] == agree
    table = report["agreement"]["table"]
    assert sum(map(sum, table["counts"])) == len(both)
    p50 = float(np.median([r.champion_latency_ms for r in records if r.champion_latency_ms is not None]))
    assert report["arms"]["champion"]["latency_ms"]["p50"] == pytest.approx(p50, rel=0.06)
    assert report["arms"]["challenger"]["latency_ms"]["p99"] > report["arms"]["champion"]["latency_ms"]["p50"]
    # Labels: accuracy per arm and the paired McNemar cells agree with a direct count.
    labels = report["labels"]
    assert labels["available"] and labels["n"] == sum(
        1
        for i, r in enumerate(records)
        if i % 2 == 0 and r.champion_error is None and r.challenger_error is None
    )
    # ... and each figure against an independent computation: direct counts, scikit-learn, SciPy.
    truth = {
        r.request_id: int(y) for i, (r, y) in enumerate(zip(records, s["target"], strict=True)) if i % 2 == 0
    }
    judged = [r for r in both if r.request_id in truth]
    y = np.array([truth[r.request_id] for r in judged])
    predicted = {arm: np.array([int(getattr(r, f"{arm}_class")) for r in judged]) for arm in ARMS}
    for arm in ARMS:
        correct = int((predicted[arm] == y).sum())
        figures = labels[arm]
        assert figures["accuracy"]["correct"] == correct
        assert figures["accuracy"]["value"] == pytest.approx(correct / len(y), rel=1e-12)
        wilson = sps.binomtest(correct, len(y)).proportion_ci(method="wilson")
        assert figures["accuracy"]["interval"] == pytest.approx([wilson.low, wilson.high], rel=1e-9)
        assert figures["f1"]["value"] == pytest.approx(skm.f1_score(y, predicted[arm]), rel=1e-12)
        scores = np.array([getattr(r, f"{arm}_score") for r in judged])
        # the report bins scores into 200 bins, so its AUC is within a bin's width of the exact one
        assert figures["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, scores), abs=0.01)
    b = int(((predicted["champion"] == y) & (predicted["challenger"] != y)).sum())
    c = int(((predicted["champion"] != y) & (predicted["challenger"] == y)).sum())
    paired = labels["paired"]
    assert (paired["champion_right_challenger_wrong"], paired["champion_wrong_challenger_right"]) == (b, c)
    assert "McNemar mid-p" in paired["method"]
    mid_p = sps.binomtest(min(b, c), b + c).pvalue - sps.binom.pmf(min(b, c), b + c, 0.5)
    assert paired["p_value"] == pytest.approx(mid_p, rel=1e-9)
    assert paired["difference"] == pytest.approx((c - b) / len(y), rel=1e-12)
    # Distributions and drift.
    kinds = [d["kind"] for d in report["distributions"]]
    assert kinds == ["classes", "scores"]
    assert report["distributions"][1]["ks"]["n"] == len(both)
    assert report["distributions"][0]["psi"]["noise_floor"] > 0
    # Gates over time, as stored by the controller.
    assert report["gates"]["analyses"] == 3
    assert report["gates"]["primary"] in {v["gate"] for v in report["gates"]["latest"]["verdicts"]}
    assert all(v["reason"] for v in report["gates"]["latest"]["verdicts"])
    # Timeline with who moved it and why.
    actions = [e["action"] for e in report["timeline"]]
    assert actions[:1] == ["rollout.start"] and "rollout.advance" in actions
    assert report["timeline"][0]["actor"] == "alice"
    # Segments: one per plan value (and missing), numeric age in bins; all rows accounted for.
    by_col = {r["column"]: r for r in report["segments"]["results"]}
    assert {s_["value"] for s_ in by_col["plan"]["segments"]} <= {"basic", "plus", "pro", "missing"}
    assert sum(s_["rows"] for s_ in by_col["plan"]["segments"]) == n
    assert by_col["age"]["kind"] == "numeric" and sum(s_["rows"] for s_ in by_col["age"]["segments"]) == n
    assert by_col["plan"]["segments"][0]["effect_name"].startswith("accuracy difference")
    assert report["reproducibility"]["status"] == "not_checked"
    assert report["sample_size"]["status"] in ("collecting", "enough", "worse")


def test_report_without_labels_plans_the_labelled_pairs_it_still_needs(store: Store, tmp_path: Path) -> None:
    build_scenario(store, tmp_path, n=300, labelled=False)
    report = reports.build_report(store, "churn", segments=["region"])
    _valid(report)
    assert report["labels"] == {
        "available": False,
        "n": 0,
        "message": "no labels have arrived for this rollout's requests yet",
    }
    assert report["sample_size"]["needed"] > 0 and "labelled pairs" in report["sample_size"]["message"]
    assert report["segments"]["results"][0]["segments"][0]["effect_name"].startswith("error rate difference")


def test_regression_report_has_mae_rmse_and_a_paired_t_test(store: Store, tmp_path: Path) -> None:
    s = build_scenario(store, tmp_path, n=300, kind="regression", name="spend")
    report = reports.build_report(store, "spend")
    _valid(report)
    assert report["task"] == "regression" and report["agreement"] is None
    assert report["differences"]["n"] == report["shadow"]["pairs"]
    assert report["distributions"][0]["kind"] == "values"
    records: list[PairRecord] = s["records"]
    truth = {
        r.request_id: float(v) for i, (r, v) in enumerate(zip(records, s["truth"], strict=True)) if i % 2 == 0
    }
    judged = [
        r
        for r in records
        if r.request_id in truth and r.champion_error is None and r.challenger_error is None
    ]
    y = np.array([truth[r.request_id] for r in judged])
    predicted = {arm: np.array([getattr(r, f"{arm}_value") for r in judged]) for arm in ARMS}
    assert report["labels"]["n"] == len(y)
    for arm in ARMS:
        figures = report["labels"][arm]
        lo, hi = figures["mae"]["interval"]
        assert 0 <= lo <= figures["mae"]["value"] <= hi
        assert figures["mae"]["value"] == pytest.approx(skm.mean_absolute_error(y, predicted[arm]), rel=1e-9)
        assert figures["rmse"]["value"] == pytest.approx(
            skm.mean_squared_error(y, predicted[arm]) ** 0.5, rel=1e-9
        )
    paired = report["labels"]["paired"]
    assert "paired t" in paired["method"]
    reference = sps.ttest_rel(np.abs(predicted["challenger"] - y), np.abs(predicted["champion"] - y))
    assert paired["statistic"] == pytest.approx(reference.statistic, rel=1e-9)
    assert paired["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    ci = reference.confidence_interval(0.95)
    assert paired["interval"] == pytest.approx([ci.low, ci.high], rel=1e-9)


def test_report_of_a_rollout_with_no_traffic_yet_is_still_valid(store: Store, tmp_path: Path) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=2)
    deployment = mlpipes.deploy(store, "quiet", champion)
    mlpipes.start_rollout(store, deployment, challenger)
    report = reports.build_report(store, "quiet", segments=["plan"])
    _valid(report)
    assert report["traffic"]["rows"] == 0 and report["gates"]["latest"] is None
    assert "not yet checked" in reports.render_html(report)
    assert "# " in reports.render_markdown(report)


def test_missing_deployment_rollout_or_foreign_rollout_is_not_found(store: Store, tmp_path: Path) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    mlpipes.deploy(store, "idle", champion)
    with pytest.raises(NotFound, match="no rollout yet"):
        reports.build_report(store, "idle")
    with pytest.raises(NotFound):
        reports.build_report(store, "nope")
    s = build_scenario(store, tmp_path / "b", n=60, labelled=False, name="other")
    with pytest.raises(NotFound, match="does not belong"):
        reports.build_report(store, "idle", s["rollout"].id)


def test_html_report_is_one_offline_file_with_plots(store: Store, tmp_path: Path) -> None:
    build_scenario(store, tmp_path, n=300)
    report = reports.build_report(store, "churn", segments=["plan"])
    page = reports.render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert page.count("<svg") >= 6
    assert "@media print" in page
    md = reports.render_markdown(report)
    assert "| gate |" in md and "Reproducibility" in md


def test_every_two_arm_gate_is_plotted_per_arm_over_time_with_the_figures_of_the_rows(
    store: Store, tmp_path: Path
) -> None:
    s = build_scenario(store, tmp_path, n=400, looks=4)
    report = reports.build_report(store, "churn")
    last = report["gates"]["series"][-1]
    records = s["records"]
    # per-arm accuracy needs per-arm correct counts, which the loop measures (tests/controller/test_loop_scenarios)
    # and metrics_from_pairs (shadow: the paired discordance only) does not
    assert "accuracy" not in last["arms"]
    # the last look judged every row: each arm's figure against a direct count of the rows
    for arm in ARMS:
        failed = [getattr(r, f"{arm}_error") is not None for r in records]
        assert last["arms"]["error_rate"][arm] == pytest.approx(np.mean(failed))
        ms = [getattr(r, f"{arm}_latency_ms") or 0.0 for r in records]
        assert last["arms"]["latency_p99"][arm] == pytest.approx(np.quantile(ms, 0.99), rel=0.06)
    assert all(
        {"error_rate", "latency_p99"} <= set(a["arms"]) for a in report["gates"]["series"]
    )  # every look
    page = reports.render_html(report)
    for gate in ("error_rate", "latency_p99"):
        block = page.split(f'data-gate="{gate}"', 1)[1].split("</div>", 1)[0]
        assert f"{gate} per arm over time" in block
        assert 'data-series="champion"' in block and 'data-series="challenger"' in block
        assert 'class="step-mark"' in block  # the canary step began at row 200
    error_rate = page.split('data-gate="error_rate"', 1)[1].split("</div>", 1)[0]
    assert 'data-series="always-valid interval"' in error_rate and "margin " in error_rate
    # p99 per arm is drawn from the first look; its ratio gate is still in burn-in (400 requests)
    latency = page.split('data-gate="latency_p99"', 1)[1].split("</div>", 1)[0]
    assert "latency_p99 per arm over time" in latency and "latency_p99: effect over time" not in latency
    agreement = page.split('data-gate="agreement"', 1)[1].split("</div>", 1)[0]
    assert "per arm" not in agreement  # a share of the pairs, no arm against the other


def test_report_cli_writes_each_format_and_fails_in_one_line(sqlite_url: str, tmp_path: Path) -> None:
    from controller.cli.main import cli
    from storage import Database

    db = Database(sqlite_url)
    build_scenario(Store(db), tmp_path, n=120)
    db.dispose()
    runner = CliRunner()
    for fmt in ("json", "html", "md"):
        out = tmp_path / f"report.{fmt}"
        result = runner.invoke(
            cli,
            [
                "--database-url",
                sqlite_url,
                "report",
                "churn",
                "--segment",
                "plan",
                "--format",
                fmt,
                "--output",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 500
    jsonschema.validate(json.loads((tmp_path / "report.json").read_text()), reports.REPORT_SCHEMA)
    result = runner.invoke(
        cli,
        [
            "--database-url",
            sqlite_url,
            "report",
            "nope",
            "--format",
            "json",
            "--output",
            str(tmp_path / "x.json"),
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: no deployment 'nope'"]


def test_segments_cover_only_the_most_recent_rows_when_the_rollout_is_longer(
    store: Store, tmp_path: Path
) -> None:
    s = build_scenario(store, tmp_path, n=300)
    report = reports.build_report(store, "churn", segments=["plan", "age"], segment_rows=120)
    _valid(report)
    newest = s["records"][-120:]
    by_col = {r["column"]: r for r in report["segments"]["results"]}
    for column in ("plan", "age"):
        assert sum(s_["rows"] for s_ in by_col[column]["segments"]) == 120
    by_plan = {s_["value"]: s_["rows"] for s_ in by_col["plan"]["segments"]}
    expected: dict[str, int] = {}
    for r in newest:
        value = (r.raw_input or {}).get("plan")
        key = "missing" if value is None else str(value)
        expected[key] = expected.get(key, 0) + 1
    assert by_plan == expected
    assert "most recent 120 of 300 rows" in report["segments"]["method"]
    assert report["segments"]["method"] in report["notes"]
    # The rest of the report still covers every row.
    assert report["traffic"]["rows"] == 300


def _labelled_pairs(s: dict[str, Any]) -> list[tuple[PairRecord, Any]]:
    """The scenario's rows that have a label (every other one) and both arms' outputs."""
    return [
        (r, s["truth"][i])
        for i, r in enumerate(s["records"])
        if i % 2 == 0 and r.champion_error is None and r.challenger_error is None
        and r.champion_output is not None and r.challenger_output is not None
    ]  # fmt: skip


def test_report_opens_with_the_verdict_and_the_plan_with_each_steps_outcome(
    store: Store, tmp_path: Path
) -> None:
    s = build_scenario(store, tmp_path, n=300)
    report = reports.build_report(store, "churn")
    _valid(report)
    # the scenario's policy: shadow, then canary 25% and 50%; the rollout is in its 25% step
    assert report["verdict"].startswith(
        "Canary step 2 of 3 (25% of traffic to the challenger); next: canary 50%. Since 12:02 UTC: "
    )
    records: list[PairRecord] = s["records"]
    plan = report["plan"]
    assert [(p["name"], p["status"]) for p in plan] == [
        ("shadow", "passed"),
        ("canary 25%", "in progress"),
        ("canary 50%", "not reached"),
    ]
    assert [p["requests"] for p in plan] == [sum(r.step == k for r in records) for k in range(3)]
    assert plan[0]["ended_by"]["message"] == "shadow step passed; canary at 25%"
    assert plan[1]["ended_by"] is None and plan[1]["outcome"] == report["gates"]["latest"]["outcome"]
    page = reports.render_html(report)
    assert page.index('id="verdict"') < page.index("<h2>Plan</h2>") < page.index("<h2>Gates</h2>")
    assert report["verdict"].replace("'", "&#x27;") in page
    md = reports.render_markdown(report)
    assert md.splitlines()[2] == f"**{report['verdict']}**" and "## Plan" in md


def test_label_curves_match_scikit_learn(store: Store, tmp_path: Path) -> None:
    s = build_scenario(store, tmp_path, n=400)
    report = reports.build_report(store, "churn")
    pairs = _labelled_pairs(s)
    y = [str(int(t)) for _, t in pairs]
    conf = report["curves"]["confusion"]
    assert conf["labels"] == ["0", "1"]
    for arm in ARMS:
        predicted = [getattr(r, f"{arm}_class") for r, _ in pairs]
        assert conf[arm] == skm.confusion_matrix(y, predicted, labels=["0", "1"]).tolist()  # rows: label
        roc = report["curves"]["roc"][arm]
        assert roc[0] == [0.0, 0.0] and roc[-1] == [1.0, 1.0]
        fpr, tpr = np.array(roc).T
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        scores = [getattr(r, f"{arm}_score") for r, _ in pairs]
        # the area under the binned curve is the report's AUC, within binning of sklearn's exact one
        area = float(np.trapezoid(tpr, fpr))
        assert area == pytest.approx(report["labels"][arm]["roc_auc"]["value"], abs=1e-9)
        assert area == pytest.approx(skm.roc_auc_score([int(v) for v in y], scores), abs=0.01)


def test_regression_curves_count_every_labelled_pair(store: Store, tmp_path: Path) -> None:
    s = build_scenario(store, tmp_path, n=300, kind="regression", name="spend")
    report = reports.build_report(store, "spend")
    _valid(report)
    pairs = _labelled_pairs(s)
    reg = report["curves"]["regression"]
    assert reg["n"] == len(pairs) and not reg["sampled"]
    for arm in ARMS:
        grid = np.array(reg[arm]["actual_vs_predicted"])
        assert grid.sum() == len(pairs)
        residuals = np.array([getattr(r, f"{arm}_value") - t for r, t in pairs])
        assert reg[arm]["residual_mean"] == pytest.approx(residuals.mean())
        assert sum(reg[arm]["residual_counts"]) == len(pairs)
        # the actual-value marginal of the binned plot is numpy's histogram of the labels
        actual = np.histogram([t for _, t in pairs], bins=reg["edges"])[0]
        assert grid.sum(axis=1).tolist() == actual.tolist()


@pytest.mark.parametrize(
    ("spacing", "n", "unit"),
    [(timedelta(seconds=1), 120, 10.0), (timedelta(minutes=5), 600, 5 * 3600.0)],
    ids=["two-minute rollout", "two-day rollout"],
)
def test_time_buckets_adapt_to_the_rollouts_length(
    store: Store, tmp_path: Path, spacing: timedelta, n: int, unit: float
) -> None:
    s = build_scenario(store, tmp_path, n=n, spacing=spacing)
    report = reports.build_report(store, "churn")
    t = report["traffic"]
    assert t["bucket_seconds"] == unit
    records: list[PairRecord] = s["records"]
    start = datetime.fromisoformat(t["start"])
    expected: dict[tuple[float, int], int] = {}
    for r in records:
        k = ((r.received_at - start).total_seconds() // unit * unit, r.step)
        expected[k] = expected.get(k, 0) + 1
    assert {(p["t"], p["step"]): p["rows"] for p in t["series"]} == expected
    assert len(t["series"]) >= 10  # a short rollout is a line, not one dot
    points = report["latency_series"]["points"]
    assert len(points) >= 3 and not report["latency_series"]["sampled"]
    width = report["latency_series"]["bucket_seconds"]
    first = [
        r.challenger_latency_ms
        for r in records
        if r.challenger_latency_ms is not None and (r.received_at - start).total_seconds() < width
    ]
    assert points[0]["challenger"]["p99"] == pytest.approx(float(np.quantile(first, 0.99)))


def test_rollout_status_and_the_admin_api_carry_the_reports_verdict(sqlite_url: str, tmp_path: Path) -> None:
    from controller.cli.main import cli

    db = Database(sqlite_url)
    build_scenario(Store(db), tmp_path, n=300)
    verdict = reports.build_report(Store(db), "churn")["verdict"]
    db.dispose()
    runner = CliRunner()
    shown = runner.invoke(cli, ["--database-url", sqlite_url, "rollout", "status", "churn"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[1] == verdict
    document = runner.invoke(cli, ["--database-url", sqlite_url, "rollout", "status", "churn", "--json"])
    assert json.loads(document.output)["verdict"] == verdict
