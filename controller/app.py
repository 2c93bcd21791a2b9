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
from controller.config import Settings
from storage import Database, Store
from storage import schema as db_schema

if TYPE_CHECKING:
    from flask import Flask

    from router.settings import RouterSettings

log = logging.getLogger("mlcanary")
PARITY_CHECK = "mlcanary.parity_check"
UPSTREAMS = "mlcanary.upstreams"


def open_store(settings: Settings, *, create_embedded: bool = True) -> Store:
    """Open the configured database; the embedded default creates a fresh SQLite file itself.

    Any other database must be at the migrations' head, else SchemaOutOfDate names the command to run.
    """
    db = Database(settings.resolved_database_url)
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
        app.register_blueprint(api.blueprint)
        app.register_blueprint(api.dashboard)
    app.static_folder = str(api.STATIC_DIR)  # /static/... is the dashboard's assets, never the working dir
    app.after_request(api.secure_headers)
    return app
