"""Backends: where a pipeline version's predictions come from. One protocol, one module per kind.

    Backend (Protocol)
    ├── inprocess.InProcessBackend   a registered scikit-learn artifact, loaded and hash-checked
    ├── upstream.UpstreamBackend     a remote model server speaking V2 or MLflow, over pooled HTTP
    │                                (encodings.py: its request encodings and output reading)
    └── MissingBackend               a version that could not be loaded; every call says why

Every backend answers `predict(frame)` for a DataFrame in the registered column order with
Predictions of exactly one entry per row, or raises a router.errors.BackendError. An upstream also
answers `predict_columns(columns)` for a request's converted columns (it sends them as JSON, so no
DataFrame is built); callers on the request path go through `predict_batch` / `predict_parts`,
which use it when the backend has it.
"""

from __future__ import annotations

from router.backends.base import (
    Backend,
    MissingBackend,
    Predictions,
    check_length,
    plain,
    predict_batch,
    predict_parts,
)
from router.backends.inprocess import InProcessBackend
from router.backends.upstream import UpstreamBackend
from router.errors import BackendError
from router.settings import RouterSettings
from storage.entities import PipelineVersion

__all__ = [
    "Backend",
    "InProcessBackend",
    "MissingBackend",
    "Predictions",
    "UpstreamBackend",
    "check_length",
    "create_backend",
    "plain",
    "predict_batch",
    "predict_parts",
]


def create_backend(version: PipelineVersion, settings: RouterSettings) -> Backend:
    """Build (and load) the backend for a version; a version that cannot load becomes a MissingBackend."""
    try:
        if version.kind == "http":
            return UpstreamBackend(
                version, timeout_s=settings.upstream_timeout_s, pool_size=settings.upstream_pool_size
            )
        return InProcessBackend(version, trust_pickle=settings.trust_pickle)
    except BackendError as exc:
        return MissingBackend(version, exc.message)
