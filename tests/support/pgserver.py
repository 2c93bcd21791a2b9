"""A PostgreSQL server of a test's own, reached over real TCP from other network namespaces.

    reason = pgserver_reason()                                   # None if one can be started here
    with PrivatePostgres(listen=["10.1.2.1"], clients=["10.1.2.2"]) as server:
        url = server.create_database("mlcanary")                # postgresql://postgres@127.0.0.1:PORT/mlcanary

The shared test server listens on 127.0.0.1 only and admits only 127.0.0.1, so an emulated host
(tests/support/netns.py) reaches it through a forwarder, and TCP ends at the forwarder: PostgreSQL's
keepalives then probe the forwarder, which always answers. A silent partition between a host and
the database is only real when the host's sessions end at the server itself, so this server listens
on the hosts' gateway addresses and admits exactly the hosts' addresses (and 127.0.0.1), trust
authentication, on a free port. Its files live in a temporary folder that ``close()`` (also on
``__exit__``) removes after stopping the server ("immediate" mode: nothing to keep). ``fsync`` is
off: nothing here must survive a crash.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path
from types import TracebackType

import psycopg
from servers import free_port

USER = "postgres"  # initdb refuses to run as root; the server runs as this system user


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def pgserver_reason() -> str | None:
    """None if this process can start a PostgreSQL server of its own, else the reason it cannot."""
    if _bindir() is None:
        return "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
    if os.geteuid() != 0:
        return "starting a PostgreSQL server as another user needs root"
    if shutil.which("runuser") is None:
        return "the `runuser` command (util-linux) is not installed"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"there is no {USER!r} system user to run PostgreSQL"
    return None


class PrivatePostgres:
    """Start a throw-away PostgreSQL listening on ``listen`` (and 127.0.0.1), admitting ``clients``."""

    def __init__(self, *, listen: list[str], clients: list[str], start_timeout: int = 120) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL's server programs are not installed")
        self.bindir = bindir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="mlc-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        account = pwd.getpwnam(USER)
        os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._started = False
        try:
            self._as_user(
                "initdb",
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--no-sync",
                timeout=180,
            )
            hba = ["local all all trust", "host all all 127.0.0.1/32 trust"]
            hba += [f"host all all {address}/32 trust" for address in clients]
            (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
            options = " ".join(
                [
                    f"-c listen_addresses='{','.join(['127.0.0.1', *listen])}'",
                    f"-p {self.port}",
                    f"-k {self.folder}",
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                ]
            )
            self._as_user(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(start_timeout),
                "-o", options, "start",
                timeout=start_timeout + 30,
            )  # fmt: skip
            self._started = True
        except BaseException:
            self.close()
            raise

    def _as_user(self, program: str, *args: str, timeout: float) -> None:
        done = subprocess.run(
            ["runuser", "-u", USER, "--", str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {done.stderr.strip()[-2000:]}\n{log}")

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server, through 127.0.0.1 (a host's: netns.Host.database_url)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create ``name`` and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        if self._started:
            with suppress(Exception):
                self._as_user("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            self._started = False
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():  # pg_ctl could not stop it: kill the postmaster (its backends follow it)
            with suppress(Exception):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
