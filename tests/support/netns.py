"""Emulated hosts for scale-out tests: one Linux network namespace each, joined to the root namespace by a veth pair.

    reason = netns_reason()                      # None if namespaces can be made here, else why not
    with Hosts(3, database=("127.0.0.1", 5432)) as hosts:
        host = hosts[0]
        host.address                             # the host's own address (10.x.y.z), reachable from here
        host.database_url(postgres_url)          # the URL that reaches PostgreSQL from inside the host
        host.command([...])                      # ["ip", "netns", "exec", NAME, ...]: run a process inside it
        host.cut() / host.restore()              # drop / restore the host's link to the database
        host.cut(silent=True)                    # every packet on the host's link dropped: no reset, no refusal

Each host is a namespace ``mlc-<pid>-h<i>`` (unique per run: the creating process's id) with its own
loopback and one veth pair on a private /30 (10.x.y.4i+1 on the root side, .4i+2 inside). Nothing
routes further: the traffic stays on this machine. PostgreSQL listens on 127.0.0.1 in the root
namespace, which a namespace cannot reach, so each host gets a forwarder listening on its root-side
veth address: a tests/support/tcpproxy.TcpProxy (cut = every forwarded connection closed and new ones
refused, as a failed link between that host and the database; other hosts keep theirs), or, for
benchmarks, a ``socat`` process (no Python in the data path; cut = the process group killed), or
``direct``: no forwarder, the host connects to a server listening on its gateway address itself
(tests/support/pgserver.py), so its TCP sessions end at that server.

A forwarder ends TCP: the server's keepalives probe the forwarder, which always answers. A *silent*
partition is therefore cut on the link itself: ``cut(silent=True)`` gives each end of the host's
veth a permanent neighbour entry for the other end's address with a hardware address nobody has, so
both kernels still send (successfully, as into a real network) and the receiving end drops every
frame as not addressed to it: nothing arrives, nothing is reset, refused or reported. ``restore()``
deletes the entries (ARP resolves again). Dropping on a sender's own queue instead (``tc ... pfifo
limit 0``) is not the same: the kernel counts a keepalive probe its own queue dropped as local
congestion, not as an unanswered probe, so the server kept such a session for a minute instead of
its keepalive time. Only with a ``direct`` link does the server see the silence.

``cpus`` puts each host's processes in a cgroup (v1 ``cpu``) limited to that many cores, as a
separate machine of that size would be; ``Hosts.close()`` (also on ``__exit__``) kills every
process left inside the namespaces, deletes them, their veths and their cgroups. Namespaces left by
a run that died (its pid is gone) are deleted when the next run starts.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url
from tcpproxy import TcpProxy

PREFIX = "mlc-"
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
_NAME = re.compile(rf"^{PREFIX}(\d+)-h\d+$")
# A silent cut points each end of a host's link at this hardware address (locally administered, no
# interface has it): frames still leave, the other end drops them as not its own.
VOID_MAC = "02:00:00:00:de:ad"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=check)


def netns_reason() -> str | None:
    """None if this process can create network namespaces and veth pairs, else the reason it cannot."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"`ip netns add` fails here: {made.stderr.strip()}"
        veth = f"mlc{os.getpid() % 10**7}p"
        made = _ip("link", "add", veth, "type", "veth", "peer", "name", veth + "x", check=False)
        if made.returncode != 0:
            return f"cannot create a veth pair: {made.stderr.strip()}"
        _ip("link", "del", veth, check=False)
        return None
    finally:
        _ip("netns", "del", name, check=False)


