"""Scale-out across hosts: three routers and two controllers in their own network namespaces, one PostgreSQL.

Each host reaches PostgreSQL only through its own forwarder in the root namespace (tests/support/netns.py),
so one host can be cut from the database while the others keep their link. The clients (this process)
reach every router on its host's own address. The figures (throughput with 1, 2, 3 hosts, rollback
propagation) are measured by bench/scaleout.py, not here: these tests prove behaviour, bounded in count
and time.
"""

from __future__ import annotations

import threading
import time

import httpx
import mlpipes
import pytest
from cluster import Cluster
from failover import cut_the_leader
from loadgen import Load
from servers import body, wait_for

from controller.loop import actions
from router.split import assign_arm
from storage.entities import Deployment

pytestmark = [pytest.mark.scaleout, pytest.mark.slow, pytest.mark.postgres]

HOLD = {"min_duration_s": 3600.0, "max_duration_s": 7200.0}  # the controllers never move these rollouts


def _deploy(cluster: Cluster, name: str, *, seed: int) -> tuple[Deployment, int]:
    """Register champion and challenger of ``name`` and deploy the champion; return it and the challenger id."""
    champion = mlpipes.register(cluster.store, cluster.tmp, name=name, version="1")
    challenger = mlpipes.register(cluster.store, cluster.tmp, name=name, version="2", seed=seed)
    return mlpipes.deploy(cluster.store, name, champion), challenger.id


def _wait_routed(cluster: Cluster, name: str, *, arm: str = "champion", key: str | None = None) -> None:
    """Wait until every host answers ``name`` (from ``arm``, for routing key ``key``)."""
    headers = {"Connection": "close", **({"X-Routing-Key": key} if key else {})}

    def answers(url: str) -> bool:
        try:
            r = httpx.post(f"{url}/v1/models/{name}/invocations", json=body(1), headers=headers, timeout=5)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.headers.get("X-Mlcanary-Arm") == arm

    for router in cluster.routers:
        wait_for(
            lambda u=router.base_url: all(answers(u) for _ in range(6)),
            60,
            f"{router.base_url} routes {name}",
        )


def test_a_host_cut_from_the_database_keeps_answering_spools_and_replays_exactly_once(
    cluster: Cluster,
) -> None:
    deployment, challenger_id = _deploy(cluster, "spooled", seed=4)
    cluster.store.rollouts.create(
        deployment_id=deployment.id,
        challenger_id=challenger_id,
        mode="shadow",
        policy={"mode": "shadow", "shadow": HOLD},
        created_by="tests",
        phase="shadowing",
        shadow_rate=1.0,
    )
    _wait_routed(cluster, "spooled")
    cut, cut_router = cluster.hosts[2], cluster.routers[2]
    spooled_before = cut_router.metric("mlcanary_records_spooled_total")
    loads = [
        Load(
            router.base_url,
            path="/v1/models/spooled/invocations",
            body=lambda n: body(1, n),
            threads=2,
            count=20_000,
            duration=60,
            prefix=f"host{i}",
        ).start()
        for i, router in enumerate(cluster.routers)
    ]
    for load in loads:
        load.wait_sent(50)
    cut_at = time.time()
    cut.cut()
    try:
        # the cut host answers on: wait for answers it could not have stored, then for its spool to hold them
        mark = loads[2].sent
        loads[2].wait_sent(mark + 60)
        wait_for(
            lambda: cut_router.metric("mlcanary_records_spooled_total") > spooled_before,
            30,
            "the cut host spools",
        )
    finally:
        cut.restore()
    restored_at = time.time()
    for load in loads:
        load.wait_sent(load.sent + 50)
    reports = [load.stop() for load in loads]
    answered = [rid for report in reports for rid in report.answered]
    during = [r for r in reports[2].results if cut_at <= r.sent_at < restored_at]
    for i, report in enumerate(reports):
        assert report.failed == [], f"host {i} failed requests: {report.statuses()}"
    assert len(during) >= 60, "the cut host answered while cut"
    spooled = cut_router.metric("mlcanary_records_spooled_total") - spooled_before
    pairs = cluster.store.pairs
    wait_for(lambda: pairs.existing_request_ids(answered) == set(answered), 60, "every spooled pair replayed")
    wait_for(lambda: not list((cluster.tmp / "host2" / "spool").glob("pairs-*.jsonl")), 30, "spool emptied")
    rows, distinct = _load_rows(cluster, deployment.id)
    assert (rows, distinct) == (len(answered), len(answered)), "one pair per answered request, none twice"
    assert spooled >= len(during) * 0.5, "the cut host's answers went through its spool"
    assert all(r.rate > 0 for r in reports[:2]), "the other hosts kept serving"
    print(
        f"host 2 cut for {restored_at - cut_at:.1f} s: answered {len(during)} meanwhile, spooled {spooled:.0f} rows; "
        f"{len(answered)} answered by 3 hosts = {rows} pairs stored"
    )


