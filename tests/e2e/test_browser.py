"""The HTML report and the dashboard in real headless Chromium (Debian's), over the DevTools protocol."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import adminapp
import pytest
from browser import ARTIFACTS, chromium
from werkzeug.serving import make_server

from controller.reports import build as reports
from storage import Database, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))
from test_multiclass_reliability import iris_rollout  # noqa: E402
from test_reports import build_scenario  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def scenario_store(sqlite_url: str, tmp_path: Path) -> Iterator[Store]:
    db = Database(sqlite_url)
    store = Store(db)
    build_scenario(store, tmp_path, n=400)
    yield store
    db.dispose()


@contextmanager
def serving(store: Store, tmp_path: Path) -> Iterator[str]:
    """Serve the real app (admin API, dashboard, data plane) on a free loopback port in a thread."""
    with adminapp.running(store, tmp_path) as app:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(timeout=10)


REPORT_CASES = {
    # name: (build_scenario arguments, plots that must be there with data)
    "classification-short": (
        {"n": 120, "spacing": timedelta(seconds=1), "looks": 6},
        ["ROC curve per arm", "Confusion matrix: champion", "Confusion matrix: challenger", "Reliability per arm"],
    ),
    "classification-long": (
        {"n": 1200, "spacing": timedelta(minutes=5), "looks": 24},
        ["ROC curve per arm", "Confusion matrix: champion", "accuracy: effect over time", "error_rate: effect over time"],
    ),
    "regression-short": (
        {"n": 600, "kind": "regression", "looks": 6},
        ["Predicted against actual: champion", "Predicted against actual: challenger", "Residuals (prediction"],
    ),
    "regression-long": (
        {"n": 900, "kind": "regression", "spacing": timedelta(minutes=7), "looks": 12},
        ["Predicted against actual: champion", "regression: effect over time"],
    ),
}  # fmt: skip
EVERY_REPORT = [
    "Traffic share and shadow coverage over time",
    "Error rate per arm over time",
    "Latency distribution per arm",
    "p99 latency per arm over time",
]


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_html_report_leads_with_the_verdict_and_every_plot_has_data(
    case: str, sqlite_url: str, tmp_path: Path
) -> None:
    arguments, expected = REPORT_CASES[case]
    db = Database(sqlite_url)
    store = Store(db)
    build_scenario(store, tmp_path, **arguments)  # type: ignore[arg-type]
    report = reports.build_report(store, "churn", segments=["plan", "age"])
    db.dispose()
    path = ARTIFACTS / f"report-{case}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reports.render_html(report))
    with chromium(tmp_path) as page:
        page.navigate(path.as_uri())
        verdict = page.evaluate("document.querySelector('#verdict').textContent")
        first_heading = page.evaluate("document.querySelector('h2').textContent")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        plots = page.evaluate(
            "Array.from(document.querySelectorAll('svg.plot')).map(s => [s.querySelector('title').textContent, "
            "s.querySelectorAll('[data-series]').length])"
        )
        marks = page.evaluate("document.querySelectorAll('svg.plot .step-mark').length")
        widest = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(ARTIFACTS / f"report-{case}.png", width=1280)
        page.call("Emulation.setEmulatedMedia", media="print")
        page.screenshot(ARTIFACTS / f"report-{case}-print.png", width=800)
        assert page.console_errors() == []
    assert verdict == report["verdict"] and verdict.startswith("Canary step 2 of 3")
    assert first_heading == "Plan"  # the verdict, then the plan, then the evidence
    assert {"Plan", "Gates", "Traffic", "Arms", "Outputs and drift", "Quality against labels", "Segments",
            "Timeline", "Reproducibility"} <= set(headings)  # fmt: skip
    empty = [title for title, series in plots if series == 0]
    assert empty == [], f"plots without data: {empty}"
    titles = [title for title, _ in plots]
    for wanted in EVERY_REPORT + expected:
        assert any(t.startswith(wanted) for t in titles), f"no plot {wanted!r} in {titles}"
    assert marks >= 3  # the start of step 2 is marked on the over-time plots
    assert widest <= 1280  # nothing runs off the side at 1280 px


def test_html_report_of_a_three_class_model_draws_its_reliability_curves(
    sqlite_url: str, tmp_path: Path
) -> None:
    db = Database(sqlite_url)
    store = Store(db)
    truth = iris_rollout(store, tmp_path, 400)
    report = reports.build_report(store, "iris")
    db.dispose()
    path = ARTIFACTS / "report-multiclass.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reports.render_html(report))
    with chromium(tmp_path) as page:
        page.navigate(path.as_uri())
        plots = page.evaluate(
            "Array.from(document.querySelectorAll('svg.plot')).map(s => [s.querySelector('title').textContent, "
            "Array.from(s.querySelectorAll('[data-series]')).map(e => e.getAttribute('data-series'))])"
        )
        widest = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(ARTIFACTS / "report-multiclass.png", width=1280)
        page.call("Emulation.setEmulatedMedia", media="print")
        page.screenshot(ARTIFACTS / "report-multiclass-print.png", width=800)
        print_widest = page.evaluate("document.documentElement.scrollWidth")
        assert page.console_errors() == []
    series = dict(plots)
    wanted = ["Reliability per arm (top label)"]
    wanted += [f"Reliability of class {c} (one-vs-rest)" for c in truth["classes"]]
    for title in wanted:
        assert title in series, f"no plot {title!r} in {list(series)}"
        names = series[title]
        # both arms drawn, each named with its ECE, and the diagonal
        assert sum(n.startswith("champion (ECE 0.") for n in names) == 1, names
        assert sum(n.startswith("challenger (ECE 0.") for n in names) == 1, names
        assert "perfect calibration" in names
    assert widest <= 1280 and print_widest <= 1280


def test_dashboard_lists_deployments_refreshes_and_rolls_back_after_confirmation(
    scenario_store: Store, tmp_path: Path
) -> None:
    headers = adminapp.bearer(scenario_store, "operator")
    token = headers["Authorization"].removeprefix("Bearer ")
    rollout = scenario_store.rollouts.latest(scenario_store.deployments.get("churn").id)
    assert rollout is not None and rollout.phase == "progressing"
    with serving(scenario_store, tmp_path) as base, chromium(tmp_path) as page:
        page.navigate(base + "/")
        assert page.evaluate("document.querySelector('#status').textContent") == "no token yet"
        page.evaluate(
            f"document.querySelector('#token').value = {token!r};"
            "document.querySelector('#token-form').requestSubmit(); true"
        )
        page.wait_for("document.querySelector('#deployments tbody tr[data-name=churn]') !== null")
        assert page.evaluate("sessionStorage.getItem('mlcanary.token')") == token
        phase = page.evaluate("document.querySelector('#deployments tr[data-name=churn] .phase').textContent")
        assert phase == "progressing"
        page.wait_for("document.querySelectorAll('#verdicts tbody tr').length > 0")
        page.wait_for("document.querySelectorAll('#events tbody tr').length >= 2")
        first = page.evaluate("document.querySelector('#refreshed').textContent")
        page.wait_for(
            f"document.querySelector('#refreshed').textContent !== {first!r}", timeout=10
        )  # polls itself
        page.screenshot(ARTIFACTS / "dashboard.png")
        # Roll back: the button opens a confirmation dialog; nothing happens until it is confirmed.
        page.evaluate("document.querySelector('[data-action=rollback]').click(); true")
        assert page.evaluate("document.querySelector('#confirm').open") is True
        assert scenario_store.rollouts.get(rollout.id).phase == "progressing"
        page.evaluate(
            "document.querySelector('#confirm-reason').value = 'accuracy worse in segment pro';"
            "document.querySelector('#confirm-ok').click(); true"
        )
        page.wait_for(
            "document.querySelector('#deployments tr[data-name=churn] .phase').textContent !== 'progressing'"
        )
        page.wait_for(
            "Array.from(document.querySelectorAll('#events tbody td')).some(td => "
            "td.textContent.includes('accuracy worse in segment pro'))"
        )
        page.screenshot(ARTIFACTS / "dashboard-rolled-back.png")
        assert page.console_errors() == []
    after = scenario_store.rollouts.get(rollout.id)
    assert after.phase == "rolled_back"
