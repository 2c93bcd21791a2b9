"""A PostgreSQL outage while a router serves under load: answers go on, pairs are spooled and replayed once.

The router (`mlcanary router`, 2 gunicorn workers) reaches PostgreSQL through a loopback TCP proxy the
test controls; cutting the proxy closes every connection and refuses new ones, as a failed database
or network would. The test reads storage directly, around the proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mlpipes
import pytest
from loadgen import Load
from servers import Server, body, wait_for
from sqlalchemy.engine import make_url
from tcpproxy import TcpProxy

from storage import Database, Store

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

OUTAGE_S = 3.0


def test_a_database_outage_under_load_loses_no_pair_and_duplicates_none(
    postgres_url: str, tmp_path: Path, launch: Callable[..., Server]
) -> None:
    from dbtools import truncate_postgres

    truncate_postgres(postgres_url)
    store = Store(Database(postgres_url))
    champion = mlpipes.register(store, tmp_path, version="1")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=4)
    deployment = mlpipes.deploy(store, "churn", champion)
    mlpipes.start_rollout(store, deployment, challenger, mode="shadow", shadow_rate=1.0)
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        server = launch("router", through_proxy)
        server.wait_ready()
        load = Load(
            server.base_url, body=lambda n: body(1, n), threads=4, count=50_000, duration=60, prefix="outage"
        ).start()
        load.wait_sent(200)
        cut_at = time.time()
        proxy.cut()
        time.sleep(OUTAGE_S)
        proxy.restore()
        restored_at = time.time()
        load.wait_sent(load.sent + 200)
        report = load.stop()
        answered = report.answered
        during = [r for r in report.results if cut_at <= r.sent_at < restored_at]
        assert report.failed == [], f"predictions stopped during the outage: {report.statuses()}"
        assert len(during) >= 20, "the outage happened under load"
        wait_for(lambda: store.pairs.count() >= len(answered), 30, "every spooled pair replayed")
        spooled = server.metric("mlcanary_records_spooled_total")
        assert server.terminate() == 0, server.output()
    finally:
        proxy.close()
    stored = store.pairs.existing_request_ids(answered)
    assert stored == set(answered)
    assert store.pairs.count() == len(answered), "stored rows == requests answered: no duplicates"
    assert spooled >= len(during) * 0.5, "the outage was absorbed by the spool"
    assert not list((tmp_path / "var" / "spool").glob("*.jsonl")), "every spool file replayed and removed"
    print(
        f"outage {OUTAGE_S:.0f} s under load: {len(answered)} answered ({len(during)} during the outage), "
        f"{spooled:.0f} rows spooled and replayed, {store.pairs.count()} stored, p99 "
        f"{report.percentiles()['p99']:.1f} ms overall, {report.percentiles(since=cut_at, until=restored_at)['p99']:.1f}"
        " ms during the outage"
    )
    store.db.dispose()
