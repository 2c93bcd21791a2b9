"""The leader's host cut off mid-rollout: the standby takes over and finishes it, every step applied once.

    took, by_standby, steps = cut_the_leader(cluster, "elected", silent=False, takeover_timeout=30)

Shared by tests/scaleout (a cut that resets every connection, through forwarders; and a silent one,
packets dropped, on direct links to a server of the test's own). The rollout moves through five
canary steps fed by tests/support/feeder.py (from this process, which the cut does not touch); the
leader is cut once it has moved a step and restored once the standby has finished. Asserts the
outcome; returns the seconds from the cut until the standby led, the events the standby applied and
all the controller's events.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import mlpipes
from cluster import Cluster, leads, whole_log
from feeder import feed_steps
from servers import wait_for

from controller.loop import actions

STEPS = [20.0, 40.0, 60.0, 80.0, 100.0]
POLICY = {
    "mode": "canary",
    "canary": {"steps": STEPS, "min_samples": 100, "min_duration_s": 0.8, "shadow_rate": 1.0},
    "gates": {
        "error_rate": {"role": "required", "margin": 0.3},
        "latency_p99": {"role": "off", "margin": 2.0},
        "agreement": {"role": "off", "margin": 0.9},
        "accuracy": {"role": "off", "margin": 0.5},
        "regression": {"role": "off", "margin": 0.5},
        "drift": {"role": "off", "margin": 0.2},
    },
    "metrics": {"balanced_accuracy": {"role": "off"}},  # no labels: the error rate alone decides
    "burn_in": 50,
    "n_star": 200,
    "reproducibility": {"role": "off"},
}


def cut_the_leader(
    cluster: Cluster, name: str, *, seed: int, silent: bool, takeover_timeout: float
) -> tuple[float, int, int]:
    """Cut the leader's host mid-rollout (``silent``: packets dropped); assert the standby finished it alone."""
    champion = mlpipes.register(cluster.store, cluster.tmp, name=name, version="1")
    challenger = mlpipes.register(cluster.store, cluster.tmp, name=name, version="2", seed=seed)
    mlpipes.deploy(cluster.store, name, champion)
    leader = cluster.leader()
    standby = next(c for c in cluster.controllers if c is not leader)
    leader_host = cluster.hosts[cluster.controllers.index(leader)]
    rollout = actions.start_rollout(cluster.store, name, f"{name}:2", actor="tests", policy=POLICY)
    stop = threading.Event()
    feeder = threading.Thread(target=feed_steps, args=(cluster.store, rollout.id, stop), daemon=True)
    feeder.start()
    try:
        wait_for(
            lambda: cluster.store.rollouts.get(rollout.id).step_index >= 1, 60, "the leader moved a step"
        )
        cut_at = datetime.now(UTC)
        leader_host.cut(silent=silent)
        try:
            took = wait_for(lambda: leads(standby), takeover_timeout, "the standby leads")
            wait_for(lambda: not cluster.store.rollouts.get(rollout.id).active, 120, "the standby finishes")
        finally:
            leader_host.restore()
    finally:
        stop.set()
        feeder.join(10)
    final = cluster.store.rollouts.get(rollout.id)
    assert final.phase == "promoted"
    assert cluster.store.deployments.get(name).champion_id == challenger.id
    events = [
        e for e in cluster.store.events.list(rollout_id=rollout.id, limit=10_000) if e.actor == "controller"
    ]
    moves = [(e.action, e.details["to"]["canary_weight"]) for e in events]
    assert moves == [("rollout.start", STEPS[0])] + [("rollout.advance", w) for w in STEPS[1:-1]] + [
        ("rollout.promote", 100.0)
    ], "every step exactly once, in order"
    pids = [e.details["controller"].rsplit(":", 1)[1] for e in events]
    # Before the cut a busy machine may move the lead back and forth (each move one leader at a time,
    # the lock and the optimistic writes see to it); from the cut on, only the standby may act.
    after_cut = next(
        (i for i, e in enumerate(events) if (e.at if e.at.tzinfo else e.at.replace(tzinfo=UTC)) >= cut_at),
        len(events),
    )
    story = [(pid, e.action, e.at.isoformat()) for pid, e in zip(pids, events, strict=True)]
    assert after_cut < len(events), f"the standby applied nothing after the cut at {cut_at}: {story}"
    assert set(pids[after_cut:]) == {str(standby.pid)}, (
        f"one leader at a time: the cut leader (pid {leader.pid}) applied nothing once cut at {cut_at}: {story}"
    )
    assert str(leader.pid) in pids[:after_cut], (
        f"the cut leader had moved the rollout before the cut: {story}"
    )
    switch = after_cut
    # the cut leader, its link back, stands by: one leader at a time
    wait_for(
        lambda: "lost the controller lock" in whole_log(leader), 60, "the cut leader knows it lost the lock"
    )
    wait_for(lambda: not leads(leader), 30, "the cut leader stands by")
    after_loss = whole_log(leader).rsplit("lost the controller lock", 1)[1]
    assert "is the leader" not in after_loss, (
        f"the cut leader claimed the lead again:\n{after_loss[-2000:]}\nstandby:\n{whole_log(standby)[-2000:]}"
    )
    return took, len(events) - switch, len(events)
