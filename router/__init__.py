"""The data plane: protocols (MLflow, V2), backends, sticky split, shadow scoring and the recorder.

    app = router.create_app(store, RouterSettings())   # a router-only Flask app, DataPlane started

or, inside another app: register `router.http.blueprint`, put a started DataPlane at
`app.extensions["mlcanary.dataplane"]` and call `router.http.install_error_handlers(app)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from router.settings import RouterSettings
    from storage import Store


def create_app(store: Store, settings: RouterSettings | None = None, *, start: bool = True) -> Flask:
    """Build a router-only Flask app; its DataPlane is started unless start=False.

    Under gunicorn build the app in each worker (no --preload) so the threads start after fork, and
    call `app.extensions["mlcanary.dataplane"].close()` from the worker_exit hook.
    """
    from flask import Flask

    from router.dataplane import DataPlane
    from router.http import EXTENSION, FastScoring, blueprint, bound_chunked_body, install_error_handlers
    from router.settings import RouterSettings

    settings = settings or RouterSettings()
    app = Flask("mlcanary.router")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    plane = DataPlane(store, settings)
    app.extensions[EXTENSION] = plane
    app.register_blueprint(blueprint)
    app.before_request(bound_chunked_body)  # every route, feedback and admin API included
    install_error_handlers(app)
    app.wsgi_app = FastScoring(app, plane)  # type: ignore[method-assign]  # the scoring routes without Flask's dispatch
    if start:
        plane.start()
    return app
