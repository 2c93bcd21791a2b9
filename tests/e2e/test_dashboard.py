"""The dashboard during LIVE rollouts, in real headless Chromium (Debian's), against `mlcanary serve`.

One `mlcanary serve` process (gunicorn with 2 workers and its controller loop, interval 0.3 s) on a
SQLite file, two deployments: ``churn`` (a healthy challenger, steered from the dashboard: promoted a
step, then aborted) and ``faulty`` (a challenger that raises, rolled back by the controller itself).
Clients send requests the whole time. The browser pastes a token, and the test asserts what a person
would read: plan and progress, the verdict sentence, plots drawn from data, the timeline, the state
colour after the rollout ends, and that the Abort button really aborts (the database says so).
Screenshots go to tests/artifacts/ (dashboard-live*.png, dashboard-aborted.png, dashboard-rolled-back.png).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import adminapp
import mlpipes
import pytest
from browser import ARTIFACTS, Page, chromium
from loadgen import Load
from servers import Server, body, wait_for

from controller.loop import actions
from storage import Database, Store

pytestmark = pytest.mark.slow

# Stays in its shadow step until an operator promotes it (min_pairs far away), then in canary 50%.
LIVE_POLICY = {
    "mode": "shadow_then_canary",
    "burn_in": 50,
    "shadow": {"min_pairs": 100_000},
    "canary": {"steps": [50, 100], "min_samples": 100_000, "min_duration_s": 0},
}
FAULTY_POLICY = {
    "mode": "shadow",
    "burn_in": 100,
    "shadow": {"min_pairs": 100},
    "gates": {"agreement": {"role": "informational", "margin": 0.9}},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[tuple[Server, Store]]:
    root = tmp_path_factory.mktemp("dashboard")
    path = root / "mlcanary.db"
    shutil.copyfile(sqlite_template, path)
    store = Store(Database(f"sqlite:///{path}"))
    champion = mlpipes.register(store, root, version="1")
    mlpipes.register(store, root, version="2", seed=1)
    mlpipes.register(store, root, version="3", fault="raises")
    mlpipes.deploy(store, "churn", champion)
    mlpipes.deploy(store, "faulty", champion)
    server = Server("serve", f"sqlite:///{path}", root / "var", controller_interval=0.3)
    try:
        server.wait_ready(timeout=90)
        yield server, store
    finally:
        server.kill()
        store.db.dispose()


def _load(server: Server, deployment: str, prefix: str) -> Load:
    return Load(
        server.base_url,
        path=f"/v1/models/{deployment}/invocations",
        body=lambda n: body(1 + n % 3, n),
        threads=2,
        count=100_000,
        duration=240,
        prefix=prefix,
    )


def _open(page: Page, base_url: str, token: str, deployment: str) -> None:
    page.navigate(base_url + "/")
    page.evaluate(
        f"document.querySelector('#token').value = {token!r};"
        "document.querySelector('#token-form').requestSubmit(); true"
    )
    row = f"#deployments tbody tr[data-name={deployment}]"
    page.wait_for(f"document.querySelector('{row}') !== null")
    page.evaluate(f"document.querySelector('{row}').click(); true")
    page.wait_for(f"document.querySelector('#detail-title').textContent === {deployment!r}")


def _text(page: Page, selector: str) -> str:
    return str(page.evaluate(f"(document.querySelector({selector!r}) || {{}}).textContent || ''"))


def _plot_points_js(plot: str) -> str:
    """JavaScript counting the drawn data marks (polyline vertices and dots) of one small multiple."""
    figure = f"#plots figure[data-plot={plot}]"
    return (
        f"Array.from(document.querySelectorAll('{figure} polyline'))"
        ".reduce((n, p) => n + p.getAttribute('points').trim().split(' ').length, 0)"
        f" + document.querySelectorAll('{figure} circle').length"
    )


def _plot_points(page: Page, plot: str) -> int:
    return int(page.evaluate(_plot_points_js(plot)))


def _confirm(page: Page, action: str, reason: str) -> None:
    page.evaluate(f"document.querySelector('[data-action={action}]').click(); true")
    assert page.evaluate("document.querySelector('#confirm').open") is True
    page.evaluate(
        f"document.querySelector('#confirm-reason').value = {reason!r};"
        "document.querySelector('#confirm-ok').click(); true"
    )


def test_dashboard_follows_a_live_rollout_and_its_abort_button_aborts_it(
    world: tuple[Server, Store], tmp_path: Path
) -> None:
    server, store = world
    token = adminapp.bearer(store, "operator", "dash-operator")["Authorization"].removeprefix("Bearer ")
    rollout = actions.start_rollout(
        store, "churn", "churn:2", actor="tests", policy=LIVE_POLICY, now=datetime.now(UTC)
    )
    wait_for(lambda: store.rollouts.get(rollout.id).phase == "shadowing", 30, "the controller starts it")
    load = _load(server, "churn", "dash-live").start()
    try:
        with chromium(tmp_path) as page:
            _open(page, server.base_url, token, "churn")
            # plan and progress, as the controller counted at its last look
            page.wait_for(
                "/^[1-9][0-9,]*\\/100,000 pairs; next: canary 50%/"
                ".test(document.querySelector('#progress-text').textContent)",
                timeout=60,
            )
            stages = page.evaluate(
                "Array.from(document.querySelectorAll('#plan .stage')).map(li => "
                "[li.querySelector('.stage-name').textContent, li.querySelector('.stage-status').textContent])"
            )
            assert stages == [["shadow", "current"], ["canary 50%", "next"]]
            assert _text(page, "#deployments tr[data-name=churn] .phase") == "shadowing"
            assert "tone-live" in page.evaluate("document.querySelector('#detail-state').className")
            assert _text(page, "#verdict").startswith("Shadow step 1 of")
            assert page.evaluate("document.querySelector('#live-block').hidden") is False
            # small multiples with data: the required gates, p99, error rate, traffic, coverage
            # the gate's band needs two looks past its burn-in; its per-arm figures come from the first look
            page.wait_for(
                "document.querySelectorAll('#plots figure[data-plot=gate-error_rate] polygon.band').length >= 1",
                timeout=60,
            )
            page.wait_for(f"({_plot_points_js('p99')}) >= 4", timeout=60)
            for plot in ("p99", "errors", "traffic", "coverage"):
                assert _plot_points(page, plot) >= 2, plot
            gates = page.evaluate(
                "Array.from(document.querySelectorAll('#plots figure[data-plot^=gate-]')).map(f => f.dataset.plot)"
            )
            assert "gate-error_rate" in gates
            assert (
                page.evaluate(
                    "document.querySelectorAll('#plots figure[data-plot=gate-error_rate] polygon.band').length"
                )
                == 1
            )
            assert (
                "gate-arms-error_rate" in gates
            )  # each arm's error rate at each look, beside the difference
            arms = page.evaluate(
                "Array.from(document.querySelectorAll('#plots figure[data-plot=gate-arms-error_rate] .dot'))"
                ".map(c => c.getAttribute('class'))"
            )
            assert sorted(arms) == ["dot challenger", "dot champion"], arms
            assert page.evaluate("document.querySelectorAll('#events tbody tr').length") >= 2
            page.screenshot(ARTIFACTS / "dashboard-live.png", width=1280)

            # Promote one step from the dashboard: the plan moves, the traffic plot shows the split.
            _confirm(page, "promote", "dashboard promotes to canary")
            wait_for(lambda: store.rollouts.get(rollout.id).step_index == 1, 30, "the promotion is stored")
            page.wait_for(
                "document.querySelector('#plan .stage.s-current .stage-name').textContent === 'canary 50%'"
            )
            page.wait_for(
                "/ requests; next: promote/.test(document.querySelector('#progress-text').textContent)",
                timeout=60,
            )
            page.wait_for(
                "document.querySelectorAll('#plots figure[data-plot=traffic] line.step-mark').length >= 1",
                timeout=60,
            )
            page.screenshot(ARTIFACTS / "dashboard-live-canary.png", width=1280)

            # Abort: nothing happens until it is confirmed; then the database says aborted.
            page.evaluate("document.querySelector('[data-action=abort]').click(); true")
            assert page.evaluate("document.querySelector('#confirm').open") is True
            page.evaluate("document.querySelector('#confirm-cancel').click(); true")
            assert store.rollouts.get(rollout.id).phase == "progressing"
            _confirm(page, "abort", "stop: wrong feature set")
            wait_for(lambda: store.rollouts.get(rollout.id).phase == "aborted", 30, "the abort is stored")
            page.wait_for("document.querySelector('#detail-state').textContent === 'aborted'")
            page.wait_for("document.querySelector('#live-block').hidden === true")
            assert "tone-bad" in page.evaluate("document.querySelector('#detail-state').className")
            assert _text(page, "#deployments tr[data-name=churn] .phase") == "aborted"
            assert "is now aborted" in _text(page, "#status")
            assert re.fullmatch(
                r"Aborted at \d\d:\d\d UTC by dash-operator: stop: wrong feature set; all traffic is back on the champion\.",
                _text(page, "#verdict"),
            ), _text(page, "#verdict")
            assert _text(page, "#progress-text").startswith("Aborted during canary 50%")
            assert page.evaluate(
                "Array.from(document.querySelectorAll('[data-action]')).every(b => b.disabled)"
            )
            page.wait_for(
                "Array.from(document.querySelectorAll('#events tbody td')).some(td => "
                "td.textContent.includes('stop: wrong feature set'))"
            )
            page.screenshot(ARTIFACTS / "dashboard-aborted.png", width=1280)
            assert page.console_errors() == []
    finally:
        load.stop()
    ended = store.rollouts.get(rollout.id)
    assert (ended.phase, ended.active) == ("aborted", False)
    event = store.events.list(rollout_id=rollout.id)[-1]
    assert event.actor == "dash-operator" and "abort" in event.action


def test_a_rollout_the_controller_rolled_back_is_red_not_stable_and_shows_no_live_figures(
    world: tuple[Server, Store], tmp_path: Path
) -> None:
    server, store = world
    token = adminapp.bearer(store, "viewer", "dash-viewer")["Authorization"].removeprefix("Bearer ")
    rollout = actions.start_rollout(
        store, "faulty", "churn:3", actor="tests", policy=FAULTY_POLICY, now=datetime.now(UTC)
    )
    load = _load(server, "faulty", "dash-faulty").start()
    try:
        wait_for(lambda: not store.rollouts.get(rollout.id).active, 90, "the controller rolls it back")
    finally:
        load.stop()
    assert store.rollouts.get(rollout.id).phase == "rolled_back"
    with chromium(tmp_path) as page:
        _open(page, server.base_url, token, "faulty")
        page.wait_for("document.querySelector('#detail-state').textContent === 'rolled back'")
        assert "tone-bad" in page.evaluate("document.querySelector('#detail-state').className")
        badge = "#deployments tr[data-name=faulty] .phase"
        assert _text(page, badge) == "rolled back"
        assert "tone-bad" in page.evaluate(f"document.querySelector({badge!r}).className")
        assert re.search(r"\d+ (s|min) ago", _text(page, "#deployments tr[data-name=faulty] .age"))
        assert page.evaluate("document.querySelector('#live-block').hidden") is True
        assert re.match(r"Rolled back at \d\d:\d\d UTC", _text(page, "#verdict"))
        assert _text(page, "#progress-text").startswith("Rolled back during shadow")
        stage = page.evaluate("document.querySelector('#plan .stage .stage-status').textContent")
        assert stage == "rolled back"
        page.wait_for(f"({_plot_points_js('gate-error_rate')}) >= 1")
        assert (
            page.evaluate(
                "document.querySelectorAll('#plots figure[data-plot=gate-error_rate] .band').length"
            )
            == 1
        )
        assert _plot_points(page, "errors") >= 2
        timeline = page.evaluate(
            "Array.from(document.querySelectorAll('#events tbody tr')).map(tr => "
            "Array.from(tr.cells).map(td => td.textContent))"
        )
        assert timeline[0][1] == "rollout.rollback" and timeline[0][2] == "controller", timeline[0]
        page.screenshot(ARTIFACTS / "dashboard-rolled-back.png", width=1280)
        assert page.console_errors() == []
