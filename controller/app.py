"""The app factory: the composition root that joins storage, the data plane and the control plane."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask

from controller.config import Settings
from storage import Database, Store
from storage import schema as db_schema

if TYPE_CHECKING:
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
    from router.settings import RouterSettings

    return RouterSettings(
        refresh_interval=settings.refresh_interval,
        shadow_queue_size=settings.shadow_queue_size,
        shadow_timeout_s=settings.shadow_timeout_s,
        spool_dir=settings.spool_dir,
        max_body_bytes=settings.max_body_bytes,
        trust_pickle=settings.trust_pickle,
        upstream_timeout_s=settings.upstream_timeout_s,
    )


def parity_check(settings: Settings) -> Callable[..., Any]:
    """Return router.parity.check bound to this configuration's serving settings (for start_rollout)."""
    from router import parity

    return functools.partial(parity.check, settings=router_settings(settings))


def create_app(settings: Settings | None = None, *, role: str = "serve", store: Store | None = None) -> Flask:
    """Build the WSGI app: role "router" is the data plane alone; "serve" adds the admin API and dashboard."""
    import router

    settings = settings or Settings.from_env()
    store = store or open_store(settings)
    app = router.create_app(store, router_settings(settings))
    app.config["MLCANARY_SETTINGS"] = settings
    app.extensions["mlcanary.store"] = store
    # The parity gate, injected: the admin API's start_rollout calls it (the controller never imports router).
    app.extensions[PARITY_CHECK] = parity_check(settings)
    # Upstream presets and the registration probe, injected the same way (admin API's register route).
    from router.backends.upstream import UpstreamTools

    app.extensions[UPSTREAMS] = UpstreamTools(timeout_s=settings.upstream_timeout_s)
    if role not in ("serve", "router"):
        raise ValueError(f"unknown role {role!r}")
    from controller.http import api, feedback

    app.register_blueprint(feedback.blueprint)  # labels are data plane: both roles
    if role == "serve":
        app.register_blueprint(api.blueprint)
        app.register_blueprint(api.dashboard)
    app.static_folder = str(api.STATIC_DIR)  # /static/... is the dashboard's assets, never the working dir
    app.after_request(api.secure_headers)
    return app
