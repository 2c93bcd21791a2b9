"""Build the real WSGI app (`create_app`) over a test store, with tokens for the admin API.

with adminapp.running(store, tmp_path) as app:
    client = app.test_client()
    headers = adminapp.bearer(store, "operator")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask

from controller.app import create_app
from controller.config import Settings
from storage import Store


def settings_for(store: Store, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings pointing at the store's database and a data dir under tmp_path."""
    return Settings(
        data_dir=tmp_path / "var",
        database_url=store.db.url,
        refresh_interval=0.05,
        **overrides,
    )


@contextmanager
def running(store: Store, tmp_path: Path, *, role: str = "serve", **overrides: Any) -> Iterator[Flask]:
    """Yield create_app(...) for the store; its data plane is closed afterwards."""
    app = create_app(settings_for(store, tmp_path, **overrides), role=role, store=store)
    app.testing = True
    try:
        yield app
    finally:
        plane = app.extensions.get("mlcanary.dataplane")
        if plane is not None:
            plane.close(timeout=5.0)


def bearer(store: Store, role: str, name: str | None = None) -> dict[str, str]:
    """Create a token with the role and return the Authorization header that carries it."""
    token, _ = store.tokens.create(name or f"{role}-token", role)
    return {"Authorization": f"Bearer {token}"}
