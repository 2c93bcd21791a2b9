"""Archive, restore, delete and configure deployments and pipeline versions (the admin API and the CLI
call these).

    archive   kept with all its history and readable, but out of use: an archived deployment is not
              routed and takes no rollout; an archived version is no new champion or challenger
    restore   undoes archive; a deployment whose champion was archived meanwhile is refused (409
              conflict naming the version): restore the version first, on purpose, not as a side effect
    delete    a version: only one no deployment or rollout ever used (its artifact file goes too
              unless another version shares it); a deployment: with its rollouts, analyses, pairs and
              labels. Its events stay in the log (the name moves into their details).

Each refuses with storage.InUse (HTTP 409 ``in_use``) while an active rollout uses the thing, and every
change is written as an event by ``actor`` with the operator's ``reason``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from storage import Store
from storage.entities import Deployment, NewEvent, PipelineVersion


def _event(actor: str, action: str, reason: str, message: str) -> NewEvent:
    return NewEvent(actor=actor, action=action, reason=reason or action.split(".")[1], message=message)


def archive_version(store: Store, ref: str, *, actor: str, reason: str = "") -> PipelineVersion:
    """Archive pipeline version REF (NAME:VERSION)."""
    version = store.pipelines.get_by_ref(ref)
    return store.pipelines.archive(
        version.id, event=_event(actor, "pipeline.archive", reason, f"archived {version.ref}")
    )


def restore_version(store: Store, ref: str, *, actor: str, reason: str = "") -> PipelineVersion:
    """Restore an archived pipeline version."""
    version = store.pipelines.get_by_ref(ref)
    return store.pipelines.restore(
        version.id, event=_event(actor, "pipeline.restore", reason, f"restored {version.ref}")
    )


def delete_version(store: Store, ref: str, *, actor: str, reason: str = "") -> dict[str, Any]:
    """Delete a never-used pipeline version and, unless another version shares it, its artifact file."""
    version = store.pipelines.get_by_ref(ref)
    deleted = store.pipelines.delete(
        version.id, event=_event(actor, "pipeline.delete", reason, f"deleted {version.ref}")
    )
    removed = False
    path = deleted.artifact_path
    if path and not store.pipelines.artifact_shared(path):
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
            removed = True
    return {"ref": deleted.ref, "id": deleted.id, "artifact_removed": removed}


def archive_deployment(store: Store, name: str, *, actor: str, reason: str = "") -> Deployment:
    """Archive deployment NAME: routers stop serving it within about a second."""
    return store.deployments.archive(
        name, event=_event(actor, "deployment.archive", reason, f"archived {name}")
    )


def restore_deployment(store: Store, name: str, *, actor: str, reason: str = "") -> Deployment:
    """Restore an archived deployment: routed again."""
    return store.deployments.restore(
        name, event=_event(actor, "deployment.restore", reason, f"restored {name}")
    )


def delete_deployment(store: Store, name: str, *, actor: str, reason: str = "") -> dict[str, Any]:
    """Delete deployment NAME and its data; return the counts deleted. Its events stay."""
    counts = store.deployments.delete(
        name, event=_event(actor, "deployment.delete", reason, f"deleted {name}")
    )
    return {"name": name, "deleted": counts}


def configure_deployment(
    store: Store,
    name: str,
    *,
    actor: str,
    enabled: bool | None = None,
    max_batch_delay_ms: float | None = None,
    max_batch_rows: int | None = None,
) -> Deployment:
    """Change deployment NAME's adaptive batching (None leaves a setting as it is); routers apply it
    within a refresh interval. ValueError naming the setting if a value is out of range."""
    if enabled is None and max_batch_delay_ms is None and max_batch_rows is None:
        raise ValueError("nothing to change: give enabled, max_batch_delay_ms or max_batch_rows")
    config = store.deployments.get(name).batching.replace(
        enabled=enabled, max_batch_delay_ms=max_batch_delay_ms, max_batch_rows=max_batch_rows
    )
    event = NewEvent(
        actor=actor,
        action="deployment.configure",
        reason="configured",
        message=f"batching {config.to_json()}",
    )
    return store.deployments.update(name, batching=config, event=event)
