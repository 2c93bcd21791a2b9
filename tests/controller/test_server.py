"""The gunicorn runner: one listening socket per worker, and a port already in use refused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from controller import server

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_port_something_listens_on_is_refused_and_a_free_one_accepted() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            server.check_port_free("127.0.0.1", port)
    server.check_port_free("127.0.0.1", port)  # closed: free again


@pytest.mark.slow
def test_new_connections_are_spread_over_the_workers_and_sigterm_stops_them(tmp_path: Path) -> None:
    """Each worker listens on its own socket: the kernel, not a race between event loops, picks one."""
    port = _free_port()
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from flask import Flask
        from controller import server

        def factory():
            app = Flask("pids")
            app.get("/pid")(lambda: str(os.getpid()))
            return app

        server.run(factory, host="127.0.0.1", port={port}, workers=2, data_dir=Path({str(tmp_path)!r}),
                   log_level="warning", threads=4)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        pids: list[str] = []
        while len(pids) < 64:
            try:
                with httpx.Client(timeout=5) as client:  # a new connection each time
                    pids.append(client.get(f"http://127.0.0.1:{port}/pid").text)
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.1)
        with pytest.raises(OSError):  # a second server on the port would share it: refused
            server.check_port_free("127.0.0.1", port)
        listening = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)

    counts = sorted(pids.count(pid) for pid in set(pids))
    assert len(listening) == 2  # one listening socket per worker (one shared socket before)
    assert len(counts) == 2 and counts[0] >= 16, counts  # binomial(64, 1/2): fewer than 16, odds ~4e-5
    assert code == 0
