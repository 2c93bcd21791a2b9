"""The app factory: the composition root that joins storage, the data plane and the control plane.

Flask, the router, the admin API and the reports are imported inside the functions that need them, for
a measured start-up reason: `mlcanary controller` and most commands import ``open_store`` from here,
and importing them at the top made ``import controller.app`` take 12.6 s instead of 4.1 s on the
loaded CI host (the leader-failover test's standby then started too late to take over).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller.clock import Clock, system_clock
from controller.config import ConfigError, Settings
from storage import Database, Keepalive, Store
from storage import schema as db_schema

if TYPE_CHECKING:
    from flask import Flask

    from router.settings import RouterSettings

log = logging.getLogger("mlcanary")
PARITY_CHECK = "mlcanary.parity_check"
UPSTREAMS = "mlcanary.upstreams"


class NoDatabase(ConfigError):
    """The configured SQLite file does not exist, and this command may not create one."""


def create_command(settings: Settings) -> str:
    """The command that creates (or migrates) the configured database."""
    if settings.is_embedded_default:
        return f"mlcanary --data-dir {settings.data_dir.resolve()} db upgrade"
    return f"mlcanary --database-url {settings.resolved_database_url} db upgrade"


def database_for(settings: Settings) -> Database:
    """The configured database, its PostgreSQL connections with the configured TCP keepalives."""
    keepalive = Keepalive(
        idle_s=settings.db_keepalive_idle_s,
        interval_s=settings.db_keepalive_interval_s,
        count=settings.db_keepalive_count,
    )
    return Database(settings.resolved_database_url, keepalive=keepalive)


def open_store(settings: Settings, *, create_embedded: bool = True) -> Store:
    """Open the configured database; the embedded default creates a fresh SQLite file itself.

    With ``create_embedded=False`` (every command but ``serve``, ``controller`` and ``db upgrade``), a
    SQLite file that does not exist is refused, naming the command that creates it: a command run from
    another folder never quietly writes to a new database there.
    Any other database must be at the migrations' head, else SchemaOutOfDate names the command to run.
    """
    path = settings.sqlite_path
    if not create_embedded and path is not None and not path.is_file():
        raise NoDatabase(
            f"no database at {path} ({settings.database_source}); run: {create_command(settings)} "
            "-- or run this command where mlcanary.toml pins your database, or give --data-dir"
        )
    db = database_for(settings)
    if create_embedded and settings.is_embedded_default:
        db_schema.ensure_fresh_sqlite(db)
    db_schema.check(db)
    return Store(db)


def router_settings(settings: Settings) -> RouterSettings:
    """Build the data plane's settings from the one Settings: every field both have, and the spool folder."""
    from router.settings import RouterSettings

    shared = {f.name for f in dataclasses.fields(RouterSettings)} & {
        f.name for f in dataclasses.fields(Settings)
    }
    return RouterSettings(spool_dir=settings.spool_dir, **{name: getattr(settings, name) for name in shared})


def parity_check(settings: Settings) -> Callable[..., Any]:
    """Return router.parity.check bound to this configuration's serving settings (for start_rollout)."""
    from router import parity

    return functools.partial(parity.check, settings=router_settings(settings))


def create_app(
    settings: Settings | None = None,
    *,
    role: str = "serve",
    store: Store | None = None,
    clock: Clock = system_clock,
) -> Flask:
    """Build the WSGI app: role "router" is the data plane alone; "serve" adds the admin API and dashboard.

    ``clock``: the time the admin API's actions are stamped with (tests inject their own).
    """
    import router
    from controller.http import api, feedback

    settings = settings or Settings.from_env()
    store = store or open_store(settings)
    app = router.create_app(store, router_settings(settings))
    app.config["MLCANARY_SETTINGS"] = settings
    app.extensions["mlcanary.store"] = store
    app.extensions[api.CLOCK_EXTENSION] = clock
    # The parity gate, injected: the admin API's start_rollout calls it (the controller never imports router).
    app.extensions[PARITY_CHECK] = parity_check(settings)
    # Upstream presets and the registration probe, injected the same way (admin API's register route).
    from router.backends.upstream import UpstreamTools

    app.extensions[UPSTREAMS] = UpstreamTools(timeout_s=settings.upstream_timeout_s)
    if role not in ("serve", "router"):
        raise ValueError(f"unknown role {role!r}")
    app.register_blueprint(feedback.blueprint)  # labels are data plane: both roles
    if role == "serve":
        from controller.http import dashboard
        from storage.series import SeriesCache

        app.register_blueprint(api.blueprint)
        app.register_blueprint(api.dashboard)
        # each rollout's time buckets kept between dashboard polls: a poll aggregates only the new rows
        app.extensions[dashboard.SERIES_CACHE] = SeriesCache()
    app.static_folder = str(api.STATIC_DIR)  # /static/... is the dashboard's assets, never the working dir
    app.after_request(api.secure_headers)
    # what secure_headers adds to a JSON answer, on the scoring routes' fast path too (router.http.FastScoring)
    from router.http import mirror_hook

    mirror_hook(app, api.secure_headers, [("X-Content-Type-Options", "nosniff")])
    return app
