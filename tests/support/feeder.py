"""Write paired outputs for a rollout's current canary step, as routers would, so that a controller moves it on.

    stop = threading.Event()
    threading.Thread(target=feed_steps, args=(store, rollout.id, stop), daemon=True).start()

Every ``tick`` seconds, while the rollout is progressing, ``batch`` clean pairs (both arms ran, the
same class, 3 ms each) for its current step, split exactly at the step's weight; it returns when the
rollout ends or ``stop`` is set. The controller failover tests drive multi-step rollouts with it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from storage import Store
from storage.entities import PairRecord


def feed_steps(
    store: Store,
    rollout_id: int,
    stop: threading.Event,
    *,
    batch: int = 200,
    tick: float = 0.05,
    prefix: str = "feed",
) -> None:
    """Write ``batch`` clean pairs for the current step every ``tick`` s until the rollout ends or ``stop``."""
    n = 0
    while not stop.is_set():
        r = store.rollouts.get(rollout_id)
        if not r.active:
            return
        if r.phase == "progressing":
            challenger_share = round(batch * r.canary_weight / 100.0)
            records = []
            for i in range(batch):
                n += 1
                served = "challenger" if i < challenger_share else "champion"
                records.append(
                    PairRecord(
                        request_id=f"{prefix}-{n}",
                        row_index=0,
                        deployment_id=r.deployment_id,
                        rollout_id=r.id,
                        step=r.step_index,
                        received_at=datetime.now(UTC),
                        routing_key_hash=n,
                        served_arm=served,
                        champion_version_id=r.champion_id,
                        challenger_version_id=r.challenger_id,
                        champion_latency_ms=3.0,
                        challenger_latency_ms=3.0,
                        champion_class="1",
                        challenger_class="1",
                    )
                )
            store.pairs.insert_many(records)
        stop.wait(tick)
