"""A scale-out cluster for tests and benchmarks: routers and controllers on emulated hosts, one PostgreSQL.

    with running(postgres_url, tmp, hosts=3, controllers=2) as cluster:
        cluster.routers[i].base_url        # router i, on host i's own address (tests/support/netns.py)
        cluster.hosts[i].cut()             # host i loses its link to the database (restore() gives it back)
        cluster.leader()                   # the controller that leads (controllers run on hosts 0, 1, ...)
        cluster.store                      # PostgreSQL read directly, around the forwarders

Every process (tests/support/servers.Server) is SIGKILLed, and every namespace, veth, forwarder and
cgroup removed, when the block ends, whatever happened in it. Given ``hosts`` already made (a
netns.Hosts: e.g. ``direct`` links to a server of the test's own), it uses them and leaves them to
their owner; ``routers=0`` starts controllers only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns import Hosts
from servers import Server, wait_for
from sqlalchemy.engine import make_url

from storage import Database, Store


@dataclass
class Cluster:
    """Hosts, a router on each, controllers on the first hosts; ``store`` reads PostgreSQL directly."""

    hosts: Hosts
    routers: list[Server]
    controllers: list[Server]
    store: Store
    tmp: Path
    router_settings: dict[str, Any]

    def leader(self, timeout: float = 60.0) -> Server:
        """The one controller whose log says it leads (waits until exactly one does)."""
        found: list[Server] = []

        def one_leads() -> bool:
            found[:] = [c for c in self.controllers if leads(c)]
            return len(found) == 1

        wait_for(one_leads, timeout, "one controller leads")
        return found[0]


def leads(controller: Server) -> bool:
    """Whether the controller's last word on leadership (in its log) is that it leads."""
    lines = [line for line in whole_log(controller).splitlines() if "controller is" in line]
    return bool(lines) and "is the leader" in lines[-1]


def whole_log(server: Server) -> str:
    """A process's whole log (Server.output() keeps only its tail, which retries can fill)."""
    return server.log.read_text(errors="replace")


@contextmanager
def running(
    postgres_url: str,
    tmp: Path,
    *,
    hosts: int | Hosts = 3,
    controllers: int = 2,
    routers: int | None = None,
    forwarder: str = "python",
    cpus: float | None = None,
    controller_interval: float = 0.2,
    ready_timeout: float = 90.0,
    **router_settings: Any,
) -> Iterator[Cluster]:
    """Start a router on each host (the first ``routers``) and ``controllers`` controllers; stop everything after."""
    url = make_url(postgres_url)
    store = Store(Database(postgres_url))
    servers: list[Server] = []
    with (
        nullcontext(hosts)
        if isinstance(hosts, Hosts)
        else Hosts(
            hosts, database=(url.host or "127.0.0.1", url.port or 5432), forwarder=forwarder, cpus=cpus
        )
    ) as made:
        try:
            made_routers = [
                Server(
                    "router",
                    host.database_url(postgres_url),
                    tmp / f"host{host.index}",
                    address=host.address,
                    wrap=host.command,
                    **router_settings,
                )
                for host in list(made)[:routers]
            ]
            servers += made_routers
            started: list[Server] = []
            for host in list(made)[:controllers]:  # one at a time: the first one leads
                controller = Server(
                    "controller",
                    host.database_url(postgres_url),
                    tmp / f"host{host.index}",
                    address=host.address,
                    wrap=host.command,
                    controller_interval=controller_interval,
                )
                servers.append(controller)
                started.append(controller)
                # the first one leads before the next one starts; a standby says nothing until it leads
                word = "is the leader" if len(started) == 1 else "mlcanary controller on"
                wait_for(lambda c=controller, w=word: w in whole_log(c), ready_timeout, f"controller: {word}")
            for router in made_routers:
                router.wait_ready(timeout=ready_timeout)
            yield Cluster(made, made_routers, started, store, tmp, router_settings)
        finally:
            for server in servers:
                server.kill()
            store.db.dispose()