def _load_rows(cluster: Cluster, deployment_id: int) -> tuple[int, int]:
    """Rows, and distinct request ids, the load (request ids ``host<i>-...``) left in storage."""
    with cluster.store.db.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT count(*), count(DISTINCT request_id) FROM paired_outputs "
            "WHERE deployment_id = %(d)s AND request_id LIKE 'host%%'",
            {"d": deployment_id},
        ).one()
    return int(row[0]), int(row[1])


def test_the_standby_takes_over_when_the_leaders_host_is_cut_off(cluster: Cluster) -> None:
    took, by_standby, applied = cut_the_leader(cluster, "elected", seed=3, silent=False, takeover_timeout=30)
    print(f"leader's host cut: standby led {took:.2f} s later; it applied {by_standby} of {applied}")


def test_a_rollback_reaches_every_host_within_a_few_poll_intervals(cluster: Cluster) -> None:
    deployment, challenger_id = _deploy(cluster, "rolledback", seed=5)
    rollout = cluster.store.rollouts.create(
        deployment_id=deployment.id,
        challenger_id=challenger_id,
        mode="canary",
        policy={"mode": "canary", "canary": {"steps": [50.0, 100.0], **HOLD}},
        created_by="tests",
        phase="progressing",
        canary_weight=50.0,
        shadow_rate=0.0,
    )
    salt = cluster.store.routing.load_table()["rolledback"].split_salt
    arms: dict[str, list[str]] = {"champion": [], "challenger": []}
    for key in (f"user-{i}" for i in range(400)):
        arms[assign_arm(key, rollout.id, 50.0, salt)].append(key)
    # keys of both arms in turn, so the split's sample ratio stays even (no veto by the controllers)
    keys = [k for pair in zip(arms["challenger"], arms["champion"], strict=False) for k in pair]
    _wait_routed(cluster, "rolledback", arm="challenger", key=keys[0])
    actions.act(cluster.store, "rolledback", "rollback", actor="tests", reason="propagation across hosts")
    committed = time.monotonic()
    last = [0.0] * len(cluster.routers)
    errors: list[str] = []
    interval = float(cluster.router_settings["refresh_interval"])
    bound = 4 * interval  # one poll, one table load, the requests in flight: well within four polls

    def probe(i: int) -> None:
        url = f"{cluster.routers[i].base_url}/v1/models/rolledback/invocations"
        n = 0
        while (elapsed := time.monotonic() - committed) < bound + 3 * interval:
            key = keys[n % len(keys)]
            n += 1
            try:
                r = httpx.post(
                    url, json=body(1), headers={"X-Routing-Key": key, "Connection": "close"}, timeout=5
                )
            except httpx.HTTPError as error:
                errors.append(f"host {i}: {error!r}")
                return
            if r.status_code != 200:
                errors.append(f"host {i}: {r.status_code} {r.text[:200]}")
            elif r.headers.get("X-Mlcanary-Arm") == "challenger":
                last[i] = elapsed

    threads = [threading.Thread(target=probe, args=(i,)) for i in range(len(cluster.routers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    print(f"rollback: last challenger answer per host {[round(t * 1000) for t in last]} ms after the commit")
    assert errors == []
    assert cluster.store.rollouts.get(rollout.id).phase == "rolled_back"
    assert max(last) <= bound, f"a host still routed to the challenger {max(last):.2f} s after the rollback"
