"""The controller leader is SIGKILLed in the middle of a multi-step canary rollout; a standby finishes it.

Two `mlcanary controller` processes (interval 0.2 s) on PostgreSQL (advisory lock). A feeder thread
writes paired outputs for the rollout's current step as routers would, so each step passes after its
minimum duration. The leader is killed once the rollout is a few steps in; the standby takes over
from the stored state. Every step appears exactly once in the event log, in order, none missing,
and the rollout ends promoted. (tests/controller/test_leader.py covers failover between rollouts.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import mlpipes
import pytest
from feeder import feed_steps
from servers import ROOT, clean_env, wait_for

from controller.loop import actions
from storage import Database, Store

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STEPS = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
OFF = {"role": "off", "margin": 0.5}
POLICY = {
    "mode": "canary",
    "canary": {"steps": STEPS, "min_samples": 100, "min_duration_s": 0.8, "shadow_rate": 1.0},
    "gates": {
        "error_rate": {"role": "required", "margin": 0.3},
        "latency_p99": {"role": "off", "margin": 2.0},
        "agreement": {"role": "off", "margin": 0.9},
        "accuracy": OFF,
        "regression": OFF,
        "drift": {"role": "off", "margin": 0.2},
    },
    "metrics": {"balanced_accuracy": {"role": "off"}},  # no labels here: error rate alone decides
    "burn_in": 50,
    "n_star": 200,
    "reproducibility": {"role": "off"},
}


@pytest.fixture
def controllers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def _controller(url: str, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    env = clean_env(controller_interval=0.2, database_url=url, data_dir=tmp_path / name)
    return subprocess.Popen(
        [sys.executable, "-m", "controller", "controller"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / f"{name}.log").open("wb"),
        start_new_session=True,
    )


def test_a_standby_finishes_a_rollout_whose_leader_was_killed_mid_way_applying_every_step_once(
    postgres_url: str, tmp_path: Path, controllers: list[subprocess.Popen[bytes]]
) -> None:
    from dbtools import truncate_postgres

    truncate_postgres(postgres_url)
    store = Store(Database(postgres_url))
    champion = mlpipes.register(store, tmp_path, version="1")
    mlpipes.register(store, tmp_path, version="2", seed=3)
    mlpipes.deploy(store, "churn", champion)
    leader = _controller(postgres_url, tmp_path, "a")
    controllers.append(leader)
    # a leads before b exists: wait for its own word (it takes over a second to import on a busy machine)
    wait_for(lambda: "is the leader" in (tmp_path / "a.log").read_text(), 60, "controller a leads")
    standby = _controller(postgres_url, tmp_path, "b")
    controllers.append(standby)
    rollout = actions.start_rollout(store, "churn", "churn:2", actor="tests", policy=POLICY)
    stop = threading.Event()
    feeder = threading.Thread(target=feed_steps, args=(store, rollout.id, stop), daemon=True)
    feeder.start()
    try:
        wait_for(lambda: store.rollouts.get(rollout.id).step_index >= 3, 60, "the rollout is three steps in")
        os.killpg(leader.pid, signal.SIGKILL)
        killed_at_step = store.rollouts.get(rollout.id).step_index
        leader.wait(timeout=10)
        wait_for(lambda: not store.rollouts.get(rollout.id).active, 90, "the standby finishes the rollout")
    finally:
        stop.set()
        feeder.join(10)
    final = store.rollouts.get(rollout.id)
    assert final.phase == "promoted", (tmp_path / "b.log").read_text()[-2000:]
    assert store.deployments.get("churn").champion_id == final.challenger_id

    events = [e for e in store.events.list(rollout_id=rollout.id, limit=10_000) if e.actor == "controller"]
    moves = [(e.action, e.details["to"]["canary_weight"]) for e in events]
    assert moves == [("rollout.start", 10.0)] + [("rollout.advance", w) for w in STEPS[1:-1]] + [
        ("rollout.promote", 100.0)
    ], "every step exactly once, in order, none lost"
    pids = [e.details["controller"].rsplit(":", 1)[1] for e in events]
    switch = pids.index(str(standby.pid))
    assert set(pids[:switch]) == {str(leader.pid)} and set(pids[switch:]) == {str(standby.pid)}
    assert 3 <= switch < len(events), "the leader was killed mid-rollout and the standby continued"
    assert (
        events[switch].details["from"]["canary_weight"] == events[switch - 1].details["to"]["canary_weight"]
    ), "the standby continued from the stored state"
    print(
        f"leader killed at step {killed_at_step}; standby applied {len(events) - switch} of {len(events)} "
        f"transitions, first one {(events[switch].at - events[switch - 1].at).total_seconds():.2f} s after "
        "the leader's last"
    )
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(timeout=10) == 0
    store.db.dispose()
