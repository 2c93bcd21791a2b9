"""`mlcanary serve | router | controller | demo`: the long-running processes."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import click

from controller.cli.common import clock_of, long_running, settings_of
from controller.config import Settings


def _serve(ctx: click.Context, role: str, host: str | None, port: int | None, workers: int | None) -> None:
    long_running()
    from controller import server
    from controller.app import create_app, open_store

    settings = settings_of(ctx).replace(
        **{k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    )
    settings.validate()
    # `serve` may create the embedded database; `router` (a data plane of someone's existing system) may not.
    # Either refuses an old schema before forking.
    open_store(settings, create_embedded=role == "serve").db.dispose()
    try:
        server.check_port_free(settings.host, settings.port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from exc
    click.echo(
        f"mlcanary {role} on http://{settings.host}:{settings.port} "
        f"({settings.workers} workers x {settings.threads} threads)",
        err=True,
    )
    # `serve` is the whole product: one controller loop runs beside gunicorn as a child process.
    child = _start_controller_child(settings) if role == "serve" else None
    master = os.getpid()
    try:
        server.run(
            lambda: create_app(settings, role=role),
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            data_dir=settings.data_dir,
            log_level=settings.log_level,
            threads=settings.threads,
            read_timeout_s=settings.read_timeout_s,
            cpu_affinity=settings.cpu_affinity,
            next_request_wait_ms=settings.next_request_wait_ms,
        )
    finally:
        if child is not None and os.getpid() == master:  # gunicorn workers unwind through here as well
            _stop_child(child)


def _start_controller_child(settings: Settings) -> subprocess.Popen[bytes]:
    """Start `python -m controller ... controller` on the same database and data directory.

    It runs at `controller_nice`: on the cores it shares with the router, a look (a burst of CPU,
    tens of ms on a big step) would otherwise take them from the requests in flight (at saturation on
    2 cores, 6-8% of the champion's throughput in bench/saturation.py); niced, it takes what they
    leave, and its looks only last longer. It nices itself once started (``--nice-when-started``), not
    from its first instruction: its start (imports, ~1.7 s of CPU) niced behind a saturated router took
    30-50 s, and no rollout was looked at meanwhile.
    """
    command = [
        sys.executable, "-m", "controller",
        "--database-url", settings.resolved_database_url, "--data-dir", str(settings.data_dir), "controller",
        "--nice-when-started", str(settings.controller_nice),
    ]  # fmt: skip
    return subprocess.Popen(command)


def _stop_child(child: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@click.command()
@click.option(
    "--nice-when-started",
    type=click.IntRange(0, 19),
    default=0,
    hidden=True,  # `serve` starts its controller child with it (controller_nice)
    help="Niceness to add once started, before the first look.",
)
@click.pass_context
def controller(ctx: click.Context, nice_when_started: int) -> None:
    """Run the control loop: judge every active rollout each interval and apply the decisions.

    Several may run against one database: one leads (PostgreSQL advisory lock, or a file lock beside
    the SQLite file), the others stand by and take over within two intervals if it dies.
    """
    long_running()
    import logging
    import signal
    import threading

    from controller.app import open_store
    from controller.loop import control as loop
    from controller.loop import webhooks
    from controller.loop.leader import Tracked, leadership_for

    settings = settings_of(ctx)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    store = open_store(settings)
    leadership = Tracked(leadership_for(store.db.url, keepalive=store.db.keepalive))
    stop = threading.Event()
    # Webhooks follow the event log; only the leader sends, so standbys never duplicate a delivery.
    dispatcher = webhooks.Dispatcher(store, settings, leading=lambda: leadership.held).start()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(
        f"mlcanary controller on {store.db.display_url}, every {settings.controller_interval:g} s", err=True
    )
    if nice_when_started:
        os.nice(nice_when_started)
    try:
        loop.run(store, settings, stop=stop, clock=clock_of(ctx), leadership=leadership)
    finally:
        dispatcher.stop()
        leadership.release()
        store.db.dispose()


_host = click.option("--host", help="Bind address (default 127.0.0.1).")
_port = click.option("--port", type=int, help="Port (default 8080).")
_workers = click.option("--workers", type=int, help="gunicorn workers (default 2).")


@click.command()
@_host
@_port
@_workers
@click.pass_context
def router(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the data plane only (scale-out replicas behind a load balancer)."""
    _serve(ctx, "router", host, port, workers)


@click.command()
@_host
@_port
@_workers
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run everything on one machine: data plane, admin API and dashboard."""
    _serve(ctx, "serve", host, port, workers)


@click.command()
@click.option(
    "--fast", is_flag=True, envvar="MLCANARY_DEMO_FAST", help="A smaller, quicker run (used by the tests)."
)
@click.option("--port", type=int, help="Port for the demo server (default: a free one).")
@click.pass_context
def demo(ctx: click.Context, fast: bool, port: int | None) -> None:
    """Show the whole job on real pipelines: shadow, canary, parity gate, rollback, promotion."""
    long_running()
    from controller.demo import Demo, DemoError

    data_dir = settings_of(ctx).data_dir / "demo"
    try:
        outcomes = Demo(data_dir=data_dir, fast=fast).run(port=port)
    except DemoError as error:
        raise click.ClickException(str(error)) from error
    if not all(o.as_expected for o in outcomes):
        raise click.ClickException("some rollouts did not end as expected; see the table above")
