"""Three router hosts and two controllers, each host in its own network namespace, against one PostgreSQL.

The cluster (tests/support/cluster.py) is built once per module (routers take seconds to start) and
torn down at the end, whatever happened: every process group is SIGKILLed, the namespaces, veths and
forwarders are removed (tests/support/netns.py). Each test uses its own deployment, so the tests do
not depend on their order. Without root or `ip netns` the tests are skipped with the reason; under
CI=true they fail instead (the rule tests/conftest.py applies to PostgreSQL).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import cluster as scaleout
import pytest
from netns import netns_reason

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REFRESH_INTERVAL = 0.25  # the routers' poll of the routing table (the product's default)
CONTROLLER_INTERVAL = 0.2


@pytest.fixture(scope="module")
def cluster(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[scaleout.Cluster]:
    reason = netns_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true the scale-out tests are required", pytrace=False)
        pytest.skip(f"{reason}: the scale-out tests need root and `ip netns` (iproute2)")
    from dbtools import truncate_postgres

    truncate_postgres(postgres_url)
    with scaleout.running(
        postgres_url,
        tmp_path_factory.mktemp("scaleout"),
        hosts=3,
        controllers=2,
        controller_interval=CONTROLLER_INTERVAL,
        refresh_interval=REFRESH_INTERVAL,
    ) as built:
        yield built
