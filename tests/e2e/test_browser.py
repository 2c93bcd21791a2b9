"""The HTML report and the dashboard in real headless Chromium (Debian's), over the DevTools protocol."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import adminapp
import pytest
from browser import ARTIFACTS, chromium
from werkzeug.serving import make_server

from controller.reports import build as reports
from storage import Database, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))
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


def test_html_report_loads_offline_without_console_errors_and_shows_its_plots(
    scenario_store: Store, tmp_path: Path
) -> None:
    report = reports.build_report(scenario_store, "churn", segments=["plan", "age"])
    path = ARTIFACTS / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reports.render_html(report))
    with chromium(tmp_path) as page:
        page.navigate(path.as_uri())
        svgs = page.evaluate("document.querySelectorAll('svg.plot').length")
        polylines = page.evaluate(
            "document.querySelectorAll('svg.plot polyline, svg.plot rect, svg.plot circle').length"
        )
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        page.screenshot(ARTIFACTS / "report.png", width=1100)
        assert page.console_errors() == []
    assert svgs >= 8 and polylines > 20
    assert {
        "Gates",
        "Traffic",
        "Arms",
        "Outputs and drift",
        "Quality against labels",
        "Segments",
        "Timeline",
        "Reproducibility",
        "Sample size still needed",
    } <= set(headings)


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
