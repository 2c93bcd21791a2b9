"""Scale-out across hosts: throughput with 1, 2, 3 router hosts on one PostgreSQL, rollback propagation, storage's cost.

    .venv/bin/python bench/scaleout.py [--hosts 1 2 3] [--host-cpus 0.5] [--rows 1 32] [--seconds 10] \
        [--clients 4] [--rollbacks 10] [--pg postgresql://postgres@127.0.0.1:5432/test] [--out bench/results/scaleout.md]

Needs root and `ip netns` (iproute2) and `socat`. Three hosts, each a network namespace with a veth
to the root namespace (tests/support/netns.py), each given --host-cpus cores (a cgroup CPU quota, as a
separate machine of that size would have: on one 2-core machine, hosts without a quota would all share
the same two cores and adding one could not add capacity). Each host runs `mlcanary router`
(2 gunicorn workers); hosts 0 and 1 also run `mlcanary controller` (one leads). They reach the one
PostgreSQL (127.0.0.1, root namespace, no quota) through a socat forwarder each. A fresh database is
created and dropped.

1. Throughput: deployment `churn` in shadow at 100% (every request is scored by both arms and stored
   as pairs, one per row). For each host count and rows per request, one client process per host
   (--clients threads) sends for --seconds; requests/s = answered / window; pairs/s = stored rows / (start -> the
   moment storage held every answered row), so a storage path that lags shows. The PostgreSQL
   backends' CPU (/proc of the backends of this database) is read around each run: pairs per
   PostgreSQL CPU-second is storage's cost, whatever the router count.
2. Storage alone: Store.pairs.insert_many in batches of 1,000 (the recorder's path), from this
   process, rows/s and rows per PostgreSQL CPU-second: the ceiling one PostgreSQL core gives.
3. Rollback propagation to every host: a canary at 50% on deployment `rb`, rolled back
   (controller.loop.actions.act) --rollbacks times; from the commit, 4 clients per host probe with
   fresh connections (bench/rollback_propagation.py's probe); the figure is the last challenger answer
   from any host.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "bench")]

import cluster as scaleout  # noqa: E402
import mlpipes  # noqa: E402
import psycopg  # noqa: E402
from loadgen import Load  # noqa: E402
from netns import netns_reason  # noqa: E402
from rollback_propagation import CLIENTS as CLIENTS_PER_HOST  # noqa: E402
from rollback_propagation import _challenger_keys, _probe, _row  # noqa: E402
from servers import body, wait_for  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from storage_bench import records  # noqa: E402

from controller.loop import actions  # noqa: E402
from storage import Database, Store  # noqa: E402
from storage import schema as db_schema  # noqa: E402

HOLD = {"min_duration_s": 3600.0, "max_duration_s": 7200.0}
TICK = os.sysconf("SC_CLK_TCK")


def _client(url: str, rows: int, clients: int, seconds: float, prefix: str, out: Any) -> None:
    """One client process (no GIL shared with the others): send for ``seconds``, report the answered ids."""
    report = (
        Load(
            url,
            body=lambda n: body(rows, n % (60 - rows + 1)),
            threads=clients,
            count=10**7,
            duration=seconds,
            prefix=prefix,
        )
        .start()
        .join()
    )
    out.put((report.answered, len(report.failed), report.percentiles()))


def _backend_cpu(admin: psycopg.Connection, database: str) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend serving ``database``."""
    pids = [r[0] for r in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]
    used: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return used


def _cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[p] - before.get(p, 0.0) for p in after)


def _stored(store: Store, deployment_id: int, prefix: str) -> int:
    with store.db.engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM paired_outputs WHERE deployment_id = %(d)s AND request_id LIKE %(p)s",
                {"d": deployment_id, "p": f"{prefix}-%"},
            ).scalar_one()
        )


