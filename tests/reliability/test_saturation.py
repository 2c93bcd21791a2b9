"""At saturation the router's own queueing is never charged to a challenger; a really slow one still is.

The report of issue 13 at CI scale: one `mlcanary serve` (gunicorn, 2 workers, controller loop every
0.3 s, shadow timeout 1 s) with four deployments under clients sending 10-row requests as fast as
the server answers (3 threads each: the 2-core machine is saturated). While traffic flows, shadow
rollouts start: three challengers identical to their champions, and one whose own scoring sleeps
1.2 s per call (past the timeout). The identical ones must never be rolled back and never be charged
an error, whatever the router skipped (counted as coverage lost); the slow one must be charged and
rolled back on the error-rate gate. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlpipes
import pytest
from loadgen import Load
from servers import Server, body, wait_for

from controller.loop import actions
from storage import Database, Store, analytics

pytestmark = pytest.mark.slow

IDENTICAL = ("alpha", "beta", "gamma")
SLOW = "slow"
POLICY: dict[str, Any] = {
    "mode": "shadow",
    "burn_in": 60,  # small: the 2 shared cores may serve only a few requests per second
    "shadow": {"min_pairs": 100_000},  # never decided by sample size here: only harm may end it
    "gates": {"agreement": {"role": "informational", "margin": 0.9}},
}


def _judged(store: Store, rollout_id: int) -> bool:
    """The error-rate gate has left its burn-in in the latest analysis (it could have found harm)."""
    latest = store.analyses.latest(rollout_id)
    if latest is None:
        return False
    gate = next((v for v in latest.verdicts if v["gate"] == "error_rate"), None)
    return gate is not None and gate["outcome"] != "no-data"


def _state(store: Store, rollout_id: int) -> dict[str, Any]:
    latest = store.analyses.latest(rollout_id)
    return {
        "phase": store.rollouts.get(rollout_id).phase,
        "metrics": None if latest is None else latest.metrics,
    }


def test_identical_challengers_at_saturation_are_never_charged_and_a_slow_one_is_rolled_back(
    database_url: str, tmp_path: Path
) -> None:
    store = Store(Database(database_url))
    champion = mlpipes.register(store, tmp_path, version="1")
    refs = {}
    for number, name in enumerate(IDENTICAL, start=2):
        mlpipes.deploy(store, name, champion)
        refs[name] = mlpipes.register(store, tmp_path, version=str(number), seed=0).ref  # the same model
    mlpipes.deploy(store, SLOW, champion)
    refs[SLOW] = mlpipes.register(store, tmp_path, version="9", fault="sleeps", delay=1.2).ref
    server = Server("serve", database_url, tmp_path / "var", controller_interval=0.3, shadow_timeout_s=1.0)
    loads: dict[str, Load] = {}
    try:
        server.wait_ready(timeout=90)
        for name in refs:
            loads[name] = Load(
                server.base_url,
                path=f"/v1/models/{name}/invocations",
                body=lambda n: body(10, n),
                threads=3,
                count=1_000_000,
                duration=120,
                prefix=name,
            ).start()
        for load in loads.values():
            load.wait_sent(30)  # traffic flows before the rollouts start
        now = datetime.now(UTC)
        rollouts = {
            name: actions.start_rollout(store, name, ref, actor="tests", policy=POLICY, now=now)
            for name, ref in refs.items()
        }
        try:
            wait_for(
                lambda: (
                    not store.rollouts.get(rollouts[SLOW].id).active
                    and all(_judged(store, rollouts[n].id) for n in IDENTICAL)
                ),
                150,
                "the slow challenger is rolled back and the identical ones are judged",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: { ({n: _state(store, r.id) for n, r in rollouts.items()}) }"
            ) from None
        for load in loads.values():
            load.wait_sent(load.sent + 100)  # a while longer at saturation
        reports = {name: load.stop() for name, load in loads.items()}
        server.terminate()
    finally:
        for load in loads.values():
            load.stop()
        server.kill()

    figures = []
    for name in IDENTICAL:
        assert reports[name].failed == [], f"{name}: the champion failed requests"
        rollout = store.rollouts.get(rollouts[name].id)
        assert rollout.phase != "rolled_back", (name, rollout.reason)
        pairs = store.pairs.list(rollout_id=rollout.id, limit=1_000_000)
        first = [p for p in pairs if p.row_index == 0]
        charged = [p.challenger_error for p in pairs if p.challenger_status == "error"]
        assert charged == [], f"{name}: an identical challenger was charged {len(charged)} errors"
        scored = [p for p in first if p.challenger_status == "ok"]
        skipped = [p for p in first if p.challenger_status == "skipped"]
        assert all(p.skip_reason is not None and p.challenger_error is None for p in skipped)
        assert all(p.challenger_class == p.champion_class for p in pairs if p.challenger_status == "ok")
        coverage = analytics.coverage(store.db, rollout_id=rollout.id)
        reasons: dict[str, int] = {}
        for p in skipped:
            reasons[str(p.skip_reason)] = reasons.get(str(p.skip_reason), 0) + 1
        assert (coverage.sampled, coverage.scored, coverage.skipped) == (len(first), len(scored), reasons)
        assert len(scored) >= 60
        figures.append(
            f"{name}: {len(scored)} scored, skipped {reasons}, coverage {len(scored) / len(first):.1%}"
        )

    slow = store.rollouts.get(rollouts[SLOW].id)
    event = store.events.list(rollout_id=slow.id)[-1]
    assert (slow.phase, event.reason) == ("rolled_back", "harm"), event
    assert "error_rate" in [v["gate"] for v in event.details["verdicts"] if v["outcome"] == "fail"]
    slow_pairs = [p for p in store.pairs.list(rollout_id=slow.id, limit=1_000_000) if p.row_index == 0]
    charged = [p for p in slow_pairs if p.challenger_status == "error"]
    assert charged and all(p.challenger_latency_ms >= 1000 for p in charged)  # type: ignore[operator]
    assert all(p.challenger_status != "ok" for p in slow_pairs)  # it never answered within its time
    print("\n" + "\n".join(figures) + f"\n{SLOW}: {len(charged)} charged, rolled back: {slow.reason}")
    store.db.dispose()