def sweep_stale() -> None:
    """Delete namespaces (and their cgroups) left by runs whose process is gone."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        match = _NAME.match(name) or re.match(rf"^{PREFIX}(\d+)-probe$", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            _remove_cgroup(CGROUP_CPU / name)


def _kill_inside(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            path.rmdir()
            return
        except OSError:  # busy until its last process is reaped
            time.sleep(0.05)


def _subnet() -> tuple[int, int]:
    """A 10.a.b.0/24 no interface of this machine uses."""
    used = _ip("-4", "-o", "addr", "show", check=False).stdout
    while True:
        a, b = random.randint(200, 254), random.randint(0, 255)
        if f" 10.{a}.{b}." not in used:
            return a, b


class SocatForwarder:
    """Forward ``listen`` to ``target`` with a socat process (one fork per connection); cut = killed."""

    def __init__(self, target: tuple[str, int], *, listen_host: str) -> None:
        self.target = target
        self.listen_host = listen_host
        self.port = _free_port(listen_host)
        self.process: subprocess.Popen[bytes] | None = None
        self.restore()

    def restore(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind={self.listen_host},fork,reuseaddr,backlog=256",
                f"TCP:{self.target[0]}:{self.target[1]},nodelay",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not _listening(self.listen_host, self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"socat did not listen on {self.listen_host}:{self.port}")
            time.sleep(0.02)

    def cut(self) -> None:
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.cut()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class Host:
    """One emulated host: a network namespace, its veth pair and its forwarder to the database."""

    def __init__(
        self,
        index: int,
        subnet: tuple[int, int],
        *,
        database: tuple[str, int],
        forwarder: str = "python",
        cpus: float | None = None,
    ) -> None:
        self.index = index
        self.name = f"{PREFIX}{os.getpid()}-h{index}"
        a, b = subnet
        self.gateway = f"10.{a}.{b}.{4 * index + 1}"  # the root namespace's end
        self.address = f"10.{a}.{b}.{4 * index + 2}"  # the host's own address
        tag = f"mlc{os.getpid() % 10**7}{index}"
        self.veth_root, self.veth_host = f"{tag}r", f"{tag}h"
        self.cgroup: Path | None = None
        _ip("netns", "add", self.name)
        _ip("link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_host)
        _ip("link", "set", self.veth_host, "netns", self.name)
        _ip("addr", "add", f"{self.gateway}/30", "dev", self.veth_root)
        _ip("link", "set", self.veth_root, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.veth_host)
        _ip("-n", self.name, "link", "set", self.veth_host, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        if cpus is not None:
            self.cgroup = CGROUP_CPU / self.name
            self.cgroup.mkdir()
            period = int((self.cgroup / "cpu.cfs_period_us").read_text())
            (self.cgroup / "cpu.cfs_quota_us").write_text(str(int(period * cpus)))
        self.silenced = False
        self.forwarder: TcpProxy | SocatForwarder | None = (
            SocatForwarder(database, listen_host=self.gateway)
            if forwarder == "socat"
            else None
            if forwarder == "direct"
            else TcpProxy(database, listen_host=self.gateway)
        )

    def database_url(self, url: str) -> str:
        """``url`` with its host (and port) replaced by this host's forwarder's, or its gateway's (``direct``)."""
        parsed = make_url(url).set(host=self.gateway)
        if self.forwarder is not None:
            parsed = parsed.set(port=self.forwarder.port)
        return parsed.render_as_string(hide_password=False)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host (and its cgroup, if it has one)."""
        inside = ["ip", "netns", "exec", self.name, *argv]
        if self.cgroup is None:
            return inside
        # the shell puts itself in the cgroup, then becomes `ip netns exec ...`: same pid, limited from the start
        return ["sh", "-c", f'echo $$ > "{self.cgroup}/tasks" && exec "$@"', "sh", *inside]

    def cut(self, *, silent: bool = False) -> None:
        """Cut this host off the database: forwarded connections closed and new ones refused, or silently.

        ``silent``: every packet on the host's link lost, both ways, nothing reset or refused.
        """
        if silent:
            self.silenced = True  # first: restore() must undo a half-made cut
            _ip(
                "neigh",
                "replace",
                self.address,
                "lladdr",
                VOID_MAC,
                "dev",
                self.veth_root,
                "nud",
                "permanent",
            )
            _ip(
                "-n",
                self.name,
                "neigh",
                "replace",
                self.gateway,
                "lladdr",
                VOID_MAC,
                "dev",
                self.veth_host,
                "nud",
                "permanent",
            )
        elif self.forwarder is None:
            raise ValueError("a direct link can only be cut silently")
        else:
            self.forwarder.cut()

    def restore(self) -> None:
        if self.silenced:
            _ip("neigh", "del", self.address, "dev", self.veth_root, check=False)
            _ip("-n", self.name, "neigh", "del", self.gateway, "dev", self.veth_host, check=False)
            self.silenced = False
        if self.forwarder is not None:
            self.forwarder.restore()

    def close(self) -> None:
        with suppress(Exception):
            self.restore()
        with suppress(Exception):
            if self.forwarder is not None:
                self.forwarder.close()
        _kill_inside(self.name)
        if self.cgroup is not None:
            for pid in (self.cgroup / "tasks").read_text().split() if self.cgroup.exists() else []:
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        _ip("link", "del", self.veth_root, check=False)
        _ip("netns", "del", self.name, check=False)
        if self.cgroup is not None:
            _remove_cgroup(self.cgroup)


class Hosts:
    """``n`` emulated hosts on one fresh private subnet; a context manager that always cleans up."""

    def __init__(
        self, n: int, *, database: tuple[str, int], forwarder: str = "python", cpus: float | None = None
    ) -> None:
        if not 1 <= n <= 60:
            raise ValueError("between 1 and 60 hosts")
        sweep_stale()
        subnet = _subnet()
        self.hosts: list[Host] = []
        try:
            for i in range(n):
                self.hosts.append(Host(i, subnet, database=database, forwarder=forwarder, cpus=cpus))
        except BaseException:
            self.close()
            raise

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        self.hosts = []

    def __enter__(self) -> Hosts:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