def throughput(
    cl: scaleout.Cluster, store: Store, deployment_id: int, admin: psycopg.Connection, database: str, *,
    hosts: int, rows: int, clients: int, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    prefix = f"h{hosts}r{rows}-{uuid.uuid4().hex[:6]}"
    queue: Any = multiprocessing.get_context("fork").Queue()
    cpu_before = _backend_cpu(admin, database)
    started = time.monotonic()
    procs = [
        multiprocessing.get_context("fork").Process(
            target=_client, args=(cl.routers[i].base_url, rows, clients, seconds, f"{prefix}-{i}", queue)
        )
        for i in range(hosts)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    window = time.monotonic() - started
    answered = sum(len(r[0]) for r in results)
    failed = sum(r[1] for r in results)
    expected = answered * rows
    wait_for(lambda: _stored(store, deployment_id, prefix) >= expected, 120, f"{expected} pairs stored")
    all_stored = time.monotonic() - started
    pg_cpu = _cpu_spent(cpu_before, _backend_cpu(admin, database))
    stored = _stored(store, deployment_id, prefix)
    p99 = max(r[2]["p99"] for r in results)
    return {
        "hosts": hosts, "rows": rows, "answered": answered, "failed": failed, "stored": stored,
        "req_s": answered / window, "pairs_s": stored / all_stored, "p99": p99,
        "pg_cpu": pg_cpu, "pairs_per_pg_cpu_s": stored / pg_cpu if pg_cpu else float("nan"),
        "load": os.getloadavg()[0],
    }  # fmt: skip


def storage_alone(store: Store, admin: psycopg.Connection, database: str, *, rows: int) -> dict[str, float]:
    deployment = store.deployments.get("churn")
    data = records(rows, deployment.id, f"direct-{uuid.uuid4().hex[:6]}")
    store.pairs.insert_many(data[:1000])  # the connection is open before the clock starts
    before = _backend_cpu(admin, database)
    client0 = time.process_time()
    started = time.perf_counter()
    for i in range(1000, rows, 1000):
        store.pairs.insert_many(data[i : i + 1000])
    seconds = time.perf_counter() - started
    pg_cpu = _cpu_spent(before, _backend_cpu(admin, database))
    n = rows - 1000
    return {
        "rows": n, "rows_s": n / seconds, "pg_cpu": pg_cpu, "rows_per_pg_cpu_s": n / pg_cpu,
        "client_cpu": time.process_time() - client0,
    }  # fmt: skip


def propagation(
    cl: scaleout.Cluster,
    store: Store,
    champion: Any,
    challenger: Any,
    *,
    repeats: int,
    refresh: float,
    spacing: list[float],
) -> list[float]:
    """Roll back ``repeats`` canaries; return the seconds to the last challenger answer from any host.

    ``spacing`` receives, per host and rollback, the mean time between two probe answers: the
    resolution of the figure (an answer that left the host before the change but arrived after the
    commit counts as late, so the figure is an upper bound at that resolution).
    """
    deployment = mlpipes.deploy(store, "rb", champion)
    times: list[float] = []
    for repeat in range(repeats):
        last, probes = _rollback_once(cl, store, deployment.id, challenger.id, refresh=refresh)
        times.append(max(last))
        spacing.extend(probes)
        print(f"rollback {repeat + 1}/{repeats}: last challenger answer {max(last) * 1000:.0f} ms after the commit "
              f"(per host {[round(x * 1000) for x in last]})", flush=True)  # fmt: skip
    return times


def _rollback_once(
    cl: scaleout.Cluster, store: Store, deployment_id: int, challenger_id: int, *, refresh: float
) -> tuple[list[float], list[float]]:
    """Start a canary at 50%, wait until every host routes it, roll it back; per host, the last challenger answer."""
    row = {"dataframe_records": [_row()]}
    rollout = store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="canary",
        policy={"mode": "canary", "canary": {"steps": [50.0, 100.0], **HOLD}}, created_by="bench",
        phase="progressing", canary_weight=50.0, shadow_rate=0.0,
    )  # fmt: skip
    keys = _challenger_keys(rollout.id, store.routing.load_table()["rb"].split_salt)
    urls = [f"{r.base_url}/v1/models/rb/invocations" for r in cl.routers]
    for url in urls:  # every host routes the canary: several challenger answers in a row on fresh connections
        wait_for(lambda u=url: all(_arm(u, k, row) == "challenger" for k in keys[:8]), 60, "canary routed")
    actions.act(store, "rb", "rollback", actor="bench", reason="propagation across hosts")
    committed = time.monotonic()
    last = [0.0] * len(urls)
    spacing = [0.0] * len(urls)

    def probe(i: int, url: str) -> None:
        last[i], sent = _probe(url, keys, row, start=committed, quiet_for=3 * refresh, limit=10.0)
        spacing[i] = (time.monotonic() - committed) / max(sent, 1) * CLIENTS_PER_HOST

    threads = [threading.Thread(target=probe, args=(i, u)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return last, spacing


def _arm(url: str, key: str, row: dict[str, Any]) -> str:
    import httpx

    try:
        r = httpx.post(url, json=row, headers={"X-Routing-Key": key, "Connection": "close"}, timeout=10)
    except httpx.HTTPError:
        return "?"
    return r.headers.get("X-Mlcanary-Arm", "?") if r.status_code == 200 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--host-cpus", type=float, default=0.5)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="client threads per host")
    parser.add_argument("--rollbacks", type=int, default=10)
    parser.add_argument("--storage-rows", type=int, default=50_000)
    parser.add_argument("--refresh", type=float, default=0.25)
    parser.add_argument(
        "--pg", default=os.environ.get("MLCANARY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaleout.md")
    args = parser.parse_args()
    if not all(1 <= r <= 60 for r in args.rows):
        parser.error("--rows: between 1 and 60 rows per request (the bench's frame has 64)")
    reason = netns_reason()
    if reason:
        raise SystemExit(f"bench/scaleout.py: {reason}")

    name = f"mlcanary_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(args.pg, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    tmp = Path(tempfile.mkdtemp(prefix="mlcanary-scaleout-"))
    runs: list[dict[str, Any]] = []
    try:
        db = Database(url)
        db_schema.upgrade(db)
        store = Store(db)
        champion = mlpipes.register(store, tmp, version="1")
        challenger = mlpipes.register(store, tmp, version="2", seed=3)
        deployment = mlpipes.deploy(store, "churn", champion)
        store.rollouts.create(
            deployment_id=deployment.id, challenger_id=challenger.id, mode="shadow",
            policy={"mode": "shadow", "shadow": HOLD}, created_by="bench", phase="shadowing", shadow_rate=1.0,
        )  # fmt: skip
        with scaleout.running(
            url, tmp, hosts=max(args.hosts), controllers=2, forwarder="socat", cpus=args.host_cpus,
            refresh_interval=args.refresh, log_level="warning",
        ) as cl:  # fmt: skip
            for router in cl.routers:  # warm: every host routes churn before the clock starts
                Load(
                    router.base_url, body=lambda n: body(1, n), threads=2, count=200, prefix="warm"
                ).start().join()
            for rows in args.rows:
                for hosts in args.hosts:
                    run = throughput(
                        cl, store, deployment.id, admin, name, hosts=hosts, rows=rows, clients=args.clients,
                        seconds=args.seconds,
                    )  # fmt: skip
                    runs.append(run)
                    print(run, flush=True)
            spacing: list[float] = []
            times = propagation(
                cl, store, champion, challenger, repeats=args.rollbacks, refresh=args.refresh, spacing=spacing
            )
            direct = storage_alone(store, admin, name, rows=args.storage_rows)
            print(direct, flush=True)
        store.db.dispose()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    load = os.getloadavg()
    lines = [
        "## Scale-out across hosts (issue 18)",
        "",
        f"Command: `.venv/bin/python bench/scaleout.py --hosts {' '.join(map(str, args.hosts))} --host-cpus "
        f"{args.host_cpus} --rows {' '.join(map(str, args.rows))} --seconds {args.seconds:g} --clients {args.clients} "
        f"--rollbacks {args.rollbacks} --refresh {args.refresh}`",
        "",
        f"Each host: a network namespace, {args.host_cpus} cores (cgroup quota), `mlcanary router` with 2 workers; "
        f"controllers on hosts 0 and 1; one PostgreSQL (no quota) through a socat forwarder per host; shadow at 100%. "
        f"{os.cpu_count()} cores in all, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end.",
        "",
        "| rows/request | hosts | requests/s | pairs/s | answered | stored | failed | p99 ms | PG CPU s | pairs per PG CPU-s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['rows']} | {r['hosts']} | {r['req_s']:.0f} | {r['pairs_s']:.0f} | {r['answered']} | {r['stored']} | "
            f"{r['failed']} | {r['p99']:.0f} | {r['pg_cpu']:.2f} | {r['pairs_per_pg_cpu_s']:,.0f} | {r['load']:.1f} |"
        )
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered) + 0.999) - 1)]
    lines += [
        "",
        f"Storage alone (`Store.pairs.insert_many`, batches of 1,000, one client): {direct['rows_s']:,.0f} rows/s, "
        f"{direct['rows_per_pg_cpu_s']:,.0f} rows per PostgreSQL CPU-second ({direct['pg_cpu']:.2f} s of backend CPU "
        f"for {direct['rows']:,} rows; the client spent {direct['client_cpu']:.2f} s).",
        "",
        f"Rollback to every host ({len(cl.routers)} hosts, refresh {args.refresh} s, {len(times)} rollbacks): median "
        f"{statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
        f"from the commit to the last challenger answer from any host; 0 means none came after the commit "
        f"({sum(t == 0 for t in times)} of {len(times)}). Resolution: each of the {CLIENTS_PER_HOST} probe clients per "
        f"host got an answer every {statistics.median(spacing) * 1000:.0f} ms (median over hosts and rollbacks).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
