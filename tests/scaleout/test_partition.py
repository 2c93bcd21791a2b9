"""A silent partition: the leader's host loses the database without a reset, and the standby still takes over.

Packets dropped on the leader's link, both ways (tests/support/netns.py, ``cut(silent=True)``): no
reset, no refusal. The leader's PostgreSQL session, which holds the controllers' advisory lock, ends
only when the server's TCP keepalives find the peer gone, so the hosts here reach a PostgreSQL of the
module's own (tests/support/pgserver.py) with no forwarder in between: the server's keepalive probes
go to the host itself and are lost with everything else. The controllers run with the product's
default keepalives (storage.Keepalive), so this also proves the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import cluster as scaleout
import pytest
from failover import cut_the_leader
from netns import Hosts, netns_reason
from pgserver import PrivatePostgres, pgserver_reason

from storage import Database, Keepalive
from storage import schema as db_schema

pytestmark = [pytest.mark.scaleout, pytest.mark.slow, pytest.mark.postgres]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[scaleout.Cluster]:
    """Two controllers on two hosts, each host's sessions ending at the server itself (no forwarder)."""
    reason = netns_reason() or pgserver_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true the scale-out tests are required", pytrace=False)
        pytest.skip(
            f"{reason}: the silent-partition test needs root, `ip netns` and PostgreSQL's server programs"
        )
    with (
        Hosts(2, database=("127.0.0.1", 0), forwarder="direct") as hosts,
        PrivatePostgres(
            listen=[host.gateway for host in hosts], clients=[host.address for host in hosts]
        ) as server,
    ):
        url = server.create_database("mlcanary")
        db = Database(url)
        try:
            db_schema.upgrade(db)
        finally:
            db.dispose()
        with scaleout.running(
            url, tmp_path_factory.mktemp("partition"), hosts=hosts, controllers=2, routers=0
        ) as built:
            yield built


def test_the_standby_takes_over_when_the_leaders_host_goes_silent(direct: scaleout.Cluster) -> None:
    dead_after = Keepalive().dead_after_s  # the server ends a silent session after this much silence
    took, by_standby, applied = cut_the_leader(
        direct, "silenced", seed=3, silent=True, takeover_timeout=max(90.0, 3 * dead_after)
    )
    load = os.getloadavg()
    print(
        f"leader's host silenced: standby led {took:.1f} s later (keepalives give up after {dead_after} s); "
        f"it applied {by_standby} of {applied}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
