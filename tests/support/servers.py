"""Real mlcanary processes on loopback for tests, each in its own process group.

    server = launch("router", database_url)     # `python -m controller router`, 2 gunicorn workers
    server.wait_ready()
    server.base_url, server.workers(), server.rss_mb()
    server.terminate()                          # SIGTERM, wait; the fixture kills the group anyway

    Server("router", url, data_dir, address=host.address, wrap=host.command)   # inside an emulated host
                                                # (tests/support/netns.py), bound to its address

Every process is started with start_new_session=True and its whole group is SIGKILLed at teardown,
so nothing outlives a test, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import mlpipes

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"
FRAME, _ = mlpipes.churn_frame(64, seed=21)


def body(rows: int = 1, offset: int = 0) -> dict[str, Any]:
    """An MLflow dataframe_split body of `rows` churn rows."""
    part = FRAME.iloc[offset % 60 : offset % 60 + rows]
    return {"dataframe_split": json.loads(part.to_json(orient="split", index=False))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**settings: Any) -> dict[str, str]:
    """This environment without MLCANARY_* settings, plus the given ones (MLCANARY_ + upper-case name)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MLCANARY_") or k == "MLCANARY_TEST_PG_URL"
    }
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{SUPPORT}"
    env.update({f"MLCANARY_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Server:
    """One `python -m controller <role>` process (the gunicorn master) and its workers."""

    def __init__(
        self,
        role: str,
        database_url: str,
        data_dir: Path,
        *,
        port: int | None = None,
        address: str = "127.0.0.1",
        wrap: Callable[[list[str]], list[str]] | None = None,
        **settings: Any,
    ) -> None:
        self.role = role
        self.expected_workers = int(settings.get("workers", 2))
        self.port = port or free_port()
        self.address = address
        self.base_url = f"http://{address}:{self.port}"
        self.log = data_dir / f"{role}-{self.port}-{time.monotonic_ns()}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        defaults: dict[str, Any] = {
            "workers": 2,
            "trust_pickle": "true",
            "refresh_interval": 0.1,
            "log_level": "warning",
        }
        env = clean_env(
            **{
                **defaults,
                **settings,
                "database_url": database_url,
                "data_dir": data_dir,
                "port": self.port,
                "host": address,
            }
        )
        argv = [sys.executable, "-m", "controller", role]
        self.process = subprocess.Popen(
            wrap(argv) if wrap is not None else argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until several /readyz in a row answer 200 (every worker loaded its routes)."""
        deadline = time.monotonic() + timeout
        streak = 0
        with httpx.Client(base_url=self.base_url, timeout=2) as client:
            while streak < 8:
                assert self.process.poll() is None, f"{self.role} exited: {self.output()}"
                assert time.monotonic() < deadline, f"{self.role} not ready: {self.output()}"
                try:
                    streak = streak + 1 if client.get("/readyz").status_code == 200 else 0
                except httpx.HTTPError:
                    streak = 0
                if streak == 0:
                    time.sleep(0.1)
        deadline = time.monotonic() + timeout
        while len(self.workers()) < min(2, self.expected_workers) and time.monotonic() < deadline:
            time.sleep(0.05)

    def children(self, pid: int | None = None) -> list[int]:
        pid = pid or self.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def workers(self) -> list[int]:
        """The gunicorn workers (children of the master running the app, not the controller child)."""
        found = []
        for child in self.children():
            with suppress(OSError):
                if _is_controller_child(child):
                    continue  # `serve` runs its control loop as a child too
                found.append(child)
        return found

    def controller_child(self) -> int | None:
        for child in self.children():
            with suppress(OSError):
                if _is_controller_child(child):
                    return child
        return None

    def rss_mb(self, pids: list[int] | None = None) -> float:
        """Resident memory of the workers (or of the given processes), in MiB."""
        total = 0.0
        for pid in pids if pids is not None else self.workers():
            with suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024.0
        return total

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample over labels from /metrics (multiprocess: every worker)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM the master (graceful: drain, flush every worker) and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.role} did not stop within {timeout} s: {self.output()}") from None

    def kill(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float, message: str = "condition") -> float:
    """Poll until predicate() is truthy; return the seconds it took; AssertionError after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    if predicate():
        return time.monotonic() - start
    raise AssertionError(f"{message} not met within {timeout} s")


def _is_controller_child(pid: int) -> bool:
    """`serve`'s controller child: python -m controller --database-url U --data-dir D controller [...]."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[7:8] == [b"controller"]
